"""Channel shuffle (ShuffleNet): interleave the channels of `groups` groups.

Notation: x (N, C, H, W), g = groups, C = g·m (m channels per group).
View the channels as a (g, m) grid, transpose it to (m, g), flatten:

    y[n, j·g + i] = x[n, i·m + j]        i < g, j < m

as torch.nn.functional.channel_shuffle. Output shape = input shape.

The map is a permutation of channels, so its adjoint is its inverse, and
the inverse of shuffling with g groups is shuffling with m = C/g groups:

    grad_input = channel_shuffle(grad_output, C // g)

The kernel copies one (n, output channel) plane per prange step: the
writes are disjoint. Below conv2d's _SERIAL_MULTIPLY_ADDS elements a call
runs on one thread (waking the others costs milliseconds on a busy machine).
Any number of trailing axes works (they are viewed as one axis of length L).

>>> x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
>>> channel_shuffle_forward(x, 2).ravel()
array([0., 3., 1., 4., 2., 5.], dtype=float32)
>>> channel_shuffle_backward(channel_shuffle_forward(x, 2), 2).ravel()
array([0., 1., 2., 3., 4., 5.], dtype=float32)
"""
import numpy as np
from numba import njit, prange

from kernels.conv2d import _serial_if_small  # small work on one thread (waking threads costs ~8 ms under load)


@njit(cache=True, parallel=True)
def _shuffle(x, groups, y):
    # N batch, C channels, L = H·W; x, y (N, C, L); m = C // groups channels per group
    N, C = x.shape[:2]
    m = C // groups
    for plane in prange(N * C):
        n, o = plane // C, plane % C
        j, i = o // groups, o % groups  # output channel o = j·groups + i
        y[n, o, :] = x[n, i * m + j, :]  # one contiguous plane


def channel_shuffle_forward(x, groups):
    """y[n, j·g + i] = x[n, i·m + j] with m = C / g."""
    x3 = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)  # (N, C, L)
    y = np.empty(x.shape, dtype=x.dtype)  # returned as allocated (not a view): the tape may keep it as a .grad
    with _serial_if_small(x3.size):
        _shuffle(x3, int(groups), y.reshape(x3.shape))
    return y


def channel_shuffle_backward(grad_output, groups):
    """The inverse permutation: shuffle with C / groups groups."""
    return channel_shuffle_forward(grad_output, grad_output.shape[1] // groups)

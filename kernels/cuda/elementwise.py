"""Element-wise maths, axis reductions and axis permutations on the GPU: what the tape needs between kernels.

Notation: every array is C-contiguous and read flat. An n-D index
(k_0, ..., k_{D-1}) of an output of shape (s_0, ..., s_{D-1}) is found
from the flat index idx by peeling the last axis first,

    k_d = (idx // (s_{d+1}·...·s_{D-1})) mod s_d,

and an operand reads element Σ_d k_d·stride_d, with stride_d = 0 on the
axes it is broadcast along (NumPy's broadcasting: a size-1 or missing axis
repeats). Shapes and strides are padded on the left to MAX_DIMS entries so
that one compiled kernel serves every rank.

    binary:   out[k] = f(a[k·stride_a], b[k·stride_b])      f in BINARY_OPS
    scalar:   out[k] = f(a[k], s)  or  f(s, a[k])
    unary:    out[k] = f(a[k])                               f in UNARY_OPS
    permute:  out[k] = a[Σ_d k_d·stride_a[axes[d]]]          (a transpose, as a gather)
    reduce:   out[r] = Σ_l a[r, l]   or   max_l a[r, l]      (a viewed (R, L))

Comparisons give 1.0 / 0.0 in the operands' dtype (NumPy gives booleans);
the tape only ever multiplies by such masks, which is the same arithmetic.

Thread mapping. binary / scalar / unary / permute: one thread per output
element. reduce: one block per output value, each thread folds a strided
slice of the row into a float64 partial, then a shared-memory tree combines
the partials (as device.block_sum: deterministic, no atomics).

>>> import numpy as np
>>> out = empty((2, 3), np.float64)
>>> binary("add", np.ones((2, 3)), np.arange(3.0), out).copy_to_host()
array([[1., 2., 3.],
       [1., 2., 3.]])
"""
import math

import numpy as np
from numba import cuda

from kernels.cuda.device import REDUCE_THREADS, THREADS, blocks, empty, flat, to_device

MAX_DIMS = 6
BINARY_OPS = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum",
              "greater", "greater_equal", "less", "less_equal", "equal", "not_equal", "right")
UNARY_OPS = ("copy", "negative", "exp", "log", "sqrt", "tanh", "abs", "sign")
REDUCE_OPS = ("sum", "max")


def padded(values, fill_value):
    """A tuple of MAX_DIMS ints: `values` with `fill_value` in front."""
    values = tuple(int(v) for v in values)
    if len(values) > MAX_DIMS:
        raise NotImplementedError(f"arrays of more than {MAX_DIMS} dimensions are not supported on the 'cuda' device")
    return (fill_value,) * (MAX_DIMS - len(values)) + values


def broadcast_strides(shape, out_shape):
    """Element strides of a C-contiguous `shape` read as `out_shape` (0 on broadcast axes), MAX_DIMS long."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step if size != 1 else 0)
        step *= size
    strides = strides[::-1]
    return padded([0] * (len(out_shape) - len(shape)) + strides, 0)


def binary(op, a, b, out):
    """out = op(a, b) with NumPy broadcasting; out has the broadcast shape."""
    a, b = to_device(a), to_device(b)
    _binary_kernel[blocks(out.size), THREADS](flat(a), broadcast_strides(a.shape, out.shape), flat(b),
                                              broadcast_strides(b.shape, out.shape), padded(out.shape, 1),
                                              BINARY_OPS.index(op), flat(out))
    return out


def scalar(op, a, value, scalar_first, out):
    """out = op(a, value), or op(value, a) when scalar_first."""
    a = to_device(a)
    _scalar_kernel[blocks(out.size), THREADS](flat(a), float(value), bool(scalar_first), BINARY_OPS.index(op),
                                              flat(out))
    return out


def unary(op, a, out):
    """out = op(a) (op 'copy' with another dtype is astype)."""
    a = to_device(a)
    _unary_kernel[blocks(out.size), THREADS](flat(a), UNARY_OPS.index(op), flat(out))
    return out


def permute(a, axes, out):
    """out = a.transpose(axes), a C-contiguous copy."""
    a = to_device(a)
    strides, step = [0] * a.ndim, 1
    for d in range(a.ndim - 1, -1, -1):
        strides[d] = step
        step *= a.shape[d]
    _permute_kernel[blocks(out.size), THREADS](flat(a), padded([strides[d] for d in axes], 0), padded(out.shape, 1),
                                               flat(out))
    return out


def reduce_rows(op, a, out):
    """out[r] = sum or max over l of a viewed (R, L), R = out.size; one block per row."""
    a = to_device(a)
    rows = out.size
    _reduce_kernel[max(rows, 1), REDUCE_THREADS](a.reshape(rows, a.size // max(rows, 1)), REDUCE_OPS.index(op),
                                                 flat(out))
    return out


@cuda.jit(device=True)
def _apply(op, a, b):
    # the BINARY_OPS, by position; comparisons give 1.0 / 0.0
    if op == 0:
        return a + b
    if op == 1:
        return a - b
    if op == 2:
        return a * b
    if op == 3:
        return a / b
    if op == 4:
        return a ** b
    if op == 5:
        return a if a >= b or a != a else b  # NaN propagates, as np.maximum
    if op == 6:
        return a if a <= b or a != a else b
    if op == 7:
        return 1.0 if a > b else 0.0
    if op == 8:
        return 1.0 if a >= b else 0.0
    if op == 9:
        return 1.0 if a < b else 0.0
    if op == 10:
        return 1.0 if a <= b else 0.0
    if op == 11:
        return 1.0 if a == b else 0.0
    if op == 12:
        return 1.0 if a != b else 0.0
    return b  # "right": broadcast_to and in-place assignment


@cuda.jit
def _binary_kernel(a, a_strides, b, b_strides, shape, op, out):
    # a, b, out flat; shape and strides MAX_DIMS long; one thread per out element
    idx = cuda.grid(1)
    if idx < out.size:
        rest, ia, ib = idx, 0, 0
        for d in range(MAX_DIMS - 1, -1, -1):
            k = rest % shape[d]
            rest //= shape[d]
            ia += k * a_strides[d]
            ib += k * b_strides[d]
        out[idx] = _apply(op, a[ia], b[ib])


@cuda.jit
def _scalar_kernel(a, value, scalar_first, op, out):
    idx = cuda.grid(1)
    if idx < out.size:
        if scalar_first:
            out[idx] = _apply(op, value, a[idx])
        else:
            out[idx] = _apply(op, a[idx], value)


@cuda.jit
def _unary_kernel(a, op, out):
    # the UNARY_OPS, by position
    idx = cuda.grid(1)
    if idx < out.size:
        v = a[idx]
        if op == 0:
            out[idx] = v
        elif op == 1:
            out[idx] = -v
        elif op == 2:
            out[idx] = math.exp(v)
        elif op == 3:
            out[idx] = math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)  # as np.log
        elif op == 4:
            out[idx] = math.sqrt(v) if v >= 0 else math.nan
        elif op == 5:
            out[idx] = math.tanh(v)
        elif op == 6:
            out[idx] = abs(v)
        else:
            out[idx] = (v > 0) - (v < 0) if v == v else v


@cuda.jit
def _permute_kernel(a, a_strides, shape, out):
    # out (shape) C-contiguous; a_strides[d]: a's stride along out's axis d
    idx = cuda.grid(1)
    if idx < out.size:
        rest, ia = idx, 0
        for d in range(MAX_DIMS - 1, -1, -1):
            ia += (rest % shape[d]) * a_strides[d]
            rest //= shape[d]
        out[idx] = a[ia]


@cuda.jit
def _reduce_kernel(a, op, out):
    # a (R, L); block r folds row r: thread t takes l = t, t + T, ...; then a tree over the T partials
    partials = cuda.shared.array(REDUCE_THREADS, np.float64)
    r, t = cuda.blockIdx.x, cuda.threadIdx.x
    acc = 0.0 if op == 0 else -math.inf
    if r < a.shape[0]:  # always true (grid = R); every thread still reaches each syncthreads
        for l in range(t, a.shape[1], cuda.blockDim.x):
            v = a[r, l]
            acc = acc + v if op == 0 else (v if v > acc or v != v else acc)
    partials[t] = acc
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            other = partials[t + step]
            mine = partials[t]
            partials[t] = mine + other if op == 0 else (other if other > mine or other != other else mine)
        cuda.syncthreads()
        step //= 2
    if r < a.shape[0] and t == 0:
        out[r] = partials[0]

"""Element-wise maths, axis reductions and axis permutations on the GPU: what the tape needs between kernels.

Notation: every array is C-contiguous and read flat. An n-D index
(k_0, ..., k_{D-1}) of an output of shape (s_0, ..., s_{D-1}) is found
from the flat index idx by peeling the last axis first,

    k_d = (idx // (s_{d+1}·...·s_{D-1})) mod s_d,

and an operand reads element Σ_d k_d·stride_d, with stride_d = 0 on the
axes it is broadcast along (NumPy's broadcasting: a size-1 or missing axis
repeats). Shapes and strides are padded on the left to MAX_DIMS entries so
that one compiled kernel serves every rank.

    binary:    out[k] = f(a[k·stride_a], b[k·stride_b])      f in BINARY_OPS
    scalar:    out[k] = f(a[k], s)  or  f(s, a[k])
    predicate: out[k] = p(a[k·stride_a], b[k·stride_b])      p in PREDICATE_OPS, out bool
    where:     out[k] = a[k·stride_a] if cond[k·stride_c] else b[k·stride_b]
    unary:     out[k] = f(a[k])                               f in UNARY_OPS
    gather:    out[k] = a[offset + Σ_d k_d·step_d]            (a strided view or a transpose, copied)
    scatter:   out[offset + Σ_d k_d·step_d] (+)= src[k]       (its adjoint: assignment into a view)
    take_rows: out[i, l] = a[rows[i], l]                       (integer-array indexing, a viewed (R, L))
    put_rows:  out[rows[i], l] = src[i, l]                     (assignment through it; rows distinct)
    add_rows:  out[rows[i], l] += src[i, l]                    (its adjoint, np.add.at)
    reduce:    out[r] = Σ_l a[r, l]   or   max_l a[r, l]      (a viewed (R, L))

gather covers every basic NumPy index (ints, slices with any step,
negative ones included, None, ...): such a view of a C-contiguous array is
an offset plus one (possibly negative or zero) element step per axis, and
`transpose(axes)` is the view with the steps permuted. A view never names
one element twice, so scatter's writes are disjoint: no atomics. add_rows
is the one inherent scatter (repeated row indices accumulate, as
np.add.at), so it uses cuda.atomic.add (float64 atomics need sm_60+).
Comparisons and logical and/or/xor give booleans, as NumPy.

Thread mapping. binary / scalar / predicate / where / unary / gather /
take_rows: one thread per output element; scatter / put_rows / add_rows:
one thread per source element. reduce: one block per output value, each thread folds
a strided slice of the row into a float64 partial, then a shared-memory
tree combines the partials (as device.block_sum: deterministic, no
atomics).

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
BINARY_OPS = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "logaddexp", "right")
PREDICATE_OPS = ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
                 "logical_and", "logical_or", "logical_xor")
UNARY_OPS = ("copy", "negative", "exp", "log", "sqrt", "tanh", "abs", "sign", "expm1")
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
    return _broadcast_pair(_binary_kernel, BINARY_OPS.index(op), a, b, out)


def _broadcast_pair(kernel, op, a, b, out):
    """Launch kernel(a, a's strides, b, b's strides, out's shape, op, out), one thread per element of out."""
    a, b = to_device(a), to_device(b)
    kernel[blocks(out.size), THREADS](flat(a), broadcast_strides(a.shape, out.shape), flat(b),
                                      broadcast_strides(b.shape, out.shape), padded(out.shape, 1), op, flat(out))
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


def predicate(op, a, b, out):
    """out = op(a, b) as booleans (comparisons, logical and/or/xor), with NumPy broadcasting."""
    return _broadcast_pair(_predicate_kernel, PREDICATE_OPS.index(op), a, b, out)


def where(cond, a, b, out):
    """out = a where cond else b, the three broadcast to out's shape (np.where)."""
    cond, a, b = to_device(cond), to_device(a), to_device(b)
    _where_kernel[blocks(out.size), THREADS](flat(cond), broadcast_strides(cond.shape, out.shape), flat(a),
                                             broadcast_strides(a.shape, out.shape), flat(b),
                                             broadcast_strides(b.shape, out.shape), padded(out.shape, 1), flat(out))
    return out


def logical_not(a, out):
    """out = not a (booleans)."""
    a = to_device(a)
    _logical_not_kernel[blocks(out.size), THREADS](flat(a), flat(out))
    return out


def contiguous_strides(shape):
    """Element strides of a C-contiguous array of `shape`."""
    strides, step = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = step
        step *= shape[d]
    return strides


def gather(a, offset, steps, out):
    """out[k] = a.flat[offset + Σ_d k_d·steps[d]]: a strided view of `a` copied into out (steps per out axis)."""
    a = to_device(a)
    _gather_kernel[blocks(out.size), THREADS](flat(a), int(offset), padded(steps, 0), padded(out.shape, 1),
                                              flat(out))
    return out


def scatter(src, offset, steps, out, accumulate=False):
    """out.flat[offset + Σ_d k_d·steps[d]] = src[k] (+= with accumulate), in place; the view must not repeat."""
    src = to_device(src)
    _scatter_kernel[blocks(src.size), THREADS](flat(src), int(offset), padded(steps, 0), padded(src.shape, 1),
                                               bool(accumulate), flat(out))
    return out


def permute(a, axes, out):
    """out = a.transpose(axes), a C-contiguous copy (a gather whose steps are a's strides, permuted)."""
    strides = contiguous_strides(a.shape)
    return gather(a, 0, [strides[d] for d in axes], out)


def take_rows(a, rows, out):
    """out[i, l] = a[rows[i], l] for a (R, L), rows (I,) int64, out (I, L)."""
    a, rows = to_device(a), to_device(rows)
    _take_rows_kernel[blocks(out.size), THREADS](a, rows, out)
    return out


def put_rows(src, rows, out):
    """out[rows[i], l] = src[i, l], in place; the rows must be distinct (the caller checks)."""
    src, rows = to_device(src), to_device(rows)
    _put_rows_kernel[blocks(src.size), THREADS](src, rows, out)
    return out


def add_rows(src, rows, out):
    """out[rows[i], l] += src[i, l], in place, repeated rows accumulating (np.add.at); atomic adds."""
    src, rows = to_device(src), to_device(rows)
    _add_rows_kernel[blocks(src.size), THREADS](src, rows, out)
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
    if op == 7:  # log(e^a + e^b) = max + log1p(e^-|a - b|); equal arguments (±inf included) give a + log 2
        if a == b:
            return a + math.log(2.0)
        return (a if a > b else b) + math.log1p(math.exp(-abs(a - b)))
    return b  # "right": broadcast_to and in-place assignment


@cuda.jit(device=True)
def _predicate(op, a, b):
    # the PREDICATE_OPS, by position; always a boolean
    if op == 0:
        return a > b
    if op == 1:
        return a >= b
    if op == 2:
        return a < b
    if op == 3:
        return a <= b
    if op == 4:
        return a == b
    if op == 5:
        return a != b
    if op == 6:
        return a != 0 and b != 0
    if op == 7:
        return a != 0 or b != 0
    return (a != 0) != (b != 0)


@cuda.jit(device=True)
def _offset(idx, shape, steps, start):
    # where element idx of a C-contiguous array of `shape` (MAX_DIMS long) sits in an operand that moves
    # steps[d] along axis d: start + Σ_d index_d · steps[d] (a broadcast axis steps 0, a reversed one < 0)
    rest, offset = idx, start
    for d in range(MAX_DIMS - 1, -1, -1):
        offset += (rest % shape[d]) * steps[d]
        rest //= shape[d]
    return offset


@cuda.jit
def _binary_kernel(a, a_strides, b, b_strides, shape, op, out):
    # a, b, out flat; shape and strides MAX_DIMS long; one thread per out element
    idx = cuda.grid(1)
    if idx < out.size:
        out[idx] = _apply(op, a[_offset(idx, shape, a_strides, 0)], b[_offset(idx, shape, b_strides, 0)])


@cuda.jit
def _predicate_kernel(a, a_strides, b, b_strides, shape, op, out):
    # as _binary_kernel; out is boolean
    idx = cuda.grid(1)
    if idx < out.size:
        out[idx] = _predicate(op, a[_offset(idx, shape, a_strides, 0)], b[_offset(idx, shape, b_strides, 0)])


@cuda.jit
def _where_kernel(cond, c_strides, a, a_strides, b, b_strides, shape, out):
    # three broadcast operands; one thread per out element
    idx = cuda.grid(1)
    if idx < out.size:
        if cond[_offset(idx, shape, c_strides, 0)]:
            out[idx] = a[_offset(idx, shape, a_strides, 0)]
        else:
            out[idx] = b[_offset(idx, shape, b_strides, 0)]


@cuda.jit
def _logical_not_kernel(a, out):
    idx = cuda.grid(1)
    if idx < out.size:
        out[idx] = not a[idx]


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
        elif op == 7:
            out[idx] = (v > 0) - (v < 0) if v == v else v
        else:
            out[idx] = math.expm1(v)


@cuda.jit
def _gather_kernel(a, offset, steps, shape, out):
    # out (shape) C-contiguous; steps[d]: how far a moves along out's axis d (may be 0 or negative)
    idx = cuda.grid(1)
    if idx < out.size:
        out[idx] = a[_offset(idx, shape, steps, offset)]


@cuda.jit
def _scatter_kernel(src, offset, steps, shape, accumulate, out):
    # src (shape) C-contiguous; the same index maths as _gather_kernel, read and write swapped
    idx = cuda.grid(1)
    if idx < src.size:
        io = _offset(idx, shape, steps, offset)
        if accumulate:
            out[io] += src[idx]
        else:
            out[io] = src[idx]


@cuda.jit
def _take_rows_kernel(a, rows, out):
    # a (R, L), rows (I,), out (I, L); one thread per out element
    idx = cuda.grid(1)
    if idx < out.size:
        L = out.shape[1]
        i, l = idx // L, idx % L
        out[i, l] = a[rows[i], l]


@cuda.jit
def _put_rows_kernel(src, rows, out):
    # src (I, L), rows (I,) distinct, out (R, L); one thread per src element, disjoint writes
    idx = cuda.grid(1)
    if idx < src.size:
        L = src.shape[1]
        i, l = idx // L, idx % L
        out[rows[i], l] = src[i, l]


@cuda.jit
def _add_rows_kernel(src, rows, out):
    # src (I, L), rows (I,), out (R, L); one thread per src element; rows may repeat, hence atomics
    idx = cuda.grid(1)
    if idx < src.size:
        L = src.shape[1]
        i, l = idx // L, idx % L
        cuda.atomic.add(out, (rows[i], l), src[i, l])


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

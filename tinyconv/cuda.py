"""The GPU device: `is_available()`, the device array behind a 'cuda' Tensor, and moving data.

A Tensor on the 'cuda' device holds a `DeviceArray` in `.data` instead of a
NumPy array: a thin wrapper around a numba.cuda device array that answers
the few array operations the tape and tinyconv.functional use, each by a
kernel of kernels/cuda/ (no data ever comes back to the host on the way):

    shape, dtype, ndim, size, reshape (a view), transpose / swapaxes (a copy)
    + - * / ** -x, NumPy ufuncs add ... maximum, logaddexp, exp, expm1, log,
    sqrt, tanh, abs, sign (with NumPy broadcasting; in place with out= or +=)
    comparisons and & | ^ ~ on them: boolean arrays, as NumPy
    a[index] for basic indices (ints, slices with any step, None, ...) and
    integer arrays after full slices (a copy, not a view); a[index] = v
    (integer indices distinct); np.add.at (the adjoint of both)
    sum / max over axes, @ (np.matmul's rules, batched: the tiled GEMM),
    astype, copy
    np.ones_like, zeros_like, full_like, expand_dims, broadcast_to, swapaxes,
    squeeze, concatenate, split, pad (constant), where, clip, take

It is the NumPy protocols (__array_ufunc__, __array_function__) that route
`np.add(a, b)` or `np.expand_dims(g, 0)` here, so the tape's code is the
same for both devices. Anything else raises NotImplementedError naming the
operation and the device: nothing falls back to the host silently, and a
DeviceArray refuses to become a NumPy array implicitly (`.numpy()` copies
it to the host, on purpose). Combining it with a host array (other than a
0-d one, which acts as a scalar, as torch treats 0-dim CPU tensors) is a
ValueError naming both devices.

Kernels: `twin(kernels.conv2d)` is kernels.cuda.conv2d seen from the tape:
DeviceArray arguments unwrapped, device results wrapped.

Without a GPU everything here imports (numba.cuda is imported on first
use); asking for 'cuda' raises CudaUnavailableError, which says so. Under
Numba's simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported)
the whole path runs on the CPU, slowly: that is how the tests run it.

>>> is_available() in (True, False)
True
"""
import functools
import importlib
import numbers

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

DEVICES = ("cpu", "cuda")


class CudaUnavailableError(RuntimeError):
    """Device 'cuda' was asked for, but numba.cuda finds no GPU (and the simulator is off)."""


@functools.lru_cache(maxsize=1)
def is_available():
    """True when numba.cuda can run kernels: a CUDA GPU with its driver, or Numba's CUDA simulator."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # a broken CUDA installation counts as none
        return False


def check_device(device):
    """'cpu' or 'cuda', validated; 'cuda' also needs a GPU (or the simulator)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not is_available():
        raise CudaUnavailableError(
            "device 'cuda' was requested, but no CUDA GPU is available (numba.cuda.is_available() is False: "
            "no GPU, no driver, or numba cannot find the CUDA libraries). Use device 'cpu'; to exercise the GPU "
            "path without a GPU, set NUMBA_ENABLE_CUDASIM=1 before numba is imported (Numba's slow simulator).")
    return device


def device_of(array):
    return "cpu" if isinstance(array, np.ndarray) else getattr(array, "device", "cpu")


def to_device(array, device):
    """`array` (NumPy or DeviceArray) on `device`: a copy when it moves, itself when it is already there."""
    if device_of(array) == device:
        return array
    if device == "cpu":
        return array.numpy()
    from numba import cuda
    check_device(device)
    host = np.asarray(array)
    return DeviceArray(cuda.to_device(np.ascontiguousarray(host).reshape(host.shape)))  # 0-d stays 0-d


# ---------------------------------------------------------------------------
# kernels/cuda/ seen from the tape
# ---------------------------------------------------------------------------
def _unwrap(value):
    return value.array if isinstance(value, DeviceArray) else value


def _wrap(value):
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return DeviceArray(value) if hasattr(value, "copy_to_host") else value


class _Twin:
    """A kernels/cuda module whose functions take and return DeviceArrays."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        function = getattr(self._module, name)

        def call(*args, **kwargs):
            return _wrap(function(*map(_unwrap, args), **{k: _unwrap(v) for k, v in kwargs.items()}))

        return call


def twin(cpu_module):
    """kernels.<op> -> kernels.cuda.<op> (same function names and arguments), for DeviceArrays."""
    return device_kernels(cpu_module.__name__.rsplit(".", 1)[1])


@functools.lru_cache(maxsize=None)
def device_kernels(name):
    """kernels/cuda/<name>.py, for DeviceArrays."""
    check_device("cuda")
    return _Twin(_kernels(name))


def _kernels(name):
    """A kernels/cuda module, imported on first use."""
    return importlib.import_module("kernels.cuda." + name)


# ---------------------------------------------------------------------------
# the device array
# ---------------------------------------------------------------------------
_UFUNCS = {"add": "add", "subtract": "subtract", "multiply": "multiply", "divide": "divide", "power": "power",
           "maximum": "maximum", "minimum": "minimum", "logaddexp": "logaddexp", "negative": "negative",
           "exp": "exp", "expm1": "expm1",
           "log": "log", "sqrt": "sqrt", "tanh": "tanh", "absolute": "abs", "sign": "sign", "matmul": "matmul"}
# ufuncs with a boolean result (elementwise.PREDICATE_OPS); & | ^ count as logical on booleans only
_PREDICATES = {"greater": "greater", "greater_equal": "greater_equal", "less": "less", "less_equal": "less_equal",
               "equal": "equal", "not_equal": "not_equal", "logical_and": "logical_and", "logical_or": "logical_or",
               "logical_xor": "logical_xor", "bitwise_and": "logical_and", "bitwise_or": "logical_or",
               "bitwise_xor": "logical_xor"}
_BITWISE = ("bitwise_and", "bitwise_or", "bitwise_xor", "invert")


def _unsupported(what):
    return NotImplementedError(f"{what} is not implemented on the 'cuda' device; move the tensor to the host "
                               f"with .cpu() for this step")


def _mixed(what):
    return ValueError(f"{what}: operands are on different devices, 'cuda' and 'cpu'; move one of them "
                      f"with .to('cuda') or .to('cpu')")


def _normalize_axes(axis, ndim):
    axes = tuple(range(ndim)) if axis is None else axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(int(a) % ndim for a in axes))


class DeviceArray(NDArrayOperatorsMixin):
    """A C-contiguous array in GPU memory (numba.cuda DeviceNDArray inside), for Tensor.data on 'cuda'.

    `base` is the DeviceArray a view was made from (None for fresh memory),
    as NumPy's, so the tape's gradient-ownership rule works unchanged.
    """

    device = "cuda"

    def __init__(self, array, base=None):
        self.array = array
        self.base = base

    shape = property(lambda self: tuple(self.array.shape))
    dtype = property(lambda self: np.dtype(self.array.dtype))
    ndim = property(lambda self: len(self.array.shape))
    size = property(lambda self: int(np.prod(self.array.shape, dtype=np.int64)))

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device='cuda')"

    # ---- leaving the device, on purpose only --------------------------------
    def numpy(self):
        """A host copy (NumPy array)."""
        return self.array.copy_to_host()

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a single-element array, got shape {self.shape}")
        return self.numpy().item()

    def __array__(self, dtype=None, copy=None):
        raise TypeError("an array on the 'cuda' device does not become a NumPy array implicitly; "
                        "copy it to the host with .cpu() or .numpy()")

    def __getitem__(self, index):
        rows = _integer_rows(self.shape, index)
        if rows is not None:  # integer arrays: whole rows of a viewed (R, L), copied
            rows, head, end = rows
            rest = self.shape[end:]
            out = DeviceArray.empty(head + rest, self.dtype)
            length = int(np.prod(rest, dtype=np.int64))
            _kernels("elementwise").take_rows(self._rows_view(end), to_device(rows, "cuda").array,
                                              out.array.reshape(rows.size, length))
            return out
        offset, steps, shape = _basic_view(self.shape, index)
        out = DeviceArray.empty(shape, self.dtype)
        _kernels("elementwise").gather(self.array, offset, steps, out.array)
        return out

    def __setitem__(self, index, value):
        rows = _integer_rows(self.shape, index)
        if rows is not None:  # a[np.arange(n), labels] = v: whole rows of a viewed (R, L)
            rows, head, end = rows
            if np.unique(rows).size != rows.size:  # NumPy keeps the last write; a GPU keeps any of them
                raise _unsupported("assignment through repeated integer indices")
            length = int(np.prod(self.shape[end:], dtype=np.int64))
            src = self._operand(value, head + self.shape[end:])
            _kernels("elementwise").put_rows(src.array.reshape(rows.size, length), to_device(rows, "cuda").array,
                                             self._rows_view(end))
            return
        offset, steps, shape = _basic_view(self.shape, index)
        _kernels("elementwise").scatter(self._operand(value, shape).array, offset, steps, self.array)

    def _rows_view(self, end):
        """The device array viewed (Π shape[:end], Π shape[end:])."""
        length = int(np.prod(self.shape[end:], dtype=np.int64))
        return self.array.reshape(self.size // max(length, 1), length)

    def _operand(self, value, shape):
        """`value` (a DeviceArray, or a number) as a DeviceArray of our dtype and of `shape` (broadcast)."""
        if _is_scalar(value):
            return DeviceArray.full(shape, float(np.asarray(value)), self.dtype)
        if not isinstance(value, DeviceArray):
            raise _mixed("assignment") if isinstance(value, np.ndarray) else TypeError(
                f"cannot assign {type(value).__name__} to a 'cuda' array")
        if np.broadcast_shapes(value.shape, shape) != tuple(shape):
            raise ValueError(f"could not broadcast input array from shape {value.shape} into shape {tuple(shape)}")
        return _broadcast_to(value.astype(self.dtype, copy=False), shape)

    def _add_at(self, index, values):
        """np.add.at(self, index, values): the adjoint of indexing, repeated integer indices accumulating."""
        elementwise = _kernels("elementwise")
        rows = _integer_rows(self.shape, index)
        if rows is None:  # a basic view names each element once: a plain +=
            offset, steps, shape = _basic_view(self.shape, index)
            elementwise.scatter(self._operand(values, shape).array, offset, steps, self.array, accumulate=True)
            return
        rows, head, end = rows
        length = int(np.prod(self.shape[end:], dtype=np.int64))
        src = self._operand(values, head + self.shape[end:])
        elementwise.add_rows(src.array.reshape(rows.size, length), to_device(rows, "cuda").array,
                             self._rows_view(end))

    __bool__ = lambda self: bool(self.item())  # noqa: E731

    # ---- new arrays ----------------------------------------------------------
    @staticmethod
    def empty(shape, dtype):
        return DeviceArray(_kernels("device").empty(shape, np.dtype(dtype)))

    @staticmethod
    def full(shape, value, dtype):
        out = DeviceArray.empty(shape, dtype)
        _kernels("device").fill(out.array, value)
        return out

    def copy(self):
        return self.astype(self.dtype, copy=True)

    def astype(self, dtype, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        if self.dtype == np.bool_ and dtype != np.bool_:  # a mask as numbers: a select, no arithmetic on booleans
            return _where(self, 1, 0).astype(dtype, copy=False)
        out = DeviceArray.empty(self.shape, dtype)
        _kernels("elementwise").unary("copy", self.array, out.array)
        return out

    # ---- shape ---------------------------------------------------------------
    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(int(s) for s in shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
            shape = tuple(self.size // known if s == -1 and known else s for s in shape)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
        return DeviceArray(self.array.reshape(*shape) if shape else self.array.reshape(1).reshape(()), base=self)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and not isinstance(axes[0], numbers.Integral) else axes
        axes = tuple(range(self.ndim))[::-1] if not len(axes) else tuple(int(a) % self.ndim for a in axes)
        if axes == tuple(range(self.ndim)):
            return self.copy()
        out = DeviceArray.empty(tuple(self.shape[a] for a in axes), self.dtype)
        _kernels("elementwise").permute(self.array, axes, out.array)
        return out

    def swapaxes(self, axis1, axis2):
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return self.transpose(axes)

    T = property(lambda self: self.transpose())

    # ---- reductions ------------------------------------------------------------
    def _reduce(self, op, axis, keepdims):
        axes = _normalize_axes(axis, self.ndim)
        kept = tuple(d for d in range(self.ndim) if d not in axes)
        source = self if kept + axes == tuple(range(self.ndim)) else self.transpose(kept + axes)  # reduced axes last
        dtype = np.dtype(np.int64) if op == "sum" and self.dtype.kind in "biu" else self.dtype  # as NumPy
        out = DeviceArray.empty(tuple(self.shape[d] for d in kept), dtype)
        _kernels("elementwise").reduce_rows(op, source.array, out.array)
        return out.reshape(tuple(1 if d in axes else n for d, n in enumerate(self.shape))) if keepdims else out

    def sum(self, axis=None, keepdims=False):
        return self._reduce("sum", axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return self._reduce("max", axis, keepdims)

    # ---- element-wise maths: NumPy's ufunc protocol ------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        name = ufunc.__name__
        if method == "at" and name == "add" and isinstance(inputs[0], DeviceArray) and not kwargs:
            return inputs[0]._add_at(inputs[1], inputs[2])
        op = _UFUNCS.get(name)
        if method != "__call__" or (op is None and name not in _PREDICATES and name not in ("invert", "logical_not")) \
                or kwargs:
            raise _unsupported(f"numpy.{name}{'' if method == '__call__' else '.' + method}")
        if op == "matmul":
            return _matmul(*inputs)
        if out is not None:
            out = out[0] if isinstance(out, tuple) else out
            if not isinstance(out, DeviceArray):
                raise _mixed(f"numpy.{name}(..., out=)")
        for value in inputs:
            if isinstance(value, np.ndarray) and value.ndim:
                raise _mixed(f"numpy.{name}")
            if not isinstance(value, (DeviceArray, numbers.Number, np.ndarray, np.generic)):
                return NotImplemented
        if name in _BITWISE and any((v.dtype if isinstance(v, DeviceArray) else np.result_type(v)) != np.bool_
                                    for v in inputs):
            raise _unsupported(f"numpy.{name} on non-boolean arrays")
        elementwise = _kernels("elementwise")
        if name in ("invert", "logical_not"):
            out = out if out is not None else DeviceArray.empty(self.shape, np.bool_)
            elementwise.logical_not(self.array, out.array)
            return out
        if name in _PREDICATES:
            a, b = (v if isinstance(v, DeviceArray) else DeviceArray.full((), v, self.dtype) for v in inputs)
            out = out if out is not None else DeviceArray.empty(np.broadcast_shapes(a.shape, b.shape), np.bool_)
            elementwise.predicate(_PREDICATES[name], a.array, b.array, out.array)
            return out
        if len(inputs) == 1:
            out = out if out is not None else DeviceArray.empty(self.shape, self.dtype)
            elementwise.unary(op, self.array, out.array)
            return out
        dtype = np.result_type(*(v.dtype if isinstance(v, DeviceArray) else v for v in inputs))
        # boolean masks join the arithmetic in the result's dtype: the kernels see one float type
        a, b = (v.astype(dtype) if isinstance(v, DeviceArray) and v.dtype == np.bool_ else v for v in inputs)
        if isinstance(a, DeviceArray) and isinstance(b, DeviceArray):
            shape = np.broadcast_shapes(a.shape, b.shape)
            out = out if out is not None else DeviceArray.empty(shape, dtype)
            elementwise.binary(op, a.array, b.array, out.array)
        else:
            array, value = (a, b) if isinstance(a, DeviceArray) else (b, a)
            out = out if out is not None else DeviceArray.empty(array.shape, dtype)
            elementwise.scalar(op, array.array, float(np.asarray(value)), array is b, out.array)
        return out

    # +, -, *, /, **, comparisons, &, |, ^, ~, unary - and abs, and their in-place forms come from
    # NDArrayOperatorsMixin, which calls the matching ufunc: __array_ufunc__ above runs it on the device
    __hash__ = object.__hash__

    def __matmul__(self, other):
        return _matmul(self, other)

    def __rmatmul__(self, other):
        return _matmul(other, self)

    __imatmul__ = __matmul__  # a new array, as Python's fallback to __matmul__ gave

    # ---- NumPy functions: the few the tape calls -----------------------------------
    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func)
        if handler is None:
            raise _unsupported(f"numpy.{func.__name__}")
        for value in list(args) + list(kwargs.values()):
            values = value if isinstance(value, (list, tuple)) else [value]  # concatenate's list of arrays
            if any(_host_data(v) for v in values):
                raise _mixed(f"numpy.{func.__name__}")
        return handler(*args, **kwargs)


def _host_data(value):
    """A host array that is data, not index metadata (integer split points, pad widths, indices pass)."""
    return isinstance(value, np.ndarray) and value.ndim > 0 and value.dtype.kind not in "iu"


def _is_scalar(value):
    return isinstance(value, (numbers.Number, np.generic)) or (isinstance(value, np.ndarray) and value.ndim == 0)


# ---------------------------------------------------------------------------
# indexing: where a[index] lies in a's flat memory
# ---------------------------------------------------------------------------
def _basic_view(shape, index):
    """(offset, steps, view shape) of a[index] for a basic NumPy index of a C-contiguous `shape`.

    A basic index (ints, slices, None, one Ellipsis) picks a strided view:
    view[k] = a.flat[offset + Σ_d k_d·steps[d]]. Along a source axis of
    stride S, an int i adds i·S to the offset and drops the axis; a slice
    start:stop:step (any sign, as slice.indices normalises it) adds start·S
    and keeps an axis of len(range(start, stop, step)) with step·S; None
    inserts an axis of size 1 (step 0).
    """
    index = index if isinstance(index, tuple) else (index,)
    for item in index:
        if not (item is None or item is Ellipsis or isinstance(item, slice) or _is_index_int(item)):
            raise _unsupported(f"indexing with {type(item).__name__} {item!r}")
    consumed = sum(1 for item in index if item is not None and item is not Ellipsis)
    if consumed > len(shape):
        raise IndexError(f"too many indices for array: array is {len(shape)}-dimensional, "
                         f"but {consumed} were indexed")
    if sum(1 for item in index if item is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - consumed) + index[at + 1:]
    else:
        index = index + (slice(None),) * (len(shape) - consumed)
    strides = _contiguous_strides(shape)
    offset, steps, out_shape, d = 0, [], [], 0
    for item in index:
        if item is None:
            steps.append(0)
            out_shape.append(1)
            continue
        size, stride = shape[d], strides[d]
        d += 1
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            out_shape.append(len(range(start, stop, step)))
            steps.append(step * stride)
            offset += start * stride if out_shape[-1] else 0
        else:
            i = int(item)
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of bounds for axis {d - 1} with size {size}")
            offset += (i % size) * stride
    return offset, steps, tuple(out_shape)


def _is_index_int(item):
    return isinstance(item, (numbers.Integral, np.integer)) and not isinstance(item, (bool, np.bool_))


def _integer_rows(shape, index):
    """Row numbers for NumPy advanced indexing by integer arrays on axes lead..end-1, after `lead` full
    slices (a[np.arange(n), labels], a[:, :, rows]); None for a basic index.

    Returns (rows, head, end): a viewed (R, L) with R = Π shape[:end], L = Π shape[end:], the result is
    a's rows `rows` (a host int64 array: index metadata, copied to the device by the caller), shaped
    head + shape[end:],
    head = shape[:lead] + the broadcast index shape. Row number of (i, j) (i over the lead axes, j the
    index position) is i·Π shape[lead:end] + ravel_multi_index(index[j], shape[lead:end]).
    """
    index = index if isinstance(index, tuple) else (index,)
    if not any(isinstance(item, (list, np.ndarray, DeviceArray)) for item in index):
        return None
    if any(isinstance(item, DeviceArray) for item in index):
        raise _unsupported("indexing with an index array on the device (give the indices as a host array)")
    lead = 0
    while lead < len(index) and isinstance(index[lead], slice) and index[lead] == slice(None):
        lead += 1
    arrays = [np.asarray(item) for item in index[lead:]]
    if any(a.dtype.kind not in "iu" for a in arrays) or lead + len(arrays) > len(shape):
        raise _unsupported(f"indexing with {index!r} (only basic indices, or integer arrays after full slices)")
    arrays = np.broadcast_arrays(*arrays)
    end = lead + len(arrays)
    for d, a in enumerate(arrays, start=lead):
        if a.size and (a.min() < -shape[d] or a.max() >= shape[d]):
            raise IndexError(f"index out of bounds for axis {d} with size {shape[d]}")
    inner = np.ravel_multi_index(tuple(a % shape[d] for d, a in enumerate(arrays, start=lead)), shape[lead:end])
    outer = np.arange(int(np.prod(shape[:lead], dtype=np.int64))) * int(np.prod(shape[lead:end], dtype=np.int64))
    rows = (outer[:, None] + inner.reshape(1, -1)).reshape(-1).astype(np.int64)  # (Π shape[:lead]·|index|,)
    return rows, tuple(shape[:lead]) + arrays[0].shape, end


def _contiguous_strides(shape):
    return _kernels("elementwise").contiguous_strides(shape)


# ---------------------------------------------------------------------------
# the NumPy functions
# ---------------------------------------------------------------------------
def _matmul(a, b):
    """np.matmul on the device: 1-D operands as a row / a column, batch axes broadcast, one GEMM launch."""
    if not isinstance(a, DeviceArray) or not isinstance(b, DeviceArray):
        other = b if isinstance(a, DeviceArray) else a
        raise _mixed("matmul") if isinstance(other, np.ndarray) else TypeError(
            f"cannot multiply a 'cuda' array by {type(other).__name__}")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul on 'cuda' needs one dtype, got {a.dtype} and {b.dtype}")
    if not a.ndim or not b.ndim:
        raise ValueError("matmul: a 0-d operand is not allowed (use *)")
    a2 = a.reshape(1, -1) if a.ndim == 1 else a  # (..., M, K)
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b  # (..., K, N)
    (M, K), (K2, N) = a2.shape[-2:], b2.shape[-2:]
    if K != K2:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match in the contracted axis ({K} != {K2})")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    count = int(np.prod(batch, dtype=np.int64))
    operands = []
    for x in (a2, b2):  # the GEMM reads batch entry b of an operand as x[b mod B_x]: B_x = 1 or all of them
        if x.shape[:-2] != batch and int(np.prod(x.shape[:-2], dtype=np.int64)) != 1:
            x = _broadcast_to(x, batch + x.shape[-2:])
        operands.append(x.reshape((-1,) + x.shape[-2:]))  # (B_x, rows, cols)
    c = DeviceArray.empty((count, M, N), a.dtype)
    _kernels("gemm").matmul_into(c.array, operands[0].array, operands[1].array)
    shape = batch + (() if a.ndim == 1 else (M,)) + (() if b.ndim == 1 else (N,))
    return c.reshape(shape)


def _concatenate(arrays, axis=0):
    arrays = list(arrays)
    if not all(isinstance(a, DeviceArray) for a in arrays):
        raise _mixed("numpy.concatenate")
    if axis is None:
        arrays, axis = [a.reshape(-1) for a in arrays], 0
    ndim = arrays[0].ndim
    axis = int(axis) % ndim if ndim else 0
    rest = {a.shape[:axis] + a.shape[axis + 1:] for a in arrays}
    if len(rest) != 1 or any(a.ndim != ndim for a in arrays):
        raise ValueError(f"all the input array dimensions except for the concatenation axis must match exactly, "
                         f"got shapes {[a.shape for a in arrays]} along axis {axis}")
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = DeviceArray.empty(tuple(shape), np.result_type(*(a.dtype for a in arrays)))
    start = 0
    for a in arrays:  # each part is assigned to its slab of out
        out[(slice(None),) * axis + (slice(start, start + a.shape[axis]),)] = a
        start += a.shape[axis]
    return out


def _split(a, indices_or_sections, axis=0):
    axis = int(axis) % a.ndim
    size = a.shape[axis]
    if isinstance(indices_or_sections, numbers.Integral):
        if size % indices_or_sections:
            raise ValueError("array split does not result in an equal division")
        bounds = list(range(0, size, size // indices_or_sections))[1:]
    else:
        bounds = [int(b) for b in indices_or_sections]
    edges = [0] + bounds + [size]
    return [a[(slice(None),) * axis + (slice(lo, hi),)] for lo, hi in zip(edges[:-1], edges[1:])]


def _pad(a, pad_width, mode="constant", constant_values=0):
    if mode != "constant" or not _is_scalar(constant_values):
        raise _unsupported(f"numpy.pad with mode={mode!r} and constant_values={constant_values!r} "
                           f"(only a constant, one number)")
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (a.ndim, 2))
    if (widths < 0).any():
        raise ValueError(f"index can't contain negative values, got pad_width {widths.tolist()}")
    out = DeviceArray.full(tuple(n + int(lo) + int(hi) for n, (lo, hi) in zip(a.shape, widths)),
                           float(np.asarray(constant_values)), a.dtype)
    out[tuple(slice(int(lo), int(lo) + n) for n, (lo, _) in zip(a.shape, widths))] = a
    return out


def _where(condition, x, y):
    if not isinstance(condition, DeviceArray):
        raise _mixed("numpy.where")
    dtype = np.result_type(*(v.dtype if isinstance(v, DeviceArray) else v for v in (x, y)))
    x, y = (v.astype(dtype, copy=False) if isinstance(v, DeviceArray) else DeviceArray.full((), float(np.asarray(v)),
                                                                                              dtype) for v in (x, y))
    out = DeviceArray.empty(np.broadcast_shapes(condition.shape, x.shape, y.shape), dtype)
    _kernels("elementwise").where(condition.array, x.array, y.array, out.array)
    return out


def _clip(a, a_min=None, a_max=None):
    out = a if a_min is None else np.maximum(a, a_min)
    out = out if a_max is None else np.minimum(out, a_max)
    return out.copy() if out is a else out


def _full_like(a, fill_value, dtype=None, shape=None):
    return DeviceArray.full(a.shape if shape is None else shape, float(np.asarray(fill_value)), dtype or a.dtype)


def _expand_dims(a, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    shape, ndim = list(a.shape), a.ndim + len(axes)
    for ax in sorted(int(x) % ndim for x in axes):
        shape.insert(ax, 1)
    return a.reshape(tuple(shape))


def _broadcast_to(a, shape):
    shape = tuple(shape)
    if a.shape == shape:
        return a
    out = DeviceArray.empty(np.broadcast_shapes(a.shape, shape), a.dtype)
    _kernels("elementwise").binary("right", out.array, a.array, out.array)
    return out


def _squeeze(a, axis=None):
    axes = tuple(d for d, n in enumerate(a.shape) if n == 1) if axis is None else _normalize_axes(axis, a.ndim)
    return a.reshape(tuple(n for d, n in enumerate(a.shape) if d not in axes))


_FUNCTIONS = {
    np.ones_like: lambda a, dtype=None, shape=None: _full_like(a, 1, dtype, shape),
    np.zeros_like: lambda a, dtype=None, shape=None: _full_like(a, 0, dtype, shape),
    np.full_like: _full_like,
    np.concatenate: _concatenate,
    np.split: _split,
    np.pad: _pad,
    np.where: _where,
    np.clip: _clip,
    np.matmul: _matmul,
    np.take: lambda a, indices, axis: a[(slice(None),) * (int(axis) % a.ndim) + (np.asarray(indices),)],
    np.expand_dims: _expand_dims,
    np.broadcast_to: _broadcast_to,
    np.squeeze: _squeeze,
    np.swapaxes: lambda a, axis1, axis2: a.swapaxes(axis1, axis2),
    np.transpose: lambda a, axes=None: a.transpose(() if axes is None else axes),
    np.reshape: lambda a, shape: a.reshape(shape),
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a: a.size,
}

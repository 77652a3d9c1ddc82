"""The GPU device: `is_available()`, the device array behind a 'cuda' Tensor, and moving data.

A Tensor on the 'cuda' device holds a `DeviceArray` in `.data` instead of a
NumPy array: a thin wrapper around a numba.cuda device array that answers
the few array operations the tape and tinyconv.functional use, each by a
kernel of kernels/cuda/ (no data ever comes back to the host on the way):

    shape, dtype, ndim, size, reshape (a view), transpose / swapaxes (a copy)
    + - * / ** -x, comparisons, NumPy ufuncs add ... maximum, exp, log, sqrt,
    tanh, abs, sign (with NumPy broadcasting; in place with out= or +=)
    sum / max over axes, @ (2-D, the tiled GEMM), astype, copy
    np.ones_like, zeros_like, expand_dims, broadcast_to, swapaxes, squeeze

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
    return DeviceArray(cuda.to_device(np.ascontiguousarray(array)))


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
           "maximum": "maximum", "minimum": "minimum", "greater": "greater", "greater_equal": "greater_equal",
           "less": "less", "less_equal": "less_equal", "equal": "equal", "not_equal": "not_equal",
           "negative": "negative", "exp": "exp", "log": "log", "sqrt": "sqrt", "tanh": "tanh",
           "absolute": "abs", "sign": "sign", "matmul": "matmul"}
_COMPARISONS = ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal")


def _unsupported(what):
    return NotImplementedError(f"{what} is not implemented on the 'cuda' device; move the tensor to the host "
                               f"with .cpu() for this step")


def _mixed(what):
    return ValueError(f"{what}: operands are on different devices, 'cuda' and 'cpu'; move one of them "
                      f"with .to('cuda') or .to('cpu')")


def _normalize_axes(axis, ndim):
    axes = tuple(range(ndim)) if axis is None else axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(int(a) % ndim for a in axes))


class DeviceArray:
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
        raise _unsupported("indexing (tensor[...])")

    def __setitem__(self, index, value):
        raise _unsupported("item assignment")

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
        out = DeviceArray.empty(tuple(self.shape[d] for d in kept), self.dtype)
        _kernels("elementwise").reduce_rows(op, source.array, out.array)
        return out.reshape(tuple(1 if d in axes else n for d, n in enumerate(self.shape))) if keepdims else out

    def sum(self, axis=None, keepdims=False):
        return self._reduce("sum", axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return self._reduce("max", axis, keepdims)

    # ---- element-wise maths: NumPy's ufunc protocol ------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        op = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or op is None or kwargs:
            raise _unsupported(f"numpy.{ufunc.__name__}{'' if method == '__call__' else '.' + method}")
        if op == "matmul":
            return inputs[0] @ inputs[1]
        if out is not None:
            out = out[0] if isinstance(out, tuple) else out
            if not isinstance(out, DeviceArray):
                raise _mixed(f"numpy.{ufunc.__name__}(..., out=)")
        for value in inputs:
            if isinstance(value, np.ndarray) and value.ndim:
                raise _mixed(f"numpy.{ufunc.__name__}")
            if not isinstance(value, (DeviceArray, numbers.Number, np.ndarray, np.generic)):
                return NotImplemented
        elementwise = _kernels("elementwise")
        if len(inputs) == 1:
            out = out if out is not None else DeviceArray.empty(self.shape, self.dtype)
            elementwise.unary(op, self.array, out.array)
            return out
        a, b = inputs
        dtype = np.result_type(*(v.dtype if isinstance(v, DeviceArray) else v for v in inputs))
        if isinstance(a, DeviceArray) and isinstance(b, DeviceArray):
            shape = np.broadcast_shapes(a.shape, b.shape)
            out = out if out is not None else DeviceArray.empty(shape, dtype)
            elementwise.binary(op, a.array, b.array, out.array)
        else:
            array, value = (a, b) if isinstance(a, DeviceArray) else (b, a)
            out = out if out is not None else DeviceArray.empty(array.shape, dtype)
            elementwise.scalar(op, array.array, float(np.asarray(value)), array is b, out.array)
        return out

    __add__ = lambda self, other: np.add(self, other)  # noqa: E731
    __radd__ = lambda self, other: np.add(other, self)  # noqa: E731
    __sub__ = lambda self, other: np.subtract(self, other)  # noqa: E731
    __rsub__ = lambda self, other: np.subtract(other, self)  # noqa: E731
    __mul__ = lambda self, other: np.multiply(self, other)  # noqa: E731
    __rmul__ = lambda self, other: np.multiply(other, self)  # noqa: E731
    __truediv__ = lambda self, other: np.divide(self, other)  # noqa: E731
    __rtruediv__ = lambda self, other: np.divide(other, self)  # noqa: E731
    __pow__ = lambda self, other: np.power(self, other)  # noqa: E731
    __rpow__ = lambda self, other: np.power(other, self)  # noqa: E731
    __iadd__ = lambda self, other: np.add(self, other, out=(self,))  # noqa: E731
    __isub__ = lambda self, other: np.subtract(self, other, out=(self,))  # noqa: E731
    __imul__ = lambda self, other: np.multiply(self, other, out=(self,))  # noqa: E731
    __itruediv__ = lambda self, other: np.divide(self, other, out=(self,))  # noqa: E731
    __neg__ = lambda self: np.negative(self)  # noqa: E731
    __abs__ = lambda self: np.absolute(self)  # noqa: E731
    __gt__ = lambda self, other: np.greater(self, other)  # noqa: E731
    __ge__ = lambda self, other: np.greater_equal(self, other)  # noqa: E731
    __lt__ = lambda self, other: np.less(self, other)  # noqa: E731
    __le__ = lambda self, other: np.less_equal(self, other)  # noqa: E731
    __eq__ = lambda self, other: np.equal(self, other)  # noqa: E731
    __ne__ = lambda self, other: np.not_equal(self, other)  # noqa: E731
    __hash__ = object.__hash__

    def __matmul__(self, other):
        if not isinstance(other, DeviceArray):
            raise _mixed("matmul") if isinstance(other, np.ndarray) else TypeError(
                f"cannot multiply a 'cuda' array by {type(other).__name__}")
        if self.ndim != 2 or other.ndim != 2:
            raise _unsupported(f"matmul of {self.ndim}-D by {other.ndim}-D arrays (only 2-D @ 2-D)")
        if self.dtype != other.dtype:
            raise TypeError(f"matmul on 'cuda' needs one dtype, got {self.dtype} and {other.dtype}")
        return DeviceArray(_kernels("gemm").gemm(self.array, other.array))

    # ---- NumPy functions: the few the tape calls -----------------------------------
    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func)
        if handler is None:
            raise _unsupported(f"numpy.{func.__name__}")
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, np.ndarray) and value.ndim:
                raise _mixed(f"numpy.{func.__name__}")
        return handler(*args, **kwargs)


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
    np.ones_like: lambda a, dtype=None: DeviceArray.full(a.shape, 1, dtype or a.dtype),
    np.zeros_like: lambda a, dtype=None: DeviceArray.full(a.shape, 0, dtype or a.dtype),
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

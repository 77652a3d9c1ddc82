"""Tensor and the tape: reverse-mode automatic differentiation in one file.

A `Tensor` wraps a NumPy array (`.data`). Every differentiable operation
returns a new Tensor that remembers

    _parents   the Tensors it was computed from
    _backward  a function  grad_output -> (grad for each parent)
    _op        a name, for printing

`loss.backward()` orders the graph topologically (iteratively, with an
explicit stack, so a DenseNet-deep graph cannot hit Python's recursion
limit), then walks it from the loss back to the leaves. Each node turns the
gradient of the loss with respect to its output into gradients with respect
to its parents (the chain rule), and the engine *adds* them into the
parents: a tensor used twice receives both contributions.

Broadcasting is undone on the way back: if `a` of shape (3, 1) was added to
`b` of shape (2, 3, 4), the gradient reaching `a` is summed over the axes
that broadcasting created or stretched, so `a.grad.shape == a.shape`.

Only leaves (tensors created by the user with `requires_grad=True`) keep
`.grad`; call `t.retain_grad()` on an intermediate tensor to keep its
gradient too.
"""
import contextlib

import numpy as np

from tinyconv import cuda
from tinyconv.cuda import DeviceArray

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record nothing on the tape."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


def _as_float_array(data, dtype=None, name="data"):
    """Turn `data` into a float32/float64 NumPy array.

    float64 arrays stay float64; everything else numeric (Python floats,
    ints, bools, float16) becomes float32 unless `dtype` says otherwise.
    """
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(data, DeviceArray):  # data on the 'cuda' device stays there
        return data if dtype is None else data.astype(dtype, copy=False)
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric (float, int or bool), got an array of dtype {arr.dtype}")
    if dtype is None:
        keep = isinstance(data, np.ndarray) and arr.dtype in FLOAT_DTYPES
        dtype = arr.dtype if keep else np.dtype(np.float32)
    return arr.astype(dtype, copy=False)


def _owned(g, handed_out):
    """True when g is a NumPy array this backward pass made for one node alone (see _own): safe to change in place."""
    return (isinstance(g, np.ndarray) and g.base is None and g.flags.writeable
            and handed_out.get(id(g), 0) == 1)


def _own(g, handed_out):
    """g itself if this backward pass made it for one node alone, else a copy.

    A stored .grad may later be changed in place (clip_grad_norm_, +=), so it
    must not alias an array anyone else holds: the caller's seed, an upstream
    gradient passed through unchanged (x + y hands the same array to both),
    or a view of one (reshape). A fresh array handed out once is safe to keep,
    which saves a copy of every leaf's gradient (e.g. 16 MB for an input).
    """
    return g if g.base is None and handed_out.get(id(g), 0) == 1 else g.copy()


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`: the adjoint of NumPy broadcasting."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


class Tensor:
    """An n-dimensional float array that can record how it was computed.

    >>> x = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    array([[2., 4.],
           [6., 8.]], dtype=float32)
    """

    __array_priority__ = 100  # so that `ndarray * Tensor` calls Tensor.__rmul__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = _as_float_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = ""
        self._retain = False

    # ---- construction of graph nodes -------------------------------------
    @staticmethod
    def _make(data, parents, backward, op):
        """The result of an op: records (parents, backward) when grad is on.

        `backward(grad_output)` must return one gradient (or None) per parent.
        """
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._retain = False
        out._op = op
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        if out.requires_grad:
            out._parents = tuple(parents)
            out._backward = backward
        else:
            out._parents = ()
            out._backward = None
        return out

    def _lift(self, other):
        """A Python number or array as a constant Tensor of our dtype."""
        if isinstance(other, Tensor):
            return other
        arr = np.asarray(other)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"cannot combine a Tensor with {type(other).__name__} of dtype {arr.dtype}")
        return Tensor(arr.astype(self.dtype, copy=False))

    # ---- plain properties -------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._backward is None)
    device = property(lambda self: "cpu" if isinstance(self.data, np.ndarray) else self.data.device)

    def __len__(self):
        return len(self.data)

    def numpy(self):
        """The data as a NumPy array: `.data` itself on the CPU, a host copy on 'cuda'."""
        return self.data.numpy() if isinstance(self.data, DeviceArray) else self.data

    def item(self):
        return self.data.item()

    def to(self, device):
        """This tensor on `device` ('cpu' or 'cuda'; see tinyconv/cuda.py).

        Itself when already there; otherwise a copy recorded on the tape, so
        gradients flow back to the source device. 'cuda' without a GPU (and
        without Numba's simulator) raises tinyconv.cuda.CudaUnavailableError.
        """
        device = cuda.check_device(device)
        source = self.device
        if device == source:
            return self
        return Tensor._make(cuda.to_device(self.data, device), (self,), lambda g: (cuda.to_device(g, source),), "to")

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def detach(self):
        """The same data, cut from the graph (shares memory, needs no grad)."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    def retain_grad(self):
        self._retain = True
        return self

    def requires_grad_(self, flag=True):
        self.requires_grad = bool(flag)
        return self

    def astype(self, dtype):
        dtype = np.dtype(dtype)
        src = self.dtype
        return Tensor._make(self.data.astype(dtype), (self,), lambda g: (g.astype(src),), "astype")

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        device = "" if self.device == "cpu" else f", device='{self.device}'"  # printing copies to the host
        body = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{device}{grad})"

    __hash__ = object.__hash__

    # ---- the backward pass ------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`.

        `grad` is the gradient of some scalar with respect to `self`; it
        defaults to 1.0 when `self` holds a single element.
        """
        if not self.requires_grad:
            raise ValueError("backward() called on a tensor that does not require grad "
                             "(no input had requires_grad=True, or it was computed under no_grad())")
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without `grad` needs a single-element tensor, "
                                 f"got shape {self.shape}; pass grad= of that shape")
            grad = np.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = grad if isinstance(grad, DeviceArray) else np.asarray(grad)
            if cuda.device_of(grad) != self.device:
                raise ValueError(f"grad is on device '{cuda.device_of(grad)}' but the tensor is on '{self.device}'")
            if grad.shape != self.shape:
                raise ValueError(f"grad must have the tensor's shape {self.shape}, got {grad.shape}")
            grad = grad.astype(self.dtype, copy=False)

        grads = {id(self): grad}
        handed_out = {id(grad): 2}  # times each array was passed along; the caller's seed is never ours
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None or node._retain:
                node.grad = _own(g, handed_out) if node.grad is None else node.grad + g
            if node._backward is None:
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                pg = pg if isinstance(pg, DeviceArray) else np.asarray(pg)
                pg = unbroadcast(pg, parent.shape).astype(parent.dtype, copy=False)
                key = id(parent)
                if key in grads:
                    total = grads[key]
                    if _owned(total, handed_out):
                        total += pg  # a join (residual): add into the array the tape owns, no new 8 MB array
                        continue
                    pg = total + pg  # a new array
                handed_out[id(pg)] = handed_out.get(id(pg), 0) + 1
                grads[key] = pg

    def _topological_order(self):
        """Nodes reachable from self, each after all of its parents (iterative DFS)."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for p in node._parents:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))
        return order

    # ---- arithmetic -------------------------------------------------------
    def _binary(self, other, forward, grads, op):
        other = self._lift(other)
        try:
            np.broadcast_shapes(self.shape, other.shape)
        except ValueError:
            raise ValueError(f"operands of '{op}' cannot broadcast: shapes {self.shape} and {other.shape}") from None
        return Tensor._make(forward(self.data, other.data), (self, other), grads(self.data, other.data), op)

    def __add__(self, other):
        return self._binary(other, np.add, lambda a, b: lambda g: (g, g), "+")

    def __mul__(self, other):
        return self._binary(other, np.multiply, lambda a, b: lambda g: (g * b, g * a), "*")

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            def grads(a, b):
                return lambda g: (g * b * a ** (b - 1), g * a ** b * np.log(a))
            return self._binary(exponent, np.power, grads, "**")
        if not np.isscalar(exponent):
            raise TypeError(f"exponent must be a number or a Tensor, got {type(exponent).__name__}")
        a = self.data
        return Tensor._make(a ** exponent, (self,), lambda g: (g * exponent * a ** (exponent - 1),), "**")

    def __neg__(self):
        return Tensor._make(-self.data, (self,), lambda g: (-g,), "neg")

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __truediv__(self, other):
        return self * self._lift(other) ** -1

    def __radd__(self, other):
        return self._lift(other) + self

    def __rsub__(self, other):
        return self._lift(other) - self

    def __rmul__(self, other):
        return self._lift(other) * self

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __rpow__(self, other):
        return self._lift(other) ** self

    def __matmul__(self, other):
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul shapes do not match: {a.shape} @ {b.shape}")

        def backward(g):
            if a.ndim == 1 and b.ndim == 1:  # dot product
                return g * b, g * a
            # treat 1-D operands as a row (a) or a column (b), as np.matmul does
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = np.expand_dims(g, -2) if a.ndim == 1 else g
            g2 = np.expand_dims(g2, -1) if b.ndim == 1 else g2
            grad_a = g2 @ np.swapaxes(b2, -1, -2)  # dL/dA = dL/dY · Bᵀ
            grad_b = np.swapaxes(a2, -1, -2) @ g2  # dL/dB = Aᵀ · dL/dY
            grad_a = grad_a[..., 0, :] if a.ndim == 1 else grad_a
            grad_b = grad_b[..., :, 0] if b.ndim == 1 else grad_b
            return grad_a, grad_b  # batch axes are summed by unbroadcast

        return Tensor._make(a @ b, (self, other), backward, "@")

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # comparisons give plain boolean arrays: they are not differentiable
    def __lt__(self, other):
        return self.data < _raw(other)

    def __le__(self, other):
        return self.data <= _raw(other)

    def __gt__(self, other):
        return self.data > _raw(other)

    def __ge__(self, other):
        return self.data >= _raw(other)

    def __eq__(self, other):
        return self.data == _raw(other)

    def __ne__(self, other):
        return self.data != _raw(other)

    # ---- element-wise maths ----------------------------------------------
    def exp(self):
        y = np.exp(self.data)
        return Tensor._make(y, (self,), lambda g: (g * y,), "exp")

    def log(self):
        x = self.data
        return Tensor._make(np.log(x), (self,), lambda g: (g / x,), "log")

    def sqrt(self):
        y = np.sqrt(self.data)
        return Tensor._make(y, (self,), lambda g: (g / (2 * y),), "sqrt")

    def abs(self):
        x = self.data
        return Tensor._make(np.abs(x), (self,), lambda g: (g * np.sign(x),), "abs")

    def clip(self, low=None, high=None):
        x = self.data
        inside = np.ones_like(x, dtype=bool)
        if low is not None:
            inside &= x >= low
        if high is not None:
            inside &= x <= high
        return Tensor._make(np.clip(x, low, high), (self,), lambda g: (g * inside,), "clip")

    # ---- reductions ------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        shape = self.shape
        y = self.data.sum(axis=axis, keepdims=keepdims)

        def backward(g):
            if not keepdims and axis is not None:
                g = np.expand_dims(g, _normalize_axes(axis, len(shape)))
            return (np.broadcast_to(g, shape),)

        return Tensor._make(_array(y), (self,), backward, "sum")

    def mean(self, axis=None, keepdims=False):
        axes = range(self.ndim) if axis is None else _normalize_axes(axis, self.ndim)
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims=False):
        """Maximum; the gradient is split evenly between tied maxima."""
        x = self.data
        y = _array(x.max(axis=axis, keepdims=True))

        def backward(g):
            if not keepdims and axis is not None:
                g = np.expand_dims(g, _normalize_axes(axis, x.ndim))
            winners = x == y
            return (winners * (g / winners.sum(axis=axis, keepdims=True)),)

        out = y if keepdims else (y.reshape(()) if axis is None else np.squeeze(y, axis=axis))
        return Tensor._make(_array(out), (self,), backward, "max")

    # ---- shape ------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        src = self.shape
        try:
            y = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {src} ({self.size} elements) into {tuple(shape)}") from None
        return Tensor._make(y, (self,), lambda g: (g.reshape(src),), "reshape")

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        shape = self.shape
        if not shape:
            return self.reshape(1)
        start, end = start_dim % len(shape), end_dim % len(shape)
        return self.reshape(shape[:start] + (-1,) + shape[end + 1:])

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute needs a permutation of the {self.ndim} axes, got {tuple(axes)}")
        inverse = np.argsort([a % self.ndim for a in axes])
        return Tensor._make(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),), "permute")

    def transpose(self, dim0=-2, dim1=-1):
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        shape, dtype, device = self.shape, self.dtype, self.device

        def backward(g):
            grad = np.zeros(shape, dtype=dtype) if device == "cpu" else DeviceArray.full(shape, 0, dtype)
            if device == "cpu" and _is_basic_index(index):
                grad[index] = g  # a view names each element at most once: assignment is the adjoint
            else:
                np.add.at(grad, index, g)  # add.at: repeated indices accumulate
            return (grad,)

        return Tensor._make(self.data[index], (self,), backward, "getitem")

    def pad(self, pad_width, value=0.0):
        """np.pad-style padding: `pad_width` is ((before, after), ...) per axis."""
        pad_width = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (self.ndim, 2))
        if (pad_width < 0).any():
            raise ValueError(f"pad widths must be >= 0, got {pad_width.tolist()}")
        inner = tuple(slice(b, b + n) for (b, _), n in zip(pad_width, self.shape))
        y = np.pad(self.data, pad_width, constant_values=value)
        return Tensor._make(y, (self,), lambda g: (g[inner],), "pad")


def _array(y):
    """A reduction's result as an array: NumPy returns scalars for full reductions; device arrays stay."""
    return y if isinstance(y, DeviceArray) else np.asarray(y)


def _is_basic_index(index):
    """True for NumPy basic indexing (ints, slices, None, ...): the result is a view, no element twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, slice)
               or (isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_))) for p in parts)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _normalize_axes(axis, ndim):
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def tensor(data, requires_grad=False, dtype=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def concat(tensors, axis=0):
    """Join tensors along an existing axis; backward splits the gradient."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    try:
        y = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError as e:
        raise ValueError(f"concat: shapes {[t.shape for t in tensors]} do not match along axis {axis}: {e}") from None
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return Tensor._make(y, tensors, lambda g: tuple(np.split(g, bounds, axis=axis)), "concat")


cat = concat


def stack(tensors, axis=0):
    """Join tensors along a new axis."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack needs tensors of one shape, got {sorted(shapes)}")
    return concat([t.reshape(t.shape[:axis % (t.ndim + 1)] + (1,) + t.shape[axis % (t.ndim + 1):])
                   for t in tensors], axis=axis)

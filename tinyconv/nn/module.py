"""Module and Parameter: the containers networks are built from, as torch.nn.

A Module owns Parameters (trainable Tensors), buffers (NumPy arrays such as
batch norm's running statistics, saved but not trained) and child Modules,
all found by attribute assignment:

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.conv = Conv2d(1, 8, 3)     # a child module
            self.scale = Parameter(np.ones(8))

`named_parameters()` walks the tree and names every parameter by its path
("conv.weight"); `state_dict()` / `load_state_dict()` use the same names.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from tinyconv import cuda
from tinyconv.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad is True by default."""

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys", "mismatched_keys"])


class Module:
    """Base class of every layer and network."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration by attribute assignment ----------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning attributes (assigning {name!r})")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """A NumPy array saved in state_dict but not trained (e.g. running_mean)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = None if array is None else np.asarray(array)

    def register_parameter(self, name, param):
        if param is None:
            self._parameters[name] = None  # an absent bias, still listed
        else:
            setattr(self, name, param)

    def add_module(self, name, module):
        setattr(self, name, module)

    # ---- forward ---------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- walking the tree -------------------------------------------------
    def named_modules(self, prefix=""):
        """(path, module) for self and every descendant, depth first (iterative)."""
        stack, seen = [(prefix, self)], set()
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def _named_members(self, table):
        seen = set()
        for path, module in self.named_modules():
            for name, value in getattr(module, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{path}.{name}" if path else name), value

    def named_parameters(self):
        return self._named_members("_parameters")

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self):
        return self._named_members("_buffers")

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def num_parameters(self, trainable_only=False):
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- modes and grads ---------------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def to(self, dtype):
        """Convert every parameter and floating buffer to `dtype`, or move them to a device, in place; returns self.

        `dtype` is float32 / float64, or a device, 'cpu' or 'cuda' (tinyconv/cuda.py). A move keeps each
        Parameter object (optimizers built before still hold them) and moves its .grad too; integer buffers
        (batch norm's num_batches_tracked, a host-side counter) stay on the host.
        """
        if isinstance(dtype, str) and dtype in cuda.DEVICES:
            return self._move(cuda.check_device(dtype))
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"Module.to: dtype must be float32 or float64, got {dtype}")
        for module in self.modules():
            for p in module._parameters.values():
                if p is not None:
                    p.data = p.data.astype(dtype)
                    p.grad = None
            for name, b in module._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    module._buffers[name] = b.astype(dtype)
        return self

    def _move(self, device):
        for module in self.modules():
            for p in module._parameters.values():
                if p is not None:
                    p.data = cuda.to_device(p.data, device)
                    p.grad = None if p.grad is None else cuda.to_device(p.grad, device)
            for name, b in module._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    module._buffers[name] = cuda.to_device(b, device)
        return self

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # ---- state ------------------------------------------------------------
    def state_dict(self):
        """name -> a copy of every parameter and buffer, in registration order."""
        state = OrderedDict()
        for path, module in self.named_modules():
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if value is not None:
                        array = value.data if isinstance(value, Tensor) else value
                        array = cuda.to_device(array, "cpu")  # a host copy of a 'cuda' array
                        state[f"{path}.{name}" if path else name] = np.array(array, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters and buffers of the same names.

        With strict=True any missing, unexpected or mismatched (shape or
        dtype) key raises ValueError listing all of them and changes
        nothing; with strict=False what matches is loaded and the rest is
        returned as (missing_keys, unexpected_keys, mismatched_keys).
        """
        targets = {}
        for path, module in self.named_modules():
            for table in ("_parameters", "_buffers"):
                for name, value in getattr(module, table).items():
                    if value is not None:
                        targets[f"{path}.{name}" if path else name] = (module, table, name)
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        mismatched, matched = [], []
        for key in targets:
            if key not in state_dict:
                continue
            module, table, name = targets[key]
            current = getattr(module, table)[name]
            current = current.data if isinstance(current, Tensor) else current
            new = np.asarray(state_dict[key].data if isinstance(state_dict[key], Tensor) else state_dict[key])
            if new.shape != current.shape or new.dtype != current.dtype:
                mismatched.append(f"{key}: checkpoint {new.shape} {new.dtype}, model {current.shape} {current.dtype}")
            else:
                matched.append((module, table, name, new))
        if strict and (missing or unexpected or mismatched):
            lines = [f"load_state_dict into {type(self).__name__} failed (strict=True):"]
            lines += [f"  missing keys: {missing}"] if missing else []
            lines += [f"  unexpected keys: {unexpected}"] if unexpected else []
            lines += ["  mismatched:"] + [f"    {m}" for m in mismatched] if mismatched else []
            raise ValueError("\n".join(lines))
        for module, table, name, new in matched:
            current = getattr(module, table)[name]
            device = cuda.device_of(current.data if isinstance(current, Tensor) else current)  # stays where it is
            if table == "_parameters":
                module._parameters[name].data = cuda.to_device(np.array(new, copy=True), device)
            else:
                module._buffers[name] = cuda.to_device(np.array(new, copy=True), device)
        return IncompatibleKeys(missing, unexpected, mismatched)

    # ---- printing -----------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        children = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        return head + "\n  " + "\n  ".join(children) + "\n)"


class Sequential(Module):
    """Modules applied one after another; indexable like a list."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            modules = modules[0].items()
        else:
            modules = ((str(i), m) for i, m in enumerate(modules))
        for name, module in modules:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules, got {type(module).__name__} for {name!r}")
            setattr(self, name, module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def __getitem__(self, index):
        items = list(self._modules.values())
        return Sequential(*items[index]) if isinstance(index, slice) else items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        setattr(self, str(len(self)), module)
        return self


class ModuleList(Module):
    """A list of Modules whose parameters the parent sees."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList takes Modules, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

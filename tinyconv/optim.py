"""Optimisers and learning-rate schedules, with PyTorch's update rules.

Notation: w a parameter (`p.data`), g its gradient (`p.grad`), lr the
learning rate, wd the weight decay, t the number of steps this parameter has
taken. Every update is done in place on `p.data`, in its own dtype;
parameters whose `.grad` is None are skipped (their state does not advance).

SGD (torch.optim.SGD):
    g ← g + wd·w
    buf ← g                          on the first step
    buf ← m·buf + (1 − dampening)·g  afterwards
    g ← g + m·buf   (nesterov)   or   g ← buf
    w ← w − lr·g

Adam (torch.optim.Adam), AdamW (torch.optim.AdamW):
    Adam:  g ← g + wd·w              AdamW:  w ← w·(1 − lr·wd)   (decoupled)
    m ← β1·m + (1 − β1)·g
    v ← β2·v + (1 − β2)·g²           amsgrad: v_max ← max(v_max, v), use v_max
    w ← w − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)

Schedules set `optimizer.lr` from a closed form in the epoch count; call
`scheduler.step()` once per epoch (or once per iteration, if the schedule is
written in iterations, as Caffe's are).

State is kept flat so a checkpoint is one `np.savez`:

>>> import numpy as np
>>> from tinyconv.tensor import Tensor
>>> w = Tensor(np.ones(2), requires_grad=True)
>>> opt = SGD([w], lr=0.1, momentum=0.9)
>>> w.grad = np.array([1.0, 2.0]); opt.step()
>>> sorted(opt.state_dict())  # doctest: +NORMALIZE_WHITESPACE
['dampening', 'lr', 'momentum', 'nesterov', 'num_params', 'state.0.momentum_buffer', 'state.0.step',
 'type', 'weight_decay']
"""
import bisect
import math

import numpy as np

from tinyconv import cuda


# ---- argument checks ---------------------------------------------------------

def _number(value, name, low=0.0, high=math.inf, high_open=False):
    """A float in [low, high] (or [low, high) when high_open), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    too_high = value >= high if high_open else value > high
    if not value >= low or too_high:   # `not >=` also catches NaN
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value}")
    return value


def _count(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


# ---- optimisers --------------------------------------------------------------

class Optimizer:
    """A list of parameters, a learning rate, and per-parameter state.

    Subclasses list their hyper-parameters in HYPER and write `update(p, grad, state)`.
    """

    HYPER = ()

    def __init__(self, params, lr):
        params = [params] if hasattr(params, "data") else list(params)
        if not params:
            raise ValueError("params is empty: the optimizer has nothing to update")
        for i, p in enumerate(params):
            if not isinstance(getattr(p, "data", None), (np.ndarray, cuda.DeviceArray)) or p.data.dtype.kind != "f":
                raise TypeError(f"params[{i}] must be a Tensor with a float .data array, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("params holds the same tensor more than once")
        self.params = params
        self.lr = _number(lr, "lr")
        self.state = [{"step": 0} for _ in params]

    def zero_grad(self):
        """Forget every gradient (sets .grad to None, as PyTorch does by default)."""
        for p in self.params:
            p.grad = None

    def step(self):
        for i, (p, state) in enumerate(zip(self.params, self.state)):
            if p.grad is None:
                continue
            grad = p.grad if isinstance(p.grad, cuda.DeviceArray) else np.asarray(p.grad)  # updates stay on p's device
            if grad.shape != p.data.shape:
                raise ValueError(f"params[{i}].grad has shape {grad.shape}, the parameter has {p.data.shape}")
            state["step"] += 1
            self.update(p, grad.astype(p.data.dtype, copy=False), state)

    def update(self, p, grad, state):
        raise NotImplementedError

    def state_dict(self):
        """A flat dict of numbers, strings and arrays: `np.savez(f, **opt.state_dict())` saves it."""
        flat = {"type": type(self).__name__, "num_params": len(self.params), "lr": self.lr}
        flat.update({name: getattr(self, name) for name in self.HYPER})
        for i, state in enumerate(self.state):
            for key, value in state.items():
                flat[f"state.{i}.{key}"] = value.copy() if isinstance(value, np.ndarray) else \
                    value.numpy() if isinstance(value, cuda.DeviceArray) else value  # host copies, for saving
        return flat

    def load_state_dict(self, flat):
        """Restore from `state_dict()` or from the arrays of an `np.load`ed .npz."""
        if str(flat["type"]) != type(self).__name__:
            raise ValueError(f"state_dict is for {flat['type']}, this optimizer is {type(self).__name__}")
        if int(flat["num_params"]) != len(self.params):
            raise ValueError(f"state_dict is for {int(flat['num_params'])} parameters, "
                             f"this optimizer has {len(self.params)}")
        self.lr = float(flat["lr"])
        for name in self.HYPER:
            value = np.asarray(flat[name])
            setattr(self, name, tuple(value.tolist()) if value.ndim else value.item())
        state = [{} for _ in self.params]
        for key, value in flat.items():
            if not key.startswith("state."):
                continue
            _, i, name = key.split(".", 2)
            i = int(i)
            value = np.asarray(value)
            if name == "step":
                state[i][name] = int(value)
            elif value.shape != self.params[i].data.shape:
                raise ValueError(f"state_dict '{key}' has shape {value.shape}, "
                                 f"params[{i}] has {self.params[i].data.shape}")
            else:
                state[i][name] = cuda.to_device(value.astype(self.params[i].data.dtype, copy=True),
                                                cuda.device_of(self.params[i].data))
        for s in state:
            s.setdefault("step", 0)
        self.state = state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov, as torch.optim.SGD.

    The classic (Caffe, Sutskever et al.) form keeps a velocity v that has the
    learning rate inside it:

        v ← m·v − lr·(g + wd·w),   w ← w + v

    PyTorch keeps buf = −v / lr instead (w ← w − lr·buf). While lr is
    constant (and dampening = 0) the two give the same weights step for step;
    when a schedule changes lr, Caffe's v still carries the old lr, PyTorch's
    buf applies the new lr to the whole accumulated history.

    Worked example (LITERATURE.md): a gradient step lr·g = 3 on top of a
    previous velocity v = −9 with m = 0.9 moves w by −3 + 0.9·(−9) = −11.1;
    here buf = 9/lr, then buf ← 0.9·buf + g and w moves by −lr·buf = −11.1.
    """

    HYPER = ("momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum = _number(momentum, "momentum", 0.0, 1.0, high_open=True)
        self.dampening = _number(dampening, "dampening", 0.0, 1.0)
        self.weight_decay = _number(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0, "
                             f"got momentum={self.momentum}, dampening={self.dampening}")

    def update(self, p, grad, state):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * p.data
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * grad


class Adam(Optimizer):
    """Adam with bias correction and optional AMSGrad, as torch.optim.Adam (L2 weight decay in the gradient)."""

    HYPER = ("betas", "eps", "weight_decay", "amsgrad")
    DECOUPLED = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_number(betas[0], "betas[0]", 0.0, 1.0, high_open=True),
                      _number(betas[1], "betas[1]", 0.0, 1.0, high_open=True))
        self.eps = _number(eps, "eps")
        self.weight_decay = _number(weight_decay, "weight_decay")
        self.amsgrad = bool(amsgrad)

    def update(self, p, grad, state):
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self.DECOUPLED:
                p.data *= 1 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * p.data
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")[:3 if self.amsgrad else 2]:
            if key not in state:
                state[key] = np.zeros_like(p.data)
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m += (1 - beta1) * (grad - m)               # = β1·m + (1 − β1)·g, as torch's lerp_
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = self.lr / (1 - beta1 ** t)
        denom = np.sqrt(v) / (1 - beta2 ** t) ** 0.5 + self.eps
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW: w ← w·(1 − lr·wd) first."""

    DECOUPLED = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def clip_grad_norm_(params, max_norm, norm_type=2.0):
    """Scale all gradients together so their joint norm is at most max_norm; returns the norm before.

    As torch.nn.utils.clip_grad_norm_: total = ‖(‖g_1‖, ‖g_2‖, ...)‖, and every
    grad is multiplied by min(max_norm / (total + 1e-6), 1).
    """
    params = [params] if hasattr(params, "data") else list(params)
    max_norm = _number(max_norm, "max_norm")
    norm_type = _number(norm_type, "norm_type", low=1.0)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = [_norm(g, norm_type) for g in grads]   # one per tensor
    total = float(np.linalg.norm(norms, norm_type))
    scale = min(max_norm / (total + 1e-6), 1.0)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad * scale   # a Python float keeps the grad's dtype
    return total


def _norm(grad, norm_type):
    """‖grad‖_p in float64; on 'cuda' computed there, one number read back."""
    if not isinstance(grad, cuda.DeviceArray):
        return np.linalg.norm(np.asarray(grad).ravel().astype(np.float64), norm_type)
    magnitude = abs(grad.astype(np.float64))
    if norm_type == math.inf:
        return magnitude.max().item()
    return (magnitude ** norm_type).sum().item() ** (1 / norm_type)


# ---- learning-rate schedules -------------------------------------------------

class LRScheduler:
    """Sets `optimizer.lr = lr_at(epoch)`; `step()` advances the epoch by one.

    Construction sets the epoch-0 rate; `base_lr` is the optimizer's lr at
    construction. Subclasses write `lr_at(epoch)`, a closed form.
    """

    def __init__(self, optimizer, base_lr=None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a tinyconv.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr if base_lr is None else base_lr
        self.last_epoch = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """[the current lr]: a one-element list, as PyTorch's (one per param group)."""
        return [self.optimizer.lr]

    def state_dict(self):
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(LRScheduler):
    """lr = base_lr · gamma^(epoch // step_size), as torch.optim.lr_scheduler.StepLR.

    This is Caffe's "step" policy, lr = base_lr · gamma^floor(iter / stepsize),
    when step() is called once per iteration. The GoogLeNet solver:
    StepLR(SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0002),
    step_size=320_000, gamma=0.96), stepped every iteration.
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _count(step_size, "step_size")
        self.gamma = _number(gamma, "gamma")
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = base_lr · gamma^(number of milestones <= epoch), as torch.optim.lr_scheduler.MultiStepLR."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones = [_count(m, "milestones", low=0) for m in milestones]
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.gamma = _number(gamma, "gamma")
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr − eta_min)·(1 + cos(π·epoch / T_max)) / 2 (SGDR without restarts).

    torch.optim.lr_scheduler.CosineAnnealingLR's closed form; its recursive
    form agrees up to rounding.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _count(T_max, "T_max")
        self.eta_min = _number(eta_min, "eta_min")
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """Ramp lr linearly from start_factor·base_lr to base_lr over `warmup` epochs (or steps), then hand over.

        lr(e) = base_lr · (start_factor + (1 − start_factor)·e / warmup)   for e < warmup
        lr(e) = after.lr_at(e − warmup)   (or base_lr without `after`)     for e >= warmup

    Equal to PyTorch's SequentialLR([LinearLR(opt, start_factor, total_iters=warmup), after],
    milestones=[warmup]). Build `after` on the same optimizer first and step only the warmup.
    """

    def __init__(self, optimizer, warmup, after=None, start_factor=1.0 / 3):
        self.warmup = _count(warmup, "warmup")
        self.start_factor = _number(start_factor, "start_factor", 0.0, 1.0)
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("after must schedule the same optimizer as the warmup")
        self.after = after
        super().__init__(optimizer, None if after is None else after.base_lr)

    def lr_at(self, epoch):
        if epoch >= self.warmup:
            return self.after.lr_at(epoch - self.warmup) if self.after is not None else self.base_lr
        return self.base_lr * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup)

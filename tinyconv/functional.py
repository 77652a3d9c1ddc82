"""Differentiable functions, named and ordered as in `torch.nn.functional`.

Every function here does three things, always in this order:

1. validate its arguments, raising ValueError/TypeError that names the
   argument, its value and what was expected (no jitted kernel ever sees a
   bad shape);
2. compute the output with NumPy or a `kernels.<op>_forward`;
3. return `Tensor._make(output, parents, backward, name)`, where
   `backward(grad_output)` returns one gradient per parent.

This module never loops over pixels itself: the loops live in `kernels/`.
"""
import numbers

import numpy as np

from tinyconv import random
from tinyconv.tensor import Tensor


# ---------------------------------------------------------------------------
# argument checking shared by every op
# ---------------------------------------------------------------------------
def _check_tensor(x, name, ndim=None):
    """`x` as a float Tensor (arrays are wrapped), or a clear error."""
    if isinstance(x, np.ndarray):
        x = Tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return x


def _pair(value, name, minimum=None):
    """An int or a pair of ints -> (h, w), each checked against `minimum`."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value) \
        if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                 for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = (int(pair[0]), int(pair[1]))
    if minimum is not None and min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _same_dtype(name, x, other):
    if other.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but input has dtype {x.dtype}; convert one of them")


def _parents_and_grads(tensors, grads):
    """Drop None entries (an absent bias) from parents and their gradients alike."""
    return tuple(t for t in tensors if t is not None), tuple(g for t, g in zip(tensors, grads) if t is not None)


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------
def _elementwise(x, y, local_grad, name):
    """y = f(x) applied element-wise; backward multiplies by f'(x)."""
    return Tensor._make(y, (x,), lambda g: (g * local_grad(),), name)


def relu(input):
    x = _check_tensor(input, "input")
    return _elementwise(x, np.maximum(x.data, 0), lambda: x.data > 0, "relu")


def relu6(input):
    x = _check_tensor(input, "input")
    return _elementwise(x, np.clip(x.data, 0, 6), lambda: (x.data > 0) & (x.data < 6), "relu6")


def leaky_relu(input, negative_slope=0.01):
    x = _check_tensor(input, "input")
    slope = np.where(x.data > 0, 1, negative_slope).astype(x.dtype)
    return _elementwise(x, x.data * slope, lambda: slope, "leaky_relu")


def elu(input, alpha=1.0):
    x = _check_tensor(input, "input")
    neg = alpha * np.expm1(np.minimum(x.data, 0))
    y = np.where(x.data > 0, x.data, neg)
    return _elementwise(x, y, lambda: np.where(x.data > 0, 1, neg + alpha), "elu")


def sigmoid(input):
    x = _check_tensor(input, "input")
    y = 0.5 * (1 + np.tanh(0.5 * x.data))  # stable for large |x|
    return _elementwise(x, y, lambda: y * (1 - y), "sigmoid")


def tanh(input):
    x = _check_tensor(input, "input")
    y = np.tanh(x.data)
    return _elementwise(x, y, lambda: 1 - y * y, "tanh")


def softmax(input, dim=-1):
    """softmax(x)_i = exp(x_i - max) / Σ_j exp(x_j - max); backward y·(g - Σ g·y)."""
    x = _check_tensor(input, "input")
    e = np.exp(x.data - x.data.max(axis=dim, keepdims=True))
    y = e / e.sum(axis=dim, keepdims=True)
    return Tensor._make(y, (x,), lambda g: (y * (g - (g * y).sum(axis=dim, keepdims=True)),), "softmax")


def log_softmax(input, dim=-1):
    """log_softmax(x) = x - logsumexp(x); backward g - softmax·Σ g."""
    x = _check_tensor(input, "input")
    shifted = x.data - x.data.max(axis=dim, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    return Tensor._make(y, (x,), lambda g: (g - np.exp(y) * g.sum(axis=dim, keepdims=True),), "log_softmax")


# ---------------------------------------------------------------------------
# linear layers and regularisation
# ---------------------------------------------------------------------------
def linear(input, weight, bias=None):
    """y = x·Wᵀ + b, with W of shape (out_features, in_features)."""
    x = _check_tensor(input, "input")
    weight = _check_tensor(weight, "weight", ndim=2)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input's last dimension must be in_features = {weight.shape[1]}, got shape {x.shape}")
    y = x @ weight.T
    if bias is not None:
        bias = _check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
        y = y + bias
    return y


def dropout(input, p=0.5, training=True, generator=None):
    """Zero each element with probability p, scale the rest by 1/(1-p).

    `generator` is a `numpy.random.Generator` (seed it for reproducible
    masks); the default draws from tinyconv's global generator
    (`tinyconv.manual_seed`).
    """
    x = _check_tensor(input, "input")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    rng = generator if generator is not None else random.get_generator()
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / (1 - p) if p < 1 else np.zeros(x.shape, x.dtype)
    return Tensor._make(x.data * keep, (x,), lambda g: (g * keep,), "dropout")


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _class_targets(target, n, num_classes, name="target"):
    """Integer class labels as an int64 array of shape (n,), range-checked."""
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(t == np.round(t)):
            t = t.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {t.shape}")
    if n and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"{name} values must lie in [0, {num_classes - 1}], got min {t.min()} max {t.max()}")
    return t.astype(np.int64)


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def cross_entropy(input, target, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,).

    With smoothing ε the target distribution is q = (1-ε)·onehot + ε/C and
    loss_n = -Σ_c q_c·log_softmax(x_n)_c. Fused: the gradient with respect to
    the logits is softmax(x_n) - q, scaled by 1/N for the mean.
    """
    x = _check_tensor(input, "input", ndim=2)
    _check_reduction(reduction)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    n, num_classes = x.shape
    t = _class_targets(target, n, num_classes)
    shifted = x.data - x.data.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    q = np.full(x.shape, label_smoothing / num_classes, dtype=x.dtype)
    q[np.arange(n), t] += 1 - label_smoothing
    per_sample = -(q * log_probs).sum(axis=1)
    scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0

    def backward(g):
        g = g[:, None] if reduction == "none" else g * scale
        return ((np.exp(log_probs) - q) * g,)

    out = per_sample if reduction == "none" else np.asarray(per_sample.sum() * scale, dtype=x.dtype)
    return Tensor._make(out, (x,), backward, "cross_entropy")


def nll_loss(input, target, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C): -input[n, target[n]]."""
    x = _check_tensor(input, "input", ndim=2)
    _check_reduction(reduction)
    t = _class_targets(target, x.shape[0], x.shape[1])
    return _reduce(-x[np.arange(x.shape[0]), t], reduction)


def mse_loss(input, target, reduction="mean"):
    x = _check_tensor(input, "input")
    target = target if isinstance(target, Tensor) else Tensor(np.asarray(target, dtype=x.dtype))
    if target.shape != x.shape:
        raise ValueError(f"target must have the input's shape {x.shape}, got {target.shape}")
    _check_reduction(reduction)
    diff = x - target
    return _reduce(diff * diff, reduction)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    """x / max(‖x‖_p, eps) along `dim` (L2 by default), as FaceNet's embeddings."""
    x = _check_tensor(input, "input")
    if p != 2.0:
        raise ValueError(f"normalize supports p=2 only, got p={p}")
    norm = (x * x).sum(axis=dim, keepdims=True).sqrt()
    safe = Tensor(np.full(norm.shape, eps, dtype=x.dtype))
    return x / _maximum(norm, safe)


def _maximum(a, b):
    pick_a = a.data >= b.data
    return Tensor._make(np.where(pick_a, a.data, b.data), (a, b), lambda g: (g * pick_a, g * ~pick_a), "maximum")


# ---------------------------------------------------------------------------
# convolution (conv2d, conv_transpose2d, deform_conv2d): see kernels/conv2d.py,
# kernels/conv_transpose.py, kernels/depthwise.py, kernels/deform.py
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# pooling, normalisation, shuffling, resampling: see kernels/pool.py,
# kernels/batchnorm.py, kernels/shuffle.py
# ---------------------------------------------------------------------------

"""Batch normalisation, training and inference, forward and backward.

Notation: x of shape (N, C) or (N, C, H, W) (any (N, C, ...)); statistics
are per channel c over every other axis, M = N·H·W values per channel;
γ = weight, β = bias (C,).

Training:
    μ_c = (1/M) Σ x[n,c,·]        σ²_c = (1/M) Σ (x[n,c,·] - μ_c)²  (biased)
    inv_std_c = 1 / sqrt(σ²_c + eps)
    x̂ = (x - μ_c)·inv_std_c         y = γ_c·x̂ + β_c
Inference uses the running statistics instead: μ_c = running_mean[c],
inv_std_c = 1 / sqrt(running_var[c] + eps); then y is an affine map of x.

Output shape = input shape; mean and inv_std have shape (C,).

Gradients, with g = grad_output and sums over the M values of channel c:
    grad_bias[c]   = Σ g
    grad_weight[c] = Σ g·x̂
    training  (μ and σ depend on x):
        grad_input = γ_c·inv_std_c / M · (M·g - Σ g - x̂·Σ(g·x̂))
    inference (μ and σ are constants):
        grad_input = γ_c·inv_std_c · g
One fused kernel computes both: per channel, one sweep accumulates Σ g and
Σ g·x̂, a second writes grad_input.

Kernels run prange over channels (each thread owns whole channels, so the
writes are disjoint); below conv2d's _SERIAL_MULTIPLY_ADDS elements a call
runs on one thread (waking the others costs milliseconds on a busy machine).
Arithmetic is in float64 (float32 data is widened on load), so float32
results differ from float64 ones by the final rounding. Reductions use the
fastmath subset {'reassoc', 'contract', 'nsz'} (vectorised sums); batch
norm never relies on inf or NaN.

>>> x = np.random.rand(4, 3, 5, 5).astype(np.float32)
>>> y, mean, inv_std = batch_norm_forward(x, None, None, 1e-5)
>>> y.shape, mean.shape, inv_std.dtype
((4, 3, 5, 5), (3,), dtype('float32'))
>>> [g is None for g in batch_norm_backward(y, x, None, mean, inv_std, needs=(True, False, True))]
[False, True, False]
"""
import numpy as np
from numba import njit, prange

from kernels.conv2d import _serial_if_small  # small work on one thread (waking threads costs ~8 ms under load)

_FASTMATH = {"reassoc", "contract", "nsz"}


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _forward(x, weight, bias, eps, training, mean, inv_std, y):
    # N batch, C channels, L = H·W positions; x, y (N, C, L); weight, bias, mean, inv_std (C,)
    # training: fill mean and inv_std; inference: they arrive filled from the running statistics
    N, C, L = x.shape
    for c in prange(C):
        if training:
            total = 0.0
            for n in range(N):
                for l in range(L):
                    total += x[n, c, l]
            mu = total / (N * L)
            squares = 0.0  # two-pass variance: Σ (x - μ)², no cancellation
            for n in range(N):
                for l in range(L):
                    d = np.float64(x[n, c, l]) - mu
                    squares += d * d
            mean[c] = mu
            inv_std[c] = 1.0 / np.sqrt(squares / (N * L) + eps)
        scale = np.float64(weight[c]) * np.float64(inv_std[c])  # y = x·scale + shift = γ·(x - μ)·inv_std + β
        shift = bias[c] - np.float64(mean[c]) * scale
        for n in range(N):
            for l in range(L):
                y[n, c, l] = x[n, c, l] * scale + shift


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _backward(grad_output, x, weight, mean, inv_std, training, need_input, grad_input, grad_weight, grad_bias):
    # grad_output, x, grad_input (N, C, L); weight, mean, inv_std, grad_weight, grad_bias (C,)
    N, C, L = x.shape
    M = N * L
    for c in prange(C):
        mu, istd = np.float64(mean[c]), np.float64(inv_std[c])
        sum_g = 0.0
        sum_gx = 0.0
        for n in range(N):
            for l in range(L):
                g = grad_output[n, c, l]
                sum_g += g
                sum_gx += g * ((x[n, c, l] - mu) * istd)  # g·x̂
        grad_bias[c] = sum_g
        grad_weight[c] = sum_gx
        if need_input:
            k = np.float64(weight[c]) * istd
            # training: γ·inv_std/M·(M·g - Σg - x̂·Σg·x̂) = k·(g - a - x̂·b); inference: a = b = 0
            a = sum_g / M if training else 0.0
            b = sum_gx / M if training else 0.0
            for n in range(N):
                for l in range(L):
                    x_hat = (x[n, c, l] - mu) * istd
                    grad_input[n, c, l] = k * (grad_output[n, c, l] - a - x_hat * b)


def _as3d(a):
    """(N, C, ...) -> (N, C, L), contiguous (a view when it can be)."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


def _affine(weight, bias, C, dtype):
    weight = np.ones(C, dtype) if weight is None else np.ascontiguousarray(weight, dtype=dtype)
    bias = np.zeros(C, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    return weight, bias


def _run_forward(x, weight, bias, eps, training, mean, inv_std):
    weight, bias = _affine(weight, bias, x.shape[1], x.dtype)
    y = np.empty(x.shape, dtype=x.dtype)
    with _serial_if_small(x.size):
        _forward(_as3d(x), weight, bias, float(eps), training, mean, inv_std, y.reshape(_as3d(x).shape))
    return y


def batch_norm_forward(x, weight, bias, eps):
    """Training mode: (y, mean, inv_std); weight/bias None mean γ = 1, β = 0."""
    mean = np.empty(x.shape[1], dtype=x.dtype)
    inv_std = np.empty(x.shape[1], dtype=x.dtype)
    y = _run_forward(x, weight, bias, eps, True, mean, inv_std)
    return y, mean, inv_std


def batch_norm_inference(x, running_mean, running_var, weight, bias, eps):
    """Inference mode: y = γ·(x - running_mean)/sqrt(running_var + eps) + β."""
    mean, inv_std = _running_stats(running_mean, running_var, eps, x.dtype)
    return _run_forward(x, weight, bias, eps, False, mean, inv_std)


def _running_stats(running_mean, running_var, eps, dtype):
    mean = np.ascontiguousarray(running_mean, dtype=dtype)
    inv_std = (1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)).astype(dtype)
    return mean, inv_std


def _run_backward(grad_output, x, weight, mean, inv_std, training, needs):
    C = x.shape[1]
    no_weight = weight is None  # weight None means γ = 1, a constant: no grad_weight
    weight, _ = _affine(weight, None, C, x.dtype)
    grad_input = np.empty(x.shape, dtype=x.dtype) if needs[0] else np.empty((0, 0, 0), dtype=x.dtype)
    grad_weight = np.empty(C, dtype=x.dtype)
    grad_bias = np.empty(C, dtype=x.dtype)
    gi3 = grad_input.reshape(_as3d(x).shape) if needs[0] else grad_input
    with _serial_if_small(x.size):
        _backward(_as3d(grad_output.astype(x.dtype, copy=False)), _as3d(x), weight, mean, inv_std, training,
                  bool(needs[0]), gi3, grad_weight, grad_bias)
    return (grad_input if needs[0] else None, grad_weight if needs[1] and not no_weight else None,
            grad_bias if needs[2] else None)


def batch_norm_backward(grad_output, x, weight, mean, inv_std, needs=(True, True, True)):
    """Training mode: (grad_input, grad_weight, grad_bias), None where needs is False."""
    return _run_backward(grad_output, x, weight, mean, inv_std, True, needs)


def batch_norm_inference_backward(grad_output, x, running_mean, running_var, weight, eps, needs=(True, True, True)):
    """Inference mode (an affine map): grad_input = γ·inv_std·g, grad_weight = Σ g·x̂, grad_bias = Σ g."""
    mean, inv_std = _running_stats(running_mean, running_var, eps, x.dtype)
    return _run_backward(grad_output, x, weight, mean, inv_std, False, needs)

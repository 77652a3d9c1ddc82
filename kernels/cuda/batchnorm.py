"""Batch normalisation on the GPU: per-channel tree reductions, then an element-wise map.

Notation as kernels/batchnorm.py: x (N, C, ...) viewed (N, C, L); M = N·L
values per channel; γ = weight, β = bias.

    μ_c = (1/M) Σ x[n,c,l]     σ²_c = (1/M) Σ (x[n,c,l] - μ_c)²     inv_std_c = 1 / sqrt(σ²_c + eps)
    y = γ_c·(x - μ_c)·inv_std_c + β_c          (inference: running_mean / running_var for μ, σ²)
    grad_bias = Σ g     grad_weight = Σ g·x̂     x̂ = (x - μ_c)·inv_std_c
    grad_input = γ_c·inv_std_c·(g - Σg/M - x̂·Σ(g·x̂)/M)       (training; inference: γ_c·inv_std_c·g)

Thread mapping. Statistics: one block per channel; each thread sums a
strided slice of the channel's M values into a float64 partial, and a
shared-memory tree (device.block_sum) adds the partials: once for Σx, then
(μ known to the whole block) once for Σ(x - μ)², the CPU's two-pass
variance. The backward sums Σg and Σg·x̂ the same way, one block per
channel. The maps y and grad_input are then one thread per element.
Arithmetic is float64 throughout, as on the CPU.

>>> import numpy as np
>>> y, mean, inv_std = batch_norm_forward(np.random.rand(4, 3, 5, 5), None, None, 1e-5)
>>> y.shape, mean.shape
((4, 3, 5, 5), (3,))
"""
import math

import numpy as np
from numba import cuda

from kernels.cuda.device import REDUCE_THREADS, THREADS, as_3d, block_sum, blocks, empty, fill, to_device


def batch_norm_forward(x, weight, bias, eps):
    """Training mode: (y, mean, inv_std) on the device; weight/bias None mean γ = 1, β = 0."""
    x = to_device(x)
    x3 = as_3d(x)
    C = x.shape[1]
    mean, inv_std = empty((C,), x.dtype), empty((C,), x.dtype)
    _stats_kernel[C, REDUCE_THREADS](x3, float(eps), mean, inv_std)
    return _affine_map(x, weight, bias, mean, inv_std), mean, inv_std


def batch_norm_inference(x, running_mean, running_var, weight, bias, eps):
    """Inference mode: y = γ·(x - running_mean)/sqrt(running_var + eps) + β."""
    x = to_device(x)
    mean, inv_std = _running_stats(running_mean, running_var, eps, x.dtype)
    return _affine_map(x, weight, bias, mean, inv_std)


def batch_norm_backward(grad_output, x, weight, mean, inv_std, needs=(True, True, True)):
    """Training mode: (grad_input, grad_weight, grad_bias), None where needs is False (grad_weight also for weight None)."""
    return _backward(grad_output, x, weight, mean, inv_std, True, needs)


def batch_norm_inference_backward(grad_output, x, running_mean, running_var, weight, eps, needs=(True, True, True)):
    """Inference mode (an affine map): grad_input = γ·inv_std·g, grad_weight = Σ g·x̂, grad_bias = Σ g."""
    x = to_device(x)
    mean, inv_std = _running_stats(running_mean, running_var, eps, x.dtype)
    return _backward(grad_output, x, weight, mean, inv_std, False, needs)


def _running_stats(running_mean, running_var, eps, dtype):
    running_mean, running_var = to_device(running_mean), to_device(running_var)
    mean, inv_std = empty(running_mean.shape, dtype), empty(running_mean.shape, dtype)
    _running_stats_kernel[blocks(mean.size), THREADS](running_mean, running_var, float(eps), mean, inv_std)
    return mean, inv_std


def _affine(weight, bias, C, dtype):
    """γ and β on the device, ones / zeros where None."""
    gamma, beta = empty((C,), dtype), empty((C,), dtype)
    if weight is None:
        fill(gamma, 1)
    else:
        gamma = to_device(weight)
    if bias is None:
        fill(beta, 0)
    else:
        beta = to_device(bias)
    return gamma, beta


def _affine_map(x, weight, bias, mean, inv_std):
    gamma, beta = _affine(weight, bias, x.shape[1], x.dtype)
    y = empty(x.shape, x.dtype)
    _map_kernel[blocks(x.size), THREADS](as_3d(x), gamma, beta, mean, inv_std, as_3d(y))
    return y


def _backward(grad_output, x, weight, mean, inv_std, training, needs):
    grad_output, x, mean, inv_std = to_device(grad_output), to_device(x), to_device(mean), to_device(inv_std)
    C = x.shape[1]
    gamma, _ = _affine(weight, None, C, x.dtype)
    sum_g, sum_gx = empty((C,), x.dtype), empty((C,), x.dtype)
    _grad_sums_kernel[C, REDUCE_THREADS](as_3d(grad_output), as_3d(x), mean, inv_std, sum_g, sum_gx)
    grad_input = None
    if needs[0]:
        grad_input = empty(x.shape, x.dtype)
        _grad_input_kernel[blocks(x.size), THREADS](as_3d(grad_output), as_3d(x), gamma, mean, inv_std, sum_g,
                                                    sum_gx, training, as_3d(grad_input))
    grad_weight = sum_gx if needs[1] and weight is not None else None
    return grad_input, grad_weight, (sum_g if needs[2] else None)


@cuda.jit
def _stats_kernel(x, eps, mean, inv_std):
    # x (N, C, L); block c: Σx -> μ, then Σ(x - μ)² -> inv_std; thread t takes m = t, t + T, ...
    partials = cuda.shared.array(REDUCE_THREADS, np.float64)
    c = cuda.blockIdx.x
    N, C, L = x.shape
    total = 0.0
    if c < C:  # always true (grid = C); every thread still reaches block_sum
        for m in range(cuda.threadIdx.x, N * L, cuda.blockDim.x):
            total += x[m // L, c, m % L]
    mu = block_sum(partials, total) / (N * L)
    squares = 0.0
    if c < C:
        for m in range(cuda.threadIdx.x, N * L, cuda.blockDim.x):
            d = x[m // L, c, m % L] - mu
            squares += d * d
    squares = block_sum(partials, squares)
    if c < C and cuda.threadIdx.x == 0:
        mean[c] = mu
        inv_std[c] = 1.0 / math.sqrt(squares / (N * L) + eps)


@cuda.jit
def _grad_sums_kernel(grad_output, x, mean, inv_std, sum_g, sum_gx):
    # block c: Σ g and Σ g·x̂ over the channel's N·L values
    partials = cuda.shared.array(REDUCE_THREADS, np.float64)
    c = cuda.blockIdx.x
    N, C, L = x.shape
    total_g = 0.0
    total_gx = 0.0
    if c < C:  # always true (grid = C); every thread still reaches block_sum
        mu, istd = mean[c], inv_std[c]
        for m in range(cuda.threadIdx.x, N * L, cuda.blockDim.x):
            g = grad_output[m // L, c, m % L]
            total_g += g
            total_gx += g * ((x[m // L, c, m % L] - mu) * istd)
    total_g = block_sum(partials, total_g)
    total_gx = block_sum(partials, total_gx)
    if c < C and cuda.threadIdx.x == 0:
        sum_g[c] = total_g
        sum_gx[c] = total_gx


@cuda.jit
def _map_kernel(x, gamma, beta, mean, inv_std, y):
    # y = γ·(x - μ)·inv_std + β; one thread per element of (N, C, L)
    idx = cuda.grid(1)
    if idx < x.size:
        C, L = x.shape[1], x.shape[2]
        n, c, l = idx // (C * L), (idx // L) % C, idx % L
        scale = gamma[c] * inv_std[c]
        y[n, c, l] = (x[n, c, l] - mean[c]) * scale + beta[c]


@cuda.jit
def _grad_input_kernel(grad_output, x, gamma, mean, inv_std, sum_g, sum_gx, training, grad_input):
    # grad_input = γ·inv_std·(g - a - x̂·b), a = Σg/M, b = Σg·x̂/M in training (0 in inference)
    idx = cuda.grid(1)
    if idx < x.size:
        N, C, L = x.shape
        n, c, l = idx // (C * L), (idx // L) % C, idx % L
        a = sum_g[c] / (N * L) if training else 0.0
        b = sum_gx[c] / (N * L) if training else 0.0
        x_hat = (x[n, c, l] - mean[c]) * inv_std[c]
        grad_input[n, c, l] = gamma[c] * inv_std[c] * (grad_output[n, c, l] - a - x_hat * b)


@cuda.jit
def _running_stats_kernel(running_mean, running_var, eps, mean, inv_std):
    c = cuda.grid(1)
    if c < mean.size:
        mean[c] = running_mean[c]
        inv_std[c] = 1.0 / math.sqrt(running_var[c] + eps)

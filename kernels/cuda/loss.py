"""Softmax cross-entropy on the GPU, fused, as tinyconv.functional.cross_entropy computes it on the CPU.

Notation: x (N, C) logits; t (N,) int64 class labels; ε label smoothing;
q the target distribution, q[n, c] = ε/C + (1 - ε)·[c = t[n]].

    log_probs[n, c] = x[n, c] - m_n - log Σ_c' exp(x[n, c'] - m_n)        m_n = max_c x[n, c]
    loss[n]         = -Σ_c q[n, c]·log_probs[n, c]
    grad_input      = (exp(log_probs) - q) · g[n] · scale        (g of shape (N,), or (1,) broadcast, for a mean/sum)

Thread mapping. Forward: one thread per sample (row), three passes over
its C logits (max, the sum of exponentials, the outputs); C is small (the
number of classes). Backward: one thread per element of (N, C).

>>> import numpy as np
>>> loss, log_probs = cross_entropy_forward(np.zeros((2, 4)), np.array([0, 3]), 0.0)
>>> np.round(loss.copy_to_host(), 4)
array([1.3863, 1.3863])
"""
import math

from numba import cuda

from kernels.cuda.device import THREADS, blocks, empty, flat, to_device


def cross_entropy_forward(x, target, label_smoothing):
    """(loss per sample (N,), log_probs (N, C)) on the device."""
    x, target = to_device(x), to_device(target)
    loss, log_probs = empty((x.shape[0],), x.dtype), empty(x.shape, x.dtype)
    _forward_kernel[blocks(x.shape[0]), THREADS](x, target, float(label_smoothing), loss, log_probs)
    return loss, log_probs


def cross_entropy_backward(grad_output, log_probs, target, label_smoothing, scale):
    """grad_input (N, C) = (softmax - q)·grad_output[n]·scale; grad_output has N elements or one."""
    grad_output, log_probs, target = to_device(grad_output), to_device(log_probs), to_device(target)
    grad_input = empty(log_probs.shape, log_probs.dtype)
    _backward_kernel[blocks(grad_input.size), THREADS](flat(grad_output), log_probs, target, float(label_smoothing),
                                                       float(scale), grad_input)
    return grad_input


@cuda.jit
def _forward_kernel(x, target, smoothing, loss, log_probs):
    # x, log_probs (N, C); one thread per row n
    n = cuda.grid(1)
    if n < x.shape[0]:
        C = x.shape[1]
        top = x[n, 0]
        for c in range(1, C):
            top = max(top, x[n, c])
        total = 0.0
        for c in range(C):
            total += math.exp(x[n, c] - top)
        log_total = math.log(total)
        acc = 0.0
        for c in range(C):
            lp = x[n, c] - top - log_total
            log_probs[n, c] = lp
            q = smoothing / C + (1.0 - smoothing if c == target[n] else 0.0)
            acc -= q * lp
        loss[n] = acc


@cuda.jit
def _backward_kernel(grad_output, log_probs, target, smoothing, scale, grad_input):
    # grad_input (N, C); grad_output flat, N entries or 1; one thread per element
    idx = cuda.grid(1)
    if idx < grad_input.size:
        C = grad_input.shape[1]
        n, c = idx // C, idx % C
        q = smoothing / C + (1.0 - smoothing if c == target[n] else 0.0)
        g = grad_output[n if grad_output.size > 1 else 0]
        grad_input[n, c] = (math.exp(log_probs[n, c]) - q) * g * scale

"""Depthwise convolution on the GPU: direct gathers, no im2col.

Notation as kernels/depthwise.py: x (N, C, H, W); M the channel multiplier;
weight (C·M, 1, k_h, k_w); output channel o reads input channel o // M.

    y[n,o,i,j] = b[o] + Σ_{p,q} w[o,0,p,q] · x[n, o//M, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
    out = (H + 2·pad - d·(k - 1) - 1) // s + 1                          (per axis)

Gradients, with g = grad_output:

    grad_input[n,c,h,w]  = Σ_{m<M} Σ_{p,q} w[cM+m,0,p,q] · g[n, cM+m, i, j]
                           over the taps with i = (h + pad_h - p·d_h) / s_h, j = (w + pad_w - q·d_w) / s_w
                           whole numbers inside the output
    grad_weight[o,0,p,q] = Σ_{n,i,j} g[n,o,i,j] · x[n, o//M, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
    grad_bias[o]         = Σ_{n,i,j} g[n,o,i,j]

Thread mapping. Forward: one thread per output element, k_h·k_w taps
each. grad_input: one thread per input pixel gathering the M·k_h·k_w
(output, tap) pairs that read it (col2im's trick; no atomics).
grad_weight: one block per weight element (o, p, q), its threads each sum
a strided slice of the N·out_h·out_w products and a shared-memory tree adds
the partials (device.block_sum). grad_bias: device.channel_sum.

>>> import numpy as np
>>> x, w = np.ones((2, 3, 8, 8)), np.ones((6, 1, 3, 3))
>>> depthwise_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1)).shape
(2, 6, 8, 8)
"""
import numpy as np
from numba import cuda

from kernels.cuda.device import REDUCE_THREADS, THREADS, block_sum, blocks, channel_sum, empty, to_device, zeros
from kernels.im2col import conv_output_size


def depthwise_conv2d_forward(x, weight, bias, stride, padding, dilation):
    x, weight = to_device(x), to_device(weight)
    n, c, h, w = x.shape
    c_out, _, k_h, k_w = weight.shape
    out_h = conv_output_size(h, k_h, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(w, k_w, stride[1], padding[1], dilation[1])
    bias = zeros((c_out,), x.dtype) if bias is None else to_device(bias)
    y = empty((n, c_out, out_h, out_w), x.dtype)
    _forward_kernel[blocks(y.size), THREADS](x, weight, bias, y, stride[0], stride[1], padding[0], padding[1],
                                             dilation[0], dilation[1])
    return y


def depthwise_conv2d_backward(grad_output, x, weight, stride, padding, dilation, needs=(True, True, True)):
    grad_output, x, weight = to_device(grad_output), to_device(x), to_device(weight)
    args = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = empty(x.shape, x.dtype)
        _grad_input_kernel[blocks(x.size), THREADS](grad_output, weight, grad_input, *args)
    if needs[1]:
        grad_weight = empty(weight.shape, x.dtype)
        _grad_weight_kernel[weight.size, REDUCE_THREADS](grad_output, x, grad_weight, *args)
    if needs[2]:
        grad_bias = channel_sum(grad_output)
    return grad_input, grad_weight, grad_bias


@cuda.jit
def _forward_kernel(x, weight, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # x (N, C, H, W); weight (C·M, 1, k_h, k_w); y (N, C·M, out_h, out_w); one thread per y element
    idx = cuda.grid(1)
    if idx < y.size:
        C_out, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
        n, o, i, j = idx // (C_out * out_h * out_w), (idx // (out_h * out_w)) % C_out, (idx // out_w) % out_h, idx % out_w
        c = o // (C_out // x.shape[1])
        total = 0.0
        for p in range(weight.shape[2]):
            h = i * stride_h - pad_h + p * dil_h
            if h < 0 or h >= x.shape[2]:
                continue
            for q in range(weight.shape[3]):
                w = j * stride_w - pad_w + q * dil_w
                if w >= 0 and w < x.shape[3]:
                    total += weight[o, 0, p, q] * x[n, c, h, w]
        y[n, o, i, j] = total + bias[o]


@cuda.jit
def _grad_input_kernel(grad_output, weight, grad_input, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # grad_input (N, C, H, W); grad_output (N, C·M, out_h, out_w); one thread per input pixel
    idx = cuda.grid(1)
    if idx < grad_input.size:
        C, H, W = grad_input.shape[1], grad_input.shape[2], grad_input.shape[3]
        n, c, h, w = idx // (C * H * W), (idx // (H * W)) % C, (idx // W) % H, idx % W
        M = grad_output.shape[1] // C
        out_h, out_w = grad_output.shape[2], grad_output.shape[3]
        total = 0.0
        for p in range(weight.shape[2]):
            i_s = h + pad_h - p * dil_h  # = i·stride_h when tap p of output row i reads row h
            if i_s < 0 or i_s % stride_h != 0 or i_s // stride_h >= out_h:
                continue
            for q in range(weight.shape[3]):
                j_s = w + pad_w - q * dil_w
                if j_s < 0 or j_s % stride_w != 0 or j_s // stride_w >= out_w:
                    continue
                for o in range(c * M, (c + 1) * M):
                    total += weight[o, 0, p, q] * grad_output[n, o, i_s // stride_h, j_s // stride_w]
        grad_input[n, c, h, w] = total


@cuda.jit
def _grad_weight_kernel(grad_output, x, grad_weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # block b owns grad_weight element (o, 0, p, q) = b; thread t sums the (n, i, j) with index t, t + T, ...
    partials = cuda.shared.array(REDUCE_THREADS, np.float64)
    b = cuda.blockIdx.x
    C_out, k_h, k_w = grad_weight.shape[0], grad_weight.shape[2], grad_weight.shape[3]
    N, out_h, out_w = grad_output.shape[0], grad_output.shape[2], grad_output.shape[3]
    o, p, q = b // (k_h * k_w), (b // k_w) % k_h, b % k_w
    c = o // (C_out // x.shape[1])
    total = 0.0
    if b < grad_weight.size:  # always true (grid = weight size); every thread still reaches block_sum
        for m in range(cuda.threadIdx.x, N * out_h * out_w, cuda.blockDim.x):
            n, i, j = m // (out_h * out_w), (m // out_w) % out_h, m % out_w
            h = i * stride_h - pad_h + p * dil_h
            w = j * stride_w - pad_w + q * dil_w
            if h >= 0 and h < x.shape[2] and w >= 0 and w < x.shape[3]:
                total += grad_output[n, o, i, j] * x[n, c, h, w]
    total = block_sum(partials, total)
    if b < grad_weight.size and cuda.threadIdx.x == 0:
        grad_weight[o, 0, p, q] = total

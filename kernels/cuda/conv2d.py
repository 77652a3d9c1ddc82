"""conv2d on the GPU: im2col + the tiled GEMM of kernels/cuda/gemm.py.

The maths is that of kernels/conv2d.py; the route is the textbook one that
file keeps for strided convolutions (its stride-1 shifted-window GEMMs suit
a CPU's BLAS, a GPU gets its parallelism from one large GEMM launch).

Notation as kernels/conv2d.py: x (N, C_in, H, W); weight (C_out, C_in/G,
k_h, k_w) with G groups; stride s, padding pad, dilation d per axis.

    y[n, o, i, j] = b[o] + Σ_{c, p, q} w[o, c, p, q] · x[n, g·C_in/G + c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
    out_h = (H + 2·pad_h - d_h·(k_h - 1) - 1) // s_h + 1       (out_w alike)

As matrices, with cols = im2col(x) viewed (N·G, C_in/G·k_h·k_w, L), L = out_h·out_w,
and batch entry n·G + g:

    Y[n·G + g]   = W[g] · cols[n·G + g]                    one GEMM launch, W broadcast over n
    grad_input   = col2im(W[g]ᵀ · grad_output[n·G + g])    one GEMM launch + the col2im gather
    grad_weight  = Σ_n grad_output[n·G + g] · cols[n·G + g]ᵀ  one GEMM launch summing over n
    grad_bias    = Σ_{n, i, j} grad_output[n, :, i, j]     device.channel_sum (tree reduction)

Thread mapping: that of the pieces (im2col / col2im one thread per element
written, GEMM one thread per output entry in TILE x TILE tiles, the bias sum
one block per channel). Unlike the CPU version the columns are built for
the whole batch at once (no chunking).

>>> import numpy as np
>>> x, w = np.ones((2, 4, 8, 8)), np.ones((6, 2, 3, 3))
>>> conv2d_forward(x, w, None, (2, 2), (1, 1), (1, 1), 2).shape
(2, 6, 4, 4)
"""
from kernels.cuda.device import add_channel_bias, channel_sum, empty, to_device
from kernels.cuda.gemm import matmul_into
from kernels.cuda.im2col import col2im, im2col
from kernels.im2col import conv_output_size


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    x, weight = to_device(x), to_device(weight)
    k_h, k_w = weight.shape[2:]
    out_size = (conv_output_size(x.shape[2], k_h, stride[0], padding[0], dilation[0]),
                conv_output_size(x.shape[3], k_w, stride[1], padding[1], dilation[1]))
    y = _conv2d(x, weight, out_size, stride, padding, dilation, groups)
    return add_channel_bias(y, bias)


def conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, needs=(True, True, True)):
    grad_output, x, weight = to_device(grad_output), to_device(x), to_device(weight)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = _conv2d_grad_input(grad_output, weight, x.shape, stride, padding, dilation, groups)
    if needs[1]:
        grad_weight = _conv2d_grad_weight(grad_output, x, weight.shape, stride, padding, dilation, groups)
    if needs[2]:
        grad_bias = channel_sum(grad_output)
    return grad_input, grad_weight, grad_bias


def _conv2d(x, weight, out_size, stride, padding, dilation, groups):
    """y = W · cols per (sample, group), bias-free, output size given (conv_transpose2d's grad_input needs that)."""
    # N batch, C_in input channels, O output channels, G groups, L = out_h·out_w output pixels
    n, c_in = x.shape[:2]
    c_out, k_h, k_w = weight.shape[0], weight.shape[2], weight.shape[3]
    out_h, out_w = out_size
    rows = c_in // groups * k_h * k_w
    cols = im2col(x, (k_h, k_w), stride, padding, dilation, out_size)            # (N, C_in·k_h·k_w, L)
    y = empty((n, c_out, out_h, out_w), x.dtype)
    matmul_into(y.reshape(n * groups, c_out // groups, out_h * out_w),          # (N·G, O/G, L)
                weight.reshape(groups, c_out // groups, rows),                   # (G, O/G, C_in/G·k_h·k_w)
                cols.reshape(n * groups, rows, out_h * out_w))                   # (N·G, C_in/G·k_h·k_w, L)
    return y


def _conv2d_grad_weight(grad_output, x, weight_shape, stride, padding, dilation, groups):
    """grad_weight = Σ_n grad_output[n] · cols[n]ᵀ per group (shared with conv_transpose2d)."""
    n, c_out, out_h, out_w = grad_output.shape
    rows = weight_shape[1] * weight_shape[2] * weight_shape[3]
    cols = im2col(x, weight_shape[2:], stride, padding, dilation, (out_h, out_w))  # (N, C_in·k_h·k_w, L)
    grad_weight = empty(weight_shape, x.dtype)
    matmul_into(grad_weight.reshape(groups, c_out // groups, rows),                    # (G, O/G, C_in/G·k_h·k_w)
                grad_output.reshape(n * groups, c_out // groups, out_h * out_w),        # (N·G, O/G, L)
                cols.reshape(n * groups, rows, out_h * out_w), trans_b=True, n_sum=n)  # (N·G, C_in/G·k_h·k_w, L)
    return grad_weight


def _conv2d_grad_input(grad_output, weight, x_shape, stride, padding, dilation, groups):
    """grad_input = col2im(Wᵀ · grad_output) per group (conv_transpose2d's forward)."""
    n, c_out, out_h, out_w = grad_output.shape
    rows = weight.shape[1] * weight.shape[2] * weight.shape[3]
    cols = empty((n, groups * rows, out_h * out_w), grad_output.dtype)               # (N, C_in·k_h·k_w, L)
    matmul_into(cols.reshape(n * groups, rows, out_h * out_w),                       # (N·G, C_in/G·k_h·k_w, L)
                weight.reshape(groups, c_out // groups, rows),                       # (G, O/G, C_in/G·k_h·k_w)
                grad_output.reshape(n * groups, c_out // groups, out_h * out_w),     # (N·G, O/G, L)
                trans_a=True)
    return col2im(cols, x_shape, weight.shape[2:], stride, padding, dilation, (out_h, out_w))

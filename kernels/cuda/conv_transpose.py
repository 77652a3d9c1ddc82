"""conv_transpose2d on the GPU: conv2d's pieces with the roles swapped, as kernels/conv_transpose.py.

Notation as kernels/conv_transpose.py: x (N, C_in, H, W); weight (C_in,
C_out/G, k_h, k_w); stride s, padding pad, output_padding op, dilation d.

    y[n, g·C_out/G + o, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w] += w[c, o, p, q] · x[n, c, i, j]
    out_h = (H - 1)·s_h - 2·pad_h + d_h·(k_h - 1) + op_h + 1       (out_w alike)

    y           = col2im(Wᵀ · x) + b          (kernels/cuda/conv2d.py's _conv2d_grad_input)
    grad_input  = conv2d(grad_output, w)      (its _conv2d)
    grad_weight = x ⋆ grad_output             (its _conv2d_grad_weight with x and grad_output swapped)
    grad_bias   = Σ_{n, i, j} grad_output[n, :, i, j]

Thread mapping: that of the conv2d pieces. The scatter in the formula
above is never run as one: col2im gathers, one thread per output pixel,
so no atomics are needed.

>>> import numpy as np
>>> x, w = np.ones((2, 4, 5, 5)), np.ones((4, 3, 4, 4))
>>> conv_transpose2d_forward(x, w, None, (2, 2), (1, 1), (0, 0), 1, (1, 1)).shape
(2, 3, 10, 10)
"""
from kernels.conv_transpose import conv_transpose_output_size
from kernels.cuda.conv2d import _conv2d, _conv2d_grad_input, _conv2d_grad_weight
from kernels.cuda.device import add_channel_bias, channel_sum, to_device


def conv_transpose2d_forward(x, weight, bias, stride, padding, output_padding, groups, dilation):
    x, weight = to_device(x), to_device(weight)
    n, _, h, w = x.shape
    k_h, k_w = weight.shape[2:]
    out_shape = (n, weight.shape[1] * groups,
                 conv_transpose_output_size(h, k_h, stride[0], padding[0], output_padding[0], dilation[0]),
                 conv_transpose_output_size(w, k_w, stride[1], padding[1], output_padding[1], dilation[1]))
    y = _conv2d_grad_input(x, weight, out_shape, stride, padding, dilation, groups)
    return add_channel_bias(y, bias)


def conv_transpose2d_backward(grad_output, x, weight, stride, padding, output_padding, groups, dilation,
                              needs=(True, True, True)):
    grad_output, x, weight = to_device(grad_output), to_device(x), to_device(weight)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = _conv2d(grad_output, weight, x.shape[2:], stride, padding, dilation, groups)
    if needs[1]:
        grad_weight = _conv2d_grad_weight(x, grad_output, weight.shape, stride, padding, dilation, groups)
    if needs[2]:
        grad_bias = channel_sum(grad_output)
    return grad_input, grad_weight, grad_bias

"""conv_transpose2d: the adjoint (transpose) of conv2d, a.k.a. "deconvolution".

Notation: x (N, C_in, H, W) input; weight (C_in, C_out/G, k_h, k_w) with G
groups (PyTorch's layout: the transpose of a conv2d weight mapping C_out ->
C_in); stride s, padding pad, output_padding op, dilation d per axis. Every
input pixel scatters a weighted copy of the kernel into the output:

    y[n, g·C_out/G + o, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w] += w[c, o, p, q] · x[n, c, i, j]

for c in group g (c // (C_in/G) = g), plus bias. Output size (op adds rows on
the bottom/right only, to pick among the sizes a strided conv2d maps to H):

    out_h = (H - 1)·s_h - 2·pad_h + d_h·(k_h - 1) + op_h + 1       (out_w alike)

This is exactly conv2d's grad_input with x in the place of grad_output, so the
code is conv2d's (Chainer's pairing): with cols = Wᵀ · x per (sample, group),

    y           = col2im(Wᵀ · x) + b          (conv2d's _conv2d_grad_input)
    grad_input  = conv2d(grad_output, w)      (conv2d's forward: the adjoint of the adjoint)
    grad_weight = x ⋆ grad_output             (conv2d's grad_weight with the roles of x and grad_output swapped)
    grad_bias   = Σ_{n, i, j} grad_output[n, :, i, j]

>>> import numpy as np
>>> x, w = np.ones((2, 4, 5, 5)), np.ones((4, 3, 4, 4))
>>> conv_transpose2d_forward(x, w, None, (2, 2), (1, 1), (0, 0), 1, (1, 1)).shape
(2, 3, 10, 10)
"""
import numpy as np

from kernels.conv2d import _conv2d, _conv2d_grad_input, _conv2d_grad_weight, bias_gradient


def conv_transpose_output_size(size, k, stride, pad, output_padding, dil):
    """(size - 1)·s - 2·pad + d·(k - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * pad + dil * (k - 1) + output_padding + 1


def conv_transpose2d_forward(x, weight, bias, stride, padding, output_padding, groups, dilation):
    x = np.ascontiguousarray(x)
    n, _, h, w = x.shape
    k_h, k_w = weight.shape[2:]
    out_shape = (n, weight.shape[1] * groups,
                 conv_transpose_output_size(h, k_h, stride[0], padding[0], output_padding[0], dilation[0]),
                 conv_transpose_output_size(w, k_w, stride[1], padding[1], output_padding[1], dilation[1]))
    y = _conv2d_grad_input(x, weight, out_shape, stride, padding, dilation, groups)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(grad_output, x, weight, stride, padding, output_padding, groups, dilation,
                              needs=(True, True, True)):
    grad_output = np.ascontiguousarray(grad_output)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = _conv2d(grad_output, weight, None, x.shape[2:], stride, padding, dilation, groups)
    if needs[1]:
        grad_weight = _conv2d_grad_weight(np.ascontiguousarray(x), grad_output, weight.shape, stride, padding,
                                          dilation, groups)
    if needs[2]:
        grad_bias = bias_gradient(grad_output)
    return grad_input, grad_weight, grad_bias

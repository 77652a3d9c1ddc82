"""The reference kernels: naive loops, slow, obviously right. Open this file first.

Every op of tinyconv is written here once more as its textbook formula:
plain Python loops over the output indices, the index formula spelled out
in the innermost line, and the gradients derived by hand. A backward walks
the same index formula as its forward and sends each output's gradient back
to exactly the inputs that output was computed from (a scatter), so nothing
here relies on an identity such as "the grad of a conv is a transposed
conv": tests/test_reference.py checks those identities between independently
written functions, and checks every backward against central finite
differences.

This module is the oracle: every fast kernel (kernels/<op>.py with Numba,
kernels/cuda/<op>.py) must match it. It imports NumPy only and never calls
the fast kernels. It is slow: use it on small shapes.

Conventions (the kernel API contract, same names and arguments as the fast
kernels). Arrays are NCHW; kernel_size, stride, padding, dilation and
output_padding are (h, w) pairs of ints; a bias (and a batch-norm weight or
bias) may be None. A backward takes needs=(...) booleans and returns None
for the gradients not asked for. The arithmetic runs in float64; results
come back in the dtype of the matching input (the output follows x, a
weight gradient follows the weight).

Notation in the docstrings:
    N batch; C, C_in, C_out channels; H, W input height and width;
    k_h, k_w kernel size; s stride, pad padding, d dilation, G groups;
    (i, j) an output position, (p, q) a kernel tap.
    Tap (p, q) of output (i, j) reads input row and column
        h = i·s_h - pad_h + p·d_h,        w = j·s_w - pad_w + q·d_w,
    and a row or column outside [0, H) x [0, W) reads 0 (padding), or -inf
    in max pooling.

Output sizes:
    conv, pool        out = (H + 2·pad - d·(k-1) - 1) // s + 1
    pool, ceil_mode   the division rounds up, then the last window is dropped
                      if it would start beyond the input and the left padding
    conv_transpose    out = (H - 1)·s - 2·pad + d·(k-1) + output_padding + 1

>>> x = np.zeros((2, 3, 5, 5)); weight = np.zeros((4, 3, 3, 3))
>>> conv2d_forward(x, weight, None, (1, 1), (1, 1), (1, 1), 1).shape
(2, 4, 5, 5)
"""
import itertools
import math

import numpy as np


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def conv_output_size(size, k, s, p, d):
    """Output length of a convolution along one axis.

    out = (size + 2·p - d·(k-1) - 1) // s + 1      (floor division)

    d·(k-1) + 1 is the extent of a dilated kernel; the windows start at
    -p, s - p, 2s - p, ... and the last one must end inside size + p.

    >>> conv_output_size(5, 3, 1, 1, 1), conv_output_size(7, 3, 2, 0, 2)
    (5, 2)
    """
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_output_size(size, k, s, p, d, ceil_mode):
    """Output length of a pooling along one axis, PyTorch's rule.

    floor mode: conv_output_size(size, k, s, p, d).
    ceil mode:  out = ceil((size + 2·p - d·(k-1) - 1) / s) + 1, and then one
                less if the last window would start at or beyond size + p,
                i.e. every window must start inside the input or the left
                padding (a window lying wholly in the right padding is dropped).

    >>> pool_output_size(5, 2, 2, 0, 1, False), pool_output_size(5, 2, 2, 0, 1, True)
    (2, 3)
    >>> pool_output_size(5, 2, 2, 1, 1, True)    # a 4th window would start at 3·2 - 1 = 5, in the right padding
    3
    """
    span = size + 2 * p - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1  # ceil(span / s) + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return out


def ndindex(*sizes):
    """Every index tuple of an array of shape `sizes`, in C order (the last index fastest).

    `for n, c, i, j in ndindex(N, C, H, W)` is four nested for-loops written as one.
    """
    return itertools.product(*(range(size) for size in sizes))


def _f64(a):
    """a as a float64 array (None stays None): the reference computes in float64."""
    return None if a is None else np.asarray(a, dtype=np.float64)


def _pixel(img, h, w):
    """img[h, w], or 0 if (h, w) lies outside the 2-D array img (zero padding)."""
    H, W = img.shape
    return img[h, w] if 0 <= h < H and 0 <= w < W else 0.0


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------
def _im2col_taps(x_shape, kernel_size, stride, padding, dilation):
    """Yield (n, c, h, w, row, col) for every entry of the column matrix that reads a real pixel.

    cols[n, row, col] with row = (c·k_h + p)·k_w + q and col = i·out_w + j
    holds x[n, c, h, w], h = i·s_h - pad_h + p·d_h, w = j·s_w - pad_w + q·d_w.
    Entries whose (h, w) falls in the padding are skipped (they hold 0).
    """
    N, C, H, W = x_shape
    k_h, k_w = kernel_size
    stride_h, stride_w = stride
    pad_h, pad_w = padding
    dil_h, dil_w = dilation
    out_h = conv_output_size(H, k_h, stride_h, pad_h, dil_h)
    out_w = conv_output_size(W, k_w, stride_w, pad_w, dil_w)
    for n, c, p, q, i, j in ndindex(N, C, k_h, k_w, out_h, out_w):
        h = i * stride_h - pad_h + p * dil_h
        w = j * stride_w - pad_w + q * dil_w
        if 0 <= h < H and 0 <= w < W:
            yield n, c, h, w, (c * k_h + p) * k_w + q, i * out_w + j


def im2col(x, kernel_size, stride, padding, dilation):
    """Unfold every receptive field of x into one column.

    cols[n, (c·k_h + p)·k_w + q, i·out_w + j] = x[n, c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
    (0 where the row or column falls in the padding).

    x (N, C, H, W) -> cols (N, C·k_h·k_w, out_h·out_w). A convolution is then
    one matrix product per sample: y[n] = weight.reshape(C_out, -1) @ cols[n].

    >>> im2col(np.zeros((2, 3, 5, 5)), (3, 3), (1, 1), (0, 0), (1, 1)).shape
    (2, 27, 9)
    """
    N, C, H, W = x.shape
    k_h, k_w = kernel_size
    out_h = conv_output_size(H, k_h, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(W, k_w, stride[1], padding[1], dilation[1])
    cols = np.zeros((N, C * k_h * k_w, out_h * out_w))
    for n, c, h, w, row, col in _im2col_taps(x.shape, kernel_size, stride, padding, dilation):
        cols[n, row, col] = x[n, c, h, w]
    return cols.astype(x.dtype)


def col2im(cols, x_shape, kernel_size, stride, padding, dilation):
    """The adjoint of im2col: add every column entry back into the pixel it was read from.

    x[n, c, h, w] = Σ over the (row, col) that im2col filled from x[n, c, h, w] of cols[n, row, col]

    A pixel read by several windows receives the sum of their entries, so
    <im2col(x), cols> == <x, col2im(cols)>; entries that read padding are dropped.
    cols (N, C·k_h·k_w, out_h·out_w) -> (N, C, H, W) = x_shape.
    """
    x = np.zeros(x_shape)
    for n, c, h, w, row, col in _im2col_taps(x_shape, kernel_size, stride, padding, dilation):
        x[n, c, h, w] += cols[n, row, col]
    return x.astype(cols.dtype)


# ---------------------------------------------------------------------------
# conv2d (groups; 1x1 and grouped convs are special cases)
# ---------------------------------------------------------------------------
def _conv2d_taps(x_shape, weight_shape, stride, padding, dilation, groups):
    """Yield (n, o, i, j, p, q, chans, h, w) for every (output, tap) pair that reads a real pixel.

    Output y[n, o, i, j] reads x[n, chans, h, w] through weight[o, :, p, q],
    where chans is the slice of the input channels of o's group and
    h = i·s_h - pad_h + p·d_h, w = j·s_w - pad_w + q·d_w.
    """
    # N batch; C_in, H, W input; C_out, C_g = C_in/G, k_h, k_w weight;
    # O_g = C_out/G output channels per group; output o belongs to group o // O_g
    N, C_in, H, W = x_shape
    C_out, C_g, k_h, k_w = weight_shape
    O_g = C_out // groups
    stride_h, stride_w = stride
    pad_h, pad_w = padding
    dil_h, dil_w = dilation
    out_h = conv_output_size(H, k_h, stride_h, pad_h, dil_h)
    out_w = conv_output_size(W, k_w, stride_w, pad_w, dil_w)
    for n, o, i, j, p, q in ndindex(N, C_out, out_h, out_w, k_h, k_w):
        h = i * stride_h - pad_h + p * dil_h
        w = j * stride_w - pad_w + q * dil_w
        if 0 <= h < H and 0 <= w < W:
            first = (o // O_g) * C_g
            yield n, o, i, j, p, q, slice(first, first + C_g), h, w


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """2-D convolution (cross-correlation, as in every deep-learning library), with groups.

    y[n, o, i, j] = bias[o] + Σ_{c, p, q} weight[o, c, p, q] · x[n, g·C_g + c, h, w]
    h = i·s_h - pad_h + p·d_h,   w = j·s_w - pad_w + q·d_w   (x reads 0 outside the input)

    with G groups: C_g = C_in/G input channels per group, c in [0, C_g), and
    g = o // (C_out/G) the group of output channel o.
    x (N, C_in, H, W), weight (C_out, C_in/G, k_h, k_w), bias (C_out,) or None
    -> y (N, C_out, out_h, out_w), out = (H + 2·pad - d·(k-1) - 1) // s + 1.

    >>> conv2d_forward(np.zeros((1, 4, 6, 6)), np.zeros((6, 2, 3, 3)), None, (2, 2), (1, 1), (1, 1), 2).shape
    (1, 6, 3, 3)
    """
    dtype = x.dtype
    x, weight = _f64(x), _f64(weight)
    N, C_out = x.shape[0], weight.shape[0]
    out_h = conv_output_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = conv_output_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    y = np.zeros((N, C_out, out_h, out_w))
    for n, o, i, j, p, q, chans, h, w in _conv2d_taps(x.shape, weight.shape, stride, padding, dilation, groups):
        y[n, o, i, j] += weight[o, :, p, q] @ x[n, chans, h, w]  # Σ over the group's input channels
    if bias is not None:
        y += _f64(bias)[None, :, None, None]  # (1, C_out, 1, 1)
    return y.astype(dtype)


def conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, needs=(True, True, True)):
    """Gradients of conv2d, by sending each output's gradient back along its taps.

    For every term  weight[o, c, p, q] · x[n, c', h, w]  of y[n, o, i, j]  (same index formula as the forward):
        grad_input[n, c', h, w]  += grad_output[n, o, i, j] · weight[o, c, p, q]
        grad_weight[o, c, p, q]  += grad_output[n, o, i, j] · x[n, c', h, w]
        grad_bias[o]              = Σ_{n, i, j} grad_output[n, o, i, j]
    (grad_input is a transposed convolution of grad_output, grad_weight a
    correlation of grad_output with x: the tests check both identities.)
    Returns (grad_input, grad_weight, grad_bias), None where needs is False.
    """
    g_out, x64, w64 = _f64(grad_output), _f64(x), _f64(weight)
    grad_input = np.zeros(x.shape)
    grad_weight = np.zeros(weight.shape)
    for n, o, i, j, p, q, chans, h, w in _conv2d_taps(x.shape, weight.shape, stride, padding, dilation, groups):
        g = g_out[n, o, i, j]
        grad_input[n, chans, h, w] += g * w64[o, :, p, q]
        grad_weight[o, :, p, q] += g * x64[n, chans, h, w]
    grad_bias = g_out.sum(axis=(0, 2, 3))
    return (grad_input.astype(x.dtype) if needs[0] else None,
            grad_weight.astype(weight.dtype) if needs[1] else None,
            grad_bias.astype(grad_output.dtype) if needs[2] else None)


# ---------------------------------------------------------------------------
# depthwise conv2d (channel multiplier), written directly
# ---------------------------------------------------------------------------
def _depthwise_taps(x_shape, weight_shape, stride, padding, dilation):
    """Yield (n, o, i, j, p, q, c, h, w): output y[n, o, i, j] reads x[n, c, h, w] through weight[o, 0, p, q].

    c = o // mult (mult = C_out / C, the channel multiplier),
    h = i·s_h - pad_h + p·d_h, w = j·s_w - pad_w + q·d_w; taps in the padding are skipped.
    """
    # N batch; C, H, W input; C_out = C·mult, k_h, k_w weight
    N, C, H, W = x_shape
    C_out, _, k_h, k_w = weight_shape
    mult = C_out // C
    stride_h, stride_w = stride
    pad_h, pad_w = padding
    dil_h, dil_w = dilation
    out_h = conv_output_size(H, k_h, stride_h, pad_h, dil_h)
    out_w = conv_output_size(W, k_w, stride_w, pad_w, dil_w)
    for n, o, i, j, p, q in ndindex(N, C_out, out_h, out_w, k_h, k_w):
        h = i * stride_h - pad_h + p * dil_h
        w = j * stride_w - pad_w + q * dil_w
        if 0 <= h < H and 0 <= w < W:
            yield n, o, i, j, p, q, o // mult, h, w


def depthwise_conv2d_forward(x, weight, bias, stride, padding, dilation):
    """Depthwise convolution: each output channel filters a single input channel.

    y[n, o, i, j] = bias[o] + Σ_{p, q} weight[o, 0, p, q] · x[n, o // mult, h, w]
    h = i·s_h - pad_h + p·d_h,   w = j·s_w - pad_w + q·d_w   (x reads 0 outside the input)

    x (N, C, H, W), weight (C·mult, 1, k_h, k_w) -> y (N, C·mult, out_h, out_w);
    output channels o = c·mult .. c·mult + mult - 1 read input channel c.
    The same as conv2d with groups = C, computed without the channel sum.

    >>> depthwise_conv2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((6, 1, 3, 3)), None, (1, 1), (0, 0), (1, 1)).shape
    (1, 6, 3, 3)
    """
    dtype = x.dtype
    x, weight = _f64(x), _f64(weight)
    N, C_out = x.shape[0], weight.shape[0]
    out_h = conv_output_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = conv_output_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    y = np.zeros((N, C_out, out_h, out_w))
    for n, o, i, j, p, q, c, h, w in _depthwise_taps(x.shape, weight.shape, stride, padding, dilation):
        y[n, o, i, j] += weight[o, 0, p, q] * x[n, c, h, w]
    if bias is not None:
        y += _f64(bias)[None, :, None, None]  # (1, C_out, 1, 1)
    return y.astype(dtype)


def depthwise_conv2d_backward(grad_output, x, weight, stride, padding, dilation, needs=(True, True, True)):
    """Gradients of the depthwise convolution, one scalar term at a time.

    For every term weight[o, 0, p, q] · x[n, c, h, w] of y[n, o, i, j] (c = o // mult):
        grad_input[n, c, h, w]   += grad_output[n, o, i, j] · weight[o, 0, p, q]
        grad_weight[o, 0, p, q]  += grad_output[n, o, i, j] · x[n, c, h, w]
        grad_bias[o]              = Σ_{n, i, j} grad_output[n, o, i, j]
    Returns (grad_input, grad_weight, grad_bias), None where needs is False.
    """
    g_out, x64, w64 = _f64(grad_output), _f64(x), _f64(weight)
    grad_input = np.zeros(x.shape)
    grad_weight = np.zeros(weight.shape)
    for n, o, i, j, p, q, c, h, w in _depthwise_taps(x.shape, weight.shape, stride, padding, dilation):
        g = g_out[n, o, i, j]
        grad_input[n, c, h, w] += g * w64[o, 0, p, q]
        grad_weight[o, 0, p, q] += g * x64[n, c, h, w]
    grad_bias = g_out.sum(axis=(0, 2, 3))
    return (grad_input.astype(x.dtype) if needs[0] else None,
            grad_weight.astype(weight.dtype) if needs[1] else None,
            grad_bias.astype(grad_output.dtype) if needs[2] else None)


# ---------------------------------------------------------------------------
# transposed conv2d, written as its own scatter (not by calling conv2d)
# ---------------------------------------------------------------------------
def conv_transpose_output_size(size, k, s, p, output_padding, d):
    """out = (size - 1)·s - 2·p + d·(k-1) + output_padding + 1.

    >>> conv_transpose_output_size(3, 3, 2, 1, 1, 1)
    6
    """
    return (size - 1) * s - 2 * p + d * (k - 1) + output_padding + 1


def _conv_transpose2d_taps(x_shape, weight_shape, stride, padding, output_padding, groups, dilation):
    """Yield (n, c, i, j, p, q, chans, h, w): input x[n, c, i, j] writes y[n, chans, h, w] through weight[c, :, p, q].

    chans is the slice of the output channels of c's group,
    h = i·s_h - pad_h + p·d_h, w = j·s_w - pad_w + q·d_w; writes that land
    outside [0, out_h) x [0, out_w) (in the cropped padding) are skipped.
    """
    # N batch; C_in, H, W input; C_in, O_g = C_out/G, k_h, k_w weight;
    # C_g = C_in/G input channels per group; input c belongs to group c // C_g
    N, C_in, H, W = x_shape
    _, O_g, k_h, k_w = weight_shape
    C_g = C_in // groups
    stride_h, stride_w = stride
    pad_h, pad_w = padding
    dil_h, dil_w = dilation
    out_h = conv_transpose_output_size(H, k_h, stride_h, pad_h, output_padding[0], dil_h)
    out_w = conv_transpose_output_size(W, k_w, stride_w, pad_w, output_padding[1], dil_w)
    for n, c, i, j, p, q in ndindex(N, C_in, H, W, k_h, k_w):
        h = i * stride_h - pad_h + p * dil_h
        w = j * stride_w - pad_w + q * dil_w
        if 0 <= h < out_h and 0 <= w < out_w:
            first = (c // C_g) * O_g
            yield n, c, i, j, p, q, slice(first, first + O_g), h, w


def conv_transpose2d_forward(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """Transposed convolution ("deconvolution"): every input pixel stamps the kernel onto the output.

    y[n, g·O_g + o, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w] += x[n, c, i, j] · weight[c, o, p, q]
    for every input (n, c, i, j), tap (p, q) and o in [0, O_g), with g = c // (C_in/G)
    the group of input channel c and O_g = C_out/G; then y += bias[o].
    Writes that land outside the output are dropped (the padding crops the output).

    x (N, C_in, H, W), weight (C_in, C_out/G, k_h, k_w)
    -> y (N, C_out, out_h, out_w), out = (H - 1)·s - 2·pad + d·(k-1) + output_padding + 1.
    It is the adjoint of conv2d with the same weight: <conv2d(u, w), x> = <u, conv_transpose2d(x, w)>.

    >>> conv_transpose2d_forward(np.zeros((1, 4, 3, 3)), np.zeros((4, 3, 3, 3)), None,
    ...                          (2, 2), (1, 1), (1, 1), 2, (1, 1)).shape
    (1, 6, 6, 6)
    """
    dtype = x.dtype
    x, weight = _f64(x), _f64(weight)
    N, _, H, W = x.shape
    C_out = weight.shape[1] * groups
    out_h = conv_transpose_output_size(H, weight.shape[2], stride[0], padding[0], output_padding[0], dilation[0])
    out_w = conv_transpose_output_size(W, weight.shape[3], stride[1], padding[1], output_padding[1], dilation[1])
    y = np.zeros((N, C_out, out_h, out_w))
    for n, c, i, j, p, q, chans, h, w in _conv_transpose2d_taps(x.shape, weight.shape, stride, padding,
                                                                 output_padding, groups, dilation):
        y[n, chans, h, w] += x[n, c, i, j] * weight[c, :, p, q]
    if bias is not None:
        y += _f64(bias)[None, :, None, None]  # (1, C_out, 1, 1)
    return y.astype(dtype)


def conv_transpose2d_backward(grad_output, x, weight, stride, padding, output_padding, groups, dilation,
                              needs=(True, True, True)):
    """Gradients of conv_transpose2d: each input gathers the gradient of the outputs it stamped.

    For every term x[n, c, i, j] · weight[c, o, p, q] added into y[n, g·O_g + o, h, w]:
        grad_input[n, c, i, j]   += Σ_o grad_output[n, g·O_g + o, h, w] · weight[c, o, p, q]
        grad_weight[c, o, p, q]  += x[n, c, i, j] · grad_output[n, g·O_g + o, h, w]
        grad_bias[o]              = Σ_{n, h, w} grad_output[n, o, h, w]
    (grad_input is conv2d(grad_output, weight) with the same stride, padding,
    dilation and groups: the tests check it.)
    Returns (grad_input, grad_weight, grad_bias), None where needs is False.
    """
    g_out, x64, w64 = _f64(grad_output), _f64(x), _f64(weight)
    grad_input = np.zeros(x.shape)
    grad_weight = np.zeros(weight.shape)
    for n, c, i, j, p, q, chans, h, w in _conv_transpose2d_taps(x.shape, weight.shape, stride, padding,
                                                                 output_padding, groups, dilation):
        grad_input[n, c, i, j] += g_out[n, chans, h, w] @ w64[c, :, p, q]
        grad_weight[c, :, p, q] += x64[n, c, i, j] * g_out[n, chans, h, w]
    grad_bias = g_out.sum(axis=(0, 2, 3))
    return (grad_input.astype(x.dtype) if needs[0] else None,
            grad_weight.astype(weight.dtype) if needs[1] else None,
            grad_bias.astype(grad_output.dtype) if needs[2] else None)


# ---------------------------------------------------------------------------
# deformable conv2d v1 (offsets) and v2 (offsets + mask), torchvision's conventions
# ---------------------------------------------------------------------------
def bilinear(img, y, x):
    """Sample the 2-D array img (H, W) at the real point (y, x), as torchvision does.

    With y0 = floor(y), x0 = floor(x), ly = y - y0, lx = x - x0:
        bilinear = (1-ly)·(1-lx)·img[y0, x0]   + (1-ly)·lx·img[y0, x0+1]
                 + ly·(1-lx)·img[y0+1, x0]     + ly·lx·img[y0+1, x0+1]
    where a corner outside the image reads 0, and a point outside
    (-1, H) x (-1, W) gives 0 (the image fades linearly to 0 over one pixel).

    >>> float(bilinear(np.array([[0.0, 1.0], [2.0, 3.0]]), 0.5, 0.25))
    1.25
    """
    H, W = img.shape
    if not (-1 < y < H and -1 < x < W):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * _pixel(img, y0, x0) + (1 - ly) * lx * _pixel(img, y0, x0 + 1)
            + ly * (1 - lx) * _pixel(img, y0 + 1, x0) + ly * lx * _pixel(img, y0 + 1, x0 + 1))


def bilinear_grad_yx(img, y, x):
    """The partial derivatives (∂bilinear/∂y, ∂bilinear/∂x) at (y, x).

    Differentiating the four-corner formula of `bilinear` (ly = y - y0, lx = x - x0):
        ∂/∂y = (1-lx)·(img[y0+1, x0] - img[y0, x0])   + lx·(img[y0+1, x0+1] - img[y0, x0+1])
        ∂/∂x = (1-ly)·(img[y0, x0+1] - img[y0, x0])   + ly·(img[y0+1, x0+1] - img[y0+1, x0])
    with corners outside the image reading 0, and (0, 0) outside (-1, H) x (-1, W).
    On the integer grid bilinear has a kink; floor() makes this the derivative from above.
    """
    H, W = img.shape
    if not (-1 < y < H and -1 < x < W):
        return 0.0, 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    v00, v01 = _pixel(img, y0, x0), _pixel(img, y0, x0 + 1)
    v10, v11 = _pixel(img, y0 + 1, x0), _pixel(img, y0 + 1, x0 + 1)
    d_dy = (1 - lx) * (v10 - v00) + lx * (v11 - v01)
    d_dx = (1 - ly) * (v01 - v00) + ly * (v11 - v10)
    return d_dy, d_dx


def bilinear_scatter(grad_img, y, x, g):
    """The adjoint of bilinear with respect to img: add g·(corner weight) into each corner.

    bilinear is linear in img, with weight (1-ly)·(1-lx) on img[y0, x0] and so
    on; so the gradient g of one sample goes to the four corners in those
    proportions (corners outside the image, and points outside
    (-1, H) x (-1, W), receive nothing). grad_img (H, W) is updated in place.
    """
    H, W = grad_img.shape
    if not (-1 < y < H and -1 < x < W):
        return
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    corners = ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
               (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx))
    for h, w, weight in corners:
        if 0 <= h < H and 0 <= w < W:
            grad_img[h, w] += g * weight


def _deform_taps(x_shape, weight_shape, offset, mask, stride, padding, dilation):
    """Yield one record per (n, input channel c, output (i, j), tap (p, q)) of a deformable conv.

    Yields (n, c, i, j, p, q, sy, sx, m, off_ch, mask_ch, outs, c_w):
        t       = p·k_w + q                     the tap number (torchvision's order)
        og      = c // (C_in / offset_groups)   c's offset group; K = k_h·k_w
        off_ch  = 2·(og·K + t)                  offset[n, off_ch] is Δy, offset[n, off_ch + 1] is Δx
        mask_ch = og·K + t                      mask[n, mask_ch] scales the sample (m = 1 without mask)
        sy      = i·s_h - pad_h + p·d_h + offset[n, off_ch, i, j]          the sampling point
        sx      = j·s_w - pad_w + q·d_w + offset[n, off_ch + 1, i, j]
        outs    the slice of output channels of c's weight group (weight groups = C_in / weight.shape[1])
        c_w     = c mod (C_in / weight groups), c's column in weight[:, c_w]
    """
    # N batch; C_in, H, W input; C_out, C_g = C_in/G, k_h, k_w weight; G weight groups,
    # O_g = C_out/G outputs per group; offset_groups from the offset's channels
    N, C_in, H, W = x_shape
    C_out, C_g, k_h, k_w = weight_shape
    K = k_h * k_w
    groups = C_in // C_g
    O_g = C_out // groups
    offset_groups = offset.shape[1] // (2 * K)
    chans_per_offset_group = C_in // offset_groups
    out_h, out_w = offset.shape[2], offset.shape[3]
    stride_h, stride_w = stride
    pad_h, pad_w = padding
    dil_h, dil_w = dilation
    for n, c, i, j, p, q in ndindex(N, C_in, out_h, out_w, k_h, k_w):
        og, t = c // chans_per_offset_group, p * k_w + q
        off_ch, mask_ch = 2 * (og * K + t), og * K + t
        sy = i * stride_h - pad_h + p * dil_h + offset[n, off_ch, i, j]
        sx = j * stride_w - pad_w + q * dil_w + offset[n, off_ch + 1, i, j]
        m = 1.0 if mask is None else mask[n, mask_ch, i, j]
        g = c // C_g
        yield n, c, i, j, p, q, sy, sx, m, off_ch, mask_ch, slice(g * O_g, (g + 1) * O_g), c - g * C_g


def deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask):
    """Deformable convolution v1 (mask None) and v2 (with mask), torchvision's conventions.

    Each tap (p, q) of output (i, j) reads not the grid point but a learnt
    point near it, by bilinear interpolation, optionally scaled by a mask:
        y[n, o, i, j] = bias[o] + Σ_{c, p, q} weight[o, c, p, q] · m · bilinear(x[n, g·C_g + c],
                                     i·s_h - pad_h + p·d_h + Δy,  j·s_w - pad_w + q·d_w + Δx)
    where, for input channel c' = g·C_g + c in offset group og = c' // (C_in/offset_groups)
    and tap t = p·k_w + q, K = k_h·k_w:
        Δy = offset[n, 2·(og·K + t), i, j],  Δx = offset[n, 2·(og·K + t) + 1, i, j],
        m  = mask[n, og·K + t, i, j]  (1 when mask is None).
    x (N, C_in, H, W), offset (N, 2·offset_groups·K, out_h, out_w),
    weight (C_out, C_in/G, k_h, k_w), mask (N, offset_groups·K, out_h, out_w) or None
    -> y (N, C_out, out_h, out_w), out as conv2d. Zero offsets and m = 1 give conv2d.

    >>> deform_conv2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((1, 18, 2, 2)), np.zeros((3, 2, 3, 3)), None,
    ...                       (1, 1), (0, 0), (1, 1), None).shape
    (1, 3, 2, 2)
    """
    dtype = x.dtype
    x, offset, weight, mask = _f64(x), _f64(offset), _f64(weight), _f64(mask)
    y = np.zeros((x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))
    for n, c, i, j, p, q, sy, sx, m, _, _, outs, c_w in _deform_taps(x.shape, weight.shape, offset, mask,
                                                                     stride, padding, dilation):
        y[n, outs, i, j] += weight[outs, c_w, p, q] * (m * bilinear(x[n, c], sy, sx))
    if bias is not None:
        y += _f64(bias)[None, :, None, None]  # (1, C_out, 1, 1)
    return y.astype(dtype)


def deform_conv2d_backward(grad_output, x, offset, weight, stride, padding, dilation, mask,
                           needs=(True, True, True, True, True)):
    """Gradients of the deformable convolution, term by term.

    Let v = bilinear(x[n, c'], sy, sx) be one sample (notation of the forward) and
        g_col = Σ_{o in c's group} grad_output[n, o, i, j] · weight[o, c, p, q]
    the gradient reaching the masked sample m·v. Then, summing over every (n, c', i, j, p, q):
        grad_weight[o, c, p, q]       += grad_output[n, o, i, j] · m · v
        grad_mask[n, og·K + t, i, j]  += g_col · v
        grad_offset[n, 2·(og·K+t), i, j]     += g_col · m · ∂v/∂sy       (bilinear_grad_yx)
        grad_offset[n, 2·(og·K+t) + 1, i, j] += g_col · m · ∂v/∂sx
        grad_input[n, c']             += g_col · m scattered to v's four corners (bilinear_scatter)
        grad_bias[o]                   = Σ_{n, i, j} grad_output[n, o, i, j]
    Returns (grad_input, grad_offset, grad_weight, grad_bias, grad_mask), None
    where needs is False; grad_mask is None when mask is None (v1).
    """
    g_out, x64, off64, w64, mask64 = _f64(grad_output), _f64(x), _f64(offset), _f64(weight), _f64(mask)
    grad_input = np.zeros(x.shape)
    grad_offset = np.zeros(offset.shape)
    grad_weight = np.zeros(weight.shape)
    grad_mask = np.zeros(offset.shape[:1] + (offset.shape[1] // 2,) + offset.shape[2:])
    for n, c, i, j, p, q, sy, sx, m, off_ch, mask_ch, outs, c_w in _deform_taps(
            x.shape, weight.shape, off64, mask64, stride, padding, dilation):
        v = bilinear(x64[n, c], sy, sx)
        g_col = g_out[n, outs, i, j] @ w64[outs, c_w, p, q]
        grad_weight[outs, c_w, p, q] += g_out[n, outs, i, j] * (m * v)
        grad_mask[n, mask_ch, i, j] += g_col * v
        dv_dy, dv_dx = bilinear_grad_yx(x64[n, c], sy, sx)
        grad_offset[n, off_ch, i, j] += g_col * m * dv_dy
        grad_offset[n, off_ch + 1, i, j] += g_col * m * dv_dx
        bilinear_scatter(grad_input[n, c], sy, sx, g_col * m)
    grad_bias = g_out.sum(axis=(0, 2, 3))
    return (grad_input.astype(x.dtype) if needs[0] else None,
            grad_offset.astype(offset.dtype) if needs[1] else None,
            grad_weight.astype(weight.dtype) if needs[2] else None,
            grad_bias.astype(grad_output.dtype) if needs[3] else None,
            grad_mask.astype(mask.dtype) if needs[4] and mask is not None else None)


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
def _max_pool_window(i, size, k, s, pad, d):
    """The input positions of window i along one axis that lie inside [0, size).

    Window i covers i·s - pad + a·d for a = 0 .. k-1; the rest is padding (-inf).
    """
    return [i * s - pad + a * d for a in range(k) if 0 <= i * s - pad + a * d < size]


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Max pooling, with PyTorch's index convention.

    y[n, c, i, j] = max_{p, q} x[n, c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
    indices[n, c, i, j] = h·W + w of the winning element (flat within the (n, c) plane)

    Padded positions are -inf, so they never win; the window is scanned row by
    row and only a strictly larger value replaces the current best, so ties go
    to the first maximum. out = pool_output_size(H, k_h, s_h, pad_h, d_h, ceil_mode).
    A window holding no input element at all (possible only with extreme
    dilation) gives -inf and index -1.
    x (N, C, H, W) -> (y (N, C, out_h, out_w), indices int64 of the same shape).

    >>> y, idx = max_pool2d_forward(np.arange(16.0).reshape(1, 1, 4, 4), (2, 2), (2, 2), (0, 0), (1, 1), False)
    >>> y[0, 0].tolist(), idx[0, 0].tolist()
    ([[5.0, 7.0], [13.0, 15.0]], [[5, 7], [13, 15]])
    """
    N, C, H, W = x.shape
    k_h, k_w = kernel_size
    out_h = pool_output_size(H, k_h, stride[0], padding[0], dilation[0], ceil_mode)
    out_w = pool_output_size(W, k_w, stride[1], padding[1], dilation[1], ceil_mode)
    y = np.full((N, C, out_h, out_w), -np.inf)
    indices = np.full((N, C, out_h, out_w), -1, dtype=np.int64)
    for n, c, i, j in ndindex(N, C, out_h, out_w):
        rows = _max_pool_window(i, H, k_h, stride[0], padding[0], dilation[0])
        cols = _max_pool_window(j, W, k_w, stride[1], padding[1], dilation[1])
        for h, w in itertools.product(rows, cols):
            if x[n, c, h, w] > y[n, c, i, j]:  # strict: the first maximum wins a tie
                y[n, c, i, j] = x[n, c, h, w]
                indices[n, c, i, j] = h * W + w
    return y.astype(x.dtype), indices


def max_pool2d_backward(grad_output, indices, input_shape):
    """Gradient of max pooling: each output's gradient goes to its winning input.

    grad_input[n, c, indices[n, c, i, j] // W, indices[n, c, i, j] % W] += grad_output[n, c, i, j]
    (an input that wins several overlapping windows receives the sum; index -1 is dropped).
    """
    N, C, H, W = input_shape
    grad_input = np.zeros(input_shape)
    for n, c, i, j in ndindex(*grad_output.shape):
        flat = indices[n, c, i, j]
        if flat >= 0:
            grad_input[n, c, flat // W, flat % W] += grad_output[n, c, i, j]
    return grad_input.astype(grad_output.dtype)


# ---------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------
def _avg_pool_window(i, size, k, s, pad, count_include_pad):
    """(start, end, count) of window i along one axis, with PyTorch's divisor rule.

    The window covers i·s - pad .. i·s - pad + k - 1, first clipped to the
    padded extent [-pad, size + pad) (this length is the count when
    count_include_pad), then to the input [0, size): the input rows summed are
    start .. end-1, and end - start is the count otherwise.
    """
    start = i * s - pad
    end = min(start + k, size + pad)
    padded_count = end - start
    start, end = max(start, 0), min(end, size)
    return start, end, (padded_count if count_include_pad else end - start)


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """Average pooling, with PyTorch's divisor rules.

    y[n, c, i, j] = (Σ_{h in rows(i), w in cols(j)} x[n, c, h, w]) / (count_h(i) · count_w(j))

    rows(i) = the input rows of window i = [i·s_h - pad_h, i·s_h - pad_h + k_h) ∩ [0, H).
    count_include_pad: the count is the window's length clipped to [-pad, H + pad)
    (padding counts, but the part of a ceil_mode window beyond the padding does not);
    otherwise the count is len(rows(i)). A window with no input element gives 0.
    out = pool_output_size(H, k_h, s_h, pad_h, 1, ceil_mode).
    x (N, C, H, W) -> y (N, C, out_h, out_w).

    >>> avg_pool2d_forward(np.ones((1, 1, 3, 3)), (2, 2), (2, 2), (1, 1), False, True)[0, 0].tolist()
    [[0.25, 0.5], [0.5, 1.0]]
    """
    N, C, H, W = x.shape
    k_h, k_w = kernel_size
    out_h = pool_output_size(H, k_h, stride[0], padding[0], 1, ceil_mode)
    out_w = pool_output_size(W, k_w, stride[1], padding[1], 1, ceil_mode)
    x64 = _f64(x)
    y = np.zeros((N, C, out_h, out_w))
    for n, c, i, j in ndindex(N, C, out_h, out_w):
        h0, h1, count_h = _avg_pool_window(i, H, k_h, stride[0], padding[0], count_include_pad)
        w0, w1, count_w = _avg_pool_window(j, W, k_w, stride[1], padding[1], count_include_pad)
        if h0 < h1 and w0 < w1:
            y[n, c, i, j] = x64[n, c, h0:h1, w0:w1].sum() / (count_h * count_w)
    return y.astype(x.dtype)


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """Gradient of average pooling: each output spreads its gradient evenly over its window.

    grad_input[n, c, rows(i), cols(j)] += grad_output[n, c, i, j] / (count_h(i) · count_w(j))
    (the windows and counts of avg_pool2d_forward; overlapping windows add up).
    """
    N, C, H, W = input_shape
    k_h, k_w = kernel_size
    g_out = _f64(grad_output)
    grad_input = np.zeros(input_shape)
    for n, c, i, j in ndindex(*grad_output.shape):
        h0, h1, count_h = _avg_pool_window(i, H, k_h, stride[0], padding[0], count_include_pad)
        w0, w1, count_w = _avg_pool_window(j, W, k_w, stride[1], padding[1], count_include_pad)
        if h0 < h1 and w0 < w1:
            grad_input[n, c, h0:h1, w0:w1] += g_out[n, c, i, j] / (count_h * count_w)
    return grad_input.astype(grad_output.dtype)


def _adaptive_window(i, size, out):
    """Rows of adaptive window i: floor(i·size/out) .. ceil((i+1)·size/out) - 1 (PyTorch)."""
    return (i * size) // out, -(-((i + 1) * size) // out)


def adaptive_avg_pool2d_forward(x, output_size):
    """Adaptive average pooling to a fixed output size (out_h, out_w).

    y[n, c, i, j] = mean of x[n, c, h0:h1, w0:w1],
        h0 = floor(i·H/out_h), h1 = ceil((i+1)·H/out_h)   (columns likewise)
    Windows may overlap and differ in size by one. output_size (1, 1) is the global average pool.

    >>> adaptive_avg_pool2d_forward(np.arange(9.0).reshape(1, 1, 3, 3), (2, 2))[0, 0].tolist()
    [[2.0, 3.0], [5.0, 6.0]]
    """
    N, C, H, W = x.shape
    out_h, out_w = output_size
    x64 = _f64(x)
    y = np.zeros((N, C, out_h, out_w))
    for n, c, i, j in ndindex(N, C, out_h, out_w):
        h0, h1 = _adaptive_window(i, H, out_h)
        w0, w1 = _adaptive_window(j, W, out_w)
        y[n, c, i, j] = x64[n, c, h0:h1, w0:w1].sum() / ((h1 - h0) * (w1 - w0))
    return y.astype(x.dtype)


def adaptive_avg_pool2d_backward(grad_output, input_shape):
    """grad_input[n, c, h0:h1, w0:w1] += grad_output[n, c, i, j] / ((h1 - h0)·(w1 - w0)), the forward's windows."""
    N, C, H, W = input_shape
    out_h, out_w = grad_output.shape[2:]
    g_out = _f64(grad_output)
    grad_input = np.zeros(input_shape)
    for n, c, i, j in ndindex(N, C, out_h, out_w):
        h0, h1 = _adaptive_window(i, H, out_h)
        w0, w1 = _adaptive_window(j, W, out_w)
        grad_input[n, c, h0:h1, w0:w1] += g_out[n, c, i, j] / ((h1 - h0) * (w1 - w0))
    return grad_input.astype(grad_output.dtype)


# ---------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------
def batch_norm_forward(x, weight, bias, eps):
    """Batch normalisation in training mode, statistics over every axis but 1 (the channel).

    For each channel c, over the M values x[:, c] (M = N·H·W, or N for an (N, C) input):
        mean[c]    = Σ x[:, c] / M
        var[c]     = Σ (x[:, c] - mean[c])² / M          (biased: divide by M, not M - 1)
        inv_std[c] = 1 / sqrt(var[c] + eps)
        y[:, c]    = weight[c] · (x[:, c] - mean[c]) · inv_std[c] + bias[c]
    weight None means 1, bias None means 0. x (N, C) or (N, C, H, W)
    -> (y like x, mean (C,), inv_std (C,)); mean and inv_std are what the backward needs.

    >>> y, mean, inv_std = batch_norm_forward(np.array([[1.0], [3.0]]), None, None, 0.0)
    >>> y.ravel().tolist(), mean.tolist(), inv_std.tolist()
    ([-1.0, 1.0], [2.0], [1.0])
    """
    x64 = _f64(x)
    C = x.shape[1]
    y = np.zeros(x.shape)
    mean, inv_std = np.zeros(C), np.zeros(C)
    for c in range(C):
        xc = x64[:, c]  # (N, H, W) or (N,)
        mean[c] = xc.sum() / xc.size
        var = ((xc - mean[c]) ** 2).sum() / xc.size
        inv_std[c] = 1.0 / math.sqrt(var + eps)
        w = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        y[:, c] = w * (xc - mean[c]) * inv_std[c] + b
    return y.astype(x.dtype), mean.astype(x.dtype), inv_std.astype(x.dtype)


def batch_norm_backward(grad_output, x, weight, mean, inv_std, needs=(True, True, True)):
    """Gradients of training-mode batch norm, by the chain rule one step at a time.

    Per channel, with M values, xhat = (x - mean)·inv_std and g = grad_output:
        grad_bias   = Σ g
        grad_weight = Σ g · xhat
        g_xhat      = g · weight
        g_var       = Σ g_xhat · (x - mean) · (-1/2) · inv_std³          (inv_std = (var + eps)^(-1/2))
        g_mean      = Σ -g_xhat · inv_std  +  g_var · Σ -2·(x - mean) / M  (the second sum is 0)
        grad_input  = g_xhat · inv_std  +  g_var · 2·(x - mean) / M  +  g_mean / M
    (the three paths from x: directly, through var, through mean).
    weight None means 1 and then grad_weight is None, as is grad_bias when
    needs says so. Returns (grad_input, grad_weight, grad_bias).
    """
    g_out, x64, mean64, inv_std64 = _f64(grad_output), _f64(x), _f64(mean), _f64(inv_std)
    C = x.shape[1]
    grad_input = np.zeros(x.shape)
    grad_weight, grad_bias = np.zeros(C), np.zeros(C)
    for c in range(C):
        xc, g = x64[:, c], g_out[:, c]  # (N, H, W) or (N,)
        M = xc.size
        centred = xc - mean64[c]
        xhat = centred * inv_std64[c]
        grad_bias[c] = g.sum()
        grad_weight[c] = (g * xhat).sum()
        g_xhat = g * (1.0 if weight is None else float(weight[c]))
        g_var = (g_xhat * centred).sum() * -0.5 * inv_std64[c] ** 3
        g_mean = (-g_xhat * inv_std64[c]).sum() + g_var * (-2.0 * centred).sum() / M
        grad_input[:, c] = g_xhat * inv_std64[c] + g_var * 2.0 * centred / M + g_mean / M
    return (grad_input.astype(x.dtype) if needs[0] else None,
            grad_weight.astype(x.dtype if weight is None else weight.dtype)
            if needs[1] and weight is not None else None,
            grad_bias.astype(grad_output.dtype) if needs[2] else None)


def batch_norm_inference(x, running_mean, running_var, weight, bias, eps):
    """Batch norm in evaluation mode: the running statistics replace the batch's.

    y[:, c] = weight[c] · (x[:, c] - running_mean[c]) / sqrt(running_var[c] + eps) + bias[c]
    weight None means 1, bias None means 0. x (N, C) or (N, C, H, W) -> y like x.
    """
    x64 = _f64(x)
    y = np.zeros(x.shape)
    for c in range(x.shape[1]):
        w = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        y[:, c] = w * (x64[:, c] - float(running_mean[c])) / math.sqrt(float(running_var[c]) + eps) + b
    return y.astype(x.dtype)


# ---------------------------------------------------------------------------
# channel shuffle
# ---------------------------------------------------------------------------
def channel_shuffle_forward(x, groups):
    """Channel shuffle (ShuffleNet), as torch.nn.functional.channel_shuffle.

    View the C channels as a (groups, C/groups) table, transpose it to
    (C/groups, groups), read it out row by row:
        y[:, k·groups + g] = x[:, g·(C/groups) + k]     g in [0, groups), k in [0, C/groups)
    so the output interleaves the groups. Works for any x of shape (N, C, ...).

    >>> channel_shuffle_forward(np.arange(6.0).reshape(1, 6), 2).tolist()
    [[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]]
    """
    C = x.shape[1]
    per_group = C // groups
    y = np.zeros_like(x)
    for g, k in ndindex(groups, per_group):
        y[:, k * groups + g] = x[:, g * per_group + k]
    return y


def channel_shuffle_backward(grad_output, groups):
    """The shuffle is a permutation of channels, so its gradient is the inverse permutation:

        grad_input[:, g·(C/groups) + k] = grad_output[:, k·groups + g]
    """
    C = grad_output.shape[1]
    per_group = C // groups
    grad_input = np.zeros_like(grad_output)
    for g, k in ndindex(groups, per_group):
        grad_input[:, g * per_group + k] = grad_output[:, k * groups + g]
    return grad_input


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------
def relu_forward(x):
    """y[i] = x[i] if x[i] > 0 else 0, one element at a time (NaN passes through, as np.maximum)."""
    y = np.zeros_like(x)
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    for i in range(flat_x.size):
        if flat_x[i] > 0 or flat_x[i] != flat_x[i]:
            flat_y[i] = flat_x[i]
    return y


def relu_backward(grad_output, x):
    """grad_input[i] = grad_output[i] if x[i] > 0 else 0."""
    grad_input = np.zeros_like(x)
    flat_g, flat_x, flat_gi = grad_output.reshape(-1), x.reshape(-1), grad_input.reshape(-1)
    for i in range(flat_x.size):
        if flat_x[i] > 0:
            flat_gi[i] = flat_g[i]
    return grad_input

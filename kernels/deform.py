"""Deformable convolution v1 (offsets) and v2 (offsets + mask), torchvision's conventions.

Notation: x (N, C_in, H, W); weight (C_out, C_g, k_h, k_w) with G = C_in / C_g
weight groups and O_g = C_out / G outputs per group; K = k_h·k_w taps,
t = p·k_w + q the tap number; offset (N, 2·OG·K, out_h, out_w) with OG
offset groups (inferred: OG = offset.shape[1] / 2K), input channel c in
offset group og = c // (C_in / OG); mask (N, OG·K, out_h, out_w) or None.

Each tap reads a learnt point near its grid point, by bilinear sampling:

    sy = i·stride_h - pad_h + p·dil_h + offset[n, 2·(og·K + t),     i, j]      (Δy first,
    sx = j·stride_w - pad_w + q·dil_w + offset[n, 2·(og·K + t) + 1, i, j]       then Δx)
    y[n, o, i, j] = bias[o] + Σ_{c in o's group, p, q} weight[o, c mod C_g, p, q]
                              · mask[n, og·K + t, i, j] · bilinear(x[n, c], sy, sx)

out_h, out_w are conv2d's: out = (H + 2·pad - dil·(k - 1) - 1) // stride + 1.

Bilinear sampling (torchvision's rules). With y0 = floor(y), x0 = floor(x),
ly = y - y0, lx = x - x0:

    bilinear(img, y, x) = Σ over the 4 corners (yi, xi) of (1 - |y - yi|)·(1 - |x - xi|)·img[yi, xi]
                        = (1-ly)(1-lx)·img[y0,x0] + (1-ly)·lx·img[y0,x0+1]
                          + ly·(1-lx)·img[y0+1,x0] + ly·lx·img[y0+1,x0+1]
    a corner outside the image reads 0, and a point outside (-1, H) x (-1, W) gives 0.
    ∂/∂y = (1-lx)·(img[y0+1,x0] - img[y0,x0]) + lx·(img[y0+1,x0+1] - img[y0,x0+1])
    ∂/∂x = (1-ly)·(img[y0,x0+1] - img[y0,x0]) + ly·(img[y0+1,x0+1] - img[y0+1,x0])

(at integer y or x the sampling has a kink; floor() makes these the
derivatives from above, as torchvision's.)

Structure, as im2col + GEMM:

    cols[n, c·K + t, i·out_w + j] = mask · bilinear(x[n, c], sy, sx)       "deformable im2col"
    y[n, group g]  = weight_g (O_g, C_g·K) @ cols[n, group g] (C_g·K, L)    BLAS, L = out_h·out_w

Backward, with g = grad_output:

    grad_weight_g = Σ_n g[n, group g] @ cols[n, group g]ᵀ
    grad_cols     = weight_gᵀ @ g[n, group g]                              (C_in·K, L) per sample
    grad_input[n, c]  += grad_cols[n, c·K+t, l] · mask, scattered to the 4 corners with the bilinear weights
    grad_offset[n, 2·(og·K+t) (+1), i, j] = Σ_{c in og} grad_cols[n, c·K+t, l] · mask · ∂bilinear/∂y (∂x)
    grad_mask[n, og·K + t, i, j]          = Σ_{c in og} grad_cols[n, c·K+t, l] · bilinear(x[n, c], sy, sx)
    grad_bias[o] = Σ_{n,i,j} g[n, o, i, j]

Threads, as kernels/conv2d.py: the samples are cut into B contiguous blocks,
B = min(N, NUMBA_NUM_THREADS), and one prange runs over the blocks. Each block
builds one sample's columns at a time into its own (C_in·K, L) buffer and
calls single-threaded GEMMs (np.dot inside the jitted code, SciPy's OpenBLAS,
pinned to 1 thread by tinyconv/threads.py), writing only its own samples'
y, grad_input, grad_offset and grad_mask. grad_weight sums into one private
accumulator per block, added up after the loop in block order: no races,
and the same answer bit for bit at any thread count. The backward is one
kernel: per sample, the columns for grad_weight, then grad_cols, the
scatter into grad_input and the gathers into grad_offset / grad_mask (each
element of those sums over the channels of its offset group, in channel
order). Memory: two (C_in·K, L) buffers per block. The work is parallel over
samples only: a batch of one runs on one thread, and so does any layer below
conv2d's _SERIAL_MULTIPLY_ADDS. `bilinear`, `bilinear_grad_yx` (with
`bilinear_value_grad`, both from one read of the corners) and
`bilinear_scatter` are scalar @njit helpers, the only place the sampling
rules live.

>>> import numpy as np
>>> x = np.zeros((1, 4, 6, 6), np.float32); w = np.zeros((8, 2, 3, 3), np.float32)   # 2 weight groups
>>> offset = np.zeros((1, 2 * 2 * 9, 4, 4), np.float32)                               # 2 offset groups
>>> deform_conv2d_forward(x, offset, w, None, (1, 1), (0, 0), (1, 1), None).shape
(1, 8, 4, 4)
"""
import math

import numpy as np
from numba import njit, prange

from kernels.conv2d import _PARTIAL_BYTES, _accumulate, _block, _blocks, _serial_if_small


# ---------------------------------------------------------------------------
# bilinear sampling: the scalar helpers (shared with a CUDA kernel)
# ---------------------------------------------------------------------------
@njit(cache=True)
def bilinear_corners(H, W, y, x):
    """(y0, x0, ly, lx, inside): the top-left corner, the fractional parts, and whether
    (y, x) lies in (-1, H) x (-1, W), where torchvision samples anything at all."""
    inside = y > -1 and y < H and x > -1 and x < W
    y0 = math.floor(y) if inside else 0
    x0 = math.floor(x) if inside else 0
    return y0, x0, y - y0, x - x0, inside


@njit(cache=True)
def _pixel(img, h, w):
    """img[h, w], or 0 outside the image."""
    if h < 0 or w < 0 or h >= img.shape[0] or w >= img.shape[1]:
        return 0.0
    return img[h, w]


@njit(cache=True)
def bilinear(img, y, x):
    """Σ_corners (1 - |y - yi|)·(1 - |x - xi|)·img[yi, xi]; 0 outside (-1, H) x (-1, W)."""
    y0, x0, ly, lx, inside = bilinear_corners(img.shape[0], img.shape[1], y, x)
    if not inside:
        return 0.0
    return ((1 - ly) * ((1 - lx) * _pixel(img, y0, x0) + lx * _pixel(img, y0, x0 + 1))
            + ly * ((1 - lx) * _pixel(img, y0 + 1, x0) + lx * _pixel(img, y0 + 1, x0 + 1)))


@njit(cache=True)
def bilinear_grad_yx(img, y, x):
    """(∂bilinear/∂y, ∂bilinear/∂x) at (y, x); (0, 0) outside (-1, H) x (-1, W)."""
    _, d_dy, d_dx = bilinear_value_grad(img, y, x)
    return d_dy, d_dx


@njit(cache=True)
def bilinear_value_grad(img, y, x):
    """(bilinear, ∂bilinear/∂y, ∂bilinear/∂x) at (y, x) from one read of the 4 corners (the backward needs all
    three); (0, 0, 0) outside (-1, H) x (-1, W)."""
    y0, x0, ly, lx, inside = bilinear_corners(img.shape[0], img.shape[1], y, x)
    if not inside:
        return 0.0, 0.0, 0.0
    v00, v01 = _pixel(img, y0, x0), _pixel(img, y0, x0 + 1)
    v10, v11 = _pixel(img, y0 + 1, x0), _pixel(img, y0 + 1, x0 + 1)
    value = (1 - ly) * ((1 - lx) * v00 + lx * v01) + ly * ((1 - lx) * v10 + lx * v11)
    return value, (1 - lx) * (v10 - v00) + lx * (v11 - v01), (1 - ly) * (v01 - v00) + ly * (v11 - v10)


@njit(cache=True)
def _add_pixel(img, h, w, value):
    if h >= 0 and w >= 0 and h < img.shape[0] and w < img.shape[1]:
        img[h, w] += value


@njit(cache=True)
def bilinear_scatter(grad_img, y, x, g):
    """The adjoint of bilinear in img: grad_img[yi, xi] += g·(1 - |y - yi|)·(1 - |x - xi|) at the 4 corners."""
    y0, x0, ly, lx, inside = bilinear_corners(grad_img.shape[0], grad_img.shape[1], y, x)
    if not inside:
        return
    _add_pixel(grad_img, y0, x0, g * (1 - ly) * (1 - lx))
    _add_pixel(grad_img, y0, x0 + 1, g * (1 - ly) * lx)
    _add_pixel(grad_img, y0 + 1, x0, g * ly * (1 - lx))
    _add_pixel(grad_img, y0 + 1, x0 + 1, g * ly * lx)


# ---------------------------------------------------------------------------
# forward and backward
# ---------------------------------------------------------------------------
def deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask):
    """y (N, C_out, out_h, out_w): per sample, deformable im2col, then one GEMM per weight group."""
    x, offset, weight, mask = _contiguous(x, offset, weight, mask)
    N, C_in = x.shape[:2]
    C_out, C_g, k_h, k_w = weight.shape
    G = C_in // C_g
    out_h, out_w = offset.shape[2:]
    y = np.empty((N, C_out, out_h, out_w), x.dtype)
    bias = np.zeros(C_out, x.dtype) if bias is None else bias  # one signature with and without bias
    with _serial_if_small(N * C_out * C_g * k_h * k_w * out_h * out_w):
        _forward_kernel(x, offset, _mask_or_dummy(mask, x), mask is not None,
                        weight.reshape(G, C_out // G, -1),                       # (G, O_g, C_g·K)
                        np.ascontiguousarray(bias, dtype=x.dtype).reshape(G, -1),  # (G, O_g)
                        y.reshape(N, G, C_out // G, out_h * out_w),               # (N, G, O_g, L)
                        *_geometry(k_h, k_w, stride, padding, dilation), _blocks(N))
    return y


def deform_conv2d_backward(grad_output, x, offset, weight, stride, padding, dilation, mask,
                           needs=(True, True, True, True, True)):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask); None where not needed (grad_mask
    also None for v1)."""
    need_input, need_offset, need_weight, need_bias, need_mask = needs
    need_mask = need_mask and mask is not None
    x, offset, weight, mask = _contiguous(x, offset, weight, mask)
    grad_output = np.ascontiguousarray(grad_output, dtype=x.dtype)
    N, C_in = x.shape[:2]
    C_out, C_g, k_h, k_w = weight.shape
    G = C_in // C_g
    if grad_output.shape != (N, C_out) + offset.shape[2:]:
        raise ValueError(f"grad_output has shape {grad_output.shape}, expected {(N, C_out) + offset.shape[2:]}")
    w_t = np.ascontiguousarray(weight.reshape(G, C_out // G, -1).transpose(0, 2, 1))  # (G, C_g·K, O_g)
    blocks = max(1, min(_blocks(N), _PARTIAL_BYTES // (weight.size * x.itemsize)))  # bounded memory, still fixed
    partial = np.zeros((blocks,) + (w_t.shape if need_weight else (G, 0, 0)), x.dtype)  # (B, G, C_g·K, O_g)
    dummy = _mask_or_dummy(None, x)
    grad_input = np.zeros(x.shape, x.dtype) if need_input else dummy
    grad_offset = np.zeros(offset.shape, x.dtype) if need_offset else dummy
    grad_mask = np.zeros(mask.shape, x.dtype) if need_mask else dummy
    gemms = need_weight + (need_input or need_offset or need_mask)  # 0, 1 or 2 GEMMs of this size
    with _serial_if_small(grad_output.size * C_g * k_h * k_w * gemms):
        _backward_kernel(grad_output.reshape(N, G, C_out // G, -1),   # (N, G, O_g, L)
                         x, offset, _mask_or_dummy(mask, x), mask is not None, w_t, partial,
                         grad_input, grad_offset, grad_mask, need_input, need_offset, need_mask,
                         *_geometry(k_h, k_w, stride, padding, dilation))
    grad_weight = None
    if need_weight:
        grad_weight_t = partial[0]                                 # (G, C_g·K, O_g)
        for b in range(1, blocks):  # block order: the same sum at any thread count
            grad_weight_t += partial[b]
        grad_weight = np.ascontiguousarray(grad_weight_t.transpose(0, 2, 1)).reshape(weight.shape)
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if need_bias else None
    return (grad_input if need_input else None, grad_offset if need_offset else None, grad_weight, grad_bias,
            grad_mask if need_mask else None)


def _contiguous(x, offset, weight, mask):
    x = np.ascontiguousarray(x)
    as_x = lambda a: None if a is None else np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    return x, as_x(offset), as_x(weight), as_x(mask)


def _geometry(k_h, k_w, stride, padding, dilation):
    """The kernels' scalar arguments: k_h, k_w, stride, pad, dil (h, w each)."""
    return k_h, k_w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]


def _mask_or_dummy(a, x):
    """A 4-D array of x's dtype in every case, so that v1 and v2 (and unrequested grads) share one kernel."""
    return np.zeros((1, 1, 1, 1), x.dtype) if a is None else a


# ---------------------------------------------------------------------------
# jitted kernels: one prange over blocks of samples, serial GEMMs inside
# ---------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _forward_kernel(x, offset, mask, has_mask, weight_g, bias, y,
                    k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, blocks):
    # x (N, C_in, H, W); weight_g (G, O_g, C_g·K); bias (G, O_g); y (N, G, O_g, L)
    n_batch, c_in = x.shape[:2]
    groups, c_out_g, c_g_k = weight_g.shape
    L = y.shape[3]
    for b in prange(blocks):
        cols = np.empty((c_in * k_h * k_w, L), dtype=x.dtype)  # this block's own
        cols_g = cols.reshape(groups, c_g_k, L)                   # (G, C_g·K, L)
        lo, hi = _block(b, blocks, n_batch)
        for n in range(lo, hi):
            _im2col_sample(x[n], offset[n], mask[n if has_mask else 0], has_mask, cols,
                           k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
            for g in range(groups):
                np.dot(weight_g[g], cols_g[g], y[n, g])  # (O_g, L) = (O_g, C_g·K) · (C_g·K, L)
                for o in range(c_out_g):
                    for pixel in range(L):
                        y[n, g, o, pixel] += bias[g, o]


@njit(cache=True, parallel=True)
def _backward_kernel(grad_output, x, offset, mask, has_mask, w_t, partial, grad_input, grad_offset, grad_mask,
                     need_input, need_offset, need_mask, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # grad_output (N, G, O_g, L); x (N, C_in, H, W); w_t (G, C_g·K, O_g); partial (B, G, C_g·K, O_g), or
    # (B, G, 0, 0) when grad_weight is not needed: block b sums its samples' cols · grad_outputᵀ into partial[b]
    n_batch, c_in = x.shape[:2]
    groups, c_g_k = w_t.shape[:2]
    L = grad_output.shape[3]
    blocks = partial.shape[0]
    need_weight = partial.shape[2] > 0
    need_cols_grad = need_input or need_offset or need_mask
    for b in prange(blocks):
        cols = np.empty((c_in * k_h * k_w, L), dtype=x.dtype)
        grad_cols = np.empty((c_in * k_h * k_w, L), dtype=x.dtype)
        cols_g, grad_cols_g = cols.reshape(groups, c_g_k, L), grad_cols.reshape(groups, c_g_k, L)
        product = np.empty(partial.shape[2:], dtype=x.dtype)  # (C_g·K, O_g)
        lo, hi = _block(b, blocks, n_batch)
        for n in range(lo, hi):
            mask_n = mask[n if has_mask else 0]
            if need_weight:
                _im2col_sample(x[n], offset[n], mask_n, has_mask, cols,
                               k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                for g in range(groups):
                    np.dot(cols_g[g], grad_output[n, g].T, product)  # (C_g·K, L) · (L, O_g)
                    _accumulate(partial[b, g], product)
            if need_cols_grad:
                for g in range(groups):
                    np.dot(w_t[g], grad_output[n, g], grad_cols_g[g])  # (C_g·K, L) = (C_g·K, O_g) · (O_g, L)
            if need_input:
                _grad_input_sample(offset[n], mask_n, has_mask, grad_cols, grad_input[n],
                                   k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
            if need_offset or need_mask:
                _grad_offset_mask_sample(x[n], offset[n], mask_n, has_mask, grad_cols,
                                         grad_offset[n if need_offset else 0], need_offset,
                                         grad_mask[n if need_mask else 0], need_mask,
                                         k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)


# ---------------------------------------------------------------------------
# the per-sample sampling loops (serial; called inside the kernels' prange)
# ---------------------------------------------------------------------------
@njit(cache=True)
def _sample_point(i, j, p, q, offset, off_ch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """(sy, sx): where tap (p, q) of output (i, j) samples, offset channel off_ch holding Δy (then Δx)."""
    sy = i * stride_h - pad_h + p * dil_h + offset[off_ch, i, j]
    sx = j * stride_w - pad_w + q * dil_w + offset[off_ch + 1, i, j]
    return sy, sx


@njit(cache=True)
def _im2col_sample(x, offset, mask, has_mask, cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # one sample: x (C_in, H, W); offset (2·OG·K, out_h, out_w); mask (OG·K, out_h, out_w); cols (C_in·K, L)
    C_in = x.shape[0]
    out_h, out_w = offset.shape[1:]
    K = k_h * k_w
    chans_per_og = C_in // (offset.shape[0] // (2 * K))
    for c in range(C_in):
        og = c // chans_per_og
        img = x[c]
        for p in range(k_h):
            for q in range(k_w):
                t = p * k_w + q
                row = cols[c * K + t]
                for i in range(out_h):
                    for j in range(out_w):
                        sy, sx = _sample_point(i, j, p, q, offset, 2 * (og * K + t),
                                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                        m = mask[og * K + t, i, j] if has_mask else 1.0
                        row[i * out_w + j] = m * bilinear(img, sy, sx)


@njit(cache=True)
def _grad_input_sample(offset, mask, has_mask, grad_cols, grad_input,
                       k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # one sample: grad_cols (C_in·K, L) scattered into grad_input (C_in, H, W), channel by channel
    C_in = grad_input.shape[0]
    out_h, out_w = offset.shape[1:]
    K = k_h * k_w
    chans_per_og = C_in // (offset.shape[0] // (2 * K))
    for c in range(C_in):
        og = c // chans_per_og
        grad_img = grad_input[c]
        for p in range(k_h):
            for q in range(k_w):
                t = p * k_w + q
                row = grad_cols[c * K + t]
                for i in range(out_h):
                    for j in range(out_w):
                        sy, sx = _sample_point(i, j, p, q, offset, 2 * (og * K + t),
                                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                        m = mask[og * K + t, i, j] if has_mask else 1.0
                        bilinear_scatter(grad_img, sy, sx, row[i * out_w + j] * m)


@njit(cache=True)
def _grad_offset_mask_sample(x, offset, mask, has_mask, grad_cols, grad_offset, need_offset, grad_mask, need_mask,
                             k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # one sample: grad_offset[2(og·K+t) (+1)] and grad_mask[og·K+t] sum over the channels c of offset group og
    C_in = x.shape[0]
    out_h, out_w = offset.shape[1:]
    K = k_h * k_w
    OG = offset.shape[0] // (2 * K)
    chans_per_og = C_in // OG
    for og in range(OG):
        for t in range(K):
            p, q = t // k_w, t % k_w
            off_ch, mask_ch = 2 * (og * K + t), og * K + t
            for c in range(og * chans_per_og, (og + 1) * chans_per_og):
                row = grad_cols[c * K + t]
                img = x[c]
                for i in range(out_h):
                    for j in range(out_w):
                        sy, sx = _sample_point(i, j, p, q, offset, off_ch,
                                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                        g = row[i * out_w + j]
                        value, d_dy, d_dx = bilinear_value_grad(img, sy, sx)
                        if need_offset:
                            m = mask[mask_ch, i, j] if has_mask else 1.0
                            grad_offset[off_ch, i, j] += g * m * d_dy
                            grad_offset[off_ch + 1, i, j] += g * m * d_dx
                        if need_mask:
                            grad_mask[mask_ch, i, j] += g * value

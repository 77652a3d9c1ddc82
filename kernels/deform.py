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

The scatter into grad_input runs in a prange over (n, c) planes, so two
threads never write the same plane; grad_offset and grad_mask are gathers
(each element sums over the channels of its offset group), prange over
(n, og, t). Samples are processed in chunks so that the columns stay below
COLUMNS_BYTES. `bilinear`, `bilinear_grad_yx` and `bilinear_scatter` are
scalar @njit helpers, the only place the sampling rules live.

>>> import numpy as np
>>> x = np.zeros((1, 4, 6, 6), np.float32); w = np.zeros((8, 2, 3, 3), np.float32)   # 2 weight groups
>>> offset = np.zeros((1, 2 * 2 * 9, 4, 4), np.float32)                               # 2 offset groups
>>> deform_conv2d_forward(x, offset, w, None, (1, 1), (0, 0), (1, 1), None).shape
(1, 8, 4, 4)
"""
import math

import numpy as np
from numba import njit, prange

COLUMNS_BYTES = 1 << 26  # at most 64 MiB of columns at a time: samples are processed in chunks below this


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
    y0, x0, ly, lx, inside = bilinear_corners(img.shape[0], img.shape[1], y, x)
    if not inside:
        return 0.0, 0.0
    v00, v01 = _pixel(img, y0, x0), _pixel(img, y0, x0 + 1)
    v10, v11 = _pixel(img, y0 + 1, x0), _pixel(img, y0 + 1, x0 + 1)
    return (1 - lx) * (v10 - v00) + lx * (v11 - v01), (1 - ly) * (v01 - v00) + ly * (v11 - v10)


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
    """y (N, C_out, out_h, out_w): deformable im2col, then one GEMM per (sample, weight group)."""
    x, offset, weight, mask = _contiguous(x, offset, weight, mask)
    N, C_in = x.shape[:2]
    C_out, C_g, k_h, k_w = weight.shape
    G = C_in // C_g
    out_h, out_w = offset.shape[2:]
    L = out_h * out_w
    weight_g = weight.reshape(G, C_out // G, C_g * k_h * k_w)  # (G, O_g, C_g·K)
    y = np.empty((N, C_out, out_h, out_w), x.dtype)
    for s in _sample_chunks(x, k_h * k_w * L):
        cols = _columns(x[s], offset[s], _chunk(mask, s), k_h, k_w, stride, padding, dilation)  # (B, C_in·K, L)
        B = cols.shape[0]
        y[s] = np.matmul(weight_g, cols.reshape(B, G, C_g * k_h * k_w, L)).reshape(B, C_out, out_h, out_w)
    if bias is not None:
        y += bias.reshape(1, C_out, 1, 1).astype(x.dtype, copy=False)
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
    K, L = k_h * k_w, offset.shape[2] * offset.shape[3]
    weight_g = weight.reshape(G, C_out // G, C_g * K)  # (G, O_g, C_g·K)
    grad_input = np.zeros(x.shape, x.dtype) if need_input else None
    grad_offset = np.zeros(offset.shape, x.dtype) if need_offset else None
    grad_mask = np.zeros(mask.shape, x.dtype) if need_mask else None
    grad_weight_g = np.zeros(weight_g.shape, x.dtype) if need_weight else None
    for s in _sample_chunks(x, K * L):
        B = grad_output[s].shape[0]
        g = grad_output[s].reshape(B, G, C_out // G, L)  # (B, G, O_g, L)
        if need_weight:
            cols = _columns(x[s], offset[s], _chunk(mask, s), k_h, k_w, stride, padding, dilation)
            cols = cols.reshape(B, G, C_g * K, L)
            for b in range(B):  # Σ_b g[b] @ cols[b]ᵀ, one GEMM per (sample, group)
                grad_weight_g += np.matmul(g[b], cols[b].transpose(0, 2, 1))
        if need_input or need_offset or need_mask:
            grad_cols = np.matmul(weight_g.transpose(0, 2, 1), g).reshape(B, C_in * K, L)  # (B, C_in·K, L)
            _sampling_backward(x[s], offset[s], _chunk(mask, s), grad_cols, _chunk(grad_input, s),
                               _chunk(grad_offset, s), _chunk(grad_mask, s), k_h, k_w, stride, padding, dilation)
    grad_weight = grad_weight_g.reshape(weight.shape) if need_weight else None
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if need_bias else None
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask


def _contiguous(x, offset, weight, mask):
    x = np.ascontiguousarray(x)
    as_x = lambda a: None if a is None else np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    return x, as_x(offset), as_x(weight), as_x(mask)


def _sample_chunks(x, K_L):
    """Slices of the batch whose columns (B, C_in·K, L) fit in COLUMNS_BYTES (at least one sample)."""
    N, C_in = x.shape[:2]
    per_sample = C_in * K_L * x.itemsize
    B = max(1, min(N, COLUMNS_BYTES // max(per_sample, 1)))
    return [slice(n, min(n + B, N)) for n in range(0, N, B)]


def _chunk(a, s):
    return None if a is None else a[s]


def _columns(x, offset, mask, k_h, k_w, stride, padding, dilation):
    """The deformable im2col: (B, C_in·K, L) masked bilinear samples."""
    B, C_in = x.shape[:2]
    cols = np.empty((B, C_in * k_h * k_w, offset.shape[2] * offset.shape[3]), x.dtype)
    _im2col_kernel(x, offset, _mask_or_dummy(mask, x), mask is not None, cols, k_h, k_w,
                   stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    return cols


def _sampling_backward(x, offset, mask, grad_cols, grad_input, grad_offset, grad_mask,
                       k_h, k_w, stride, padding, dilation):
    """grad_input (scatter per plane) and grad_offset / grad_mask (gathers per offset-group tap), in place."""
    args = (k_h, k_w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    dummy = _mask_or_dummy(None, x)
    if grad_input is not None:
        _grad_input_kernel(x, offset, _mask_or_dummy(mask, x), mask is not None, grad_cols, grad_input, *args)
    if grad_offset is not None or grad_mask is not None:
        _grad_offset_mask_kernel(x, offset, _mask_or_dummy(mask, x), mask is not None, grad_cols,
                                 dummy if grad_offset is None else grad_offset, grad_offset is not None,
                                 dummy if grad_mask is None else grad_mask, grad_mask is not None, *args)


def _mask_or_dummy(a, x):
    """A 4-D array of x's dtype in every case, so that v1 and v2 share one compiled kernel."""
    return np.zeros((1, 1, 1, 1), x.dtype) if a is None else a


# ---------------------------------------------------------------------------
# the jitted loops
# ---------------------------------------------------------------------------
@njit(cache=True)
def _sample_point(i, j, p, q, offset, n, off_ch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """(sy, sx): where tap (p, q) of output (i, j) samples, offset channel off_ch holding Δy (then Δx)."""
    sy = i * stride_h - pad_h + p * dil_h + offset[n, off_ch, i, j]
    sx = j * stride_w - pad_w + q * dil_w + offset[n, off_ch + 1, i, j]
    return sy, sx


@njit(cache=True, parallel=True)
def _im2col_kernel(x, offset, mask, has_mask, cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # B samples, C_in channels; K = k_h·k_w taps; OG offset groups; cols (B, C_in·K, out_h·out_w)
    B, C_in = x.shape[:2]
    out_h, out_w = offset.shape[2:]
    K = k_h * k_w
    chans_per_og = C_in // (offset.shape[1] // (2 * K))
    for plane in prange(B * C_in):
        n, c = plane // C_in, plane % C_in
        og = c // chans_per_og
        img = x[n, c]
        for p in range(k_h):
            for q in range(k_w):
                t = p * k_w + q
                row = cols[n, c * K + t]
                for i in range(out_h):
                    for j in range(out_w):
                        sy, sx = _sample_point(i, j, p, q, offset, n, 2 * (og * K + t),
                                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                        m = mask[n, og * K + t, i, j] if has_mask else 1.0
                        row[i * out_w + j] = m * bilinear(img, sy, sx)


@njit(cache=True, parallel=True)
def _grad_input_kernel(x, offset, mask, has_mask, grad_cols, grad_input,
                       k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # prange over (n, c) planes: each plane of grad_input is written by one thread only
    B, C_in = x.shape[:2]
    out_h, out_w = offset.shape[2:]
    K = k_h * k_w
    chans_per_og = C_in // (offset.shape[1] // (2 * K))
    for plane in prange(B * C_in):
        n, c = plane // C_in, plane % C_in
        og = c // chans_per_og
        grad_img = grad_input[n, c]
        for p in range(k_h):
            for q in range(k_w):
                t = p * k_w + q
                row = grad_cols[n, c * K + t]
                for i in range(out_h):
                    for j in range(out_w):
                        sy, sx = _sample_point(i, j, p, q, offset, n, 2 * (og * K + t),
                                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                        m = mask[n, og * K + t, i, j] if has_mask else 1.0
                        bilinear_scatter(grad_img, sy, sx, row[i * out_w + j] * m)


@njit(cache=True, parallel=True)
def _grad_offset_mask_kernel(x, offset, mask, has_mask, grad_cols, grad_offset, need_offset, grad_mask, need_mask,
                             k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # prange over (n, og, t): grad_offset[n, 2(og·K+t) (+1)] and grad_mask[n, og·K+t] are sums over the
    # channels c of offset group og, all computed by the thread owning (n, og, t)
    B, C_in = x.shape[:2]
    out_h, out_w = offset.shape[2:]
    K = k_h * k_w
    OG = offset.shape[1] // (2 * K)
    chans_per_og = C_in // OG
    for task in prange(B * OG * K):
        n, og, t = task // (OG * K), (task // K) % OG, task % K
        p, q = t // k_w, t % k_w
        off_ch, mask_ch = 2 * (og * K + t), og * K + t
        for c in range(og * chans_per_og, (og + 1) * chans_per_og):
            row = grad_cols[n, c * K + t]
            img = x[n, c]
            for i in range(out_h):
                for j in range(out_w):
                    sy, sx = _sample_point(i, j, p, q, offset, n, off_ch,
                                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                    g = row[i * out_w + j]
                    if need_offset:
                        m = mask[n, mask_ch, i, j] if has_mask else 1.0
                        d_dy, d_dx = bilinear_grad_yx(img, sy, sx)
                        grad_offset[n, off_ch, i, j] += g * m * d_dy
                        grad_offset[n, off_ch + 1, i, j] += g * m * d_dx
                    if need_mask:
                        grad_mask[n, mask_ch, i, j] += g * bilinear(img, sy, sx)

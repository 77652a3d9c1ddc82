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

Structure, as im2col + GEMM, the columns laid out channels last (L = out_h·out_w, l = i·out_w + j,
c = g·C_g + c' the input channels of weight group g):

    cols[n, g, l, t·C_g + c'] = mask · bilinear(x[n, c], sy, sx)          "deformable im2col"
    y[n, group g] = weight_g (O_g, K·C_g) @ cols[n, g]ᵀ (K·C_g, L)        BLAS; weight_g = the weight's
                                                                          group g ordered (O_g, K, C_g)
Backward, with g = grad_output:

    grad_weight_g   = Σ_n g[n, group g] (O_g, L) @ cols[n, g] (L, K·C_g)  (reordered to the weight's shape)
    grad_cols[n, g] = g[n, group g]ᵀ (L, O_g) @ weight_g (O_g, K·C_g)
    grad_input[n, c]  += grad_cols · mask, scattered to the 4 corners with the bilinear weights
    grad_offset[n, 2·(og·K+t) (+1), i, j] = Σ_{c in og} grad_cols · mask · ∂bilinear/∂y (∂x)
    grad_mask[n, og·K + t, i, j]          = Σ_{c in og} grad_cols · bilinear(x[n, c], sy, sx)
    grad_bias[o] = Σ_{n,i,j} g[n, o, i, j]

The sampling loops. Where a tap lands depends on (n, og, t, i, j), not on the
channel, so per sample one sampling table holds, for each row r = og·K + t and
pixel l, the index of the top-left corner and the 4 bilinear weights
w00, w01, w10, w11 = (1-ly)(1-lx), (1-ly)·lx, ly·(1-lx), ly·lx (all 0 for a
point outside (-1, H) x (-1, W)). The sample is copied channels last into a
((H+2)·(W+2), C_in) buffer with a zero border, so the 4 corners of any point
inside (-1, H) x (-1, W) are valid pixels (the border is torchvision's 0) and
no bounds test is left in the loops. A point outside gets the corner (0, W+1),
whose 4 corners (0, W+1), (1, 0), (1, W+1), (2, 0) all lie in the border: it
reads zeros and writes only to discarded cells, so an inf or NaN in the image
or in the gradient cannot leak through its zero weights (0·inf = NaN). Every innermost loop then runs along the
channels, contiguous in memory (LLVM vectorizes it):

    columns     col row = Σ_k m·w_k · (pixel row at corner k)          a gather of 4 rows
    grad_input  (pixel row at corner k) += m·w_k · grad_cols row       its adjoint: a scatter of 4 rows
    corner sums S_k = Σ_{c in og} grad_cols · x[c] at corner k         4 dot products, then per (r, l)
                grad_offset_y = m·((1-lx)·(S10 - S00) + lx·(S11 - S01))   = Σ_c grad_cols · m · ∂bilinear/∂y
                grad_offset_x = m·((1-ly)·(S01 - S00) + ly·(S11 - S10))   = Σ_c grad_cols · m · ∂bilinear/∂x
                grad_mask     = Σ_k w_k·S_k                               = Σ_c grad_cols · bilinear

(1-lx = w00 + w10, lx = w01 + w11, 1-ly = w00 + w01, ly = w10 + w11.) The
corner sums are compiled with fastmath {'reassoc', 'contract', 'nsz'}, which
lets LLVM vectorize them: it then picks the order of the additions, the same
on every call and at any thread count.

Threads, as kernels/conv2d.py: the samples are cut into B contiguous blocks,
B = min(N, NUMBA_NUM_THREADS), and one prange runs over the blocks. Each block
works on one sample at a time in its own buffers and calls single-threaded
GEMMs (np.dot inside the jitted code, SciPy's OpenBLAS, pinned to 1 thread by
tinyconv/threads.py), writing only its own samples' y, grad_input,
grad_offset and grad_mask. grad_weight sums into one private accumulator per
block, added up after the loop in block order: no races, and the same answer
bit for bit at any thread count. The forward and the backward are one kernel
(they share the table, the padded sample and the columns; one kernel also
compiles in less time): per sample the table, then whichever steps are asked
for: the columns and y (forward); the columns and grad_weight, grad_cols,
the scatter, the corner sums (backward). The bias is added by NumPy. Memory
per block: two (L, C_in·K) column buffers, two padded samples and the table. The work is parallel over samples only: a
batch of one runs on one thread, and so does any layer below conv2d's
_SERIAL_MULTIPLY_ADDS. `bilinear_corners` holds the sampling rule (floor, the
(-1, H) x (-1, W) test), for the table here and for kernels/cuda/deform.py;
`bilinear`, `bilinear_grad_yx` and `bilinear_scatter` state the rules for one
point, as scalar @njit helpers checked against kernels/reference.py.

>>> import numpy as np
>>> x = np.zeros((1, 4, 6, 6), np.float32); w = np.zeros((8, 2, 3, 3), np.float32)   # 2 weight groups
>>> offset = np.zeros((1, 2 * 2 * 9, 4, 4), np.float32)                               # 2 offset groups
>>> deform_conv2d_forward(x, offset, w, None, (1, 1), (0, 0), (1, 1), None).shape
(1, 8, 4, 4)
"""
import math

import numpy as np
from numba import njit, prange

from kernels.conv2d import _PARTIAL_BYTES, _accumulate, _block, _blocks, _serial_if_small, bias_gradient


# ---------------------------------------------------------------------------
# bilinear sampling: the rules, per point (scalar helpers for a GPU kernel)
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
    """y (N, C_out, out_h, out_w): per sample, deformable im2col, then one GEMM per weight group."""
    x, offset, weight, mask = _contiguous(x, offset, weight, mask)
    N, C_in = x.shape[:2]
    C_out, C_g, k_h, k_w = weight.shape
    G = C_in // C_g
    out_h, out_w = offset.shape[2:]
    y = np.empty((N, C_out, out_h, out_w), x.dtype)
    no_grad = np.zeros((0, G, C_out // G, out_h * out_w), x.dtype)  # only y is asked for
    with _serial_if_small(N * C_out * C_g * k_h * k_w * out_h * out_w):
        _kernel(x, offset, _mask_rows(mask, offset), mask is not None, _taps_last(weight, G),
                y.reshape(N, G, C_out // G, out_h * out_w), no_grad,          # y (N, G, O_g, L)
                np.zeros((_blocks(N), G, 0, 0), x.dtype), *_no_grads(x), False, False, False,
                *_geometry(k_h, k_w, stride, padding, dilation))
    if bias is not None:
        y += bias.astype(x.dtype)[:, None, None]
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
    G, L = C_in // C_g, offset.shape[2] * offset.shape[3]
    if grad_output.shape != (N, C_out) + offset.shape[2:]:
        raise ValueError(f"grad_output has shape {grad_output.shape}, expected {(N, C_out) + offset.shape[2:]}")
    weight_taps = _taps_last(weight, G)                                           # (G, O_g, K·C_g)
    blocks = max(1, min(_blocks(N), _PARTIAL_BYTES // (weight.size * x.itemsize)))  # bounded memory, still fixed
    partial = np.zeros((blocks,) + (weight_taps.shape if need_weight else (G, 0, 0)), x.dtype)  # (B, G, O_g, K·C_g)
    no_input, no_offset, no_mask = _no_grads(x)
    grad_input = np.empty(x.shape, x.dtype) if need_input else None
    grad_offset = np.empty(offset.shape, x.dtype) if need_offset else None
    grad_mask = np.empty(mask.shape, x.dtype) if need_mask else None
    gemms = need_weight + (need_input or need_offset or need_mask)  # 0, 1 or 2 GEMMs of this size
    with _serial_if_small(grad_output.size * C_g * k_h * k_w * gemms):
        _kernel(x, offset, _mask_rows(mask, offset), mask is not None, weight_taps,
                np.zeros((0, G, C_out // G, L), x.dtype), grad_output.reshape(N, G, C_out // G, L),  # (N, G, O_g, L)
                partial, no_input if grad_input is None else grad_input,
                no_offset if grad_offset is None else grad_offset.reshape(N, -1, L),  # (N, 2·OG·K, L)
                no_mask if grad_mask is None else grad_mask.reshape(N, -1, L),        # (N, OG·K, L)
                need_input, need_offset, need_mask, *_geometry(k_h, k_w, stride, padding, dilation))
    grad_weight = None
    if need_weight:
        grad_weight_taps = partial[0]                              # (G, O_g, K·C_g)
        for b in range(1, blocks):  # block order: the same sum at any thread count
            grad_weight_taps += partial[b]
        grad_weight = np.ascontiguousarray(grad_weight_taps.reshape(G, C_out // G, k_h * k_w, C_g)
                                           .transpose(0, 1, 3, 2)).reshape(weight.shape)  # (G, O_g, C_g, K)
    grad_bias = bias_gradient(grad_output) if need_bias else None
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask


def _no_grads(x):
    """Placeholders for grad_input, grad_offset, grad_mask not asked for (the kernel takes arrays in every case)."""
    return np.zeros((1, 1, 1, 1), x.dtype), np.zeros((1, 1, 1), x.dtype), np.zeros((1, 1, 1), x.dtype)


def _contiguous(x, offset, weight, mask):
    x = np.ascontiguousarray(x)
    as_x = lambda a: None if a is None else np.ascontiguousarray(a, dtype=x.dtype)  # noqa: E731
    return x, as_x(offset), as_x(weight), as_x(mask)


def _geometry(k_h, k_w, stride, padding, dilation):
    """The kernels' scalar arguments: k_h, k_w, stride, pad, dil (h, w each)."""
    return k_h, k_w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]


def _taps_last(weight, G):
    """weight (C_out, C_g, k_h, k_w) as (G, O_g, K·C_g), column t·C_g + c: the order of the channels-last columns."""
    C_out, C_g, k_h, k_w = weight.shape
    return np.ascontiguousarray(weight.reshape(G, C_out // G, C_g, k_h * k_w)
                                .transpose(0, 1, 3, 2)).reshape(G, C_out // G, -1)  # (G, O_g, K, C_g)


def _mask_rows(mask, offset):
    """The mask as (N, OG·K, L) rows; for v1 one sample of ones (1, OG·K, L), so v1 and v2 share one kernel."""
    N, two_rows, out_h, out_w = offset.shape
    if mask is None:
        return np.ones((1, two_rows // 2, out_h * out_w), offset.dtype)
    return mask.reshape(N, two_rows // 2, out_h * out_w)


# ---------------------------------------------------------------------------
# jitted kernels: one prange over blocks of samples, serial GEMMs inside
# ---------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _kernel(x, offset, mask, has_mask, weight_taps, y, grad_output, partial, grad_input, grad_offset, grad_mask,
            need_input, need_offset, need_mask, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # x (N, C_in, H, W); offset (N, 2·OG·K, out_h, out_w); mask (N or 1, OG·K, L); weight_taps (G, O_g, K·C_g);
    # y (N, G, O_g, L) for the forward, else (0, ...); grad_output (N, G, O_g, L) for the backward, else (0, ...);
    # partial (B, G, O_g, K·C_g), or (B, G, 0, 0) when grad_weight is not needed: block b sums its samples'
    # grad_output · cols into partial[b]; grad_input (N, C_in, H, W); grad_offset (N, 2·OG·K, L);
    # grad_mask (N, OG·K, L)
    n_batch, c_in, height, width = x.shape
    groups, c_out_g, k_c_g = weight_taps.shape
    rows, L = mask.shape[1:]  # rows = OG·K sampling rows per sample
    blocks = partial.shape[0]
    need_y = y.shape[0] > 0
    need_weight = partial.shape[2] > 0
    need_sums = need_offset or need_mask  # both come from the corner sums of _grad_offset_mask
    for b in prange(blocks):
        # this block's own buffers: the zero-bordered samples (channels last), the sampling table, the columns
        padded = np.zeros(((height + 2) * (width + 2), c_in), dtype=x.dtype)
        grad_padded = np.zeros(((height + 2) * (width + 2), c_in), dtype=x.dtype)
        corner = np.empty((rows, L), dtype=np.int64)
        weights = np.empty((rows, 4, L), dtype=x.dtype)
        cols = np.empty((groups, L, k_c_g), dtype=x.dtype)
        grad_cols = np.empty((groups, L, k_c_g), dtype=x.dtype)
        product = np.empty(partial.shape[2:], dtype=x.dtype)  # (O_g, K·C_g)
        lo, hi = _block(b, blocks, n_batch)
        for n in range(lo, hi):
            mask_n = mask[n if has_mask else 0]
            _sampling_table(offset[n], height, width, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                            corner, weights)
            if need_y or need_weight or need_sums:
                _pad_sample(x[n], padded)
            if need_y or need_weight:
                _gather_columns(padded, width + 2, corner, weights, mask_n, cols)
            for g in range(groups if need_y else 0):
                np.dot(weight_taps[g], cols[g].T, y[n, g])  # (O_g, L) = (O_g, K·C_g) · (K·C_g, L)
            for g in range(groups if need_weight else 0):
                np.dot(grad_output[n, g], cols[g], product)  # (O_g, K·C_g) = (O_g, L) · (L, K·C_g)
                _accumulate(partial[b, g], product)
            for g in range(groups if need_input or need_sums else 0):
                np.dot(grad_output[n, g].T, weight_taps[g], grad_cols[g])  # (L, K·C_g) = (L, O_g) · (O_g, K·C_g)
            if need_input:
                _scatter(grad_cols, corner, weights, mask_n, grad_padded, width + 2)
                _unpad_sample(grad_padded, grad_input[n])
            if need_sums:
                _grad_offset_mask(padded, width + 2, corner, weights, mask_n, grad_cols,
                                  grad_offset[n if need_offset else 0], need_offset,
                                  grad_mask[n if need_mask else 0], need_mask)


# ---------------------------------------------------------------------------
# the per-sample loops (serial; called inside the kernels' prange)
# ---------------------------------------------------------------------------
@njit(cache=True)
def _sample_point(i, j, p, q, offset, off_ch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """(sy, sx): where tap (p, q) of output (i, j) samples, offset channel off_ch holding Δy (then Δx)."""
    sy = i * stride_h - pad_h + p * dil_h + offset[off_ch, i, j]
    sx = j * stride_w - pad_w + q * dil_w + offset[off_ch + 1, i, j]
    return sy, sx


@njit(cache=True)
def _sampling_table(offset, height, width, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, corner,
                    weights):
    # one sample: offset (2·OG·K, out_h, out_w) -> for every sampling row r = og·K + t and pixel l = i·out_w + j,
    # corner[r, l] = (y0 + 1)·(W + 2) + (x0 + 1), the top-left corner among the zero-bordered (H+2)·(W+2) pixels,
    # and weights[r, :, l] = the bilinear weights (1-ly)(1-lx), (1-ly)·lx, ly·(1-lx), ly·lx of the corners
    # (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1). A point outside (-1, H) x (-1, W): corner W+1, weights 0.
    rows = corner.shape[0]
    out_h, out_w = offset.shape[1:]
    K = k_h * k_w
    for r in range(rows):
        t = r % K
        p, q = t // k_w, t % k_w
        for i in range(out_h):
            for j in range(out_w):
                sy, sx = _sample_point(i, j, p, q, offset, 2 * r, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                y0, x0, ly, lx, inside = bilinear_corners(height, width, sy, sx)
                l = i * out_w + j
                corner[r, l] = (y0 + 1) * (width + 2) + x0 + 1 if inside else width + 1  # outside: all border
                inside_f = 1.0 if inside else 0.0
                weights[r, 0, l] = inside_f * (1 - ly) * (1 - lx)
                weights[r, 1, l] = inside_f * (1 - ly) * lx
                weights[r, 2, l] = inside_f * ly * (1 - lx)
                weights[r, 3, l] = inside_f * ly * lx


@njit(cache=True)
def _pad_sample(x, padded):
    # x (C, H, W) into padded ((H+2)·(W+2), C), channels last; the border pixels stay 0
    C, H, W = x.shape
    for h in range(H):
        for c in range(C):  # this loop order moves 16x faster than (h, w, c) (measured)
            for w in range(W):
                padded[(h + 1) * (W + 2) + w + 1, c] = x[c, h, w]


@njit(cache=True)
def _unpad_sample(grad_padded, grad_input):
    # grad_input (C, H, W) = the inner pixels of grad_padded ((H+2)·(W+2), C), which is zeroed for the next sample
    C, H, W = grad_input.shape
    for h in range(H):
        for c in range(C):
            for w in range(W):
                grad_input[c, h, w] = grad_padded[(h + 1) * (W + 2) + w + 1, c]
    grad_padded[:] = 0.0


@njit(cache=True)
def _channels(g, og, c_g, chans_per_og):
    """[lo, hi): the input channels in both weight group g and offset group og (empty when they do not meet)."""
    return max(g * c_g, og * chans_per_og), min((g + 1) * c_g, (og + 1) * chans_per_og)


@njit(cache=True, inline="always")
def _column_layout(c_in, cols, corner):
    """(groups, L, C_g, K, OG) of one sample's columns cols (G, L, K·C_g) and corners (OG·K, L)."""
    groups, L, k_c_g = cols.shape
    c_g = c_in // groups
    K = k_c_g // c_g
    return groups, L, c_g, K, corner.shape[0] // K


@njit(cache=True, inline="always")
def _corner_runs(src, a, row_len, lo, hi):
    """Channels lo..hi of the 4 corner pixels a, a + 1, a + row_len, a + row_len + 1 of src, as slices (so that
    the loops over them index from 0: LLVM then vectorizes them)."""
    return src[a, lo:hi], src[a + 1, lo:hi], src[a + row_len, lo:hi], src[a + row_len + 1, lo:hi]


@njit(cache=True, inline="always")
def _column_run(cols, g, l, t, c_g, lo, hi):
    """The part of column row cols[g, l] that tap t of channels lo..hi fills: from column t·C_g + lo - g·C_g."""
    first = t * c_g + lo - g * c_g
    return cols[g, l, first:first + hi - lo]


@njit(cache=True, inline="always")
def _masked_weights(weights, mask, r, l):
    """The 4 bilinear weights of sampling row r, pixel l, times its mask."""
    m = mask[r, l]
    return m * weights[r, 0, l], m * weights[r, 1, l], m * weights[r, 2, l], m * weights[r, 3, l]


@njit(cache=True)
def _gather_columns(padded, row_len, corner, weights, mask, cols):
    # one sample, the deformable im2col, channels last: for every sampling row r = og·K + t, pixel l and input
    # channel c of offset group og (in weight group g),
    #   cols[g, l, t·C_g + c - g·C_g] = mask[r, l] · Σ_k weights[r, k, l] · x[c] at corner k of (r, l)
    # padded ((H+2)·(W+2), C_in); corner (OG·K, L); weights (OG·K, 4, L); mask (OG·K, L); cols (G, L, K·C_g).
    # The innermost loop runs along the channels: 4 pixel rows in, one column row out.
    c_in = padded.shape[1]
    groups, L, c_g, K, OG = _column_layout(c_in, cols, corner)
    for og in range(OG):
        for t in range(K):
            r = og * K + t
            for l in range(L):
                a = corner[r, l]
                w00, w01, w10, w11 = _masked_weights(weights, mask, r, l)
                for g in range(groups):  # the weight groups that share channels with offset group og
                    lo, hi = _channels(g, og, c_g, c_in // OG)
                    if lo >= hi:
                        continue
                    p00, p01, p10, p11 = _corner_runs(padded, a, row_len, lo, hi)
                    col = _column_run(cols, g, l, t, c_g, lo, hi)
                    for k in range(hi - lo):
                        col[k] = w00 * p00[k] + w01 * p01[k] + w10 * p10[k] + w11 * p11[k]


@njit(cache=True)
def _scatter(grad_cols, corner, weights, mask, grad_padded, row_len):
    # one sample, the adjoint of _gather_columns: for every r = og·K + t, pixel l and channel c of og (in group g),
    #   grad_padded[corner k of (r, l), c] += mask[r, l] · weights[r, k, l] · grad_cols[g, l, t·C_g + c - g·C_g]
    # grad_cols (G, L, K·C_g); corner (OG·K, L); weights (OG·K, 4, L); mask (OG·K, L);
    # grad_padded ((H+2)·(W+2), C_in)
    c_in = grad_padded.shape[1]
    groups, L, c_g, K, OG = _column_layout(c_in, grad_cols, corner)
    for og in range(OG):
        for t in range(K):
            r = og * K + t
            for l in range(L):
                a = corner[r, l]
                w00, w01, w10, w11 = _masked_weights(weights, mask, r, l)
                for g in range(groups):
                    lo, hi = _channels(g, og, c_g, c_in // OG)
                    if lo >= hi:
                        continue
                    q00, q01, q10, q11 = _corner_runs(grad_padded, a, row_len, lo, hi)
                    grad = _column_run(grad_cols, g, l, t, c_g, lo, hi)
                    for k in range(hi - lo):
                        q00[k] += w00 * grad[k]
                        q01[k] += w01 * grad[k]
                        q10[k] += w10 * grad[k]
                        q11[k] += w11 * grad[k]


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})  # reassoc: lets LLVM vectorize the 4 sums
def _grad_offset_mask(padded, row_len, corner, weights, mask, grad_cols, grad_offset, need_offset, grad_mask,
                      need_mask):
    # one sample, for every sampling row r = og·K + t and pixel l: the corner sums
    #   S_k = Σ_{c in og} grad_cols[g, l, t·C_g + c - g·C_g] · x[c] at corner k of (r, l)   (k = 00, 01, 10, 11)
    # then, with the bilinear weights w_k and 1 - lx = w00 + w10, lx = w01 + w11, 1 - ly = w00 + w01, ly = w10 + w11:
    #   grad_offset[2r]     = m · ((1-lx)·(S10 - S00) + lx·(S11 - S01))      Σ_c grad_cols · m · ∂bilinear/∂y
    #   grad_offset[2r + 1] = m · ((1-ly)·(S01 - S00) + ly·(S11 - S10))      Σ_c grad_cols · m · ∂bilinear/∂x
    #   grad_mask[r]        = Σ_k w_k · S_k                                  Σ_c grad_cols · bilinear
    # layouts as _gather_columns; grad_offset (2·OG·K, L); grad_mask (OG·K, L)
    c_in = padded.shape[1]
    groups, L, c_g, K, OG = _column_layout(c_in, grad_cols, corner)
    for og in range(OG):
        for t in range(K):
            r = og * K + t
            for l in range(L):
                a = corner[r, l]
                s00 = s01 = s10 = s11 = padded.dtype.type(0)  # in the data's dtype: float32 stays float32
                for g in range(groups):  # the weight groups that share channels with offset group og
                    lo, hi = _channels(g, og, c_g, c_in // OG)
                    if lo >= hi:
                        continue
                    p00, p01, p10, p11 = _corner_runs(padded, a, row_len, lo, hi)
                    grad = _column_run(grad_cols, g, l, t, c_g, lo, hi)
                    for k in range(hi - lo):
                        s00 += grad[k] * p00[k]
                        s01 += grad[k] * p01[k]
                        s10 += grad[k] * p10[k]
                        s11 += grad[k] * p11[k]
                w00, w01, w10, w11 = weights[r, 0, l], weights[r, 1, l], weights[r, 2, l], weights[r, 3, l]
                if need_offset:
                    grad_offset[2 * r, l] = mask[r, l] * ((w00 + w10) * (s10 - s00) + (w01 + w11) * (s11 - s01))
                    grad_offset[2 * r + 1, l] = mask[r, l] * ((w00 + w01) * (s01 - s00) + (w10 + w11) * (s11 - s10))
                if need_mask:
                    grad_mask[r, l] = w00 * s00 + w01 * s01 + w10 * s10 + w11 * s11

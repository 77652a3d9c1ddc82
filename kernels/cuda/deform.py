"""Deformable convolution v1/v2 on the GPU: a deformable im2col, the tiled GEMM, and its adjoints.

Notation as kernels/deform.py: x (N, C_in, H, W); weight (C_out, C_g, k_h, k_w),
G = C_in / C_g weight groups, O_g = C_out / G; K = k_h·k_w taps, t = p·k_w + q;
offset (N, 2·OG·K, out_h, out_w), interleaved (Δy, Δx) per tap; channel c is in
offset group og = c // (C_in / OG); mask (N, OG·K, out_h, out_w) or None (v1).

    sy = i·s_h - pad_h + p·d_h + offset[n, 2(og·K + t), i, j]
    sx = j·s_w - pad_w + q·d_w + offset[n, 2(og·K + t) + 1, i, j]
    cols[n, c·K + t, i·out_w + j] = mask[n, og·K + t, i, j] · bilinear(x[n, c], sy, sx)
    y[n, group g] = weight_g (O_g, C_g·K) · cols[n, group g] (C_g·K, L) + bias        L = out_h·out_w

bilinear reads the 4 corners around (sy, sx) with weights (1 - |sy - yi|)(1 - |sx - xi|),
0 outside the image, and is 0 for a point outside (-1, H) x (-1, W) (torchvision's rules).
Backward, with g = grad_output and grad_cols = weight_gᵀ · g[n, group g]:

    grad_weight_g = Σ_n g[n, group g] · cols[n, group g]ᵀ
    grad_input[n, c, yi, xi] += grad_cols[n, c·K + t, l] · mask · (1 - |sy - yi|)(1 - |sx - xi|)   (4 corners)
    grad_offset[n, 2(og·K + t) (+1), i, j] = Σ_{c in og} grad_cols[n, c·K + t, l] · mask · ∂bilinear/∂y (∂x)
    grad_mask[n, og·K + t, i, j]           = Σ_{c in og} grad_cols[n, c·K + t, l] · bilinear(x[n, c], sy, sx)
    grad_bias = Σ_{n, i, j} g

Thread mapping. The deformable im2col: one thread per cols entry, 4 reads.
The GEMMs: kernels/cuda/gemm.py, as kernels/cuda/conv2d.py (one launch each).
grad_input is the one inherent scatter (a sample point moves with its
offset, so no thread can know in advance which points land on a pixel): one
thread per grad_cols entry, cuda.atomic.add into the 4 corners (float64
atomics need compute capability 6.0+; the summation order, hence the last
bits, varies from run to run on a GPU). grad_offset and grad_mask are
gathers: one thread per (n, og·K + t, i, j) sums over the channels of its
offset group, as torchvision does. The corner geometry is kernels/deform.py's
`bilinear_corners` (an @njit scalar helper, compiled as a device function),
so the CPU and GPU share one definition of where a point samples.

>>> import numpy as np
>>> x, w = np.ones((2, 4, 6, 6)), np.ones((6, 2, 3, 3))
>>> deform_conv2d_forward(x, np.zeros((2, 18, 4, 4)), w, None, (1, 1), (0, 0), (1, 1), None).shape
(2, 6, 4, 4)
"""
from numba import cuda

from kernels.cuda.device import THREADS, add_channel_bias, blocks, channel_sum, empty, to_device, zeros
from kernels.cuda.gemm import matmul_into
from kernels.deform import bilinear_corners


def deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask):
    """y (N, C_out, out_h, out_w) on the device: deformable im2col, then one GEMM launch for every (n, group)."""
    x, offset, weight = to_device(x), to_device(offset), to_device(weight)
    n, c_in = x.shape[:2]
    c_out, c_g = weight.shape[:2]
    groups, out_h, out_w = c_in // c_g, offset.shape[2], offset.shape[3]
    rows, L = c_g * weight.shape[2] * weight.shape[3], out_h * out_w
    cols = _deform_im2col(x, offset, mask, weight.shape[2:], stride, padding, dilation)  # (N, C_in·K, L)
    y = empty((n, c_out, out_h, out_w), x.dtype)
    matmul_into(y.reshape(n * groups, c_out // groups, L),            # (N·G, O_g, L)
                weight.reshape(groups, c_out // groups, rows),        # (G, O_g, C_g·K)
                cols.reshape(n * groups, rows, L))                    # (N·G, C_g·K, L)
    return add_channel_bias(y, bias)


def deform_conv2d_backward(grad_output, x, offset, weight, stride, padding, dilation, mask,
                           needs=(True, True, True, True, True)):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask) on the device; None where not needed
    (grad_mask also None for v1)."""
    need_input, need_offset, need_weight, need_bias, need_mask = needs
    need_mask = need_mask and mask is not None
    grad_output, x, offset, weight = to_device(grad_output), to_device(x), to_device(offset), to_device(weight)
    n, c_in = x.shape[:2]
    c_out, c_g, k_h, k_w = weight.shape
    groups, L = c_in // c_g, offset.shape[2] * offset.shape[3]
    rows = c_g * k_h * k_w
    grad_input = grad_offset = grad_weight = grad_bias = grad_mask = None
    if need_weight:
        cols = _deform_im2col(x, offset, mask, (k_h, k_w), stride, padding, dilation)
        grad_weight = empty(weight.shape, x.dtype)
        matmul_into(grad_weight.reshape(groups, c_out // groups, rows),           # (G, O_g, C_g·K)
                    grad_output.reshape(n * groups, c_out // groups, L),          # (N·G, O_g, L)
                    cols.reshape(n * groups, rows, L), trans_b=True, n_sum=n)     # (N·G, C_g·K, L)
    if need_input or need_offset or need_mask:
        grad_cols = empty((n, c_in * k_h * k_w, L), x.dtype)                      # (N, C_in·K, L)
        matmul_into(grad_cols.reshape(n * groups, rows, L),                       # (N·G, C_g·K, L)
                    weight.reshape(groups, c_out // groups, rows),                # (G, O_g, C_g·K)
                    grad_output.reshape(n * groups, c_out // groups, L), trans_a=True)  # (N·G, O_g, L)
        mask_d, has_mask = _mask_or_dummy(mask, x)
        geometry = _geometry((k_h, k_w), stride, padding, dilation)
        if need_input:
            grad_input = zeros(x.shape, x.dtype)
            _grad_input_kernel[blocks(grad_cols.size), THREADS](grad_cols, offset, mask_d, has_mask, grad_input,
                                                                *geometry)
        if need_offset or need_mask:
            grad_offset = empty(offset.shape, x.dtype) if need_offset else empty((1, 1, 1, 1), x.dtype)
            grad_mask = empty(mask.shape, x.dtype) if need_mask else empty((1, 1, 1, 1), x.dtype)
            threads = n * (offset.shape[1] // 2) * L
            _grad_offset_mask_kernel[blocks(threads), THREADS](x, grad_cols, offset, mask_d, has_mask, grad_offset,
                                                               need_offset, grad_mask, need_mask, *geometry)
    if need_bias:
        grad_bias = channel_sum(grad_output)
    return (grad_input, grad_offset if need_offset else None, grad_weight, grad_bias,
            grad_mask if need_mask else None)


def _geometry(kernel_size, stride, padding, dilation):
    """The kernels' scalar arguments: k_h, k_w, stride, pad, dil (h, w each)."""
    return kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]


def _mask_or_dummy(mask, x):
    """(a 4-D device array, has_mask): v1 passes a 1-element stand-in, so v1 and v2 share every kernel."""
    if mask is None:
        return empty((1, 1, 1, 1), x.dtype), False
    return to_device(mask), True


def _deform_im2col(x, offset, mask, kernel_size, stride, padding, dilation):
    n, c_in = x.shape[:2]
    cols = empty((n, c_in * kernel_size[0] * kernel_size[1], offset.shape[2] * offset.shape[3]), x.dtype)
    mask_d, has_mask = _mask_or_dummy(mask, x)
    _im2col_kernel[blocks(cols.size), THREADS](x, offset, mask_d, has_mask, cols,
                                               *_geometry(kernel_size, stride, padding, dilation))
    return cols


# ---------------------------------------------------------------------------
# device functions: where a tap samples, and the bilinear read with its partials
# ---------------------------------------------------------------------------
@cuda.jit(device=True)
def _sample_point(offset, n, off_ch, i, j, p, q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """(sy, sx) for tap (p, q) of output (i, j); offset channel off_ch holds Δy, off_ch + 1 holds Δx."""
    sy = i * stride_h - pad_h + p * dil_h + offset[n, off_ch, i, j]
    sx = j * stride_w - pad_w + q * dil_w + offset[n, off_ch + 1, i, j]
    return sy, sx


@cuda.jit(device=True)
def _pixel(x, n, c, h, w):
    """x[n, c, h, w], or 0 outside the image."""
    if h < 0 or w < 0 or h >= x.shape[2] or w >= x.shape[3]:
        return 0.0
    return x[n, c, h, w]


@cuda.jit(device=True)
def _bilinear_value_grad(x, n, c, sy, sx):
    """(bilinear(x[n, c], sy, sx), ∂/∂sy, ∂/∂sx); (0, 0, 0) outside (-1, H) x (-1, W)."""
    y0, x0, ly, lx, inside = bilinear_corners(x.shape[2], x.shape[3], sy, sx)
    if not inside:
        return 0.0, 0.0, 0.0
    v00, v01 = _pixel(x, n, c, y0, x0), _pixel(x, n, c, y0, x0 + 1)
    v10, v11 = _pixel(x, n, c, y0 + 1, x0), _pixel(x, n, c, y0 + 1, x0 + 1)
    value = (1 - ly) * ((1 - lx) * v00 + lx * v01) + ly * ((1 - lx) * v10 + lx * v11)
    return value, (1 - lx) * (v10 - v00) + lx * (v11 - v01), (1 - ly) * (v01 - v00) + ly * (v11 - v10)


@cuda.jit(device=True)
def _add_pixel(grad_input, n, c, h, w, value):
    if h >= 0 and w >= 0 and h < grad_input.shape[2] and w < grad_input.shape[3]:
        cuda.atomic.add(grad_input, (n, c, h, w), value)


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------
@cuda.jit
def _im2col_kernel(x, offset, mask, has_mask, cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # x (N, C_in, H, W); offset (N, 2·OG·K, out_h, out_w); cols (N, C_in·K, L); one thread per cols entry
    idx = cuda.grid(1)
    if idx < cols.size:
        rows, L, out_w = cols.shape[1], cols.shape[2], offset.shape[3]
        n, row, l = idx // (rows * L), (idx // L) % rows, idx % L
        K = k_h * k_w
        c, t = row // K, row % K
        og = c // (x.shape[1] // (offset.shape[1] // (2 * K)))
        i, j = l // out_w, l % out_w
        sy, sx = _sample_point(offset, n, 2 * (og * K + t), i, j, t // k_w, t % k_w,
                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        m = mask[n, og * K + t, i, j] if has_mask else 1.0
        value, _, _ = _bilinear_value_grad(x, n, c, sy, sx)
        cols[n, row, l] = m * value


@cuda.jit
def _grad_input_kernel(grad_cols, offset, mask, has_mask, grad_input,
                       k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # grad_cols (N, C_in·K, L); grad_input (N, C_in, H, W), zeroed; one thread per grad_cols entry, 4 atomic adds
    idx = cuda.grid(1)
    if idx < grad_cols.size:
        rows, L, out_w = grad_cols.shape[1], grad_cols.shape[2], offset.shape[3]
        n, row, l = idx // (rows * L), (idx // L) % rows, idx % L
        K = k_h * k_w
        c, t = row // K, row % K
        og = c // (grad_input.shape[1] // (offset.shape[1] // (2 * K)))
        i, j = l // out_w, l % out_w
        sy, sx = _sample_point(offset, n, 2 * (og * K + t), i, j, t // k_w, t % k_w,
                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        y0, x0, ly, lx, inside = bilinear_corners(grad_input.shape[2], grad_input.shape[3], sy, sx)
        if inside:
            g = grad_cols[n, row, l] * (mask[n, og * K + t, i, j] if has_mask else 1.0)
            _add_pixel(grad_input, n, c, y0, x0, g * (1 - ly) * (1 - lx))
            _add_pixel(grad_input, n, c, y0, x0 + 1, g * (1 - ly) * lx)
            _add_pixel(grad_input, n, c, y0 + 1, x0, g * ly * (1 - lx))
            _add_pixel(grad_input, n, c, y0 + 1, x0 + 1, g * ly * lx)


@cuda.jit
def _grad_offset_mask_kernel(x, grad_cols, offset, mask, has_mask, grad_offset, need_offset, grad_mask, need_mask,
                             k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # one thread per (n, og·K + t, i, j): a gather over the C_in / OG channels of offset group og
    idx = cuda.grid(1)
    taps_og, out_h, out_w = offset.shape[1] // 2, offset.shape[2], offset.shape[3]  # taps_og = OG·K
    if idx < offset.shape[0] * taps_og * out_h * out_w:
        n, tap = idx // (taps_og * out_h * out_w), (idx // (out_h * out_w)) % taps_og
        i, j = (idx // out_w) % out_h, idx % out_w
        K = k_h * k_w
        og, t = tap // K, tap % K
        chans_per_og = x.shape[1] // (taps_og // K)
        sy, sx = _sample_point(offset, n, 2 * tap, i, j, t // k_w, t % k_w,
                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        m = mask[n, tap, i, j] if has_mask else 1.0
        total_y = 0.0
        total_x = 0.0
        total_m = 0.0
        for c in range(og * chans_per_og, (og + 1) * chans_per_og):
            g = grad_cols[n, c * K + t, i * out_w + j]
            value, d_dy, d_dx = _bilinear_value_grad(x, n, c, sy, sx)
            total_y += g * m * d_dy
            total_x += g * m * d_dx
            total_m += g * value
        if need_offset:
            grad_offset[n, 2 * tap, i, j] = total_y
            grad_offset[n, 2 * tap + 1, i, j] = total_x
        if need_mask:
            grad_mask[n, tap, i, j] = total_m

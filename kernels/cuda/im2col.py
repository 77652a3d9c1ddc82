"""im2col / col2im on the GPU: both as gathers, one thread per element written.

Notation as kernels/im2col.py: x (N, C, H, W); kernel k_h x k_w; stride s,
padding pad, dilation d per axis;

    out_h = (H + 2·pad_h - d_h·(k_h - 1) - 1) // s_h + 1       (out_w alike)
    cols[n, (c·k_h + p)·k_w + q, i·out_w + j] = x[n, c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]

(0 in the padding). col2im is the adjoint, the sum of every column entry
copied from pixel (h, w):

    x[n, c, h, w] = Σ_{p, q} cols[n, (c·k_h + p)·k_w + q, i·out_w + j]
                    over the taps with  i = (h + pad_h - p·d_h) / s_h  and  j = (w + pad_w - q·d_w) / s_w
                    whole numbers inside [0, out_h) x [0, out_w).

Thread mapping. im2col: one thread per column entry (N·C·k_h·k_w·out_h·out_w
threads), each reads one pixel. col2im: one thread per *pixel* of x
(N·C·H·W threads), each walks its k_h·k_w taps and adds the entries that
came from it. The CPU version scatters with `+=`; as a gather no two
threads write the same element, so no atomics are needed and the sum is
deterministic.

>>> import numpy as np
>>> x = np.arange(2 * 3 * 5 * 5, dtype=np.float64).reshape(2, 3, 5, 5)
>>> im2col(x, (3, 3), (2, 2), (1, 1), (1, 1)).shape     # (N, C·k_h·k_w, out_h·out_w)
(2, 27, 9)
>>> col2im(im2col(x, (3, 3), (1, 1), (1, 1), (1, 1)), x.shape, (3, 3), (1, 1), (1, 1), (1, 1)).shape
(2, 3, 5, 5)
"""
from numba import cuda

from kernels.cuda.device import THREADS, blocks, empty, to_device
from kernels.im2col import conv_output_size


def _out_size(x_shape, kernel_size, stride, padding, dilation, out_size):
    if out_size is not None:
        return tuple(out_size)
    return tuple(conv_output_size(x_shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a])
                 for a in range(2))


def im2col(x, kernel_size, stride, padding, dilation, out_size=None, out=None):
    """Columns of x: (N, C, H, W) -> device (N, C·k_h·k_w, out_h·out_w).

    out_size (out_h, out_w) defaults to the convolution formula; `out`, when
    given, is a C-contiguous device array of the result's shape to write into."""
    x = to_device(x)
    n, c = x.shape[:2]
    (k_h, k_w), (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = kernel_size, stride, padding, dilation
    out_h, out_w = _out_size(x.shape, kernel_size, stride, padding, dilation, out_size)
    if out is None:
        out = empty((n, c * k_h * k_w, out_h * out_w), x.dtype)
    _im2col_kernel[blocks(out.size), THREADS](x, out, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                              out_w)
    return out


def col2im(cols, x_shape, kernel_size, stride, padding, dilation, out_size=None, out=None):
    """Adjoint of im2col: device (N, C·k_h·k_w, out_h·out_w) -> device x_shape, overlapping windows summed."""
    cols = to_device(cols)
    (k_h, k_w), (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = kernel_size, stride, padding, dilation
    out_h, out_w = _out_size(x_shape, kernel_size, stride, padding, dilation, out_size)
    if out is None:
        out = empty(x_shape, cols.dtype)
    _col2im_kernel[blocks(out.size), THREADS](cols, out, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                              out_h, out_w)
    return out


@cuda.jit
def _im2col_kernel(x, cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_w):
    # N batch, C channels, H x W input; cols (N, C·k_h·k_w, L), L = out_h·out_w; one thread per cols entry
    idx = cuda.grid(1)
    if idx < cols.size:
        rows, L = cols.shape[1], cols.shape[2]
        n, row, l = idx // (rows * L), (idx // L) % rows, idx % L
        c, p, q = row // (k_h * k_w), (row // k_w) % k_h, row % k_w
        h = (l // out_w) * stride_h - pad_h + p * dil_h
        w = (l % out_w) * stride_w - pad_w + q * dil_w
        inside = h >= 0 and h < x.shape[2] and w >= 0 and w < x.shape[3]
        cols[n, row, l] = x[n, c, h, w] if inside else 0


@cuda.jit
def _col2im_kernel(cols, x, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w):
    # x (N, C, H, W); one thread per pixel, gathering the column entries its taps produced
    idx = cuda.grid(1)
    if idx < x.size:
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        n, c, h, w = idx // (C * H * W), (idx // (H * W)) % C, (idx // W) % H, idx % W
        total = 0.0
        for p in range(k_h):
            i_s = h + pad_h - p * dil_h  # = i·stride_h when tap p of output row i reads row h
            if i_s < 0 or i_s % stride_h != 0 or i_s // stride_h >= out_h:
                continue
            for q in range(k_w):
                j_s = w + pad_w - q * dil_w
                if j_s < 0 or j_s % stride_w != 0 or j_s // stride_w >= out_w:
                    continue
                total += cols[n, (c * k_h + p) * k_w + q, (i_s // stride_h) * out_w + j_s // stride_w]
        x[n, c, h, w] = total

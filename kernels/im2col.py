"""im2col / col2im: a convolution as a matrix product, and its adjoint.

Notation: x (N, C, H, W) input; kernel k_h x k_w; stride s, padding pad,
dilation d per axis; output size

    out_h = (H + 2·pad_h - d_h·(k_h - 1) - 1) // s_h + 1       (out_w alike)

im2col copies every receptive field into one column:

    cols[n, (c·k_h + p)·k_w + q, i·out_w + j] = x[n, c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]

(0 where the index falls in the padding). A convolution is then one GEMM per
sample: y[n] (C_out, out_h·out_w) = weight (C_out, C·k_h·k_w) · cols[n].

col2im is the adjoint (transpose) of im2col: every column entry is *added*
back to the pixel it was copied from, so overlapping windows sum:

    x[n, c, h, w] = Σ_{p, q, i, j : i·s_h - pad_h + p·d_h = h, j·s_w - pad_w + q·d_w = w} cols[n, (c·k_h + p)·k_w + q, i·out_w + j]

It is therefore the same loop with `+=` instead of `=`. Both visit, for each
channel c and tap (p, q), the two matching windows of _tap_windows (Chainer's
strided slices: the input pixels a tap reads, and the column entries they go
to). Each is written once, for one sample (im2col_sample, col2im_sample;
serial, because conv2d calls them from its own threads); the batched im2col
and col2im run them in parallel over the samples (prange over n), whose
columns and planes are disjoint.

At stride 1 conv2d's shifted-window route copies a sample once instead,
padded and flattened with rows `width` pixels long (pixel_major_sample:
channels last; extended_im2col_sample: one plane per channel, then every
tap's window of it as one contiguous column row). Its pixel-rows route
(small planes, any stride) copies those channels-last pixels once more,
one row per output pixel holding every tap's C channels (pixel_rows_sample:
im2col transposed, K = k_h·k_w·C contiguous). See kernels/conv2d.py.

>>> import numpy as np
>>> x = np.arange(2 * 3 * 5 * 5, dtype=np.float64).reshape(2, 3, 5, 5)
>>> im2col(x, (3, 3), (2, 2), (1, 1), (1, 1)).shape     # (N, C·k_h·k_w, out_h·out_w)
(2, 27, 9)
>>> col2im(im2col(x, (3, 3), (1, 1), (1, 1), (1, 1)), x.shape, (3, 3), (1, 1), (1, 1), (1, 1)).shape
(2, 3, 5, 5)
"""
import numpy as np
from numba import njit, prange


def conv_output_size(size, k, stride, pad, dil):
    """Output length of a convolution along one axis: (size + 2·pad - d·(k-1) - 1) // s + 1."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def im2col(x, kernel_size, stride, padding, dilation, out_size=None, out=None):
    """Columns of x: (N, C, H, W) -> (N, C·k_h·k_w, out_h·out_w).

    out_size (out_h, out_w) defaults to the convolution formula; `out`, when
    given, is a C-contiguous buffer of the result's shape to write into.
    """
    n, c, h, w = x.shape
    (k_h, k_w), (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = kernel_size, stride, padding, dilation
    if out_size is None:
        out_size = (conv_output_size(h, k_h, stride_h, pad_h, dil_h), conv_output_size(w, k_w, stride_w, pad_w, dil_w))
    out_h, out_w = out_size
    if out is None:
        out = np.empty((n, c * k_h * k_w, out_h * out_w), dtype=x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), out, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)
    return out


def col2im(cols, x_shape, kernel_size, stride, padding, dilation, out_size=None, out=None):
    """Adjoint of im2col: (N, C·k_h·k_w, out_h·out_w) -> x_shape, overlapping windows summed.

    out_size defaults to the convolution formula; `out`, when given, is a
    C-contiguous array of shape x_shape that is overwritten.
    """
    n, c, h, w = x_shape
    (k_h, k_w), (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = kernel_size, stride, padding, dilation
    if out_size is None:
        out_size = (conv_output_size(h, k_h, stride_h, pad_h, dil_h), conv_output_size(w, k_w, stride_w, pad_w, dil_w))
    if out is None:
        out = np.empty(x_shape, dtype=cols.dtype)
    _col2im_kernel(np.ascontiguousarray(cols), out, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   out_size[0], out_size[1])
    return out


@njit(cache=True)
def _valid_range(offset, stride, size, out):
    """Output positions [lo, hi) whose input position o·stride + offset lies inside [0, size)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi = (size - 1 - offset) // stride + 1 if offset < size else 0
    hi = min(hi, out)
    return min(lo, hi), hi


@njit(cache=True, parallel=True)
def _im2col_kernel(x, cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w):
    # x (N, C, H, W); cols (N, C·k_h·k_w, out_h·out_w); the samples are disjoint
    for n in prange(x.shape[0]):
        im2col_sample(x[n], cols[n], k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)


@njit(cache=True, parallel=True)
def _col2im_kernel(cols, x, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w):
    for n in prange(x.shape[0]):
        col2im_sample(cols[n], x[n], k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)


@njit(cache=True)
def im2col_sample(x, cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w):
    """cols (C·k_h·k_w, out_h·out_w) = the columns of one sample x (C, H, W); serial (conv2d's threads call it)."""
    channels = x.shape[0]
    for c in range(channels):
        for p in range(k_h):
            for q in range(k_w):
                row = cols[(c * k_h + p) * k_w + q].reshape(out_h, out_w)  # (out_h, out_w)
                row[:] = 0                                                  # the padding
                image, column = _tap_windows(x[c], row, p, q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                for i in range(image.shape[0]):
                    for j in range(image.shape[1]):
                        column[i, j] = image[i, j]


@njit(cache=True)
def col2im_sample(cols, x, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w):
    """x (C, H, W) = col2im of one sample's cols: im2col_sample's loop with the copy reversed into +=."""
    channels = x.shape[0]
    x[:] = 0
    for c in range(channels):
        for p in range(k_h):
            for q in range(k_w):
                row = cols[(c * k_h + p) * k_w + q].reshape(out_h, out_w)  # (out_h, out_w)
                image, column = _tap_windows(x[c], row, p, q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
                for i in range(image.shape[0]):
                    for j in range(image.shape[1]):
                        image[i, j] += column[i, j]


@njit(cache=True)
def _tap_windows(plane, row, p, q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """Tap (p, q)'s two matching windows, Chainer's strided slices: image[a, b] = plane[h, w] and
    column[a, b] = row[i, j] for the outputs (i, j) whose input (h, w) = (i·s_h - pad_h + p·d_h,
    j·s_w - pad_w + q·d_w) lies inside the plane (H, W); row (out_h, out_w) is one row of cols.
    Written as loops over two 2-D views, the copy runs faster (and compiles faster) than flat index
    arithmetic or a slice assignment (measured)."""
    off_h, off_w = p * dil_h - pad_h, q * dil_w - pad_w
    i_lo, i_hi = _valid_range(off_h, stride_h, plane.shape[0], row.shape[0])
    j_lo, j_hi = _valid_range(off_w, stride_w, plane.shape[1], row.shape[1])
    if i_lo == i_hi or j_lo == j_hi:  # every output of this tap reads padding
        return plane[0:0, 0:0], row[0:0, 0:0]
    rows_h = slice(i_lo * stride_h + off_h, (i_hi - 1) * stride_h + off_h + 1, stride_h)
    cols_w = slice(j_lo * stride_w + off_w, (j_hi - 1) * stride_w + off_w + 1, stride_w)
    return plane[rows_h, cols_w], row[i_lo:i_hi, j_lo:j_hi]


# ---------------------------------------------------------------------------
# shifted windows: conv2d's implicit GEMM (strides split into phases) and its extended columns (stride 1)
# ---------------------------------------------------------------------------
@njit(cache=True)
def shifted_geometry(k_h, k_w, stride_h, stride_w, dil_h, dil_w, out_h, out_w):
    """(width, phase_size) of the shifted-window layout: a padded sample split into stride_h·stride_w phases
    (phase (r_h, r_w) holds the padded pixels (u·s_h + r_h, v·s_w + r_w), one phase at stride 1), each
    flattened with rows `width` pixels long and phase_size pixels long, a tail included so that every tap's
    window of out_h·width pixels stays inside its phase."""
    reach_h, reach_w = (k_h - 1) * dil_h // stride_h, (k_w - 1) * dil_w // stride_w
    width = out_w + reach_w
    return width, (out_h + reach_h) * width + reach_w


@njit(cache=True)
def tap_start(p, q, stride_h, stride_w, dil_h, dil_w, width, phase_size):
    """Where tap (p, q)'s window starts: output pixel e = i·width + j reads position tap_start + e, which holds
    the padded pixel (i·s_h + p·d_h, j·s_w + q·d_w): phase (p·d_h mod s_h, q·d_w mod s_w), shifted by
    (p·d_h div s_h) rows and (q·d_w div s_w) pixels."""
    phase = (p * dil_h % stride_h) * stride_w + q * dil_w % stride_w
    return phase * phase_size + (p * dil_h // stride_h) * width + q * dil_w // stride_w


@njit(cache=True)
def shifted_runs(height, plane_w, pad_top, pad_left, stride_h, stride_w, width, phase_size):
    """Where a sample (C, height, plane_w) goes in the shifted-window layout (shifted_geometry): the padded
    pixel (u·s_h + r_h, v·s_w + r_w) = x[:, u·s_h + r_h - pad_top, v·s_w + r_w - pad_left] goes to position
    (r_h·s_w + r_w)·phase_size + u·width + v. Returns one row (position, h, w, count) per run: positions
    position + t hold x[:, h, w + t·s_w] for t < count. Only positions that fit are listed (a negative pad
    crops); the others are the padding."""
    runs = np.empty((stride_h * stride_w * (phase_size // width), 4), dtype=np.int64)
    count = 0
    for r_h in range(stride_h):
        u_lo, u_hi = _valid_range(r_h - pad_top, stride_h, height, phase_size // width)
        for r_w in range(stride_w):
            v_lo, v_hi = _valid_range(r_w - pad_left, stride_w, plane_w, width)
            for u in range(u_lo, u_hi if v_hi > v_lo else u_lo):
                runs[count, 0] = (r_h * stride_w + r_w) * phase_size + u * width + v_lo
                runs[count, 1] = u * stride_h + r_h - pad_top
                runs[count, 2] = v_lo * stride_w + r_w - pad_left
                runs[count, 3] = v_hi - v_lo
                count += 1
    return runs[:count]


@njit(cache=True)
def pixel_major_sample(x, pixels, runs, stride_w):
    """pixels (rows, C) = one sample x (C, H, W) in the shifted-window layout, channels last: for every run
    (position, h, w, count) of shifted_runs, pixels[position + t, c] = x[c, h, w + t·s_w]. The padding is
    left as it is: the caller zeroes the buffer once, and every sample writes the same positions."""
    for r in range(runs.shape[0]):
        position, h, w, count = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3]
        target, source = pixels[position:position + count], x[:, h, w:w + (count - 1) * stride_w + 1:stride_w]
        for c in range(x.shape[0]):  # contiguous reads (c inside: 2x slower at 64 channels, measured);
            for t in range(count):   # views, range indices: no negative-index checks in the loop
                target[t, c] = source[c, t]


@njit(cache=True)
def extended_im2col_sample(x, planes, cols, runs, k_h, k_w, dil_h, dil_w, width):
    """Columns of one sample at stride 1, each row one contiguous window of the padded planes:
    planes (C, rows) = x (C, H, W) in the shifted-window layout (runs from shifted_runs at stride 1), one
    plane per channel, the padding zeroed once by the caller;
    cols[(c·k_h + p)·k_w + q, e] = planes[c, p·d_h·width + q·d_w + e] for e < cols.shape[1].
    With e = i·width + j this is im2col's cols[.., (i, j)] for j < out_w; the columns j ≥ out_w are junk."""
    for c in range(x.shape[0]):
        for r in range(runs.shape[0]):
            position, h, w, count = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3]
            copy_1d(x[c, h, w:w + count], planes[c, position:position + count])
    length = cols.shape[1]
    for c in range(x.shape[0]):  # one channel's plane at a time: it stays in the L1 cache (measured)
        for p in range(k_h):
            for q in range(k_w):
                start = p * dil_h * width + q * dil_w
                copy_1d(planes[c, start:start + length], cols[(c * k_h + p) * k_w + q])


@njit(cache=True)
def copy_1d(source, target):
    """target[:] = source for 1-D arrays (a loop over views: no negative-index checks, vectorised)."""
    for e in range(target.shape[0]):
        target[e] = source[e]




@njit(cache=True)
def pixel_rows_sample(pixels, rows, starts, width, out_h, out_w):
    """rows (out_h·out_w, T·C): row i·out_w + j holds, tap by tap, the C channels output pixel (i, j) reads:
    rows[i·out_w + j, t·C + c] = pixels[starts[t] + i·width + j, c], starts[t] = tap_start of tap t = p·k_w + q."""
    channels = pixels.shape[1]
    for i in range(out_h):
        for j in range(out_w):
            target = rows[i * out_w + j]
            for t in range(starts.shape[0]):
                copy_1d(pixels[starts[t] + i * width + j], target[t * channels:(t + 1) * channels])

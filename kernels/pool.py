"""Pooling: max, average, adaptive average and adaptive max (global pooling).

Notation: x (N, C, H, W); k = (k_h, k_w) window; s stride; pad zero-or--inf
padding; d dilation; every (n, c) plane is pooled independently.

Max pooling (padding reads as -inf, so a padded tap never wins):

    y[n,c,i,j]   = max_{p,q} x[n,c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
    idx[n,c,i,j] = h·W + w of the first maximum in scan order (row-major),
                   as PyTorch; a NaN wins (the last NaN in scan order).

Average pooling (no dilation):

    y[n,c,i,j] = Σ_{p,q} x[n,c, i·s_h - pad_h + p, j·s_w - pad_w + q] / divisor
    divisor    = window clipped to the padded input   (count_include_pad=True)
               = window clipped to the input itself   (count_include_pad=False)

Output size (PyTorch's rule; with ceil_mode the last window must start
inside the input or the left padding, otherwise it is dropped):

    out = floor_or_ceil((H + 2·pad - d·(k-1) - 1) / s) + 1

Adaptive pooling to out_h x out_w uses PyTorch's bins
    row i covers [floor(i·H / out_h), ceil((i+1)·H / out_h)),
so adaptive_avg_pool2d(x, 1) is global average pooling and
adaptive_max_pool2d(x, 1) is global max pooling.

Gradients: max routes grad_output to the argmax,
    grad_input[n,c,idx[n,c,i,j]] += grad_output[n,c,i,j];
average spreads it evenly,
    grad_input[n,c,h,w] += grad_output[n,c,i,j] / divisor   for (h, w) in window (i, j).

How the kernels are shared: every pooling op here is described by two
small per-axis tables built in plain NumPy, `first[i]` (the first input row
a window reads, after clipping) and `count[i]` (how many rows it reads).
The average kernels take one more table, `div[i]`, and the divisor of
window (i, j) is div_h[i]·div_w[j]. So max_pool2d and adaptive_max_pool2d
run the same jitted max kernel, and avg_pool2d and adaptive_avg_pool2d the
same jitted box kernel. Each kernel has prange over the N·C planes, so the
writes of different threads never overlap; below conv2d's
_SERIAL_MULTIPLY_ADDS input elements a call runs on one thread (waking the
others costs milliseconds on a busy machine). No fastmath: max pooling works
with -inf and NaN.

>>> x = np.random.rand(2, 3, 7, 7).astype(np.float32)
>>> y, idx = max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
>>> y.shape, idx.dtype
((2, 3, 4, 4), dtype('int64'))
>>> max_pool2d_backward(y, idx, x.shape).shape
(2, 3, 7, 7)
"""
import numpy as np
from numba import njit, prange

from kernels.conv2d import _serial_if_small  # small work on one thread (waking threads costs ~8 ms under load)


def pool_output_size(size, k, stride, pad, dil, ceil_mode):
    """Output length along one axis, PyTorch's formula including the ceil_mode rule."""
    span = size + 2 * pad - dil * (k - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window would start in the right padding
    return out


def window_taps(size, out, k, stride, pad, dil):
    """(first, count) per output row for a strided, dilated window.

    Window i reads rows origin + t·dil, t = 0..k-1, origin = i·stride - pad;
    only the t with 0 <= origin + t·dil < size are kept.
    """
    origin = np.arange(out, dtype=np.int64) * stride - pad
    t_lo = np.maximum(-(origin // dil), 0)  # ceil(-origin / dil), clipped at 0
    t_hi = np.minimum(-((origin - size) // dil), k)  # ceil((size - origin) / dil), clipped at k
    count = np.maximum(t_hi - t_lo, 0)
    return origin + t_lo * dil, count


def _adaptive_bins(size, out):
    """(first, count) per output row of PyTorch's adaptive bins."""
    i = np.arange(out, dtype=np.int64)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)  # ceil((i+1)·size / out)
    return start, end - start


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _max_forward(x, first_h, count_h, dil_h, first_w, count_w, dil_w, y, indices):
    # P = N·C planes; x (P, H, W); y, indices (P, out_h, out_w)
    # window (i, j) reads rows first_h[i] + t·dil_h, t < count_h[i] (columns likewise)
    n_planes, H, W = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for plane in prange(n_planes):
        for i in range(out_h):
            for j in range(out_w):  # start at -inf, pointing at the window's first pixel (-1: no pixel)
                y[plane, i, j] = -np.inf
                empty = count_h[i] == 0 or count_w[j] == 0
                indices[plane, i, j] = -1 if empty else first_h[i] * W + first_w[j]
            for t in range(count_h[i]):  # one input row at a time, for the whole output row i
                h = first_h[i] + t * dil_h
                for j in range(out_w):
                    best, best_idx = y[plane, i, j], indices[plane, i, j]
                    for u in range(count_w[j]):
                        w = first_w[j] + u * dil_w
                        v = x[plane, h, w]
                        take = (v > best) | (v != v)  # strict >: ties keep the first; NaN wins
                        best = v if take else best  # selects, not branches: random data mispredicts
                        best_idx = h * W + w if take else best_idx
                    y[plane, i, j], indices[plane, i, j] = best, best_idx


@njit(cache=True, parallel=True)
def _max_backward(grad_output, indices, grad_input):
    # grad_output, indices (P, out_h·out_w); grad_input (P, H·W), zeroed here plane by plane (in the
    # parallel loop: a fresh 16 MB np.zeros costs its page faults on one thread, measured 1.2 vs 0.9 ms)
    n_planes, n_out = grad_output.shape
    for plane in prange(n_planes):
        grad_input[plane, :] = 0
        for o in range(n_out):
            idx = indices[plane, o]
            if idx >= 0:
                grad_input[plane, idx] += grad_output[plane, o]


def _max_pool(x, taps_h, taps_w, dil_h, dil_w):
    N, C, H, W = x.shape
    x3 = np.ascontiguousarray(x).reshape(N * C, H, W)  # (P, H, W)
    out_h, out_w = len(taps_h[0]), len(taps_w[0])
    y = np.empty((N * C, out_h, out_w), dtype=x.dtype)
    indices = np.empty((N * C, out_h, out_w), dtype=np.int64)
    with _serial_if_small(x.size):
        _max_forward(x3, taps_h[0], taps_h[1], dil_h, taps_w[0], taps_w[1], dil_w, y, indices)
    return y.reshape(N, C, out_h, out_w), indices.reshape(N, C, out_h, out_w)


def max_pool_taps(input_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """(taps_h, taps_w): the window tables of a max pool along each axis (shared with kernels/cuda)."""
    taps = []
    for a in range(2):
        size = input_shape[2 + a]
        out = pool_output_size(size, kernel_size[a], stride[a], padding[a], dilation[a], ceil_mode)
        taps.append(window_taps(size, out, kernel_size[a], stride[a], padding[a], dilation[a]))
    return taps


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """(y, indices): max over each window; indices are flat h·W + w per plane, int64."""
    taps_h, taps_w = max_pool_taps(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool(x, taps_h, taps_w, dilation[0], dilation[1])


def max_pool2d_backward(grad_output, indices, input_shape):
    """grad_input[n, c, indices[n, c, i, j]] += grad_output[n, c, i, j]."""
    N, C, H, W = input_shape
    grad_input = np.empty((N * C, H * W), dtype=grad_output.dtype)  # (P, H·W), zeroed by _max_backward
    with _serial_if_small(grad_input.size):
        _max_backward(np.ascontiguousarray(grad_output).reshape(N * C, -1),
                      np.ascontiguousarray(indices).reshape(N * C, -1), grad_input)
    return grad_input.reshape(N, C, H, W)


def adaptive_max_pool2d_forward(x, output_size):
    """(y, indices) over PyTorch's adaptive bins; output_size (1, 1) is global max pooling."""
    H, W = x.shape[2:]
    return _max_pool(x, _adaptive_bins(H, output_size[0]), _adaptive_bins(W, output_size[1]), 1, 1)


adaptive_max_pool2d_backward = max_pool2d_backward  # the same routing to the argmax


# ---------------------------------------------------------------------------
# average pooling (fixed windows and adaptive bins share one box kernel)
# ---------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _box_forward(x, first_h, count_h, div_h, first_w, count_w, div_w, y):
    # P = N·C planes; x (P, H, W); y (P, out_h, out_w)
    # y[p,i,j] = Σ over rows first_h[i] + t, t < count_h[i] (columns likewise) / (div_h[i]·div_w[j])
    n_planes = x.shape[0]
    out_h, out_w = y.shape[1], y.shape[2]
    for plane in prange(n_planes):
        for i in range(out_h):
            for j in range(out_w):
                total = 0.0
                for h in range(first_h[i], first_h[i] + count_h[i]):
                    for w in range(first_w[j], first_w[j] + count_w[j]):
                        total += x[plane, h, w]
                y[plane, i, j] = total / (div_h[i] * div_w[j])


@njit(cache=True, parallel=True)
def _box_backward(grad_output, first_h, count_h, div_h, first_w, count_w, div_w, grad_input):
    # grad_output (P, out_h, out_w); grad_input (P, H, W), zeroed here (as in _max_backward); prange over
    # planes: disjoint writes
    n_planes = grad_output.shape[0]
    out_h, out_w = grad_output.shape[1], grad_output.shape[2]
    for plane in prange(n_planes):
        grad_input[plane] = 0
        for i in range(out_h):
            for j in range(out_w):
                share = grad_output[plane, i, j] / (div_h[i] * div_w[j])
                for h in range(first_h[i], first_h[i] + count_h[i]):
                    for w in range(first_w[j], first_w[j] + count_w[j]):
                        grad_input[plane, h, w] += share


def _avg_windows(size, k, stride, pad, ceil_mode, count_include_pad):
    """(first, count, div) per output row: PyTorch's avg_pool2d divisor rule, one axis."""
    out = pool_output_size(size, k, stride, pad, 1, ceil_mode)
    start = np.arange(out, dtype=np.int64) * stride - pad
    end = np.minimum(start + k, size + pad)  # the window clipped to the padded input
    first, last = np.maximum(start, 0), np.minimum(end, size)
    div = (end - start) if count_include_pad else (last - first)
    return first, last - first, div


def _box_tables(shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    H, W = shape[2:]
    return (_avg_windows(H, kernel_size[0], stride[0], padding[0], ceil_mode, count_include_pad),
            _avg_windows(W, kernel_size[1], stride[1], padding[1], ceil_mode, count_include_pad))


def _box_mean(x, rows, cols):
    N, C, H, W = x.shape
    y = np.empty((N * C, len(rows[0]), len(cols[0])), dtype=x.dtype)
    with _serial_if_small(x.size):
        _box_forward(np.ascontiguousarray(x).reshape(N * C, H, W), *rows, *cols, y)  # (P, H, W) -> (P, out_h, out_w)
    return y.reshape(N, C, len(rows[0]), len(cols[0]))


def _box_mean_backward(grad_output, input_shape, rows, cols):
    N, C, H, W = input_shape
    grad_input = np.empty((N * C, H, W), dtype=grad_output.dtype)  # zeroed by _box_backward
    g3 = np.ascontiguousarray(grad_output).reshape(N * C, len(rows[0]), len(cols[0]))  # (P, out_h, out_w)
    with _serial_if_small(grad_input.size):
        _box_backward(g3, *rows, *cols, grad_input)
    return grad_input.reshape(N, C, H, W)


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """Mean over each window, with PyTorch's divisor (see the module docstring)."""
    return _box_mean(x, *_box_tables(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad))


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """grad_input[h, w] = Σ over windows containing (h, w) of grad_output / divisor."""
    rows, cols = _box_tables(input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return _box_mean_backward(grad_output, input_shape, rows, cols)


def _adaptive_tables(shape, output_size):
    H, W = shape[2:]
    (first_h, count_h), (first_w, count_w) = _adaptive_bins(H, output_size[0]), _adaptive_bins(W, output_size[1])
    return (first_h, count_h, count_h), (first_w, count_w, count_w)


def adaptive_avg_pool2d_forward(x, output_size):
    """Mean over PyTorch's adaptive bins; output_size (1, 1) is global average pooling."""
    return _box_mean(x, *_adaptive_tables(x.shape, output_size))


def adaptive_avg_pool2d_backward(grad_output, input_shape):
    """Each bin's grad_output spread evenly over the bin (bins may overlap); the bins follow grad_output's size."""
    return _box_mean_backward(grad_output, input_shape, *_adaptive_tables(input_shape, grad_output.shape[2:]))

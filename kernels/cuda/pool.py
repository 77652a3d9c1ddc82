"""Pooling on the GPU: max and average (fixed windows and adaptive bins), forward and backward.

Notation as kernels/pool.py: x (N, C, H, W); every (n, c) plane pooled alone.

    max:  y[n,c,i,j] = max_{p,q} x[n,c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]
          idx[n,c,i,j] = h·W + w of the first maximum in row-major scan order (-inf padding never wins;
          a NaN wins)
    avg:  y[n,c,i,j] = Σ_{window} x[n,c,h,w] / (div_h[i]·div_w[j])       (PyTorch's divisor rule)
    out  = floor_or_ceil((H + 2·pad - d·(k-1) - 1) / s) + 1              (pool_output_size)

    grad max: grad_input[n,c,idx[n,c,i,j]] += grad_output[n,c,i,j]
    grad avg: grad_input[n,c,h,w] = Σ_{windows (i, j) containing (h, w)} grad_output[n,c,i,j] / (div_h[i]·div_w[j])

The window geometry is kernels/pool.py's: per-axis tables first[i] and
count[i] (the first input row window i reads, and how many), built with
NumPy on the host and copied to the device, so these kernels and the CPU
ones share one definition of every window.

Thread mapping. Forwards: one thread per output element, scanning its
window. Average backward: one thread per input pixel, a gather over the
windows that contain it. The windows containing row h are a contiguous
run of i (first[i] and first[i] + count[i] both grow with i), found on the
host by two searchsorted calls into per-row tables lo_h[h], hi_h[h]. Max
backward gets only the indices (not the window geometry), so it cannot
gather: it runs one thread per (n, c) plane, which routes that plane's
gradients serially; planes are disjoint, so there are no atomics.

>>> import numpy as np
>>> x = np.random.rand(2, 3, 7, 7)
>>> y, idx = max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
>>> y.shape, idx.dtype
((2, 3, 4, 4), dtype('int64'))
"""
import numpy as np
from numba import cuda

from kernels.cuda.device import THREADS, blocks, empty, to_device
from kernels.pool import _adaptive_bins, _adaptive_tables, _box_tables, max_pool_taps


def _tables(*arrays):
    return tuple(cuda.to_device(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays)


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
def _max_pool(x, taps_h, taps_w, dil_h, dil_w):
    x = to_device(x)
    N, C = x.shape[:2]
    out_h, out_w = len(taps_h[0]), len(taps_w[0])
    y = empty((N, C, out_h, out_w), x.dtype)
    indices = empty((N, C, out_h, out_w), np.int64)
    _max_forward_kernel[blocks(y.size), THREADS](x, *_tables(*taps_h), dil_h, *_tables(*taps_w), dil_w, y, indices)
    return y, indices


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """(y, indices) on the device; indices are flat h·W + w per plane, int64."""
    taps_h, taps_w = max_pool_taps(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool(x, taps_h, taps_w, dilation[0], dilation[1])


def max_pool2d_backward(grad_output, indices, input_shape):
    """grad_input[n, c, indices[n, c, i, j]] += grad_output[n, c, i, j]."""
    grad_output, indices = to_device(grad_output), to_device(indices)
    grad_input = empty(input_shape, grad_output.dtype)
    n_planes = input_shape[0] * input_shape[1]
    _max_backward_kernel[blocks(n_planes), THREADS](grad_output, indices, grad_input)
    return grad_input


def adaptive_max_pool2d_forward(x, output_size):
    """(y, indices) over PyTorch's adaptive bins; output_size (1, 1) is global max pooling."""
    H, W = x.shape[2:]
    return _max_pool(x, _adaptive_bins(H, output_size[0]), _adaptive_bins(W, output_size[1]), 1, 1)


adaptive_max_pool2d_backward = max_pool2d_backward  # the same routing to the argmax


@cuda.jit
def _max_forward_kernel(x, first_h, count_h, dil_h, first_w, count_w, dil_w, y, indices):
    # x (N, C, H, W); y, indices (N, C, out_h, out_w); one thread per output element
    idx = cuda.grid(1)
    if idx < y.size:
        C, out_h, out_w, W = y.shape[1], y.shape[2], y.shape[3], x.shape[3]
        n, c, i, j = idx // (C * out_h * out_w), (idx // (out_h * out_w)) % C, (idx // out_w) % out_h, idx % out_w
        best = -np.inf
        empty_window = count_h[i] == 0 or count_w[j] == 0
        best_idx = -1 if empty_window else first_h[i] * W + first_w[j]
        for t in range(count_h[i]):
            h = first_h[i] + t * dil_h
            for u in range(count_w[j]):
                w = first_w[j] + u * dil_w
                v = x[n, c, h, w]
                if v > best or v != v:  # strict >: ties keep the first; NaN wins
                    best, best_idx = v, h * W + w
        y[n, c, i, j] = best
        indices[n, c, i, j] = best_idx


@cuda.jit
def _max_backward_kernel(grad_output, indices, grad_input):
    # one thread per (n, c) plane: zero the plane, then route each output's gradient to its argmax
    plane = cuda.grid(1)
    C, H, W = grad_input.shape[1], grad_input.shape[2], grad_input.shape[3]
    if plane < grad_input.shape[0] * C:
        n, c = plane // C, plane % C
        for h in range(H):
            for w in range(W):
                grad_input[n, c, h, w] = 0
        for i in range(grad_output.shape[2]):
            for j in range(grad_output.shape[3]):
                k = indices[n, c, i, j]
                if k >= 0:
                    grad_input[n, c, k // W, k % W] += grad_output[n, c, i, j]


# ---------------------------------------------------------------------------
# average pooling (fixed windows and adaptive bins share one box kernel)
# ---------------------------------------------------------------------------
def _containing(first, count, size):
    """(lo, hi) per input row h: the windows i in [lo[h], hi[h]) are those with first[i] <= h < first[i] + count[i]."""
    rows = np.arange(size)
    return np.searchsorted(first + count, rows, side="right"), np.searchsorted(first, rows, side="right")


def _box_mean(x, rows, cols):
    x = to_device(x)
    N, C = x.shape[:2]
    y = empty((N, C, len(rows[0]), len(cols[0])), x.dtype)
    _box_forward_kernel[blocks(y.size), THREADS](x, *_tables(*rows), *_tables(*cols), y)
    return y


def _box_mean_backward(grad_output, input_shape, rows, cols):
    grad_output = to_device(grad_output)
    H, W = input_shape[2:]
    grad_input = empty(input_shape, grad_output.dtype)
    _box_backward_kernel[blocks(grad_input.size), THREADS](
        grad_output, *_tables(*rows, *_containing(rows[0], rows[1], H)),
        *_tables(*cols, *_containing(cols[0], cols[1], W)), grad_input)
    return grad_input


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """Mean over each window, with PyTorch's divisor (see kernels/pool.py)."""
    return _box_mean(x, *_box_tables(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad))


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    rows, cols = _box_tables(input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return _box_mean_backward(grad_output, input_shape, rows, cols)


def adaptive_avg_pool2d_forward(x, output_size):
    """Mean over PyTorch's adaptive bins; output_size (1, 1) is global average pooling."""
    return _box_mean(x, *_adaptive_tables(x.shape, output_size))


def adaptive_avg_pool2d_backward(grad_output, input_shape):
    return _box_mean_backward(grad_output, input_shape, *_adaptive_tables(input_shape, grad_output.shape[2:]))


@cuda.jit
def _box_forward_kernel(x, first_h, count_h, div_h, first_w, count_w, div_w, y):
    # one thread per output element: the window's sum over the divisor div_h[i]·div_w[j]
    idx = cuda.grid(1)
    if idx < y.size:
        C, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
        n, c, i, j = idx // (C * out_h * out_w), (idx // (out_h * out_w)) % C, (idx // out_w) % out_h, idx % out_w
        total = 0.0
        for h in range(first_h[i], first_h[i] + count_h[i]):
            for w in range(first_w[j], first_w[j] + count_w[j]):
                total += x[n, c, h, w]
        y[n, c, i, j] = total / (div_h[i] * div_w[j])


@cuda.jit
def _box_backward_kernel(grad_output, first_h, count_h, div_h, lo_h, hi_h, first_w, count_w, div_w, lo_w, hi_w,
                         grad_input):
    # one thread per input pixel (h, w): gather from the windows i in [lo_h[h], hi_h[h]), j likewise
    idx = cuda.grid(1)
    if idx < grad_input.size:
        C, H, W = grad_input.shape[1], grad_input.shape[2], grad_input.shape[3]
        n, c, h, w = idx // (C * H * W), (idx // (H * W)) % C, (idx // W) % H, idx % W
        total = 0.0
        for i in range(lo_h[h], hi_h[h]):
            for j in range(lo_w[w], hi_w[w]):
                total += grad_output[n, c, i, j] / (div_h[i] * div_w[j])
        grad_input[n, c, h, w] = total

"""conv2d: 2-D convolution (cross-correlation, as in every deep-learning library) as GEMMs.

Notation: x (N, C_in, H, W) input; weight (C_out, C_in/G, k_h, k_w) with G
groups; bias (C_out,) or None; stride s, padding pad, dilation d per axis.
Output channel o belongs to group g = o // (C_out/G) and reads only input
channels g·C_in/G ... (g+1)·C_in/G - 1:

    y[n, o, i, j] = b[o] + Σ_{c < C_in/G, p < k_h, q < k_w} w[o, c, p, q] · x[n, g·C_in/G + c, i·s_h - pad_h + p·d_h, j·s_w - pad_w + q·d_w]

(x is 0 in the padding). Output size:

    out_h = (H + 2·pad_h - d_h·(k_h - 1) - 1) // s_h + 1       (out_w alike)

As matrices, per sample n and group g, with cols[n, g] = im2col of the
group's input channels of sample n (kernels/im2col.py):

    Y[n, g] (C_out/G, out_h·out_w) = W[g] (C_out/G, C_in/G·k_h·k_w) · cols[n, g] (C_in/G·k_h·k_w, out_h·out_w)

Gradients (L the loss, grad_output = ∂L/∂y):

    grad_input[n, g]  = col2im(W[g]ᵀ · grad_output[n, g])     (= conv_transpose2d(grad_output, w))
    grad_weight[g]    = Σ_n grad_output[n, g] · cols[n, g]ᵀ    (= grad_output ⋆ x)
    grad_bias         = Σ_{n, i, j} grad_output[n, :, i, j]

Four routes compute these GEMMs (_route), all through kernels/blas.py's gemm:

* im2col, exactly the formulas above; Y is written in place into the
  NCHW output.
* pointwise (1x1, stride 1, no padding): cols[n, g] is x[n, g] itself,
  seen as (C_in/G, H·W): no copy.
* shifted windows: no im2col at all. Pad the sample and flatten its
  pixels row by row, rows `width` = out_w + d_w·(k_w - 1) long, channels
  last: pixels (rows, C_in/G). At stride 1 output pixel (i, j), numbered
  e = i·width + j, reads tap (p, q) at pixel e + p·d_h·width + q·d_w:
  every tap is one shift of the same numbering, so

      Y_ext (out_h·width, C_out/G) = Σ_{p, q} pixels[shift_pq : shift_pq + out_h·width] · W[g, :, :, p, q]ᵀ

  is k_h·k_w GEMMs with K = C_in/G on windows of one buffer (BLAS's
  leading dimension does the slicing), accumulated by BLAS (beta = 1).
  The last width - out_w pixels of every row of Y_ext wrap around into
  the next row: junk, dropped when Y_ext is copied into y. At stride s the
  padded sample is first split into s_h·s_w phases (the pixels with
  h ≡ r_h, w ≡ r_w mod s): tap (p, q) then reads one phase at a stride-1
  shift (kernels/im2col.py's shifted_geometry, tap_start), with rows
  width = out_w + d_w·(k_w - 1) // s_w long.
  At stride 1 grad_input is a convolution of grad_output with the kernel
  rotated by 180° and padding d·(k - 1) - pad, so it takes the same kernel;
  and grad_weight uses the "extended" columns
  cols_ext[(c, p, q), e] = planes[c, e + shift_pq] (one contiguous copy
  per row, no boundary tests) against grad_output spread to rows `width`
  long with zeros in the junk columns.
* pixel rows: the same padded pixels, copied once more into one row per
  output pixel, tap by tap (channels last, im2col transposed, no junk):
  rows[i·out_w + j, (p·k_w + q)·C_in/G + c] = pixels[tap_start_pq + i·width + j, c]
  (any stride, through the phases). Several samples of one group are
  stacked, their rows one under the other (as many as fit in _ROWS_BYTES,
  fixed by the shapes: see _rows_stack), and each stack is one GEMM with
  K = k_h·k_w·C_in/G:

      Y_rows (S·L, C_out/G) = rows (S·L, k_h·k_w·C_in/G) · W[g] as (k_h·k_w·C_in/G, C_out/G)
      grad_weight[g] as (k_h·k_w·C_in/G, C_out/G) += rowsᵀ · grad_output[stack, g] as (C_out/G, S·L)ᵀ

  (L = out_h·out_w; grad_input at stride 1 as for shifted windows).

_route picks one per pass: pointwise where it applies, else shifted
windows, except im2col for the forward and grad_input with fewer than
_SHIFTED_MIN_CHANNELS input channels a group (K = C_in/G is then too small
for BLAS), col2im / im2col for grad_input and grad_weight at stride > 1,
and pixel rows for every pass with at least _SHIFTED_MIN_CHANNELS input
channels a group whose plane (the output's; grad_input's: the input's, at
stride 1 only) has at most _ROWS_MAX_PIXELS pixels: there the windows'
junk is a large share (out_w = 8: 2 of every 10 columns) and their
per-tap GEMMs (8x8: 80 x C x O) are small.

Threads: the (sample, group) work items (pixel rows: (stack, group)) are
cut into B contiguous blocks, B = min(items, NUMBA_NUM_THREADS), and one
prange runs over the blocks. Each
block copies one item (pixel rows: one stack) at a time into its own
buffers, reused for all its items, and calls a single-threaded GEMM (SciPy's OpenBLAS, pinned to 1
thread when `tinyconv` is imported, see tinyconv/threads.py), writing only
its own items' outputs. grad_weight sums into one private accumulator per
block (fewer blocks when B copies of the weight would pass _PARTIAL_BYTES),
and the accumulators are added up after the loop in block order: no races,
and since B does not depend on set_num_threads, the same answer bit for bit
at any thread count. Memory: one item's columns or padded planes per block
(pixel rows: one stack's, at most _ROWS_BYTES unless one sample needs more),
never the whole batch's. The work is parallel over samples and groups only:
a batch of one with groups=1 runs on one thread; so does any convolution
below _SERIAL_MULTIPLY_ADDS, where waking threads would cost more.

>>> import numpy as np
>>> x, w = np.ones((2, 4, 8, 8)), np.ones((6, 2, 3, 3))
>>> conv2d_forward(x, w, None, (2, 2), (1, 1), (1, 1), 2).shape
(2, 6, 4, 4)
>>> conv2d_forward(np.ones((2, 16, 8, 8)), np.ones((4, 16, 3, 3)), None, (1, 1), (1, 1), (1, 1), 1)[0, 0, 0, :3]
array([64., 96., 96.])
"""
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from kernels.blas import gemm
from kernels.im2col import (col2im_sample, conv_output_size, copy_1d, extended_im2col_sample, im2col_sample,
                            pixel_major_sample, pixel_rows_sample, shifted_geometry, shifted_runs, tap_start)

_SERIAL_MULTIPLY_ADDS = 2**20  # below this (~0.02 ms of GEMM on one core), one thread: see _serial_if_small
_PARTIAL_BYTES = 64 * 2**20  # at most this much memory for grad_weight's per-block accumulators (or one)
_SHIFTED_MIN_CHANNELS = 8  # stride-1 forward / grad_input by shifted windows from this many C_in/G (see _route)
_ROWS_MAX_PIXELS = 8 * 8  # pixel rows instead of shifted windows on planes this small (see _route)
_ROWS_BYTES = 2**20  # pixel rows: at most this much of them a GEMM (one sample's at least)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    k_h, k_w = weight.shape[2:]
    out_size = (conv_output_size(x.shape[2], k_h, stride[0], padding[0], dilation[0]),
                conv_output_size(x.shape[3], k_w, stride[1], padding[1], dilation[1]))
    return _conv2d(x, weight, bias, out_size, stride, padding, dilation, groups)


def conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, needs=(True, True, True)):
    grad_output = np.ascontiguousarray(grad_output)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = _conv2d_grad_input(grad_output, weight, x.shape, stride, padding, dilation, groups)
    if needs[1]:
        grad_weight = _conv2d_grad_weight(grad_output, x, weight.shape, stride, padding, dilation, groups)
    if needs[2]:
        grad_bias = bias_gradient(grad_output)
    return grad_input, grad_weight, grad_bias


def bias_gradient(grad_output):
    """grad_bias[o] = Σ_{n,i,j} grad_output[n, o, i, j] (every convolution's, shared by the other kernel files).

    One prange over the channels, each summed by one thread in float64 and cast back to the dtype: the same
    answer at any thread count, closer to the exact sum than NumPy's float32 pairwise sum, and ~6x faster
    than grad_output.sum(axis=(0, 2, 3)) on 2 threads (8 MB: 0.06 against 0.38 ms, measured)."""
    n, c = grad_output.shape[:2]
    total = np.empty(c, np.float64)
    with _serial_if_small(grad_output.size):
        _channel_sum(np.ascontiguousarray(grad_output).reshape(n, c, -1), total)  # (N, C, out_h·out_w)
    return total.astype(grad_output.dtype)


@njit(cache=True, parallel=True, fastmath={"reassoc"})  # reassoc: LLVM vectorises the sum (STYLE.md 13)
def _channel_sum(grad_output, total):
    # grad_output (N, C, L); total (C,) float64
    n_batch, channels = grad_output.shape[:2]
    for c in prange(channels):
        acc = 0.0
        for n in range(n_batch):
            plane = grad_output[n, c]
            for e in range(plane.size):
                acc += plane[e]
        total[c] = acc


# ---------------------------------------------------------------------------
# the GEMM routes, shared with conv_transpose2d (Chainer's pairing)
# ---------------------------------------------------------------------------
def _conv2d(x, weight, bias, out_size, stride, padding, dilation, groups):
    """y = W · cols + b per (sample, group), with the output size given (conv_transpose2d's grad needs that)."""
    # N batch, C_in input channels, O output channels, G groups, L = out_h·out_w output pixels
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    y = np.empty((n, c_out) + tuple(out_size), dtype=x.dtype)
    bias = np.zeros(c_out, dtype=x.dtype) if bias is None else bias  # added in cache: one signature either way
    bias = np.ascontiguousarray(bias, dtype=x.dtype).reshape(groups, -1)                     # (G, O/G)
    geometry = _geometry(weight.shape[2:], stride, padding, dilation, out_size, (h, w))
    with _serial_if_small(n * c_out * weight[0].size * out_size[0] * out_size[1]):
        route = _route("forward", stride, geometry, weight.shape[1], out_size)
        if route in (_SHIFTED, _ROWS):
            _shifted(route, x, _taps(weight, groups, flip=False), bias, y, padding, stride, dilation, groups)
        else:
            _forward_kernel(_grouped_input(x, groups),
                            np.ascontiguousarray(weight).reshape(groups, c_out // groups, -1),  # (G, O/G, C_in/G·k_h·k_w)
                            bias, y.reshape(n, groups, c_out // groups, -1),                     # (N, G, O/G, L)
                            *geometry, _blocks(n * groups))
    return y


def _conv2d_grad_input(grad_output, weight, x_shape, stride, padding, dilation, groups):
    """grad_input = col2im(Wᵀ · grad_output) per (sample, group) (conv_transpose2d's forward). At stride 1
    that is a convolution of grad_output with the kernel rotated by 180° and padding d·(k - 1) - pad."""
    n, c_out = grad_output.shape[:2]
    k_h, k_w = weight.shape[2:]
    grad_input = np.empty(x_shape, dtype=grad_output.dtype)
    geometry = _geometry(weight.shape[2:], stride, padding, dilation, grad_output.shape[2:], x_shape[2:])
    with _serial_if_small(grad_output.size * weight[0].size):
        route = _route("grad_input", stride, geometry, weight.shape[1], x_shape[2:])
        if route in (_SHIFTED, _ROWS):
            _shifted(route, grad_output, _taps(weight, groups, flip=True),
                     np.zeros((groups, x_shape[1] // groups), dtype=grad_output.dtype), grad_input,
                     (dilation[0] * (k_h - 1) - padding[0], dilation[1] * (k_w - 1) - padding[1]), (1, 1), dilation,
                     groups)
        else:
            w_t = np.ascontiguousarray(weight).reshape(groups, c_out // groups, -1).transpose(0, 2, 1)
            _grad_input_kernel(np.ascontiguousarray(grad_output).reshape(n, groups, c_out // groups, -1),  # (N, G, O/G, L)
                               np.ascontiguousarray(w_t),                                 # (G, C_in/G·k_h·k_w, O/G)
                               _grouped_input(grad_input, groups), *geometry, _blocks(n * groups))
    return grad_input


def _conv2d_grad_weight(grad_output, x, weight_shape, stride, padding, dilation, groups):
    """grad_weight = Σ_n grad_output[n, g] · cols[n, g]ᵀ per group (shared with conv_transpose2d)."""
    n, c_out = grad_output.shape[:2]
    if x.shape[0] != n:
        raise ValueError(f"grad_output has {n} samples but the input has {x.shape[0]}")
    weight_bytes = int(np.prod(weight_shape)) * x.itemsize
    blocks = max(1, min(_blocks(n * groups), _PARTIAL_BYTES // weight_bytes))  # bounded memory, still fixed
    partial = np.zeros((blocks, groups, int(np.prod(weight_shape[1:])), c_out // groups), dtype=x.dtype)
    geometry = _geometry(weight_shape[2:], stride, padding, dilation, grad_output.shape[2:], x.shape[2:])
    route = _route("grad_weight", stride, geometry, weight_shape[1], grad_output.shape[2:])
    with _serial_if_small(grad_output.size * int(np.prod(weight_shape[1:]))):
        if route == _ROWS:
            stack = _rows_stack(n, groups, grad_output.shape[2:], partial.shape[2], x.itemsize)
            _rows_grad_weight_kernel(_grouped_input(grad_output, groups), _grouped_input(x, groups), partial,
                                     *geometry[:-3], stack)
        else:
            _grad_weight_kernel(_grouped_input(grad_output, groups), _grouped_input(x, groups), partial,
                                *geometry[:-1], route)
    grad_weight_t = partial[0]                                                # (G, C_in/G·k_h·k_w, O/G)
    for b in range(1, blocks):  # block order: the same sum at any thread count
        grad_weight_t += partial[b]
    if route == _ROWS:  # its rows are in tap-major order (p, q, c)
        c_out, c_group, k_h, k_w = weight_shape
        grad_weight_t = grad_weight_t.reshape(groups, k_h, k_w, c_group, c_out // groups)  # (G, k_h, k_w, C/G, O/G)
        return np.ascontiguousarray(grad_weight_t.transpose(0, 4, 3, 1, 2)).reshape(weight_shape)
    return np.ascontiguousarray(grad_weight_t.transpose(0, 2, 1)).reshape(weight_shape)


def _grouped_input(x, groups):
    """x (N, C, H, W) seen as (N, G, C/G, H, W), so x[n, g] is one (sample, group) work item's input."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x).reshape(n, groups, c // groups, h, w)  # (N, G, C/G, H, W)


def _taps(weight, groups, flip):
    """The weight as one (C/G, O/G) GEMM operand per group and tap: (G, k_h, k_w, C/G, O/G). With flip, the
    adjoint's: kernel rotated by 180°, roles of C and O swapped, (G, k_h, k_w, O/G, C/G)."""
    c_out, c_group, k_h, k_w = weight.shape
    w = np.asarray(weight).reshape(groups, c_out // groups, c_group, k_h, k_w)  # (G, O/G, C/G, k_h, k_w)
    if flip:
        return np.ascontiguousarray(w[:, :, :, ::-1, ::-1].transpose(0, 3, 4, 1, 2))  # (G, k_h, k_w, O/G, C/G)
    return np.ascontiguousarray(w.transpose(0, 3, 4, 2, 1))                          # (G, k_h, k_w, C/G, O/G)


def _geometry(kernel_size, stride, padding, dilation, out_size, in_size):
    """The kernels' scalar arguments: k_h, k_w, stride, pad, dil (h, w each), out_h, out_w, pointwise.

    out_size may be smaller than the convolution formula gives (conv_transpose2d's output_padding), never
    larger: the kernels do not check bounds, so this does."""
    for a in range(2):
        if out_size[a] > conv_output_size(in_size[a], kernel_size[a], stride[a], padding[a], dilation[a]):
            raise ValueError(f"output size {tuple(out_size)} is larger than a convolution of {tuple(in_size)} "
                             f"with kernel {tuple(kernel_size)}, stride {stride}, padding {padding}, "
                             f"dilation {dilation} gives")
    pointwise = (tuple(kernel_size) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
                 and tuple(in_size) == tuple(out_size))   # 1x1, unpadded, stride 1: im2col would copy x unchanged
    return (kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            out_size[0], out_size[1], pointwise)


_IM2COL, _POINTWISE, _SHIFTED, _ROWS = 0, 1, 2, 3


def _route(pass_, stride, geometry, c_group, plane):
    """Which GEMMs for pass_ ("forward", "grad_input" or "grad_weight"): x itself as the columns (pointwise),
    shifted windows, pixel rows, or im2col; plane is the (h, w) size the pass writes. Measured on this
    machine's OpenBLAS:
    * the shifted forward's (and grad_input's) GEMMs have K = C_in/G (grad_input's N = C_in/G): with fewer
      than _SHIFTED_MIN_CHANNELS input channels a group, im2col's K = C_in/G·k_h·k_w is faster;
    * on planes of at most _ROWS_MAX_PIXELS pixels the windows' junk columns are a large share
      (out_w = 8: 2 of every 10) and the per-tap GEMMs small: pixel rows, several samples a GEMM, win
      (ResNet-20's 64->64 at 8x8, batch 128: forward 8.4 -> 6.0 ms; about even at 16x16, 32 channels; slower
      at 32x32, 16 channels, where the copies are 16 channels long);
    * grad_input by shifted windows needs stride 1 (it is a convolution only then);
    * grad_weight's extended columns at stride > 1 are slower than im2col's (phases of short runs), so
      the forward alone splits strided samples into phases."""
    if geometry[-1]:
        return _POINTWISE
    if c_group >= _SHIFTED_MIN_CHANNELS and plane[0] * plane[1] <= _ROWS_MAX_PIXELS and (
            pass_ != "grad_input" or tuple(stride) == (1, 1)):
        return _ROWS
    if pass_ == "grad_weight":
        return _SHIFTED if tuple(stride) == (1, 1) else _IM2COL
    if c_group < _SHIFTED_MIN_CHANNELS or (pass_ == "grad_input" and tuple(stride) != (1, 1)):
        return _IM2COL
    return _SHIFTED


def _shifted(route, x, taps, bias, y, pad, stride, dilation, groups):
    """y = x convolved with taps (G, k_h, k_w, C/G, O/G) + bias by shifted windows or pixel rows (route);
    pad is the (top, left) padding, negative for a crop. Pixel rows stack as many samples a GEMM as fit in
    _ROWS_BYTES of rows (at least one)."""
    n = x.shape[0]
    x, y = _grouped_input(x, groups), _grouped_input(y, groups)  # (N, G, C/G, H, W), (N, G, O/G, out_h, out_w)
    if route == _SHIFTED:
        _shifted_kernel(x, taps, bias, y, pad[0], pad[1], stride[0], stride[1], dilation[0], dilation[1],
                        _blocks(n * groups))
        return
    _, k_h, k_w, c_group, o_group = taps.shape
    stack = _rows_stack(n, groups, y.shape[3:], k_h * k_w * c_group, x.itemsize)
    _rows_kernel(x, taps.reshape(groups, k_h * k_w * c_group, o_group), bias, y, k_h, k_w,  # (G, k_h·k_w·C/G, O/G)
                 pad[0], pad[1], stride[0], stride[1], dilation[0], dilation[1], stack,
                 _blocks(groups * -(-n // stack)))


def _rows_stack(n, groups, plane, row_size, itemsize):
    """How many samples a pixel-rows GEMM stacks: as many as fit in _ROWS_BYTES, at least one, and few
    enough that every Numba thread the process started gets a stack (ceil(n / stacks a group needs)).

    A work item is one stack: samples [i·stack, (i + 1)·stack) of one group, the last one shorter. The
    stacks depend on the shapes and the process's thread pool alone, not on how the items are split
    among the threads in use (set_num_threads), so every GEMM is the same call: the same answer bit for
    bit, even from a BLAS whose rounding depends on the matrix size (OpenBLAS's AVX-512 kernels do)."""
    fit = _ROWS_BYTES // (plane[0] * plane[1] * row_size * itemsize)
    stacks_a_group = -(-numba.config.NUMBA_NUM_THREADS // groups)
    return max(1, min(n, fit, -(-n // stacks_a_group)))


@contextmanager
def _serial_if_small(multiply_adds):
    """Run a small convolution on the calling thread alone. Waking Numba's other threads costs ~8 ms per call
    when another process holds their core (measured on a loaded 2-core machine; microseconds when idle), far
    more than a small convolution takes. The blocks, and so the results, are the same either way."""
    previous = numba.get_num_threads()
    if multiply_adds < _SERIAL_MULTIPLY_ADDS:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _blocks(items):
    """How many blocks the work items are cut into: one per Numba thread the process started, fixed for its
    lifetime, so results do not depend on set_num_threads. (Read here: Numba will not cache a kernel that
    reads the thread count.)"""
    return max(1, min(items, numba.config.NUMBA_NUM_THREADS))


# ---------------------------------------------------------------------------
# jitted kernels: one prange over blocks of (sample, group) items, serial GEMMs inside
# ---------------------------------------------------------------------------
@njit(cache=True)
def _block(b, blocks, items):
    """Work items [lo, hi) of block b: contiguous, sizes differ by at most one."""
    return b * items // blocks, (b + 1) * items // blocks


@njit(cache=True, parallel=True)
def _shifted_kernel(x, taps, bias, y, pad_top, pad_left, stride_h, stride_w, dil_h, dil_w, blocks):
    # x (N, G, C/G, H, W); taps (G, k_h, k_w, C/G, O/G); bias (G, O/G); y (N, G, O/G, out_h, out_w).
    # Per item: y_ext (out_h·width, O/G) = Σ_{p,q} pixels[start_pq : start_pq + out_h·width] · taps[g, p, q],
    # pixels (rows, C/G) the padded sample (kernels/im2col.py's shifted_geometry); y = the first out_w
    # pixels of every `width` long row of y_ext
    n_batch, groups, c_group = x.shape[:3]
    k_h, k_w, _, o_group = taps.shape[1:]
    out_h, out_w = y.shape[3:]
    width, phase_size = shifted_geometry(k_h, k_w, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    runs = shifted_runs(x.shape[3], x.shape[4], pad_top, pad_left, stride_h, stride_w, width, phase_size)
    length = out_h * width
    for b in prange(blocks):
        pixels = np.zeros((stride_h * stride_w * phase_size, c_group), dtype=x.dtype)  # this block's own
        y_ext = np.empty((length, o_group), dtype=x.dtype)                             # buffers; padding stays 0
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            pixel_major_sample(x[n, g], pixels, runs, stride_w)
            for p in range(k_h):
                for q in range(k_w):  # (length, O/G) += (length, C/G) · (C/G, O/G): a window of pixels' rows
                    start = tap_start(p, q, stride_h, stride_w, dil_h, dil_w, width, phase_size)
                    gemm(False, False, length, o_group, c_group, 1.0, pixels.ravel(), start * c_group, c_group,
                         taps[g, p, q].ravel(), 0, o_group, 0.0 if p + q == 0 else 1.0, y_ext.ravel(), 0, o_group)
            for i in range(out_h):
                source = y_ext[i * width:i * width + out_w]  # (out_w, O/G): a view, so no negative-index checks
                for o in range(o_group):
                    target = y[n, g, o, i]
                    for j in range(out_w):
                        target[j] = source[j, o] + bias[g, o]


@njit(cache=True)
def _tap_starts(k_h, k_w, stride_h, stride_w, dil_h, dil_w, width, phase_size):
    """tap_start of every tap t = p·k_w + q (computed once: its divisions cost more than a row's copy)."""
    starts = np.empty(k_h * k_w, dtype=np.int64)
    for t in range(k_h * k_w):
        starts[t] = tap_start(t // k_w, t % k_w, stride_h, stride_w, dil_h, dil_w, width, phase_size)
    return starts


@njit(cache=True)
def _stack_rows(x, n0, count, g, pixels, rows, runs, starts, stride_w, width, out_h, out_w):
    """rows[s·L:(s + 1)·L] = the pixel rows of sample n0 + s, group g, for s < count (L = out_h·out_w)."""
    length = out_h * out_w
    for s in range(count):
        pixel_major_sample(x[n0 + s, g], pixels, runs, stride_w)
        pixel_rows_sample(pixels, rows[s * length:(s + 1) * length], starts, width, out_h, out_w)


@njit(cache=True, parallel=True)
def _rows_kernel(x, taps, bias, y, k_h, k_w, pad_top, pad_left, stride_h, stride_w, dil_h, dil_w, stack, blocks):
    # x (N, G, C/G, H, W); taps (G, k_h·k_w·C/G, O/G); bias (G, O/G); y (N, G, O/G, out_h, out_w).
    # An item is a stack (_rows_stack): up to `stack` samples of one group, group-major (item = g·S + i for
    # S stacks a group), sharing a GEMM: rows (stack·L, k_h·k_w·C/G), one row per output pixel
    # (pixel_rows_sample), y_rows = rows · taps[g]
    n_batch, groups, c_group = x.shape[:3]
    k, o_group = taps.shape[1:]
    out_h, out_w = y.shape[3:]
    width, phase_size = shifted_geometry(k_h, k_w, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    runs = shifted_runs(x.shape[3], x.shape[4], pad_top, pad_left, stride_h, stride_w, width, phase_size)
    starts = _tap_starts(k_h, k_w, stride_h, stride_w, dil_h, dil_w, width, phase_size)
    length, n_stacks = out_h * out_w, -(-n_batch // stack)
    for b in prange(blocks):
        pixels = np.zeros((stride_h * stride_w * phase_size, c_group), dtype=x.dtype)  # this block's own
        rows = np.empty((stack * length, k), dtype=x.dtype)                            # buffers; padding stays 0
        y_rows = np.empty((stack * length, o_group), dtype=x.dtype)
        lo, hi = _block(b, blocks, n_stacks * groups)
        for item in range(lo, hi):
            g, n0 = item // n_stacks, item % n_stacks * stack
            count = min(stack, n_batch - n0)
            _stack_rows(x, n0, count, g, pixels, rows, runs, starts, stride_w, width, out_h, out_w)
            # (count·L, O/G) = (count·L, k_h·k_w·C/G) · (k_h·k_w·C/G, O/G)
            gemm(False, False, count * length, o_group, k, 1.0, rows.ravel(), 0, k, taps[g].ravel(), 0, o_group,
                 0.0, y_rows.ravel(), 0, o_group)
            for s in range(count):
                source = y_rows[s * length:(s + 1) * length]  # (L, O/G)
                for o in range(o_group):
                    target = y[n0 + s, g, o].ravel()
                    for e in range(length):
                        target[e] = source[e, o] + bias[g, o]


@njit(cache=True, parallel=True)
def _rows_grad_weight_kernel(grad_output, x, partial, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                             stack):
    # grad_output (N, G, O/G, out_h, out_w); x (N, G, C/G, H, W); partial (B, G, k_h·k_w·C/G, O/G), rows in
    # tap-major order. Items (stacks) as in _rows_kernel; block b sums into partial[b] only:
    # partial[b, g] += rowsᵀ · gradsᵀ, rows (count·L, k_h·k_w·C/G), grads (O/G, count·L) the samples'
    # grad_output side by side
    n_batch, groups, o_group, out_h, out_w = grad_output.shape
    blocks, k = partial.shape[0], partial.shape[2]
    width, phase_size = shifted_geometry(k_h, k_w, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    runs = shifted_runs(x.shape[3], x.shape[4], pad_h, pad_w, stride_h, stride_w, width, phase_size)
    starts = _tap_starts(k_h, k_w, stride_h, stride_w, dil_h, dil_w, width, phase_size)
    length, n_stacks = out_h * out_w, -(-n_batch // stack)
    for b in prange(blocks):
        pixels = np.zeros((stride_h * stride_w * phase_size, x.shape[2]), dtype=x.dtype)  # this block's own
        rows = np.empty((stack * length, k), dtype=x.dtype)
        grads = np.empty((o_group, stack * length), dtype=x.dtype)
        lo, hi = _block(b, blocks, n_stacks * groups)
        for item in range(lo, hi):
            g, n0 = item // n_stacks, item % n_stacks * stack
            count = min(stack, n_batch - n0)
            _stack_rows(x, n0, count, g, pixels, rows, runs, starts, stride_w, width, out_h, out_w)
            for s in range(count):
                for o in range(o_group):
                    copy_1d(grad_output[n0 + s, g, o].ravel(), grads[o, s * length:(s + 1) * length])
            # (k_h·k_w·C/G, O/G) += (count·L, k_h·k_w·C/G)ᵀ · (O/G, count·L)ᵀ, accumulated by BLAS (beta = 1)
            gemm(True, True, k, o_group, count * length, 1.0, rows.ravel(), 0, k, grads.ravel(), 0, stack * length,
                 1.0, partial[b, g].ravel(), 0, o_group)


@njit(cache=True, parallel=True)
def _forward_kernel(x, weight, bias, y, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w,
                    pointwise, blocks):
    # x (N, G, C_in/G, H, W); weight (G, O/G, C_in/G·k_h·k_w); bias (G, O/G); y (N, G, O/G, out_h·out_w)
    n_batch, groups, c_group, height, width = x.shape
    k, length = weight.shape[2], out_h * out_w
    for b in prange(blocks):
        cols = np.empty((0 if pointwise else k, length), dtype=x.dtype)  # this block's own
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            columns = x[n, g].ravel()
            if not pointwise:
                im2col_sample(x[n, g], cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)
                columns = cols.ravel()
            # (O/G, L) = (O/G, C_in/G·k_h·k_w) · (C_in/G·k_h·k_w, L)
            gemm(False, False, y.shape[2], length, k, 1.0, weight[g].ravel(), 0, k, columns, 0, length, 0.0,
                 y[n, g].ravel(), 0, length)
            for o in range(y.shape[2]):  # scalar loops: an array expression here compiles ~2 s slower (measured)
                for pixel in range(length):
                    y[n, g, o, pixel] += bias[g, o]


@njit(cache=True, parallel=True)
def _grad_input_kernel(grad_output, w_t, grad_input, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       out_h, out_w, pointwise, blocks):
    # grad_output (N, G, O/G, out_h·out_w); w_t (G, C_in/G·k_h·k_w, O/G); grad_input (N, G, C_in/G, H, W)
    n_batch, groups = grad_input.shape[:2]
    k, o_group, length = w_t.shape[1], w_t.shape[2], out_h * out_w
    for b in prange(blocks):
        cols = np.empty((0 if pointwise else k, length), dtype=grad_output.dtype)
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            columns = grad_input[n, g].ravel() if pointwise else cols.ravel()
            # (C_in/G·k_h·k_w, L) = (C_in/G·k_h·k_w, O/G) · (O/G, L)
            gemm(False, False, k, length, o_group, 1.0, w_t[g].ravel(), 0, o_group, grad_output[n, g].ravel(), 0,
                 length, 0.0, columns, 0, length)
            if not pointwise:
                col2im_sample(cols, grad_input[n, g], k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                              out_h, out_w)


@njit(cache=True, parallel=True)
def _grad_weight_kernel(grad_output, x, partial, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        out_h, out_w, route):
    # grad_output (N, G, O/G, out_h, out_w); x (N, G, C_in/G, H, W); partial (B, G, C_in/G·k_h·k_w, O/G):
    # block b sums its items into partial[b] only, grad_weight[g]ᵀ += cols · grad_outputᵀ (this orientation
    # runs fastest in OpenBLAS, measured). The shifted route (stride 1 only) has the extended columns, `width`
    # pixels a row of which the last (width - out_w) are junk, and grad_output copied out with zeros there
    n_batch, groups, o_group = grad_output.shape[:3]
    blocks, k = partial.shape[0], partial.shape[2]
    shifted = route == _SHIFTED
    width, phase_size = shifted_geometry(k_h, k_w, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    runs = shifted_runs(x.shape[3], x.shape[4], pad_h, pad_w, stride_h, stride_w, width, phase_size)
    length = out_h * width if shifted else out_h * out_w  # (reassigning width instead: 10% slower, measured)
    for b in prange(blocks):
        cols = np.empty((0 if route == _POINTWISE else k, length), dtype=x.dtype)  # this block's own
        planes = np.zeros((x.shape[2] if shifted else 0, phase_size), dtype=x.dtype)
        grad_ext = np.zeros((o_group if shifted else 0, length), dtype=x.dtype)  # padding, junk columns stay 0
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            columns, grads = x[n, g].ravel(), grad_output[n, g].ravel()
            if shifted:
                extended_im2col_sample(x[n, g], planes, cols, runs, k_h, k_w, dil_h, dil_w, width)
                for o in range(o_group):
                    for i in range(out_h):
                        copy_1d(grad_output[n, g, o, i], grad_ext[o, i * width:i * width + out_w])
                columns, grads = cols.ravel(), grad_ext.ravel()
            elif route == _IM2COL:
                im2col_sample(x[n, g], cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)
                columns = cols.ravel()
            # (C_in/G·k_h·k_w, O/G) += (C_in/G·k_h·k_w, L) · (O/G, L)ᵀ, accumulated by BLAS itself (beta = 1)
            gemm(False, True, k, o_group, length, 1.0, columns, 0, length, grads, 0, length, 1.0,
                 partial[b, g].ravel(), 0, o_group)


@njit(cache=True)
def _accumulate(total, term):
    """total += term, for 2-D arrays of one shape (a serial loop: an array expression inside prange
    would be compiled as a nested parallel loop, several seconds of extra compile time). Used by
    kernels/deform.py."""
    for r in range(total.shape[0]):
        for c in range(total.shape[1]):
            total[r, c] += term[r, c]

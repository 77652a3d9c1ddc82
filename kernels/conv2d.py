"""conv2d: 2-D convolution (cross-correlation, as in every deep-learning library) via im2col + GEMM.

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

so one GEMM per (sample, group) writes the NCHW output in place: no
transpose back. Gradients (L the loss, grad_output = ∂L/∂y):

    grad_input[n, g]  = col2im(W[g]ᵀ · grad_output[n, g])     (= conv_transpose2d(grad_output, w))
    grad_weight[g]    = Σ_n grad_output[n, g] · cols[n, g]ᵀ    (= grad_output ⋆ x)
    grad_bias         = Σ_{n, i, j} grad_output[n, :, i, j]

A 1x1 convolution with stride 1 and no padding needs no im2col: cols[n, g]
is x[n, g] itself, seen as (C_in/G, H·W).

Threads: the (sample, group) work items are cut into B contiguous blocks,
B = min(N·G, NUMBA_NUM_THREADS), and one prange runs over the blocks. Each
block builds one item's columns at a time into its own buffer, reused for
all its items, and calls a single-threaded GEMM (np.dot inside the jitted
code: SciPy's OpenBLAS, pinned to 1 thread when `tinyconv` is imported, see
tinyconv/threads.py), writing only its own items' outputs. grad_weight sums
into one private accumulator per block (fewer blocks when B copies of the
weight would pass _PARTIAL_BYTES), and the accumulators are added up after
the loop in block order: no races, and since B does not depend on
set_num_threads, the same answer bit for bit at any thread count.
Memory: one item's columns per block, (C_in/G·k_h·k_w, out_h·out_w), never
the whole batch's. The work is parallel over samples and groups only: a
batch of one with groups=1 runs on one thread; so does any convolution
below _SERIAL_MULTIPLY_ADDS, where waking threads would cost more.

>>> import numpy as np
>>> x, w = np.ones((2, 4, 8, 8)), np.ones((6, 2, 3, 3))
>>> conv2d_forward(x, w, None, (2, 2), (1, 1), (1, 1), 2).shape
(2, 6, 4, 4)
"""
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from kernels.im2col import col2im_sample, conv_output_size, im2col_sample

_SERIAL_MULTIPLY_ADDS = 2**20  # below this (~0.02 ms of GEMM on one core), one thread: see _serial_if_small
_PARTIAL_BYTES = 64 * 2**20  # at most this much memory for grad_weight's per-block accumulators (or one)


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
        grad_bias = grad_output.sum(axis=(0, 2, 3))
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------
# the three GEMM routes, shared with conv_transpose2d (Chainer's pairing)
# ---------------------------------------------------------------------------
def _conv2d(x, weight, bias, out_size, stride, padding, dilation, groups):
    """y = W · cols + b per (sample, group), with the output size given (conv_transpose2d's grad needs that)."""
    # N batch, C_in input channels, O output channels, G groups, L = out_h·out_w output pixels
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    y = np.empty((n, c_out) + tuple(out_size), dtype=x.dtype)
    bias = np.zeros(c_out, dtype=x.dtype) if bias is None else bias  # added in cache: one signature either way
    with _serial_if_small(n * c_out * weight[0].size * out_size[0] * out_size[1]):
        _forward_kernel(_grouped_input(x, groups),
                        np.ascontiguousarray(weight).reshape(groups, c_out // groups, -1),  # (G, O/G, C_in/G·k_h·k_w)
                        np.ascontiguousarray(bias, dtype=x.dtype).reshape(groups, -1),      # (G, O/G)
                        y.reshape(n, groups, c_out // groups, -1),                           # (N, G, O/G, L)
                        *_geometry(weight.shape[2:], stride, padding, dilation, out_size, (h, w)), _blocks(n * groups))
    return y


def _conv2d_grad_input(grad_output, weight, x_shape, stride, padding, dilation, groups):
    """grad_input = col2im(Wᵀ · grad_output) per (sample, group) (conv_transpose2d's forward)."""
    n, c_out = grad_output.shape[:2]
    grad_input = np.empty(x_shape, dtype=grad_output.dtype)
    w_t = np.ascontiguousarray(weight).reshape(groups, c_out // groups, -1).transpose(0, 2, 1)
    with _serial_if_small(grad_output.size * weight[0].size):
        _grad_input_kernel(np.ascontiguousarray(grad_output).reshape(n, groups, c_out // groups, -1),  # (N, G, O/G, L)
                           np.ascontiguousarray(w_t),                                     # (G, C_in/G·k_h·k_w, O/G)
                           _grouped_input(grad_input, groups),
                           *_geometry(weight.shape[2:], stride, padding, dilation, grad_output.shape[2:], x_shape[2:]),
                           _blocks(n * groups))
    return grad_input


def _conv2d_grad_weight(grad_output, x, weight_shape, stride, padding, dilation, groups):
    """grad_weight = Σ_n grad_output[n, g] · cols[n, g]ᵀ per group (shared with conv_transpose2d)."""
    n, c_out = grad_output.shape[:2]
    if x.shape[0] != n:
        raise ValueError(f"grad_output has {n} samples but the input has {x.shape[0]}")
    weight_bytes = int(np.prod(weight_shape)) * x.itemsize
    blocks = max(1, min(_blocks(n * groups), _PARTIAL_BYTES // weight_bytes))  # bounded memory, still fixed
    partial = np.zeros((blocks, groups, int(np.prod(weight_shape[1:])), c_out // groups), dtype=x.dtype)
    with _serial_if_small(grad_output.size * int(np.prod(weight_shape[1:]))):
        _grad_weight_kernel(np.ascontiguousarray(grad_output).reshape(n, groups, c_out // groups, -1),  # (N, G, O/G, L)
                            _grouped_input(x, groups), partial,
                            *_geometry(weight_shape[2:], stride, padding, dilation, grad_output.shape[2:], x.shape[2:]))
    grad_weight_t = partial[0]                                                # (G, C_in/G·k_h·k_w, O/G)
    for b in range(1, blocks):  # block order: the same sum at any thread count
        grad_weight_t += partial[b]
    return np.ascontiguousarray(grad_weight_t.transpose(0, 2, 1)).reshape(weight_shape)


def _grouped_input(x, groups):
    """x (N, C, H, W) seen as (N, G, C/G, H, W), so x[n, g] is one (sample, group) work item's input."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x).reshape(n, groups, c // groups, h, w)  # (N, G, C/G, H, W)


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
def _forward_kernel(x, weight, bias, y, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w,
                    pointwise, blocks):
    # x (N, G, C_in/G, H, W); weight (G, O/G, C_in/G·k_h·k_w); bias (G, O/G); y (N, G, O/G, out_h·out_w)
    n_batch, groups, c_group, height, width = x.shape
    for b in prange(blocks):
        cols = np.empty((0 if pointwise else weight.shape[2], out_h * out_w), dtype=x.dtype)  # this block's own
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            if pointwise:
                np.dot(weight[g], x[n, g].reshape(c_group, height * width), y[n, g])
            else:
                im2col_sample(x[n, g], cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)
                np.dot(weight[g], cols, y[n, g])  # (O/G, L) = (O/G, C_in/G·k_h·k_w) · (C_in/G·k_h·k_w, L)
            for o in range(y.shape[2]):  # scalar loops: an array expression here compiles ~2 s slower (measured)
                for pixel in range(y.shape[3]):
                    y[n, g, o, pixel] += bias[g, o]


@njit(cache=True, parallel=True)
def _grad_input_kernel(grad_output, w_t, grad_input, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       out_h, out_w, pointwise, blocks):
    # grad_output (N, G, O/G, out_h·out_w); w_t (G, C_in/G·k_h·k_w, O/G); grad_input (N, G, C_in/G, H, W)
    n_batch, groups, c_group, height, width = grad_input.shape
    for b in prange(blocks):
        cols = np.empty((0 if pointwise else w_t.shape[1], out_h * out_w), dtype=grad_output.dtype)
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            if pointwise:
                np.dot(w_t[g], grad_output[n, g], grad_input[n, g].reshape(c_group, height * width))
            else:
                np.dot(w_t[g], grad_output[n, g], cols)  # (C_in/G·k_h·k_w, L) = (C_in/G·k_h·k_w, O/G) · (O/G, L)
                col2im_sample(cols, grad_input[n, g], k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                              out_h, out_w)


@njit(cache=True, parallel=True)
def _grad_weight_kernel(grad_output, x, partial, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        out_h, out_w, pointwise):
    # grad_output (N, G, O/G, out_h·out_w); x (N, G, C_in/G, H, W); partial (B, G, C_in/G·k_h·k_w, O/G):
    # block b sums its items into partial[b] only. grad_weight[g]ᵀ = Σ cols · grad_outputᵀ: this
    # orientation of the GEMM runs ~15% faster in OpenBLAS than grad_output · colsᵀ (measured)
    n_batch, groups, c_group, height, width = x.shape
    blocks = partial.shape[0]
    for b in prange(blocks):
        cols = np.empty((0 if pointwise else partial.shape[2], out_h * out_w), dtype=x.dtype)
        product = np.empty(partial.shape[2:], dtype=x.dtype)  # (C_in/G·k_h·k_w, O/G)
        lo, hi = _block(b, blocks, n_batch * groups)
        for item in range(lo, hi):
            n, g = item // groups, item % groups
            if pointwise:
                np.dot(x[n, g].reshape(c_group, height * width), grad_output[n, g].T, product)
            else:
                im2col_sample(x[n, g], cols, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)
                np.dot(cols, grad_output[n, g].T, product)  # (C_in/G·k_h·k_w, L) · (L, O/G)
            _accumulate(partial[b, g], product)


@njit(cache=True)
def _accumulate(total, term):
    """total += term, for 2-D arrays of one shape (a serial loop: an array expression inside prange
    would be compiled as a nested parallel loop, several seconds of extra compile time)."""
    for r in range(total.shape[0]):
        for c in range(total.shape[1]):
            total[r, c] += term[r, c]

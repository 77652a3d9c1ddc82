"""Direct convolution, no im2col: depthwise, grouped, and dense with up to 64 channels a group (runs_direct).

Notation: x (N, C_in, H, W) input; G groups; C_g = C_in/G input and O_g =
C_out/G output channels per group; weight (C_out, C_g, k_h, k_w); y (N,
C_out, out_h, out_w). Output channel o belongs to group g = o // O_g and
reads the input channels g·C_g + c, c < C_g. Depthwise convolution is the
case C_g = 1 (G = C_in) with channel multiplier M = O_g: output channel o
reads input channel o // M.

    y[n,o,i,j] = b[o] + Σ_{c<C_g, p<k_h, q<k_w} w[o,c,p,q] · x[n, g·C_g + c, i·stride_h - pad_h + p·dil_h,
                                                                  j·stride_w - pad_w + q·dil_w]

(x is zero outside the image.)  Output size, per axis:

    out = (H + 2·pad - dil·(k - 1) - 1) // stride + 1

Gradients, with g = grad_output and xp = x zero-padded by (pad_h, pad_w):

    grad_input[n, g·C_g + c] = crop of  Σ_{o in group g} Σ_{p,q} w[o,c,p,q] · g[n,o,i,j]
                               added at xp position (i·stride_h + p·dil_h, j·stride_w + q·dil_w)
                               (the transposed convolution)
    grad_weight[o,c,p,q]     = Σ_{n,i,j} g[n,o,i,j] · xp[n, g·C_g + c, i·stride_h + p·dil_h,
                                                            j·stride_w + q·dil_w]
    grad_bias[o]             = Σ_{n,i,j} g[n,o,i,j]

Why direct: with C_g·k_h·k_w small, im2col (kernels/conv2d.py) copies each
input pixel k_h·k_w times to feed GEMMs too thin for BLAS to run well, and
the copy costs more than the arithmetic. Here every multiply-add reads the
input where it lies. With many channels a group (dense convolutions too),
8 output channels at a time keep their sums in registers over all the
taps (_gather_rows8), and that beats im2col + GEMM up to 64 channels a
group at stride 1. tinyconv.functional.conv2d sends a convolution here
when runs_direct says so (the crossovers measured against conv2d's routes
are by its limits).

How it is laid out:

* A work item is one group g of a few consecutive samples (enough that
  the item's flat planes, laid end to end, are about ITEM_ELEMENTS long:
  one pass over a long run costs less than several over short ones; one
  sample for depthwise planes of 256 values or more, and when the
  forward runs over rows of whole vectors, below). The
  items are cut into B = NUMBA_NUM_THREADS contiguous blocks and one
  prange runs over the blocks; each block owns scratch buffers, reused
  for all its items.
* Phases remove the stride. The group's C_g input planes are copied into
  zero-padded scratch, each padded plane xp split into stride_h·stride_w
  phases: phase (r, t) holds xp[a·stride_h + r, b·stride_w + t] at [a, b].
  Tap (p, q) of output (i, j) reads xp[i·stride_h + p·dil_h, j·stride_w + q·dil_w],
  which is phase (p·dil_h % stride_h, q·dil_w % stride_w) at
  [i + p·dil_h // stride_h, j + q·dil_w // stride_w]: stride 1 inside the
  phase. (At stride 1 there is one phase, the padded plane itself.)
* A plane is ONE long row, and so are an item's planes end to end. Every
  flat buffer has row pitch P and plane size rows·P; output (i, j) of the
  item's sample s sits at k = s·rows·P + i·P + j and tap t = (c, p, q)
  reads the flat scratch at offset[t] + k, so

      out[k] = b[o] + Σ_t w[o, t] · x_flat[offset[t] + k]

  is one contiguous loop over all k of the item, which LLVM vectorises
  (per-row loops of 16 elements were too short for its vector width,
  measured 3-4x slower); the junk (columns j ≥ out_w, rows i ≥ out_h) is
  never copied out. The (offset, weight) pairs are the tap table, built
  per call in NumPy.
* At stride 1 neighbours share their zero border (_shared_border): a row
  keeps its leading zeros but not its trailing ones, since a read past
  its end lands in the next row's leading zeros; planes alike. 16x16 with
  a 3x3 kernel and padding 1: planes of 17x17, not 18x18 (10% less junk
  computed; 7x7 planes: 8x8, not 9x9, grouped C_g = 16 fwd+bwd 24% faster).
* Register blocking (_gather_vectors): one output channel at a time, 8
  vectors of pixels of its sums held in registers over ALL the taps; a tap
  is 8 vector loads and 8 multiply-adds with one broadcast weight, and
  each output is written once, where an axpy per tap does 2 loads and 1
  store per multiply-add. (It replaced a block of 2 channels × 4 taps per
  pass over k, which read and wrote the output every 4 taps: depthwise
  3x3, 16x16, float32, forward 2.6 -> 1.6 ms at 1 thread.) Its loads
  index with np.uint64, which Numba does not wrap around (see there).
* Wide groups (_gather_rows8): when a group's output channels are a
  multiple of 8, they share every tap's input, so 8 of them at a time keep
  8 rows × two vectors of pixels of sums in registers across all T taps: a
  tap is two vector loads and 16 multiply-adds, each output written once.
  (Grouped 3x3, C_g = O_g = 16, 16x16, float32, 1 thread: forward 5.7 ->
  4.6 ms, grad_input 6.2 -> 4.6.) grad_input takes it too when C_g is a
  multiple of 8, its rows being input channels. Such groups run direct up
  to 64 channels (runs_direct), dense convolutions included.
* Rows of whole vectors (_gather_planes8): when out_w is a multiple of the
  vector (16 float32 or 8 float64 pixels), the wide gather runs over the
  output rows, i·P + j with j < out_w, instead of the flat k: no junk
  column is computed, and each sample's 8 planes go to y as one run each.
  (The same layer: forward 8.6 -> 7.9 ms, 9% less, now on a Zen 4 EPYC.)
  A narrow group's _gather_vectors runs over the rows too, straight into
  y (one channel's plane is one run already). grad_input alike at stride
  1 when W is such a multiple.
* grad_input is the same gather run backwards in space: grad_output is
  copied with zero margins (A, B) = ((k_h-1)·dil_h // stride_h,
  (k_w-1)·dil_w // stride_w) (at stride 1 less the padding, at least 0:
  _shared_border), and input phase (r, t) at [a, b] gathers
  w[o,c,p,q] · g[a - p·dil_h // stride_h, b - q·dil_w // stride_w] from the
  taps (o, p, q) of that phase: a second tap table (_grad_input_taps).
* grad_weight[o, t] = Σ_k g_flat[k] · x_flat[offset[t] + k], dot products
  (_dot_taps, 2 channels × 4 taps per pass, the last T % 4 taps one per
  pass; _dot_taps4, 4 channels × 4 taps, when O_g is a multiple of 4:
  5.5 -> 4.2 ms on the layer above), over k in chunks of DOT_CHUNK
  pixels (every channel and tap over one chunk, then the next: large
  planes stay in L2), summed into a per-block partial; the partials are
  added in block order after the loop, so no two threads write one element
  and the answer is the same bit for bit at any thread count.
* below conv2d's _SERIAL_MULTIPLY_ADDS multiply-adds a call runs on one
  thread (waking the others costs milliseconds on a busy machine).

>>> import numpy as np
>>> x = np.ones((2, 4, 8, 8), np.float32)
>>> grouped_conv2d_forward(x, np.ones((6, 2, 3, 3), np.float32), None, (2, 2), (1, 1), (1, 1), 2).shape
(2, 6, 4, 4)
>>> depthwise_conv2d_forward(x, np.ones((8, 1, 3, 3), np.float32), None, (1, 1), (1, 1), (1, 1)).shape
(2, 8, 8, 8)
"""
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from kernels.conv2d import _block, _blocks, _serial_if_small, bias_gradient  # conv2d's blocks of work items; small
# work on one thread (waking them costs ms); the grad_bias sum

# Fast-math subset allowed by STYLE.md 13 (no -inf or NaN tricks in this op):
# 'contract' gives FMAs, 'reassoc' lets LLVM vectorise the grad_weight sums.
FASTMATH = {"reassoc", "contract", "nsz"}
# tinyconv.functional.conv2d runs a convolution here with C_in/groups <= DIRECT_MAX_CHANNELS; or, at stride 1
# with DIRECT_MIN_PIXELS_WIDE output pixels a channel or more over the batch (N·out_h·out_w), <=
# DIRECT_MAX_CHANNELS_WIDE when its output channels a group go 8 at a time through _gather_rows8; a dense one
# (groups = 1) only with DIRECT_MIN_TAPS_DENSE taps C_in·k_h·k_w or more (fewer, and its GEMM is long and thin
# while the direct kernel mostly copies: 1->32 3x3 28x28 1.60x). The crossover against conv2d's GEMM routes
# depends on which kernels OpenBLAS runs (benchmarks/README.md). Measured on an AVX-512 AMD EPYC, fwd+bwd,
# direct / GEMM route time, with OpenBLAS's AVX-512 (SkylakeX) kernels | AVX2 (Haswell) kernels:
#   grouped, C_in = C_out = 128, 16x16, N = 32, 1 thread (python -m benchmarks.dev --crossover):
#     3x3: 0.24 | 0.36 at 8 channels a group, 0.67 | 0.46 at 16, 0.92 | 0.51 at 32, 0.94 | 0.53 at 64
#     1x1: 0.89 | 0.31 at 1, 1.23 | 0.51 at 2, 1.73 | 0.62 at 4
#   at 2 threads, by output pixels a channel over the batch (the work of one call):
#     dense 64->64 8x8: N = 32 (2,048 pixels) 1.09 | 0.73, N = 64 1.05 | 0.69, N = 128 0.97 | 0.62
#     dense 32->32 16x16: N = 8 (2,048) 1.10 | 0.63, N = 16 0.97 | 0.55; 64->64 16x16 N = 8 0.93 | 0.55
#     grouped 3x3 N = 128: 7x7 C_g = 32 0.77 | 0.55, C_g = 64 0.96 | 0.62; 8x8 C_g = 64 0.95 | 0.61
#     (at N = 32 these were 0.63 | 0.43 and 1.52-1.57 | 0.71-0.74)
#     dense 16->16 32x32 N = 32 0.73 | 0.50; 128->128 16x16 N = 32 1.02 | 0.57
#     stride 2: 16->32 32x32 N = 32 1.13 | 0.82, 32->64 16x16 N = 128 1.05 | 0.77
#   dense, few input channels, 2 threads: 1->6 5x5 28x28 0.64 | 0.29; 6->16 5x5 14x14 0.52 | 0.40; 3->64
#     7x7 s2 224x224 0.71 | 0.50; 3->64 3x3 32x32 0.94 | 0.70; 3->32 3x3 s2 224x224 1.07 | 0.72; 1->32 3x3
#     28x28 1.60 | 0.77
# The limits follow the AVX-512 figures (the default of such a CPU) but for 1x1 at 2 channels a group
# (1.23x there, 2x faster under AVX2), 16 channels at stride 2 (1.13x there, 1.2x faster under AVX2) and
# 4,096 pixels (1.05x there, 1.45x faster under AVX2).
DIRECT_MAX_CHANNELS = 16
DIRECT_MAX_CHANNELS_WIDE = 64
DIRECT_MIN_PIXELS_WIDE = 4096
DIRECT_MIN_TAPS_DENSE = 25
DIRECT_MAX_CHANNELS_1X1 = 2


def runs_direct(groups, channels_per_group, out_channels_per_group, kernel_size, stride, out_pixels):
    """Whether conv2d sends a convolution here: by its groups, channels per group, kernel size, stride and
    output pixels a channel over the batch, N·out_h·out_w (the crossovers above)."""
    if groups == 1 and channels_per_group * kernel_size[0] * kernel_size[1] < DIRECT_MIN_TAPS_DENSE:
        return False
    if tuple(kernel_size) == (1, 1):
        return channels_per_group <= DIRECT_MAX_CHANNELS_1X1
    if channels_per_group <= DIRECT_MAX_CHANNELS:
        return True
    wide = out_channels_per_group % ROWS == 0
    return (wide and channels_per_group <= DIRECT_MAX_CHANNELS_WIDE and tuple(stride) == (1, 1)
            and out_pixels >= DIRECT_MIN_PIXELS_WIDE)


ITEM_ELEMENTS = 1024  # a work item stacks samples until its flat planes are about this long (see _Layout);
DEPTHWISE_STACK_BELOW = 256  # but with one input channel a group only planes smaller than this
ROWS = 8  # _gather_rows8 holds 8 rows (channels) x two vectors of pixels of sums in registers,
VECTOR_BYTES = 64  # vectors of 64 bytes (AVX-512): 16 float32 or 8 float64 pixels. Also the best on AVX2
# code (NUMBA_CPU_NAME=haswell, grouped C_g = O_g = 16, 1 thread): 64 bytes as two registers 1.2x faster than
# a 2 rows x 4 taps register block, 32 bytes 1.4x slower than that (measured with 16 rows x one vector)
LANES = 32  # so it rounds a run up by less than 32 pixels: the room buffers leave for it
DOT_CHUNK = 4096  # grad_weight's dot products run over k in chunks of this many pixels, all channels and taps
# a chunk, then the next: at 224x224 (50,625 pixels a plane) a pass of _dot_taps4 over the whole plane reads
# 1.6 MB, out of L2 (3x3 64->64 224x224 N=2 grad_weight, 2 threads: 45 -> 33.5 ms; 1024-8192 alike; planes
# of 32x32 and less are one chunk)


def grouped_conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y = grouped conv of x with weight (C_out, C_in/groups, k_h, k_w), plus bias."""
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight, dtype=x.dtype)
    n, c_out = x.shape[0], weight.shape[0]
    lanes = _vector_lanes(x)
    layout = _Layout(x.shape, weight.shape, stride, padding, dilation, forward_lanes=lanes)
    offsets, tap_weights = _forward_taps(weight, layout)
    bias = np.zeros(c_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty((n, c_out, layout.out_h, layout.out_w), x.dtype)
    with _serial_if_small(y.size * weight[0].size):
        _forward_items(x, offsets, layout.flat_bases(lanes), layout.vector_bases(layout.out_w, layout.out_h, lanes),
                       tap_weights, _by_rows(tap_weights, groups), bias, y, groups, *layout.scalars(),
                       _blocks(layout.items(groups)))
    return y


def grouped_conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, needs=(True, True, True)):
    """(grad_input, grad_weight, grad_bias); None where `needs` is False."""
    need_input, need_weight, need_bias = needs
    x = np.ascontiguousarray(x)
    grad_output = np.ascontiguousarray(grad_output, dtype=x.dtype)
    weight = np.ascontiguousarray(weight, dtype=x.dtype)
    n, c_out = grad_output.shape[:2]
    layout = _Layout(x.shape, weight.shape, stride, padding, dilation)
    offsets, tap_weights = _forward_taps(weight, layout)
    input_offsets, input_weights, input_spans = _grad_input_taps(weight, groups, layout)
    blocks = _blocks(layout.items(groups))
    grad_input = np.empty(x.shape if need_input else (0, 0, 0, 0), x.dtype)
    partial = np.zeros((blocks, c_out, offsets.size) if need_weight else (0, 0, 0), x.dtype)  # (B, C_out, T)
    lanes = _vector_lanes(x)
    input_row_bases = (layout.vector_bases(x.shape[3], x.shape[2], lanes) if tuple(stride) == (1, 1)  # one phase
                       else np.zeros(0, np.int64))
    if need_input or need_weight:
        with _serial_if_small(grad_output.size * weight[0].size * (need_input + need_weight)):
            _backward_items(grad_output, x, offsets, input_offsets, layout.flat_bases(lanes), input_row_bases,
                            input_weights, _by_rows(input_weights, groups), input_spans, grad_input, partial,
                            need_input, need_weight, groups, *layout.scalars(), blocks)
    grad_weight = None
    if need_weight:
        total = partial[0]
        for b in range(1, blocks):  # block order: the same sum at any thread count
            total += partial[b]
        grad_weight = total.reshape(weight.shape)  # (C_out, T) -> (C_out, C_g, k_h, k_w)
    grad_bias = bias_gradient(grad_output) if need_bias else None
    return (grad_input if need_input else None), grad_weight, grad_bias


def depthwise_conv2d_forward(x, weight, bias, stride, padding, dilation):
    """Depthwise: the grouped convolution with groups = C, weight (C·M, 1, k_h, k_w)."""
    return grouped_conv2d_forward(x, weight, bias, stride, padding, dilation, x.shape[1])


def depthwise_conv2d_backward(grad_output, x, weight, stride, padding, dilation, needs=(True, True, True)):
    """(grad_input, grad_weight, grad_bias) of depthwise_conv2d_forward; None where `needs` is False."""
    return grouped_conv2d_backward(grad_output, x, weight, stride, padding, dilation, x.shape[1], needs)


# ---------------------------------------------------------------------------
# the flat layout and the tap tables (NumPy, once per call)
# ---------------------------------------------------------------------------
class _Layout:
    """Sizes of the flat scratch buffers for one convolution (see the module docstring).

    H_p, W_p: the padded input rows/columns the output reads; rows: rows of one phase (H_p / stride_h,
    rounded up); pitch P: the row pitch of every flat buffer; plane = rows·P, the flat size of one phase
    of one channel of one sample, and of one output or grad_output plane with its margins;
    margin_h, margin_w: the zero margins (A, B) put around grad_output for the grad_input gather.
    At stride 1 rows, pitch and margins come from _shared_border instead (borders shared by neighbours);
    slack: zeros after each scratch buffer, for the reads past the last plane's end.

    samples: how many samples one work item stacks, plane after plane, so that a pass over k runs over
    about ITEM_ELEMENTS values. A pass over one 16x16 plane (286 values) ran at 60% of the speed of one
    over 2,860: the set-up, the vector remainder and, in _dot_taps, the horizontal sums come once per
    pass. 1024 measured best on 16x16 grouped (C_g = 16: 1 sample 19.3 ms backward, 2-8 samples
    16.5-16.7). With one input channel a group (depthwise), planes of DEPTHWISE_STACK_BELOW values or
    more go one to an item: its passes are few, so what they cost matters less than the streams each
    stacked sample adds, of x, grad_output and grad_input planes 128 KB apart (depthwise 3x3 C = 128,
    float32, 1 thread, backward: 16x16 3.7 ms at 1 sample, 4.1 at 2, 5.2 at 4; but 7x7, planes of 64
    values with their border: 3.0 ms at 1 sample, 1.75 at 4, 1.6 at 16). And one sample when the forward's
    output rows are whole vectors of `forward_lanes` pixels: its gathers then run sample by sample
    anyway, and stacking only adds streams (the same 16x16 layer: forward 1.90 -> 1.58 ms)."""

    def __init__(self, x_shape, weight_shape, stride, padding, dilation, forward_lanes=0):
        self.N, self.H, self.W = x_shape[0], x_shape[2], x_shape[3]
        k_h, k_w = weight_shape[2:]
        (self.stride_h, self.stride_w), (self.pad_h, self.pad_w), (dil_h, dil_w) = stride, padding, dilation
        self.dil_h, self.dil_w = dil_h, dil_w
        self.out_h = (x_shape[2] + 2 * self.pad_h - dil_h * (k_h - 1) - 1) // self.stride_h + 1
        self.out_w = (x_shape[3] + 2 * self.pad_w - dil_w * (k_w - 1) - 1) // self.stride_w + 1
        self.H_p = (self.out_h - 1) * self.stride_h + (k_h - 1) * dil_h + 1
        self.W_p = (self.out_w - 1) * self.stride_w + (k_w - 1) * dil_w + 1
        if (self.stride_h, self.stride_w) == (1, 1):
            self.rows, self.margin_h = _shared_border(self.H, self.pad_h, self.out_h, (k_h - 1) * dil_h)
            self.pitch, self.margin_w = _shared_border(self.W, self.pad_w, self.out_w, (k_w - 1) * dil_w)
        else:
            self.rows = _ceil_div(self.H_p, self.stride_h)
            phase_w = _ceil_div(self.W_p, self.stride_w)
            self.margin_h, self.margin_w = (k_h - 1) * dil_h // self.stride_h, (k_w - 1) * dil_w // self.stride_w
            # a row of a phase fits, and so does a row of grad_output with its left margin; reads past
            # a row's end land in the next row's left margin, which is zero (grad_input gather)
            self.pitch = max(phase_w, self.margin_w + self.out_w)
        self.plane = self.rows * self.pitch
        self.slack = (self.H_p + 2) * self.pitch + LANES  # more than the last plane's reads overrun,
        # also when _gather_rows8 rounds a run up to a whole vector
        whole_rows = forward_lanes and self.out_w % forward_lanes == 0
        stack = (weight_shape[1] > 1 or self.plane < DEPTHWISE_STACK_BELOW) and not whole_rows
        self.samples = max(1, min(self.N, _ceil_div(ITEM_ELEMENTS, self.plane))) if stack else 1

    def vector_bases(self, width, height, lanes):
        """Where the vectors of `lanes` pixels of a _gather_rows8 start in its source:
        `height` rows of `width` pixels, P apart, so that the output has no junk column; empty when width is
        not a whole number of vectors (the gathers then run flat, junk included)."""
        if width % lanes:
            return np.zeros(0, np.int64)
        v, per_row = np.arange(height * width // lanes), width // lanes
        return v // per_row * self.pitch + v % per_row * lanes

    def flat_bases(self, lanes):
        """The vectors of a flat gather, end to end: as many as an item's longest run takes."""
        return np.arange(_ceil_div(self.samples * self.plane, lanes) + 1) * lanes

    def items(self, groups):
        """Work items: (block of `samples` samples, group) pairs."""
        return _ceil_div(self.N, self.samples) * groups

    def scalars(self):
        """The ints the jitted kernels take, in their order."""
        return (self.pad_h, self.pad_w, self.stride_h, self.stride_w, self.H_p, self.W_p, self.rows, self.pitch,
                self.margin_h, self.margin_w, self.samples, self.slack)


def _shared_border(size, pad, out, extent):
    """(pitch, margin) of one axis at stride 1, where neighbours share their zero border: the zeros after a
    row (or a plane) are the zeros before the next one, so a row holds its leading zeros and its data, not
    the trailing ones (16x16, 3x3, pad 1: rows of 17, not 18, and 17 of them: 11% less to compute).

    size: the input's length; pad: the zeros before and after it; out: the output's length (size + 2·pad
    - extent); extent = dil·(k - 1). A row holds pad + size (and the output, longer when pad > extent);
    the forward reads up to size + 2·pad - 1 of it, past the row's end by less than pad: into the next
    row's leading zeros. grad_output sits `margin` = extent - pad (at least 0) after the start of its
    row: the grad_input gather of input position pad + w reads grad_output[w + pad - q·dil], q < k, at
    margin + w + pad - q·dil >= 0, and past the row's end (w + pad - q·dil >= out) the next row's
    margin, which is zero, as the past-the-end reads of every later row and plane are."""
    return max(pad + size, out), max(0, extent - pad)


def _forward_taps(weight, layout):
    """offsets (T,): where tap (c, p, q), T = C_g·k_h·k_w of them, starts in an item's phase scratch;
    tap_weights (C_out, T)."""
    c_out, c_g, k_h, k_w = weight.shape
    L = layout
    c, p, q = np.meshgrid(np.arange(c_g), np.arange(k_h), np.arange(k_w), indexing="ij")  # (C_g, k_h, k_w)
    phase = (p * L.dil_h % L.stride_h) * L.stride_w + q * L.dil_w % L.stride_w
    offsets = ((c * L.stride_h * L.stride_w + phase) * L.samples * L.plane + p * L.dil_h // L.stride_h * L.pitch
               + q * L.dil_w // L.stride_w)
    return offsets.reshape(-1).astype(np.int64), weight.reshape(c_out, -1)  # weight (C_out, C_g·k_h·k_w)


def _grad_input_taps(weight, groups, layout):
    """offsets (S, T), tap_weights (C_in, S, T), spans (S, 2): for input phase s = r·stride_w + t, the taps
    (o, p, q) of that phase, at offset[o, p, q] = o·samples·plane + (A - p·dil_h // stride_h)·P
    + B - q·dil_w // stride_w into the item's grad_output scratch, with weight w[g·O_g + o, c, p, q] for
    input channel g·C_g + c.
    T is the most taps any phase has; a phase with fewer gets zero-weight taps (offset 0).
    The gather runs over k in [first, first + count) = spans[s] of the phase, the part that holds input
    pixels (not padding): the offsets include `first`."""
    c_out, c_g, k_h, k_w = weight.shape
    o_g, L = c_out // groups, layout
    o, p, q = np.meshgrid(np.arange(o_g), np.arange(k_h), np.arange(k_w), indexing="ij")  # (O_g, k_h, k_w)
    phase = ((p * L.dil_h % L.stride_h) * L.stride_w + q * L.dil_w % L.stride_w).reshape(-1)
    offsets = (o * L.samples * L.plane + (L.margin_h - p * L.dil_h // L.stride_h) * L.pitch
               + L.margin_w - q * L.dil_w // L.stride_w).reshape(-1)
    by_input = (weight.reshape(groups, o_g, c_g, k_h * k_w).transpose(0, 2, 1, 3)  # (G, C_g, O_g, k_h·k_w)
                .reshape(groups * c_g, o_g * k_h * k_w))                          # (C_in, O_g·k_h·k_w)
    phases = L.stride_h * L.stride_w
    per_phase = [np.flatnonzero(phase == s) for s in range(phases)]
    n_taps = max(len(taps) for taps in per_phase)
    all_offsets = np.zeros((phases, n_taps), np.int64)
    all_weights = np.zeros((groups * c_g, phases, n_taps), weight.dtype)
    spans = np.zeros((phases, 2), np.int64)
    for s, taps in enumerate(per_phase):
        spans[s] = _phase_span(s // L.stride_w, s % L.stride_w, layout)
        all_offsets[s, :len(taps)] = offsets[taps] + spans[s, 0]
        all_weights[:, s, :len(taps)] = by_input[:, taps]
    return all_offsets, all_weights, spans


def _phase_span(r, t, layout):
    """(first, count): the flat range of phase (r, t) of one sample from its first to its last input pixel.

    Row a of the phase is padded row a·stride_h + r, input row h = a·stride_h + r - pad_h; the rows the
    forward reads are h < h_end = min(H, H_p - pad_h). Columns alike."""
    L = layout
    h_end, w_end = min(L.H, L.H_p - L.pad_h), min(L.W, L.W_p - L.pad_w)
    a_lo, a_hi = _ceil_div(L.pad_h - r, L.stride_h), _ceil_div(L.pad_h + h_end - r, L.stride_h)
    b_lo, b_hi = _ceil_div(L.pad_w - t, L.stride_w), _ceil_div(L.pad_w + w_end - t, L.stride_w)
    if a_hi <= a_lo or b_hi <= b_lo:
        return 0, 0
    return a_lo * L.pitch + b_lo, (a_hi - 1 - a_lo) * L.pitch + b_hi - b_lo


@njit(cache=True)
def _ceil_div(a, b):
    return -(-a // b)


@njit(cache=True)
def _int64_zero():
    """0 typed int64, for _gather_rows8's `first`. A literal 0 passed to a jitted function is typed
    Literal[int](0) and compiles it a second time beside its int64 signature: _gather_rows8 and
    _gather_vectors each had both (listed by their .signatures after a fresh compile), compiles of 1.4-2.2 s
    and 0.7 s by Numba's compile events. One signature each: a cold start (a 3x3 conv, a depthwise conv
    and a max pool, fwd+bwd, float32, three alternations on a busy machine) 26.2 -> 25.1 s median.
    _gather_vectors takes the other way: always the literal 0, its callers slicing dst at the
    offset (a 1-D slice is the same array type), which LLVM folds into its stores (depthwise forward 3-5%
    faster than with this run-time 0, measured); _gather_rows8's dst is 2-D, and a slice of its columns
    would be a third array type."""
    return np.int64(0)


def _by_rows(tap_weights, groups):
    """tap_weights (R, ..., T) as (R/ROWS, ..., T, ROWS): R rows (output channels for the forward, input
    channels for grad_input) ROWS at a time for _gather_rows8, the row last. Empty (0, ..., T, ROWS) when a
    group's rows are not a multiple of ROWS: then they go one at a time through _gather_vectors."""
    rows = tap_weights.shape[0]
    if (rows // groups) % ROWS:
        return np.zeros((0,) + tap_weights.shape[1:] + (ROWS,), tap_weights.dtype)
    blocks = tap_weights.reshape((rows // ROWS, ROWS) + tap_weights.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocks, 1, -1))


# ---------------------------------------------------------------------------
# the three loops everything is made of
# ---------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _four_runs(src, offsets, t, n):
    """The n-long runs of src that taps t ... t + 3 read, as slices: indexing src[offsets[t] + k] directly stays
    scalar (Numba's negative-index wraparound hides the affine address from LLVM; measured 4x), a slice's
    own index k runs from 0 and is not wrapped. (_gather_vectors indexes with np.uint64 instead.)"""
    return (src[offsets[t]:offsets[t] + n], src[offsets[t + 1]:offsets[t + 1] + n],
            src[offsets[t + 2]:offsets[t + 2] + n], src[offsets[t + 3]:offsets[t + 3] + n])


def _stack_array(size, dtype):
    """An uninitialised 1-D array of `size` (an integer literal) elements: np.empty in plain Python
    (NUMBA_DISABLE_JIT=1), on the stack in jitted code (_alloca below). LLVM keeps a stack array in a
    vector register when every index into it is a constant or the vectorised loop's; an np.empty array
    lives on the heap, out of LLVM's sight, and every update goes through memory."""
    return np.empty(size, dtype)


@overload(_stack_array, prefer_literal=True)
def _stack_array_jit(size, dtype):
    if not isinstance(size, types.IntegerLiteral):
        return None
    length = size.literal_value
    return lambda size, dtype: _alloca(length, dtype)


@intrinsic
def _alloca(typingctx, size, dtype):
    """The stack array of _stack_array: LLVM's alloca of `size` (a literal) elements, as a Numba array."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    length, element_type = size.literal_value, dtype.dtype
    array_type = types.Array(element_type, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_data_type(element_type)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(element))
        array = context.make_array(array_type)(context, builder)
        context.populate_array(array, data=cgutils.alloca_once(builder, element, size=length),
                               shape=[context.get_constant(types.intp, length)], strides=[itemsize],
                               itemsize=itemsize, meminfo=None)
        return array._getvalue()
    return array_type(size, dtype), codegen


def _vector_lanes(array):
    """How many of array's elements fill one vector of VECTOR_BYTES, as a compile-time constant (LLVM must
    see the loop's trip count to keep the sums in registers; array.itemsize is a run-time value to it)."""
    return VECTOR_BYTES // array.itemsize


@overload(_vector_lanes)
def _vector_lanes_jit(array):
    lanes = VECTOR_BYTES // (array.dtype.bitwidth // 8)
    if 2 * lanes > LANES:  # _gather_rows8's stack arrays hold LANES elements: float32 and float64 only
        raise TypeError(f"the direct kernel runs float32 and float64 arrays, got {array.dtype}")
    return lambda array: lanes


@njit(cache=True, fastmath=FASTMATH)
def _gather_rows8(dst, first, src, bases, offsets, weights, vectors, start):
    """dst[r, first + v·lanes + l] = start[r] + Σ_t weights[t, r] · src[offsets[t] + bases[v] + l]  for r < 8, the
    `vectors` vectors v of `lanes` pixels l: the source holds them where bases says (_Layout.vector_bases:
    one run, or rows of whole vectors), dst end to end. An odd last vector is computed twice.

    _gather_vectors's sum for 8 rows that share their source (a wide group's output channels): 8 rows
    × two vectors of pixels of sums stay in registers over ALL the taps. A tap costs two vector loads of
    src and 16 multiply-adds with its 8 row weights broadcast, and dst is written once. The sums are 8
    named stack arrays, each two vector registers; as one 2-D array indexed by a row loop they stayed in
    memory (measured 40x slower). 16 rows × one vector (one load of src, 16 broadcasts) ran 11% slower,
    4 rows × four vectors about the same. The sums run in tap order, as _gather_vectors's (the two give
    the same bits)."""
    dt, lanes = src.dtype, _vector_lanes(src)  # one vector: 16 float32 or 8 float64 pixels
    a0, a1, a2, a3 = _stack_array(LANES, dt), _stack_array(LANES, dt), _stack_array(LANES, dt), _stack_array(LANES, dt)
    a4, a5, a6, a7 = _stack_array(LANES, dt), _stack_array(LANES, dt), _stack_array(LANES, dt), _stack_array(LANES, dt)
    for v in range(0, vectors, 2):
        u = min(v + 1, vectors - 1)  # the second vector of the pair
        base_v, base_u = bases[v], bases[u]
        for l in range(2 * lanes):
            a0[l], a1[l], a2[l], a3[l] = start[0], start[1], start[2], start[3]
            a4[l], a5[l], a6[l], a7[l] = start[4], start[5], start[6], start[7]
        for t in range(offsets.size):
            x = src[offsets[t] + base_v:offsets[t] + base_v + lanes]
            z = src[offsets[t] + base_u:offsets[t] + base_u + lanes]
            w = weights[t]
            w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
            for l in range(lanes):
                p, q, m = x[l], z[l], lanes + l
                a0[l] += w0 * p; a1[l] += w1 * p; a2[l] += w2 * p; a3[l] += w3 * p  # noqa: E702
                a4[l] += w4 * p; a5[l] += w5 * p; a6[l] += w6 * p; a7[l] += w7 * p  # noqa: E702
                a0[m] += w0 * q; a1[m] += w1 * q; a2[m] += w2 * q; a3[m] += w3 * q  # noqa: E702
                a4[m] += w4 * q; a5[m] += w5 * q; a6[m] += w6 * q; a7[m] += w7 * q  # noqa: E702
        column_v, column_u = first + v * lanes, first + u * lanes
        _store_pair(dst[0], column_v, column_u, a0, lanes)
        _store_pair(dst[1], column_v, column_u, a1, lanes)
        _store_pair(dst[2], column_v, column_u, a2, lanes)
        _store_pair(dst[3], column_v, column_u, a3, lanes)
        _store_pair(dst[4], column_v, column_u, a4, lanes)
        _store_pair(dst[5], column_v, column_u, a5, lanes)
        _store_pair(dst[6], column_v, column_u, a6, lanes)
        _store_pair(dst[7], column_v, column_u, a7, lanes)


@njit(cache=True)
def _gather_planes8(planes, out, src, bases, offsets, weights, start):
    """planes[r] (r < 8, rows of a 2-D array, each a flat (height, width) plane) = start[r] + Σ_t weights[t, r]
    · src[offsets[t] + i·P + j] at (i, j): _gather_rows8 over rows of whole vectors (bases: width a
    multiple of the vector, _Layout.vector_bases), so no junk column is computed, through `out` (8 rows
    of height·width, in L1) and then one run per plane. Gathering straight into the 8 planes, a few
    vectors into each in turn, was slower than these runs: the stores missed the cache each time (grouped
    3x3 C_g = 16, 16x16, 1 thread: forward 9.0 ms flat with a copy-out of the junk, 8.3 straight into y,
    8.1 this way; the same store pattern alone, no arithmetic, 7x slower than writing y in order)."""
    _gather_rows8(out, _int64_zero(), src, bases, offsets, weights, bases.size, start)
    for r in range(ROWS):
        _copy_run(planes[r], 0, 1, out[r], 0, 1, bases.size * _vector_lanes(src))


@njit(cache=True, fastmath=FASTMATH)
def _gather_vectors(dst, first, src, bases, offsets, weights, vectors, start):
    """dst[first + v·lanes + l] = start + Σ_t weights[t] · src[offsets[t] + bases[v] + l]  for the `vectors`
    vectors v of `lanes` pixels l (bases as in _gather_rows8): one row (one output channel, or one input
    channel of grad_input), 8 vectors at a time. An odd last group of vectors repeats the last one.

    _gather_rows8 blocked the other way: 8 vectors × one row of sums stay in registers over ALL the taps,
    four named stack arrays of two vectors each. A tap is 8 vector loads of src and 8 multiply-adds with
    one broadcast weight, and dst is written once. (Depthwise 3x3, 16x16, float32, 1 thread: forward 2.6
    -> 1.6 ms against the 2 rows × 4 taps register block it replaced, which read and wrote dst every 4
    taps.) The sums run in tap order.

    The loads index src with np.uint64: a signed index makes Numba wrap negative ones around (index +
    size when index < 0), a select in every load that hides the affine address from LLVM, so the loop
    stays scalar (measured 4x slower). An unsigned index cannot be negative: no select, and LLVM forms
    vector loads. (Elsewhere slices, src[a:a + n][k], do the same job for a loop over one run.)"""
    dt, lanes = src.dtype, _vector_lanes(src)
    a0, a1, a2, a3 = _stack_array(LANES, dt), _stack_array(LANES, dt), _stack_array(LANES, dt), _stack_array(LANES, dt)
    last = vectors - 1
    for v0 in range(0, vectors, 8):
        b0, b1, b2, b3 = bases[v0], bases[min(v0 + 1, last)], bases[min(v0 + 2, last)], bases[min(v0 + 3, last)]
        b4, b5, b6, b7 = bases[min(v0 + 4, last)], bases[min(v0 + 5, last)], bases[min(v0 + 6, last)], bases[
            min(v0 + 7, last)]
        for l in range(2 * lanes):
            a0[l], a1[l], a2[l], a3[l] = start, start, start, start
        for t in range(offsets.size):
            _add_tap8(src, offsets[t], b0, b1, b2, b3, b4, b5, b6, b7, weights[t], a0, a1, a2, a3, lanes)
        for u in range(8):  # vector v0 + u is half u % 2 of sum array u // 2
            acc = a0 if u < 2 else (a1 if u < 4 else (a2 if u < 6 else a3))
            column, half = first + min(v0 + u, last) * lanes, (u % 2) * lanes
            for l in range(lanes):
                dst[np.uint64(column + l)] = acc[half + l]


@njit(cache=True, inline="always")
def _store_pair(row, column_v, column_u, sums, lanes):
    """row[column_v + l] = sums[l] and row[column_u + l] = sums[lanes + l] for l < lanes: a stack array of two
    vectors of sums out to a 1-D row. Two loops of a constant trip count over 1-D slices, so that each is one
    vector store: a 2-D slice dst[:, column:column + lanes], or an offset that varies at run time (a loop
    over the two halves), compiled to 16 scalar stores a vector: about 250 cycles a pass of _gather_rows8,
    14% of a 144-tap pass (grouped 3x3 C_g = 16, 16x16, 1 thread: forward 8.1-8.8 -> 7.4-8.1 ms side by side,
    the same bits). _gather_vectors keeps its own store loop, 1-D already: with this helper in its place
    the depthwise backward ran 2-13% slower (3.36-4.03 -> 3.52-4.58 ms, 1 thread, alternated in one process)
    and the forward no faster."""
    first, second = row[column_v:column_v + lanes], row[column_u:column_u + lanes]
    for l in range(lanes):
        first[l] = sums[l]
    for l in range(lanes):
        second[l] = sums[lanes + l]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _add_tap8(src, offset, b0, b1, b2, b3, b4, b5, b6, b7, weight, a0, a1, a2, a3, lanes):
    """One tap of _gather_vectors: a_{u // 2}[(u % 2)·lanes + l] += weight · src[offset + b_u + l], u < 8."""
    for l in range(lanes):
        m = lanes + l
        a0[l] += weight * src[np.uint64(offset + b0 + l)]; a0[m] += weight * src[np.uint64(offset + b1 + l)]  # noqa: E702
        a1[l] += weight * src[np.uint64(offset + b2 + l)]; a1[m] += weight * src[np.uint64(offset + b3 + l)]  # noqa: E702
        a2[l] += weight * src[np.uint64(offset + b4 + l)]; a2[m] += weight * src[np.uint64(offset + b5 + l)]  # noqa: E702
        a3[l] += weight * src[np.uint64(offset + b6 + l)]; a3[m] += weight * src[np.uint64(offset + b7 + l)]  # noqa: E702


@njit(cache=True, fastmath=FASTMATH)
def _dot_taps(acc0, acc1, two, g0, g1, src, offsets, n):
    """acc0[t] += Σ_k g0[k] · src[offsets[t] + k]  for k < n, and the same for acc1 with g1 when `two`: the
    adjoint of the forward gather with respect to the weights, 2 rows × 4 taps per pass, then one tap per
    pass (not zero-weight padding: for 3x3 depthwise, T = 9, that wasted a quarter of the work).
    The sums start from acc[t], so they are typed as the arrays (a literal 0.0 would make a float32 sum an
    unvectorised float64 one)."""
    g0, g1 = g0[:n], g1[:n]
    blocked = offsets.size - offsets.size % 4  # taps in passes of 4; then one pass per remaining tap
    for t in range(0, blocked, 4):
        s0, s1, s2, s3 = _four_runs(src, offsets, t, n)
        a0, a1, a2, a3 = acc0[t], acc0[t + 1], acc0[t + 2], acc0[t + 3]
        b0, b1, b2, b3 = acc1[t], acc1[t + 1], acc1[t + 2], acc1[t + 3]
        for k in range(n):
            x0, x1, x2, x3 = s0[k], s1[k], s2[k], s3[k]
            a0 += g0[k] * x0
            a1 += g0[k] * x1
            a2 += g0[k] * x2
            a3 += g0[k] * x3
            if two:
                b0 += g1[k] * x0
                b1 += g1[k] * x1
                b2 += g1[k] * x2
                b3 += g1[k] * x3
        acc0[t], acc0[t + 1], acc0[t + 2], acc0[t + 3] = a0, a1, a2, a3
        if two:
            acc1[t], acc1[t + 1], acc1[t + 2], acc1[t + 3] = b0, b1, b2, b3
    for t in range(blocked, offsets.size):
        s0 = src[offsets[t]:offsets[t] + n]
        a0, b0 = acc0[t], acc1[t]
        for k in range(n):
            a0 += g0[k] * s0[k]
            if two:
                b0 += g1[k] * s0[k]
        acc0[t] = a0
        if two:
            acc1[t] = b0


@njit(cache=True, fastmath=FASTMATH)
def _dot_taps4(acc, g, g_pitch, src, offsets, n):
    """acc[r, t] += Σ_k g[r·g_pitch + k] · src[offsets[t] + k]  for r < 4 and k < n: _dot_taps for 4 rows (output
    channels) at once, 4 rows × 4 taps per pass, 16 sums in registers: each step loads 4 + 4 values for
    16 multiply-adds, where _dot_taps's 2 × 4 loads 2 + 4 for 8 (1.5x faster, measured on 16 channels a
    group). The last T % 4 taps take one pass each."""
    g0, g1, g2, g3 = g[:n], g[g_pitch:g_pitch + n], g[2 * g_pitch:2 * g_pitch + n], g[3 * g_pitch:3 * g_pitch + n]
    blocked = offsets.size - offsets.size % 4  # as in _dot_taps
    for t in range(0, blocked, 4):
        s0, s1, s2, s3 = _four_runs(src, offsets, t, n)
        a00, a01, a02, a03 = acc[0, t], acc[0, t + 1], acc[0, t + 2], acc[0, t + 3]
        a10, a11, a12, a13 = acc[1, t], acc[1, t + 1], acc[1, t + 2], acc[1, t + 3]
        a20, a21, a22, a23 = acc[2, t], acc[2, t + 1], acc[2, t + 2], acc[2, t + 3]
        a30, a31, a32, a33 = acc[3, t], acc[3, t + 1], acc[3, t + 2], acc[3, t + 3]
        for k in range(n):
            x0, x1, x2, x3 = s0[k], s1[k], s2[k], s3[k]
            y0, y1, y2, y3 = g0[k], g1[k], g2[k], g3[k]
            a00 += y0 * x0; a01 += y0 * x1; a02 += y0 * x2; a03 += y0 * x3  # noqa: E702
            a10 += y1 * x0; a11 += y1 * x1; a12 += y1 * x2; a13 += y1 * x3  # noqa: E702
            a20 += y2 * x0; a21 += y2 * x1; a22 += y2 * x2; a23 += y2 * x3  # noqa: E702
            a30 += y3 * x0; a31 += y3 * x1; a32 += y3 * x2; a33 += y3 * x3  # noqa: E702
        acc[0, t], acc[0, t + 1], acc[0, t + 2], acc[0, t + 3] = a00, a01, a02, a03
        acc[1, t], acc[1, t + 1], acc[1, t + 2], acc[1, t + 3] = a10, a11, a12, a13
        acc[2, t], acc[2, t + 1], acc[2, t + 2], acc[2, t + 3] = a20, a21, a22, a23
        acc[3, t], acc[3, t + 1], acc[3, t + 2], acc[3, t + 3] = a30, a31, a32, a33
    for t in range(blocked, offsets.size):
        s0 = src[offsets[t]:offsets[t] + n]
        a0, a1, a2, a3 = acc[0, t], acc[1, t], acc[2, t], acc[3, t]
        for k in range(n):
            x0 = s0[k]
            a0 += g0[k] * x0; a1 += g1[k] * x0; a2 += g2[k] * x0; a3 += g3[k] * x0  # noqa: E702
        acc[0, t], acc[1, t], acc[2, t], acc[3, t] = a0, a1, a2, a3


@njit(cache=True, inline="always")
def _copy_plane(plane, flat, first, pad_h, pad_w, stride_h, stride_w, H_p, W_p, phase_stride, pitch, to_flat):
    """Between plane (H, W) and its padded phases in flat: plane[h, w] <-> flat[first + (r·stride_w + t)·phase_stride
    + a·pitch + b] where h + pad_h = a·stride_h + r < H_p and w + pad_w = b·stride_w + t < W_p.

    to_flat: copy the plane into flat (the rest of flat is left alone: zero padding stays zero).
    Else: copy flat into the plane, and zero the plane where h + pad_h ≥ H_p or w + pad_w ≥ W_p.
    Inlined: called once a plane, a call's set-up cost depthwise's 16x16 forward 5-10% (one plane an item)."""
    H, W = plane.shape
    h_end, w_end = max(0, min(H, H_p - pad_h)), max(0, min(W, W_p - pad_w))
    if not to_flat:
        plane[h_end:, :] = 0
        plane[:h_end, w_end:] = 0
    if stride_h == 1 and stride_w == 1:  # one phase: plain row copies, the common case (the general loop
        for h in range(h_end):           # below costs it 1.5x: per-row phase stepping and branches, measured)
            run = first + (h + pad_h) * pitch + pad_w
            if to_flat:
                _copy_run(flat, run, 1, plane[h], 0, 1, w_end)
            else:
                _copy_run(plane[h], 0, 1, flat, run, 1, w_end)
        return
    for t in range(stride_w):  # the column phase; its columns w are w0, w0 + stride_w, ...
        w0 = (t - pad_w) % stride_w
        count = max(0, (w_end - w0 + stride_w - 1) // stride_w)
        b0 = (w0 + pad_w) // stride_w
        a, r = pad_h // stride_h, pad_h % stride_h  # h + pad_h = a·stride_h + r, stepped without dividing
        for h in range(h_end):                      # (divisions per row cost more than a 16-pixel copy)
            run = first + (r * stride_w + t) * phase_stride + a * pitch + b0
            if to_flat:
                _copy_run(flat, run, 1, plane[h], w0, stride_w, count)
            else:
                _copy_run(plane[h], w0, stride_w, flat, run, 1, count)
            r += 1
            if r == stride_h:
                a, r = a + 1, 0


@njit(cache=True, inline="always")
def _copy_run(dst, dst_first, dst_step, src, src_first, src_step, count):
    """dst[dst_first + m·dst_step] = src[src_first + m·src_step] for m < count. The steps-1 branch is the one
    LLVM vectorises (3-8x faster on 16-pixel rows, measured); slices, not offset indexing (_four_runs)."""
    if dst_step == 1 and src_step == 1:
        d, s = dst[dst_first:dst_first + count], src[src_first:src_first + count]
        for m in range(count):
            d[m] = s[m]
    else:
        for m in range(count):
            dst[dst_first + m * dst_step] = src[src_first + m * src_step]


# ---------------------------------------------------------------------------
# forward and backward: one prange over blocks of (sample, group) items
# ---------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _forward_items(x, offsets, flat_bases, row_bases, tap_weights, row_weights, bias, y, groups, pad_h, pad_w, stride_h,
                   stride_w, H_p, W_p, rows, pitch, margin_h, margin_w, samples, slack, blocks):
    # N batch, C_g input / O_g output channels per group, S = stride_h·stride_w phases; an item is (block of
    # `samples` samples from n0, group g); plane = rows·pitch; xp (C_g, S, samples, plane) its input in
    # phases; out (8 or 1, samples·plane + LANES) output channels of its samples, flat: 8 at a time through
    # _gather_rows8 when O_g is a multiple of 8 (row_weights not empty), else one at a time through
    # _gather_vectors. When out_w is a whole number of vectors (row_bases not empty) the gathers run over
    # the output rows sample by sample, 8 channels through _gather_planes8, one straight into y
    N, C_in = x.shape[:2]
    C_out, out_h, out_w = y.shape[1:]
    c_g, o_g = C_in // groups, C_out // groups
    plane, phases = rows * pitch, stride_h * stride_w
    n_out = (out_h - 1) * pitch + out_w  # one sample's output span
    wide = row_weights.shape[0] > 0
    step = ROWS if wide else 1  # output channels a pass
    lanes = _vector_lanes(x)
    whole_rows = row_bases.size > 0  # output rows of whole vectors
    if whole_rows and samples != 1:  # the row gathers below read one sample an item (_Layout's forward_lanes)
        raise ValueError("a forward over rows of whole vectors needs items of one sample")
    y_rows = y.reshape(N * C_out, out_h * out_w)
    for b in prange(blocks):
        xp = np.zeros(c_g * phases * samples * plane + slack, x.dtype)  # padding never written: stays zero
        out = np.empty((step, samples * plane + LANES), x.dtype)
        lo, hi = _block(b, blocks, _ceil_div(N, samples) * groups)
        for item in range(lo, hi):
            n0, g = item // groups * samples, item % groups
            count = min(samples, N - n0)
            n = (count - 1) * plane + n_out
            for s in range(count):
                for c in range(c_g):
                    _copy_plane(x[n0 + s, g * c_g + c], xp, (c * phases * samples + s) * plane, pad_h, pad_w,
                                stride_h, stride_w, H_p, W_p, samples * plane, pitch, True)
            for o in range(g * o_g, (g + 1) * o_g, step):
                if whole_rows:  # no junk column; an item is then one sample (checked above)
                    if wide:
                        _gather_planes8(y_rows[n0 * C_out + o:], out, xp, row_bases, offsets, row_weights[o // ROWS],
                                        bias[o:o + ROWS])
                    else:
                        _gather_vectors(y_rows[n0 * C_out + o], 0, xp, row_bases, offsets, tap_weights[o],
                                        row_bases.size, bias[o])
                    continue
                if wide:
                    _gather_rows8(out, _int64_zero(), xp, flat_bases, offsets, row_weights[o // ROWS],
                                  _ceil_div(n, lanes), bias[o:o + ROWS])
                else:
                    _gather_vectors(out[0], 0, xp, flat_bases, offsets, tap_weights[o], _ceil_div(n, lanes), bias[o])
                for r in range(step):
                    for s in range(count):
                        _copy_plane(y[n0 + s, o + r], out[r], s * plane, 0, 0, 1, 1, out_h, out_w, 0, pitch, False)


@njit(cache=True, parallel=True)
def _backward_items(grad_output, x, offsets, input_offsets, flat_bases, input_row_bases, input_weights,
                    input_row_weights, input_spans, grad_input, partial, need_input, need_weight, groups, pad_h, pad_w,
                    stride_h, stride_w, H_p, W_p, rows, pitch, margin_h, margin_w, samples, slack, blocks):
    # Items, planes, S and xp as in the forward. gp (O_g, samples, plane) + slack: the item's grad_output
    # planes, each with zero margins (margin_h rows above, margin_w columns left); grad_xp (8 or 1, S, samples,
    # plane) + LANES: input channels' grads in phases, 8 at a time through _gather_rows8 when C_g is 8k
    # (input_row_weights not empty), else one at a time through _gather_vectors; at stride 1 with W a whole
    # number of vectors (input_row_bases not empty) over the input rows, as the forward's. partial
    # (B, C_out, T) written at [b] by block b only: output channels 4 at a time through _dot_taps4 when O_g is
    # a multiple of 4, else in pairs through _dot_taps, an odd last one alone
    N, C_in = x.shape[:2]
    C_out, out_h, out_w = grad_output.shape[1:]
    c_g, o_g = C_in // groups, C_out // groups
    plane, phases = rows * pitch, stride_h * stride_w
    n_out = (out_h - 1) * pitch + out_w
    g_first = margin_h * pitch + margin_w  # where g[0, 0] sits in its plane: from there it is an output plane
    zeros = np.zeros(ROWS, x.dtype)  # each grad_input gather starts from 0 typed as x (a float64 0.0 promotes)
    wide_input = input_row_weights.shape[0] > 0
    lanes = _vector_lanes(x)
    H, W = x.shape[2:]
    grad_input_rows = grad_input.reshape(grad_input.shape[0] * grad_input.shape[1], H * W if need_input else 0)
    input_step = ROWS if wide_input else 1  # input channels a grad_input pass
    weight_step = 4 if o_g % 4 == 0 else 2  # output channels a grad_weight pass
    for b in prange(blocks):
        gp = np.zeros(o_g * samples * plane + slack, x.dtype)  # + what the last gather overreads
        xp = np.zeros(c_g * phases * samples * plane + slack if need_weight else 0, x.dtype)
        grad_xp = np.empty((input_step, phases * samples * plane + LANES if need_input else 0), x.dtype)
        lo, hi = _block(b, blocks, _ceil_div(N, samples) * groups)
        for item in range(lo, hi):
            n0, g = item // groups * samples, item % groups
            count = min(samples, N - n0)
            for o in range(o_g):
                for s in range(count):
                    _copy_plane(grad_output[n0 + s, g * o_g + o], gp, (o * samples + s) * plane, margin_h, margin_w,
                                1, 1, margin_h + out_h, margin_w + out_w, 0, pitch, True)
            # grad_input and grad_weight in two separate loops, not one loop with both branches
            # inside: with run-time flags in one loop body LLVM stopped vectorising (measured 4x slower)
            if need_input:
                for c in range(g * c_g, (g + 1) * c_g, input_step):
                    if input_row_bases.size > 0:  # rows of whole vectors, as in the forward
                        for s in range(count):
                            if wide_input:
                                _gather_planes8(grad_input_rows[(n0 + s) * C_in + c:], grad_xp, gp[s * plane:],
                                                input_row_bases, input_offsets[0], input_row_weights[c // ROWS, 0],
                                                zeros)
                            else:
                                _gather_vectors(grad_input_rows[(n0 + s) * C_in + c], 0, gp[s * plane:],
                                                input_row_bases, input_offsets[0], input_weights[c, 0],
                                                input_row_bases.size, zeros[0])
                        continue
                    for phase in range(phases):
                        first = phase * samples * plane + input_spans[phase, 0]
                        n = (count - 1) * plane + input_spans[phase, 1]
                        if wide_input:
                            _gather_rows8(grad_xp, first, gp, flat_bases, input_offsets[phase],
                                          input_row_weights[c // ROWS, phase], _ceil_div(n, lanes), zeros)
                        else:
                            _gather_vectors(grad_xp[0, first:], 0, gp, flat_bases, input_offsets[phase],
                                            input_weights[c, phase], _ceil_div(n, lanes), zeros[0])
                    for r in range(input_step):
                        for s in range(count):
                            _copy_plane(grad_input[n0 + s, c + r], grad_xp[r], s * plane, pad_h, pad_w, stride_h,
                                        stride_w, H_p, W_p, samples * plane, pitch, False)
            if need_weight:
                for s in range(count):
                    for c in range(c_g):
                        _copy_plane(x[n0 + s, g * c_g + c], xp, (c * phases * samples + s) * plane, pad_h, pad_w,
                                    stride_h, stride_w, H_p, W_p, samples * plane, pitch, True)
                n = (count - 1) * plane + n_out
                for k0 in range(0, n, DOT_CHUNK):  # every channel and tap over one chunk of k, then the next
                    chunk, first = min(DOT_CHUNK, n - k0), g_first + k0
                    for o in range(0, o_g, weight_step):
                        done = min(weight_step, o_g - o)  # output channels this pass: 4, 2 or the odd last one
                        o1 = o + done - 1
                        if weight_step == 4:
                            _dot_taps4(partial[b, g * o_g + o:g * o_g + o + 4], gp[o * samples * plane + first:],
                                       samples * plane, xp[k0:], offsets, chunk)
                        else:
                            _dot_taps(partial[b, g * o_g + o], partial[b, g * o_g + o1], done == 2,
                                      gp[o * samples * plane + first:], gp[o1 * samples * plane + first:], xp[k0:],
                                      offsets, chunk)


"""Depthwise convolution: a direct kernel, one (n, c) plane at a time.

Notation: x (N, C, H, W) input; M the channel multiplier; weight
(C·M, 1, k_h, k_w); y (N, C·M, out_h, out_w). Output channel o reads only
input channel o // M. This is conv2d with groups = C, written without
im2col: each output channel sees one input plane, so im2col would build
k_h·k_w copies of the plane for a GEMM with a single row.

    y[n,o,i,j] = b[o] + Σ_{p,q} w[o,0,p,q] · x[n, o//M, i·stride_h - pad_h + p·dil_h,
                                                   j·stride_w - pad_w + q·dil_w]

(x is zero outside the image.)  Output size, per axis:

    out = (H + 2·pad - dil·(k - 1) - 1) // stride + 1

Gradients, with g = grad_output and xp = x zero-padded by (pad_h, pad_w):

    grad_input[n,c]      = crop of  Σ_{m<M} Σ_{p,q} w[cM+m,0,p,q] · g[n,cM+m,i,j]
                           added at xp position (i·stride_h + p·dil_h, j·stride_w + q·dil_w)
                           (the transposed convolution, as a scatter per plane)
    grad_weight[o,0,p,q] = Σ_{n,i,j} g[n,o,i,j] · xp[n, o//M, i·stride_h + p·dil_h, j·stride_w + q·dil_w]
    grad_bias[o]         = Σ_{n,i,j} g[n,o,i,j]

How it is made fast (benchmarks/bench_dw_deform_dev.py measures it). The op
is memory-bound and its planes are small, so:

* each thread owns a chunk of (n, c) planes and one set of scratch buffers,
  reused for every plane of the chunk (no allocation per channel);
* the input plane is copied into a zero-padded scratch plane xp of row
  pitch P, so no index is ever negative and no border test is needed;
* a plane is treated as ONE long row. Output pixel (i, j) lives at
  k = i·Q + j of a flat output buffer with row pitch Q = stride_h·P/stride_w
  (P is rounded up to a multiple of stride_w), and its tap (p, q) reads

      xp_flat[stride_w·k + p·dil_h·P + q·dil_w]

  so each tap is one axpy over the whole plane. With stride 1 that is a
  contiguous loop of out_h·P elements which LLVM vectorises (per-row loops
  of 16 elements were too short for its vector width, measured 3-4x
  slower); the k_w - 1 junk columns per row are cropped away. With a
  stride, row by row (junk would be half the work);
* the backward uses the same layout: the scatter for grad_input goes into a
  thread-private padded plane; grad_weight is a dot product per tap into a
  partial array indexed by the prange plane (n, o), summed over n outside
  the parallel loop, so no two threads ever write the same element.
* below conv2d's _SERIAL_MULTIPLY_ADDS multiply-adds a call runs on one
  thread (waking the others costs milliseconds on a busy machine).

>>> import numpy as np
>>> x = np.ones((2, 3, 8, 8), np.float32)
>>> w = np.ones((6, 1, 3, 3), np.float32)
>>> depthwise_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1)).shape
(2, 6, 8, 8)
"""
import numpy as np
from numba import get_num_threads, njit, prange

from kernels.conv2d import _serial_if_small  # small work on one thread (waking threads costs ~8 ms under load)

# Fast-math subset allowed by STYLE.md 13 (no -inf or NaN tricks in this op):
# 'contract' gives FMAs, 'reassoc' lets LLVM vectorise the grad_weight sums.
FASTMATH = {"reassoc", "contract", "nsz"}


def depthwise_conv2d_forward(x, weight, bias, stride, padding, dilation):
    """y = depthwise conv of x with weight (C·M, 1, k_h, k_w), plus bias."""
    n, c, h, w = x.shape
    c_out, _, k_h, k_w = weight.shape
    out_h = _out_size(h, k_h, stride[0], padding[0], dilation[0])
    out_w = _out_size(w, k_w, stride[1], padding[1], dilation[1])
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight, dtype=x.dtype)
    bias = np.zeros(c_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty((n, c_out, out_h, out_w), x.dtype)
    with _serial_if_small(y.size * k_h * k_w):
        _forward_planes(x, weight, bias, y, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                        _n_chunks(n * c))
    return y


def depthwise_conv2d_backward(grad_output, x, weight, stride, padding, dilation, needs=(True, True, True)):
    """(grad_input, grad_weight, grad_bias); None where `needs` is False."""
    need_input, need_weight, need_bias = needs
    x = np.ascontiguousarray(x)
    grad_output = np.ascontiguousarray(grad_output, dtype=x.dtype)
    weight = np.ascontiguousarray(weight, dtype=x.dtype)
    n, c_out = grad_output.shape[:2]
    k_h, k_w = weight.shape[2:]
    grad_input = np.empty(x.shape if need_input else (0, 0, 0, 0), x.dtype)
    weight_partial = np.empty((n, c_out, k_h, k_w) if need_weight else (0, 0, 0, 0), x.dtype)
    if need_input or need_weight:
        with _serial_if_small(grad_output.size * k_h * k_w * (need_input + need_weight)):
            _backward_planes(grad_output, x, weight, grad_input, weight_partial, need_input, need_weight,
                             stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                             _n_chunks(x.shape[0] * x.shape[1]))
    grad_weight = weight_partial.sum(axis=0)[:, None] if need_weight else None  # (C·M, 1, k_h, k_w)
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if need_bias else None
    return (grad_input if need_input else None), grad_weight, grad_bias


def _out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _n_chunks(n_planes):
    """One chunk of planes per Numba thread (each chunk owns one set of scratch buffers).

    Read here, not in the jitted code: get_num_threads() there stops Numba from caching."""
    return max(1, min(n_planes, get_num_threads()))


# ---------------------------------------------------------------------------
# the flat-plane layout and the three loops everything is made of
# ---------------------------------------------------------------------------
@njit(cache=True)
def _layout(out_h, out_w, k_h, k_w, stride_h, stride_w, dil_h, dil_w):
    """(H_p, P, Q, n_seg, seg_len): padded rows and pitch, output pitch, and the
    segments (one long one at stride 1, else one per output row) the taps run over."""
    H_p = (out_h - 1) * stride_h + (k_h - 1) * dil_h + 1
    W_p = (out_w - 1) * stride_w + (k_w - 1) * dil_w + 1
    P = stride_w * ((W_p + stride_w - 1) // stride_w)
    Q = stride_h * P // stride_w
    if stride_h == 1 and stride_w == 1:
        return H_p, P, Q, 1, (out_h - 1) * Q + out_w
    return H_p, P, Q, out_h, out_w


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _axpy(dst, dst_first, a, src, src_first, step, n):
    """dst[dst_first + k] += a · src[src_first + k·step]  for k < n.

    The step == 1 branch is the one LLVM vectorises (a run-time step stays scalar)."""
    d = dst[dst_first:dst_first + n]
    if step == 1:
        s = src[src_first:src_first + n]
        for k in range(n):
            d[k] += a * s[k]
    else:
        for k in range(n):
            d[k] += a * src[src_first + k * step]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _scatter_axpy(dst, dst_first, step, a, src, src_first, n):
    """dst[dst_first + k·step] += a · src[src_first + k]  for k < n (the adjoint of _axpy)."""
    s = src[src_first:src_first + n]
    if step == 1:
        d = dst[dst_first:dst_first + n]
        for k in range(n):
            d[k] += a * s[k]
    else:
        for k in range(n):
            dst[dst_first + k * step] += a * s[k]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _dot(acc, a, a_first, b, b_first, step, n):
    """acc + Σ_k a[a_first + k] · b[b_first + k·step]; `acc` comes in typed as the arrays
    (a literal 0.0 would turn a float32 sum into an unvectorised float64 one)."""
    a = a[a_first:a_first + n]
    if step == 1:
        b = b[b_first:b_first + n]
        for k in range(n):
            acc += a[k] * b[k]
    else:
        for k in range(n):
            acc += a[k] * b[b_first + k * step]
    return acc


@njit(cache=True)
def _plane_to_flat(flat, pitch, plane, row0, col0, max_rows, max_cols):
    """flat[(row0 + h)·pitch + col0 + w] = plane[h, w] for h < max_rows, w < max_cols."""
    H, W = plane.shape
    for h in range(min(H, max_rows)):
        base = (row0 + h) * pitch + col0
        for w in range(min(W, max_cols)):
            flat[base + w] = plane[h, w]


@njit(cache=True)
def _flat_to_plane(plane, flat, pitch, row0, col0, max_rows, max_cols):
    """plane[h, w] = flat[(row0 + h)·pitch + col0 + w]; zero where h ≥ max_rows or w ≥ max_cols."""
    H, W = plane.shape
    for h in range(H):
        base = (row0 + h) * pitch + col0
        for w in range(W):
            plane[h, w] = flat[base + w] if h < max_rows and w < max_cols else 0


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------
@njit(cache=True, fastmath=FASTMATH)
def _correlate_plane(xp, P, Q, n_seg, seg_len, w, b, out, stride_h, stride_w, dil_h, dil_w):
    """out[k] = b + Σ_{p,q} w[p, q] · xp[stride_w·k + p·dil_h·P + q·dil_w] over the segments."""
    k_h, k_w = w.shape
    out[:] = b
    for seg in range(n_seg):
        k0 = seg * Q
        for p in range(k_h):
            for q in range(k_w):
                _axpy(out, k0, w[p, q], xp, stride_w * k0 + p * dil_h * P + q * dil_w, stride_w, seg_len)


@njit(cache=True, parallel=True)
def _forward_planes(x, weight, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n_chunks):
    # N batch, C input channels, M multiplier, C_out = C·M; xp (H_p·P) padded input plane, out (out_h·Q) flat output
    N, C, H, W = x.shape
    C_out, _, k_h, k_w = weight.shape
    M = C_out // C
    out_h, out_w = y.shape[2:]
    H_p, P, Q, n_seg, seg_len = _layout(out_h, out_w, k_h, k_w, stride_h, stride_w, dil_h, dil_w)
    W_p = (out_w - 1) * stride_w + (k_w - 1) * dil_w + 1
    for chunk in prange(n_chunks):
        xp = np.zeros(H_p * P, x.dtype)  # its border is never written, so it stays zero
        out = np.empty(out_h * Q, x.dtype)
        for plane in range(chunk * N * C // n_chunks, (chunk + 1) * N * C // n_chunks):
            n, c = plane // C, plane % C
            _plane_to_flat(xp, P, x[n, c], pad_h, pad_w, H_p - pad_h, W_p - pad_w)
            for o in range(c * M, (c + 1) * M):
                _correlate_plane(xp, P, Q, n_seg, seg_len, weight[o, 0], bias[o], out,
                                 stride_h, stride_w, dil_h, dil_w)
                _flat_to_plane(y[n, o], out, Q, 0, 0, out_h, out_w)


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------
@njit(cache=True, fastmath=FASTMATH)
def _scatter_plane(g_flat, P, Q, n_seg, seg_len, w, grad_xp, stride_h, stride_w, dil_h, dil_w):
    """grad_xp[stride_w·k + p·dil_h·P + q·dil_w] += w[p, q] · g_flat[k]: one output plane's share of grad_input."""
    k_h, k_w = w.shape
    for seg in range(n_seg):
        k0 = seg * Q
        for p in range(k_h):
            for q in range(k_w):
                _scatter_axpy(grad_xp, stride_w * k0 + p * dil_h * P + q * dil_w, stride_w, w[p, q],
                              g_flat, k0, seg_len)


@njit(cache=True, fastmath=FASTMATH)
def _weight_grad_plane(g_flat, P, Q, n_seg, seg_len, xp, w_partial, stride_h, stride_w, dil_h, dil_w):
    """w_partial[p, q] = Σ_k g_flat[k] · xp[stride_w·k + p·dil_h·P + q·dil_w]: one plane's grad_weight share."""
    k_h, k_w = w_partial.shape
    w_partial[:, :] = 0
    for seg in range(n_seg):
        k0 = seg * Q
        for p in range(k_h):
            for q in range(k_w):
                w_partial[p, q] = _dot(w_partial[p, q], g_flat, k0, xp,
                                       stride_w * k0 + p * dil_h * P + q * dil_w, stride_w, seg_len)


@njit(cache=True, parallel=True)
def _backward_planes(grad_output, x, weight, grad_input, weight_partial, need_input, need_weight,
                     stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n_chunks):
    # N batch, C input channels, M multiplier; xp / grad_xp (H_p·P) padded planes, g_flat (out_h·Q) with zero junk
    # columns; weight_partial (N, C·M, k_h, k_w) is written at [n, o] only by the thread owning plane (n, o // M).
    N, C, H, W = x.shape
    C_out, _, k_h, k_w = weight.shape
    M = C_out // C
    out_h, out_w = grad_output.shape[2:]
    H_p, P, Q, n_seg, seg_len = _layout(out_h, out_w, k_h, k_w, stride_h, stride_w, dil_h, dil_w)
    W_p = (out_w - 1) * stride_w + (k_w - 1) * dil_w + 1
    for chunk in prange(n_chunks):
        xp = np.zeros(H_p * P, x.dtype)
        grad_xp = np.empty(H_p * P, x.dtype)
        g_flat = np.zeros(out_h * Q, x.dtype)  # junk columns j ≥ out_w stay zero: they scatter nothing
        for plane in range(chunk * N * C // n_chunks, (chunk + 1) * N * C // n_chunks):
            n, c = plane // C, plane % C
            if need_weight:
                _plane_to_flat(xp, P, x[n, c], pad_h, pad_w, H_p - pad_h, W_p - pad_w)
            if need_input:
                grad_xp[:] = 0
            # two separate calls, not one loop with both branches inside: with run-time flags in one
            # loop body LLVM stopped vectorising the reduction (measured 4x slower)
            for o in range(c * M, (c + 1) * M):
                _plane_to_flat(g_flat, Q, grad_output[n, o], 0, 0, out_h, out_w)
                if need_input:
                    _scatter_plane(g_flat, P, Q, n_seg, seg_len, weight[o, 0], grad_xp,
                                   stride_h, stride_w, dil_h, dil_w)
                if need_weight:
                    _weight_grad_plane(g_flat, P, Q, n_seg, seg_len, xp, weight_partial[n, o],
                                       stride_h, stride_w, dil_h, dil_w)
            if need_input:
                _flat_to_plane(grad_input[n, c], grad_xp, P, pad_h, pad_w, H_p - pad_h, W_p - pad_w)

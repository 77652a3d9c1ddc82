"""Suite `conv-algos`: one layer, several algorithms, so a reader sees when each wins.

The kernels module functions are called directly on NumPy arrays (no
Tensor, no tape), forward and forward+backward (grad-input and grad-weight):

  depthwise 3x3, N=64 C=128 16x16 (MACs = N C H W 9):
    direct             kernels.depthwise: the taps gathered from zero-padded planes, no columns
    grouped im2col     kernels.conv2d with groups=C: im2col, then C tiny (1 x 9)·(9 x HW) GEMMs per sample
    dense im2col       kernels.conv2d with groups=1 and a block-diagonal C x C weight: one big
                       GEMM that does C times the useful multiply-adds (the zeros)
  pointwise 1x1, N=64 C=128->128 16x16:
    pointwise path     kernels.conv2d: x[n] already is the (C, HW) column matrix, GEMM only
    im2col + GEMM      kernels.im2col.im2col (a plain copy for 1x1) then the same GEMM
  dense 3x3, N=64 C=64->64 32x32:
    direct             kernels.depthwise with groups=1: 8 output channels x 32 pixels of sums in
                       registers over all 576 taps, no columns, no GEMM (what F.conv2d runs here)
    kernels.conv2d     per-block buffers, no whole-batch columns (stride 1: shifted-window GEMMs, no im2col)
    whole-batch im2col kernels.im2col.im2col of the whole batch, then one batched GEMM
  deformable 3x3, N=16 C=64 32x32:
    conv2d             kernels.conv2d on the same shape (the no-offset baseline)
    deform v1 / v2     kernels.deform with offsets ~ N(0, 0.5^2) (v2: a mask in (0, 1))

GFLOP/s counts the layer's *useful* MACs for every algorithm, so the column
compares work done per second on the same problem; "x best" is the median
time over the fastest algorithm's. Peak MB: the largest amount of NumPy
memory allocated during one forward+backward call (tracemalloc; Numba's own
allocations inside jitted code are not seen).

Run: python -m benchmarks.conv_algos [--repeat R] [--threads N] [--smoke]
"""
import importlib
from dataclasses import dataclass

import numpy as np

from benchmarks.cases import Case, record, timed_record
from benchmarks.harness import SuiteResult, fmt_num, peak_mb, status_cell, timing_cells

NAME = "conv-algos"
TITLE = "the same layer through different algorithms (kernels called directly)"
HEADERS = ["layer", "algorithm", "mode", "warm-up ms", "median ms", "min-max ms", "GFLOP/s", "% GEMM", "x best",
           "peak MB", "note"]
ONES = (1, 1)


@dataclass
class Algo:
    name: str
    module: str        # kernels module it needs ("kernels.conv2d"); missing -> 'unavailable'
    forward: object    # forward(kernel_module, arrays) -> y
    backward: object   # backward(kernel_module, arrays, grad_output) -> grads


@dataclass
class Layer:
    name: str
    arrays: dict       # NumPy inputs
    out_shape: tuple
    macs: int          # useful forward multiply-adds
    algos: list


def _load(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# ---- algorithm definitions ----------------------------------------------------
def conv2d_algo(name, groups, weight="w"):
    """kernels.conv2d.conv2d_forward/backward, stride 1, 'same' padding, weight taken from arrays[weight]."""
    def forward(k, a):
        pad = a[weight].shape[2] // 2
        return k.conv2d_forward(a["x"], a[weight], None, ONES, (pad, pad), ONES, groups)

    def backward(k, a, g):
        pad = a[weight].shape[2] // 2
        return k.conv2d_backward(g, a["x"], a[weight], ONES, (pad, pad), ONES, groups, needs=(True, True, False))

    return Algo(name, "kernels.conv2d", forward, backward)


def direct_algo(name, groups):
    """kernels.depthwise's direct kernel (no im2col), stride 1, 'same' padding."""
    def forward(k, a):
        pad = a["w"].shape[2] // 2
        return k.grouped_conv2d_forward(a["x"], a["w"], None, ONES, (pad, pad), ONES, groups)

    def backward(k, a, g):
        pad = a["w"].shape[2] // 2
        return k.grouped_conv2d_backward(g, a["x"], a["w"], ONES, (pad, pad), ONES, groups, needs=(True, True, False))

    return Algo(name, "kernels.depthwise", forward, backward)


def whole_batch_im2col_algo(name):
    """The textbook route: im2col of the whole batch, one batched GEMM; backward by col2im."""
    def geometry(a):
        k_h = a["w"].shape[2]
        return (k_h, k_h), ONES, (k_h // 2, k_h // 2), ONES

    def forward(k, a):
        cols = k.im2col(a["x"], *geometry(a))                          # (N, C·k·k, L)
        w_mat = a["w"].reshape(a["w"].shape[0], -1)                    # (C_out, C·k·k)
        y = np.matmul(w_mat, cols)                                     # (N, C_out, L)
        return y.reshape(a["x"].shape[0], w_mat.shape[0], *a["x"].shape[2:])

    def backward(k, a, g):
        n, c_out = g.shape[:2]
        cols = k.im2col(a["x"], *geometry(a))                          # (N, C·k·k, L)
        g_mat = g.reshape(n, c_out, -1)                                # (N, C_out, L)
        w_mat = a["w"].reshape(c_out, -1)                              # (C_out, C·k·k)
        grad_weight = np.matmul(g_mat, cols.swapaxes(1, 2)).sum(axis=0).reshape(a["w"].shape)
        grad_input = k.col2im(np.matmul(w_mat.T, g_mat), a["x"].shape, *geometry(a))
        return grad_input, grad_weight

    return Algo(name, "kernels.im2col", forward, backward)


def deform_algo(name, with_mask):
    def forward(k, a):
        return k.deform_conv2d_forward(a["x"], a["offset"], a["w"], None, ONES, ONES, ONES,
                                       a["mask"] if with_mask else None)

    def backward(k, a, g):
        return k.deform_conv2d_backward(g, a["x"], a["offset"], a["w"], ONES, ONES, ONES,
                                        a["mask"] if with_mask else None,
                                        needs=(True, True, True, False, with_mask))

    return Algo(name, "kernels.deform", forward, backward)


# ---- the layers ------------------------------------------------------------------
def layers(ctx):
    rng = np.random.default_rng(0)

    def randn(*shape):
        return rng.standard_normal(shape).astype(ctx.dtype)

    n, c_dw, hw_dw = ctx.pick((64, 128, 16), (2, 8, 6))
    w_dw = randn(c_dw, 1, 3, 3)
    w_block_diag = np.zeros((c_dw, c_dw, 3, 3), ctx.dtype)
    w_block_diag[np.arange(c_dw), np.arange(c_dw)] = w_dw[:, 0]
    depthwise = Layer(f"depthwise 3x3 C={c_dw} {hw_dw}x{hw_dw} N={n}",
                      {"x": randn(n, c_dw, hw_dw, hw_dw), "w": w_dw, "w_dense": w_block_diag},
                      (n, c_dw, hw_dw, hw_dw), n * c_dw * hw_dw * hw_dw * 9,
                      [direct_algo("direct", c_dw), conv2d_algo("grouped im2col (G=C)", c_dw),
                       conv2d_algo("dense im2col (block-diag W)", 1, weight="w_dense")])

    c_pw, hw_pw = ctx.pick((128, 16), (8, 6))
    pointwise = Layer(f"pointwise 1x1 {c_pw}->{c_pw} {hw_pw}x{hw_pw} N={n}",
                      {"x": randn(n, c_pw, hw_pw, hw_pw), "w": randn(c_pw, c_pw, 1, 1)},
                      (n, c_pw, hw_pw, hw_pw), n * c_pw * c_pw * hw_pw * hw_pw,
                      [conv2d_algo("pointwise path (no im2col)", 1), whole_batch_im2col_algo("im2col + GEMM")])

    c3, hw3 = ctx.pick((64, 32), (8, 8))
    dense = Layer(f"dense 3x3 {c3}->{c3} {hw3}x{hw3} N={n}",
                  {"x": randn(n, c3, hw3, hw3), "w": randn(c3, c3, 3, 3)},
                  (n, c3, hw3, hw3), n * c3 * c3 * hw3 * hw3 * 9,
                  [direct_algo("direct (kernels.depthwise)", 1), conv2d_algo("kernels.conv2d (per block)", 1),
                   whole_batch_im2col_algo("whole-batch im2col")])

    n_d, c_d, hw_d = ctx.pick((16, 64, 32), (2, 8, 8))
    deform = Layer(f"deformable 3x3 C={c_d} {hw_d}x{hw_d} N={n_d}",
                   {"x": randn(n_d, c_d, hw_d, hw_d), "w": randn(c_d, c_d, 3, 3),
                    "offset": 0.5 * randn(n_d, 18, hw_d, hw_d),
                    "mask": rng.uniform(0.05, 0.95, (n_d, 9, hw_d, hw_d)).astype(ctx.dtype)},
                   (n_d, c_d, hw_d, hw_d), n_d * c_d * c_d * hw_d * hw_d * 9,
                   [conv2d_algo("conv2d (no offsets)", 1), deform_algo("deform v1 (offsets)", False),
                    deform_algo("deform v2 (offsets + mask)", True)])
    return [depthwise, pointwise, dense, deform]


# ---- timing -------------------------------------------------------------------------
def time_algo(ctx, layer, algo):
    """Two records (fwd, fwd+bwd) for one algorithm on one layer."""
    case = Case(f"{layer.name}: {algo.name}", algo.module, {}, (), None, macs=layer.macs)
    module = _load(algo.module)
    if module is None:
        return [record(case, "tinyconv", mode, "unavailable", f"{algo.module} not available yet")
                for mode in case.modes]
    grad_output = np.random.default_rng(1).standard_normal(layer.out_shape).astype(ctx.dtype)

    def forward():
        return algo.forward(module, layer.arrays)

    def forward_backward():
        algo.forward(module, layer.arrays)
        return algo.backward(module, layer.arrays, grad_output)

    records = [timed_record(ctx, case, "tinyconv", "fwd", forward),
               timed_record(ctx, case, "tinyconv", "fwd+bwd", forward_backward)]
    if records[1]["status"] == "ok":
        records[1]["peak_mb"] = peak_mb(forward_backward)
    return records


def run(ctx):
    records, rows, plot = [], [], []
    for layer in layers(ctx):
        results = [(algo, time_algo(ctx, layer, algo)) for algo in layer.algos]
        for mode_index, mode in enumerate(("fwd", "fwd+bwd")):
            medians = [recs[mode_index]["median_s"] for _, recs in results if recs[mode_index]["median_s"]]
            best = min(medians) if medians else None
            for algo, recs in results:
                rec = recs[mode_index]
                rec.update(layer=layer.name, algorithm=algo.name)
                records.append(rec)
                rel = rec["median_s"] / best if rec["median_s"] and best else None
                rows.append([layer.name, algo.name, mode, *timing_cells(rec), fmt_num(rec["gflops"]),
                             fmt_num(rec["gemm_pct"], 0, "%"), fmt_num(rel, 2, "x"), fmt_num(rec.get("peak_mb")),
                             status_cell(rec)])
                if rec["median_s"] is not None:
                    plot.append((f"{layer.name} | {algo.name} {mode}", rec["median_s"] * 1e3))
    notes = ["GFLOP/s and % GEMM count each layer's useful MACs (x3 for fwd+bwd) whatever the algorithm does; "
             "x best = median / fastest median for that layer and mode."]
    return SuiteResult(NAME, TITLE, HEADERS, rows, records, notes, plot, "median ms")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

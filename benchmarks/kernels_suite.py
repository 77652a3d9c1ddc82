"""Suite `kernels`: every kernel, forward and forward+backward, on the fixed layer set.

The layer set (issue 3's convolution layers plus issue 4's pooling, batch
norm and shuffle), float32 by default, no bias:

    conv 3x3        N=64  C=64->64    32x32  padding 1
    conv 1x1        N=64  C=128->128  16x16  (pointwise fast path)
    depthwise 3x3   N=64  C=128       16x16  padding 1, groups=C
    grouped 3x3     N=64  C=128->128  16x16  padding 1, groups=8
    dilated 3x3     N=64  C=64->64    32x32  padding 2, dilation 2
    transposed 4x4  N=64  C=64->32    16x16 -> 32x32, stride 2, padding 1
    deformable 3x3  N=16  C=64->64    32x32  padding 1, offsets ~ N(0, 0.5^2)
    max pool 2x2 s2, max pool 3x3 s2 p1, avg pool 2x2 s2, batch norm
    (training), channel shuffle g=4: each on N=64 C=64 32x32

Run: python -m benchmarks.kernels_suite [--repeat R] [--threads N] [--smoke]
"""
from benchmarks.cases import kernel_cases, measure
from benchmarks.harness import SuiteResult, fmt_count, fmt_num, startup_cold_warm, status_cell, timing_cells

NAME = "kernels"
TITLE = "every kernel on the fixed layer set (tinyconv.functional, Tensors)"
HEADERS = ["case", "mode", "MACs", "FLOPs", "warm-up ms", "median ms", "min-max ms", "GFLOP/s", "% GEMM", "peak MB",
           "note"]


def run(ctx):
    records, rows, plot = [], [], []
    for case in kernel_cases(ctx):
        for rec in measure(ctx, case, "tinyconv"):
            records.append(rec)
            rows.append([case.name, rec["mode"], fmt_count(rec["macs"]), fmt_count(rec["flops"]),
                         *timing_cells(rec), fmt_num(rec["gflops"]), fmt_num(rec["gemm_pct"], 0, "%"),
                         fmt_num(rec.get("peak_mb")), status_cell(rec)])
            if rec["median_s"] is not None:
                plot.append((f"{case.name} {rec['mode']}", rec["median_s"] * 1e3))
    notes = ["warm-up = first call (JIT compile or cache load); fwd runs under no_grad; "
             "fwd+bwd backpropagates a fixed random grad_output into every input marked differentiable.",
             "% GEMM = achieved GFLOP/s / the BLAS GEMM rate above; target: conv 3x3 fwd >= 50%.",
             "peak MB = NumPy memory allocated at the peak of one fwd+bwd call, inputs excluded (tracemalloc; "
             "allocations inside Numba-jitted code are not seen)."]
    notes.append(startup_note(ctx, records))
    return SuiteResult(NAME, TITLE, HEADERS, rows, records, notes, plot, "median ms")


def startup_note(ctx, records):
    """Cold (compile) and warm (cache load) start-up in fresh processes; skipped in smoke mode."""
    if ctx.smoke:
        return "start-up (fresh process, cold and warm Numba cache): not measured in smoke mode."
    try:
        cold, warm = startup_cold_warm()
    except Exception as exc:  # report, do not stop the run
        return f"start-up: could not be measured ({type(exc).__name__}: {exc})"
    records.append({"case": "start-up", "mode": "import + first conv/depthwise/max-pool fwd+bwd",
                    "status": "ok", "cold_s": cold, "warm_s": warm})
    return (f"start-up, fresh process, import tinyconv + first 3x3 conv, depthwise conv, max pool fwd+bwd: "
            f"cold (empty Numba cache: compile) {cold:.1f} s, warm (cache load) {warm:.1f} s.")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

"""Suite `threads`: scaling from 1 thread to every core.

For each thread count t = 1 .. cores, the thread count of tinyconv's Numba
kernels, of NumPy's BLAS (its GEMMs) and of PyTorch is set to t; then the
GEMM rate and a representative subset of the kernels suite (a BLAS-bound
conv, a memory-bound depthwise conv, a pool, batch norm) are timed
forward+backward. speedup = time at 1 thread / time at t threads; ideal is t.

Run: python -m benchmarks.threads [--repeat R] [--smoke]
"""
from benchmarks.cases import kernel_cases, measure
from benchmarks.harness import SuiteResult, core_count, fmt_ms, gemm_gflops, set_threads, status_cell

NAME = "threads"
TITLE = "scaling from 1 thread to all cores"
SUBSET = ("conv 3x3", "depthwise", "max pool 2x2", "batch norm")


def thread_counts():
    """1, the powers of two below the core count, and the core count."""
    cores = core_count()
    return sorted({1, cores, *[t for t in (2, 4, 8, 16, 32) if t < cores]})


def run(ctx):
    counts = thread_counts()
    cases = [c for c in kernel_cases(ctx) if c.name.startswith(SUBSET)]
    impls = ["tinyconv"] + (["torch"] if ctx.torch is not None else [])
    headers = ["case", "mode", "impl"] + [f"{t} thr ms" for t in counts] + [f"speedup @{counts[-1]}", "note"]
    gemm, timings, original = {}, {}, ctx.threads
    try:
        for t in counts:
            set_threads(t, ctx.torch)
            ctx.threads = t
            gemm[t] = gemm_gflops(ctx.dtype, ctx.gemm_size, tries=2 if ctx.smoke else 3)
            for case in cases:
                for impl in impls:
                    for rec in measure(ctx, case, impl):
                        timings[(case.name, rec["mode"], impl, t)] = rec
    finally:
        set_threads(original, ctx.torch)
        ctx.threads = original
    records, rows, plot = [], [], []
    rows.append(["GEMM rate (GFLOP/s)", "-", "numpy"] + [f"{gemm[t]:.1f}" for t in counts]
                + [f"{gemm[counts[-1]] / gemm[1]:.2f}x", ""])
    for case in cases:
        for mode in case.modes:
            for impl in impls:
                recs = [timings[(case.name, mode, impl, t)] for t in counts]
                first, last = recs[0]["median_s"], recs[-1]["median_s"]
                speedup = first / last if first and last else None
                records.append({"case": case.name, "mode": mode, "impl": impl, "threads": counts,
                                "median_s": [r["median_s"] for r in recs], "speedup": speedup, "records": recs})
                rows.append([case.name, mode, impl] + [fmt_ms(r["median_s"]) for r in recs]
                            + ["-" if speedup is None else f"{speedup:.2f}x", status_cell(recs[0])])
                if speedup is not None:
                    plot.append((f"{case.name} {mode} {impl}", speedup))
    records.append({"case": "GEMM", "threads": counts, "gflops": [gemm[t] for t in counts]})
    notes = [f"threads set with tinyconv.threads.set_num_threads (Numba and OpenBLAS)"
             f"{' and torch.set_num_threads' if ctx.torch is not None else ''}; ideal speedup @{counts[-1]} = "
             f"{counts[-1]}x."]
    return SuiteResult(NAME, TITLE, headers, rows, records, notes, plot, f"speedup 1 -> {counts[-1]} threads")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

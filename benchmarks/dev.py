"""Kernel work: named layers timed side by side against PyTorch and older kernel files.

Usage (from the repository root):

    python -m benchmarks.dev --list                                  # the case names and shapes
    python -m benchmarks.dev --cases r20_16 r20_32 r20_64 r20_s2     # ResNet-20's convolutions, batch 128
    python -m benchmarks.dev --cases 3x3 1x1 --threads 1 --repeats 30 --cpu-time
    python -m benchmarks.dev --cases dw16 g8 --old kernels/depthwise.py=/tmp/depthwise_old.py
    python -m benchmarks.dev --cases deform --mask --old kernels/deform.py=/tmp/deform_old.py
    python -m benchmarks.dev --cases deform --phases                 # deform: forward and each gradient alone
    python -m benchmarks.dev --crossover --threads 1 --cpu-time      # grouped: direct kernel vs im2col route
    python -m benchmarks.dev --cases 3x3 --memory --startup          # + peak memory, cold/warm Numba start-up
    python -m benchmarks.dev --cases tiny_conv --repeats 1 --no-torch    # smoke run

The cases are benchmarks/cases.py's `dev_cases()` (float32; --list shows
them). Every case runs "fwd" (the forward alone, no tape) and "fwd+bwd" (the
forward on the tape, then the backward of one fixed random grad_output, every
input differentiated). The contenders of one case:

    tinyconv      tinyconv.functional, as a user calls it
    old X.py      the same call with the kernels/X.py that tinyconv.functional
                  uses swapped for the file given as --old kernels/X.py=PATH
                  (loaded as a separate module; repeat --old for several files;
                  added to every case given, so pick --cases that use the file)
    im2col route  grouped convolutions: kernels/conv2d.py called directly, the
                  route conv2d takes when the direct kernel does not apply
    torch         torch.nn.functional (deformable: cases.torch_deform_conv2d),
                  same threads, when torch is installed and --no-torch is absent

They are timed alternately, repeat by repeat (harness.time_side_by_side,
after one warm-up call each), so load from other processes hits them alike.
The table shows the warm-up, the median and the min-max of wall time (of
process CPU time, all threads, with --cpu-time), the median of the other
clock, GFLOP/s and % of the machine's GEMM rate from the median, and the
ratio of the medians to torch's (to tinyconv's without torch; below 1 =
faster). The header names the CPU, threads, load and GEMM rate; the
busy-loop control line, measured before and after the table, is the speedup
of a pure parallel loop at the chosen thread count: near 1 means other
processes hold the cores and multi-thread timings say little.

--crossover times kernels/depthwise.py's direct grouped kernel against the
im2col route on C_in = C_out = 128, 16x16, N=32 for C_in/groups = 1 ... 64,
3x3 and 1x1 (kernels called directly, forward + backward for x and w): the
measured crossovers are the DIRECT_MAX_CHANNELS limits in kernels/depthwise.py.
"""
import argparse
import importlib
import importlib.util
import os
import statistics
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np

import tinyconv.functional as F
from benchmarks import cases
from benchmarks.harness import (Timing, format_table, fmt_ms, fmt_num, header_lines, machine_info, make_context,
                                peak_mb, startup_cold_warm, status_cell, time_call, time_side_by_side,
                                timing_cells)
from kernels import conv2d as dense_conv, deform, depthwise

GRAD_NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")


# ---- older kernel files -----------------------------------------------------------------
@dataclass
class OldKernels:
    """An older copy of a kernel file, and the names tinyconv.functional holds the current one under."""
    label: str
    names: list
    module: object


def load_old(text):
    """--old kernels/X.py=PATH: import PATH as its own module (old_X), for swapping in place of kernels/X.py."""
    target, sep, path = text.partition("=")
    if not sep or not target.startswith("kernels/") or not target.endswith(".py"):
        raise ValueError(f"--old must be kernels/X.py=PATH, got {text!r}")
    if not os.path.isfile(path):
        raise ValueError(f"--old {target}: no file at {path!r}")
    current = importlib.import_module(target[:-3].replace("/", "."))
    names = [name for name, value in vars(F).items() if value is current]
    if not names:
        raise ValueError(f"--old {target}: tinyconv.functional does not call {target} directly, so it cannot be "
                         "swapped (give the kernel file that tinyconv.functional imports)")
    module_name = "old_" + os.path.basename(target)[:-3]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module            # Numba's cache loader imports the module by this name
    spec.loader.exec_module(module)
    return OldKernels(f"old {os.path.basename(target)}", names, module)


@contextmanager
def swapped(old):
    """tinyconv.functional calls the old module's kernels inside the block."""
    saved = {name: getattr(F, name) for name in old.names}
    for name in old.names:
        setattr(F, name, old.module)
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(F, name, module)


def with_old(fn, old):
    def call():
        with swapped(old):
            return fn()
    return call


# ---- the contenders of one case -----------------------------------------------------------
def im2col_route(case, arrays):
    """(forward, forward+backward) of kernels/conv2d.py called directly on a grouped case, grads for x and w."""
    geometry = case.conv
    x, w = arrays["x"], arrays["w"]
    y = dense_conv.conv2d_forward(x, w, None, *geometry)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)

    def forward_backward():
        dense_conv.conv2d_forward(x, w, None, *geometry)
        dense_conv.conv2d_backward(g, x, w, *geometry, needs=(True, True, False))

    return (lambda: dense_conv.conv2d_forward(x, w, None, *geometry)), forward_backward


def contenders(ctx, case, olds):
    """{name: (forward, forward+backward)} for one case."""
    arrays = case.arrays(ctx.dtype)
    fns = {"tinyconv": cases._tinyconv_fns(case, arrays)}
    for old in olds:
        fwd, both = cases._tinyconv_fns(case, arrays)
        fns[old.label] = (with_old(fwd, old), with_old(both, old))
    if case.op == "conv2d" and case.conv and case.conv[3] > 1:
        fns["im2col route"] = im2col_route(case, arrays)
    if ctx.torch is not None:
        fns["torch"] = cases._torch_fns(ctx.torch, case, arrays)
    return fns


# ---- timing ------------------------------------------------------------------------------
def on_clock(timing, cpu):
    """The timing in the chosen clock: process CPU seconds with cpu=True (warm-up stays wall time)."""
    return Timing(timing.warmup, timing.cpu_times) if cpu else timing


def other_clock_median(timing, cpu):
    times = timing.times if cpu else timing.cpu_times
    return statistics.median(times) if times else None


def time_mode(ctx, case, mode, fns, cpu):
    """[(record, median of the other clock)] per contender, timed alternately; failures become error records."""
    try:
        timings = time_side_by_side(fns, ctx.repeat)
    except Exception:   # find out which contender failed: time each alone
        return [(cases.timed_record(ctx, case, name, mode, fn), None) for name, fn in fns.items()]
    return [(cases.record(case, name, mode, timing=on_clock(t, cpu), ctx=ctx), other_clock_median(t, cpu))
            for name, t in timings.items()]


def case_rows(key, results):
    """Table rows for one case and mode; ratio = median / the reference's median (torch, else tinyconv)."""
    medians = {rec["impl"]: rec["median_s"] for rec, _ in results}
    reference = "torch" if medians.get("torch") else "tinyconv"
    rows = []
    for rec, other in results:
        ratio = (rec["median_s"] / medians[reference]
                 if rec["median_s"] and medians.get(reference) and rec["impl"] != reference else None)
        rows.append([key, rec["mode"], rec["impl"], *timing_cells(rec), fmt_ms(other),
                     fmt_num(rec["gflops"]), fmt_num(rec["gemm_pct"], 0, "%"), fmt_num(ratio, 2),
                     status_cell(rec)])
    return rows


def time_cases(ctx, keys, all_cases, olds, cpu, memory):
    """The main table: every case, both modes, every contender. Returns (rows, records, notes)."""
    rows, records, notes = [], [], []
    for key in keys:
        case = all_cases[key]
        fns = contenders(ctx, case, olds)
        for i, mode in enumerate(cases.MODES):
            results = time_mode(ctx, case, mode, {name: pair[i] for name, pair in fns.items()}, cpu)
            rows += case_rows(key, results)
            records += [rec for rec, _ in results]
        if memory:
            notes.append(f"{key}: tinyconv fwd+bwd peak NumPy memory {peak_mb(fns['tinyconv'][1]):.1f} MB "
                         "(tracemalloc; inputs excluded)")
    return rows, records, notes


# ---- busy-loop control ---------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _busy_loop(work, lanes):
    total = np.zeros(lanes)
    for t in numba.prange(lanes):
        acc = 0.0
        for i in range(work):
            acc += np.sin(i * 1e-9)
        total[t] = acc
    return total


def busy_loop_speedup(threads, work=2_000_000):
    """Time of `threads` lanes of a pure busy loop on 1 thread / on `threads` threads: about `threads`
    on an idle machine, near 1 when other processes hold the other cores."""
    _busy_loop(10, threads)
    numba.set_num_threads(1)
    one = time_call(lambda: _busy_loop(work, threads), 3).min
    numba.set_num_threads(threads)
    return one / time_call(lambda: _busy_loop(work, threads), 3).min


def busy_line(threads, when):
    return (f"busy-loop control {when}: {busy_loop_speedup(threads):.2f}x on {threads} threads "
            f"(about {threads} when idle; near 1: the cores are busy, multi-thread timings mean little)")


# ---- the grouped crossover and the deformable phases ------------------------------------------
def crossover(ctx, cpu):
    """Direct grouped kernel vs im2col route by channels per group: a table (ms median / min)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 128, 16, 16)).astype(ctx.dtype)
    g = rng.standard_normal(x.shape).astype(ctx.dtype)
    needs = (True, True, False)
    rows = []
    for k in (3, 1):
        for c_group in (1, 2, 4, 8, 16, 32, 64):
            w = rng.standard_normal((128, c_group, k, k)).astype(ctx.dtype)
            geometry = ((1, 1), (k // 2, k // 2), (1, 1), 128 // c_group)
            fns = {"direct fwd": lambda: depthwise.grouped_conv2d_forward(x, w, None, *geometry),
                   "im2col fwd": lambda: dense_conv.conv2d_forward(x, w, None, *geometry),
                   "direct bwd": lambda: depthwise.grouped_conv2d_backward(g, x, w, *geometry, needs),
                   "im2col bwd": lambda: dense_conv.conv2d_backward(g, x, w, *geometry, needs)}
            t = {name: np.array(on_clock(timing, cpu).times) for name, timing in
                 time_side_by_side(fns, ctx.repeat).items()}
            direct, im2col = t["direct fwd"] + t["direct bwd"], t["im2col fwd"] + t["im2col bwd"]
            rows.append([k, c_group, 128 // c_group, *(ms_median_min(v) for v in (t["direct fwd"], t["im2col fwd"],
                                                                                 direct, im2col)),
                         f"{np.median(direct) / np.median(im2col):.2f}", f"{direct.min() / im2col.min():.2f}",
                         "direct" if depthwise.runs_direct(128 // c_group, c_group, c_group, (k, k), (1, 1), 32 * 16 * 16) else "im2col"])
    headers = ["k", "C_in/G", "G", "direct fwd", "im2col fwd", "direct f+b", "im2col f+b", "ratio f+b",
               "min ratio", "conv2d runs"]
    return (f"crossover: C_in = C_out = 128, 16x16, N=32; kernels called directly; ms median/min; "
            f"f+b = forward + backward for x and w; ratios direct / im2col\n" + format_table(headers, rows))


def ms_median_min(seconds):
    return f"{fmt_ms(np.median(seconds))}/{fmt_ms(seconds.min())}"


def deform_phases(ctx, key, case, cpu):
    """kernels/deform.py directly: the forward, and the backward for each gradient alone and all together."""
    a = case.arrays(ctx.dtype)
    x, offset, w, mask = a["x"], a["offset"], a["w"], a.get("mask")
    geometry = case.conv[:3]                                   # stride, padding, dilation
    y = deform.deform_conv2d_forward(x, offset, w, None, *geometry, mask)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
    parts = {"forward": lambda: deform.deform_conv2d_forward(x, offset, w, None, *geometry, mask)}
    for k, name in enumerate(GRAD_NAMES[:5 if mask is not None else 4]):
        needs = tuple(j == k for j in range(5))
        parts[f"backward {name}"] = (lambda needs=needs:
                                     deform.deform_conv2d_backward(g, x, offset, w, *geometry, mask, needs))
    parts["backward all"] = lambda: deform.deform_conv2d_backward(g, x, offset, w, *geometry, mask)
    rows = [[key, name, fmt_ms(np.median(on_clock(t, cpu).times)), fmt_ms(min(on_clock(t, cpu).times))]
            for name, t in time_side_by_side(parts, ctx.repeat).items()]
    return format_table(["case", "phase (kernels/deform.py)", "median ms", "min ms"], rows)


# ---- the command line --------------------------------------------------------------------------
def parse_args(argv):
    names = list(cases.dev_cases())
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dev", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=names, metavar="CASE",
                        help="cases to time (default: every full-size case; --list shows them)")
    parser.add_argument("--old", action="append", default=[], metavar="kernels/X.py=PATH",
                        help="also time tinyconv with this older copy of a kernel file (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for tinyconv, BLAS and torch (default: all cores)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats after one warm-up call (default 15)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time (all threads) instead of wall time: robust to load")
    parser.add_argument("--no-torch", dest="use_torch", action="store_false",
                        help="do not import PyTorch even when it is installed")
    parser.add_argument("--mask", action="store_true", help="deformable cases: v2, with a mask")
    parser.add_argument("--phases", action="store_true", help="deformable cases: also time each gradient alone")
    parser.add_argument("--crossover", action="store_true", help="the grouped direct vs im2col table")
    parser.add_argument("--memory", action="store_true", help="peak NumPy memory of tinyconv's fwd+bwd per case")
    parser.add_argument("--startup", action="store_true", help="cold (compile) and warm (cache) Numba start-up")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    return parser, parser.parse_args(argv)


def main(argv=None, print_fn=print):
    """Run what the arguments ask for; returns 1 when a contender raised, else 0."""
    parser, args = parse_args(argv)
    all_cases = cases.dev_cases(mask=args.mask)
    if args.list:
        print_fn("\n".join(f"{key:14s} {case.name}" for key, case in all_cases.items()))
        return 0
    try:
        olds = [load_old(text) for text in args.old]
        if len({old.label for old in olds}) < len(olds):
            raise ValueError("--old names the same kernel file twice")
        ctx = make_context(args.threads, "float32", args.repeats, use_torch=args.use_torch, print_fn=print_fn)
    except ValueError as exc:
        parser.error(str(exc))
    keys = args.cases or ([] if args.crossover else [k for k in all_cases if not k.startswith("tiny")])
    clock = "process CPU time (all threads)" if args.cpu_time else "wall time"
    print_fn("\n".join(header_lines(machine_info(ctx))))
    print_fn(busy_line(ctx.threads, "before"))
    print_fn(f"clock: {clock}; the other clock's median in its own column")
    errors = 0
    if keys:
        rows, records, notes = time_cases(ctx, keys, all_cases, olds, args.cpu_time, args.memory)
        other = "wall med ms" if args.cpu_time else "CPU med ms"
        headers = ["case", "mode", "impl", "warm-up ms", "median ms", "min-max ms", other, "GFLOP/s", "% GEMM",
                   "ratio", "note"]
        print_fn(format_table(headers, rows))
        print_fn("\n".join(notes + [f"ratio = median / torch's median ({ctx.torch_status}); "
                                    "without torch, / tinyconv's median."]))
        errors = sum(rec["status"] == "error" for rec in records)
    if args.phases:
        for key in (k for k in keys if all_cases[k].op == "deform_conv2d"):
            print_fn(deform_phases(ctx, key, all_cases[key], args.cpu_time))
    if args.crossover:
        print_fn(crossover(ctx, args.cpu_time))
    print_fn(busy_line(ctx.threads, "after"))
    if args.startup:
        cold, warm = startup_cold_warm()
        print_fn(f"import + first conv, depthwise and max pool fwd+bwd in a fresh process: cold (compile) "
                 f"{cold:.1f} s, warm (cache) {warm:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""`tinyconv bench [SUITE ...]`: run benchmark suites, print tables, write JSON and a plot.

    tinyconv bench                          every suite, all cores, float32
    tinyconv bench kernels torch --threads 1 --repeat 10 --json out.json --plot out.png
    tinyconv bench --smoke                  tiny shapes, one repeat (what the tests run)
    tinyconv bench kernels --device cuda    the kernels suite on the GPU (needs one; see run_on_device)
    python -m benchmarks kernels            the same without the tinyconv entry point
    python -m benchmarks.kernels_suite      one suite (modules: kernels_suite, vs_torch, conv_algos, ...)

Wiring into tinyconv/cli.py: `from benchmarks.cli import add_cli; add_cli(sub)`
where `sub` is the subparsers object; it registers `bench` with `run=` set.
"""
import argparse
import importlib
import json
import sys

from benchmarks.harness import header_lines, machine_info, make_context
from tinyconv.cuda import CudaUnavailableError

SUITES = {
    "kernels": "benchmarks.kernels_suite",
    "separable": "benchmarks.separable",
    "factorized": "benchmarks.factorized",
    "conv-algos": "benchmarks.conv_algos",
    "threads": "benchmarks.threads",
    "torch": "benchmarks.vs_torch",
    "models": "benchmarks.models",
}


def add_arguments(parser, suites=True):
    if suites:
        parser.add_argument("suites", nargs="*", metavar="SUITE",
                            help=f"suites to run: {', '.join(SUITES)}, or all (default: all)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads for tinyconv, NumPy's BLAS and PyTorch (default: all cores)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeat", type=int, default=5, metavar="R",
                        help="timed repeats after the warm-up call (default 5)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write every record as JSON")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                        help="bar chart PNG (needs matplotlib)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: checks the suites run")
    parser.add_argument("--no-torch", dest="use_torch", action="store_false",
                        help="do not import PyTorch even when it is installed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: time the kernels suite on the GPU (numba.cuda) instead of the CPU")


def add_cli(subparsers):
    """Register `bench` on an argparse subparsers object (tinyconv/cli.py calls this)."""
    parser = subparsers.add_parser("bench", help="benchmark kernels against each other, the GEMM rate and PyTorch",
                                   description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.set_defaults(run=run_from_args)
    return parser


def resolve_suites(names):
    """Suite names in a stable order; [] or 'all' means every suite. Unknown names raise ValueError."""
    names = list(names or [])
    if not names or "all" in names:
        return list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}: expected one of {', '.join(SUITES)} or all")
    return list(dict.fromkeys(names))


def run(suites=None, threads=None, dtype="float32", repeat=5, smoke=False, json_path=None, plot_path=None,
        use_torch=True, print_fn=print):
    """Run the suites; print as it goes. Returns (exit status, report dict).

    The exit status is 1 when any case raised an error (an op that has not
    landed yet is 'unavailable', not an error), else 0.
    """
    names = resolve_suites(suites)
    ctx = make_context(threads, dtype, repeat, smoke, use_torch, print_fn)
    info = machine_info(ctx)
    for line in header_lines(info):
        print_fn(line)
    results = []
    for name in names:
        module = importlib.import_module(SUITES[name])
        print_fn("")
        result = module.run(ctx)
        results.append(result)
        print_fn(result.text())
    report = {"machine": info,
              "suites": [{"name": r.name, "title": r.title, "notes": r.notes, "records": r.records} for r in results]}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1, default=_jsonable)
        print_fn(f"\nJSON written to {json_path}")
    if plot_path:
        save_plot(results, plot_path, print_fn)
    errors = count_errors(report["suites"])
    if errors:
        print_fn(f"\n{errors} case(s) raised an error (see the note column)")
    return (1 if errors else 0), report


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def count_errors(node):
    """How many records anywhere in `node` (dicts and lists, nested) have status 'error'."""
    if isinstance(node, dict):
        return (node.get("status") == "error") + sum(count_errors(v) for v in node.values())
    if isinstance(node, list):
        return sum(count_errors(v) for v in node)
    return 0


def save_plot(results, path, print_fn=print):
    """One horizontal bar chart per suite, stacked in one PNG. False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print_fn("matplotlib not installed (pip install matplotlib): --plot skipped")
        return False
    panels = [r for r in results if r.plot]
    if not panels:
        print_fn("nothing timed, nothing to plot")
        return False
    heights = [0.25 * len(r.plot) + 1.2 for r in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, result in zip(axes[:, 0], panels):
        labels, values = zip(*result.plot)
        ax.barh(range(len(values)), values)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(result.plot_label)
        ax.set_title(f"{result.name}: {result.title}", fontsize=9)
        if "ratio" in result.plot_label:
            ax.axvline(1.0, color="black", linewidth=0.8)
        if min(values) > 0 and max(values) / min(values) > 100:      # ms spanning decades: log axis
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print_fn(f"plot written to {path}")
    return True


def run_on_device(suites, dtype="float32", repeat=5, smoke=False, json_path=None, print_fn=print):
    """`bench --device cuda`: the kernels suite's cases with every tensor on the GPU. Returns (status, records).

    Each case runs forward (no_grad) and forward+backward (a fixed random
    grad_output, on the device), with numba.cuda.synchronize() closing every
    call so the time covers the kernels, not just their launch. Times are
    the warm-up (the first call: CUDA JIT compilation) and the median of
    `repeat` calls. A case the device path lacks is reported 'unavailable'.
    """
    import numba
    import numpy as np

    import tinyconv
    from benchmarks.cases import kernel_cases
    from benchmarks.harness import Context, time_call

    tinyconv.cuda.check_device("cuda")
    if list(suites) != ["kernels"]:
        raise ValueError(f"--device cuda runs the kernels suite only, got {', '.join(suites)}")
    from numba import cuda

    ctx = Context(dtype=np.dtype(dtype), repeat=1 if smoke else repeat, smoke=smoke, print_fn=print_fn)
    name = "Numba's CUDA simulator" if numba.config.ENABLE_CUDASIM else cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else name
    print_fn(f"kernels on the 'cuda' device ({name}), {ctx.dtype}, median of "
             f"{ctx.repeat}; forward (no_grad) and forward+backward")
    print_fn(f"{'case':<34} {'mode':<8} {'warm-up ms':>11} {'median ms':>10} {'GFLOP/s':>8}  note")
    records, status = [], 0
    for case in kernel_cases(ctx):
        tensors = {k: tinyconv.Tensor(a).to("cuda").requires_grad_(k in case.grad)
                   for k, a in case.arrays(ctx.dtype).items()}
        seed = {}

        def forward():
            with tinyconv.no_grad():
                case.call(tinyconv.functional, **tensors)
            cuda.synchronize()

        def forward_backward():
            y = case.call(tinyconv.functional, **tensors)
            if "g" not in seed:
                seed["g"] = tinyconv.Tensor(np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)).cuda()
            y.backward(seed["g"])
            cuda.synchronize()

        for mode, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
            rec = {"case": case.name, "mode": mode, "device": "cuda", "status": "ok", "note": ""}
            try:
                timing = time_call(fn, ctx.repeat)
                rec.update(warmup_s=timing.warmup, median_s=timing.median)
                macs = case.mode_macs(mode)
                rec["gflops"] = 2 * macs / timing.median / 1e9 if macs else None
            except NotImplementedError as exc:
                rec.update(status="unavailable", note=str(exc))
            except Exception as exc:  # report, do not stop the run
                rec.update(status="error", note=f"{type(exc).__name__}: {exc}")
                status = 1
            records.append(rec)
            ms = lambda key: f"{rec[key] * 1e3:.3f}" if key in rec else "-"  # noqa: E731
            gflops = f"{rec['gflops']:.1f}" if rec.get("gflops") else "-"
            print_fn(f"{case.name:<34} {mode:<8} {ms('warmup_s'):>11} {ms('median_s'):>10} {gflops:>8}  "
                     f"{rec['status'] if rec['status'] != 'ok' else ''} {rec['note'][:60]}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"device": "cuda", "records": records}, f, indent=1, default=_jsonable)
        print_fn(f"\nJSON written to {json_path}")
    return status, records


def run_from_args(args):
    """The `bench` subcommand: argparse namespace -> exit status."""
    try:
        names = resolve_suites(getattr(args, "suites", None))
        if getattr(args, "device", "cpu") == "cuda":
            return run_on_device(names, args.dtype, args.repeat, args.smoke, args.json_path)[0]
        status, _ = run(names, args.threads, args.dtype, args.repeat, args.smoke, args.json_path, args.plot_path,
                        args.use_torch)
    except (ValueError, CudaUnavailableError) as exc:
        print(f"tinyconv bench: error: {exc}", file=sys.stderr)
        return 2
    return status


def main(argv=None):
    """python -m benchmarks [SUITE ...] [options]"""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def main_suite(name, argv=None):
    """python -m benchmarks.<suite> [options]: one suite."""
    parser = argparse.ArgumentParser(prog=f"python -m {SUITES[name]}", description=f"tinyconv bench {name}")
    add_arguments(parser, suites=False)
    args = parser.parse_args(argv)
    args.suites = [name]
    return run_from_args(args)

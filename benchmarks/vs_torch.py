"""Suite `torch`: the kernels suite's layers through torch.nn.functional, side by side.

Same shapes, same dtype, same thread count, same process; the two
libraries are timed alternately, repeat by repeat (after one warm-up call
each), so a burst of load from another process slows both alike. The ratio
is tinyconv median / PyTorch median (below 1.0: tinyconv is faster); the
ratio of the minima is shown beside it. Targets
(issues 3, 4, 7): standard 3x3 and 1x1 conv <= 1.5x; depthwise, grouped,
deformable, pooling, batch norm, channel shuffle <= 1.0x. Without
torchvision the deformable row is compared with a plain-PyTorch version
(grid_sample per tap, then a matmul): what a user without torchvision writes.

Skipped with one line when PyTorch is not installed.
Run: python -m benchmarks.vs_torch [--repeat R] [--threads N] [--smoke]
"""
from benchmarks.cases import kernel_cases, measure_side_by_side, torch_deform_method
from benchmarks.harness import SuiteResult, fmt_ms, fmt_spread, status_cell

NAME = "torch"
TITLE = "tinyconv vs torch.nn.functional, same layers, same run"
HEADERS = ["case", "mode", "tinyconv ms", "min-max", "torch ms", "min-max", "ratio", "min ratio", "target", "verdict",
           "note"]

# issue 7's targets, by the op a case exercises (None: no target)
TARGETS = {"conv 3x3": 1.5, "conv 1x1": 1.5, "depthwise": 1.0, "grouped": 1.0, "deformable": 1.0,
           "max pool": 1.0, "avg pool": 1.0, "batch norm": 1.0, "channel shuffle": 1.0}


def target_for(case_name):
    for prefix, target in TARGETS.items():
        if case_name.startswith(prefix):
            return target
    return None


def verdict(ratio, target):
    if ratio is None or target is None:
        return "-"
    return "met" if ratio <= target else f"missed by {100 * (ratio / target - 1):.0f}%"


def run(ctx):
    if ctx.torch is None:
        return SuiteResult(NAME, TITLE, HEADERS, [], [], [ctx.torch_status + "."])
    records, rows, plot = [], [], []
    for case in kernel_cases(ctx):
        for ours, theirs in measure_side_by_side(ctx, case):
            ratio = min_ratio = None
            if ours["median_s"] is not None and theirs["median_s"] is not None:
                ratio = ours["median_s"] / theirs["median_s"]
                min_ratio = ours["min_s"] / theirs["min_s"]
            target = target_for(case.name)
            records.append({"case": case.name, "mode": ours["mode"], "tinyconv": ours, "torch": theirs,
                            "ratio": ratio, "min_ratio": min_ratio, "target": target,
                            "met": None if ratio is None or target is None else ratio <= target})
            note = status_cell(ours) or status_cell(theirs)
            if case.op == "deform_conv2d" and theirs["status"] == "ok":
                note = note or f"torch: {torch_deform_method()}"
            rows.append([case.name, ours["mode"], fmt_ms(ours["median_s"]), fmt_spread(ours["min_s"], ours["max_s"]),
                         fmt_ms(theirs["median_s"]), fmt_spread(theirs["min_s"], theirs["max_s"]),
                         "-" if ratio is None else f"{ratio:.2f}x", "-" if min_ratio is None else f"{min_ratio:.2f}x",
                         "-" if target is None else f"<= {target:.1f}x",
                         verdict(ratio, target), note])
            if ratio is not None:
                plot.append((f"{case.name} {ours['mode']}", ratio))
    notes = ["ratio = tinyconv / PyTorch median time (< 1: tinyconv faster); min ratio = ratio of the fastest runs. "
             "The two are timed alternately, repeat by repeat, so load from other processes hits both alike; "
             f"verdict judges the median ratio. torch threads: {ctx.torch.get_num_threads()}."]
    return SuiteResult(NAME, TITLE, HEADERS, rows, records, notes, plot, "time ratio tinyconv / PyTorch")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

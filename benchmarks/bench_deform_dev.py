"""Deformable convolution speed, for kernel work: tinyconv against PyTorch (and an older deform.py), side by side.

Usage (from the repository root):

    python benchmarks/bench_deform_dev.py                         # the suite's case, 2 threads, 9 repeats
    python benchmarks/bench_deform_dev.py --threads 1 --repeats 15 --mask
    python benchmarks/bench_deform_dev.py --old /tmp/deform_old.py  # also time another copy of kernels/deform.py
    python benchmarks/bench_deform_dev.py --phases                 # where the backward's time goes (1 thread)

The case is `tinyconv bench torch`'s deformable row (benchmarks/cases.py: v1,
N=16, C 64 -> 64, 32x32, 3x3, padding 1, offsets ~ N(0, 0.5^2), float32);
--mask adds a mask (v2; the PyTorch side stays v1: it is the time scale).
PyTorch's side is cases.torch_deform_conv2d (grid_sample + matmul). "fwd" is the
forward alone, "fwd+bwd" the forward and the backward with every gradient
(tinyconv: through the tape; "old": its kernels directly). The contenders are
timed alternately, repeat by repeat, so load from other processes hits them
alike; the ratio is the median time over torch's median. kernels/deform.py's
corner sums (grad_offset, grad_mask) use fastmath {'reassoc', 'contract',
'nsz'} (STYLE.md 13); its other loops none.
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinyconv  # noqa: E402
import tinyconv.functional as F  # noqa: E402
from benchmarks.cases import torch_deform_conv2d  # noqa: E402
from benchmarks.harness import time_side_by_side  # noqa: E402
from kernels import deform  # noqa: E402

N, C, SIZE, K = 16, 64, 32, 3
ARGS = ((1, 1), (1, 1), (1, 1))  # stride, padding, dilation


def operands(with_mask, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, SIZE, SIZE)).astype(np.float32)
    offset = (0.5 * rng.standard_normal((N, 2 * K * K, SIZE, SIZE))).astype(np.float32)
    w = rng.standard_normal((C, C, K, K)).astype(np.float32)
    mask = rng.uniform(0.2, 1.0, (N, K * K, SIZE, SIZE)).astype(np.float32) if with_mask else None
    g = rng.standard_normal((N, C, SIZE, SIZE)).astype(np.float32)
    return x, offset, w, mask, g


def contenders(with_mask, old_path):
    """{name: (forward, forward+backward)} closures."""
    x, offset, w, mask, g = operands(with_mask)
    arrays = (x, offset, w) + ((mask,) if with_mask else ())

    def ours(backward):
        tensors = [tinyconv.Tensor(a, requires_grad=backward) for a in arrays]
        if not backward:
            with tinyconv.no_grad():
                return F.deform_conv2d(*tensors[:3], None, 1, 1, 1, tensors[3] if with_mask else None)
        F.deform_conv2d(*tensors[:3], None, 1, 1, 1, tensors[3] if with_mask else None).backward(g)

    out = {"tinyconv": (lambda: ours(False), lambda: ours(True))}
    if old_path:
        spec = importlib.util.spec_from_file_location("deform_old", old_path)
        old = importlib.util.module_from_spec(spec)
        sys.modules["deform_old"] = old  # Numba's cache loader imports the module by name
        spec.loader.exec_module(old)

        def theirs_old(backward):
            old.deform_conv2d_forward(x, offset, w, None, *ARGS, mask)
            if backward:
                old.deform_conv2d_backward(g, x, offset, w, *ARGS, mask)
        out["old"] = (lambda: theirs_old(False), lambda: theirs_old(True))
    try:
        import torch
    except ImportError:
        return out
    torch.set_num_threads(tinyconv.get_num_threads())
    tx, toff, tw = (torch.from_numpy(a.copy()) for a in (x, offset, w))
    tg = torch.from_numpy(g)

    def torch_side(backward):
        for t in (tx, toff, tw):
            t.requires_grad_(backward)
            t.grad = None
        with torch.set_grad_enabled(backward):
            y = torch_deform_conv2d(tx, toff, tw, 1)
        if backward:
            y.backward(tg)
    out["torch"] = (lambda: torch_side(False), lambda: torch_side(True))
    return out


def busy_control(seconds=0.3):
    """Loop iterations per second right now: a rough load meter for the table's footnote."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count / seconds


def compare(args):
    fns = contenders(args.mask, args.old)
    print(f"deform {'v2' if args.mask else 'v1'} N={N} C={C}->{C} {SIZE}x{SIZE} 3x3 float32, "
          f"threads={tinyconv.get_num_threads()}, load {os.getloadavg()[0]:.2f}, busy-loop {busy_control():.3g}/s")
    for mode in (0, 1):
        timings = time_side_by_side({name: pair[mode] for name, pair in fns.items()}, args.repeats)
        base = timings.get("torch")
        for name, t in timings.items():
            ratio = f"{t.median / base.median:5.2f}x  min {t.min / base.min:5.2f}x" if base else ""
            print(f"  {('fwd', 'fwd+bwd')[mode]:8s} {name:9s} med {1e3 * t.median:7.1f}  min {1e3 * t.min:7.1f} ms"
                  f"  {ratio}")


def phases(args):
    """One thread, the backward split into its parts (each part alone, all gradients of that part)."""
    x, offset, w, mask, g = operands(args.mask)
    parts = {"forward": lambda: deform.deform_conv2d_forward(x, offset, w, None, *ARGS, mask)}
    names = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")
    for k, name in enumerate(names):
        needs = tuple(j == k for j in range(5))
        parts[f"backward {name}"] = (lambda needs=needs: deform.deform_conv2d_backward(
            g, x, offset, w, *ARGS, mask, needs))
    parts["backward all"] = lambda: deform.deform_conv2d_backward(g, x, offset, w, *ARGS, mask)
    for name, fn in parts.items():
        fn()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(f"  {name:22s} med {1e3 * np.median(times):7.1f}  min {1e3 * min(times):7.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--mask", action="store_true", help="v2: with a mask")
    parser.add_argument("--old", help="path of another deform.py to time beside the current one")
    parser.add_argument("--phases", action="store_true", help="time the backward's parts instead")
    args = parser.parse_args()
    tinyconv.set_num_threads(1 if args.phases else args.threads)
    if args.phases:
        phases(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()

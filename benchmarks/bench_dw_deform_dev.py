"""Grouped / depthwise and deformable convolution speed: tinyconv's kernels against PyTorch, side by side.

Usage (from the repository root):

    python benchmarks/bench_dw_deform_dev.py                  # every case, 2 threads, 15 timed repeats
    python benchmarks/bench_dw_deform_dev.py --cases dw16 g8 --repeats 30 --threads 1
    python benchmarks/bench_dw_deform_dev.py --cases dw16 --old /tmp/depthwise_old.py   # + an older depthwise.py
    python benchmarks/bench_dw_deform_dev.py --crossover      # direct kernel vs im2col route by C_in/groups
    python benchmarks/bench_dw_deform_dev.py --no-compile

Cases (float32, 3x3, stride 1, padding 1):

    dw16     depthwise  N=64 C=128 16x16       tinyconv.functional.conv2d(groups) (the direct kernel of
    dw112    depthwise  N=8  C=32  112x112     kernels/depthwise.py), the im2col route of kernels/conv2d.py
    g8       grouped    N=64 C=128 16x16 G=8   with the same groups, and torch conv2d(groups)
    deform   deformable N=16 C=64->64 32x32    v2 (offsets + mask): tinyconv.functional.deform_conv2d, a plain
                                               PyTorch implementation made of gathers (what a user without
                                               torchvision writes; checked against ours), and torch conv2d of
                                               the same shape for scale

"fwd" is the forward alone (no autograd); "fwd+bwd" the forward and the
backward for x and w with one fixed random grad_output, no bias, as the
suite's rows (through the tape for tinyconv, autograd for torch, the kernels
directly for the im2col route and --old; deform: every gradient, ones). The contenders are timed
alternately, repeat by repeat, so a noisy machine slows them alike; the table
shows the minimum and median in ms (CPU time with --threads 1, which a
loaded machine disturbs less; else wall time) and the ratio of the medians
to PyTorch (below 1 = faster than PyTorch). --crossover times the direct kernel and the
im2col route on C_in = C_out = 128, 16x16, N=32, for C_in/groups = 1 ... 64,
3x3 and 1x1 (the kernels called directly, forward + backward for x and w):
the measured crossover is DIRECT_MAX_CHANNELS in kernels/depthwise.py.
Start-up: import + first depthwise, grouped and deformable forward + backward
in a fresh process, cold (empty NUMBA_CACHE_DIR: compile) and warm (same
cache: load).
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinyconv  # noqa: E402
import tinyconv.functional as F  # noqa: E402
from kernels import conv2d as dense_conv  # noqa: E402
from tinyconv.threads import set_num_threads  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None

CASES = {"dw16": (64, 128, 16, 128), "dw112": (8, 32, 112, 32), "g8": (64, 128, 16, 8), "deform": (16, 64, 32, 1)}


# ---------------------------------------------------------------------------
# grouped and depthwise
# ---------------------------------------------------------------------------
def grouped_case(N, C, H, groups, rng, old=None, k=3):
    """As the suite's rows (benchmarks/cases.py): no bias, forwards without autograd, one fixed random grad_output."""
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((C, C // groups, k, k)) / 3).astype(np.float32)
    g = rng.standard_normal((N, C, H, H)).astype(np.float32)
    args = ((1, 1), (k // 2, k // 2), (1, 1))
    xt, wt = tinyconv.Tensor(x, requires_grad=True), tinyconv.Tensor(w, requires_grad=True)

    def ours(backward):
        if not backward:
            with tinyconv.no_grad():
                return F.conv2d(xt, wt, None, *args, groups)
        xt.grad = wt.grad = None
        F.conv2d(xt, wt, None, *args, groups).backward(g)

    def im2col_route(backward):
        dense_conv.conv2d_forward(x, w, None, *args, groups)
        if backward:
            dense_conv.conv2d_backward(g, x, w, *args, groups, needs=(True, True, False))

    def older(backward):
        old.depthwise_conv2d_forward(x, w, None, *args)
        if backward:
            old.depthwise_conv2d_backward(g, x, w, *args, needs=(True, True, False))

    fns = {"tinyconv": ours, "im2col route": im2col_route}
    if torch is not None:
        xs, ws, gs = (torch.from_numpy(a.copy()) for a in (x, w, g))
        xs.requires_grad_(True)
        ws.requires_grad_(True)

        def theirs(backward):
            if not backward:
                with torch.no_grad():
                    return TF.conv2d(xs, ws, None, *args, groups)
            xs.grad = ws.grad = None
            TF.conv2d(xs, ws, None, *args, groups).backward(gs)

        fns["torch"] = theirs
    if old is not None and groups == C:
        fns["old"] = older
    return fns


def load_old(path):
    """Another copy of kernels/depthwise.py, imported under its file name (Numba's cache loader imports it so)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def crossover(repeats, threads):
    """Direct kernel vs im2col route, C_in = C_out = 128, 16x16, N=32, by channels per group. On one thread
    the clock is the process's CPU time (robust to other processes taking the core), else wall time."""
    from kernels import depthwise
    rng = np.random.default_rng(0)
    clock = time.process_time if threads == 1 else time.perf_counter
    print(f"crossover: C_in = C_out = 128, 16x16, N=32, float32; kernels called directly; ms min / median of "
          f"{repeats} ({'CPU' if threads == 1 else 'wall'} time); f+b = forward + backward for x and w; "
          f"ratios direct / im2col of the medians and of the minima")
    print(f"{'k':>3} {'C_in/G':>6} {'G':>4} {'direct fwd':>13} {'im2col fwd':>13} {'direct f+b':>13} "
          f"{'im2col f+b':>13} {'ratio f+b':>10} {'min ratio':>10}")
    for k in (3, 1):
        for c_group in (1, 2, 4, 8, 16, 32, 64):
            groups = 128 // c_group
            x = rng.standard_normal((32, 128, 16, 16)).astype(np.float32)
            w = rng.standard_normal((128, c_group, k, k)).astype(np.float32)
            args = ((1, 1), (k // 2, k // 2), (1, 1), groups)
            g = rng.standard_normal((32, 128, 16, 16)).astype(np.float32)
            needs = (True, True, False)
            fns = {"direct fwd": lambda: depthwise.grouped_conv2d_forward(x, w, None, *args),
                   "im2col fwd": lambda: dense_conv.conv2d_forward(x, w, None, *args),
                   "direct bwd": lambda: depthwise.grouped_conv2d_backward(g, x, w, *args, needs),
                   "im2col bwd": lambda: dense_conv.conv2d_backward(g, x, w, *args, needs)}
            t = {name: np.array(v) * 1e3 for name, v in time_side_by_side(fns, repeats, clock=clock).items()}
            both = {route: t[f"{route} fwd"] + t[f"{route} bwd"] for route in ("direct", "im2col")}
            cells = [f"{np.min(v):6.2f}/{np.median(v):<6.2f}" for v in
                     (t["direct fwd"], t["im2col fwd"], both["direct"], both["im2col"])]
            print(f"{k:>3} {c_group:>6} {groups:>4} " + " ".join(f"{c:>13}" for c in cells)
                  + f" {np.median(both['direct']) / np.median(both['im2col']):>10.2f}"
                  + f" {np.min(both['direct']) / np.min(both['im2col']):>10.2f}", flush=True)


# ---------------------------------------------------------------------------
# deformable
# ---------------------------------------------------------------------------
def torch_deform_gathers(x, offset, weight, bias, mask, padding):
    """Deformable conv v2 (stride 1, dilation 1, one offset group) from PyTorch gathers, torchvision's rules."""
    N, C, H, W = x.shape
    C_out, _, k_h, k_w = weight.shape
    K, (out_h, out_w) = k_h * k_w, offset.shape[2:]
    i = torch.arange(out_h, dtype=x.dtype).view(1, 1, out_h, 1)
    j = torch.arange(out_w, dtype=x.dtype).view(1, 1, 1, out_w)
    p = torch.arange(k_h, dtype=x.dtype).repeat_interleave(k_w).view(1, K, 1, 1)
    q = torch.arange(k_w, dtype=x.dtype).repeat(k_h).view(1, K, 1, 1)
    off = offset.view(N, K, 2, out_h, out_w)
    sy, sx = i - padding + p + off[:, :, 0], j - padding + q + off[:, :, 1]  # (N, K, out_h, out_w)
    y0, x0 = sy.floor(), sx.floor()
    ly, lx = sy - y0, sx - x0
    inside = (sy > -1) & (sy < H) & (sx > -1) & (sx < W)
    flat = x.reshape(N, C, H * W)

    def corner(yc, xc, weight_c):
        valid = inside & (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
        index = (yc.clamp(0, H - 1) * W + xc.clamp(0, W - 1)).long().view(N, 1, -1).expand(N, C, -1)
        return torch.gather(flat, 2, index).view(N, C, K, out_h, out_w) * (weight_c * valid).unsqueeze(1)

    sampled = (corner(y0, x0, (1 - ly) * (1 - lx)) + corner(y0, x0 + 1, (1 - ly) * lx)
               + corner(y0 + 1, x0, ly * (1 - lx)) + corner(y0 + 1, x0 + 1, ly * lx))
    cols = (sampled * mask.view(N, 1, K, out_h, out_w)).reshape(N, C * K, out_h * out_w)
    return (weight.view(C_out, C * K) @ cols).view(N, C_out, out_h, out_w) + bias.view(1, C_out, 1, 1)


def deform_case(N, C, H, rng):
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    offset = rng.uniform(-2, 2, (N, 18, H, H)).astype(np.float32)
    mask = rng.uniform(0, 1, (N, 9, H, H)).astype(np.float32)
    arrays = (x, offset, w, b, mask)

    def ours(backward):
        x_, o_, w_, b_, m_ = (tinyconv.Tensor(a, requires_grad=backward) for a in arrays)
        y = F.deform_conv2d(x_, o_, w_, b_, 1, 1, 1, m_)
        if backward:
            y.backward(np.ones_like(y.data))

    def gathers(backward):
        x_, o_, w_, b_, m_ = (torch.from_numpy(a).requires_grad_(backward) for a in arrays)
        y = torch_deform_gathers(x_, o_, w_, b_, m_, 1)
        if backward:
            y.backward(torch.ones_like(y))

    def conv(backward):
        x_, w_, b_ = (torch.from_numpy(a).requires_grad_(backward) for a in (x, w, b))
        y = TF.conv2d(x_, w_, b_, 1, 1)
        if backward:
            y.backward(torch.ones_like(y))

    if torch is not None:  # the gathers implementation must compute what ours computes
        with torch.no_grad():
            want = torch_deform_gathers(*(torch.from_numpy(a) for a in arrays), 1).numpy()
        got = F.deform_conv2d(*(tinyconv.Tensor(a) for a in arrays[:4]), 1, 1, 1, tinyconv.Tensor(mask)).data
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return {"tinyconv": ours, "torch gathers": gathers, "torch conv2d": conv}


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def time_side_by_side(functions, repeats, warmup=2, clock=time.perf_counter):
    """{name: [seconds per repeat]}, the functions called alternately."""
    times = {name: [] for name in functions}
    for i in range(warmup + repeats):
        for name, fn in functions.items():
            start = clock()
            fn()
            if i >= warmup:
                times[name].append(clock() - start)
    return times


START_UP = """
import time; start = time.perf_counter()
import numpy as np, tinyconv, tinyconv.functional as F
for dtype in (np.float32,):
    x = tinyconv.Tensor(np.ones((2, 4, 8, 8), dtype), requires_grad=True)
    w = tinyconv.Tensor(np.ones((4, 1, 3, 3), dtype), requires_grad=True)
    F.conv2d(x, w, padding=1, groups=4).sum().backward()
    w = tinyconv.Tensor(np.ones((4, 2, 3, 3), dtype), requires_grad=True)
    F.conv2d(x, w, padding=1, groups=2).sum().backward()
    w2 = tinyconv.Tensor(np.ones((4, 4, 3, 3), dtype), requires_grad=True)
    off = tinyconv.Tensor(np.full((2, 18, 8, 8), 0.5, dtype), requires_grad=True)
    m = tinyconv.Tensor(np.ones((2, 9, 8, 8), dtype), requires_grad=True)
    F.deform_conv2d(x, off, w2, padding=1, mask=m).sum().backward()
print(time.perf_counter() - start)
"""


def start_up_seconds():
    """(cold, warm) seconds of import + first depthwise, grouped and deformable forward + backward, fresh processes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=root)
        run = [sys.executable, "-c", START_UP]
        return tuple(float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
                     for _ in range(2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--old", help="path of an older kernels/depthwise.py to time beside (depthwise cases)")
    parser.add_argument("--crossover", action="store_true", help="only the direct-vs-im2col table")
    args = parser.parse_args()
    set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    if args.crossover:
        return crossover(args.repeats, args.threads)
    old = load_old(args.old) if args.old else None
    clock = time.process_time if args.threads == 1 else time.perf_counter  # 1 thread: CPU time, robust to load
    print(f"threads {args.threads}; torch {torch.__version__ if torch else 'not installed'}; "
          f"{args.repeats} repeats; ms min/median of {'CPU' if args.threads == 1 else 'wall'} time; "
          f"ratio = median / median of the torch reference; load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    for case in args.cases:
        N, C, H, groups = CASES[case]
        fns = deform_case(N, C, H, rng) if case == "deform" else grouped_case(N, C, H, groups, rng, old)
        reference = "torch gathers" if case == "deform" else "torch"
        if torch is None:
            fns = {k: f for k, f in fns.items() if not k.startswith("torch")}
        for backward, label in ((False, "fwd"), (True, "fwd+bwd")):
            t = time_side_by_side({k: (lambda f=f: f(backward)) for k, f in fns.items()}, args.repeats, clock=clock)
            for name, times in t.items():
                ratio = f"{np.median(times) / np.median(t[reference]):6.2f}" if reference in t else ""
                print(f"{case:7} {label:8} {name:15} {min(times) * 1e3:9.2f} / {np.median(times) * 1e3:<9.2f}"
                      f" {ratio}", flush=True)
    if not args.no_compile:
        cold, warm = start_up_seconds()
        print(f"import + first depthwise, grouped and deformable forward+backward (float32): cold (compile) "
              f"{cold:.1f} s, "
              f"warm (cache) {warm:.1f} s")


if __name__ == "__main__":
    main()

"""Dense convolution speed: tinyconv's im2col + GEMM conv2d / conv_transpose2d against PyTorch, side by side.

Usage (from the repository root):

    python benchmarks/bench_conv_dev.py                 # every layer, 2 threads, 15 timed repeats
    python benchmarks/bench_conv_dev.py --layers r20_16 r20_32 r20_64 r20_s2   # ResNet-20's layers
    python benchmarks/bench_conv_dev.py --layers 3x3 1x1 --repeats 30 --threads 1
    python benchmarks/bench_conv_dev.py --no-memory --no-compile

Each layer is timed through tinyconv.functional (what a user calls: forward,
then forward + backward through the tape with every gradient requested) and,
when `torch` is importable (`pip install torch==2.13.0`), through
torch.nn.functional on the same float32 data. The two are timed alternately,
repeat by repeat, so a noisy machine slows both alike; the table reports the
minimum and the median of the repeats, GFLOP/s from the minimum, the ratio
tinyconv / torch of the minima, and the median process CPU time (all threads)
of each side. FLOPs count 2 per multiply-add; forward +
backward is 3x the forward (grad_input and grad_weight each cost a forward).

It also prints a busy-loop control (the speedup of a pure parallel loop at the
chosen thread count: below ~1.5 the other cores were busy and multi-thread
timings mean little), the machine's SGEMM rate (NumPy 2048x2048 float32, the
roofline of any im2col route), the traced peak memory of tinyconv's 3x3 layer
forward + backward (tracemalloc sees NumPy's allocations), and the Numba
start-up cost: a cold run (empty NUMBA_CACHE_DIR: compile) and a warm run
(same cache: load) of import + first 3x3 forward + backward, each in a fresh
Python process.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinyconv  # noqa: E402
import tinyconv.functional as F  # noqa: E402
from tinyconv.threads import set_num_threads  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None

# name: (op, N, C_in, C_out, H, k, stride, padding, dilation, groups)
LAYERS = {
    "3x3": ("conv", 64, 64, 64, 32, 3, 1, 1, 1, 1),
    "1x1": ("conv", 64, 128, 128, 16, 1, 1, 0, 1, 1),
    "g8": ("conv", 64, 128, 128, 16, 3, 1, 1, 1, 8),
    "d2": ("conv", 64, 64, 64, 32, 3, 1, 2, 2, 1),
    "t4x4s2": ("transpose", 64, 64, 32, 16, 4, 2, 1, 1, 1),
    # ResNet-20's convolutions at batch 128 (issue 6): few channels, small planes
    "r20_16": ("conv", 128, 16, 16, 32, 3, 1, 1, 1, 1),
    "r20_32": ("conv", 128, 32, 32, 16, 3, 1, 1, 1, 1),
    "r20_64": ("conv", 128, 64, 64, 8, 3, 1, 1, 1, 1),
    "r20_s2": ("conv", 128, 16, 32, 32, 3, 2, 1, 1, 1),
}


def make_layer(name, rng):
    op, n, c_in, c_out, h, k, s, p, d, g = LAYERS[name]
    x = rng.standard_normal((n, c_in, h, h)).astype(np.float32)
    w_shape = (c_out, c_in // g, k, k) if op == "conv" else (c_in, c_out // g, k, k)
    w = (rng.standard_normal(w_shape) / np.sqrt(c_in * k * k)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    if op == "conv":
        out_h = (h + 2 * p - d * (k - 1) - 1) // s + 1
        flops = 2 * n * c_out * out_h * out_h * (c_in // g) * k * k
    else:
        flops = 2 * n * c_in * h * h * (c_out // g) * k * k

    def ours(backward):
        xt, wt, bt = (tinyconv.Tensor(a, requires_grad=backward) for a in (x, w, b))
        y = (F.conv2d(xt, wt, bt, s, p, d, g) if op == "conv" else
             F.conv_transpose2d(xt, wt, bt, s, p, 0, g, d))
        if backward:
            y.backward(np.ones_like(y.data))

    def theirs(backward):
        xt, wt, bt = (torch.from_numpy(a).requires_grad_(backward) for a in (x, w, b))
        y = (TF.conv2d(xt, wt, bt, s, p, d, g) if op == "conv" else
             TF.conv_transpose2d(xt, wt, bt, s, p, 0, g, d))
        if backward:
            y.backward(torch.ones_like(y))

    return ours, (theirs if torch is not None else None), flops


def time_side_by_side(functions, repeats, warmup=3):
    """({name: [wall seconds per repeat]}, {name: [process CPU seconds per repeat]}), called alternately."""
    times = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for i in range(warmup + repeats):
        for name, fn in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return times, cpu


def sgemm_rate(repeats=5):
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * 2048 ** 3 / best / 1e9


@numba.njit(parallel=True)
def _busy(work):
    total = np.zeros(2)
    for t in numba.prange(2):
        acc = 0.0
        for i in range(work):
            acc += np.sin(i * 1e-9)
        total[t] = acc
    return total


def parallel_speedup(threads, work=5_000_000):
    """Wall time of a pure two-way busy loop on 1 thread / on `threads` threads: ~2 on an idle 2-core machine,
    ~1 when other processes hold the second core (then 2-thread timings say nothing about our parallelism)."""
    _busy(10)
    numba.set_num_threads(1)
    one = min(_timed(lambda: _busy(work)) for _ in range(3))
    numba.set_num_threads(threads)
    return one / min(_timed(lambda: _busy(work)) for _ in range(3))


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_memory_mb(name):
    ours, _, _ = make_layer(name, np.random.default_rng(0))
    ours(True)
    tracemalloc.start()
    ours(True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


START_UP = """
import time; start = time.perf_counter()
import numpy as np, tinyconv, tinyconv.functional as F
x = tinyconv.Tensor(np.ones((2, 8, 8, 8), np.float32), requires_grad=True)
w = tinyconv.Tensor(np.ones((8, 8, 3, 3), np.float32), requires_grad=True)
F.conv2d(x, w, padding=1).sum().backward()
print(time.perf_counter() - start)
"""


def start_up_seconds():
    """(cold, warm) seconds of import + first 3x3 conv2d forward + backward in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=root)
        run = [sys.executable, "-c", START_UP]
        return tuple(float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
                     for _ in range(2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; torch {torch.__version__ if torch else 'not installed'}; "
          f"SGEMM 2048: {sgemm_rate():.0f} GFLOP/s; busy-loop speedup at {args.threads} threads: "
          f"{parallel_speedup(args.threads):.2f}x")
    print(f"{'layer':8} {'pass':8} {'tinyconv ms (min/med)':>22} {'GFLOP/s':>8} {'torch ms (min/med)':>19} "
          f"{'GFLOP/s':>8} {'ratio':>6} {'CPU ms med (ours/torch)':>24}")
    rng = np.random.default_rng(0)
    for name in args.layers:
        ours, theirs, flops = make_layer(name, rng)
        for backward, label, work in ((False, "fwd", flops), (True, "fwd+bwd", 3 * flops)):
            fns = {"ours": lambda: ours(backward)}
            if theirs is not None:
                fns["torch"] = lambda: theirs(backward)
            t, cpu = time_side_by_side(fns, args.repeats)
            row = f"{name:8} {label:8} {min(t['ours']) * 1e3:10.1f}/{np.median(t['ours']) * 1e3:<11.1f}" \
                  f"{work / min(t['ours']) / 1e9:8.0f}"
            if theirs is not None:
                row += f" {min(t['torch']) * 1e3:8.1f}/{np.median(t['torch']) * 1e3:<10.1f}" \
                       f"{work / min(t['torch']) / 1e9:8.0f} {min(t['ours']) / min(t['torch']):6.2f} " \
                       f"{np.median(cpu['ours']) * 1e3:11.1f}/{np.median(cpu['torch']) * 1e3:<11.1f}"
            print(row, flush=True)
    print(f"SGEMM 2048 after: {sgemm_rate():.0f} GFLOP/s; busy-loop speedup: {parallel_speedup(args.threads):.2f}x")
    if not args.no_memory:
        print(f"peak traced memory, 3x3 layer forward+backward (x and y are 16 MiB each): {peak_memory_mb('3x3'):.0f} MiB")
    if not args.no_compile:
        cold, warm = start_up_seconds()
        print(f"import + first conv2d forward+backward: cold (compile) {cold:.1f} s, warm (cache) {warm:.1f} s")


if __name__ == "__main__":
    main()

"""Pooling, batch norm and channel shuffle: tinyconv kernels against PyTorch CPU, side by side in one run.

    python benchmarks/bench_pool_bn_dev.py            # timings table (needs torch for the comparison column)
    python benchmarks/bench_pool_bn_dev.py --compile  # cold-compile and warm-cache first-call times

Shape: N=64, C=64, 32x32, float32. "fwd" is the forward kernel; "fwd+bwd" the
forward and then the backward of a random grad_output (for tinyconv, the two
kernels.<op> calls; for PyTorch, y = f(x); y.backward(g) with x requiring grad).
Times are the median (and min) of `--repeat` runs after two warm-up runs, in
milliseconds; set NUMBA_NUM_THREADS to compare at another thread count
(PyTorch is given the same number).
torch is imported here only, never by tinyconv.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import batchnorm, pool, shuffle  # noqa: E402

SHAPE = (64, 64, 32, 32)


CLOCK = time.perf_counter


def timing_ms(fn, repeat):
    """(median, min) time of fn in ms, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return 1000 * float(np.median(times)), 1000 * float(np.min(times))


def ours(x, g_for):
    """name -> (forward, forward + backward) closures over the tinyconv kernels."""
    C = x.shape[1]
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    one, two, pad1 = (1, 1), (2, 2), (1, 1)

    def max_pool(k, s, p):
        fwd = lambda: pool.max_pool2d_forward(x, k, s, p, one, False)  # noqa: E731
        g = g_for(fwd()[0].shape)

        def both():
            y, idx = fwd()
            return pool.max_pool2d_backward(g, idx, x.shape)
        return fwd, both

    def avg_pool():
        fwd = lambda: pool.avg_pool2d_forward(x, two, two, (0, 0), False, True)  # noqa: E731
        g = g_for(fwd().shape)
        return fwd, lambda: (fwd(), pool.avg_pool2d_backward(g, x.shape, two, two, (0, 0), False, True))

    def bn():
        fwd = lambda: batchnorm.batch_norm_forward(x, w, b, 1e-5)  # noqa: E731
        g = g_for(x.shape)

        def both():
            y, mean, inv_std = fwd()
            return batchnorm.batch_norm_backward(g, x, w, mean, inv_std)
        return fwd, both

    def shuf():
        g = g_for(x.shape)
        return (lambda: shuffle.channel_shuffle_forward(x, 4),
                lambda: (shuffle.channel_shuffle_forward(x, 4), shuffle.channel_shuffle_backward(g, 4)))

    return {"max_pool 2x2 s2": max_pool(two, two, (0, 0)), "max_pool 3x3 s2 p1": max_pool((3, 3), two, pad1),
            "avg_pool 2x2 s2": avg_pool(), "batch_norm train": bn(), "channel_shuffle g=4": shuf()}


def theirs(x_np, g_for):
    import torch
    import torch.nn.functional as TF
    x = torch.from_numpy(x_np)
    w, b = torch.ones(x.shape[1], requires_grad=True), torch.zeros(x.shape[1], requires_grad=True)
    ops = {"max_pool 2x2 s2": lambda t: TF.max_pool2d(t, 2, 2),
           "max_pool 3x3 s2 p1": lambda t: TF.max_pool2d(t, 3, 2, 1),
           "avg_pool 2x2 s2": lambda t: TF.avg_pool2d(t, 2, 2),
           "batch_norm train": lambda t: TF.batch_norm(t, None, None, w, b, training=True),
           "channel_shuffle g=4": lambda t: TF.channel_shuffle(t, 4)}
    result = {}
    for name, op in ops.items():
        g = torch.from_numpy(g_for(tuple(op(x).shape)))

        def fwd_no_grad(op=op):
            with torch.no_grad():
                return op(x)

        def fwd(op=op):
            return op(x.detach().requires_grad_())

        def both(op=op, g=g):
            op(x.detach().requires_grad_()).backward(g)
        result[name] = (fwd_no_grad, fwd, both)
    return result


def table(repeat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    g_for = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    mine = ours(x, g_for)
    try:
        import torch
        import numba
        torch.set_num_threads(numba.get_num_threads())  # the same thread count on both sides
        ref = theirs(x, g_for)
        version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        ref, version = {}, "torch not installed"
    import numba
    print(f"N, C, H, W = {SHAPE}, float32; numba {numba.__version__} ({numba.get_num_threads()} threads); "
          f"{version}; median (min) of {repeat}, ms of {'CPU' if CLOCK is time.process_time else 'wall'} time")
    print(f"{'op':<21}{'ours fwd':>15}{'torch fwd':>15}{'torch fwd':>15}{'ours f+b':>15}{'torch f+b':>15}"
          f"{'f+b ratio':>11}")
    print(f"{'':<21}{'':>15}{'no_grad':>15}{'grad':>15}{'':>15}{'':>15}{'ours/torch':>11}")
    cell = lambda t: f"{t[0]:8.2f} ({t[1]:.2f})"  # noqa: E731
    for name, (fwd, both) in mine.items():
        a, b = timing_ms(fwd, repeat), timing_ms(both, repeat)
        if name in ref:
            t0, t1, t2 = (timing_ms(f, repeat) for f in ref[name])
            print(f"{name:<21}{cell(a):>15}{cell(t0):>15}{cell(t1):>15}{cell(b):>15}{cell(t2):>15}"
                  f"{b[0] / t2[0]:11.2f}")
        else:
            print(f"{name:<21}{cell(a):>15}{'':>15}{'':>15}{cell(b):>15}")

FIRST_CALL = """
import time, numpy as np
start = time.perf_counter()
from kernels import batchnorm, pool, shuffle
for dtype in (np.float32, np.float64):
    x = np.ones((2, 4, 6, 6), dtype)
    y, idx = pool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    pool.max_pool2d_backward(y, idx, x.shape)
    pool.avg_pool2d_backward(pool.avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0), False, True), x.shape, (2, 2),
                             (2, 2), (0, 0), False, True)
    y, mean, inv_std = batchnorm.batch_norm_forward(x, None, None, 1e-5)
    batchnorm.batch_norm_backward(y, x, None, mean, inv_std)
    shuffle.channel_shuffle_backward(shuffle.channel_shuffle_forward(x, 2), 2)
print(f"{time.perf_counter() - start:.2f}")
"""


def first_calls():
    """Import + first call of every kernel (float32 and float64) in a fresh process: empty cache, then warm cache."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (compile)", "warm (cached)", "warm (cached)"):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL], cwd=root, env=env, capture_output=True,
                                 text=True, check=True).stdout.strip()
            print(f"{label:<16} {out} s  (7 parallel kernels x 2 dtypes)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="time cold compile and warm cached first calls")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time instead of wall time (robust on a loaded machine; "
                             "meaningful with NUMBA_NUM_THREADS=1, where both sides run one thread)")
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK = time.process_time
    if args.compile:
        first_calls()
    else:
        table(args.repeat)

"""The timing harness every suite shares.

What one measurement is:

    warm-up   the first call, timed on its own and reported separately: it
              includes Numba's JIT compile (or loading the compiled code
              from the cache), BLAS thread start-up and first-touch page
              faults, none of which a training loop pays twice;
    repeats   then R calls, each timed with time.perf_counter; the table
              shows the median and the min-max spread, never a single run.

Against what:

    GEMM rate the machine's own BLAS matrix-multiply rate, measured at the
              start of the same run (np.dot of two 2048x2048 matrices in the
              benchmark dtype, best of a few), is the practical roofline of
              every im2col route: "% GEMM" = achieved GFLOP/s / GEMM GFLOP/s.
    PyTorch   when `import torch` works, the same case through
              torch.nn.functional, same threads, same run; the ratio is
              tinyconv time / PyTorch time (below 1 = tinyconv is faster).

Counting: MACs are multiply-adds; FLOPs = 2 x MACs. Forward+backward of a
convolution counts 3 x the forward (grad-input and grad-weight each cost one
forward's worth), the convention of the roofline literature. Pooling, batch
norm and channel shuffle do no multiply-adds worth counting: they show time
only.

torch is imported here lazily and optionally; tinyconv itself never imports it.
"""
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

import tinyconv

GEMM_SIZE = 2048
SMOKE_GEMM_SIZE = 256


# ---- timing -----------------------------------------------------------------
@dataclass
class Timing:
    """Seconds: the warm-up call, then the timed repeats (wall time; process CPU time
    of the same calls, all threads, in cpu_times when the timer recorded it)."""
    warmup: float
    times: list
    cpu_times: list = field(default_factory=list)

    @property
    def median(self):
        return statistics.median(self.times)

    @property
    def min(self):
        return min(self.times)

    @property
    def max(self):
        return max(self.times)


def time_call(fn, repeat, budget_s=None, min_repeat=1):
    """Call fn once as warm-up (timed apart), then `repeat` timed calls.

    With `budget_s`, stop repeating once the timed calls have used that many
    seconds, after at least `min_repeat` of them (slow models).
    """
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    times = []
    while len(times) < max(1, repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if budget_s is not None and len(times) >= min_repeat and sum(times) >= budget_s:
            break
    return Timing(warmup, times)


def peak_mb(fn):
    """MB of NumPy memory allocated at the peak of one fn() call (tracemalloc).

    Arrays alive before the call (the inputs) do not count; allocations Numba
    makes inside jitted code are invisible to tracemalloc.
    """
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / 2**20


def time_side_by_side(fns, repeat):
    """{name: Timing} for several functions timed alternately, repeat by repeat.

    Each function's first call is its warm-up; then the timed calls go
    round-robin, so a burst of load from another process slows every
    contender alike instead of whichever ran at the time. Each round starts
    one contender later (a, b, c; b, c, a; c, a, b; ...): what a call leaves
    behind (caches filled with its data, PyTorch's worker threads still
    spinning) slows whichever runs next, and in a fixed order that was always
    the same one (a depthwise layer's first contender, timed against the
    same code in second place: 16% slower after PyTorch, 7% without it).
    Each timed call's process CPU time (time.process_time, all threads)
    goes into Timing.cpu_times: less disturbed by other processes than wall
    time.
    """
    warmups = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        warmups[name] = time.perf_counter() - start
    times = {name: [] for name in fns}
    cpu_times = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(max(1, repeat)):
        first = round_ % len(names)
        for name in names[first:] + names[:first]:
            fn = fns[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    return {name: Timing(warmups[name], times[name], cpu_times[name]) for name in fns}


STARTUP_SNIPPET = """
import time; start = time.perf_counter()
import numpy as np, tinyconv, tinyconv.functional as F
x = tinyconv.Tensor(np.ones((2, 8, 8, 8), np.float32), requires_grad=True)
w = tinyconv.Tensor(np.ones((8, 8, 3, 3), np.float32), requires_grad=True)
wd = tinyconv.Tensor(np.ones((8, 1, 3, 3), np.float32), requires_grad=True)
y = F.conv2d(x, w, padding=1) + F.conv2d(x, wd, padding=1, groups=8)
F.max_pool2d(y, 2).sum().backward()
print(time.perf_counter() - start)
"""


def startup_seconds(cache_dir=None):
    """Seconds for a fresh Python process to import tinyconv and run a first
    3x3 conv, depthwise conv and max pool forward+backward.

    cache_dir=None: Numba's usual cache (warm start: the compiled kernels are
    loaded); a path to an empty directory: nothing cached (cold start: compile).
    """
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", STARTUP_SNIPPET], env=env, capture_output=True, text=True,
                          check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def startup_cold_warm():
    """(cold, warm) start-up seconds: a fresh empty Numba cache, then the same cache again."""
    with tempfile.TemporaryDirectory() as cache:
        return startup_seconds(cache), startup_seconds(cache)


# ---- the machine ------------------------------------------------------------
def cpu_model():
    """'AMD EPYC 7B13'-style name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags():
    """The SIMD extensions that decide BLAS speed (avx2, avx512f), if known."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f") if f in flags]
    except OSError:
        pass
    return []


def core_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gemm_gflops(dtype, size=GEMM_SIZE, tries=5):
    """Best-of-`tries` np.dot rate on size x size matrices, in GFLOP/s (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    np.dot(a, b)                       # warm-up: BLAS threads start
    best = min(time_call(lambda: np.dot(a, b), tries).times)
    return 2.0 * size ** 3 / best / 1e9


# ---- threads ----------------------------------------------------------------
def _threads_module():
    """tinyconv.threads (Numba and NumPy's OpenBLAS together), or None before it has landed."""
    try:
        from tinyconv import threads
    except ImportError:
        return None
    return threads


def set_threads(n, torch=None):
    """Use n threads everywhere: tinyconv's kernels (Numba), NumPy's BLAS, PyTorch.

    tinyconv.threads.set_num_threads sets Numba's and OpenBLAS's thread
    counts; without it only Numba's is set (and the BLAS is reported unknown).
    """
    module = _threads_module()
    if module is not None:
        module.set_num_threads(n)
    else:
        import numba
        numba.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return current_threads()


def current_threads():
    """{'numba': threads, 'blas': threads or None when NumPy's BLAS cannot be read}."""
    module = _threads_module()
    if module is not None:
        return {"numba": module.get_num_threads(), "blas": module.get_blas_num_threads()}
    import numba
    return {"numba": numba.get_num_threads(), "blas": None}


def import_torch():
    """torch, or None when it is not installed (the torch column is then skipped)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# ---- the run's context ------------------------------------------------------
@dataclass
class Context:
    """Everything a suite needs: settings, the machine's GEMM rate, torch or None."""
    dtype: np.dtype = np.dtype(np.float32)
    repeat: int = 5
    smoke: bool = False
    threads: int = 0
    torch: object = None
    gemm: float = 0.0
    gemm_size: int = GEMM_SIZE
    print_fn: object = print
    torch_status: str = ""
    cache: dict = field(default_factory=dict)

    def pick(self, full, smoke):
        """`full` normally, `smoke` in --smoke mode (tiny shapes)."""
        return smoke if self.smoke else full


def make_context(threads=None, dtype="float32", repeat=5, smoke=False, use_torch=True, print_fn=print):
    """Set the threads, import torch if wanted, measure the GEMM roofline."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    torch = import_torch() if use_torch else None
    threads = threads or core_count()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    set_threads(threads, torch)
    ctx = Context(dtype=dtype, repeat=1 if smoke else repeat, smoke=smoke, threads=threads,
                  torch=torch, print_fn=print_fn)
    ctx.torch_status = ("PyTorch in use" if torch is not None else
                        "PyTorch not used (--no-torch): torch comparison skipped" if not use_torch else
                        "PyTorch not installed (pip install torch==2.13.0): torch comparison skipped")
    ctx.gemm_size = SMOKE_GEMM_SIZE if smoke else GEMM_SIZE
    ctx.gemm = gemm_gflops(dtype, ctx.gemm_size, tries=2 if smoke else 5)
    return ctx


def machine_info(ctx):
    """The header facts, as a dict (it goes into the JSON too)."""
    import numba
    threads = current_threads()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": core_count(),
        "threads": ctx.threads,
        "numba_threads": threads["numba"],
        "blas_threads": threads["blas"],
        "openblas_cores": tinyconv.threads.openblas_cores(),
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "dtype": ctx.dtype.name,
        "gemm_size": ctx.gemm_size,
        "gemm_gflops": round(ctx.gemm, 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "tinyconv": tinyconv.__version__,
        "torch": ctx.torch.__version__ if ctx.torch is not None else None,
        "torch_status": ctx.torch_status,
        "repeat": ctx.repeat,
        "smoke": ctx.smoke,
    }


def openblas_line(cores, coretype_env):
    """Which OpenBLAS kernels run (tinyconv.threads.openblas_cores) and whether the environment chose them."""
    names = ", ".join(f"{package} {name or 'unknown'}" for package, name in cores.items())
    chosen = (f"OPENBLAS_CORETYPE={coretype_env} set in the environment" if coretype_env else
              "chosen by OpenBLAS from the CPU model")
    return f"OpenBLAS kernels: {names} ({chosen}; scipy's runs the conv GEMMs, numpy's the roofline)"


def header_lines(info):
    gemm_name = "SGEMM" if info["dtype"] == "float32" else "DGEMM"
    flags = ", ".join(info["cpu_flags"]) or "no SIMD flags found"
    torch = f"PyTorch {info['torch']}" if info["torch"] else info["torch_status"]
    blas = info["blas_threads"] if info["blas_threads"] is not None else "unknown (BLAS not reachable)"
    load = info["load_average"]
    busy = (f"WARNING: load average {load[0]:.1f} on {info['cores']} cores: other processes compete for the CPU; "
            "multi-threaded timings are unreliable (parallel regions wait for descheduled threads)."
            if load and load[0] > 0.75 * info["cores"] else None)
    lines = [
        f"tinyconv bench  {info['date']}",
        f"CPU: {info['cpu']} ({flags}), {info['cores']} cores; threads: numba {info['numba_threads']}, BLAS {blas}",
        f"load average at start (1, 5, 15 min): {info['load_average']}",
        f"{gemm_name} {info['gemm_size']}x{info['gemm_size']} roofline: {info['gemm_gflops']:.1f} GFLOP/s "
        f"(np.dot, best of a few, measured now)",
        openblas_line(info["openblas_cores"], info["openblas_coretype_env"]),
        f"dtype {info['dtype']}, repeats {info['repeat']}{' (smoke mode: tiny shapes)' if info['smoke'] else ''}; "
        f"numpy {info['numpy']}, numba {info['numba']}, {torch}",
        "FLOPs = 2 x MACs (multiply-adds); fwd+bwd of a conv counts 3 x the forward.",
    ]
    return lines + ([busy] if busy else [])


# ---- formatting -------------------------------------------------------------
def fmt_count(value):
    """1234567 -> '1.23 M'; None -> '-'."""
    if value is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:g}"


def fmt_ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 100 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def fmt_spread(lo, hi):
    if lo is None:
        return "-"
    return f"{fmt_ms(lo)}-{fmt_ms(hi)}"


def fmt_num(value, digits=1, suffix=""):
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def timing_cells(rec):
    """[warm-up ms, median ms, min-max ms] of a record; '-' where it was not timed."""
    return [fmt_ms(rec["warmup_s"]), fmt_ms(rec["median_s"]), fmt_spread(rec["min_s"], rec["max_s"])]


def status_cell(rec):
    """'' for a timed record, else 'unavailable: why' / 'error: message' (shortened)."""
    if rec["status"] == "ok":
        return rec.get("note", "")
    text = f"{rec['status']}: {rec['note']}" if rec["note"] else rec["status"]
    return text if len(text) <= 70 else text[:67] + "..."


@dataclass
class SuiteResult:
    """What a suite hands back: a table, its JSON records, notes, bars to plot."""
    name: str
    title: str
    headers: list
    rows: list
    records: list
    notes: list = field(default_factory=list)
    plot: list = field(default_factory=list)       # (label, value) bars
    plot_label: str = "median ms"

    def text(self):
        lines = [f"== {self.name}: {self.title}", format_table(self.headers, self.rows) if self.rows else "(no rows)"]
        return "\n".join(lines + self.notes)


def format_table(headers, rows):
    """An aligned text table: first column left-aligned, the others right-aligned.

    >>> print(format_table(["case", "ms"], [["a", "1.0"], ["long name", "10.25"]]))
    case          ms
    ---------  -----
    a            1.0
    long name  10.25
    """
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]

    def line(cells):
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    return "\n".join([line([str(h) for h in headers]), line(["-" * w for w in widths])] + [line(r) for r in rows])

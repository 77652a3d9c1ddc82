"""How many CPU threads tinyconv's kernels use.

Two thread pools do the work:

* Numba's: every `prange` loop in kernels/ (conv2d and conv_transpose2d
  with their GEMMs, depthwise, pooling, ...). `numba.set_num_threads` sets
  it at run time, up to the number Numba started with (NUMBA_NUM_THREADS,
  default: all cores).
* NumPy's BLAS: `np.matmul` / `@` called from Python (linear layers, the
  deformable conv's GEMMs). NumPy has no call for this. When NumPy's BLAS is OpenBLAS (the NumPy
  wheels on PyPI bundle it as `scipy_openblas`), this module calls
  OpenBLAS's own `openblas_set_num_threads` through ctypes, with no new
  dependency. With another BLAS (MKL, Accelerate, a system BLAS) the BLAS
  thread count is left alone: set it before starting Python with
  OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS, or use
  threadpoolctl. `blas_threads_controllable()` says which case you are in.

A third one is pinned, not set: SciPy's own OpenBLAS copy. Numba's
`np.dot` inside jitted code calls SciPy's BLAS (scipy.linalg.cython_blas),
and conv2d / conv_transpose2d call it from *inside* their parallel loops,
one small GEMM per (sample, group) on each Numba thread. A multi-threaded
OpenBLAS called from several threads at once makes each call wait for its
own worker threads, which on a busy machine multiplies the time (measured:
3x3 conv forward 3-6.7 s instead of 0.25 s). So on import this module sets
SciPy's OpenBLAS to 1 thread with its `scipy_openblas_set_num_threads(1)`
(found by ctypes in scipy.libs/, without importing SciPy: loading the same
file again gives the library SciPy later uses). The parallelism comes
from Numba's threads instead. Side effect: scipy.linalg in the same process
also runs on one thread. `openblas_set_num_threads_local` would be
per-thread, but it must be called on each Numba worker thread, which cached
jitted code cannot do portably. With a SciPy built on another BLAS nothing is
pinned (`scipy_blas_pinned()` is False) and the results are unchanged.

>>> import tinyconv
>>> n = tinyconv.get_num_threads()
>>> tinyconv.set_num_threads(1); tinyconv.get_num_threads()
1
>>> tinyconv.set_num_threads(n)
"""
import ctypes
import glob
import importlib.util
import numbers
import os

import numba
import numpy as np

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")
_CORENAMES = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
              "openblas_get_corename64_", "openblas_get_corename")


def _first(lib, names):
    """The first of these functions lib exports, or None."""
    return next((getattr(lib, name) for name in names if hasattr(lib, name)), None)


def _find_openblas():
    """(set, get, lib): ctypes functions of the OpenBLAS NumPy loaded, and the library; or (None, None, None)."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs_dir, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: this returns the same library
        except OSError:
            continue
        setter, getter = _first(lib, _SETTERS), _first(lib, _GETTERS)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
            return setter, getter, lib
    return None, None, None


_blas_set, _blas_get, _numpy_openblas = _find_openblas()


def _pin_scipy_openblas():
    """Set SciPy's OpenBLAS (the BLAS of np.dot inside Numba code) to 1 thread; the library, or None if not found."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or spec.origin is None:
        return None
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs_dir, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = _first(lib, ("scipy_openblas_set_num_threads", "openblas_set_num_threads"))
        if setter is not None:
            setter.argtypes, setter.restype = [ctypes.c_int], None
            setter(1)
            return lib
    return None


_scipy_openblas = _pin_scipy_openblas()


def scipy_blas_pinned():
    """True when SciPy's OpenBLAS (used by np.dot inside conv2d's parallel loops) was set to 1 thread."""
    return _scipy_openblas is not None


def openblas_cores():
    """{"numpy": name, "scipy": name}: the kernel set each OpenBLAS copy chose when it loaded.

    OpenBLAS's wheels carry kernels for many CPUs and pick one set at load time from the CPU model, or
    from the environment variable OPENBLAS_CORETYPE when it is set (e.g. "Haswell": AVX2, "SkylakeX":
    AVX-512). SciPy's copy runs conv2d's and conv_transpose2d's GEMMs (kernels/blas.py), NumPy's np.matmul.
    On an AVX-512 CPU pinned to Haswell the GEMMs run at about half speed (measured on a Zen 5: SGEMM
    131 vs 252 GFLOP/s on one thread). A name is None where the library or its call was not found."""
    names = {}
    for package, lib in (("numpy", _numpy_openblas), ("scipy", _scipy_openblas)):
        corename = None if lib is None else _first(lib, _CORENAMES)
        if corename is not None:
            corename.restype = ctypes.c_char_p
        names[package] = None if corename is None else corename().decode()
    return names


def blas_threads_controllable():
    """True when set_num_threads also sets NumPy's BLAS (an OpenBLAS it could find)."""
    return _blas_set is not None


def set_num_threads(n):
    """Use n threads in Numba's parallel loops and (if controllable) in NumPy's BLAS."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {n!r}")
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n must be in [1, {numba.config.NUMBA_NUM_THREADS}] (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))
    if _blas_set is not None:
        _blas_set(int(n))


def get_num_threads():
    """The number of threads Numba's parallel loops use now."""
    return numba.get_num_threads()


def get_blas_num_threads():
    """NumPy's BLAS thread count, or None when it cannot be read (see the module docstring)."""
    return None if _blas_get is None else int(_blas_get())

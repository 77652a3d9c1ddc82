"""tinyconv.threads: thread counts, the pinned SciPy BLAS, and which OpenBLAS kernels run."""
import os
import subprocess
import sys

import numba
import pytest

import tinyconv
from tinyconv import threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_set_num_threads_round_trips_and_rejects_bad_counts():
    previous = tinyconv.get_num_threads()
    try:
        tinyconv.set_num_threads(1)
        assert tinyconv.get_num_threads() == 1 == numba.get_num_threads()
        if threads.blas_threads_controllable():
            assert threads.get_blas_num_threads() == 1
    finally:
        tinyconv.set_num_threads(previous)
    with pytest.raises(TypeError, match="n must be an int, got 2.0"):
        tinyconv.set_num_threads(2.0)
    with pytest.raises(TypeError, match="n must be an int, got True"):
        tinyconv.set_num_threads(True)
    with pytest.raises(ValueError, match=r"n must be in \[1, \d+\] \(NUMBA_NUM_THREADS\), got 0"):
        tinyconv.set_num_threads(0)


def test_openblas_cores_name_a_kernel_set_or_none():
    cores = threads.openblas_cores()
    assert set(cores) == {"numpy", "scipy"}
    assert all(name is None or (isinstance(name, str) and name) for name in cores.values())
    assert threads.openblas_cores() == cores  # asked again: the same libraries, the same choice


def _cores_in_child(coretype):
    """openblas_cores() in a fresh process started with OPENBLAS_CORETYPE=coretype."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_CORETYPE"] = coretype
    code = "import tinyconv.threads as t; c = t.openblas_cores(); print(c['numpy'], c['scipy'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_openblas_cores_report_what_the_environment_chose():
    """OPENBLAS_CORETYPE picks the kernel set when OpenBLAS loads; openblas_cores reads it back from the
    libraries themselves (Haswell: AVX2, which every x86-64 CPU this runs on supports)."""
    if threads.openblas_cores() == {"numpy": None, "scipy": None}:
        pytest.skip("no OpenBLAS with a corename call found (NumPy and SciPy built on another BLAS)")
    found = [name for name in _cores_in_child("Haswell") if name != "None"]
    assert found and all(name == "Haswell" for name in found)

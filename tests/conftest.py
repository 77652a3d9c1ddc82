"""Shared test fixtures: small data sets written in the real IDX format."""
import functools
import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest


def idx_bytes(array, magic):
    """An IDX file: big-endian magic, one big-endian int per dimension, then the uint8 data."""
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path, array, magic, gz=False):
    raw = idx_bytes(array, magic)
    path = pathlib.Path(path)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture(scope="session")
def quadrant_data(tmp_path_factory):
    """A learnable 28x28 Fashion-MNIST-format set: the class (0..3) is which quadrant is bright.

    96 training and 48 test images; returns the directory.
    """
    directory = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("t10k", 48)):
        labels = rng.integers(0, 4, size=n)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, label in enumerate(labels):
            r, c = divmod(label, 2)
            images[i, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] += 180
        write_idx(directory / f"{split}-images-idx3-ubyte", images, 2051)
        write_idx(directory / f"{split}-labels-idx1-ubyte", labels, 2049)
    return str(directory)


def record_thread_counts(monkeypatch, module, name):
    """Wrap the jitted kernel `module.name` so each call records Numba's thread count; returns the list."""
    import numba

    seen = []
    kernel = getattr(module, name)

    def spy(*args):
        seen.append(numba.get_num_threads())
        return kernel(*args)

    monkeypatch.setattr(module, name, spy)
    return seen


# ---------------------------------------------------------------------------
# the CUDA test files: checks run in a child pytest (the simulator must be switched on before numba.cuda loads)
# ---------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_CHILD = os.environ.get("TINYCONV_CUDA_CHILD") == "1"  # True inside that child


def clean_env():
    """This process's environment without the simulator switch and the child marker."""
    return {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "TINYCONV_CUDA_CHILD")}


def run_cuda_child(test_file, simulator, timeout=600):
    """Run test_file's checks in a child pytest, under Numba's CUDA simulator or on the real GPU."""
    env = dict(clean_env(), TINYCONV_CUDA_CHILD="1")
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@functools.lru_cache(maxsize=None)
def real_gpu_present():
    """Whether numba.cuda sees a real GPU (asked once per session, in a process without the simulator)."""
    proc = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() == "True"

"""Shared test fixtures: small data sets written in the real IDX format."""
import gzip
import pathlib

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

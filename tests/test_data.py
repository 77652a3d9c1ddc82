"""Data loaders: IDX and CIFAR-10 files written here in their real formats, the real Fashion-MNIST when installed,
the restricted unpickler against malicious pickles, batches and augmentation."""
import gzip
import io
import os
import pickle

import numpy as np

from conftest import idx_bytes, write_idx  # noqa: E402
import pytest

from tinyconv import data
from tinyconv.data import (DataLoader, DatasetFormatError, DatasetNotFound, Compose, Normalize, RandomCrop,
                           RandomHorizontalFlip, UnsafePickleError, load_dataset, read_idx)


@pytest.fixture(autouse=True)
def no_env_data(monkeypatch, tmp_path):
    """Every test sees no $TINYCONV_DATA and an empty system data directory, unless it sets them."""
    monkeypatch.delenv("TINYCONV_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", str(tmp_path / "system"))


# ---- IDX files -----------------------------------------------------------------

def write_split(directory, split, images, labels, gz=False, dot=False):
    directory.mkdir(parents=True, exist_ok=True)
    sep = "." if dot else "-"
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{split}-images{sep}idx3-ubyte{suffix}", images, 2051, gz)
    write_idx(directory / f"{split}-labels{sep}idx1-ubyte{suffix}", labels, 2049, gz)


def small_mnist(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dot", [False, True])
def test_idx_round_trip(tmp_path, gz, dot):
    images, labels = small_mnist(7)
    write_split(tmp_path, "train", images, labels, gz=gz, dot=dot)
    write_split(tmp_path, "t10k", images[:3], labels[:3], gz=gz, dot=dot)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images[:, 0], images / np.float32(255))
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.info.name == "mnist" and len(ds.info.classes) == 10
    test = load_dataset("mnist", data_dir=tmp_path, train=False)
    assert len(test.images) == 3


def test_fashion_mnist_found_in_env_subdir(tmp_path, monkeypatch):
    images, labels = small_mnist(4)
    write_split(tmp_path / "fashion-mnist", "t10k", images, labels, gz=True)
    monkeypatch.setenv("TINYCONV_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist", train=False)
    assert ds.info.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(ds.labels, labels)


def test_mnist_is_not_taken_from_bare_env_dir(tmp_path, monkeypatch):
    # the bare $TINYCONV_DATA holds the default data set (Fashion-MNIST); MNIST has the same file names
    write_split(tmp_path, "train", *small_mnist(2))
    monkeypatch.setenv("TINYCONV_DATA", str(tmp_path))
    assert len(load_dataset("fashion-mnist").images) == 2
    with pytest.raises(DatasetNotFound):
        load_dataset("mnist")


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    assert isinstance(err.value, DatasetNotFound)
    assert str(tmp_path / "system" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte" in message and "$TINYCONV_DATA is not set" in message


def test_a_named_data_dir_is_the_only_place_searched(tmp_path, monkeypatch):
    images, labels = small_mnist(2)
    monkeypatch.setenv("TINYCONV_DATA", str(tmp_path))
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, 2051)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, 2049)
    assert len(load_dataset("fashion-mnist").labels) == 2  # found through $TINYCONV_DATA
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "typo")
    assert str(tmp_path / "typo") in str(err.value)


def test_half_a_split_is_not_found(tmp_path):
    images, _ = small_mnist(2)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, 2051)
    with pytest.raises(DatasetNotFound, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_payload_names_the_file(tmp_path):
    images, _ = small_mnist(3)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images, 2051)[:-5])
    with pytest.raises(DatasetFormatError, match="truncated") as err:
        read_idx(path, 2051)
    assert str(path) in str(err.value)


def test_truncated_header_and_gzip(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DatasetFormatError, match="header"):
        read_idx(short, 2049)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8), 2049))[:-12])
    with pytest.raises(DatasetFormatError, match="gzip") as err:
        read_idx(cut, 2049)
    assert str(cut) in str(err.value)


def test_trailing_bytes_are_an_error(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8), 2049) + b"\x00")
    with pytest.raises(DatasetFormatError, match="trailing"):
        read_idx(path, 2049)


def test_wrong_magic_number(tmp_path):
    images, labels = small_mnist(3)
    write_idx(tmp_path / "train-images-idx3-ubyte", labels, 2049)   # a labels file where the images should be
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 2049)
    with pytest.raises(DatasetFormatError, match="magic number 2049, expected 2051") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value)


def test_foreign_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetFormatError, match="magic number"):
        read_idx(path, 2049)


def test_count_mismatch(tmp_path):
    images, labels = small_mnist(5)
    write_split(tmp_path, "train", images, labels[:4])
    with pytest.raises(DatasetFormatError, match="5 images but .* 4 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_wrong_image_size_and_label_range(tmp_path):
    write_split(tmp_path / "a", "train", np.zeros((2, 32, 32), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(DatasetFormatError, match="32x32"):
        load_dataset("mnist", data_dir=tmp_path / "a")
    write_split(tmp_path / "b", "train", np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8))
    with pytest.raises(DatasetFormatError, match="label 10 outside 0..9"):
        load_dataset("mnist", data_dir=tmp_path / "b")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("imagenet")


def test_real_fashion_mnist():
    system = "/usr/share/datasets/fashion-mnist"
    if not os.path.isfile(os.path.join(system, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST is not installed in {system} (apt-get install dataset-fashion-mnist)")
    train = load_dataset("fashion-mnist", data_dir=system)
    test = load_dataset("fashion-mnist", data_dir=system, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.min() == 0 and train.labels.max() == 9
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    # the mean/std recorded in DatasetInfo are this training set's, to the 4 decimals given
    pixels = train.images.astype(np.float64)
    assert abs(pixels.mean() - train.info.mean[0]) < 5e-5 and abs(pixels.std() - train.info.std[0]) < 5e-5


# ---- CIFAR-10 --------------------------------------------------------------------

class Python2Pickler(pickle._Pickler):
    """Writes what Python 2 wrote for the real batches: bytes (Python 2's str) as SHORT_BINSTRING / BINSTRING,
    and the dtype's text as bytes too (Python 2's str), where Python 3 writes text."""

    dispatch = dict(pickle._Pickler.dispatch)

    def reducer_override(self, obj):
        if type(obj) is type(np.dtype(np.uint8)):
            constructor, (name, align, copy), (version, order, *rest) = obj.__reduce__()
            return constructor, (name.encode(), align, copy), (version, order.encode(), *rest)
        return NotImplemented

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else
                    pickle.BINSTRING + n.to_bytes(4, "little")) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5",
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def dump(obj, python2=False):
    if not python2:
        return pickle.dumps(obj, protocol=2)
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


@pytest.mark.parametrize("python2", [False, True])
def test_cifar_round_trip(tmp_path, python2):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [cifar_batch(3, seed) for seed in range(6)]
    for i, batch in enumerate(batches[:5]):
        (folder / f"data_batch_{i + 1}").write_bytes(dump(batch, python2))
    (folder / "test_batch").write_bytes(dump(batches[5], python2))
    if python2:
        assert b"numpy.core" not in (folder / "test_batch").read_bytes()   # numpy 2 names numpy._core
    train = load_dataset("cifar10", data_dir=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.labels, sum((b[b"labels"] for b in batches[:5]), []))
    # pixel (n, c, y, x) is byte c*1024 + y*32 + x of row n
    raw = batches[1][b"data"]
    assert train.images[4, 2, 5, 7] == np.float32(raw[1, 2 * 1024 + 5 * 32 + 7]) / np.float32(255)
    test = load_dataset("cifar10", data_dir=folder, train=False)
    np.testing.assert_array_equal(test.images.reshape(3, -1) * np.float32(255), batches[5][b"data"])
    assert test.info.classes[0] == "airplane"


def test_cifar_real_numpy_core_names(tmp_path):
    # the real batches were written by numpy 1.x under Python 2: numpy.core.multiarray._reconstruct
    raw = dump(cifar_batch(2, 0), python2=True).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "test_batch").write_bytes(raw)
    assert len(load_dataset("cifar10", data_dir=tmp_path, train=False).labels) == 2


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetNotFound, match="test_batch") as err:
        load_dataset("cifar10", data_dir=tmp_path, train=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


class RunsCommand:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("how", ["os.system", "eval", "exec"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol, how):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    payload = {"os.system": RunsCommand(os.system, command),
               "eval": RunsCommand(eval, code),
               "exec": RunsCommand(exec, code)}[how]
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": payload, b"labels": []}, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="refusing") as err:
        load_dataset("cifar10", data_dir=tmp_path, train=False)
    assert str(path) in str(err.value) and ("system" in str(err.value) or how in str(err.value))
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="dtype object"):
        load_dataset("cifar10", data_dir=tmp_path, train=False)


def test_ndarray_is_not_callable_from_a_pickle(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": RunsCommand(np.ndarray, (3,))}, protocol=2))
    with pytest.raises(UnsafePickleError, match="calls numpy.ndarray directly"):
        load_dataset("cifar10", data_dir=tmp_path, train=False)


def test_other_codecs_are_refused(tmp_path):
    # _codecs.encode is admitted only for the latin1 bytes that protocol 2 writes
    raw = pickle.dumps({b"data": b"x"}, protocol=2).replace(b"latin1", b"rot_13")
    (tmp_path / "test_batch").write_bytes(raw)
    with pytest.raises(UnsafePickleError, match="rot_13"):
        load_dataset("cifar10", data_dir=tmp_path, train=False)


@pytest.mark.parametrize("content, match", [
    (b"\x00\x01 not a pickle", "not a readable CIFAR-10 batch"),
    (pickle.dumps([1, 2], protocol=2), "holds a list"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2), "uint8 array"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2), "2 images"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2), "outside 0..9"),
    (pickle.dumps(cifar_batch(2, 0), protocol=2)[:-40], "not a readable CIFAR-10 batch"),
], ids=["not-a-pickle", "a-list", "float-data", "count-mismatch", "label-range", "cut-off"])
def test_cifar_foreign_or_broken_files(tmp_path, content, match):
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=match) as err:
        load_dataset("cifar10", data_dir=tmp_path, train=False)
    assert str(path) in str(err.value)


# ---- DataLoader ------------------------------------------------------------------

def numbered(n):
    """n images whose every pixel holds the sample's index."""
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32), np.arange(n)


def served(loader):
    return [labels.tolist() for _, labels in loader]


def test_loader_batches_and_drop_last():
    images, labels = numbered(10)
    loader = DataLoader(images, labels, batch_size=4)
    assert len(loader) == 3 and served(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = DataLoader(images, labels, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and served(dropped) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for x, y in DataLoader(images, labels, batch_size=3, shuffle=True, seed=1):
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)   # images and labels stay paired


def test_shuffle_is_a_function_of_seed_and_epoch():
    images, labels = numbered(20)
    a = DataLoader(images, labels, batch_size=6, shuffle=True, seed=3)
    b = DataLoader(images, labels, batch_size=6, shuffle=True, seed=3)
    epochs_a = [served(a) for _ in range(3)]
    assert epochs_a == [served(b) for _ in range(3)]
    assert epochs_a[0] != epochs_a[1]
    assert all(sorted(sum(epoch, [])) == list(range(20)) for epoch in epochs_a)
    assert served(DataLoader(images, labels, batch_size=6, shuffle=True, seed=4)) != epochs_a[0]
    np.testing.assert_array_equal(a.order(1), sum(epochs_a[1], []))


def test_resume_mid_epoch_is_exact():
    images, labels = numbered(12)
    transform = RandomHorizontalFlip()
    images = np.random.default_rng(0).random((12, 1, 2, 3)).astype(np.float32)
    original = DataLoader(images, labels, batch_size=5, shuffle=True, seed=9, transform=transform)
    list(original)                                 # epoch 0
    it = iter(original)
    next(it)                                       # first batch of epoch 1
    state = original.state_dict()
    rest = list(it) + [b for e in range(2) for b in original]
    resumed = DataLoader(images, labels, batch_size=5, shuffle=True, transform=transform)
    resumed.load_state_dict({k: np.asarray(v) for k, v in state.items()})   # as read back from an .npz
    again = list(resumed) + [b for e in range(2) for b in resumed]
    assert len(rest) == len(again) == 2 + 3 + 3
    for (x1, y1), (x2, y2) in zip(rest, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    resumed.set_epoch(1)
    np.testing.assert_array_equal(next(iter(resumed))[1], original.order(1)[:5])


def test_each_batch_gets_its_own_documented_generator():
    images, labels = numbered(6)

    def draw(x, rng):   # replaces each image by one number drawn from the batch's generator
        return rng.random(len(x))

    loader = DataLoader(images, labels, batch_size=2, seed=7, transform=draw)
    list(loader)
    second_epoch = [x for x, _ in loader]
    for b, x in enumerate(second_epoch):
        np.testing.assert_array_equal(x, np.random.default_rng((7, 1, 1, b)).random(2))
    assert len({x[0] for x in second_epoch}) == 3


def test_loader_rejects_bad_arguments():
    images, labels = numbered(4)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(images, labels, batch_size=0)
    with pytest.raises(ValueError, match="one entry each"):
        DataLoader(images, labels[:3], batch_size=2)
    with pytest.raises(ValueError, match="seed"):
        DataLoader(images, labels, batch_size=2, seed=-1)


# ---- augmentation ----------------------------------------------------------------

def test_random_crop_cuts_windows_of_the_padded_image():
    images = np.random.default_rng(0).random((6, 2, 5, 5)).astype(np.float32)
    out = RandomCrop(5, padding=2)(images, np.random.default_rng(1))
    assert out.shape == (6, 2, 5, 5) and out.dtype == np.float32
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = []
    for n in range(6):
        hits = [(i, j) for i in range(5) for j in range(5)
                if np.array_equal(out[n], padded[n, :, i:i + 5, j:j + 5])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 1
    np.testing.assert_array_equal(RandomCrop(5, 2)(images, np.random.default_rng(1)), out)
    np.testing.assert_array_equal(RandomCrop(5)(images, np.random.default_rng(1)), images)
    assert RandomCrop(3, 1)(images, np.random.default_rng(1)).shape == (6, 2, 3, 3)
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(10, 1)(images, np.random.default_rng(1))


def test_horizontal_flip():
    images = np.random.default_rng(0).random((40, 1, 3, 4))
    out = RandomHorizontalFlip()(images, np.random.default_rng(2))
    flipped = [np.array_equal(o, x[..., ::-1]) for o, x in zip(out, images)]
    kept = [np.array_equal(o, x) for o, x in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and 5 < sum(flipped) < 35
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(images, np.random.default_rng(0)), images[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(images, np.random.default_rng(0)), images)
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)


def test_normalize_and_compose():
    images = np.random.default_rng(0).random((8, 3, 4, 4)).astype(np.float32)
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    out = norm(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1], (images[:, 1] - 0.2) / 0.25, rtol=1e-6)
    pipeline = Compose([RandomCrop(4, 1), RandomHorizontalFlip(), norm])
    a = pipeline(images, np.random.default_rng(5))
    assert a.shape == images.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, pipeline(images, np.random.default_rng(5)))
    assert not np.array_equal(a, pipeline(images, np.random.default_rng(6)))
    with pytest.raises(ValueError, match="std > 0"):
        Normalize((0.5,), (0.0,))

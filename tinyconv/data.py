"""Data sets, batches and augmentation: MNIST / Fashion-MNIST (IDX) and CIFAR-10.

The file formats
----------------
IDX (MNIST, Fashion-MNIST), big-endian, optionally gzip-compressed:

    images  magic 2051 = 0x00000803 (0x08: unsigned bytes, 0x03: three dims),
            then N, rows, cols as int32, then N*rows*cols pixel bytes
    labels  magic 2049 = 0x00000801 (unsigned bytes, one dim),
            then N as int32, then N label bytes

    train-images-idx3-ubyte  train-labels-idx1-ubyte   60,000 samples
    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte    10,000 samples

(`train-images.idx3-ubyte` with a dot is accepted too, and `.gz` after either.)

CIFAR-10 "python version": `data_batch_1` .. `data_batch_5` (training) and
`test_batch`, often inside a `cifar-10-batches-py/` folder. Each is a pickle
(protocol 2, written by Python 2) of a dict with bytes keys:

    b'data'        uint8 array (10000, 3072): per image 1024 red, 1024 green,
                   1024 blue bytes, each plane row-major 32x32
    b'labels'      list of 10000 ints in 0..9
    b'batch_label' b'training batch 1 of 5', b'filenames' list of bytes

Unpickling can run arbitrary code, so the batches are read by
`_CifarUnpickler`, which lets a pickle name only the few numpy functions an
array needs and refuses everything else (`os.system`, `builtins.eval`, ...)
before anything runs.

What the loaders return
-----------------------
`load_dataset(name, data_dir=None, train=True)` returns a `Dataset`
(images, labels, info): images float32 (N, C, H, W) scaled to [0, 1], labels
int64 (N,), and `info` with the class names and the per-channel mean/std of
the training images for `Normalize`.

>>> ds = load_dataset("fashion-mnist", train=False)      # doctest: +SKIP
>>> ds.images.shape, ds.images.dtype, ds.labels.dtype    # doctest: +SKIP
((10000, 1, 28, 28), dtype('float32'), dtype('int64'))

Batches and augmentation
------------------------
`DataLoader` cuts (images, labels) into batches. With `shuffle=True` epoch e
uses the permutation drawn from a generator seeded with (seed, e), and the
augmentation of batch b of epoch e uses a generator seeded with
(seed, e, b): the whole run is a function of the seed, so `state_dict()`
(epoch and batch reached) is all a checkpoint needs to resume exactly.
Transforms (`RandomCrop`, `RandomHorizontalFlip`, `Normalize`, `Compose`) are
callables `transform(images, rng) -> images` working on a whole NCHW batch at
once.
"""
import gzip
import math
import os
import pickle
from typing import NamedTuple

import numpy as np

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class DatasetNotFound(FileNotFoundError):
    """The data set's files are in none of the places searched."""


class DatasetFormatError(ValueError):
    """A data file is truncated, foreign or inconsistent with its partner."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR-10 batch never contains."""


class DatasetInfo(NamedTuple):
    name: str
    classes: tuple   # class names, index = label
    mean: tuple      # per-channel mean of the training images in [0, 1]
    std: tuple       # per-channel standard deviation of the same
    shape: tuple     # (C, H, W) of one image


class Dataset(NamedTuple):
    images: np.ndarray   # float32 (N, C, H, W) in [0, 1]
    labels: np.ndarray   # int64 (N,)
    info: DatasetInfo


# Fashion-MNIST's mean/std were measured on its 60,000 training images (see
# the test that reads the real files); MNIST's and CIFAR-10's are the values
# in common use, computed the same way (over every pixel of the training set).
DATASETS = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,), (1, 28, 28)),
    "mnist": DatasetInfo(
        "mnist", tuple(str(d) for d in range(10)), (0.1307,), (0.3081,), (1, 28, 28)),
    "cifar10": DatasetInfo(
        "cifar10",
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32)),
}

SYSTEM_DATA_DIR = "/usr/share/datasets"   # where `apt-get install dataset-fashion-mnist` puts its files


# ---- finding the files -------------------------------------------------------

def _search_dirs(name, data_dir):
    """The directories searched for data set `name`, in order.

    A `data_dir` the user names is the only place searched (with
    `data_dir/<name>`): a typo must not silently train on other files.
    Without one: `$TINYCONV_DATA/<name>`; the default data set
    (Fashion-MNIST) is also looked for in `$TINYCONV_DATA` itself and in
    /usr/share/datasets/fashion-mnist. MNIST shares Fashion-MNIST's file
    names, so it is never taken from a directory that was not named for it.
    """
    dirs = []
    env = os.environ.get("TINYCONV_DATA")
    if data_dir is not None:
        dirs += [os.fspath(data_dir), os.path.join(data_dir, name)]
    elif env:
        if name in ("fashion-mnist", "cifar10"):
            dirs.append(env)
        dirs.append(os.path.join(env, name))
    if name == "fashion-mnist" and data_dir is None:
        dirs.append(os.path.join(SYSTEM_DATA_DIR, name))
    if name == "cifar10":
        dirs += [os.path.join(d, "cifar-10-batches-py") for d in dirs]
    return dirs


def _idx_candidates(split, kind):
    """File names one IDX file may have, e.g. ('train', 'images')."""
    ndim = 3 if kind == "images" else 1
    stems = [f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"]
    return [stem + ext for stem in stems for ext in ("", ".gz")]


def _find_idx_pair(name, data_dir, split):
    """Paths of the (images, labels) files of one split, or DatasetNotFound."""
    dirs = _search_dirs(name, data_dir)
    for d in dirs:
        found = []
        for kind in ("images", "labels"):
            paths = [os.path.join(d, f) for f in _idx_candidates(split, kind)]
            found.append(next((p for p in paths if os.path.isfile(p)), None))
        if None not in found:
            return found
    wanted = " and ".join(f"{split}-{kind}-idx{n}-ubyte[.gz]" for kind, n in (("images", 3), ("labels", 1)))
    env = os.environ.get("TINYCONV_DATA")
    how = ("install it with `apt-get install dataset-fashion-mnist` (files go to "
           f"{SYSTEM_DATA_DIR}/fashion-mnist), or put" if name == "fashion-mnist" else "put")
    raise DatasetNotFound(
        f"{name}: found no {wanted} (also tried the '.idx{{3,1}}-ubyte' spelling) in any of: "
        f"{', '.join(dirs) or '(none: no data_dir given)'}{'' if env else '; $TINYCONV_DATA is not set'}. "
        f"To get them: {how} the four files "
        f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz in $TINYCONV_DATA/{name} or in a directory you pass as data_dir.")


# ---- IDX ---------------------------------------------------------------------

def _read_bytes(path):
    """The file's bytes, gunzipped when the file is gzip (by content, not name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:   # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise DatasetFormatError(f"{path}: corrupt or truncated gzip file ({e})") from None


def read_idx(path, magic):
    """Parse an IDX file of unsigned bytes: images (magic 2051) or labels (magic 2049).

    Returns a uint8 array (N, rows, cols) or (N,). Checks the magic number, the
    dimensions and that the payload holds exactly the bytes they announce.
    """
    ndim = {IDX_IMAGES_MAGIC: 3, IDX_LABELS_MAGIC: 1}[magic]
    kind = "images" if ndim == 3 else "labels"
    raw = _read_bytes(path)
    header = 4 * (1 + ndim)
    found = int.from_bytes(raw[:4], "big")
    if len(raw) >= 4 and found != magic:
        raise DatasetFormatError(f"{path}: magic number {found}, expected {magic} for an IDX {kind} file "
                                 f"(2051 = images, 2049 = labels): not the file it is named after")
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: {len(raw)} bytes, shorter than the {header}-byte header "
                                 f"of an IDX {kind} file (truncated?)")
    dims = [int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)]
    if min(dims) < 0 or (ndim == 3 and min(dims[1:]) < 1):
        raise DatasetFormatError(f"{path}: impossible dimensions {dims} in the header")
    expected = math.prod(dims)
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise DatasetFormatError(f"{path}: header announces {dims} = {expected} bytes of data, "
                                 f"file holds {payload}: {what}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(name, data_dir=None, train=True):
    """MNIST or Fashion-MNIST from IDX files (see `_search_dirs` for where)."""
    info = DATASETS[name]
    images_path, labels_path = _find_idx_pair(name, data_dir, "train" if train else "t10k")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetFormatError(f"{images_path} holds {len(images)} images but {labels_path} "
                                 f"holds {len(labels)} labels")
    if images.shape[1:] != info.shape[1:]:
        raise DatasetFormatError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                                 f"{name} has {info.shape[1]}x{info.shape[2]}")
    if labels.size and labels.max() >= len(info.classes):
        raise DatasetFormatError(f"{labels_path}: label {labels.max()} outside 0..{len(info.classes) - 1}")
    return Dataset(_to_unit_float(images[:, None]), labels.astype(np.int64), info)   # (N, 1, 28, 28)


# ---- CIFAR-10 ----------------------------------------------------------------

def _numeric_dtype(obj, align=False, copy=False):
    """numpy.dtype, admitting only plain numeric types (no object arrays)."""
    dtype = np.dtype(obj.decode("ascii") if isinstance(obj, bytes) else obj, align, copy)
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise UnsafePickleError(f"the pickle asks for an array of dtype {dtype}; "
                                f"a CIFAR-10 batch holds only numbers")
    return dtype


_numpy_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]   # numpy's own (core or _core).multiarray._reconstruct


class _NdarrayName:
    """What `numpy.ndarray` resolves to inside a batch: an argument of _reconstruct, never a constructor to call."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("the pickle calls numpy.ndarray directly; a CIFAR-10 batch only reconstructs arrays")


_NDARRAY = _NdarrayName()


def _ndarray_reconstruct(subtype, shape, dtype):
    """numpy's _reconstruct, for plain numeric ndarrays only (no subclass, no object dtype)."""
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"the pickle reconstructs {subtype!r}, not a numpy.ndarray")
    return _numpy_reconstruct(np.ndarray, shape, _numeric_dtype(dtype))


def _latin1_encode(text, encoding="latin1"):
    """What Python 3 writes for `bytes` at pickle protocol 2: _codecs.encode(str, 'latin1')."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"the pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals a CIFAR-10 batch needs.

    The real batches name numpy.core.multiarray._reconstruct, numpy.ndarray and
    numpy.dtype; numpy 2 writes numpy._core.multiarray, Python 3 at protocol 2
    adds _codecs.encode for bytes. Each maps to a checked stand-in; any other
    global raises UnsafePickleError before it is imported or called.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _numeric_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, file):
        super().__init__(file, encoding="bytes")

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the pickle asks for {module}.{name}, "
                                    f"which a CIFAR-10 batch never contains") from None


def read_cifar_batch(path):
    """One CIFAR-10 python batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}; refusing to load it (nothing was run)") from None
        except Exception as e:   # a foreign or cut-off file fails in many ways inside pickle
            raise DatasetFormatError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: holds a {type(batch).__name__}, expected the dict of a CIFAR-10 batch")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: 'data' should be a uint8 array (N, 3072), got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: 'labels' should be a list of ints") from None
    if labels.shape != (len(data),):
        raise DatasetFormatError(f"{path}: {len(data)} images but 'labels' has shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels   # (N, 3072) -> (N, 3, 32, 32): R, G, B planes


def load_cifar10(data_dir=None, train=True):
    """CIFAR-10 from the python batches in `data_dir` (or $TINYCONV_DATA)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    dirs = _search_dirs("cifar10", data_dir)
    for d in dirs:
        paths = [os.path.join(d, n) for n in names]
        if all(os.path.isfile(p) for p in paths):
            parts = [read_cifar_batch(p) for p in paths]
            images = _to_unit_float(np.concatenate([p[0] for p in parts]))
            return Dataset(images, np.concatenate([p[1] for p in parts]), DATASETS["cifar10"])
    raise DatasetNotFound(
        f"cifar10: found no {', '.join(names)} in any of: "
        f"{', '.join(dirs) or '(no directory: data_dir is None and $TINYCONV_DATA is not set)'}. "
        f"To get them: download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"extract it (it makes cifar-10-batches-py/) and pass its parent as data_dir or set $TINYCONV_DATA.")


def _to_unit_float(pixels):
    """uint8 0..255 -> float32 0..1, dividing in place (a 60,000-image set is 188 MB as float32)."""
    images = pixels.astype(np.float32)
    images /= 255
    return images


def load_dataset(name, data_dir=None, train=True):
    """'fashion-mnist' (the default data set), 'mnist' or 'cifar10' -> Dataset(images, labels, info)."""
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    if name == "cifar10":
        return load_cifar10(data_dir, train)
    return load_idx(name, data_dir, train)


# ---- augmentation: transform(images (N, C, H, W), rng) -> images ----------------

class RandomCrop:
    """Pad each side by `padding` zeros, then cut a random size x size window per image."""

    def __init__(self, size, padding=0):
        self.size = _positive_int(size, "size")
        self.padding = _positive_int(padding, "padding", allow_zero=True)

    def __call__(self, images, rng):
        n, _, h, w = images.shape
        p, s = self.padding, self.size
        if s > h + 2 * p or s > w + 2 * p:
            raise ValueError(f"size {s} is larger than the padded image {h + 2 * p}x{w + 2 * p}")
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (s, s), axis=(2, 3))
        # windows: (N, C, H+2p-s+1, W+2p-s+1, s, s), a view: windows[n, c, i, j] = padded[n, c, i:i+s, j:j+s]
        top = rng.integers(0, h + 2 * p - s + 1, size=n)
        left = rng.integers(0, w + 2 * p - s + 1, size=n)
        return windows[np.arange(n), :, top, left]   # (N, C, s, s): advanced indices split by ':' go first


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p."""

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, images, rng):
        flip = rng.random(len(images)) < self.p
        return np.where(flip[:, None, None, None], images[..., ::-1], images)


class Normalize:
    """(x - mean[c]) / std[c] per channel, e.g. Normalize(info.mean, info.std)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)   # (C, 1, 1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
        if self.mean.shape != self.std.shape or (self.std <= 0).any():
            raise ValueError(f"mean and std need one value per channel and std > 0, got mean={mean}, std={std}")

    def __call__(self, images, rng=None):
        return ((images - self.mean.astype(images.dtype)) / self.std.astype(images.dtype)).astype(images.dtype)


class Compose:
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, images, rng):
        for t in self.transforms:
            images = t(images, rng)
        return images


# ---- batches -----------------------------------------------------------------

class DataLoader:
    """Iterate over (images, labels) in batches; one `for` loop = one epoch.

    Epoch e's order is `np.random.default_rng((seed, e, 0)).permutation(N)`
    (or 0..N-1 without shuffle), and batch b of epoch e is transformed with
    `np.random.default_rng((seed, e, 1, b))`: a run depends only on the seed.
    `state_dict()` records the epoch and the next batch; after
    `load_state_dict` the next iteration continues from exactly there.
    A loop left part-way (`break`) also leaves the loader there: the next
    `for` finishes that epoch; `set_epoch(e)` starts epoch e from its first
    batch. With seed=None a seed is drawn once, at construction.

    >>> loader = DataLoader(np.zeros((10, 1, 2, 2)), np.arange(10), batch_size=4)
    >>> len(loader), [len(y) for _, y in loader]
    (3, [4, 4, 2])
    """

    def __init__(self, images, labels, batch_size, shuffle=False, seed=None, drop_last=False, transform=None):
        if len(images) != len(labels):
            raise ValueError(f"images and labels need one entry each per sample, got {len(images)} and {len(labels)}")
        self.images, self.labels = images, labels
        self.batch_size = _positive_int(batch_size, "batch_size")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % 2 ** 63)
        self.seed = _positive_int(seed, "seed", allow_zero=True)
        self.shuffle, self.drop_last, self.transform = bool(shuffle), bool(drop_last), transform
        self.epoch, self.batch = 0, 0   # where the next iteration starts

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch):
        """The sample indices of `epoch`, in the order they are served."""
        n = len(self.images)
        return np.random.default_rng((self.seed, epoch, 0)).permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        epoch, order = self.epoch, self.order(self.epoch)
        while self.batch < len(self):
            b = self.batch
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            images, labels = self.images[index], self.labels[index]
            if self.transform is not None:
                images = self.transform(images, np.random.default_rng((self.seed, epoch, 1, b)))
            self.batch = b + 1
            yield images, labels
        self.epoch, self.batch = epoch + 1, 0

    def set_epoch(self, epoch):
        self.epoch, self.batch = _positive_int(epoch, "epoch", allow_zero=True), 0

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state):
        self.seed = _positive_int(int(state["seed"]), "seed", allow_zero=True)
        self.epoch = _positive_int(int(state["epoch"]), "epoch", allow_zero=True)
        self.batch = _positive_int(int(state["batch"]), "batch", allow_zero=True)


def _positive_int(value, name, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)

"""tinyconv.save / tinyconv.load: checkpoints that cannot run code, written atomically.

Format: a NumPy `.npz` archive read with `allow_pickle=False`.

* every array of the saved object is one entry, named by its path in the
  object ("model/conv1.weight", "optimizer/state/0/momentum_buffer");
* one more entry, "__tinyconv__", holds a JSON text describing the
  object's structure: dicts, lists, numbers, strings, booleans and None
  inline, and {"__array__": name} where an array goes.

Saving writes to a temporary file in the destination's directory, flushes
and fsyncs it, then renames it over the destination (`os.replace` is atomic
on POSIX and Windows): a crash mid-save leaves the previous checkpoint
intact, never a half-written file.
"""
import json
import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

from tinyconv.tensor import Tensor

FORMAT = "tinyconv-checkpoint"
VERSION = 1
META_KEY = "__tinyconv__"


class CheckpointError(ValueError):
    """A file that is not a readable tinyconv checkpoint."""


def _flatten(obj, path, arrays):
    """The JSON-able structure of `obj`; arrays are moved into `arrays`."""
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufU":
            raise TypeError(f"cannot save {path or 'object'}: arrays of dtype {obj.dtype} are not supported")
        name = path or "array"
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"cannot save {path or 'object'}: dict keys must be str, got {key!r}")
        return {"__dict__": [[k, _flatten(v, f"{path}/{k}" if path else k, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    raise TypeError(f"cannot save {path or 'object'} of type {type(obj).__name__}: "
                    "checkpoints hold arrays, numbers, strings, None, lists, tuples and dicts")


def _unflatten(node, arrays):
    if isinstance(node, list):
        return [_unflatten(v, arrays) for v in node]
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, arrays) for v in node["__tuple__"])
        return OrderedDict((k, _unflatten(v, arrays)) for k, v in node["__dict__"])
    return node


def save(obj, path):
    """Save a state_dict (or any nest of dicts/lists of arrays and numbers) to `path`."""
    arrays = {}
    structure = _flatten(obj, "", arrays)
    if META_KEY in arrays:
        raise ValueError(f"the name {META_KEY!r} is reserved")
    meta = json.dumps({"format": FORMAT, "version": VERSION, "structure": structure})
    atomic_write(path, lambda f: np.savez(f, **{META_KEY: np.array(meta)}, **arrays))


def atomic_write(path, write):
    """Call `write(f)` on a temporary binary file beside `path`, flush and fsync it, then
    rename it over `path`: readers see the old file or the new one, never half of one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    """Load what `save` wrote. Never unpickles: a checkpoint cannot run code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if META_KEY not in archive.files:
                raise CheckpointError(f"{path!r} is an .npz archive but not a tinyconv checkpoint "
                                      f"(no {META_KEY!r} entry)")
            meta = json.loads(str(archive[META_KEY]))
            arrays = {name: archive[name] for name in archive.files if name != META_KEY}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path!r} is not a readable tinyconv checkpoint (truncated or another format): "
                              f"{type(error).__name__}: {error}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a tinyconv checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has checkpoint version {meta.get('version')}; "
                              f"this tinyconv reads version {VERSION}")
    return _unflatten(meta["structure"], arrays)

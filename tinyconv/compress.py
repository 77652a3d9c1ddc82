"""Deep Compression (Han, Mao & Dally, ICLR 2016): prune, share weights, Huffman-code.

Three stages, each applied to every layer whose weight is a matrix (Linear,
2-D) or a filter bank (Conv2d / ConvTranspose2d, 4-D); biases and batch norm
stay as they are and are stored raw.

1. Pruning. A layer keeps the weights with |w| > t, where t is either a
   quality factor q times the standard deviation σ of the layer's weights
   (the paper's rule) or the magnitude that prunes a target fraction s of the
   layer. The layer is wrapped in a `PrunedLayer` that holds the dense weight
   w and a boolean mask m (a buffer), and whose forward computes the layer
   with the weight w ⊙ m. Pruning in K steps (`prune_schedule`) retrains
   after each; step i of K reaches sparsity 1 − (1 − s)^(i/K) (the same
   fraction of the survivors goes at every step) or threshold (i/K)·q·σ,
   or with the cubic schedule of Zhu & Gupta (2017) s·(1 − (1 − i/K)^3)
   or (1 − (1 − i/K)^3)·q·σ.

   Why pruned weights stay exactly zero through retraining: the tape gives
   ∂L/∂w = (∂L/∂(w ⊙ m)) ⊙ m, exactly 0 where m = 0 (a product by 0.0), and
   pruning zeroes w and the optimizer state (SGD's momentum buffer, Adam's
   m, v and v_max) where m = 0. Then at a pruned entry SGD computes
   g + wd·w = 0, buf ← μ·0 + 0 = 0, w ← 0 − lr·0 = 0; Adam computes m = v = 0
   and w ← 0 − lr·0/(0 + eps) = 0; AdamW multiplies 0 by (1 − lr·wd): every
   tinyconv.optim update leaves the entry at zero, step after step, so
   `Run.train_epoch` retrains a pruned net unchanged. A loop that sets
   `.grad` some other way (or an optimizer that moves weights whose gradient
   is zero) calls `apply_masks(model, optimizer)` after `optimizer.step()`:
   it zeroes the pruned weights, their gradients and their optimizer state.

2. Trained quantization (weight sharing). Per layer, 1-D k-means over the
   surviving weights into k = 2^b clusters, centroids initialised linearly
   between the layer's min and max (the paper's best initialisation: it
   keeps centroids for the rare large weights); clusters left empty are
   dropped. Each weight becomes an index, and `shared_weights` rebuilds the
   layer's weight on the tape:

       W[p] = C[I[p]]·M[p]          ∂L/∂C[k] = Σ_{p : I[p] = k, M[p]} ∂L/∂W[p]

   (a centroid's gradient is the sum of its weights' gradients: np.bincount).
   Fine-tuning then trains the centroids (and biases), never the indices.

3. Huffman coding. A layer is stored in the paper's sparse format: for
   each kept weight, in C order, its centroid index and its relative
   position, gap = (position − previous position − 1), written with a fixed
   width of g bits (`index_bits`: 8 for conv, 5 for linear). A gap larger
   than G = 2^g − 1 gets a filler entry first: gap G and the "zero weight"
   symbol k (one past the last centroid), which covers G + 1 positions and
   stores nothing; repeat until the gap fits. The index stream (alphabet
   0..k) and the gap stream (alphabet 0..G) are then each Huffman-coded
   with a canonical code, so only the code lengths are stored.

The .tcz file (all integers little-endian; written by `save_compressed`)
---------------------------------------------------------------------------
    magic         8 bytes  b"\\x89TCZ\\r\\n\\x1a\\n" (PNG's trick: text-mode
                           transfers and 7-bit channels corrupt it visibly)
    version       u16      2
    reserved      u16      0
    total_length  u64      bytes in the whole file, checksum included
    meta_length   u32      then that many bytes of zlib-compressed UTF-8
                           JSON: {"format": "tinyconv-compressed",
                           "config": the run's TrainConfig or null}
    n_records     u32      then the records
    crc32         u32      zlib.crc32 of every byte before it

  record:  kind u8 (1 shared weight, 2 raw tensor), name (u16 length +
           UTF-8, a state_dict key such as "fc1.weight"), dtype u8
           (1 f4, 2 f8, 3 i8, 4 i4, 5 u1, 6 b1), ndim u8, shape (u32 each),
  raw:     the array's bytes, C order
  shared:  bits u8 (b), index_bits u8 (g), n_centroids u32 + the centroids
           (dtype), n_entries u32, index code lengths, gap code lengths,
           index stream (u32 bytes + bytes), gap stream (same). Streams are
           MSB-first bits, zero-padded to a byte.
  code lengths: count u32 (symbols up to the last one used), width u8 (4
           when every length is <= 15, else 8), then the lengths in `width`
           bits each, packed MSB first and zero-padded to a byte.

Version 2 compresses the metadata and packs code lengths in 4 bits, which
saves ~300 bytes: noise for big nets, 4% of a 7 KB compressed LeNet-5.

The frame (magic, version, total_length, ..., crc32 last) is fixed for all
versions, so a reader checks magic, length (truncation), checksum
(corruption), then version, and names the file in every error.
"""
import argparse
import dataclasses
import heapq
import json
import math
import os
import struct
import zlib
from collections import OrderedDict

import numpy as np
from numba import njit

from tinyconv.checkpoint import atomic_write
from tinyconv.nn.module import Module, Parameter
from tinyconv.tensor import Tensor

MAGIC = b"\x89TCZ\r\n\x1a\n"
VERSION = 2
FORMAT = "tinyconv-compressed"
MAX_BITS = 16
DEFAULT_BITS = {"conv": 8, "linear": 5}         # the paper's choice for weights ...
DEFAULT_INDEX_BITS = {"conv": 8, "linear": 5}   # ... and for the relative index (gap)
DEFAULT_SPARSITY = {"conv": 0.7, "linear": 0.9}
FLOAT32_BYTES = 4


class CompressedFileError(ValueError):
    """A .tcz file that is truncated, corrupted, of another version, or not a .tcz file."""


# ---------------------------------------------------------------------------
# which layers, and per-layer settings
# ---------------------------------------------------------------------------
def layer_kind(weight_ndim):
    """'conv' for a 4-D filter bank, 'linear' for a 2-D matrix."""
    return "conv" if weight_ndim == 4 else "linear"


def compressible_layers(model):
    """[(path, module)] of the layers to compress, in model order.

    A layer qualifies when its `weight` is a Parameter of 2 or 4 dimensions;
    a layer already wrapped (PrunedLayer, QuantizedLayer) is listed as its
    wrapper, never twice.
    """
    found, wrapped = [], []
    for path, module in model.named_modules():
        if any(path.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, (PrunedLayer, QuantizedLayer)):
            found.append((path, module))
            wrapped.append(path)
            continue
        weight = module._parameters.get("weight")
        if isinstance(weight, Parameter) and weight.ndim in (2, 4):
            found.append((path, module))
    return found


def _kind_of(module):
    if isinstance(module, (PrunedLayer, QuantizedLayer)):
        return layer_kind(len(module.shape))
    return layer_kind(module.weight.ndim)


def parse_layer_spec(text, argument, convert):
    """'0.9' or 'conv=8,linear=5,fc3=6' -> {'*': 0.9} or {'conv': 8, 'linear': 5, 'fc3': 6}.

    Keys are a layer path (as in `compressible_layers`), a kind ('conv',
    'linear') or '*' (every layer); `convert` checks one value and raises
    ValueError with a message; `argument` names the option in errors.
    """
    spec = {}
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.rpartition("=")
        key = key.strip() if sep else "*"
        try:
            spec[key] = convert(value.strip())
        except ValueError as error:
            raise ValueError(f"{argument + ': ' if argument else ''}{item!r}: {error}") from None
    if not spec:
        raise ValueError(f"{argument}: empty specification {text!r}; expected e.g. 0.9 or conv=0.7,linear=0.9")
    return spec


def resolve_spec(spec, layers, argument, default=None):
    """{path: value} for every layer: a layer's own entry, else its kind's, else '*', else `default`."""
    paths = {path for path, _ in layers}
    unknown = [k for k in spec if k not in paths and k not in ("conv", "linear", "*")]
    if unknown:
        raise ValueError(f"{argument}: no layer named {', '.join(map(repr, unknown))}; "
                         f"the layers are {', '.join(p for p, _ in layers)} (or use conv=, linear=)")
    resolved = {}
    for path, module in layers:
        kind = _kind_of(module)
        for key in (path, kind, "*"):
            if key in spec:
                resolved[path] = spec[key]
                break
        else:
            resolved[path] = default[kind] if isinstance(default, dict) else default
    return resolved


def check_bits(value, name="bits"):
    if isinstance(value, str):
        value = int(value) if value.strip().lstrip("-").isdigit() else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_BITS:
        raise ValueError(f"{name} must be an int in 1..{MAX_BITS}, got {value!r}")
    return int(value)


def check_sparsity(value, name="sparsity"):
    if isinstance(value, str):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_quality(value, name="quality"):
    if isinstance(value, str):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _replace_module(model, path, new):
    """Put `new` where `path` is, keeping its place in the parent's order (Sequential runs in order)."""
    parent_path, _, name = path.rpartition(".")
    if not path:
        raise ValueError("cannot compress a model that is a single layer; put it in a Sequential")
    parent = dict(model.named_modules())[parent_path]
    parent._modules[name] = new


# ---------------------------------------------------------------------------
# 1. pruning
# ---------------------------------------------------------------------------
class PrunedLayer(Module):
    """A layer computed with the weight w ⊙ mask; w (`weight`) is trained, mask is a bool buffer.

    The wrapped layer keeps its other parameters (`layer.bias`); its own
    `weight` becomes a plain Tensor, recomputed before each forward.
    """

    def __init__(self, layer, mask):
        super().__init__()
        weight = layer.weight
        del layer.weight                      # the Parameter moves here, same object (optimizers keep it)
        self.layer = layer
        self.weight = weight
        self.register_buffer("mask", np.asarray(mask, dtype=bool))
        self.shape = weight.shape
        weight.data *= self.mask              # pruned weights are exactly zero from now on
        layer.weight = Tensor(weight.data)    # so the layer prints and sizes itself before a forward

    def masked_weight(self):
        return self.weight * Tensor(self.mask.astype(self.weight.dtype))

    def forward(self, *args):
        self.layer.weight = self.masked_weight()
        return self.layer(*args)

    def dense_weight(self):
        return self.weight.data * self.mask

    def extra_repr(self):
        return f"kept {int(self.mask.sum())}/{self.mask.size}"


def magnitude_mask(weight, mask=None, sparsity=None, threshold=None):
    """Keep the weights with |w| > threshold, or the largest (1 − sparsity)·n by magnitude.

    Weights already pruned (`mask` False) stay pruned. With `sparsity`,
    exactly round(sparsity·n) weights end up pruned (ties broken by
    position), or more if more were pruned before.
    """
    weight = np.asarray(weight)
    mask = np.ones(weight.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if (sparsity is None) == (threshold is None):
        raise ValueError("magnitude_mask needs exactly one of sparsity= or threshold=")
    if threshold is not None:
        return mask & (np.abs(weight) > threshold)
    magnitude = np.where(mask, np.abs(weight), -1.0).ravel()   # already pruned sort first
    n_pruned = int(round(check_sparsity(sparsity) * weight.size))
    new = np.ones(weight.size, dtype=bool)
    new[np.argsort(magnitude, kind="stable")[:n_pruned]] = False
    return mask & new.reshape(weight.shape)


PRUNE_SCHEDULES = ("geometric", "cubic")


def prune_schedule(target, steps, kind="geometric"):
    """The sparsity reached after each of `steps` pruning steps i = 1..K.

    geometric: 1 − (1 − s)^(i/K), the same fraction of the survivors goes at
    every step (as Han et al.'s iterative pruning).
    cubic: s·(1 − (1 − i/K)^3), Zhu & Gupta's gradual schedule (2017): big
    steps while the net is still redundant, small ones near the target.
    """
    target = check_sparsity(target)
    return [target * threshold_fraction(i, steps, "cubic") if kind == "cubic"
            else 1 - (1 - target) ** (i / steps) for i in range(1, _check_schedule(steps, kind) + 1)]


def threshold_fraction(step, steps, kind="geometric"):
    """The fraction of the final threshold q·σ used at pruning step `step` of `steps`: i/K, or 1 − (1 − i/K)^3."""
    _check_schedule(steps, kind)
    return 1 - (1 - step / steps) ** 3 if kind == "cubic" else step / steps


def _check_schedule(steps, kind):
    if kind not in PRUNE_SCHEDULES:
        raise ValueError(f"prune schedule must be one of {', '.join(PRUNE_SCHEDULES)}, got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"prune steps must be an int >= 1, got {steps!r}")
    return int(steps)


def prune(model, sparsity=None, threshold=None, optimizer=None):
    """Prune each named layer: `sparsity` or `threshold` is {path: value} (layers absent stay as they are).

    Wraps a plain layer in a PrunedLayer, or tightens the mask of one
    already wrapped; zeroes the pruned weights and, if `optimizer` is
    given, their optimizer state. Returns {path: kept fraction}.
    """
    settings = sparsity if sparsity is not None else threshold
    if (sparsity is None) == (threshold is None):
        raise ValueError("prune needs exactly one of sparsity= or threshold=")
    layers = dict(compressible_layers(model))
    kept = {}
    for path, value in settings.items():
        if path not in layers:
            raise ValueError(f"prune: no compressible layer {path!r}; the layers are {', '.join(layers)}")
        module = layers[path]
        if isinstance(module, QuantizedLayer):
            raise ValueError(f"prune: layer {path!r} is already quantized; prune before quantizing")
        if not isinstance(module, PrunedLayer):
            module = PrunedLayer(module, np.ones(module.weight.shape, dtype=bool))
            _replace_module(model, path, module)
        if sparsity is not None:
            module.register_buffer("mask", magnitude_mask(module.weight.data, module.mask, sparsity=value))
        else:
            module.register_buffer("mask", magnitude_mask(module.weight.data, module.mask, threshold=value))
        kept[path] = float(module.mask.mean())
    apply_masks(model, optimizer)
    return kept


def apply_masks(model, optimizer=None):
    """Zero every pruned weight, its gradient and (if given) its optimizer state.

    The post-step hook for loops that cannot rely on the tape alone (see
    the module docstring); idempotent and cheap.
    """
    states = {}
    if optimizer is not None:
        states = {id(p): s for p, s in zip(optimizer.params, optimizer.state)}
    for _, module in compressible_layers(model):
        if not isinstance(module, PrunedLayer):
            continue
        keep = module.mask
        module.weight.data *= keep
        if module.weight.grad is not None:
            module.weight.grad = module.weight.grad * keep
        for key, value in states.get(id(module.weight), {}).items():
            if isinstance(value, np.ndarray) and value.shape == keep.shape:
                value *= keep


def layer_std(model):
    """{path: standard deviation of the layer's weights}, for threshold = q·σ."""
    out = {}
    for path, module in compressible_layers(model):
        w = module.dense_weight() if isinstance(module, PrunedLayer) else module.weight.data
        out[path] = float(np.std(w))
    return out


# ---------------------------------------------------------------------------
# 2. trained quantization
# ---------------------------------------------------------------------------
def kmeans_1d(values, k, max_iter=100):
    """Lloyd's k-means on a 1-D array, centroids initialised linearly in [min, max].

    Returns (centroids (k,) float64, assignment (n,) int64). In one
    dimension the nearest centroid is found by `searchsorted` on the
    midpoints between sorted centroids, and Lloyd's update keeps them
    sorted (each mean lies inside its own interval). An empty cluster keeps
    its centroid.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.zeros(k), np.zeros(0, dtype=np.int64)

    def nearest(centroids):
        return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)   # midpoints between neighbours

    centroids = np.linspace(values.min(), values.max(), k)
    assignment = nearest(centroids)
    for _ in range(max_iter):
        sums = np.bincount(assignment, weights=values, minlength=k)
        counts = np.bincount(assignment, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        new_assignment = nearest(centroids)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
    return centroids, assignment


def shared_weights(centroids, indices, mask):
    """W = C[I]·M as a differentiable op: centroids C (k,), indices I and bool mask M of W's shape.

        W[p] = C[I[p]] where M[p], else 0
        ∂L/∂C[k] = Σ_{p : I[p] = k and M[p]} ∂L/∂W[p]     (np.bincount with weights)

    >>> C = Tensor([-1.0, 0.5], requires_grad=True)
    >>> W = shared_weights(C, np.array([[0, 1], [1, 1]]), np.array([[True, True], [False, True]]))
    >>> W.data.tolist()
    [[-1.0, 0.5], [0.0, 0.5]]
    """
    if not isinstance(centroids, Tensor) or centroids.ndim != 1 or centroids.dtype.kind != "f":
        raise TypeError(f"centroids must be a 1-D float Tensor, got {type(centroids).__name__}"
                        f"{' of shape ' + str(centroids.shape) if isinstance(centroids, Tensor) else ''}")
    indices = np.asarray(indices)
    mask = np.asarray(mask)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    if mask.dtype != np.bool_ or mask.shape != indices.shape:
        raise ValueError(f"mask must be a bool array of the indices' shape {indices.shape}, "
                         f"got {mask.dtype} {mask.shape}")
    k = centroids.shape[0]
    if indices.size and (indices.min() < 0 or indices.max() >= k):
        raise ValueError(f"indices must be in 0..{k - 1} (one per centroid), got {indices.min()}..{indices.max()}")
    weight = np.where(mask, centroids.data[indices], 0).astype(centroids.dtype)
    kept = indices[mask]

    def backward(grad_output):
        grad = np.bincount(kept, weights=grad_output[mask], minlength=k)
        return (grad.astype(centroids.dtype),)

    return Tensor._make(weight, (centroids,), backward, "shared_weights")


class QuantizedLayer(Module):
    """A layer whose weight is `shared_weights(centroids, indices, mask)`; the centroids are trained."""

    def __init__(self, layer, centroids, indices, mask, bits):
        super().__init__()
        self.layer = layer
        self.centroids = Parameter(centroids)
        self.register_buffer("indices", np.asarray(indices))
        self.register_buffer("mask", np.asarray(mask, dtype=bool))
        self.bits = bits
        self.shape = self.mask.shape
        layer.weight = Tensor(self.dense_weight())

    def forward(self, *args):
        self.layer.weight = shared_weights(self.centroids, self.indices, self.mask)
        return self.layer(*args)

    def dense_weight(self):
        return np.where(self.mask, self.centroids.data[self.indices], 0).astype(self.centroids.dtype)

    def extra_repr(self):
        return f"{self.centroids.shape[0]} centroids ({self.bits} bits), kept {int(self.mask.sum())}/{self.mask.size}"


def quantize(model, bits, max_iter=100):
    """Replace each compressible layer by a QuantizedLayer; `bits` is {path: b}. Returns {path: n_centroids}.

    A PrunedLayer keeps its mask; a plain layer keeps every weight.
    """
    layers = dict(compressible_layers(model))
    out = {}
    for path, b in bits.items():
        b = check_bits(b, f"bits for layer {path!r}")
        module = layers[path]
        if isinstance(module, QuantizedLayer):
            raise ValueError(f"quantize: layer {path!r} is already quantized")
        if isinstance(module, PrunedLayer):
            layer, weight, mask = module.layer, module.dense_weight(), module.mask
        else:
            layer, weight = module, module.weight.data
            mask = np.ones(weight.shape, dtype=bool)
            del layer.weight
        centroids, assignment = kmeans_1d(weight[mask], 2 ** b, max_iter)
        used = np.unique(assignment)                     # drop empty clusters
        indices = np.zeros(weight.shape, dtype=np.uint8 if b <= 8 else np.uint16)
        indices[mask] = np.searchsorted(used, assignment)
        if used.size == 0:                               # a layer with every weight pruned
            used, centroids = np.zeros(1, dtype=np.int64), np.zeros(1)
        quantized = QuantizedLayer(layer, centroids[used].astype(weight.dtype), indices, mask, b)
        _replace_module(model, path, quantized)
        out[path] = used.size
    return out


# ---------------------------------------------------------------------------
# 3. Huffman coding
# ---------------------------------------------------------------------------
def huffman_lengths(counts):
    """Code length per symbol of a Huffman code for `counts` (0 for unused symbols).

    Repeatedly merge the two least frequent trees into a new node; a
    symbol's code length is its leaf's depth. Nodes are numbered in order of
    creation (leaves first), so every parent comes after its children and
    one backward pass gives all depths. Ties go to the older node, so the
    code is deterministic. A single used symbol gets a 1-bit code.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    heap = [(int(counts[s]), leaf) for leaf, s in enumerate(used)]
    heapq.heapify(heap)
    parent = np.zeros(2 * used.size - 1, dtype=np.int64)
    node = used.size
    while len(heap) > 1:
        count_a, a = heapq.heappop(heap)
        count_b, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (count_a + count_b, node))
        node += 1
    depth = np.zeros(node, dtype=np.int64)         # the root, node - 1, has depth 0
    for child in range(node - 2, -1, -1):
        depth[child] = depth[parent[child]] + 1
    lengths[used] = depth[:used.size]
    return lengths


def canonical_codes(lengths):
    """Canonical Huffman codes: symbols sorted by (length, symbol) get consecutive codes.

    Each code is the previous one plus 1, shifted left when the length
    grows (DEFLATE's rule), so the lengths alone define the code.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.max(initial=0) > 57:
        raise ValueError(f"a Huffman code of {lengths.max()} bits does not fit the 64-bit encoder")
    codes = np.zeros(lengths.size, dtype=np.uint64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        previous = int(lengths[symbol])
        code += 1
    return codes


def huffman_encode(symbols, lengths):
    """The bytes of the symbols' canonical codes, MSB first, zero-padded to whole bytes."""
    symbols = np.asarray(symbols, dtype=np.int64)
    codes = canonical_codes(lengths)
    n_bits = np.asarray(lengths, dtype=np.int64)[symbols]       # (n,)
    if (n_bits == 0).any():
        raise ValueError("huffman_encode: a symbol has no code (count 0 when the code was built)")
    ends = np.cumsum(n_bits)
    total = int(ends[-1]) if ends.size else 0
    each_code = np.repeat(codes[symbols], n_bits)              # (total,) the code of the bit's symbol
    each_len = np.repeat(n_bits, n_bits)
    offset = np.arange(total) - np.repeat(ends - n_bits, n_bits)   # bit position inside its code
    shift = (each_len - 1 - offset).astype(np.uint64)
    bits = ((each_code >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


@njit(cache=True)
def _decode_canonical(bits, count, symbols, n, out):
    """Decode n symbols of a canonical code, bit by bit (as zlib's puff.c).

    count[l] is the number of codes of length l and `symbols` lists the
    symbols sorted by (length, symbol). Codes of length l are the integers
    first_l .. first_l + count[l] − 1 read MSB first. Returns the number of
    bits read, or −1 if the bits run out or match no code.
    """
    pos = 0
    for i in range(n):
        code = 0
        first = 0
        index = 0
        found = False
        for length in range(1, count.shape[0]):
            if pos >= bits.shape[0]:
                return -1
            code |= bits[pos]
            pos += 1
            if code - first < count[length]:
                out[i] = symbols[index + code - first]
                found = True
                break
            index += count[length]
            first = (first + count[length]) << 1
            code <<= 1
        if not found:
            return -1
    return pos


def huffman_decode(data, n, lengths):
    """The first n symbols coded in `data` with the canonical code of `lengths`; ValueError if corrupt."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    count = np.bincount(lengths[lengths > 0], minlength=int(lengths.max(initial=0)) + 1).astype(np.int64)
    count[0] = 0
    used = np.flatnonzero(lengths)
    symbols = used[np.lexsort((used, lengths[used]))].astype(np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    if symbols.size == 0 or _decode_canonical(bits, count, symbols, n, out) < 0:
        raise ValueError(f"the Huffman stream ends early or holds a bit pattern that is no code "
                         f"(decoding {n} symbols from {len(data)} bytes)")
    return out


# ---------------------------------------------------------------------------
# the paper's sparse format: relative index with filler entries
# ---------------------------------------------------------------------------
def to_relative(mask, indices, index_bits, filler):
    """(gaps, symbols) of the kept weights of `mask` in C order, with filler entries.

    gap = position − previous position − 1 (previous = −1 at the start);
    a gap G > 2^g − 1 = top is preceded by G // (top + 1) fillers (gap top,
    symbol `filler`), each covering top + 1 positions; the weight's own gap
    becomes G % (top + 1).
    """
    positions = np.flatnonzero(np.asarray(mask).ravel())
    gaps = np.diff(positions, prepend=-1) - 1
    top = 2 ** index_bits - 1
    fillers = gaps // (top + 1)
    entries = fillers + 1                      # fillers, then the weight itself
    real = np.cumsum(entries) - 1              # where each weight lands in the output
    out_gaps = np.full(int(entries.sum()), top, dtype=np.int64)
    out_symbols = np.full(out_gaps.size, filler, dtype=np.int64)
    out_gaps[real] = gaps % (top + 1)
    out_symbols[real] = np.asarray(indices).ravel()[positions]
    return out_gaps, out_symbols


def from_relative(gaps, symbols, shape, filler):
    """Inverse of `to_relative`: (mask, indices) of `shape`; ValueError if positions run past the end."""
    size = math.prod(shape)
    positions = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
    if positions.size and positions[-1] >= size:
        raise ValueError(f"the relative index points at position {positions[-1]}, past the layer's {size} weights")
    real = symbols != filler
    mask = np.zeros(size, dtype=bool)
    indices = np.zeros(size, dtype=np.int64)
    mask[positions[real]] = True
    indices[positions[real]] = symbols[real]
    return mask.reshape(shape), indices.reshape(shape)


# ---------------------------------------------------------------------------
# the .tcz file
# ---------------------------------------------------------------------------
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i8"), 4: np.dtype("<i4"),
           5: np.dtype("u1"), 6: np.dtype("bool")}
_HEADER = struct.Struct("<8sHHQ")      # magic, version, reserved, total_length
_SHARED, _RAW = 1, 2


def _dtype_code(array, name):
    native = array.dtype.newbyteorder("=")
    for code, dtype in _DTYPES.items():
        if dtype == native:
            return code
    raise TypeError(f"cannot store {name}: dtype {array.dtype} (supported: float32, float64, int64, int32, uint8, bool)")


def _array_header(kind, name, array):
    encoded = name.encode("utf-8")
    return (struct.pack("<BH", kind, len(encoded)) + encoded
            + struct.pack("<BB", _dtype_code(array, name), array.ndim)
            + struct.pack(f"<{array.ndim}I", *array.shape))


def _code_lengths_bytes(lengths):
    used = int(np.flatnonzero(lengths).max(initial=-1)) + 1   # trailing unused symbols are not stored
    lengths = np.asarray(lengths[:used], dtype=np.uint8)
    width = 4 if lengths.max(initial=0) <= 15 else 8
    bits = np.unpackbits(lengths[:, None], axis=1)[:, 8 - width:]   # (used, width) MSB first
    return struct.pack("<IB", used, width) + np.packbits(bits.ravel()).tobytes()


def encode_layer(name, centroids, indices, mask, bits, index_bits):
    """The bytes of one shared-weight record; see the module docstring for the layout."""
    centroids = np.asarray(centroids)
    k = centroids.size
    gaps, symbols = to_relative(mask, indices, index_bits, filler=k)
    index_lengths = huffman_lengths(np.bincount(symbols, minlength=k + 1))
    gap_lengths = huffman_lengths(np.bincount(gaps, minlength=2 ** index_bits))
    index_stream = huffman_encode(symbols, index_lengths)
    gap_stream = huffman_encode(gaps, gap_lengths)
    shape_carrier = np.empty(mask.shape, dtype=centroids.dtype)   # only its dtype and shape are written
    return b"".join([
        _array_header(_SHARED, name, shape_carrier),
        struct.pack("<BBI", bits, index_bits, k), centroids.astype(centroids.dtype.newbyteorder("<")).tobytes(),
        struct.pack("<I", symbols.size),
        _code_lengths_bytes(index_lengths), _code_lengths_bytes(gap_lengths),
        struct.pack("<I", len(index_stream)), index_stream,
        struct.pack("<I", len(gap_stream)), gap_stream,
    ])


def encode_raw(name, array):
    array = np.asarray(array)       # (not ascontiguousarray: it turns a 0-d array into 1-d); tobytes() is C order
    return _array_header(_RAW, name, array) + array.astype(array.dtype.newbyteorder("<")).tobytes()


def _shared_state(model):
    """(shared records [(name, layer)], raw state {name: array}) with plain-model state_dict names."""
    wrappers = {path: m for path, m in compressible_layers(model) if isinstance(m, (PrunedLayer, QuantizedLayer))}
    if any(isinstance(m, PrunedLayer) for m in wrappers.values()):
        raise ValueError("save_compressed: quantize every pruned layer first (compress.quantize)")
    shared = [(f"{path}.weight", m) for path, m in wrappers.items()]
    raw = OrderedDict()
    for key, value in model.state_dict().items():
        owner = next((p for p in wrappers if key.startswith(p + ".")), None)
        if owner is None:
            raw[key] = value
        elif key.startswith(owner + ".layer."):
            raw[owner + "." + key[len(owner) + len(".layer."):]] = value
        # the wrapper's own centroids / indices / mask are the shared record
    return shared, raw


def save_compressed(path, model, config=None, index_bits=None):
    """Write `model` (its layers quantized) to `path` atomically; returns the sizes actually written.

    `index_bits` is {layer path: g} (default: 8 for conv, 5 for linear);
    `config` (a TrainConfig or dict) lets `load_compressed` rebuild the
    model. Returns {"total": file bytes, "overhead": header + meta +
    checksum bytes, "records": {name: bytes of its record}}.
    """
    shared, raw = _shared_state(model)
    if not shared:
        raise ValueError("save_compressed: the model has no quantized layer")
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    records = OrderedDict()
    for name, layer in shared:
        path_ = name[:-len(".weight")]
        g = check_bits((index_bits or {}).get(path_, DEFAULT_INDEX_BITS[layer_kind(len(layer.shape))]),
                       f"index_bits for layer {path_!r}")
        records[name] = encode_layer(name, layer.centroids.data, layer.indices, layer.mask, layer.bits, g)
    for name, array in raw.items():
        records[name] = encode_raw(name, np.asarray(array))
    meta = zlib.compress(json.dumps({"format": FORMAT, "config": config}, separators=(",", ":")).encode("utf-8"), 9)
    body = struct.pack("<I", len(meta)) + meta + struct.pack("<I", len(records)) + b"".join(records.values())
    total = _HEADER.size + len(body) + 4
    content = _HEADER.pack(MAGIC, VERSION, 0, total) + body
    content += struct.pack("<I", zlib.crc32(content))
    atomic_write(path, lambda f: f.write(content))
    return {"total": total, "overhead": total - sum(len(r) for r in records.values()),
            "records": {name: len(r) for name, r in records.items()}}


class _Reader:
    """A cursor over the file's bytes; running past the end is a CompressedFileError naming the file."""

    def __init__(self, data, path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.data):
            raise CompressedFileError(f"{self.path!r}: malformed .tcz file: {what} runs past the end of the data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt, what):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def code_lengths(self, what):
        n, width = self.unpack("<IB", what)
        if width not in (4, 8):
            raise CompressedFileError(f"{self.path!r}: {what}: lengths of {width} bits (expected 4 or 8)")
        packed = np.frombuffer(self.take((n * width + 7) // 8, what), dtype=np.uint8)
        bits = np.unpackbits(packed)[:n * width].reshape(n, width)      # (n, width) MSB first
        return (bits.astype(np.int64) << np.arange(width - 1, -1, -1)).sum(axis=1)


def is_compressed(path):
    """True when `path` is a file starting with the .tcz magic number (what `tinyconv eval` checks)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _check_frame(data, path):
    if data[:len(MAGIC)] != MAGIC:
        raise CompressedFileError(f"{path!r} is not a tinyconv compressed (.tcz) file: it does not start "
                                  f"with the magic number {MAGIC!r}")
    if len(data) < _HEADER.size + 4:
        raise CompressedFileError(f"{path!r} is truncated: {len(data)} bytes, shorter than the .tcz header")
    _, version, _, total = _HEADER.unpack_from(data)
    if len(data) != total:
        what = "truncated" if len(data) < total else "longer than its header says (trailing bytes)"
        raise CompressedFileError(f"{path!r} is {what}: the header says {total} bytes, the file has {len(data)}")
    (stored,) = struct.unpack_from("<I", data, total - 4)
    if zlib.crc32(data[:total - 4]) != stored:
        raise CompressedFileError(f"{path!r} is corrupted: CRC32 checksum mismatch "
                                  f"(stored {stored:#010x}, computed {zlib.crc32(data[:total - 4]):#010x})")
    if version != VERSION:
        raise CompressedFileError(f"{path!r} is .tcz format version {version}; this tinyconv reads version {VERSION}")


def read_compressed(path):
    """(meta dict, {name: record}) of a .tcz file; a shared record is a dict (centroids, indices, mask,
    bits, index_bits, weight), a raw one is the array. Every problem is a CompressedFileError naming `path`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no compressed model at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    _check_frame(data, path)
    reader = _Reader(data[:-4], path)
    reader.pos = _HEADER.size
    (meta_length,) = reader.unpack("<I", "the metadata length")
    try:
        meta = json.loads(zlib.decompress(reader.take(meta_length, "the metadata")).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompressedFileError(f"{path!r}: the metadata is not valid zlib-compressed JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CompressedFileError(f"{path!r}: the metadata does not describe a {FORMAT} file")
    (n_records,) = reader.unpack("<I", "the record count")
    records = OrderedDict()
    for i in range(n_records):
        name, record = _read_record(reader, i)
        records[name] = record
    if reader.pos != len(reader.data):
        raise CompressedFileError(f"{path!r}: {len(reader.data) - reader.pos} unexplained bytes after the last record")
    return meta, records


def _read_record(reader, i):
    path = reader.path
    kind, name_length = reader.unpack("<BH", f"record {i}")
    name = reader.take(name_length, f"record {i}'s name").decode("utf-8", errors="replace")
    dtype_code, ndim = reader.unpack("<BB", f"record {name!r}")
    if dtype_code not in _DTYPES or kind not in (_SHARED, _RAW):
        raise CompressedFileError(f"{path!r}: record {name!r} has unknown kind {kind} or dtype code {dtype_code}")
    dtype = _DTYPES[dtype_code]
    shape = reader.unpack(f"<{ndim}I", f"record {name!r}'s shape")
    size = math.prod(shape)
    if kind == _RAW:
        array = np.frombuffer(reader.take(size * dtype.itemsize, f"record {name!r}'s data"), dtype=dtype)
        return name, array.reshape(shape).astype(dtype.newbyteorder("="))
    bits, index_bits, k = reader.unpack("<BBI", f"record {name!r}")
    centroids = np.frombuffer(reader.take(k * dtype.itemsize, f"record {name!r}'s centroids"), dtype=dtype)
    (n_entries,) = reader.unpack("<I", f"record {name!r}")
    index_lengths = reader.code_lengths(f"record {name!r}'s index code")
    gap_lengths = reader.code_lengths(f"record {name!r}'s gap code")
    (n_bytes,) = reader.unpack("<I", f"record {name!r}")
    index_stream = reader.take(n_bytes, f"record {name!r}'s index stream")
    (n_bytes,) = reader.unpack("<I", f"record {name!r}")
    gap_stream = reader.take(n_bytes, f"record {name!r}'s gap stream")
    try:
        symbols = huffman_decode(index_stream, n_entries, index_lengths)
        gaps = huffman_decode(gap_stream, n_entries, gap_lengths)
        if symbols.size and symbols.max() > k:
            raise ValueError(f"centroid index {symbols.max()} but only {k} centroids")
        mask, indices = from_relative(gaps, symbols, shape, filler=k)
    except ValueError as error:
        raise CompressedFileError(f"{path!r}: record {name!r}: {error}") from None
    centroids = centroids.astype(dtype.newbyteorder("="))
    weight = np.where(mask, centroids[indices], 0).astype(centroids.dtype)
    return name, {"centroids": centroids, "indices": indices, "mask": mask, "bits": bits,
                  "index_bits": index_bits, "weight": weight}


def load_compressed(path, model=None):
    """(model, config) from a .tcz file: a plain model whose weights are the decoded shared weights.

    Without `model`, it is rebuilt from the stored TrainConfig
    (`tinyconv.models.get(config.model, ...)`); pass a freshly built
    `model` of the right architecture otherwise. `config` is the stored
    TrainConfig, or None if the file holds none.
    """
    from tinyconv import data, models, train

    meta, records = read_compressed(path)
    config = meta.get("config")
    if config is not None:
        config = train.TrainConfig(**{**config, "milestones": tuple(config.get("milestones") or ())})
    if model is None:
        if config is None:
            raise ValueError(f"{os.fspath(path)!r} stores no model configuration; pass model= to load_compressed")
        info = data.DATASETS[config.data]
        model = models.get(config.model, in_channels=info.shape[0], num_classes=len(info.classes))
        model.to(config.dtype)
    state = {name: r["weight"] if isinstance(r, dict) else r for name, r in records.items()}
    try:
        model.load_state_dict(state)
    except ValueError as error:
        raise CompressedFileError(f"{os.fspath(path)!r} does not fit the model: {error}") from None
    return model, config


# ---------------------------------------------------------------------------
# sizes of the paper's stages
# ---------------------------------------------------------------------------
def stage_sizes(mask, bits, index_bits, n_centroids=None):
    """Bytes of one layer at each stage, computed from the format (the coded size is measured when written).

    dense: n·4 (float32); pruned: entries·(32 + g) bits, the weights in
    float32 with a g-bit relative index (fillers included); quantized:
    entries·(b + g) bits plus the codebook, n_centroids·4 bytes.
    """
    mask = np.asarray(mask)
    gaps, _ = to_relative(mask, np.zeros(mask.shape, dtype=np.int64), index_bits, filler=0)
    entries = gaps.size
    k = 2 ** bits if n_centroids is None else n_centroids
    return {"dense": mask.size * FLOAT32_BYTES,
            "pruned": math.ceil(entries * (32 + index_bits) / 8),
            "quantized": math.ceil(entries * (bits + index_bits) / 8) + k * FLOAT32_BYTES,
            "entries": entries}


# ---------------------------------------------------------------------------
# the pipeline on a training run, and `tinyconv compress`
# ---------------------------------------------------------------------------
def retrain(run, epochs, lr, progress=None, log=print, label=""):
    """Train `run.model` (already wrapped) for `epochs` with a fresh optimizer and schedule at `lr`.

    Reuses tinyconv.train: the run's optimizer kind, momentum, weight decay
    and schedule, and `Run.train_epoch`; evaluates after each epoch.
    """
    from tinyconv import train

    if epochs <= 0:
        return None
    run.config = dataclasses.replace(run.config, epochs=epochs, lr=lr)
    params = [p for p in run.model.parameters() if p.requires_grad]
    run.optimizer = train.build_optimizer(run.config, params)
    run.scheduler = train.build_scheduler(run.config, run.optimizer)
    result = None
    for epoch in range(epochs):
        row = run.train_epoch(progress)
        result = train.evaluate(run.model, run.test_set, dtype=run.config.dtype)
        log(f"  {label} retrain epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  test acc {result['accuracy']:.4f}  {row['seconds']:.1f}s")
    return result


def compress_run(run_dir, out=None, sparsity=None, quality=None, prune_steps=1, bits=None, index_bits=None,
                 retrain_epochs=1, quant_epochs=None, retrain_lr=None, quant_lr=None, data_dir=None,
                 limit_train=None, limit_test=None, histogram=None, histogram_layer=None, progress=None,
                 log=print, prune_schedule_kind="geometric", final_epochs=None, weight_decay=None, threads=None,
                 seed=None):
    """Prune → retrain (prune_steps times) → quantize → fine-tune centroids → Huffman-code to `out`.

    sparsity / quality / bits / index_bits are specs as `parse_layer_spec`
    returns them ({'*': 0.9}, {'conv': 8, 'fc3': 6}, ...). The last pruning
    step retrains for `final_epochs` (default `retrain_epochs`);
    `weight_decay` replaces the run's for retraining and fine-tuning;
    `seed` the run's seed for the retraining's data order.
    Returns a report dict: per-layer rows and the test accuracy after each stage.
    """
    from tinyconv import train

    if sparsity is not None and quality is not None:
        raise ValueError("give --sparsity or --quality, not both")
    if not isinstance(prune_steps, int) or prune_steps < 1:
        raise ValueError(f"--prune-steps must be an int >= 1, got {prune_steps!r}")
    if prune_schedule_kind not in PRUNE_SCHEDULES:
        raise ValueError(f"--prune-schedule must be one of {', '.join(PRUNE_SCHEDULES)}, got {prune_schedule_kind!r}")
    for name, value in (("--retrain-epochs", retrain_epochs), ("--quant-epochs", quant_epochs),
                        ("--final-epochs", final_epochs)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if weight_decay is not None and not (0 <= weight_decay < math.inf):
        raise ValueError(f"--weight-decay must be a finite number >= 0, got {weight_decay!r}")
    model, config = train.load_run(run_dir)
    overrides = {k: v for k, v in (("data_dir", data_dir), ("limit_train", limit_train),
                                   ("limit_test", limit_test), ("weight_decay", weight_decay),
                                   ("threads", threads), ("seed", seed)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    run = train.Run(config, run_dir)
    run.model = model
    retrain_lr = config.lr / 10 if retrain_lr is None else retrain_lr
    quant_lr = retrain_lr / 10 if quant_lr is None else quant_lr
    quant_epochs = retrain_epochs if quant_epochs is None else quant_epochs
    final_epochs = retrain_epochs if final_epochs is None else final_epochs
    out = out or os.path.join(run_dir, "model.tcz")

    layers = compressible_layers(model)
    if quality is not None:
        quality = {p: check_quality(v, f"--quality for layer {p!r}")
                   for p, v in resolve_spec(quality, layers, "--quality", 0.0).items()}
    else:
        given = DEFAULT_SPARSITY if sparsity is None else sparsity
        sparsity = {p: check_sparsity(v, f"--sparsity for layer {p!r}")
                    for p, v in resolve_spec(given, layers, "--sparsity", 0.0).items()}
    bits = {p: check_bits(v, f"--bits for layer {p!r}")
            for p, v in resolve_spec(bits or {}, layers, "--bits", DEFAULT_BITS).items()}
    index_bits = {p: check_bits(v, f"--index-bits for layer {p!r}")
                  for p, v in resolve_spec(index_bits or {}, layers, "--index-bits", DEFAULT_INDEX_BITS).items()}
    histogram_layer = histogram_layer or layers[0][0]
    if histogram_layer not in dict(layers):
        raise ValueError(f"--histogram-layer: no layer {histogram_layer!r}; the layers are "
                         f"{', '.join(p for p, _ in layers)}")
    snapshots = {"dense": dict(layers)[histogram_layer].weight.data.ravel().copy()}

    def accuracy():
        return float(train.evaluate(run.model, run.test_set, dtype=config.dtype)["accuracy"])

    report = {"accuracy": {"dense": accuracy()}, "layers": OrderedDict()}
    log(f"{config.model}: test accuracy {report['accuracy']['dense']:.4f} before compression")
    sigma = layer_std(model)
    for step in range(1, prune_steps + 1):
        if quality is not None:
            fraction = threshold_fraction(step, prune_steps, prune_schedule_kind)
            kept = prune(model, threshold={p: q * sigma[p] * fraction for p, q in quality.items()})
        else:
            kept = prune(model, sparsity={p: prune_schedule(s, prune_steps, prune_schedule_kind)[step - 1]
                                          for p, s in sparsity.items()})
        log(f"prune step {step}/{prune_steps}: kept " + ", ".join(f"{p} {k:.1%}" for p, k in kept.items())
            + f"; test accuracy {accuracy():.4f} before retraining")
        retrain(run, final_epochs if step == prune_steps else retrain_epochs, retrain_lr, progress, log,
                label=f"prune step {step}:")
    report["accuracy"]["pruned"] = accuracy()
    pruned_layers = dict(compressible_layers(model))
    snapshots["pruned"] = pruned_layers[histogram_layer].dense_weight().ravel().copy()
    masks = {p: m.mask.copy() for p, m in pruned_layers.items()}

    n_centroids = quantize(model, bits)
    report["accuracy"]["clustered"] = accuracy()
    log(f"quantized ({', '.join(f'{p} {b} bits' for p, b in bits.items())}): "
        f"test accuracy {report['accuracy']['clustered']:.4f} before fine-tuning the centroids")
    retrain(run, quant_epochs, quant_lr, progress, log, label="centroids:")
    report["accuracy"]["quantized"] = accuracy()
    snapshots["quantized"] = dict(compressible_layers(model))[histogram_layer].dense_weight().ravel().copy()

    sizes = save_compressed(out, model, config, index_bits)
    loaded, _ = load_compressed(out)
    report["accuracy"]["coded"] = float(train.evaluate(loaded, run.test_set, dtype=config.dtype)["accuracy"])
    for path, module in compressible_layers(model):
        row = stage_sizes(masks[path], bits[path], index_bits[path], n_centroids[path])
        row.update(weights=masks[path].size, kept=float(masks[path].mean()), bits=bits[path],
                   index_bits=index_bits[path], centroids=n_centroids[path],
                   coded=sizes["records"][f"{path}.weight"])
        report["layers"][path] = row
    report["sizes"] = sizes
    report["dense_bytes"] = sum(p.size for p in loaded.parameters()) * FLOAT32_BYTES
    report["out"] = out
    if histogram:
        report["histogram"] = plot_histograms(snapshots, histogram, histogram_layer, log)
    report["snapshots"] = snapshots
    return report


def format_report(report):
    """The per-layer table and the accuracy line, as `tinyconv compress` prints them."""
    head = (f"{'layer':<14}{'weights':>9}{'kept':>8}{'bits':>6}{'idx':>5}{'dense B':>10}"
            f"{'pruned B':>10}{'quant B':>9}{'coded B':>9}{'ratio':>8}")
    lines = [head, "-" * len(head)]
    totals = dict.fromkeys(("weights", "dense", "pruned", "quantized", "coded"), 0)
    kept_total = 0.0
    for path, r in report["layers"].items():
        lines.append(f"{path:<14}{r['weights']:>9,}{r['kept']:>8.1%}{r['bits']:>6}{r['index_bits']:>5}"
                     f"{r['dense']:>10,}{r['pruned']:>10,}{r['quantized']:>9,}{r['coded']:>9,}"
                     f"{r['dense'] / r['coded']:>7.1f}x")
        for key in totals:
            totals[key] += r[key]
        kept_total += r["kept"] * r["weights"]
    lines.append("-" * len(head))
    lines.append(f"{'weights':<14}{totals['weights']:>9,}{kept_total / totals['weights']:>8.1%}{'':>11}"
                 f"{totals['dense']:>10,}{totals['pruned']:>10,}{totals['quantized']:>9,}{totals['coded']:>9,}"
                 f"{totals['dense'] / totals['coded']:>7.1f}x")
    sizes = report["sizes"]
    raw = sizes["total"] - sizes["overhead"] - totals["coded"]
    lines.append(f"whole file: {sizes['total']:,} bytes (coded weights {totals['coded']:,}, raw biases/BN "
                 f"{raw:,}, header+metadata+checksum {sizes['overhead']:,}) against {report['dense_bytes']:,} "
                 f"bytes of float32 parameters: {report['dense_bytes'] / sizes['total']:.1f}x smaller")
    acc = report["accuracy"]
    lines.append("test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
                 + f"  (loss {100 * (acc['dense'] - acc['coded']):+.2f} pp)")
    return "\n".join(lines)


def plot_histograms(snapshots, path, layer, log=print):
    """Histogram of one layer's weights: dense, after pruning (kept only), after quantization (kept only)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping the histogram (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharex=True)
    titles = {"dense": "trained (dense)", "pruned": "after pruning (kept)", "quantized": "after quantization (kept)"}
    for ax, key in zip(axes, ("dense", "pruned", "quantized")):
        values = snapshots[key] if key == "dense" else snapshots[key][snapshots[key] != 0]
        ax.hist(values, bins=200, color="tab:blue")
        ax.set_title(f"{layer}: {titles[key]}, {values.size:,} weights", fontsize=9)
        ax.set_xlabel("weight")
    axes[0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _spec(convert, argument):
    """An argparse `type=` for a layer spec; argparse prefixes the option name to the message."""
    def parse(text):
        try:
            return parse_layer_spec(text, "", convert)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = argument
    return parse


def _run_cli(args):
    from tinyconv import cli

    if args.sparsity is not None and args.quality is not None:
        raise ValueError("give --sparsity or --quality, not both")
    progress = None if args.no_progress else cli._tqdm_progress
    report = compress_run(
        args.run_dir, out=args.out, sparsity=args.sparsity, quality=args.quality, prune_steps=args.prune_steps,
        bits=args.bits, index_bits=args.index_bits, retrain_epochs=args.retrain_epochs,
        quant_epochs=args.quant_epochs, retrain_lr=args.retrain_lr, quant_lr=args.quant_lr,
        data_dir=args.data_dir, limit_train=args.limit_train, limit_test=args.limit_test,
        histogram=args.histogram, histogram_layer=args.histogram_layer, progress=progress,
        prune_schedule_kind=args.prune_schedule, final_epochs=args.final_epochs, weight_decay=args.weight_decay,
        threads=args.threads, seed=args.seed)
    print()
    print(format_report(report))
    print(f"compressed model written to {report['out']}; evaluate it with: tinyconv eval {report['out']}")
    return 0


def add_cli(subparsers):
    """Register `tinyconv compress` on the CLI's subparsers (tinyconv.cli.build_parser)."""
    p = subparsers.add_parser(
        "compress", help="Deep Compression of a trained run: prune, quantize, Huffman-code (.tcz)",
        description="Prune (and retrain), quantize with shared weights (and fine-tune the centroids), "
                    "Huffman-code; prints bytes per layer at each stage and the test accuracy after each.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `tinyconv train`")
    p.add_argument("--sparsity", type=_spec(lambda v: check_sparsity(v, "sparsity"), "--sparsity"), default=None,
                   help="fraction of weights to prune: one number for every layer, or per layer / kind, "
                        "e.g. fc1=0.92,fc2=0.91,fc3=0.74 or conv=0.7,linear=0.9 (layers not named stay dense; "
                        "default conv=0.7,linear=0.9)")
    p.add_argument("--quality", type=_spec(lambda v: check_quality(v, "quality"), "--quality"), default=None,
                   help="prune |w| <= q·std(layer) instead (the paper's rule), same syntax as --sparsity")
    p.add_argument("--prune-steps", type=int, default=1,
                   help="prune→retrain iterations; step i of K reaches sparsity 1-(1-s)^(i/K) (or threshold i/K·q·σ)")
    p.add_argument("--prune-schedule", choices=PRUNE_SCHEDULES, default="geometric",
                   help="sparsity after step i of K: geometric 1-(1-s)^(i/K), or cubic s·(1-(1-i/K)^3) "
                        "(Zhu & Gupta 2017: big steps first, small ones near the target); with --quality "
                        "the threshold's fraction is i/K or 1-(1-i/K)^3 (default: geometric)")
    p.add_argument("--retrain-epochs", type=int, default=1, help="retraining epochs after each pruning step")
    p.add_argument("--final-epochs", type=int, default=None,
                   help="retraining epochs after the last pruning step (default: --retrain-epochs)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 weight decay while retraining and fine-tuning (default: the run's)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: the run's setting)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the retraining's data order (default: the run's seed)")
    p.add_argument("--retrain-lr", type=float, default=None, help="learning rate for retraining (default: run's lr / 10)")
    p.add_argument("--bits", type=_spec(lambda v: check_bits(v, "bits"), "--bits"), default=None,
                   help=f"bits per weight index (1..{MAX_BITS}), per kind or layer; default conv=8,linear=5")
    p.add_argument("--index-bits", type=_spec(lambda v: check_bits(v, "index-bits"), "--index-bits"), default=None,
                   help="bits of the sparse relative index (gap) before Huffman coding; default conv=8,linear=5")
    p.add_argument("--quant-epochs", type=int, default=None,
                   help="epochs fine-tuning the centroids (default: --retrain-epochs)")
    p.add_argument("--quant-lr", type=float, default=None, help="learning rate for the centroids (default: retrain lr / 10)")
    p.add_argument("--out", default=None, help="the .tcz file to write (default: RUN_DIR/model.tcz)")
    p.add_argument("--data-dir", default=None, help="directory holding the data set (default: the run's)")
    p.add_argument("--limit-train", type=int, default=None, help="retrain on the first N training images only")
    p.add_argument("--limit-test", type=int, default=None, help="test on the first N test images only")
    p.add_argument("--histogram", default=None, metavar="PNG",
                   help="plot one layer's weights before pruning, after pruning, after quantization (matplotlib)")
    p.add_argument("--histogram-layer", default=None, help="the layer to plot (default: the first)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_cli)
    return p


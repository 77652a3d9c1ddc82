"""Deep Compression: pruning masks through optimizer steps, weight sharing and its gradient,
Huffman coding and the relative index, the .tcz file (sizes, round trip, bad files), the CLI."""
import argparse
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyconv
import tinyconv.functional as F
from tinyconv import compress as C
from tinyconv import nn, optim, train
from tinyconv.cli import main
from tinyconv.tensor import Tensor


def mlp(seed=0, dtype=np.float32):
    tinyconv.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    return model.to(dtype)


def small_cnn(seed=0):
    tinyconv.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return Tensor(rng.standard_normal((n, 1, 4, 4)).astype(np.float32)), rng.integers(0, 3, n)


def train_steps(model, opt, steps, seed=0):
    for step in range(steps):
        x, y = batch(seed + step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# ---------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-2),
    "adam-amsgrad": lambda p: optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_through_optimizer_steps(name):
    model = mlp()
    opt = OPTIMIZERS[name](list(model.parameters()))
    train_steps(model, opt, 3)                       # momentum / moments are non-zero everywhere now
    C.prune(model, sparsity={"1": 0.6, "3": 0.5}, optimizer=opt)
    layers = dict(C.compressible_layers(model))
    masks = {p: m.mask.copy() for p, m in layers.items()}
    before = {p: m.weight.data.copy() for p, m in layers.items()}
    train_steps(model, opt, 6, seed=10)
    for path, module in layers.items():
        pruned = ~masks[path]
        assert pruned.sum() > 0
        assert np.all(module.weight.data[pruned] == 0), path
        assert not np.array_equal(module.weight.data[~pruned], before[path][~pruned]), "kept weights must train"
        for key, value in opt.state[[id(p) for p in opt.params].index(id(module.weight))].items():
            if isinstance(value, np.ndarray):
                assert np.all(value[pruned] == 0), key


def test_without_masking_the_optimizer_state_pruned_weights_would_move():
    """The scenario above is not trivially safe: momentum left at pruned entries revives them."""
    model = mlp()
    opt = OPTIMIZERS["sgd-momentum-wd"](list(model.parameters()))
    train_steps(model, opt, 3)
    C.prune(model, sparsity={"1": 0.6})              # optimizer state NOT masked
    module = dict(C.compressible_layers(model))["1"]
    train_steps(model, opt, 1, seed=10)
    assert np.any(module.weight.data[~module.mask] != 0)


def test_apply_masks_is_the_hook_for_gradients_set_outside_the_tape():
    model = mlp()
    opt = optim.Adam(list(model.parameters()), lr=0.01)
    C.prune(model, sparsity={"1": 0.5}, optimizer=opt)
    module = dict(C.compressible_layers(model))["1"]
    rng = np.random.default_rng(1)
    for _ in range(3):
        for p in model.parameters():
            p.grad = rng.standard_normal(p.shape).astype(p.dtype)   # dense gradients, not masked
        opt.step()
        C.apply_masks(model, opt)
        assert np.all(module.weight.data[~module.mask] == 0)
        assert np.all(opt.state[0]["exp_avg"][~module.mask] == 0)


def test_magnitude_mask_prunes_exactly_the_smallest_and_never_revives():
    w = np.array([[0.5, -0.1, 0.3], [-0.7, 0.05, 0.2]])
    mask = C.magnitude_mask(w, sparsity=0.5)
    assert mask.tolist() == [[True, False, True], [True, False, False]]
    assert C.magnitude_mask(w, threshold=0.25).tolist() == [[True, False, True], [True, False, False]]
    w2 = w.copy()
    w2[0, 1] = 9.0                                   # a pruned weight that grew stays pruned
    assert not C.magnitude_mask(w2, mask, sparsity=0.0)[0, 1]
    assert C.prune_schedule(0.9, 2) == pytest.approx([1 - 0.1 ** 0.5, 0.9])


def test_cubic_schedule_is_zhu_and_gupta_and_front_loaded():
    steps = C.prune_schedule(0.9, 4, "cubic")
    assert steps == pytest.approx([0.9 * (1 - 0.75 ** 3), 0.9 * (1 - 0.5 ** 3), 0.9 * (1 - 0.25 ** 3), 0.9])
    increments = np.diff([0.0] + steps)
    assert np.all(np.diff(increments) < 0)                     # each step prunes less than the one before
    assert C.prune_schedule(0.9, 4) == pytest.approx([1 - 0.1 ** (i / 4) for i in range(1, 5)])
    assert [C.threshold_fraction(i, 2, "cubic") for i in (1, 2)] == pytest.approx([0.875, 1.0])
    assert [C.threshold_fraction(i, 2) for i in (1, 2)] == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="prune schedule must be one of geometric, cubic, got 'linear'"):
        C.prune_schedule(0.9, 4, "linear")
    with pytest.raises(ValueError, match="prune steps must be an int >= 1, got 0"):
        C.prune_schedule(0.9, 0, "cubic")


def test_quality_threshold_is_q_times_the_layer_std():
    model = mlp()
    sigma = C.layer_std(model)["1"]
    w = dict(C.compressible_layers(model))["1"].weight.data.copy()
    kept = C.prune(model, threshold={"1": 0.8 * sigma})
    assert kept["1"] == pytest.approx(np.mean(np.abs(w) > 0.8 * sigma))


# ---------------------------------------------------------------------------
# trained quantization
# ---------------------------------------------------------------------------
def test_kmeans_linear_init_and_fixed_point():
    values = np.r_[np.zeros(5), np.full(5, 2.0), np.full(3, 4.0)]
    centroids, assignment = C.kmeans_1d(values, 3)
    assert centroids.tolist() == [0.0, 2.0, 4.0] and assignment.tolist() == [0] * 5 + [1] * 5 + [2] * 3
    centroids, _ = C.kmeans_1d(np.array([1.0, 2.0, 10.0]), 4, max_iter=0)
    assert centroids.tolist() == [1.0, 4.0, 7.0, 10.0]          # linear between min and max
    values = np.random.default_rng(0).standard_normal(2000)
    centroids, assignment = C.kmeans_1d(values, 8)
    for k in np.unique(assignment):                             # Lloyd's fixed point: centroid = mean
        assert centroids[k] == pytest.approx(values[assignment == k].mean())
    assert np.all(np.diff(centroids) > 0)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_a_quantized_layer_holds_at_most_2_to_the_b_values(bits):
    model = mlp()
    C.prune(model, sparsity={"1": 0.5})
    C.quantize(model, {"1": bits, "3": bits})
    layers = dict(C.compressible_layers(model))
    pruned, dense = layers["1"], layers["3"]
    assert len(np.unique(pruned.dense_weight()[pruned.mask])) <= 2 ** bits
    assert np.all(pruned.dense_weight()[~pruned.mask] == 0)
    assert len(np.unique(dense.dense_weight())) <= 2 ** bits          # not pruned: the whole layer
    model(batch()[0])                                                  # the wrapped layer runs


def test_centroid_gradient_is_the_grouped_sum_of_weight_gradients():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 5, size=(4, 6))
    mask = rng.random((4, 6)) > 0.3
    centroids = Tensor(rng.standard_normal(5), requires_grad=True)
    probe = Tensor(rng.standard_normal((4, 6)))
    assert tinyconv.gradcheck(lambda c: C.shared_weights(c, indices, mask) * probe, (centroids,))
    # the same, spelled out: dL/dC[k] = Σ_{I[p] = k, M[p]} dL/dW[p]
    dense = Tensor(C.shared_weights(centroids, indices, mask).data, requires_grad=True)
    (dense * dense * probe).sum().backward()
    (C.shared_weights(centroids, indices, mask) ** 2 * probe).sum().backward()
    grouped = [dense.grad[(indices == k) & mask].sum() for k in range(5)]
    np.testing.assert_allclose(centroids.grad, grouped, rtol=1e-12)


def test_shared_weights_checks_its_arguments():
    c = Tensor(np.zeros(3), requires_grad=True)
    with pytest.raises(ValueError, match="indices must be in 0..2"):
        C.shared_weights(c, np.array([0, 3]), np.array([True, True]))
    with pytest.raises(TypeError, match="indices must be an integer array"):
        C.shared_weights(c, np.array([0.0, 1.0]), np.array([True, True]))
    with pytest.raises(ValueError, match="mask must be a bool array"):
        C.shared_weights(c, np.array([0, 1]), np.array([1, 1]))


def test_centroid_fine_tuning_keeps_sharing_and_zeros():
    model = mlp()
    C.prune(model, sparsity={"1": 0.5, "3": 0.3})
    C.quantize(model, {"1": 3, "3": 2})
    opt = optim.SGD(list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=1e-3)
    layer = dict(C.compressible_layers(model))["1"]
    start = layer.centroids.data.copy()
    train_steps(model, opt, 4)
    assert not np.array_equal(layer.centroids.data, start)
    weight = layer.dense_weight()
    assert len(np.unique(weight[layer.mask])) <= 8 and np.all(weight[~layer.mask] == 0)


# ---------------------------------------------------------------------------
# Huffman coding and the relative index
# ---------------------------------------------------------------------------
def roundtrip(symbols, alphabet):
    lengths = C.huffman_lengths(np.bincount(symbols, minlength=alphabet))
    data = C.huffman_encode(symbols, lengths)
    return C.huffman_decode(data, len(symbols), lengths), data, lengths


@pytest.mark.parametrize("symbols, alphabet", [
    (np.random.default_rng(0).integers(0, 32, 3000), 32),              # random
    (np.full(100, 7), 16),                                              # one symbol only
    (np.random.default_rng(1).permutation(257), 257),                   # all symbols distinct
    (np.random.default_rng(2).geometric(0.4, 4000) - 1, 64),            # skewed: long codes
    (np.zeros(0, dtype=np.int64), 4),                                   # nothing at all
])
def test_huffman_round_trip_is_exact(symbols, alphabet):
    decoded, data, lengths = roundtrip(symbols, alphabet)
    np.testing.assert_array_equal(decoded, symbols)
    assert len(data) == -(-int(lengths[symbols].sum()) // 8)            # the bits the code promises
    used = lengths[lengths > 0]
    assert used.size == 0 or np.sum(2.0 ** -used) == pytest.approx(1.0) or used.size == 1   # a complete code


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300))
def test_huffman_round_trip_hypothesis(values):
    symbols = np.array(values)
    decoded, _, _ = roundtrip(symbols, 41)
    np.testing.assert_array_equal(decoded, symbols)


def test_huffman_code_is_optimal_on_a_textbook_case():
    # counts 1, 1, 2, 4: lengths 3, 3, 2, 1 (cost 1·3 + 1·3 + 2·2 + 4·1 = 14 bits)
    assert C.huffman_lengths([1, 1, 2, 4, 0]).tolist() == [3, 3, 2, 1, 0]


def test_huffman_decode_rejects_a_truncated_stream():
    symbols = np.random.default_rng(0).integers(0, 8, 200)
    _, data, lengths = roundtrip(symbols, 8)
    with pytest.raises(ValueError, match="ends early"):
        C.huffman_decode(data[:len(data) // 2], len(symbols), lengths)


@pytest.mark.parametrize("lengths, width", [
    ([1, 0, 2, 2, 0, 0], 4),          # trailing unused symbols are not stored
    ([15, 3, 0, 1], 4),
    ([16, 1, 2], 8),                  # a length over 15 needs bytes
    ([0, 0], 4),
])
def test_code_lengths_pack_in_4_bits_when_they_fit(lengths, width):
    lengths = np.array(lengths)
    data = C._code_lengths_bytes(lengths)
    used = int(np.flatnonzero(lengths).max(initial=-1)) + 1
    assert struct.unpack_from("<IB", data) == (used, width)
    assert len(data) == 5 + (used * width + 7) // 8
    reader = C._Reader(data, "x.tcz")
    np.testing.assert_array_equal(reader.code_lengths("table"), lengths[:used])
    assert reader.pos == len(data)
    with pytest.raises(C.CompressedFileError, match="x.tcz.*lengths of 5 bits"):
        C._Reader(struct.pack("<IB", 1, 5) + b"\0", "x.tcz").code_lengths("table")


@pytest.mark.parametrize("positions, index_bits, size, fillers", [
    ([0, 1, 2], 2, 3, 0),
    ([3], 2, 4, 0),                  # gap 3 = 2^2 - 1 fits
    ([4], 2, 5, 1),                  # gap 4 needs one filler
    ([999], 2, 1000, 249),           # a long gap: 999 // 4 fillers
    ([5, 70, 71], 3, 80, 8),
    ([], 5, 10, 0),
])
def test_relative_index_with_fillers_round_trips(positions, index_bits, size, fillers):
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    indices = np.where(mask, np.arange(size) % 3, 0)
    gaps, symbols = C.to_relative(mask, indices, index_bits, filler=3)
    assert gaps.max(initial=0) <= 2 ** index_bits - 1
    assert np.sum(symbols == 3) == fillers and len(gaps) == len(positions) + fillers
    mask2, indices2 = C.from_relative(gaps, symbols, (size,), filler=3)
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_array_equal(indices2[mask], indices[mask])


# ---------------------------------------------------------------------------
# the .tcz file
# ---------------------------------------------------------------------------
def compressed_cnn(tmp_path, bits=4, index_bits=None):
    model = small_cnn()
    opt = optim.SGD(list(model.parameters()), lr=0.05, momentum=0.9)
    x = Tensor(np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), np.arange(6) % 3).backward()
        opt.step()
    C.prune(model, sparsity={"0": 0.5, "4": 0.8})
    C.quantize(model, {"0": bits, "4": bits})
    model.eval()
    path = tmp_path / "model.tcz"
    sizes = C.save_compressed(path, model, index_bits=index_bits)
    return model, x, path, sizes


def test_save_load_gives_the_same_predictions_and_exact_weights(tmp_path):
    model, x, path, _ = compressed_cnn(tmp_path)
    expected = model(x).data
    loaded, config = C.load_compressed(path, model=small_cnn(seed=5).eval())
    assert config is None
    np.testing.assert_array_equal(loaded(x).data, expected)
    _, records = C.read_compressed(path)
    for name, layer in C.compressible_layers(model):
        record = records[f"{name}.weight"]
        np.testing.assert_array_equal(record["mask"], layer.mask)
        np.testing.assert_array_equal(record["indices"][layer.mask], layer.indices[layer.mask])
        np.testing.assert_array_equal(record["centroids"], layer.centroids.data)
        np.testing.assert_array_equal(record["weight"], layer.dense_weight())
    np.testing.assert_array_equal(records["1.running_var"], model[1].running_var)   # BN stored raw


def test_reported_sizes_are_the_bytes_written(tmp_path):
    _, _, path, sizes = compressed_cnn(tmp_path, index_bits={"0": 3, "4": 2})
    assert sizes["total"] == os.path.getsize(path)
    assert sizes["overhead"] + sum(sizes["records"].values()) == os.path.getsize(path)
    data = path.read_bytes()
    meta_length = struct.unpack_from("<I", data, 20)[0]
    assert sizes["overhead"] == 20 + 4 + meta_length + 4 + 4    # header, meta, record count, crc


def test_float64_model_round_trips(tmp_path):
    model = mlp(dtype=np.float64)
    C.quantize(model, {"1": 6, "3": 6})
    C.save_compressed(tmp_path / "m.tcz", model)
    loaded, _ = C.load_compressed(tmp_path / "m.tcz", model=mlp(seed=3, dtype=np.float64))
    x = Tensor(batch()[0].data.astype(np.float64))
    np.testing.assert_array_equal(loaded(x).data, model(x).data)


def rewrite(path, data, fix_crc=False):
    data = bytearray(data)
    if fix_crc:
        data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    path.write_bytes(bytes(data))


def test_bad_files_fail_with_clear_errors(tmp_path):
    _, _, path, _ = compressed_cnn(tmp_path)
    good = path.read_bytes()
    bad = tmp_path / "bad.tcz"
    cases = [
        (good[:len(good) - 10], "truncated"),
        (good[:5], "not a tinyconv compressed"),
        (good + b"\0", "trailing bytes"),
        (b"PK\x03\x04" + good[4:], "not a tinyconv compressed"),
    ]
    corrupted = bytearray(good)
    corrupted[len(good) // 2] ^= 0x10
    cases.append((bytes(corrupted), "corrupted: CRC32"))
    for data, message in cases:
        rewrite(bad, data)
        with pytest.raises(C.CompressedFileError, match=message) as error:
            C.load_compressed(bad, model=small_cnn())
        assert "bad.tcz" in str(error.value)
    other = bytearray(good)
    other[8:10] = struct.pack("<H", 1)
    rewrite(bad, other, fix_crc=True)
    with pytest.raises(C.CompressedFileError, match="format version 1; this tinyconv reads version 2"):
        C.load_compressed(bad, model=small_cnn())
    with pytest.raises(FileNotFoundError, match="missing.tcz"):
        C.load_compressed(tmp_path / "missing.tcz")
    assert C.is_compressed(path) and not C.is_compressed(bad.parent) and not C.is_compressed(tmp_path / "x")


def test_a_file_for_another_architecture_is_refused(tmp_path):
    _, _, path, _ = compressed_cnn(tmp_path)
    with pytest.raises(C.CompressedFileError, match="does not fit the model"):
        C.load_compressed(path, model=mlp())


def test_bits_and_sparsity_out_of_range_are_refused():
    model = mlp()
    for bits in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="must be an int in 1..16"):
            C.quantize(mlp(), {"1": bits})
    for sparsity in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
            C.magnitude_mask(np.ones(4), sparsity=sparsity)
    with pytest.raises(ValueError, match="no compressible layer 'fc9'"):
        C.prune(model, sparsity={"fc9": 0.5})
    with pytest.raises(ValueError, match=r"--bits: 'linear=17': bits must be an int in 1..16"):
        C.parse_layer_spec("conv=8,linear=17", "--bits", C.check_bits)
    assert C.parse_layer_spec("conv=8, linear=5,3=2", "--bits", C.check_bits) == {"conv": 8, "linear": 5, "3": 2}
    assert C.parse_layer_spec("0.9", "--sparsity", C.check_sparsity) == {"*": 0.9}
    layers = C.compressible_layers(small_cnn())
    assert C.resolve_spec({"linear": 5, "*": 2}, layers, "--bits") == {"0": 2, "4": 5}
    assert C.resolve_spec({}, layers, "--bits", C.DEFAULT_BITS) == {"0": 8, "4": 5}
    with pytest.raises(ValueError, match="no layer named 'fc1'"):
        C.resolve_spec({"fc1": 5}, layers, "--bits")


# ---------------------------------------------------------------------------
# the pipeline on a run, and the CLI
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, quadrant_data):
    """A lenet300 run trained for one epoch on a learnable 28x28 set (which quadrant is bright)."""
    directory = quadrant_data
    run_dir = str(tmp_path_factory.mktemp("runs") / "lenet300")
    config = train.TrainConfig(model="lenet300", data_dir=str(directory), epochs=1, batch_size=32, lr=0.05, seed=1)
    train.train(config, run_dir, log=lambda *a, **k: None)
    return run_dir


def cli(argv):
    parser = argparse.ArgumentParser(prog="tinyconv")
    C.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def test_compress_run_end_to_end(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "lenet300.tcz")
    assert cli(["compress", tiny_run, "--sparsity", "fc1=0.9,fc2=0.8,fc3=0.5", "--prune-steps", "2",
                "--bits", "linear=4,fc3=3", "--retrain-epochs", "1", "--out", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "fc1" in printed and "test accuracy: dense" in printed and "coded" in printed
    model, config = C.load_compressed(out)
    assert config.model == "lenet300"
    _, records = C.read_compressed(out)
    w = records["fc1.weight"]
    assert w["mask"].mean() == pytest.approx(0.1, abs=1e-3)
    assert len(np.unique(w["weight"][w["mask"]])) <= 16 and len(np.unique(records["fc3.weight"]["centroids"])) <= 8
    dataset = train.Run(config, tiny_run).test_set
    accuracy = train.evaluate(model, dataset)["accuracy"]
    assert f"coded {accuracy:.4f}" in printed
    assert main(["eval", out]) == 0  # `tinyconv eval` reads a .tcz file directly
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out


def test_compress_run_report_sizes_match_the_file(tiny_run, tmp_path):
    out = str(tmp_path / "q.tcz")
    report = C.compress_run(tiny_run, out=out, quality={"*": 1.0}, retrain_epochs=0, quant_epochs=0,
                            log=lambda *a: None)
    assert report["sizes"]["total"] == os.path.getsize(out)
    for path, row in report["layers"].items():
        assert row["coded"] == report["sizes"]["records"][f"{path}.weight"]
        assert row["dense"] == 4 * row["weights"]
    acc = report["accuracy"]
    assert acc["coded"] == acc["quantized"]                # the file decodes to the quantized model
    assert "x smaller" in C.format_report(report)


def test_cubic_schedule_final_epochs_weight_decay_and_seed_reach_the_retraining(tiny_run, tmp_path, monkeypatch):
    seen = []
    real_retrain = C.retrain

    def spy(run, epochs, lr, progress=None, log=print, label=""):
        seen.append((label, epochs, run.config.weight_decay, run.config.seed))
        return real_retrain(run, min(epochs, 1), lr, progress, log, label)

    monkeypatch.setattr(C, "retrain", spy)
    lines = []
    report = C.compress_run(tiny_run, out=str(tmp_path / "c.tcz"), sparsity={"fc1": 0.9, "fc2": 0.8},
                            prune_steps=3, prune_schedule_kind="cubic", retrain_epochs=1, final_epochs=4,
                            quant_epochs=2, weight_decay=3e-3, seed=7, log=lines.append)
    assert [(label, epochs) for label, epochs, _, _ in seen] == [
        ("prune step 1:", 1), ("prune step 2:", 1), ("prune step 3:", 4), ("centroids:", 2)]
    assert {(wd, seed) for _, _, wd, seed in seen} == {(3e-3, 7)}
    kept_fc1 = [float(line.split("fc1 ")[1].split("%")[0]) / 100 for line in lines if line.startswith("prune step")]
    assert kept_fc1 == pytest.approx([1 - s for s in C.prune_schedule(0.9, 3, "cubic")], abs=1e-3)
    assert report["layers"]["fc3"]["kept"] == 1.0                    # not named: stays dense
    with pytest.raises(ValueError, match="--prune-schedule must be one of geometric, cubic"):
        C.compress_run(tiny_run, prune_schedule_kind="exp", log=lambda *a: None)
    with pytest.raises(ValueError, match="--final-epochs must be an int >= 0, got -1"):
        C.compress_run(tiny_run, final_epochs=-1, log=lambda *a: None)
    with pytest.raises(ValueError, match="--weight-decay must be a finite number >= 0"):
        C.compress_run(tiny_run, weight_decay=-1.0, log=lambda *a: None)


def test_cli_bad_arguments(tiny_run, tmp_path, capsys):
    for argv, message in [(["--bits", "linear=17"], "bits must be an int in 1..16, got 17"),
                          (["--bits", "conv=0"], "bits must be an int in 1..16, got 0"),
                          (["--sparsity", "1.0"], r"sparsity must be a number in [0, 1), got 1.0"),
                          (["--sparsity", "fc1=-0.2"], r"sparsity must be a number in [0, 1), got -0.2"),
                          (["--prune-schedule", "exp"], "invalid choice: 'exp'")]:
        with pytest.raises(SystemExit):
            cli(["compress", tiny_run] + argv)
        assert message in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        cli(["compress", str(tmp_path), "--no-progress"])
    with pytest.raises(ValueError, match="--sparsity: no layer named 'conv9'"):
        C.compress_run(tiny_run, sparsity={"conv9": 0.5}, log=lambda *a: None)
    with pytest.raises(ValueError, match="not both"):
        cli(["compress", tiny_run, "--sparsity", "0.5", "--quality", "1"])

"""Module mechanics (registration, naming, modes, state_dict) and safe checkpoints."""
import os
import zipfile

import numpy as np
import pytest

import tinyconv
import tinyconv.nn as nn
from tinyconv import Tensor
from tinyconv.checkpoint import CheckpointError
from tinyconv.nn import init


class TwoLayer(nn.Module):
    def __init__(self, hidden=5):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 3, bias=False)
        self.scale = nn.Parameter(np.ones(3))
        self.register_buffer("steps", np.zeros(()))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) * self.scale


def test_parameters_are_found_and_named_by_path():
    m = TwoLayer()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "fc1.weight", "fc1.bias", "fc2.weight"]
    assert m.num_parameters() == 3 + 4 * 5 + 5 + 5 * 3
    assert list(m.state_dict()) == ["scale", "steps", "fc1.weight", "fc1.bias", "fc2.weight"]
    assert [n for n, _ in m.named_modules()] == ["", "fc1", "act", "fc2"]
    assert len(list(m.children())) == 3


def test_shared_parameter_counted_once():
    shared = nn.Linear(3, 3)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(seq.parameters())) == 2


def test_forward_backward_and_zero_grad():
    m = TwoLayer()
    x = Tensor(np.random.default_rng(0).normal(size=(2, 4)))
    m(x).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_train_eval_propagate():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5)))
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())


def test_module_needs_super_init():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Broken()


def test_repr_is_readable():
    text = repr(TwoLayer())
    assert "(fc1): Linear(in_features=4, out_features=5, bias=True)" in text
    assert "(act): ReLU()" in text


def test_sequential_and_modulelist():
    seq = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.Tanh) and len(seq[:2]) == 2
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(list(ml.parameters())) == 6
    with pytest.raises(TypeError):
        nn.Sequential(nn.Linear(2, 2), lambda x: x)


def test_to_double_converts_parameters_and_buffers():
    m = TwoLayer().double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.steps.dtype == np.float64
    with pytest.raises(TypeError):
        m.to(np.int32)


# ---- initialisation ------------------------------------------------------
def test_init_bounds_and_statistics():
    w = np.zeros((256, 128, 3, 3))
    fan_in, fan_out = init.calculate_fan_in_and_fan_out(w)
    assert (fan_in, fan_out) == (128 * 9, 256 * 9)
    init.xavier_uniform_(w, generator=np.random.default_rng(0))
    bound = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    init.kaiming_normal_(w, nonlinearity="relu", generator=np.random.default_rng(1))
    assert abs(w.std() - np.sqrt(2 / fan_in)) < 0.01 * np.sqrt(2 / fan_in)
    init.xavier_normal_(w, generator=np.random.default_rng(2))
    assert abs(w.std() - np.sqrt(2 / (fan_in + fan_out))) < 0.01 * np.sqrt(2 / (fan_in + fan_out))
    lin = nn.Linear(100, 10)
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.bias.data).max() <= 0.1


def test_manual_seed_makes_init_reproducible():
    tinyconv.manual_seed(5)
    a = nn.Linear(3, 3).weight.data.copy()
    tinyconv.manual_seed(5)
    np.testing.assert_array_equal(a, nn.Linear(3, 3).weight.data)


# ---- state dicts ----------------------------------------------------------
def test_load_state_dict_round_trip_and_copies():
    a, b = TwoLayer(), TwoLayer()
    sd = a.state_dict()
    b.load_state_dict(sd)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y)
    sd["fc1.weight"][...] = 7  # the state dict holds copies
    assert not np.any(a.fc1.weight.data == 7)


def test_load_state_dict_reports_every_problem():
    a, b = TwoLayer(hidden=5), TwoLayer(hidden=6)
    sd = a.state_dict()
    sd["extra"] = np.zeros(1)
    del sd["scale"]
    before = b.fc1.weight.data.copy()
    with pytest.raises(ValueError) as err:
        b.load_state_dict(sd)
    message = str(err.value)
    assert "missing keys: ['scale']" in message and "unexpected keys: ['extra']" in message
    assert "fc1.weight: checkpoint (5, 4) float32, model (6, 4) float32" in message
    np.testing.assert_array_equal(b.fc1.weight.data, before)  # nothing changed
    result = b.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["scale"] and result.unexpected_keys == ["extra"]
    assert len(result.mismatched_keys) == 3  # fc1.weight, fc1.bias, fc2.weight
    np.testing.assert_array_equal(b.fc2.weight.data.shape, (3, 6))


# ---- checkpoints on disk --------------------------------------------------
def test_save_load_bit_exact(tmp_path):
    m = TwoLayer()
    obj = {"model": m.state_dict(), "epoch": 3, "lr": 0.1, "history": [1.5, 2.5], "pair": (1, 2),
           "name": "run", "nothing": None, "rng": {"state": {"key": np.arange(4, dtype=np.uint64)}}}
    path = tmp_path / "ckpt.npz"
    tinyconv.save(obj, path)
    back = tinyconv.load(path)
    for k, v in obj["model"].items():
        assert back["model"][k].dtype == v.dtype
        np.testing.assert_array_equal(back["model"][k], v)
    assert back["epoch"] == 3 and back["lr"] == 0.1 and back["history"] == [1.5, 2.5]
    assert back["pair"] == (1, 2) and back["name"] == "run" and back["nothing"] is None
    np.testing.assert_array_equal(back["rng"]["state"]["key"], np.arange(4))
    m2 = TwoLayer()
    m2.load_state_dict(back["model"])
    x = Tensor(np.ones((1, 4)))
    np.testing.assert_array_equal(m(x).data, m2(x).data)


def test_checkpoint_is_not_a_pickle(tmp_path):
    path = tmp_path / "c.npz"
    tinyconv.save({"w": np.ones(2)}, path)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["__tinyconv__.npy", "w.npy"]
    with pytest.raises(TypeError, match="type object"):
        tinyconv.save({"w": object()}, tmp_path / "bad.npz")


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "c.npz"
    tinyconv.save({"w": np.ones(1000)}, path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.npz"):
        tinyconv.load(tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="text.npz"):
        tinyconv.load(tmp_path / "text.npz")
    np.savez(tmp_path / "plain.npz", w=np.ones(2))
    with pytest.raises(CheckpointError, match="not a tinyconv checkpoint"):
        tinyconv.load(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        tinyconv.load(tmp_path / "missing.npz")


def test_crash_mid_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    tinyconv.save({"w": np.ones(3)}, path)

    def exploding_savez(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(RuntimeError, match="disk on fire"):
        tinyconv.save({"w": np.zeros(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(tinyconv.load(path)["w"], np.ones(3))
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind

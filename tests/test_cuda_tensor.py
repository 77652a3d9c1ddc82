"""Tensors on the 'cuda' device (tinyconv/cuda.py) against the CPU path, under Numba's CUDA simulator.

As tests/test_cuda_kernels.py: the checks run in a child pytest process with
NUMBA_ENABLE_CUDASIM=1 (and once more without it when a real GPU is
present); in the child (TINYCONV_CUDA_CHILD=1) this file holds the checks.
Every comparison is float64 with a tight tolerance: the device must compute
the same numbers as the CPU, not nearly the same.

The parent also checks, in a process without the simulator, that asking for
'cuda' where there is no GPU is a clear error (skipped when a GPU is present).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.environ.get("TINYCONV_CUDA_CHILD") == "1"
TIGHT = dict(rtol=1e-10, atol=1e-12)


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "TINYCONV_CUDA_CHILD")}


def _run_child(simulator):
    env = dict(_clean_env(), TINYCONV_CUDA_CHILD="1")
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def _real_gpu_present():
    proc = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                          env=_clean_env(), capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() == "True"


if not CHILD:
    GPU = _real_gpu_present()

    def test_cuda_tensors_under_simulator():
        _run_child(simulator=True)

    @pytest.mark.skipif(not GPU, reason="no CUDA GPU")
    def test_cuda_tensors_on_gpu():
        _run_child(simulator=False)

    def test_cpu_tensors_know_their_device():
        import tinyconv
        x = tinyconv.Tensor(np.ones((2, 3)))
        assert x.device == "cpu" and x.to("cpu") is x and x.cpu() is x
        with pytest.raises(ValueError, match="device must be one of"):
            x.to("gpu")

    @pytest.mark.skipif(GPU, reason="a CUDA GPU is present")
    def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
        code = """
import numpy as np, tinyconv
from tinyconv import nn
from tinyconv.cuda import CudaUnavailableError
assert tinyconv.cuda.is_available() is False
for make in (lambda: tinyconv.Tensor(np.ones(3)).to("cuda"), lambda: nn.Linear(2, 2).to("cuda"),
             lambda: tinyconv.Tensor(np.ones(3)).cuda()):
    try:
        make()
    except CudaUnavailableError as e:
        assert "no CUDA GPU is available" in str(e), e
    else:
        raise AssertionError("no error")
print("ok")
"""
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
        for argv in (["train", "--device", "cuda", "--no-progress"], ["bench", "kernels", "--device", "cuda"]):
            proc = subprocess.run([sys.executable, "-m", "tinyconv", *argv], cwd=ROOT, env=_clean_env(),
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2, argv
            assert "no CUDA GPU is available" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

else:
    sys.setswitchinterval(1e-4)  # the simulator polls its threads: frequent GIL hand-overs make it ~2x faster

    import tinyconv
    import tinyconv.functional as F
    from tinyconv import nn, optim
    from tinyconv.cuda import DeviceArray
    from tinyconv.tensor import Tensor

    def dev(a):
        return Tensor(a).to("cuda").data

    def assert_same(got, want):
        assert isinstance(got, DeviceArray)
        host = got.numpy()
        assert host.shape == np.shape(want) and host.dtype == np.asarray(want).dtype, (host.shape, host.dtype)
        np.testing.assert_allclose(host, want, **TIGHT)

    # -- the device array: element-wise maths, reductions, shapes ---------------------------
    def test_device_array_matches_numpy():
        rng = np.random.default_rng(0)
        a, b, c = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 1)), rng.random((2, 3, 4)) + 0.5
        da, db, dc = dev(a), dev(b), dev(c)
        assert_same(da + db, a + b)
        assert_same(db - da, b - a)
        assert_same(da * dc, a * c)
        assert_same(da / dc, a / c)
        assert_same(2.0 / dc, 2.0 / c)
        assert_same(dc ** -1, c ** -1)
        assert_same(-da, -a)
        assert_same(np.maximum(da, 0), np.maximum(a, 0))
        assert_same(da > db, (a > b).astype(np.float64))  # masks are 0/1 in the operands' dtype
        for ufunc in (np.exp, np.log, np.sqrt, np.tanh):
            assert_same(ufunc(dc), ufunc(c))
        assert_same(da.sum(), a.sum())
        assert_same(da.sum(axis=(0, 2), keepdims=True), a.sum(axis=(0, 2), keepdims=True))
        assert_same(da.sum(axis=1), a.sum(axis=1))
        assert_same(da.max(axis=-1, keepdims=True), a.max(axis=-1, keepdims=True))
        assert_same(da.transpose(2, 0, 1), a.transpose(2, 0, 1))
        assert_same(np.swapaxes(da, 0, 2), np.swapaxes(a, 0, 2))
        assert_same(np.broadcast_to(db, (2, 3, 4)), np.broadcast_to(b, (2, 3, 4)))
        assert_same(np.expand_dims(da.reshape(6, 4), 1), a.reshape(6, 1, 4))
        assert_same(da.reshape(6, 4) @ dc.reshape(6, 4).T, a.reshape(6, 4) @ c.reshape(6, 4).T)
        assert_same(da.astype(np.float32), a.astype(np.float32))
        dc += da
        dc *= 0.5
        assert_same(dc, (c + a) * 0.5)

    def test_device_refuses_silent_host_fallbacks():
        da = dev(np.ones((2, 3)))
        with pytest.raises(TypeError, match="cpu"):
            np.asarray(da)
        with pytest.raises(ValueError, match="'cuda' and 'cpu'"):
            da + np.ones((2, 3))
        with pytest.raises(NotImplementedError, match="cuda"):
            da[0]
        with pytest.raises(NotImplementedError, match="numpy.concatenate.*cuda"):
            np.concatenate([da, da])

    # -- Tensor.to, mixed devices ----------------------------------------------------------
    def test_tensor_to_round_trip_and_grad_flows_back():
        x = np.random.default_rng(1).standard_normal((2, 3))
        t = Tensor(x, requires_grad=True)
        d = t.to("cuda")
        assert d.device == "cuda" and d.to("cuda") is d and "device='cuda'" in repr(d)
        np.testing.assert_array_equal(d.cpu().numpy(), x)
        (d * d).sum().backward()
        assert isinstance(t.grad, np.ndarray)
        np.testing.assert_allclose(t.grad, 2 * x, **TIGHT)
        leaf = Tensor(x).cuda().requires_grad_()
        (leaf * 3.0).sum().backward()
        assert isinstance(leaf.grad, DeviceArray)  # the gradient stays on the device
        np.testing.assert_allclose(leaf.grad.numpy(), np.full_like(x, 3.0), **TIGHT)

    def test_mixing_devices_is_a_clear_error():
        x, w = Tensor(np.ones((1, 2, 4, 4))).cuda(), Tensor(np.ones((3, 2, 3, 3)))
        with pytest.raises(ValueError, match="conv2d: input is on device 'cuda' but weight is on 'cpu'"):
            F.conv2d(x, w)
        with pytest.raises(ValueError, match="'cuda' and 'cpu'"):
            x + Tensor(np.ones((1, 2, 4, 4)))

    # -- kernels the tape needs beyond kernels/cuda's op files ------------------------------
    @pytest.mark.parametrize("reduction, smoothing", [("mean", 0.0), ("none", 0.1), ("sum", 0.2)])
    def test_cross_entropy_matches_cpu(reduction, smoothing):
        rng = np.random.default_rng(2)
        x, target = rng.standard_normal((3, 4)) * 3, np.array([0, 3, 1])
        grads = []
        for device in ("cpu", "cuda"):
            logits = Tensor(x).to(device).requires_grad_()
            loss = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)
            seed = Tensor(np.linspace(0.5, 1.5, loss.size)).to(device) if reduction == "none" else None
            loss.backward(seed)
            grads.append((loss.numpy(), logits.grad if device == "cpu" else logits.grad.numpy()))
        for got, want in zip(*grads[::-1]):
            np.testing.assert_allclose(got, want, **TIGHT)

    # -- modules and a whole training step ---------------------------------------------------
    def test_module_to_moves_parameters_and_buffers():
        bn = nn.BatchNorm2d(3).double()
        assert bn.to("cuda") is bn
        assert all(p.device == "cuda" for p in bn.parameters())
        assert isinstance(bn.running_mean, DeviceArray) and isinstance(bn.num_batches_tracked, np.ndarray)
        state = bn.state_dict()
        assert all(isinstance(v, np.ndarray) for v in state.values())  # host copies, ready to save
        bn.load_state_dict(state)
        assert isinstance(bn.running_var, DeviceArray)
        bn.to("cpu")
        assert all(p.device == "cpu" for p in bn.parameters()) and isinstance(bn.running_mean, np.ndarray)

    class Residual(nn.Module):
        """conv-BN-ReLU-conv(depthwise)-BN + the input, then ReLU: a residual block."""

        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)

    def plain_net():
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(3 * 2 * 2, 3))

    def residual_net():
        return nn.Sequential(nn.Conv2d(2, 2, 1), Residual(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(2, 3))

    def train_steps(make_model, make_optimizer, device, steps):
        tinyconv.manual_seed(0)
        model = make_model().double().to(device)
        optimizer = make_optimizer(list(model.parameters()))
        rng = np.random.default_rng(3)
        losses = []
        for _ in range(steps):
            x, target = rng.standard_normal((2, 2, 4, 4)), rng.integers(0, 3, 2)
            loss = F.cross_entropy(model(Tensor(x).to(device)), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, model.state_dict(), optimizer.state_dict()

    @pytest.mark.parametrize("make_model, make_optimizer, steps", [
        (plain_net, lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2), 2),
        (residual_net, lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), 1),
        (plain_net, lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-2), 1)])
    def test_training_step_matches_cpu(make_model, make_optimizer, steps):
        """Same losses, same updated weights, running statistics and optimizer state on both devices."""
        cpu = train_steps(make_model, make_optimizer, "cpu", steps)
        gpu = train_steps(make_model, make_optimizer, "cuda", steps)
        np.testing.assert_allclose(gpu[0], cpu[0], **TIGHT)
        for got, want in ((gpu[1], cpu[1]), (gpu[2], cpu[2])):
            assert got.keys() == want.keys()
            for key in want:
                if isinstance(want[key], np.ndarray):
                    np.testing.assert_allclose(got[key], want[key], **TIGHT, err_msg=key)

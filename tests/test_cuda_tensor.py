"""Tensors on the 'cuda' device (tinyconv/cuda.py) against the CPU path, under Numba's CUDA simulator.

As tests/test_cuda_kernels.py: the checks run in a child pytest process with
NUMBA_ENABLE_CUDASIM=1 (and once more without it when a real GPU is
present); in the child (TINYCONV_CUDA_CHILD=1) this file holds the checks.
Every comparison is float64 with a tight tolerance: the device must compute
the same numbers as the CPU, not nearly the same.

The parent also checks, in a process without the simulator, that asking for
'cuda' where there is no GPU is a clear error (skipped when a GPU is present).
"""
import subprocess
import sys

import numpy as np
import pytest

from conftest import CUDA_CHILD as CHILD, ROOT, clean_env, real_gpu_present, run_cuda_child
TIGHT = dict(rtol=1e-10, atol=1e-12)


if not CHILD:
    GPU = real_gpu_present()

    def test_cuda_tensors_under_simulator():
        run_cuda_child(__file__, simulator=True)

    @pytest.mark.skipif(not GPU, reason="no CUDA GPU")
    def test_cuda_tensors_on_gpu():
        run_cuda_child(__file__, simulator=False)

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
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
        for argv in (["train", "--device", "cuda", "--no-progress"], ["bench", "kernels", "--device", "cuda"]):
            proc = subprocess.run([sys.executable, "-m", "tinyconv", *argv], cwd=ROOT, env=clean_env(),
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
        if host.dtype.kind == "f":
            np.testing.assert_allclose(host, want, **TIGHT)
        else:
            np.testing.assert_array_equal(host, want)

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
        assert_same(da > db, a > b)  # booleans, as NumPy
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
        with pytest.raises(ValueError, match="'cuda' and 'cpu'"):
            np.concatenate([da, np.ones((2, 3))])
        with pytest.raises(NotImplementedError, match="indexing with.*cuda"):
            da[da > 0]  # a boolean mask: a data-dependent shape
        with pytest.raises(NotImplementedError, match="numpy.sort.*cuda"):
            np.sort(da)
        with pytest.raises(NotImplementedError, match="numpy.pad.*cuda"):
            np.pad(da, 1, mode="reflect")
        with pytest.raises(IndexError):
            da[2]

    # -- indexing, joining, padding, selecting: what the zoo's blocks need -------------------
    def test_indexing_matches_numpy():
        a = np.random.default_rng(5).standard_normal((3, 4, 5))
        da = dev(a)
        for index in (0, -1, (1, 2, 3), (slice(None), slice(None, None, -1)), (Ellipsis, slice(4, 0, -2)),
                      (-1, None, slice(1, 3)), (slice(None), slice(None), slice(None, None, 2)),
                      (slice(None, None, 2), slice(None, None, 2)), (slice(5, 7),), (slice(None), -3, slice(-2, None)),
                      (np.arange(3), np.array([0, 3, 1])), ([2, 0, 2],), (slice(None), np.array([[1, 3], [0, 0]]))):
            assert_same(da[index], a[index])
        g, dg = np.zeros_like(a), dev(np.zeros_like(a))
        for index in ((np.array([0, 0, 2]), np.array([1, 1, 3])), (slice(None), slice(3, 0, -2)),
                      (slice(None), slice(None), np.array([4, 4, 0]))):  # repeated indices accumulate
            values = np.arange(float(np.zeros_like(a)[index].size)).reshape(np.zeros_like(a)[index].shape)
            np.add.at(g, index, values)
            np.add.at(dg, index, dev(values))
            assert_same(dg, g)
        g[:, ::-2, 1:] = 7.0
        dg[:, ::-2, 1:] = 7.0
        g[0] = a[1]
        dg[0] = da[1]
        g[np.array([2, 0]), np.array([1, 3])] = -2.0  # a one-hot style assignment
        dg[np.array([2, 0]), np.array([1, 3])] = -2.0
        assert_same(dg, g)
        with pytest.raises(NotImplementedError, match="repeated integer indices.*cuda"):
            dg[np.array([1, 1])] = 0.0

    def test_comparisons_give_booleans():
        a, b = np.array([[-1.0, 0.0, 2.0], [3.0, np.nan, -2.0]]), np.array([0.0, 0.0, 3.0])
        da, db = dev(a), dev(b)
        for got, want in ((da > db, a > b), (da >= 0, a >= 0), (da < db, a < b), (da <= 0, a <= 0),
                          (da == db, a == b), (da != 0, a != 0), (~(da > 0), ~(a > 0)),
                          ((da > -1.5) & (da < 2.5), (a > -1.5) & (a < 2.5)), ((da > 2) | (da < 0), (a > 2) | (a < 0)),
                          ((da > 0) ^ (db > 0), (a > 0) ^ (b > 0))):
            assert got.dtype == np.bool_
            assert_same(got, want)
        assert_same((da > 0).sum(axis=1), (a > 0).sum(axis=1))  # counts, int64 as NumPy
        assert_same((da > 0).astype(np.float64), (a > 0).astype(np.float64))
        assert_same(dev(b) * (db > 0), b * (b > 0))

    def test_joining_padding_selecting_match_numpy():
        rng = np.random.default_rng(6)
        a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
        da, db = dev(a), dev(b)
        for axis in (0, 1, 2, -1):
            part = (slice(None),) * (axis % 3) + (slice(0, 2),)
            assert_same(np.concatenate([da, db[part], da], axis=axis), np.concatenate([a, b[part], a], axis=axis))
            for got, want in zip(np.split(da, [1, 2], axis=axis), np.split(a, [1, 2], axis=axis)):
                assert_same(got, want)
        assert_same(np.pad(da, ((0, 1), (2, 0), (1, 3)), constant_values=-1.5),
                    np.pad(a, ((0, 1), (2, 0), (1, 3)), constant_values=-1.5))
        assert_same(np.where(da > 0, da, db[:1]), np.where(a > 0, a, b[:1]))
        assert_same(np.where(da > 0, 1, 0.25), np.where(a > 0, 1, 0.25))
        assert_same(np.clip(da, -0.5, 0.5), np.clip(a, -0.5, 0.5))
        assert_same(np.expm1(da), np.expm1(a))
        assert_same(np.take(da, np.array([3, 0, 0]), axis=2), np.take(a, np.array([3, 0, 0]), axis=2))
        for x, y in (((2, 3, 4), (4, 5)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)), ((2, 1, 3, 4), (5, 4, 2)),
                     ((3, 4), (4, 2))):  # np.matmul's rules: batch broadcasting, 1-D operands
            p, q = rng.standard_normal(x), rng.standard_normal(y)
            assert_same(dev(p) @ dev(q), p @ q)

    def both_devices(fn, *arrays):
        """fn's output and the inputs' gradients on 'cuda' equal those on the CPU."""
        results = []
        for device in ("cpu", "cuda"):
            inputs = [Tensor(a).to(device).requires_grad_() for a in arrays]
            out = fn(*inputs)
            out.backward(Tensor(np.linspace(0.5, 1.5, out.size).reshape(np.shape(out.data))).to(device))
            results.append([np.asarray(out.numpy())] + [t.grad if device == "cpu" else t.grad.numpy() for t in inputs])
        for got, want in zip(results[1], results[0]):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, **TIGHT)

    @pytest.mark.parametrize("name", ["leaky_relu", "elu", "relu6", "normalize", "nll_loss", "pad", "tensor_pad",
                                      "strided_slice", "concat", "stack", "matmul_3d", "clip", "max",
                                      "nearest", "bilinear", "bilinear_corners", "dropout", "focal_sigmoid",
                                      "focal_softmax", "triplet"])
    def test_tape_ops_match_cpu(name):
        from tinyconv.tensor import concat, stack
        x = np.random.default_rng(7).standard_normal((2, 3, 4, 4)) * 4  # |x| > 1e-3 away from the kinks
        x[np.abs(x) < 1e-3] = 0.5
        fns = {
            "leaky_relu": lambda t: F.leaky_relu(t, 0.1), "elu": F.elu, "relu6": F.relu6,
            "normalize": lambda t: F.normalize(t.reshape(2, -1)),
            "nll_loss": lambda t: F.nll_loss(F.log_softmax(t.reshape(4, -1)), np.array([3, 7, 3, 0])),
            "pad": lambda t: F.pad(t, (1, 2, -1, 1)),
            "tensor_pad": lambda t: t.pad(((0, 0), (0, 2), (1, 0), (0, 0))),
            "strided_slice": lambda t: t[:, ::-2, ::2, 1::-1],
            "concat": lambda t: concat([t, t[:, :2] * 2], axis=1),
            "stack": lambda t: stack([t, t * t], axis=2),
            "matmul_3d": lambda t: t.reshape(6, 4, 4) @ t.reshape(6, 4, 4)[:, :, :2],
            "clip": lambda t: t.clip(-1, 1), "max": lambda t: t.max(axis=1),
            "nearest": lambda t: F.interpolate(t, scale_factor=2, mode="nearest"),
            "bilinear": lambda t: F.interpolate(t, size=(3, 7), mode="bilinear", align_corners=False),
            "bilinear_corners": lambda t: F.interpolate(t, size=(5, 2), mode="bilinear", align_corners=True),
            "dropout": lambda t: F.dropout2d(t, 0.5, generator=np.random.default_rng(1))
            + F.dropout(t, 0.3, generator=np.random.default_rng(2)),
            "focal_sigmoid": lambda t: F.focal_loss(t, (x > 0.5).astype(np.float64), gamma=1.5),
            "focal_softmax": lambda t: F.focal_loss(t.reshape(4, -1), np.array([0, 23, 5, 5]), mode="softmax",
                                                    reduction="none"),
            "triplet": lambda t: F.triplet_margin_loss(*(F.normalize(t[i].reshape(3, -1)) for i in (0, 1, 0)),
                                                      margin=0.5),
        }
        both_devices(fns[name], x)

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

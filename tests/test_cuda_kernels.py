"""kernels/cuda/ against its CPU twins (kernels/*.py), float64, under Numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported, so
these checks run in a child pytest process with NUMBA_ENABLE_CUDASIM=1 (the
rest of the suite is unaffected). When a real GPU is present, the same
checks run once more in a child process without the simulator. In the
child (TINYCONV_CUDA_CHILD=1) this file holds the checks themselves.

Shapes are tiny: under the simulator every GPU thread is a Python thread.
The configurations (stride, padding, dilation, groups) are drawn by a seeded
generator, so each run checks the same few cases.
"""
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CUDA_CHILD as CHILD, ROOT, clean_env, real_gpu_present, run_cuda_child


if not CHILD:
    def test_cuda_kernels_under_simulator():
        run_cuda_child(__file__, simulator=True)

    @pytest.mark.skipif(not real_gpu_present(), reason="no CUDA GPU")
    def test_cuda_kernels_on_gpu():
        run_cuda_child(__file__, simulator=False)

    def test_kernels_cuda_imports_without_gpu():
        """Importing kernels.cuda needs no GPU and no simulator (the kernels compile on first call)."""
        code = ("import kernels.cuda.conv2d, kernels.cuda.conv_transpose, kernels.cuda.depthwise, "
                "kernels.cuda.pool, kernels.cuda.batchnorm, kernels.cuda.shuffle, kernels.cuda.gemm, "
                "kernels.cuda.deform")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

else:
    sys.setswitchinterval(1e-4)  # the simulator polls its threads: frequent GIL hand-overs make it ~2x faster

    from kernels import batchnorm, conv2d, conv_transpose, deform, depthwise, im2col, pool, shuffle
    from kernels.cuda import batchnorm as cuda_batchnorm
    from kernels.cuda import conv2d as cuda_conv2d
    from kernels.cuda import conv_transpose as cuda_conv_transpose
    from kernels.cuda import deform as cuda_deform
    from kernels.cuda import depthwise as cuda_depthwise
    from kernels.cuda import device as cuda_device
    from kernels.cuda import gemm as cuda_gemm
    from kernels.cuda import im2col as cuda_im2col
    from kernels.cuda import pool as cuda_pool
    from kernels.cuda import shuffle as cuda_shuffle

    TIGHT = dict(rtol=1e-10, atol=1e-12)

    def host(a):
        return None if a is None else a.copy_to_host()

    def assert_twins(gpu, cpu, **tol):
        """Every array of the GPU result equals the CPU twin's (None where it is None)."""
        gpu = gpu if isinstance(gpu, tuple) else (gpu,)
        cpu = cpu if isinstance(cpu, tuple) else (cpu,)
        assert len(gpu) == len(cpu)
        for g, c in zip(gpu, cpu):
            assert (g is None) == (c is None)
            if c is not None:
                g = host(g)
                assert g.shape == c.shape and g.dtype == c.dtype
                np.testing.assert_allclose(g, c, **(tol or TIGHT))

    def draw_conv(seed, groups_choices=(1, 2)):
        """(N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups), small and valid."""
        rng = np.random.default_rng(seed)
        groups = int(rng.choice(groups_choices))
        k = tuple(int(v) for v in rng.integers(1, 4, 2))
        stride = tuple(int(v) for v in rng.integers(1, 3, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        padding = tuple(int(rng.integers(0, kk)) for kk in k)
        h, w = (int(d * (kk - 1) + 1 + rng.integers(0, 3)) for d, kk in zip(dilation, k))
        return 2, 2 * groups, 2 * groups, h, w, k, stride, padding, dilation, groups

    # -- GEMM -----------------------------------------------------------------------------
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, True)])
    def test_gemm_matches_numpy_dot(dtype, trans_a, trans_b):
        rng = np.random.default_rng(1)
        a, b = rng.standard_normal((9, 19)).astype(dtype), rng.standard_normal((19, 11)).astype(dtype)
        got = host(cuda_gemm.gemm(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b, trans_a, trans_b))
        assert got.dtype == dtype
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else TIGHT
        np.testing.assert_allclose(got, np.dot(a, b), **tol)

    def test_batched_gemm_broadcasts_and_sums():
        rng = np.random.default_rng(2)
        a, b = rng.standard_normal((2, 3, 10)), rng.standard_normal((4, 10, 5))  # a broadcast over 4 = 2·2 entries
        c = cuda_gemm.matmul_into(cuda_device.empty((4, 3, 5), np.float64), a, b)
        np.testing.assert_allclose(host(c), np.matmul(np.concatenate([a, a]), b), **TIGHT)
        s = cuda_gemm.matmul_into(cuda_device.empty((2, 3, 5), np.float64), a, b, n_sum=2)  # s·2 + g
        np.testing.assert_allclose(host(s), a @ b[:2] + a @ b[2:], **TIGHT)

    @pytest.mark.skipif(not cuda_device.SIMULATOR, reason="a simulator race: real shared memory is hardware")
    def test_block_threads_share_one_shared_array_under_thread_switches(monkeypatch):
        """Regression: numba's simulator looks a shared array up, then allocates it, in two steps; a thread
        switch between them gave two threads of one block different arrays (GEMM tiles, reduction partials),
        hence a now-and-then garbage gradient in test_cuda_models. Here every look-up hands the GIL to the
        block's other threads, so all of them enter that window (kernels/cuda/device.py makes it atomic)."""
        from numba.cuda.simulator import kernelapi

        class SlowLookup(dict):  # the simulator's per-block {(file, line): shared array}
            def get(self, key, default=None):
                found = super().get(key, default)
                time.sleep(1e-3)  # between the look-up and the store
                return found

        init = kernelapi.FakeCUDAShared.__init__

        def slow_init(self, dynshared_size):
            init(self, dynshared_size)
            self._allocations = SlowLookup()

        monkeypatch.setattr(kernelapi.FakeCUDAShared, "__init__", slow_init)
        rng = np.random.default_rng(3)
        a, b, x = rng.standard_normal((5, 7)), rng.standard_normal((7, 3)), rng.standard_normal((2, 3, 4, 4))
        np.testing.assert_allclose(host(cuda_gemm.gemm(a, b)), a @ b, **TIGHT)  # tiles: (TILE, TILE) shared
        np.testing.assert_allclose(host(cuda_device.channel_sum(x)), x.sum(axis=(0, 2, 3)), **TIGHT)  # tree

    @pytest.mark.skipif(not cuda_device.SIMULATOR, reason="a simulator race")
    def test_device_function_keeps_the_fake_cuda_module_while_any_thread_is_inside():
        """Regression (NVIDIA/numba-cuda#690): thread A enters a device function (its module's `cuda` becomes
        the simulator's fake module), thread B enters too, A returns while B is still inside: B must keep the
        fake module (numba's own swap put the real one back: AttributeError on B's next cuda.threadIdx)."""
        from numba import cuda as simulator_cuda
        from numba.cuda.simulator import kernel as simulator_kernel

        module = {"cuda": simulator_cuda}  # the globals of a module holding a device function
        exec("def device_function():\n    return cuda.threadIdx.x", module)
        fake = object()
        thread_a = simulator_kernel.swapped_cuda_module(module["device_function"], fake)
        thread_b = simulator_kernel.swapped_cuda_module(module["device_function"], fake)
        thread_a.__enter__()
        thread_b.__enter__()
        thread_a.__exit__(None, None, None)
        assert module["cuda"] is fake
        thread_b.__exit__(None, None, None)
        assert module["cuda"] is simulator_cuda

    # -- im2col / conv ---------------------------------------------------------------------
    @pytest.mark.parametrize("seed", [0, 1])
    def test_im2col_col2im(seed):
        n, c, _, h, w, k, stride, padding, dilation, _ = draw_conv(seed)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, c, h, w))
        cols = im2col.im2col(x, k, stride, padding, dilation)
        assert_twins(cuda_im2col.im2col(x, k, stride, padding, dilation), cols)
        g = rng.standard_normal(cols.shape)
        assert_twins(cuda_im2col.col2im(g, x.shape, k, stride, padding, dilation),
                     im2col.col2im(g, x.shape, k, stride, padding, dilation))

    @pytest.mark.parametrize("seed", [2, 3])
    def test_conv2d(seed):
        n, c_in, c_out, h, w, k, stride, padding, dilation, groups = draw_conv(seed)
        rng = np.random.default_rng(seed)
        x, weight = rng.standard_normal((n, c_in, h, w)), rng.standard_normal((c_out, c_in // groups, *k))
        bias = rng.standard_normal(c_out)
        args = (stride, padding, dilation, groups)
        y = conv2d.conv2d_forward(x, weight, bias, *args)
        assert_twins(cuda_conv2d.conv2d_forward(x, weight, bias, *args), y)
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_conv2d.conv2d_backward(g, x, weight, *args), conv2d.conv2d_backward(g, x, weight, *args))
        needs = (False, True, False)
        assert_twins(cuda_conv2d.conv2d_backward(g, x, weight, *args, needs=needs),
                     conv2d.conv2d_backward(g, x, weight, *args, needs=needs))

    @pytest.mark.parametrize("seed", [4, 5])
    def test_conv_transpose2d(seed):
        n, c_in, c_out, h, w, k, stride, padding, dilation, groups = draw_conv(seed)
        output_padding = tuple(max(s, d) - 1 for s, d in zip(stride, dilation))  # < max(stride, dilation)
        rng = np.random.default_rng(seed)
        x, weight = rng.standard_normal((n, c_in, h, w)), rng.standard_normal((c_in, c_out // groups, *k))
        bias = rng.standard_normal(c_out)
        args = (stride, padding, output_padding, groups, dilation)
        y = conv_transpose.conv_transpose2d_forward(x, weight, bias, *args)
        assert_twins(cuda_conv_transpose.conv_transpose2d_forward(x, weight, bias, *args), y)
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_conv_transpose.conv_transpose2d_backward(g, x, weight, *args),
                     conv_transpose.conv_transpose2d_backward(g, x, weight, *args))

    @pytest.mark.parametrize("seed", [6, 7])
    def test_depthwise(seed):
        n, _, _, h, w, k, stride, padding, dilation, _ = draw_conv(seed)
        rng = np.random.default_rng(seed)
        c, mult = 2, 1 + seed % 2
        x, weight = rng.standard_normal((n, c, h, w)), rng.standard_normal((c * mult, 1, *k))
        bias = rng.standard_normal(c * mult)
        args = (stride, padding, dilation)
        y = depthwise.depthwise_conv2d_forward(x, weight, bias, *args)
        assert_twins(cuda_depthwise.depthwise_conv2d_forward(x, weight, bias, *args), y)
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_depthwise.depthwise_conv2d_backward(g, x, weight, *args),
                     depthwise.depthwise_conv2d_backward(g, x, weight, *args))

    # -- pooling ---------------------------------------------------------------------------
    POOL_CASES = [((3, 3), (2, 2), (1, 1), (1, 1), False), ((2, 3), (2, 1), (1, 0), (2, 1), True)]

    @pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", POOL_CASES)
    def test_max_pool2d(kernel, stride, padding, dilation, ceil_mode):
        rng = np.random.default_rng(8)
        x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.5  # distinct values: no ties
        y, indices = pool.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
        assert_twins(cuda_pool.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode), (y, indices))
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_pool.max_pool2d_backward(g, indices, x.shape), pool.max_pool2d_backward(g, indices, x.shape))

    @pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad",
                             [((3, 3), (2, 2), (1, 1), False, True), ((2, 3), (2, 1), (1, 0), True, False)])
    def test_avg_pool2d(kernel, stride, padding, ceil_mode, count_include_pad):
        rng = np.random.default_rng(9)
        x = rng.standard_normal((2, 2, 7, 6))
        args = (kernel, stride, padding, ceil_mode, count_include_pad)
        y = pool.avg_pool2d_forward(x, *args)
        assert_twins(cuda_pool.avg_pool2d_forward(x, *args), y)
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_pool.avg_pool2d_backward(g, x.shape, *args), pool.avg_pool2d_backward(g, x.shape, *args))

    @pytest.mark.parametrize("output_size", [(1, 1), (3, 4)])
    def test_adaptive_pool2d(output_size):
        rng = np.random.default_rng(10)
        x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.5
        y = pool.adaptive_avg_pool2d_forward(x, output_size)
        assert_twins(cuda_pool.adaptive_avg_pool2d_forward(x, output_size), y)
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_pool.adaptive_avg_pool2d_backward(g, x.shape), pool.adaptive_avg_pool2d_backward(g, x.shape))
        assert_twins(cuda_pool.adaptive_max_pool2d_forward(x, output_size),
                     pool.adaptive_max_pool2d_forward(x, output_size))

    # -- batch norm, shuffle ---------------------------------------------------------------
    @pytest.mark.parametrize("shape, affine", [((3, 2, 3, 4), True), ((5, 3), False)])
    def test_batch_norm(shape, affine):
        rng = np.random.default_rng(11)
        x = rng.standard_normal(shape) * 2 + 1
        weight, bias = (rng.standard_normal(shape[1]), rng.standard_normal(shape[1])) if affine else (None, None)
        y, mean, inv_std = batchnorm.batch_norm_forward(x, weight, bias, 1e-5)
        assert_twins(cuda_batchnorm.batch_norm_forward(x, weight, bias, 1e-5), (y, mean, inv_std))
        g = rng.standard_normal(shape)
        assert_twins(cuda_batchnorm.batch_norm_backward(g, x, weight, mean, inv_std),
                     batchnorm.batch_norm_backward(g, x, weight, mean, inv_std))
        running_mean, running_var = rng.standard_normal(shape[1]), rng.random(shape[1]) + 0.5
        assert_twins(cuda_batchnorm.batch_norm_inference(x, running_mean, running_var, weight, bias, 1e-5),
                     batchnorm.batch_norm_inference(x, running_mean, running_var, weight, bias, 1e-5))
        assert_twins(cuda_batchnorm.batch_norm_inference_backward(g, x, running_mean, running_var, weight, 1e-5),
                     batchnorm.batch_norm_inference_backward(g, x, running_mean, running_var, weight, 1e-5))

    def test_channel_shuffle():
        x = np.random.default_rng(12).standard_normal((2, 6, 3, 2))
        assert_twins(cuda_shuffle.channel_shuffle_forward(x, 3), shuffle.channel_shuffle_forward(x, 3))
        assert_twins(cuda_shuffle.channel_shuffle_backward(x, 3), shuffle.channel_shuffle_backward(x, 3))

    # -- deformable convolution ------------------------------------------------------------
    @pytest.mark.parametrize("seed, groups, offset_groups, modulated", [(13, 1, 1, False), (14, 2, 2, True)])
    def test_deform_conv2d(seed, groups, offset_groups, modulated):
        """v1 and v2, weight groups and offset groups; offsets reach past the borders (zero there)."""
        n, _, _, h, w, k, stride, padding, dilation, _ = draw_conv(seed, groups_choices=(1,))
        rng = np.random.default_rng(seed)
        c_in, c_out = 2 * groups, 2 * groups
        out = tuple(im2col.conv_output_size(size, kk, s, p, d)
                    for size, kk, s, p, d in zip((h, w), k, stride, padding, dilation))
        taps = offset_groups * k[0] * k[1]
        x, weight = rng.standard_normal((n, c_in, h, w)), rng.standard_normal((c_out, c_in // groups, *k))
        offset = rng.uniform(-2.5, 2.5, (n, 2 * taps, *out))
        mask = rng.uniform(0.2, 1.0, (n, taps, *out)) if modulated else None
        bias = rng.standard_normal(c_out)
        args = (stride, padding, dilation, mask)
        y = deform.deform_conv2d_forward(x, offset, weight, bias, *args)
        assert_twins(cuda_deform.deform_conv2d_forward(x, offset, weight, bias, *args), y)
        g = rng.standard_normal(y.shape)
        assert_twins(cuda_deform.deform_conv2d_backward(g, x, offset, weight, *args),
                     deform.deform_conv2d_backward(g, x, offset, weight, *args))
        needs = (False, True, False, False, modulated)
        assert_twins(cuda_deform.deform_conv2d_backward(g, x, offset, weight, *args, needs=needs),
                     deform.deform_conv2d_backward(g, x, offset, weight, *args, needs=needs))

"""Pooling: kernels/pool.py against kernels/reference.py, gradients through tinyconv.functional."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st

from conftest import record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, pool, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


def distinct(shape, rng, dtype=np.float64):
    """Values without ties, spaced 0.1 apart (gap >> gradcheck's eps), some negative."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape).astype(dtype)


@st.composite
def pool_configs(draw, dilated=True):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    ceil_mode = draw(st.booleans())
    out = [pool.pool_output_size(shape[2 + a], k[a], s[a], p[a], d[a], ceil_mode) for a in range(2)]
    assume(min(out) >= 1)
    for a in range(2):  # every window must hold an input pixel (only extreme dilation breaks this)
        assume((pool.window_taps(shape[2 + a], out[a], k[a], s[a], p[a], d[a])[1] > 0).all())
    return shape, k, s, p, d, ceil_mode


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(pool_configs(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_max_pool_matches_reference(config, dtype, seed):
    shape, k, s, p, d, ceil_mode = config
    rng = np.random.default_rng(seed)
    x = distinct(shape, rng, dtype)
    y, idx = pool.max_pool2d_forward(x, k, s, p, d, ceil_mode)
    y_ref, idx_ref = reference.max_pool2d_forward(x, k, s, p, d, ceil_mode)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)  # a max is exact
    np.testing.assert_array_equal(idx, idx_ref)
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(pool.max_pool2d_backward(g, idx, shape),
                               reference.max_pool2d_backward(g, idx_ref, shape), **TOL[dtype])


def test_max_pool_ties_pick_the_first_maximum():
    x = np.ones((1, 2, 5, 5))
    for config in [((2, 2), (2, 2), (0, 0), (1, 1), False), ((3, 3), (1, 1), (1, 1), (1, 1), True),
                   ((3, 2), (2, 1), (1, 1), (2, 1), True)]:
        y, idx = pool.max_pool2d_forward(x, *config)
        np.testing.assert_array_equal(idx, reference.max_pool2d_forward(x, *config)[1])
    y, idx = pool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert idx[0, 0].tolist() == [[0, 2], [10, 12]]  # top-left of each window


def test_max_pool_padding_is_minus_infinity():
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: a zero padding would win
    y, idx = pool.max_pool2d_forward(x, (3, 3), (1, 1), (1, 1), (1, 1), False)
    assert (y < 0).all() and idx[0, 0, 0, 0] == 0


@settings(max_examples=40, deadline=None)
@given(pool_configs(dilated=False), st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_avg_pool_matches_reference(config, count_include_pad, dtype, seed):
    shape, k, s, p, _, ceil_mode = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y = pool.avg_pool2d_forward(x, k, s, p, ceil_mode, count_include_pad)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference.avg_pool2d_forward(x, k, s, p, ceil_mode, count_include_pad), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(pool.avg_pool2d_backward(g, shape, k, s, p, ceil_mode, count_include_pad),
                               reference.avg_pool2d_backward(g, shape, k, s, p, ceil_mode, count_include_pad),
                               **TOL[dtype])


def naive_adaptive_max(x, out_h, out_w):
    """Loops over PyTorch's bins [floor(i·H/out), ceil((i+1)·H/out)); first maximum wins."""
    N, C, H, W = x.shape
    y, idx = np.zeros((N, C, out_h, out_w)), np.zeros((N, C, out_h, out_w), dtype=np.int64)
    for n, c, i, j in np.ndindex(N, C, out_h, out_w):
        rows = range(i * H // out_h, -(-(i + 1) * H // out_h))
        cols = range(j * W // out_w, -(-(j + 1) * W // out_w))
        best = max(((x[n, c, h, w], -(h * W + w)) for h in rows for w in cols))
        y[n, c, i, j], idx[n, c, i, j] = best[0], -best[1]
    return y, idx


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 10), st.integers(1, 10),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_adaptive_pools_match_reference(H, W, out_h, out_w, dtype, seed):
    rng = np.random.default_rng(seed)
    x = distinct((2, 3, H, W), rng, dtype)
    y = pool.adaptive_avg_pool2d_forward(x, (out_h, out_w))
    np.testing.assert_allclose(y, reference.adaptive_avg_pool2d_forward(x, (out_h, out_w)), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(pool.adaptive_avg_pool2d_backward(g, x.shape),
                               reference.adaptive_avg_pool2d_backward(g, x.shape), **TOL[dtype])
    y, idx = pool.adaptive_max_pool2d_forward(x, (out_h, out_w))
    y_ref, idx_ref = naive_adaptive_max(x, out_h, out_w)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)


def test_global_pools():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(F.adaptive_avg_pool2d(Tensor(x), 1).data, x.mean(axis=(2, 3), keepdims=True))
    np.testing.assert_array_equal(F.adaptive_max_pool2d(Tensor(x), 1).data, x.max(axis=(2, 3), keepdims=True))


# ---------------------------------------------------------------------------
# gradients through tinyconv.functional
# ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(pool_configs(), st.integers(0, 2**31))
def test_max_pool_gradcheck(config, seed):
    shape, k, s, p, d, ceil_mode = config
    x = Tensor(distinct(shape, np.random.default_rng(seed)), requires_grad=True)
    assert tinyconv.gradcheck(lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode), [x], fast_mode=True)


@settings(max_examples=25, deadline=None)
@given(pool_configs(dilated=False), st.booleans(), st.integers(0, 2**31))
def test_avg_pool_gradcheck(config, count_include_pad, seed):
    shape, k, s, p, _, ceil_mode = config
    x = Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
    assert tinyconv.gradcheck(lambda t: F.avg_pool2d(t, k, s, p, ceil_mode, count_include_pad), [x], fast_mode=True)


def test_full_jacobians_on_tiny_inputs():
    rng = np.random.default_rng(1)
    x = Tensor(distinct((1, 2, 5, 4), rng), requires_grad=True)
    cases = [lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True),
             lambda t: F.max_pool2d(t, (2, 3), (1, 2), (1, 0), dilation=(2, 1)),
             lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False),
             lambda t: F.avg_pool2d(t, 2),
             lambda t: F.adaptive_avg_pool2d(t, (3, 5)),
             lambda t: F.adaptive_max_pool2d(t, (2, 3))]
    for fn in cases:
        assert tinyconv.gradcheck(fn, [x])


def test_backward_is_reentrant_and_linear_in_grad_output():
    rng = np.random.default_rng(2)
    x = Tensor(distinct((2, 3, 6, 6), rng, np.float32), requires_grad=True)
    for fn in [lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1),
               lambda t: F.adaptive_avg_pool2d(t, 4), lambda t: F.adaptive_max_pool2d(t, 1)]:
        y = fn(x)
        g = rng.standard_normal(y.shape).astype(np.float32)
        x.grad = None
        y.backward(g)
        first = x.grad.copy()
        x.grad = None
        y.backward(g)
        np.testing.assert_array_equal(x.grad, first)
        assert x.grad.shape == x.shape and x.grad.dtype == np.float32
        x.grad = None
        fn(x).backward(np.zeros(y.shape, np.float32))
        assert not x.grad.any()


def test_return_indices_and_defaults():
    x = Tensor(distinct((1, 1, 4, 4), np.random.default_rng(3)))
    y, idx = F.max_pool2d(x, 2, return_indices=True)  # stride defaults to kernel_size
    assert isinstance(y, Tensor) and isinstance(idx, np.ndarray) and idx.dtype == np.int64
    assert y.shape == (1, 1, 2, 2)
    flat = x.data.reshape(-1)
    np.testing.assert_array_equal(flat[idx.reshape(-1)], y.data.reshape(-1))
    y, idx = F.adaptive_max_pool2d(x, 1, return_indices=True)
    assert idx.item() == np.argmax(flat)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda x: F.max_pool2d(x, 3, padding=2), "padding must be at most half of kernel_size"),
    (lambda x: F.avg_pool2d(x, 2, padding=(0, 2)), "padding must be at most half of kernel_size"),
    (lambda x: F.max_pool2d(x, 6), "larger than the input"),
    (lambda x: F.avg_pool2d(x, (1, 8), padding=(0, 1)), "larger than the input"),
    (lambda x: F.max_pool2d(x[:, :, :3, :3], 2, stride=1, padding=1, dilation=4), "reads only padding"),
    (lambda x: F.max_pool2d(x, 0), "kernel_size must be >= 1"),
    (lambda x: F.max_pool2d(x, 2, stride=0), "stride must be >= 1"),
    (lambda x: F.avg_pool2d(x, 2, padding=-1), "padding must be >= 0"),
    (lambda x: F.adaptive_avg_pool2d(x, 0), "output_size must be >= 1"),
    (lambda x: F.max_pool2d(x.reshape(3, 5, 5), 2), "input must be 4-D"),
])
def test_bad_arguments_raise_value_error(call, match):
    x = Tensor(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=match):
        call(x)


@pytest.mark.parametrize("call, match", [
    (lambda x: F.max_pool2d(x, 2.5), "kernel_size must be an int or a pair of ints"),
    (lambda x: F.avg_pool2d(x, 2, stride=(1, 2, 3)), "stride must be an int or a pair of ints"),
    (lambda x: F.adaptive_max_pool2d(x, "2"), "output_size must be an int or a pair"),
    (lambda x: F.max_pool2d([[1.0]], 2), "input must be a Tensor"),
])
def test_bad_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call(Tensor(np.zeros((1, 3, 5, 5))))


def test_small_work_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Below conv2d's _SERIAL_MULTIPLY_ADDS the kernel runs on one Numba thread (same answer); the count comes back."""
    seen = record_thread_counts(monkeypatch, pool, "_max_forward")
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6))
    previous = numba.get_num_threads()
    small = pool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)[0]
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # now every call counts as large
    large = pool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)[0]
    assert seen == [1, previous] and numba.get_num_threads() == previous
    np.testing.assert_array_equal(small, large)

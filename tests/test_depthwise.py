"""Depthwise convolution: kernels/depthwise.py against kernels/reference.py (its own naive loop and
conv2d with groups = C), gradients through tinyconv.functional.conv2d(groups=C_in)."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st

from conftest import record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, depthwise, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@st.composite
def depthwise_configs(draw, max_size=9):
    """(x shape, multiplier, kernel, stride, padding, dilation) with a non-empty output."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)),
             draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    mult = draw(st.integers(1, 3))
    assume(all(reference.conv_output_size(shape[2 + a], k[a], s[a], p[a], d[a]) >= 1 for a in range(2)))
    return shape, mult, k, s, p, d


def operands(shape, mult, k, rng, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[1] * mult, 1) + k).astype(dtype)
    b = rng.standard_normal(shape[1] * mult).astype(dtype)
    return x, w, b


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(depthwise_configs(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**31))
def test_matches_reference(config, dtype, with_bias, seed):
    shape, mult, k, s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = operands(shape, mult, k, rng, dtype)
    b = b if with_bias else None
    y = depthwise.depthwise_conv2d_forward(x, w, b, s, p, d)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference.depthwise_conv2d_forward(x, w, b, s, p, d), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = depthwise.depthwise_conv2d_backward(g, x, w, s, p, d)
    expected = reference.depthwise_conv2d_backward(g, x, w, s, p, d)
    for got, want, like in zip(grads, expected, (x, w, b if with_bias else np.zeros(w.shape[0], dtype))):
        assert got.shape == like.shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@settings(max_examples=25, deadline=None)
@given(depthwise_configs(), st.integers(0, 2**31))
def test_matches_grouped_conv2d_reference(config, seed):
    """Depthwise is conv2d with groups = C: an independent oracle for the forward and every gradient."""
    shape, mult, k, s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = operands(shape, mult, k, rng, np.float64)
    C = shape[1]
    y = depthwise.depthwise_conv2d_forward(x, w, b, s, p, d)
    np.testing.assert_allclose(y, reference.conv2d_forward(x, w, b, s, p, d, C), **TOL[np.float64])
    g = rng.standard_normal(y.shape)
    for got, want in zip(depthwise.depthwise_conv2d_backward(g, x, w, s, p, d),
                         reference.conv2d_backward(g, x, w, s, p, d, C)):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


def test_needs_returns_none_for_grads_not_requested():
    rng = np.random.default_rng(0)
    x, w, _ = operands((2, 3, 6, 5), 2, (3, 3), rng, np.float64)
    g = rng.standard_normal((2, 6, 6, 5))
    full = depthwise.depthwise_conv2d_backward(g, x, w, (1, 1), (1, 1), (1, 1))
    for needs in [(True, False, False), (False, True, False), (False, False, True), (False, False, False)]:
        grads = depthwise.depthwise_conv2d_backward(g, x, w, (1, 1), (1, 1), (1, 1), needs)
        for need, got, want in zip(needs, grads, full):
            if need:
                np.testing.assert_array_equal(got, want)
            else:
                assert got is None


def test_result_does_not_depend_on_the_thread_count():
    """The planes are split into one chunk per thread: 1 or 2 chunks must give identical bits."""
    rng = np.random.default_rng(1)
    x, w, b = operands((3, 5, 11, 7), 2, (3, 2), rng, np.float32)
    g = rng.standard_normal((3, 10, 6, 7)).astype(np.float32)
    args = ((2, 1), (1, 1), (1, 2))
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append((depthwise.depthwise_conv2d_forward(x, w, b, *args),)
                           + depthwise.depthwise_conv2d_backward(g, x, w, *args))
    finally:
        numba.set_num_threads(previous)
    for got, want in zip(results[-1], results[0]):
        np.testing.assert_array_equal(got, want)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 9, 3)).transpose(0, 3, 1, 2)  # (2, 3, 7, 9), not C-contiguous
    w = rng.standard_normal((3, 3, 1, 3)).transpose(0, 2, 1, 3)  # (3, 1, 3, 3)
    args = ((1, 2), (1, 0), (1, 1))
    np.testing.assert_allclose(depthwise.depthwise_conv2d_forward(x, w, None, *args),
                               reference.depthwise_conv2d_forward(x, w, None, *args), **TOL[np.float64])


# ---------------------------------------------------------------------------
# gradients through tinyconv.functional.conv2d (groups = C_in runs the depthwise kernel)
# ---------------------------------------------------------------------------
def dw_conv(s, p, d, C):
    return lambda x, w, b: F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=C)


@settings(max_examples=30, deadline=None)
@given(depthwise_configs(), st.integers(0, 2**31))
def test_gradcheck_fast(config, seed):
    shape, mult, k, s, p, d = config
    assume(shape[1] > 1)  # C_in = 1 is a dense conv, not depthwise
    rng = np.random.default_rng(seed)
    x, w, b = (Tensor(a, requires_grad=True) for a in operands(shape, mult, k, rng, np.float64))
    assert tinyconv.gradcheck(dw_conv(s, p, d, shape[1]), [x, w, b], fast_mode=True, seed=seed)


@pytest.mark.parametrize("shape, mult, k, s, p, d", [
    ((1, 2, 4, 3), 2, (2, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 2, 5, 4), 1, (3, 2), (2, 1), (0, 1), (1, 2)),
])
def test_gradcheck_full(shape, mult, k, s, p, d):
    rng = np.random.default_rng(3)
    x, w, b = (Tensor(a, requires_grad=True) for a in operands(shape, mult, k, rng, np.float64))
    assert tinyconv.gradcheck(dw_conv(s, p, d, shape[1]), [x, w, b])


def test_backward_is_reentrant_and_zero_grad_gives_zero():
    rng = np.random.default_rng(4)
    x, w, b = (Tensor(a, requires_grad=True) for a in operands((2, 3, 6, 6), 2, (3, 3), rng, np.float32))
    y = F.conv2d(x, w, b, stride=1, padding=1, groups=3)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    first = [t.grad.copy() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    y.backward(g)
    for t, want in zip((x, w, b), first):
        assert t.grad.shape == t.shape and t.grad.dtype == t.dtype
        np.testing.assert_array_equal(t.grad, want)
    for t in (x, w, b):
        t.grad = None
    F.conv2d(x, w, b, stride=1, padding=1, groups=3).backward(np.zeros(y.shape, np.float32))
    for t in (x, w, b):
        assert not t.grad.any()


def test_bad_depthwise_weight_is_rejected_before_the_kernel():
    x = Tensor(np.zeros((1, 4, 5, 5)))
    with pytest.raises(ValueError, match="weight"):
        F.conv2d(x, Tensor(np.zeros((4, 2, 3, 3))), groups=4)  # weight must be (C·M, 1, k_h, k_w)
    with pytest.raises(ValueError, match="C_out"):
        F.conv2d(x, Tensor(np.zeros((6, 1, 3, 3))), groups=4)  # C_out must be a multiple of C_in


def test_small_work_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Below conv2d's _SERIAL_MULTIPLY_ADDS the kernel runs on one Numba thread (same answer); the count comes back."""
    seen = record_thread_counts(monkeypatch, depthwise, "_forward_planes")
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6))
    w = np.random.default_rng(8).standard_normal((6, 1, 3, 3))
    previous = numba.get_num_threads()
    small = depthwise.depthwise_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1))
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # now every call counts as large
    large = depthwise.depthwise_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1))
    assert seen == [1, previous] and numba.get_num_threads() == previous
    np.testing.assert_array_equal(small, large)

"""Batch norm: kernels/batchnorm.py against kernels/reference.py, gradients and running statistics."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, batchnorm, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-5, atol=1e-5)}

shapes = st.one_of(st.tuples(st.integers(2, 6), st.integers(1, 4)),
                   st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(2, 5)))


def data(shape, rng, dtype=np.float64):
    """x whose channels have means in [-2, 2] and standard deviations in [0.5, 3], by construction.

    (A channel of nearly equal values has a huge inv_std; float32 then cannot
    resolve x - mean, and no implementation matches another to 1e-5.)
    """
    C = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    per_channel = (-1,) + (1,) * (len(shape) - 2)
    z = rng.standard_normal(shape)
    z = (z - z.mean(axis=axes, keepdims=True)) / z.std(axis=axes, keepdims=True)
    x = (z * rng.uniform(0.5, 3, C).reshape(per_channel) + rng.uniform(-2, 2, C).reshape(per_channel)).astype(dtype)
    weight, bias = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    return x, weight, bias


@settings(max_examples=40, deadline=None)
@given(shapes, st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_training_matches_reference(shape, affine, dtype, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = data(shape, rng, dtype)
    weight, bias = (weight, bias) if affine else (None, None)
    y, mean, inv_std = batchnorm.batch_norm_forward(x, weight, bias, 1e-5)
    y_ref, mean_ref, inv_std_ref = reference.batch_norm_forward(x, weight, bias, 1e-5)
    assert y.dtype == mean.dtype == inv_std.dtype == dtype
    for got, want in [(y, y_ref), (mean, mean_ref), (inv_std, inv_std_ref)]:
        np.testing.assert_allclose(got, want, **TOL[dtype])
    g = rng.standard_normal(shape).astype(dtype)
    needs = (True, affine, True)
    got = batchnorm.batch_norm_backward(g, x, weight, mean_ref, inv_std_ref, needs=needs)
    want = reference.batch_norm_backward(g, x, weight, mean_ref, inv_std_ref, needs=needs)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, **TOL[dtype])


@settings(max_examples=30, deadline=None)
@given(shapes, st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_inference_matches_reference_and_affine_backward(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = data(shape, rng, dtype)
    C = shape[1]
    running_mean, running_var = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    y = batchnorm.batch_norm_inference(x, running_mean, running_var, weight, bias, 1e-5)
    np.testing.assert_allclose(y, reference.batch_norm_inference(x, running_mean, running_var, weight, bias, 1e-5),
                               **TOL[dtype])
    g = rng.standard_normal(shape).astype(dtype)
    gi, gw, gb = batchnorm.batch_norm_inference_backward(g, x, running_mean, running_var, weight, 1e-5)
    axes = (0,) + tuple(range(2, len(shape)))  # every axis but the channel
    per_channel = (-1,) + (1,) * (len(shape) - 2)
    inv_std = 1 / np.sqrt(running_var.astype(np.float64) + 1e-5)
    x_hat = (x - running_mean.reshape(per_channel)) * inv_std.reshape(per_channel)
    np.testing.assert_allclose(gi, g * (weight * inv_std).reshape(per_channel), **TOL[dtype])
    np.testing.assert_allclose(gw, (g * x_hat).sum(axis=axes), **TOL[dtype])
    np.testing.assert_allclose(gb, g.sum(axis=axes), **TOL[dtype])


@settings(max_examples=20, deadline=None)
@given(shapes, st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_gradcheck_both_modes(shape, training, affine, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = (Tensor(a, requires_grad=True) for a in data(shape, rng))
    C = shape[1]
    running_mean, running_var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    inputs = [x, weight, bias] if affine else [x]

    def fn(t, w=None, b=None):
        # copies: a training step updates the running statistics, keep every call identical
        return F.batch_norm(t, running_mean.copy(), running_var.copy(), w, b, training=training)

    assert tinyconv.gradcheck(fn, inputs, fast_mode=True)


def test_full_jacobians_on_tiny_inputs():
    rng = np.random.default_rng(0)
    for shape in [(3, 2), (2, 2, 2, 2)]:
        x, weight, bias = (Tensor(a, requires_grad=True) for a in data(shape, rng))
        for training in (True, False):
            assert tinyconv.gradcheck(
                lambda t, w, b: F.batch_norm(t, np.zeros(shape[1]), np.ones(shape[1]), w, b, training=training),
                [x, weight, bias])


def test_backward_is_reentrant_and_zero_for_zero_grad():
    rng = np.random.default_rng(1)
    x, weight, bias = (Tensor(a, requires_grad=True) for a in data((4, 3, 3, 3), rng, np.float32))
    y = F.batch_norm(x, None, None, weight, bias, training=True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    first = [t.grad.copy() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    y.backward(g)
    for t, want in zip((x, weight, bias), first):
        np.testing.assert_array_equal(t.grad, want)
        assert t.grad.shape == t.shape and t.grad.dtype == np.float32
    for t in (x, weight, bias):
        t.grad = None
    F.batch_norm(x, None, None, weight, bias, training=True).backward(np.zeros(y.shape, np.float32))
    assert not any(t.grad.any() for t in (x, weight, bias))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_running_statistics_follow_the_closed_form(as_tensor):
    rng = np.random.default_rng(2)
    C, momentum, steps = 3, 0.3, 4
    mean0, var0 = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    running_mean = Tensor(mean0.copy()) if as_tensor else mean0.copy()
    running_var = Tensor(var0.copy()) if as_tensor else var0.copy()
    arrays = (running_mean.data, running_var.data) if as_tensor else (running_mean, running_var)
    batches = [rng.standard_normal((5, C, 2, 3)) * (t + 1) + t for t in range(steps)]
    for x in batches:
        F.batch_norm(Tensor(x), running_mean, running_var, training=True, momentum=momentum)
    # r_K = (1-m)^K·r_0 + Σ_t m·(1-m)^(K-1-t)·stat_t, with the unbiased variance (divide by M - 1)
    decay = [(1 - momentum) ** (steps - 1 - t) for t in range(steps)]
    want_mean = (1 - momentum) ** steps * mean0 + momentum * sum(
        d * x.mean(axis=(0, 2, 3)) for d, x in zip(decay, batches))
    want_var = (1 - momentum) ** steps * var0 + momentum * sum(
        d * x.var(axis=(0, 2, 3), ddof=1) for d, x in zip(decay, batches))
    np.testing.assert_allclose(arrays[0], want_mean, rtol=1e-12)  # updated in place, same objects
    np.testing.assert_allclose(arrays[1], want_var, rtol=1e-9)


def test_inference_uses_running_statistics_and_leaves_them_alone():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2))
    running_mean, running_var = np.array([1.0, -1.0]), np.array([4.0, 0.25])
    y = F.batch_norm(Tensor(x), running_mean, running_var, eps=0.0)
    np.testing.assert_allclose(y.data, (x - running_mean) / np.sqrt(running_var))
    assert running_mean.tolist() == [1.0, -1.0] and running_var.tolist() == [4.0, 0.25]


def test_one_value_per_channel_in_training_is_an_error():
    for shape in [(1, 3), (1, 3, 1, 1)]:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            F.batch_norm(Tensor(np.zeros(shape)), None, None, training=True)
    F.batch_norm(Tensor(np.zeros((1, 3))), np.zeros(3), np.ones(3), training=False)  # fine in inference
    F.batch_norm(Tensor(np.random.default_rng(0).standard_normal((1, 3, 2, 1))), None, None, training=True)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weight=np.ones(4)), ValueError, r"weight must have shape \(3,\)"),
    (dict(bias=np.ones((3, 1))), ValueError, r"bias must have shape \(3,\)"),
    (dict(running_mean=np.zeros(2)), ValueError, r"running_mean must have shape \(3,\)"),
    (dict(running_var=np.ones(5), training=True), ValueError, r"running_var must have shape \(3,\)"),
    (dict(running_mean=None), ValueError, "running_mean and running_var must be given when training=False"),
    (dict(running_mean=[0.0, 0.0, 0.0]), TypeError, "running_mean must be a float NumPy array or Tensor"),
    (dict(weight=np.ones(3, np.float32)), TypeError, "weight has dtype float32 but input has dtype float64"),
    (dict(momentum=1.5, training=True), ValueError, "momentum must be a number in"),
    (dict(eps=-1.0), ValueError, "eps must be a number >= 0"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(running_mean=np.zeros(3), running_var=np.ones(3))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        F.batch_norm(Tensor(np.zeros((2, 3, 2, 2))), **args)
    with pytest.raises(ValueError, match="input must be"):
        F.batch_norm(Tensor(np.zeros(3)), None, None, training=True)


def test_small_work_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Below conv2d's _SERIAL_MULTIPLY_ADDS the kernel runs on one Numba thread (same answer); the count comes back."""
    seen = record_thread_counts(monkeypatch, batchnorm, "_forward")
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6))
    previous = numba.get_num_threads()
    small = batchnorm.batch_norm_forward(x, None, None, 1e-5)[0]
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # now every call counts as large
    large = batchnorm.batch_norm_forward(x, None, None, 1e-5)[0]
    assert seen == [1, previous] and numba.get_num_threads() == previous
    np.testing.assert_array_equal(small, large)

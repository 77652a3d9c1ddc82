"""Channel shuffle: kernels/shuffle.py against kernels/reference.py, gradients through tinyconv.functional."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, reference, shuffle
from tinyconv import Tensor


@st.composite
def shuffle_cases(draw):
    groups, per_group = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(), (3,), (2, 3)]))
    return (draw(st.integers(1, 3)), groups * per_group) + spatial, groups


@settings(max_examples=30, deadline=None)
@given(shuffle_cases(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_matches_reference(case, dtype, seed):
    shape, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y = shuffle.channel_shuffle_forward(x, groups)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, reference.channel_shuffle_forward(x, groups))  # a permutation is exact
    g = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(shuffle.channel_shuffle_backward(g, groups),
                                  reference.channel_shuffle_backward(g, groups))
    np.testing.assert_array_equal(shuffle.channel_shuffle_backward(y, groups), x)  # the inverse permutation


def test_known_order():
    x = np.arange(8.0).reshape(1, 8, 1, 1)
    assert shuffle.channel_shuffle_forward(x, 4).ravel().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@settings(max_examples=10, deadline=None)
@given(shuffle_cases(), st.integers(0, 2**31))
def test_gradcheck(case, seed):
    shape, groups = case
    if len(shape) == 2:
        shape = shape + (2,)  # F.channel_shuffle takes (N, C, ...) with at least 3 axes, as torch
    x = Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
    assert tinyconv.gradcheck(lambda t: F.channel_shuffle(t, groups), [x], fast_mode=True)


def test_full_jacobian():
    x = Tensor(np.random.default_rng(0).standard_normal((1, 6, 2, 1)), requires_grad=True)
    assert tinyconv.gradcheck(lambda t: F.channel_shuffle(t, 3), [x])


@pytest.mark.parametrize("shape, groups, match", [
    ((1, 6, 2, 2), 4, "groups=4 must divide the number of channels, got 6"),
    ((1, 6, 2, 2), 0, "groups must be a positive int, got 0"),
    ((1, 6, 2, 2), 1.5, "groups must be a positive int"),
    ((2, 6), 2, "input must have at least 3 dimensions"),
])
def test_bad_arguments(shape, groups, match):
    with pytest.raises(ValueError, match=match):
        F.channel_shuffle(Tensor(np.zeros(shape)), groups)


def test_small_work_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Below conv2d's _SERIAL_MULTIPLY_ADDS the kernel runs on one Numba thread (same answer); the count comes back."""
    seen = record_thread_counts(monkeypatch, shuffle, "_shuffle")
    x = np.random.default_rng(7).standard_normal((2, 6, 4, 4))
    previous = numba.get_num_threads()
    small = shuffle.channel_shuffle_forward(x, 3)
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # now every call counts as large
    large = shuffle.channel_shuffle_forward(x, 3)
    assert seen == [1, previous] and numba.get_num_threads() == previous
    np.testing.assert_array_equal(small, large)

"""Activations, linear, dropout and losses of tinyconv.functional: gradients
against finite differences, values against closed forms, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyconv
import tinyconv.functional as F
from tinyconv import Tensor, gradcheck

SETTINGS = settings(max_examples=20, deadline=None)


def away_from_kinks(shape, seed, kinks=(0.0,), gap=0.05):
    """Values at least `gap` away from every kink, so finite differences are valid."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-8, 8, size=shape)
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] >= k, gap, -gap) * 2
    return Tensor(x, requires_grad=True)


@pytest.mark.parametrize("fn,kinks", [
    (F.relu, (0.0,)), (F.relu6, (0.0, 6.0)), (lambda x: F.leaky_relu(x, 0.2), (0.0,)),
    (lambda x: F.elu(x, 1.5), (0.0,)), (F.sigmoid, ()), (F.tanh, ()),
    (lambda x: F.softmax(x, dim=1), ()), (lambda x: F.log_softmax(x, dim=0), ()),
    (lambda x: F.normalize(x, dim=1), ()),
])
def test_activation_gradients(fn, kinks):
    assert gradcheck(fn, [away_from_kinks((3, 4), 0, kinks)])


def test_activation_values():
    x = Tensor([-2.0, 0.5, 7.0])
    np.testing.assert_allclose(F.relu(x).data, [0, 0.5, 7])
    np.testing.assert_allclose(F.relu6(x).data, [0, 0.5, 6])
    np.testing.assert_allclose(F.leaky_relu(x, 0.1).data, [-0.2, 0.5, 7])
    np.testing.assert_allclose(F.elu(x).data, [np.expm1(-2), 0.5, 7], rtol=1e-6)
    np.testing.assert_allclose(F.sigmoid(x).data, 1 / (1 + np.exp(-x.data)), rtol=1e-6)
    s = F.softmax(Tensor(np.array([[1000.0, 1000.0]])))  # no overflow
    np.testing.assert_allclose(s.data, [[0.5, 0.5]])
    n = F.normalize(Tensor(np.array([[3.0, 4.0], [0.0, 0.0]])))
    np.testing.assert_allclose(n.data, [[0.6, 0.8], [0, 0]])


def test_linear():
    x, w, b = away_from_kinks((5, 3), 1), away_from_kinks((4, 3), 2), away_from_kinks((4,), 3)
    assert gradcheck(F.linear, [x, w, b])
    np.testing.assert_allclose(F.linear(x, w, b).data, x.data @ w.data.T + b.data)
    with pytest.raises(ValueError, match="in_features = 3"):
        F.linear(Tensor(np.ones((2, 4))), w)
    with pytest.raises(ValueError, match="bias"):
        F.linear(x, w, Tensor(np.ones(3)))


def test_dropout_is_seeded_scaled_and_off_in_eval():
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    a = F.dropout(x, 0.3, generator=np.random.default_rng(7))
    b = F.dropout(x, 0.3, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data)
    assert set(np.unique(a.data)) == {0.0, 1 / 0.7}
    assert abs((a.data == 0).mean() - 0.3) < 0.02
    a.sum().backward()
    np.testing.assert_array_equal(x.grad, a.data)  # gradient flows through the kept elements only
    assert F.dropout(x, 0.3, training=False) is x
    with pytest.raises(ValueError, match="p must be"):
        F.dropout(x, 1.5)


@SETTINGS
@given(st.integers(1, 5), st.integers(2, 6), st.sampled_from(["mean", "sum", "none"]),
       st.sampled_from([0.0, 0.1]))
def test_cross_entropy(n, c, reduction, smoothing):
    rng = np.random.default_rng(n * 10 + c)
    x = Tensor(rng.normal(size=(n, c)), requires_grad=True)
    t = rng.integers(0, c, size=n)
    assert gradcheck(lambda z: F.cross_entropy(z, t, reduction=reduction, label_smoothing=smoothing), [x])
    # closed form
    logp = x.data - np.log(np.exp(x.data).sum(1, keepdims=True))
    q = np.full((n, c), smoothing / c)
    q[np.arange(n), t] += 1 - smoothing
    per = -(q * logp).sum(1)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(F.cross_entropy(x, Tensor(t), reduction, smoothing).data, expected, rtol=1e-10)


def test_cross_entropy_equals_nll_of_log_softmax():
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(4, 3)), requires_grad=True)
    t = np.array([0, 2, 1, 2])
    np.testing.assert_allclose(F.cross_entropy(x, t).data, F.nll_loss(F.log_softmax(x), t).data)
    assert gradcheck(lambda z: F.nll_loss(F.log_softmax(z), t, reduction="sum"), [x])


def test_loss_bad_input():
    x = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        F.cross_entropy(x, np.array([0, 1, 4]))
    with pytest.raises(TypeError, match="integer class"):
        F.cross_entropy(x, np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, np.array([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="2-D"):
        F.cross_entropy(Tensor(np.zeros(3)), np.array([0]))
    with pytest.raises(ValueError, match="target must have"):
        F.mse_loss(x, np.zeros((3, 3)))
    with pytest.raises(TypeError, match="must be a Tensor"):
        F.relu([1.0, 2.0])


def test_mse_loss():
    x = away_from_kinks((3, 2), 4)
    y = np.random.default_rng(5).normal(size=(3, 2))
    assert gradcheck(lambda z: F.mse_loss(z, y), [x])
    np.testing.assert_allclose(F.mse_loss(x, y).data, ((x.data - y) ** 2).mean())


def test_manual_seed_makes_dropout_reproducible():
    x = Tensor(np.ones(100))
    tinyconv.manual_seed(3)
    a = F.dropout(x).data
    tinyconv.manual_seed(3)
    np.testing.assert_array_equal(a, F.dropout(x).data)
    assert tinyconv.Tensor is Tensor


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_match_reference(dtype):
    from kernels import activation, reference
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 6)).astype(dtype)
    x[0, 0, 0, :4] = [np.nan, 0.0, -0.0, -np.inf]
    g = rng.normal(size=x.shape).astype(dtype)
    g[0, 0, 1, 0] = np.inf
    x[0, 0, 1, 0] = -1.0
    y = activation.relu_forward(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, reference.relu_forward(x))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    gi = activation.relu_backward(g, x)
    assert gi.dtype == x.dtype
    np.testing.assert_array_equal(gi, reference.relu_backward(g, x))
    assert gi[0, 0, 1, 0] == 0  # an infinite gradient where x <= 0 gives 0, not NaN
    np.testing.assert_array_equal(activation.relu_backward(g, y), gi)  # the output gives the same mask
    xt = x.transpose(0, 2, 1, 3)  # a non-contiguous input
    np.testing.assert_array_equal(activation.relu_forward(xt), reference.relu_forward(np.ascontiguousarray(xt)))


def test_relu_through_the_tape_matches_numpy():
    x = Tensor(np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32), requires_grad=True)
    y = F.relu(x)
    g = np.random.default_rng(2).normal(size=y.shape)
    y.backward(g)
    np.testing.assert_array_equal(y.data, np.maximum(x.data, 0))
    np.testing.assert_array_equal(x.grad, (g * (x.data > 0)).astype(np.float32))

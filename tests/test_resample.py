"""Resampling and reshaping: interpolate, pad, flatten, dropout2d (naive references written here)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyconv
import tinyconv.functional as F
from tinyconv import Tensor


# ---------------------------------------------------------------------------
# interpolate
# ---------------------------------------------------------------------------
def naive_source(dst, in_size, out_size, scale_factor, mode, align_corners):
    """PyTorch's source coordinate of output position `dst` along one axis."""
    scale = 1.0 / scale_factor if scale_factor else in_size / out_size
    if mode == "nearest":  # computed in float32 by PyTorch
        return min(int(np.floor(np.float32(dst) * np.float32(scale))), in_size - 1)
    if align_corners:
        return dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return max((dst + 0.5) * scale - 0.5, 0.0)


def naive_interpolate(x, out_h, out_w, mode, align_corners, factors=(None, None)):
    """One output pixel at a time: nearest copies, bilinear blends the 4 neighbours."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, out_h, out_w))
    for n, c, i, j in np.ndindex(N, C, out_h, out_w):
        h = naive_source(i, H, out_h, factors[0], mode, align_corners)
        w = naive_source(j, W, out_w, factors[1], mode, align_corners)
        if mode == "nearest":
            y[n, c, i, j] = x[n, c, h, w]
            continue
        h0, w0 = int(h), int(w)
        h1, w1 = min(h0 + 1, H - 1), min(w0 + 1, W - 1)
        a, b = h - h0, w - w0
        y[n, c, i, j] = ((1 - a) * (1 - b) * x[n, c, h0, w0] + (1 - a) * b * x[n, c, h0, w1]
                         + a * (1 - b) * x[n, c, h1, w0] + a * b * x[n, c, h1, w1])
    return y


modes = st.sampled_from([("nearest", None), ("bilinear", False), ("bilinear", True)])


@st.composite
def resize_cases(draw):
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.booleans()):
        return (H, W), dict(size=(draw(st.integers(1, 9)), draw(st.integers(1, 9))))
    factors = (draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])), draw(st.sampled_from([0.7, 1.0, 2.0, 3.0])))
    if min(int(H * factors[0]), int(W * factors[1])) < 1:
        factors = (2.0, 2.0)
    return (H, W), dict(scale_factor=factors)


@settings(max_examples=40, deadline=None)
@given(resize_cases(), modes, st.integers(0, 2**31))
def test_interpolate_matches_naive_loops_and_its_adjoint(case, mode, seed):
    (H, W), kwargs = case
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((2, 2, H, W)), requires_grad=True)
    y = F.interpolate(x, mode=mode[0], align_corners=mode[1], **kwargs)
    factors = kwargs.get("scale_factor", (None, None))
    want = naive_interpolate(x.data, *y.shape[2:], mode[0], mode[1], factors)
    np.testing.assert_allclose(y.data, want, rtol=1e-12, atol=1e-12)
    # backward = the exact adjoint: <A·x, g> = <x, Aᵀ·g> for every g
    g = rng.standard_normal(y.shape)
    y.backward(g)
    assert np.isclose((y.data * g).sum(), (x.data * x.grad).sum(), rtol=1e-12, atol=1e-12)
    assert tinyconv.gradcheck(lambda t: F.interpolate(t, mode=mode[0], align_corners=mode[1], **kwargs), [x],
                              fast_mode=True)


def test_interpolate_pinned_to_pytorch_values():
    """Values printed by torch 2.13 for x = arange(6).reshape(1, 1, 2, 3)."""
    x = Tensor(np.arange(6.0).reshape(1, 1, 2, 3))
    assert F.interpolate(x, scale_factor=2).data[0, 0].tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2],
                                                                    [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]
    assert F.interpolate(x, scale_factor=1.5).data[0, 0].tolist() == [[0, 0, 1, 2], [0, 0, 1, 2], [3, 3, 4, 5]]
    np.testing.assert_allclose(F.interpolate(x, size=(3, 4), mode="bilinear").data[0, 0],
                               [[0.0, 0.625, 1.375, 2.0], [1.5, 2.125, 2.875, 3.5], [3.0, 3.625, 4.375, 5.0]])
    np.testing.assert_allclose(F.interpolate(x, size=(3, 4), mode="bilinear", align_corners=True).data[0, 0],
                               [[0, 2 / 3, 4 / 3, 2], [1.5, 13 / 6, 17 / 6, 3.5], [3, 11 / 3, 13 / 3, 5]])
    np.testing.assert_allclose(F.interpolate(x, scale_factor=(1.5, 0.7), mode="bilinear").data[0, 0],
                               [[0.2142857313, 1.6428571939], [1.7142857313, 3.1428570747],
                                [3.2142858505, 4.6428570747]], rtol=1e-6)


def test_interpolate_float32_and_full_jacobian():
    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, 3, 2)).astype(np.float32), requires_grad=True)
    y = F.interpolate(x, scale_factor=2, mode="bilinear")
    assert y.dtype == np.float32 and y.shape == (1, 2, 6, 4)
    y.backward(np.ones(y.shape, np.float32))
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.sum(), y.size, rtol=1e-6)  # the weights of every output sum to 1
    assert tinyconv.gradcheck(lambda t: F.interpolate(t, size=(4, 3), mode="bilinear", align_corners=True), [x])


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "give exactly one of size and scale_factor"),
    (dict(size=4, scale_factor=2), "give exactly one of size and scale_factor"),
    (dict(size=4, mode="bicubic"), "mode must be 'nearest' or 'bilinear'"),
    (dict(size=4, align_corners=True), "align_corners can only be set with mode='bilinear'"),
    (dict(scale_factor=-1.0), "scale_factor must be a positive number"),
    (dict(scale_factor=0.1), "shrinks the input"),
    (dict(size=0), "size must be >= 1"),
])
def test_interpolate_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.interpolate(Tensor(np.zeros((1, 1, 3, 3))), **kwargs)


# ---------------------------------------------------------------------------
# pad
# ---------------------------------------------------------------------------
def naive_pad(x, pad, value):
    """Every output element asks: which input element am I, if any? (torch order: last axis first)."""
    pairs = len(pad) // 2
    amounts = [(0, 0)] * (x.ndim - pairs) + [(pad[2 * i], pad[2 * i + 1]) for i in reversed(range(pairs))]
    out_shape = tuple(n + b + a for n, (b, a) in zip(x.shape, amounts))
    y = np.zeros(out_shape)
    for index in np.ndindex(*out_shape):
        source = tuple(i - b for i, (b, _) in zip(index, amounts))
        inside = all(0 <= s < n for s, n in zip(source, x.shape))
        y[index] = x[source] if inside else value
    return y


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1, 2), min_size=2, max_size=6).filter(lambda p: len(p) % 2 == 0), st.integers(0, 2**31))
def test_pad_matches_naive_loops(pad, seed):
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((2, 3, 3, 4)), requires_grad=True)
    y = F.pad(x, tuple(pad), value=0.5)
    np.testing.assert_array_equal(y.data, naive_pad(x.data, pad, 0.5))
    g = rng.standard_normal(y.shape)
    y.backward(g)
    assert np.isclose((g * (y.data - naive_pad(np.zeros(x.shape), pad, 0.5))).sum(), (x.grad * x.data).sum())
    assert tinyconv.gradcheck(lambda t: F.pad(t, tuple(pad), value=0.5), [x], fast_mode=True)


def test_pad_order_and_errors():
    x = Tensor(np.ones((1, 1, 2, 3)))
    assert F.pad(x, (1, 2)).shape == (1, 1, 2, 6)  # last axis first
    assert F.pad(x, (0, 0, 3, 0)).shape == (1, 1, 5, 3)
    with pytest.raises(ValueError, match="pad must be a tuple of an even number"):
        F.pad(x, (1, 2, 3))
    with pytest.raises(ValueError, match="pad must be a tuple of an even number"):
        F.pad(x, (1, 1) * 5)
    with pytest.raises(ValueError, match="mode must be 'constant'"):
        F.pad(x, (1, 1), mode="reflect")
    with pytest.raises(ValueError, match="to a negative size"):
        F.pad(x, (-2, -2))


# ---------------------------------------------------------------------------
# flatten and dropout2d
# ---------------------------------------------------------------------------
def test_flatten():
    x = Tensor(np.arange(24.0).reshape(2, 3, 2, 2), requires_grad=True)
    assert F.flatten(x).shape == (24,)
    assert F.flatten(x, 1).shape == (2, 12)
    assert F.flatten(x, 1, 2).shape == (2, 6, 2)
    assert F.flatten(x, -2).shape == (2, 3, 4)
    y = F.flatten(x, 1)
    y.backward(np.arange(24.0).reshape(2, 12))
    np.testing.assert_array_equal(x.grad, x.data)
    with pytest.raises(ValueError, match="start_dim must be an int in"):
        F.flatten(x, 4)
    with pytest.raises(ValueError, match="comes after end_dim"):
        F.flatten(x, 2, 1)


def test_dropout2d_zeroes_whole_channels():
    x = Tensor(np.random.default_rng(0).uniform(1, 2, (8, 16, 3, 3)), requires_grad=True)
    y = F.dropout2d(x, p=0.25, generator=np.random.default_rng(5))
    kept = (y.data != 0).all(axis=(2, 3))
    dropped = (y.data == 0).all(axis=(2, 3))
    assert (kept | dropped).all() and 0 < dropped.sum() < dropped.size  # each channel is all or nothing
    np.testing.assert_allclose(y.data[kept], (x.data / 0.75)[kept])
    y.backward(np.ones(y.shape))
    np.testing.assert_allclose(x.grad, np.broadcast_to(np.where(kept[:, :, None, None], 1 / 0.75, 0.0), x.shape))
    again = F.dropout2d(x, p=0.25, generator=np.random.default_rng(5))
    np.testing.assert_array_equal(again.data, y.data)  # same generator state, same mask
    assert F.dropout2d(x, p=0.5, training=False) is x
    assert not F.dropout2d(x, p=1.0).data.any()
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        F.dropout2d(x, p=1.5)
    with pytest.raises(ValueError, match="input must be 4-D"):
        F.dropout2d(Tensor(np.ones((2, 3))), p=0.5)


def test_dropout2d_uses_the_global_generator():
    x = Tensor(np.ones((4, 32, 1, 1)))
    tinyconv.random.manual_seed(7)
    first = F.dropout2d(x).data
    tinyconv.random.manual_seed(7)
    np.testing.assert_array_equal(F.dropout2d(x).data, first)

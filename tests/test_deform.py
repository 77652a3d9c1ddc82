"""Deformable convolution: kernels/deform.py against kernels/reference.py, the conv2d oracles
(zero offset, integer offset, mask of ones), gradients through tinyconv.functional.deform_conv2d,
and the argument checks."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st

from conftest import record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, deform, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@st.composite
def deform_configs(draw, max_size=7):
    """Shapes and conv arguments: weight groups G, offset groups OG, any kernel/stride/padding/dilation."""
    G, OG = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    C_in = G * OG * draw(st.integers(1, 2))
    C_out = G * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    N, H, W = draw(st.integers(1, 2)), draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    out = tuple(reference.conv_output_size((H, W)[a], k[a], s[a], p[a], d[a]) for a in range(2))
    assume(min(out) >= 1)
    return dict(N=N, C_in=C_in, C_out=C_out, G=G, OG=OG, H=H, W=W, k=k, s=s, p=p, d=d, out=out)


def operands(cfg, rng, dtype=np.float64, with_mask=True, offsets=None):
    """x, offset, weight, bias, mask; offsets default to uniform(-2, 2): samples land anywhere, outside too."""
    N, K = cfg["N"], cfg["k"][0] * cfg["k"][1]
    x = rng.standard_normal((N, cfg["C_in"], cfg["H"], cfg["W"]))
    off_shape = (N, 2 * cfg["OG"] * K) + cfg["out"]
    offset = rng.uniform(-2, 2, off_shape) if offsets is None else offsets(off_shape)
    w = rng.standard_normal((cfg["C_out"], cfg["C_in"] // cfg["G"]) + cfg["k"])
    b = rng.standard_normal(cfg["C_out"])
    mask = rng.uniform(0.2, 1.0, (N, cfg["OG"] * K) + cfg["out"]) if with_mask else None
    return [None if a is None else a.astype(dtype) for a in (x, offset, w, b, mask)]


def conv_args(cfg):
    return cfg["s"], cfg["p"], cfg["d"]


def fractional_offsets(rng):
    """Offsets whose fractional part lies in [0.1, 0.9]: the sample points (grid + offset) keep 0.1 away from
    every integer, where bilinear sampling has its kinks (the -1 and H borders included; STYLE.md 10)."""
    return lambda shape: rng.integers(-2, 2, shape) + rng.uniform(0.1, 0.9, shape)


# ---------------------------------------------------------------------------
# the bilinear helpers against the reference's
# ---------------------------------------------------------------------------
def test_bilinear_helpers_match_reference():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((4, 5))
    points = list(rng.uniform(-1.5, 5.5, (200, 2))) + [(-1, 0), (0, -1), (4, 2), (2, 5), (3, 4), (0, 0), (-0.5, 4.5)]
    for y, x in points:
        assert deform.bilinear(img, y, x) == pytest.approx(reference.bilinear(img, y, x), abs=1e-14)
        assert deform.bilinear_grad_yx(img, y, x) == pytest.approx(reference.bilinear_grad_yx(img, y, x), abs=1e-14)
        got, want = np.zeros_like(img), np.zeros_like(img)
        deform.bilinear_scatter(got, y, x, 0.7)
        reference.bilinear_scatter(want, y, x, 0.7)
        np.testing.assert_allclose(got, want, atol=1e-15)


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(deform_configs(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_matches_reference(cfg, dtype, with_mask, with_bias, seed):
    rng = np.random.default_rng(seed)
    x, offset, w, b, mask = operands(cfg, rng, dtype, with_mask)
    b = b if with_bias else None
    y = deform.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), mask)
    assert y.dtype == dtype and y.shape == (cfg["N"], cfg["C_out"]) + cfg["out"]
    np.testing.assert_allclose(y, reference.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), mask),
                               **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    got = deform.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask)
    want = reference.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask)
    for grad, ref, like in zip(got, want, (x, offset, w, g[0, :, 0, 0], mask)):
        if like is None:
            assert grad is None and ref is None  # no grad_mask in v1
            continue
        assert grad.shape == like.shape and grad.dtype == dtype
        np.testing.assert_allclose(grad, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C_in, G, OG", [(37, 1, 1), (48, 2, 3), (64, 4, 2)])
def test_many_channels_match_reference(C_in, G, OG, dtype):
    """The fast loops run along the channels (vectorized in blocks of 16 or more): channel counts beyond the
    hypothesis draws, not a multiple of 16, and weight groups that cut offset groups in two (48: G=2, OG=3)."""
    cfg = dict(N=2, C_in=C_in, C_out=2 * G, G=G, OG=OG, H=5, W=4, k=(3, 2), s=(1, 1), p=(1, 1), d=(1, 1),
               out=(5, 5))
    rng = np.random.default_rng(C_in)
    x, offset, w, b, mask = operands(cfg, rng, dtype)
    np.testing.assert_allclose(deform.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), mask),
                               reference.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), mask), **TOL[dtype])
    g = rng.standard_normal((cfg["N"], cfg["C_out"]) + cfg["out"]).astype(dtype)
    got = deform.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask)
    want = reference.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask)
    for grad, ref in zip(got, want):
        np.testing.assert_allclose(grad, ref, **TOL[dtype])


def test_needs_returns_none_for_grads_not_requested():
    cfg = dict(N=2, C_in=4, C_out=4, G=2, OG=2, H=6, W=5, k=(3, 2), s=(1, 1), p=(1, 0), d=(1, 1), out=(6, 4))
    rng = np.random.default_rng(1)
    x, offset, w, _, mask = operands(cfg, rng)
    g = rng.standard_normal((2, 4, 6, 4))
    full = deform.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask)
    for i in range(5):
        needs = tuple(j == i for j in range(5))
        grads = deform.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask, needs)
        for j, (got, want) in enumerate(zip(grads, full)):
            if j == i:
                np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
            else:
                assert got is None


def test_points_outside_the_image_read_and_write_nothing():
    # every sampling point far outside: torchvision's answer is 0 whatever the image and the gradient hold,
    # so an inf pixel or an inf gradient must not leak through the zero bilinear weights (0 * inf = NaN)
    cfg = dict(N=2, C_in=4, C_out=4, G=2, OG=2, H=6, W=5, k=(3, 2), s=(1, 1), p=(1, 0), d=(1, 1), out=(6, 4))
    rng = np.random.default_rng(2)
    x, offset, w, _, mask = operands(cfg, rng)
    x[:, :, 0, 0] = x[:, :, -1, -1] = np.inf
    offset = np.full_like(offset, 100.0)
    y = deform.deform_conv2d_forward(x, offset, w, None, *conv_args(cfg), mask)
    np.testing.assert_array_equal(y, np.zeros_like(y))
    g = np.full((2, 4, 6, 4), np.inf)
    grad_input = deform.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask,
                                               (True, False, False, False, False))[0]
    np.testing.assert_array_equal(grad_input, np.zeros_like(x))


SPLIT_CFG = dict(N=5, C_in=4, C_out=4, G=2, OG=2, H=5, W=6, k=(2, 3), s=(1, 1), p=(1, 1), d=(1, 1), out=(6, 6))


def _forward_and_grads(cfg, dtype, seed):
    """y and all five gradients of a v2 deformable conv with bias, in dtype."""
    rng = np.random.default_rng(seed)
    x, offset, w, b, mask = operands(cfg, rng, dtype)
    g = rng.standard_normal((cfg["N"], cfg["C_out"]) + cfg["out"]).astype(dtype)
    return [deform.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), mask)] + \
        list(deform.deform_conv2d_backward(g, x, offset, w, *conv_args(cfg), mask))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_give_identical_results(monkeypatch, dtype):
    """The samples are cut into NUMBA_NUM_THREADS blocks whatever set_num_threads says: bit-identical answers."""
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # really use the threads on this small case
    previous = tinyconv.get_num_threads()
    try:
        runs = []
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            tinyconv.set_num_threads(threads)
            runs.append(_forward_and_grads(SPLIT_CFG, dtype, 3))
    finally:
        tinyconv.set_num_threads(previous)
    for got, want in zip(runs[-1], runs[0]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("blocks", [1, 2, 3, 10])
def test_results_do_not_depend_on_the_split_into_blocks(monkeypatch, blocks):
    """Any number of sample blocks: y, grad_input, grad_offset, grad_bias and grad_mask bit for bit, grad_weight
    (summed per block, then over blocks) up to rounding, all matching the reference."""
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)
    whole = _forward_and_grads(SPLIT_CFG, np.float64, 4)
    monkeypatch.setattr(deform, "_blocks", lambda items: min(items, blocks))
    split = _forward_and_grads(SPLIT_CFG, np.float64, 4)
    for k in (0, 1, 2, 4, 5):
        np.testing.assert_array_equal(split[k], whole[k])
    np.testing.assert_allclose(split[3], whole[3], rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(4)
    x, offset, w, b, mask = operands(SPLIT_CFG, rng)
    g = rng.standard_normal((SPLIT_CFG["N"], SPLIT_CFG["C_out"]) + SPLIT_CFG["out"])
    want = [reference.deform_conv2d_forward(x, offset, w, b, *conv_args(SPLIT_CFG), mask)] + \
        list(reference.deform_conv2d_backward(g, x, offset, w, *conv_args(SPLIT_CFG), mask))
    for got, ref in zip(split, want):
        np.testing.assert_allclose(got, ref, **TOL[np.float64])


def test_grad_weight_accumulators_capped_by_memory(monkeypatch):
    """With _PARTIAL_BYTES below one weight's size, grad_weight uses a single accumulator: same answer."""
    rng = np.random.default_rng(5)
    x, offset, w, b, mask = operands(SPLIT_CFG, rng)
    g = rng.standard_normal((SPLIT_CFG["N"], SPLIT_CFG["C_out"]) + SPLIT_CFG["out"])
    needs = (False, False, True, False, False)
    want = reference.deform_conv2d_backward(g, x, offset, w, *conv_args(SPLIT_CFG), mask, needs)[2]
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(deform, "_PARTIAL_BYTES", 1)
    got = deform.deform_conv2d_backward(g, x, offset, w, *conv_args(SPLIT_CFG), mask, needs)[2]
    np.testing.assert_allclose(got, want, **TOL[np.float64])


def test_wrong_grad_output_shape_is_rejected():
    rng = np.random.default_rng(6)
    x, offset, w, b, mask = operands(SPLIT_CFG, rng)
    g = np.ones((SPLIT_CFG["N"] + 1, SPLIT_CFG["C_out"]) + SPLIT_CFG["out"])
    with pytest.raises(ValueError, match="grad_output"):
        deform.deform_conv2d_backward(g, x, offset, w, *conv_args(SPLIT_CFG), mask)


# ---------------------------------------------------------------------------
# oracles: plain conv2d
# ---------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(deform_configs(), st.integers(0, 2**31))
def test_zero_offset_is_conv2d(cfg, seed):
    rng = np.random.default_rng(seed)
    x, offset, w, b, _ = operands(cfg, rng, offsets=np.zeros)
    np.testing.assert_allclose(deform.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), None),
                               reference.conv2d_forward(x, w, b, *conv_args(cfg), cfg["G"]), **TOL[np.float64])


@settings(max_examples=20, deadline=None)
@given(deform_configs(), st.integers(-2, 2), st.integers(-2, 2), st.integers(0, 2**31))
def test_integer_offset_is_shifted_conv2d(cfg, dy, dx, seed):
    """Offset (dy, dx) on every tap reads the zero-padded input at (h + dy, w + dx): an unpadded conv2d of
    the padded input shifted by (-dy, -dx) (samples shifted in from beyond the padding read 0 too)."""
    rng = np.random.default_rng(seed)
    x, offset, w, b, _ = operands(cfg, rng, offsets=np.zeros)
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    (pad_h, pad_w), H, W = cfg["p"], cfg["H"], cfg["W"]
    big = np.pad(x, ((0, 0), (0, 0), (pad_h + 2, pad_h + 2), (pad_w + 2, pad_w + 2)))
    # shifted[h', w'] = x_padded[h' + dy, w' + dx] over the padded extent (H + 2·pad_h, W + 2·pad_w)
    shifted = big[:, :, 2 + dy:2 + dy + H + 2 * pad_h, 2 + dx:2 + dx + W + 2 * pad_w]
    np.testing.assert_allclose(deform.deform_conv2d_forward(x, offset, w, b, *conv_args(cfg), None),
                               reference.conv2d_forward(shifted, w, b, cfg["s"], (0, 0), cfg["d"], cfg["G"]),
                               **TOL[np.float64])


@settings(max_examples=20, deadline=None)
@given(deform_configs(), st.integers(0, 2**31))
def test_mask_of_ones_is_v1_and_mask_scales(cfg, seed):
    rng = np.random.default_rng(seed)
    x, offset, w, _, mask = operands(cfg, rng)
    v1 = deform.deform_conv2d_forward(x, offset, w, None, *conv_args(cfg), None)
    np.testing.assert_allclose(deform.deform_conv2d_forward(x, offset, w, None, *conv_args(cfg), np.ones_like(mask)),
                               v1, **TOL[np.float64])
    np.testing.assert_allclose(deform.deform_conv2d_forward(x, offset, w, None, *conv_args(cfg),
                                                            np.full_like(mask, 0.5)), 0.5 * v1, **TOL[np.float64])


# ---------------------------------------------------------------------------
# gradients through tinyconv.functional.deform_conv2d
# ---------------------------------------------------------------------------
def deform_fn(cfg, with_mask):
    s, p, d = conv_args(cfg)
    if with_mask:
        return lambda x, offset, w, b, mask: F.deform_conv2d(x, offset, w, b, s, p, d, mask)
    return lambda x, offset, w, b: F.deform_conv2d(x, offset, w, b, s, p, d)


@settings(max_examples=30, deadline=None)
@given(deform_configs(), st.booleans(), st.integers(0, 2**31))
def test_gradcheck_fast(cfg, with_mask, seed):
    rng = np.random.default_rng(seed)
    arrays = operands(cfg, rng, with_mask=with_mask, offsets=fractional_offsets(rng))
    inputs = [Tensor(a, requires_grad=True) for a in arrays if a is not None]
    assert tinyconv.gradcheck(deform_fn(cfg, with_mask), inputs, fast_mode=True, seed=seed)


@pytest.mark.parametrize("cfg", [
    dict(N=1, C_in=2, C_out=2, G=2, OG=2, H=4, W=3, k=(2, 2), s=(1, 1), p=(1, 0), d=(1, 1), out=(5, 2)),
    dict(N=2, C_in=2, C_out=1, G=1, OG=1, H=3, W=4, k=(1, 2), s=(2, 1), p=(0, 1), d=(1, 2), out=(2, 4)),
])
def test_gradcheck_full(cfg):
    rng = np.random.default_rng(5)
    arrays = operands(cfg, rng, offsets=fractional_offsets(rng))
    assert tinyconv.gradcheck(deform_fn(cfg, True), [Tensor(a, requires_grad=True) for a in arrays])


def test_backward_is_reentrant_and_zero_grad_gives_zero():
    cfg = dict(N=2, C_in=2, C_out=3, G=1, OG=2, H=5, W=5, k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), out=(5, 5))
    rng = np.random.default_rng(6)
    tensors = [Tensor(a, requires_grad=True) for a in operands(cfg, rng, np.float32)]
    y = deform_fn(cfg, True)(*tensors)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    first = [t.grad.copy() for t in tensors]
    for t in tensors:
        t.grad = None
    y.backward(g)
    for t, want in zip(tensors, first):
        assert t.grad.shape == t.shape and t.grad.dtype == t.dtype
        np.testing.assert_array_equal(t.grad, want)
    for t in tensors:
        t.grad = None
    deform_fn(cfg, True)(*tensors).backward(np.zeros(y.shape, np.float32))
    for t in tensors:
        assert not t.grad.any()


def test_v1_has_no_mask_parent():
    cfg = dict(N=1, C_in=2, C_out=2, G=1, OG=1, H=4, W=4, k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), out=(4, 4))
    x, offset, w, _, _ = [Tensor(a, requires_grad=True) if a is not None else None
                          for a in operands(cfg, np.random.default_rng(7), with_mask=False)]
    F.deform_conv2d(x, offset, w, padding=1).sum().backward()
    assert all(t.grad is not None for t in (x, offset, w))


# ---------------------------------------------------------------------------
# bad input: ValueError/TypeError from functional, before any kernel runs
# ---------------------------------------------------------------------------
def bad_call(**changes):
    """deform_conv2d on a valid v2 problem (C_in 4, k 3x3, out 5x5) with some arguments replaced."""
    args = dict(input=np.zeros((2, 4, 5, 5)), offset=np.zeros((2, 2 * 2 * 9, 5, 5)),
                weight=np.zeros((6, 2, 3, 3)), bias=np.zeros(6), stride=1, padding=1, dilation=1,
                mask=np.zeros((2, 2 * 9, 5, 5)))
    args.update(changes)
    return F.deform_conv2d(**{k: Tensor(v) if isinstance(v, np.ndarray) else v for k, v in args.items()})


def test_valid_call_runs():
    assert bad_call().shape == (2, 6, 5, 5)


@pytest.mark.parametrize("changes, error, words", [
    (dict(offset=np.zeros((2, 17, 5, 5))), ValueError, r"offset.shape\[1\] = 17"),
    (dict(offset=np.zeros((2, 6 * 9, 5, 5))), ValueError, "offset_groups dividing C_in = 4"),
    (dict(offset=np.zeros((2, 36, 4, 5))), ValueError, r"offset must have shape .*\(2, 36, 5, 5\)"),
    (dict(offset=np.zeros((1, 36, 5, 5))), ValueError, "offset must have shape"),
    (dict(offset=np.zeros((36, 5, 5))), ValueError, "offset must be 4-D"),
    (dict(mask=np.zeros((2, 9, 5, 5))), ValueError, r"mask must have shape .*\(2, 18, 5, 5\), got \(2, 9, 5, 5\)"),
    (dict(weight=np.zeros((6, 3, 3, 3))), ValueError, r"weight.shape\[1\] = 3"),
    (dict(weight=np.zeros((5, 2, 3, 3))), ValueError, r"weight.shape\[0\] = 5"),
    (dict(bias=np.zeros(5)), ValueError, r"bias must have shape \(6,\)"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(dilation=(1, 2, 3)), TypeError, "dilation must be an int or a pair"),
    (dict(padding=0, offset=np.zeros((2, 36, 3, 3)), mask=np.zeros((2, 18, 3, 3)), input=np.zeros((2, 4, 2, 5))),
     ValueError, "empty"),
    (dict(offset=np.zeros((2, 36, 5, 5), np.float32)), TypeError, "offset has dtype float32"),
    (dict(mask=np.zeros((2, 18, 5, 5), np.float32)), TypeError, "mask has dtype float32"),
    (dict(input=[1.0]), TypeError, "input must be a Tensor"),
])
def test_bad_input_is_rejected(changes, error, words):
    with pytest.raises(error, match=words):
        bad_call(**changes)


def test_small_work_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Below conv2d's _SERIAL_MULTIPLY_ADDS the kernel runs on one Numba thread (same answer); the count comes back."""
    seen = record_thread_counts(monkeypatch, deform, "_kernel")
    rng = np.random.default_rng(7)
    x, offset, w, b, mask = operands(SPLIT_CFG, rng)
    previous = numba.get_num_threads()
    small = deform.deform_conv2d_forward(x, offset, w, b, *conv_args(SPLIT_CFG), mask)
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # now every call counts as large
    large = deform.deform_conv2d_forward(x, offset, w, b, *conv_args(SPLIT_CFG), mask)
    assert seen == [1, previous] and numba.get_num_threads() == previous
    np.testing.assert_array_equal(small, large)

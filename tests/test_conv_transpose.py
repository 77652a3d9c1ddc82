"""conv_transpose2d: kernels/conv_transpose.py against kernels/reference.py, gradients through
tinyconv.functional.conv_transpose2d, the adjoint identity with conv2d, and every argument error."""
import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, conv_transpose, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@st.composite
def transpose_configs(draw):
    """(x shape, weight shape, stride, padding, output_padding, groups, dilation), non-empty output."""
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    op = tuple(draw(st.integers(0, max(s[a], d[a]) - 1)) for a in range(2))  # PyTorch: op < stride or op < dilation
    shape = (draw(st.integers(1, 2)), c_in, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    assume(all(reference.conv_transpose_output_size(shape[2 + a], k[a], s[a], p[a], op[a], d[a]) >= 1
               for a in range(2)))
    return shape, (c_in, c_out // groups) + k, s, p, op, groups, d


def operands(config, dtype, seed):
    x_shape, w_shape, groups = config[0], config[1], config[5]
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(w_shape[1] * groups).astype(dtype), rng)


@settings(max_examples=40, deadline=None)
@given(transpose_configs(), st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_conv_transpose2d_kernels_match_reference(config, with_bias, dtype, seed):
    args = config[2:]
    x, w, b, rng = operands(config, dtype, seed)
    b = b if with_bias else None
    y = conv_transpose.conv_transpose2d_forward(x, w, b, *args)
    y_ref = reference.conv_transpose2d_forward(x, w, b, *args)
    assert y.shape == y_ref.shape and y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = conv_transpose.conv_transpose2d_backward(g, x, w, *args)
    for got, want in zip(grads, reference.conv_transpose2d_backward(g, x, w, *args)):
        assert got.shape == want.shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@settings(max_examples=30, deadline=None)
@given(transpose_configs(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31),
       st.sampled_from([0, 10**9]))
def test_conv_transpose2d_shifted_route_matches_reference(config, dtype, seed, rows_max_pixels):
    """Stride 1 (output_padding < dilation) by conv2d's shifted windows or pixel rows, forced on the small
    drawn shapes."""
    x_shape, w_shape, _, p, _, groups, d = config
    op = tuple(min(config[4][a], d[a] - 1) for a in range(2))
    args = ((1, 1), p, op, groups, d)
    assume(all(reference.conv_transpose_output_size(x_shape[2 + a], w_shape[2 + a], 1, p[a], op[a], d[a]) >= 1
               for a in range(2)))
    x, w, b, rng = operands(config, dtype, seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dense_conv, "_SHIFTED_MIN_CHANNELS", 1)
        patch.setattr(dense_conv, "_ROWS_MAX_PIXELS", rows_max_pixels)
        y = conv_transpose.conv_transpose2d_forward(x, w, b, *args)
        g = rng.standard_normal(y.shape).astype(dtype)
        grads = conv_transpose.conv_transpose2d_backward(g, x, w, *args)
    np.testing.assert_allclose(y, reference.conv_transpose2d_forward(x, w, b, *args), **TOL[dtype])
    for got, want in zip(grads, reference.conv_transpose2d_backward(g, x, w, *args)):
        assert got.shape == want.shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@settings(max_examples=20, deadline=None)
@given(transpose_configs(), st.integers(0, 2**31))
def test_conv_transpose2d_is_the_adjoint_of_conv2d(config, seed):
    """<conv2d(u, w), x> = <u, conv_transpose2d(x, w)> for the fast kernels of both ops."""
    s, p, op, groups, d = config[2:]
    x, w, _, rng = operands(config, np.float64, seed)
    u = rng.standard_normal(conv_transpose.conv_transpose2d_forward(x, w, None, s, p, op, groups, d).shape)
    conv_u = dense_conv.conv2d_forward(u, w, None, s, p, d, groups)[:, :, :x.shape[2], :x.shape[3]]
    lhs = (conv_u * x).sum()
    rhs = (u * conv_transpose.conv_transpose2d_forward(x, w, None, s, p, op, groups, d)).sum()
    assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs))


@settings(max_examples=25, deadline=None)
@given(transpose_configs(), st.integers(0, 2**31))
def test_conv_transpose2d_gradcheck_directional(config, seed):
    s, p, op, groups, d = config[2:]
    x, w, b, _ = operands(config, np.float64, seed)
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, s, p, op, groups, d), inputs,
                              fast_mode=True, seed=seed % 1000)


@pytest.mark.parametrize("config", [
    ((1, 2, 3, 2), (2, 2, 3, 2), (2, 1), (1, 0), (1, 0), 1, (1, 1)),
    ((2, 4, 2, 3), (4, 1, 2, 3), (1, 2), (0, 1), (1, 1), 2, (2, 1)),   # output_padding < dilation, not < stride
])
def test_conv_transpose2d_gradcheck_full(config):
    s, p, op, groups, d = config[2:]
    x, w, b, _ = operands(config, np.float64, 1)
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, s, p, op, groups, d), inputs)


@pytest.mark.parametrize("x_shape, w_shape, s, p, op", [
    ((2, 3, 1, 1), (3, 2, 1, 1), 1, 0, 0),      # 1x1 image, pointwise
    ((1, 2, 1, 1), (2, 3, 4, 4), 2, 1, 1),      # 1x1 image, 4x4 stride 2
    ((1, 2, 3, 3), (2, 2, 2, 2), 3, 0, 2),      # stride larger than the kernel: gaps in the output
    ((2, 2, 3, 4), (2, 2, 5, 5), 1, 2, 0),      # padding crops to the input's size
])
def test_conv_transpose2d_edge_cases(x_shape, w_shape, s, p, op):
    config = (x_shape, w_shape, F._pair(s, "stride"), F._pair(p, "padding"), F._pair(op, "output_padding"), 1, (1, 1))
    x, w, b, _ = operands(config, np.float64, 2)
    y = F.conv_transpose2d(Tensor(x), Tensor(w), Tensor(b), s, p, op)
    np.testing.assert_allclose(y.data, reference.conv_transpose2d_forward(x, w, b, *config[2:]), **TOL[np.float64])
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, s, p, op), inputs, fast_mode=True)


@pytest.mark.parametrize("config", [((5, 4, 3, 4), (4, 3, 3, 2), (2, 1), (1, 0), (1, 0), 2, (1, 2)),   # im2col
                                    ((5, 16, 3, 4), (16, 8, 3, 2), (1, 1), (1, 0), (1, 0), 2, (2, 1))])  # shifted
@pytest.mark.parametrize("blocks", [1, 3])
def test_conv_transpose2d_same_bits_at_any_thread_count_and_block_split(monkeypatch, blocks, config):
    """1 and 2 threads give the same bits; other block splits the same y and grad_input bits, grad_weight equal
    up to rounding (it is summed per block): the conv2d routes conv_transpose2d reuses."""
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # really use the threads on this small case
    args = config[2:]
    x, w, b, rng = operands(config, np.float64, 4)
    g = rng.standard_normal(conv_transpose.conv_transpose2d_forward(x, w, b, *args).shape)

    def run():
        return [conv_transpose.conv_transpose2d_forward(x, w, b, *args)] + \
            list(conv_transpose.conv_transpose2d_backward(g, x, w, *args))

    previous = tinyconv.get_num_threads()
    try:
        tinyconv.set_num_threads(1)
        one = run()
        tinyconv.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run()
    finally:
        tinyconv.set_num_threads(previous)
    for got, want in zip(two, one):
        np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(dense_conv, "_blocks", lambda items: min(items, blocks))
    split = run()
    for got, want in zip(split[:2], one[:2]):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(split[2:], one[2:]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_non_contiguous_input():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 3, 5)).transpose(1, 0, 3, 2)          # (2, 4, 5, 3) view
    w = rng.standard_normal((4, 3, 3, 3))[:, ::-1]                         # (4, 3, 3, 3) reversed view
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    x_t, w_t = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = F.conv_transpose2d(x_t, w_t, stride=2, padding=1, output_padding=1)
    args = ((2, 2), (1, 1), (1, 1), 1, (1, 1))
    np.testing.assert_allclose(y.data, reference.conv_transpose2d_forward(x, w, None, *args), **TOL[np.float64])
    g = rng.standard_normal(y.shape)
    y.backward(g)
    gi, gw, _ = reference.conv_transpose2d_backward(g, x, w, *args)
    np.testing.assert_allclose(x_t.grad, gi, **TOL[np.float64])
    np.testing.assert_allclose(w_t.grad, gw, **TOL[np.float64])


def _convt(x_shape=(2, 4, 5, 5), w_shape=(4, 3, 3, 3), b_shape=None, dtype=np.float64, w_dtype=None, **kwargs):
    x = Tensor(np.zeros(x_shape, dtype))
    w = Tensor(np.zeros(w_shape, w_dtype or dtype))
    b = None if b_shape is None else Tensor(np.zeros(b_shape, dtype))
    return F.conv_transpose2d(x, w, b, **kwargs)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x_shape=(4, 5, 5)), ValueError, ["input", "4-D"]),
    (dict(w_shape=(3, 3, 3, 3)), ValueError, ["weight", "(3, 3, 3, 3)", "C_in = 4"]),
    (dict(groups=3), ValueError, ["C_in = 4", "groups = 3"]),
    (dict(groups=0), ValueError, ["groups", "0"]),
    (dict(stride=0), ValueError, ["stride", "0"]),
    (dict(dilation=(1, 0)), ValueError, ["dilation", "(1, 0)"]),
    (dict(padding=-1), ValueError, ["padding", "-1"]),
    (dict(padding="same"), TypeError, ["padding", "'same'"]),
    (dict(output_padding=-1), ValueError, ["output_padding", "-1"]),
    (dict(output_padding=1), ValueError, ["output_padding", "stride", "dilation"]),
    (dict(stride=2, output_padding=(0, 2)), ValueError, ["output_padding=(0, 2)", "stride"]),
    (dict(padding=4), ValueError, ["output", "empty", "padding=4"]),
    (dict(w_dtype=np.float32), TypeError, ["weight", "float32", "float64"]),
    (dict(b_shape=(4,)), ValueError, ["bias", "(3,)", "(4,)"]),
])
def test_conv_transpose2d_argument_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        _convt(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_conv_transpose2d_output_padding_below_dilation_is_allowed():
    y = _convt(output_padding=1, dilation=2)    # stride 1, output_padding 1 < dilation 2: PyTorch accepts it
    assert y.shape == (2, 3, 5 - 1 + 2 * 2 + 1 + 1, 5 - 1 + 2 * 2 + 1 + 1)

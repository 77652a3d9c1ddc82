"""conv2d and im2col: kernels/im2col.py and kernels/conv2d.py against kernels/reference.py,
gradients through tinyconv.functional.conv2d, edge cases and every argument error."""
import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from conftest import record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, im2col as im2col_kernels, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@st.composite
def conv_configs(draw, max_size=7):
    """(x shape, weight shape, stride, padding, dilation, groups) with a non-empty output."""
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    shape = (draw(st.integers(1, 2)), c_in, draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    assume(all(reference.conv_output_size(shape[2 + a], k[a], s[a], p[a], d[a]) >= 1 for a in range(2)))
    return shape, (c_out, c_in // groups) + k, s, p, d, groups


def operands(config, dtype, seed):
    x_shape, w_shape = config[:2]
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(w_shape[0]).astype(dtype), rng)


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(conv_configs(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_im2col_and_col2im_match_reference(config, dtype, seed):
    x_shape, w_shape, s, p, d, _ = config
    x, _, _, rng = operands(config, dtype, seed)
    k = w_shape[2:]
    cols = im2col_kernels.im2col(x, k, s, p, d)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols, reference.im2col(x, k, s, p, d))  # a copy is exact
    g = rng.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(im2col_kernels.col2im(g, x_shape, k, s, p, d),
                               reference.col2im(g, x_shape, k, s, p, d), **TOL[dtype])


@settings(max_examples=40, deadline=None)
@given(conv_configs(), st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_conv2d_kernels_match_reference(config, with_bias, dtype, seed):
    _, _, s, p, d, groups = config
    x, w, b, rng = operands(config, dtype, seed)
    b = b if with_bias else None
    y = dense_conv.conv2d_forward(x, w, b, s, p, d, groups)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference.conv2d_forward(x, w, b, s, p, d, groups), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = dense_conv.conv2d_backward(g, x, w, s, p, d, groups)
    for got, want in zip(grads, reference.conv2d_backward(g, x, w, s, p, d, groups)):
        assert got.shape == want.shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


def test_conv2d_backward_returns_only_what_is_needed():
    x, w = np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))
    g = np.ones((1, 3, 2, 2))
    grads = dense_conv.conv2d_backward(g, x, w, (1, 1), (0, 0), (1, 1), 1, needs=(False, True, False))
    assert grads[0] is None and grads[2] is None and grads[1].shape == w.shape


GRAD_SHAPE = (5, 6, 4, 8)  # the output shape of CONFIG_FOR_SPLITS


def _forward_and_grads(x, w, b, g, args):
    y = dense_conv.conv2d_forward(x, w, b, *args)
    assert g.shape == y.shape
    return [y] + list(dense_conv.conv2d_backward(g, x, w, *args))


CONFIG_FOR_SPLITS = ((5, 4, 7, 6), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2)   # strided: the im2col route
CONFIG_SHIFTED = ((5, 16, 7, 6), (6, 8, 3, 2), (1, 1), (1, 2), (2, 1), 2)      # stride 1, 8 channels a group: rows
CONFIG_WINDOWS = ((3, 16, 17, 16), (6, 8, 3, 2), (1, 1), (1, 2), (2, 1), 2)    # the same, planes > 8x8: windows
GRAD_SHAPES = {CONFIG_FOR_SPLITS: GRAD_SHAPE, CONFIG_SHIFTED: (5, 6, 5, 9), CONFIG_WINDOWS: (3, 6, 15, 19)}


@pytest.mark.parametrize("config", [CONFIG_FOR_SPLITS, CONFIG_SHIFTED, CONFIG_WINDOWS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_give_identical_results(monkeypatch, dtype, config):
    """The work is cut into NUMBA_NUM_THREADS blocks whatever set_num_threads says: bit-identical answers."""
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # really use the threads on this small case
    x, w, b, rng = operands(config, dtype, 0)
    g = rng.standard_normal(GRAD_SHAPES[config]).astype(dtype)
    previous = tinyconv.get_num_threads()
    try:
        runs = []
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            tinyconv.set_num_threads(threads)
            runs.append(_forward_and_grads(x, w, b, g, config[2:]))
    finally:
        tinyconv.set_num_threads(previous)
    for got, want in zip(runs[-1], runs[0]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("config", [CONFIG_FOR_SPLITS, CONFIG_SHIFTED, CONFIG_WINDOWS])
@pytest.mark.parametrize("blocks", [1, 2, 3, 10])
def test_results_do_not_depend_on_the_split_into_blocks(monkeypatch, blocks, config):
    """Any number of blocks (one item, several, all in one): the same y and grad_input bit for bit, and
    grad_weight (summed per block, then over blocks) equal up to rounding, all matching the reference."""
    args = config[2:]
    x, w, b, rng = operands(config, np.float64, 0)
    g = rng.standard_normal(GRAD_SHAPES[config])
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)
    whole = _forward_and_grads(x, w, b, g, args)
    monkeypatch.setattr(dense_conv, "_blocks", lambda items: min(items, blocks))
    split = _forward_and_grads(x, w, b, g, args)
    for got, want in zip(split[:2], whole[:2]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(split[2], whole[2], rtol=1e-12, atol=1e-12)
    want_all = [reference.conv2d_forward(x, w, b, *args)] + list(reference.conv2d_backward(g, x, w, *args))
    for got, want in zip(split, want_all):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


def test_grad_weight_accumulators_capped_by_memory(monkeypatch):
    """With _PARTIAL_BYTES below one weight's size, grad_weight uses a single accumulator: same answer."""
    args = CONFIG_FOR_SPLITS[2:]
    x, w, b, rng = operands(CONFIG_FOR_SPLITS, np.float64, 2)
    g = rng.standard_normal(GRAD_SHAPE)
    want = reference.conv2d_backward(g, x, w, *args, needs=(False, True, False))[1]
    monkeypatch.setattr(dense_conv, "_PARTIAL_BYTES", 1)
    got = dense_conv.conv2d_backward(g, x, w, *args, needs=(False, True, False))[1]
    np.testing.assert_allclose(got, want, **TOL[np.float64])


def test_small_convolutions_run_on_one_thread_and_restore_the_count(monkeypatch):
    """Below _SERIAL_MULTIPLY_ADDS the kernels run with one Numba thread; the caller's count comes back after."""
    seen = record_thread_counts(monkeypatch, dense_conv, "_forward_kernel")
    x, w, b, _ = operands(CONFIG_FOR_SPLITS, np.float64, 3)
    previous = numba.get_num_threads()
    dense_conv.conv2d_forward(x, w, b, *CONFIG_FOR_SPLITS[2:])
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)
    dense_conv.conv2d_forward(x, w, b, *CONFIG_FOR_SPLITS[2:])
    assert seen == [1, previous] and numba.get_num_threads() == previous


def test_results_do_not_depend_on_the_batch_split():
    """Each sample's output and grad_input depend on that sample only: two half batches give the same bits."""
    args = CONFIG_FOR_SPLITS[2:]
    x, w, b, rng = operands(CONFIG_FOR_SPLITS, np.float32, 1)
    g = rng.standard_normal(GRAD_SHAPE).astype(np.float32)
    whole = _forward_and_grads(x, w, b, g, args)
    halves = [_forward_and_grads(x[s], w, b, g[s], args) for s in (slice(0, 2), slice(2, 5))]
    for k in (0, 1):
        np.testing.assert_array_equal(np.concatenate([halves[0][k], halves[1][k]]), whole[k])
    np.testing.assert_allclose(halves[0][2] + halves[1][2], whole[2], **TOL[np.float32])
    np.testing.assert_allclose(halves[0][3] + halves[1][3], whole[3], **TOL[np.float32])


@settings(max_examples=40, deadline=None)
@given(conv_configs(), st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31),
       st.sampled_from(["_shifted_kernel", "_rows_kernel"]), st.sampled_from([1, 2**20]))
def test_shifted_route_matches_reference(config, with_bias, dtype, seed, kernel, rows_bytes):
    """Shifted windows or pixel rows (one sample a GEMM, or all that fit) forced on the small drawn shapes
    (they need 8 channels a group otherwise): every stride (split into phases), padding (also above
    d·(k - 1): grad_input's padding is then negative) and dilation. grad_input takes them at stride 1 only;
    grad_weight takes pixel rows at every stride with them, else the extended columns at stride 1."""
    _, w_shape, s, p, d, groups = config
    x, w, b, rng = operands(config, dtype, seed)
    b = b if with_bias else None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dense_conv, "_SHIFTED_MIN_CHANNELS", 1)
        patch.setattr(dense_conv, "_ROWS_MAX_PIXELS", 0 if kernel == "_shifted_kernel" else 10**9)
        patch.setattr(dense_conv, "_ROWS_BYTES", rows_bytes)
        seen = record_thread_counts(patch, dense_conv, kernel)
        y = dense_conv.conv2d_forward(x, w, b, s, p, d, groups)
        g = rng.standard_normal(y.shape).astype(dtype)
        grads = dense_conv.conv2d_backward(g, x, w, s, p, d, groups)
    pointwise = w_shape[2:] == (1, 1) and p == (0, 0) and s == (1, 1)   # keeps its own path
    assert len(seen) == (0 if pointwise else 2 if s == (1, 1) else 1)
    np.testing.assert_allclose(y, reference.conv2d_forward(x, w, b, s, p, d, groups), **TOL[dtype])
    for got, want in zip(grads, reference.conv2d_backward(g, x, w, s, p, d, groups)):
        assert got.shape == want.shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plane, kernel", [((6, 5), "_rows_kernel"), ((17, 16), "_shifted_kernel")])
def test_shifted_route_taken_from_eight_channels(monkeypatch, dtype, plane, kernel):
    """At stride 1 with 8 input channels a group conv2d's forward and grad_input run by pixel rows on planes
    of at most 8x8 pixels, by shifted windows on larger ones; 4 channels take im2col."""
    seen = record_thread_counts(monkeypatch, dense_conv, kernel)
    for c_group, calls in ((8, 2), (4, 0)):
        config = ((2, 2 * c_group) + plane, (4, c_group, 3, 2), (1, 1), (1, 2), (2, 1), 2)
        x, w, b, rng = operands(config, dtype, 1)
        seen.clear()
        y = dense_conv.conv2d_forward(x, w, b, *config[2:])
        g = rng.standard_normal(y.shape).astype(dtype)
        grads = dense_conv.conv2d_backward(g, x, w, *config[2:])
        assert len(seen) == calls
        np.testing.assert_allclose(y, reference.conv2d_forward(x, w, b, *config[2:]), **TOL[dtype])
        for got, want in zip(grads, reference.conv2d_backward(g, x, w, *config[2:])):
            np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_fast_path_matches_reference(groups):
    x, w, b, rng = operands(((3, 4, 5, 6), (6, 4 // groups, 1, 1)), np.float64, 1)
    args = ((1, 1), (0, 0), (1, 1), groups)
    y = dense_conv.conv2d_forward(x, w, b, *args)
    np.testing.assert_allclose(y, reference.conv2d_forward(x, w, b, *args), **TOL[np.float64])
    g = rng.standard_normal(y.shape)
    for got, want in zip(dense_conv.conv2d_backward(g, x, w, *args), reference.conv2d_backward(g, x, w, *args)):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


# ---------------------------------------------------------------------------
# gradients through tinyconv.functional
# ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(conv_configs(), st.integers(0, 2**31))
def test_conv2d_gradcheck_directional(config, seed):
    _, _, s, p, d, groups = config
    x, w, b, _ = operands(config, np.float64, seed)
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, s, p, d, groups), inputs, fast_mode=True,
                              seed=seed % 1000)


@pytest.mark.parametrize("config", [
    ((1, 2, 4, 3), (2, 2, 2, 3), (1, 2), (1, 1), (1, 1), 1),
    ((2, 4, 5, 5), (4, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
])
def test_conv2d_gradcheck_full(config):
    _, _, s, p, d, groups = config
    x, w, b, _ = operands(config, np.float64, 3)
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, s, p, d, groups), inputs)


def test_conv2d_backward_is_reentrant_and_typed():
    for dtype in (np.float32, np.float64):
        x, w, b, rng = operands(((2, 4, 6, 5), (6, 2, 3, 3)), dtype, 4)
        x, w, b = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(x, w, b, stride=2, padding=1, groups=2)
        g = rng.standard_normal(y.shape).astype(dtype)
        y.backward(g)
        first = [t.grad.copy() for t in (x, w, b)]
        for t in (x, w, b):
            t.zero_grad()
        y.backward(g)
        for t, grad in zip((x, w, b), first):
            assert t.grad.shape == t.shape and t.grad.dtype == dtype
            np.testing.assert_array_equal(t.grad, grad)
            t.zero_grad()
        y.backward(np.zeros_like(g))
        assert all(not t.grad.any() for t in (x, w, b))


# ---------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape, w_shape, s, p, d", [
    ((2, 3, 1, 1), (4, 3, 1, 1), 1, 0, 1),          # 1x1 image, pointwise
    ((2, 3, 1, 1), (4, 3, 3, 3), 1, 1, 1),          # 1x1 image, all taps but one in the padding
    ((1, 2, 3, 4), (3, 2, 5, 6), 1, 1, 1),          # kernel as large as the padded input: 1x1 output
    ((2, 2, 7, 7), (3, 2, 2, 2), 3, 0, 1),          # stride larger than the kernel: pixels skipped
    ((1, 3, 6, 5), (2, 3, 3, 2), (2, 3), (2, 1), (2, 1)),
])
def test_conv2d_edge_cases(x_shape, w_shape, s, p, d):
    x, w, b, rng = operands((x_shape, w_shape), np.float64, 5)
    args = (F._pair(s, "stride"), F._pair(p, "padding"), F._pair(d, "dilation"), 1)
    y = F.conv2d(Tensor(x), Tensor(w), Tensor(b), s, p, d)
    np.testing.assert_allclose(y.data, reference.conv2d_forward(x, w, b, *args), **TOL[np.float64])
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, s, p, d), inputs, fast_mode=True)


def test_conv2d_non_contiguous_input_and_weight():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 6, 3, 2)).transpose(3, 1, 0, 2)     # (2, 6, 5, 5) view, not contiguous
    w = rng.standard_normal((3, 3, 2, 6)).transpose(3, 2, 0, 1)     # (6, 2, 3, 3) view
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    x_t, w_t = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = F.conv2d(x_t, w_t, padding=1, groups=3)
    args = ((1, 1), (1, 1), (1, 1), 3)
    np.testing.assert_allclose(y.data, reference.conv2d_forward(x, w, None, *args), **TOL[np.float64])
    g = rng.standard_normal(y.shape)
    y.backward(g)
    gi, gw, _ = reference.conv2d_backward(g, x, w, *args)
    np.testing.assert_allclose(x_t.grad, gi, **TOL[np.float64])
    np.testing.assert_allclose(w_t.grad, gw, **TOL[np.float64])


@pytest.mark.parametrize("k, d", [((3, 3), (1, 1)), ((2, 4), (1, 1)), ((3, 2), (2, 3)), ((4, 1), (1, 2))])
def test_conv2d_padding_same_and_valid(k, d):
    x, w, b, _ = operands(((2, 3, 6, 7), (4, 3) + k), np.float64, 7)
    y = F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding="same", dilation=d).data
    assert y.shape[2:] == x.shape[2:]
    total = [d[a] * (k[a] - 1) for a in range(2)]
    # PyTorch's rule: half on each side, the odd extra row/column on the bottom/right
    padded = np.pad(x, ((0, 0), (0, 0), (total[0] // 2, total[0] - total[0] // 2), (total[1] // 2, total[1] - total[1] // 2)))
    np.testing.assert_allclose(y, reference.conv2d_forward(padded, w, b, (1, 1), (0, 0), d, 1), **TOL[np.float64])
    valid = F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding="valid", dilation=d).data
    np.testing.assert_allclose(valid, reference.conv2d_forward(x, w, b, (1, 1), (0, 0), d, 1), **TOL[np.float64])
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert tinyconv.gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, padding="same", dilation=d), inputs,
                              fast_mode=True)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_conv2d_depthwise_groups_match_reference(multiplier):
    """groups == C_in dispatches to kernels/depthwise.py; the answer is conv2d's."""
    x, w, b, rng = operands(((2, 3, 6, 5), (3 * multiplier, 1, 3, 3)), np.float64, 8)
    x_t, w_t, b_t = (Tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(x_t, w_t, b_t, stride=(1, 2), padding=1, groups=3)
    args = ((1, 2), (1, 1), (1, 1), 3)
    np.testing.assert_allclose(y.data, reference.conv2d_forward(x, w, b, *args), **TOL[np.float64])
    g = rng.standard_normal(y.shape)
    y.backward(g)
    for t, want in zip((x_t, w_t, b_t), reference.conv2d_backward(g, x, w, *args)):
        np.testing.assert_allclose(t.grad, want, **TOL[np.float64])


def test_conv2d_float32_stays_float32():
    x, w, b, _ = operands(((2, 3, 5, 5), (4, 3, 3, 3)), np.float32, 9)
    y = F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding=1)
    assert y.dtype == np.float32


# ---------------------------------------------------------------------------
# argument errors, raised before any kernel runs
# ---------------------------------------------------------------------------
def _conv(x_shape=(2, 4, 6, 6), w_shape=(6, 4, 3, 3), b_shape=None, dtype=np.float64, w_dtype=None, **kwargs):
    x = Tensor(np.zeros(x_shape, dtype))
    w = Tensor(np.zeros(w_shape, w_dtype or dtype))
    b = None if b_shape is None else Tensor(np.zeros(b_shape, dtype))
    return F.conv2d(x, w, b, **kwargs)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x_shape=(4, 6, 6)), ValueError, ["input", "4-D", "(4, 6, 6)"]),
    (dict(w_shape=(6, 4, 3)), ValueError, ["weight", "4-D"]),
    (dict(w_shape=(6, 3, 3, 3)), ValueError, ["weight", "(6, 3, 3, 3)", "C_in = 4"]),
    (dict(w_shape=(6, 2, 3, 3), groups=3), ValueError, ["C_in = 4", "groups = 3"]),
    (dict(w_shape=(5, 2, 3, 3), groups=2), ValueError, ["C_out = 5", "groups = 2"]),
    (dict(groups=0), ValueError, ["groups", "0"]),
    (dict(groups=1.5), TypeError, ["groups", "1.5"]),
    (dict(stride=0), ValueError, ["stride", "0"]),
    (dict(stride=(1, -2)), ValueError, ["stride", "-2"]),
    (dict(dilation=0), ValueError, ["dilation", "0"]),
    (dict(padding=-1), ValueError, ["padding", "-1"]),
    (dict(padding=(1, 2, 3)), TypeError, ["padding", "(1, 2, 3)"]),
    (dict(padding="full"), ValueError, ["padding", "'full'", "'same'"]),
    (dict(padding="same", stride=2), ValueError, ["same", "stride"]),
    (dict(w_shape=(6, 4, 9, 3)), ValueError, ["output", "empty", "(9, 3)"]),
    (dict(w_shape=(6, 4, 3, 3), dilation=4), ValueError, ["output", "empty", "dilation"]),
    (dict(w_dtype=np.float32), TypeError, ["weight", "float32", "float64"]),
    (dict(b_shape=(5,)), ValueError, ["bias", "(6,)", "(5,)"]),
    (dict(b_shape=(6, 1)), ValueError, ["bias", "1-D"]),
    (dict(x_shape=(2, 4, 0, 6)), ValueError, ["input", "zero-sized"]),
])
def test_conv2d_argument_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        _conv(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_conv2d_bias_dtype_mismatch():
    x, w = Tensor(np.zeros((1, 2, 4, 4))), Tensor(np.zeros((3, 2, 3, 3)))
    with pytest.raises(TypeError, match="bias.*float32"):
        F.conv2d(x, w, Tensor(np.zeros(3, np.float32)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_gradient_is_the_channel_sum(dtype):
    """grad_bias sums each channel in float64 on one thread: the exact sum rounded once, at any thread count."""
    g = np.random.default_rng(7).standard_normal((5, 3, 7, 9)).astype(dtype)
    want = g.astype(np.float64).sum(axis=(0, 2, 3))
    got = dense_conv.bias_gradient(g)
    assert got.dtype == dtype and got.shape == (3,)
    np.testing.assert_allclose(got, want.astype(dtype), rtol=1e-6 if dtype == np.float32 else 1e-13)
    strided = np.asfortranarray(g)  # any memory layout
    np.testing.assert_array_equal(dense_conv.bias_gradient(strided), got)

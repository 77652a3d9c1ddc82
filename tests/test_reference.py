"""Tests of the oracle itself: kernels/reference.py.

Two kinds of checks, over hypothesis-drawn small shapes and parameters:

(a) every reference backward against central finite differences: for a
    random u, d<u, f(x)>/dx is computed one element at a time in float64
    and compared with the backward's answer for grad_output = u;
(b) identities between independently written reference functions
    (deformable with zero offset = conv2d, conv_transpose = adjoint of
    conv2d, depthwise = conv2d with groups = C, ...).

Kinks are avoided by construction: max-pool inputs have no ties (a
permutation of spaced values), deformable sample points have their
fractional part in [0.1, 0.9] (away from the grid and the -1 / H borders).
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from kernels import reference as ref

SETTINGS = settings(max_examples=40, deadline=None)
EPS = 1e-6


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def numeric_grad(f, args, k, u):
    """d<u, f(*args)>/d args[k] by central differences, element by element (float64)."""
    x = args[k]
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        saved = x[idx]
        x[idx] = saved + EPS
        plus = np.sum(u * f(*args))
        x[idx] = saved - EPS
        minus = np.sum(u * f(*args))
        x[idx] = saved
        grad[idx] = (plus - minus) / (2 * EPS)
    return grad


def assert_grad(analytic, f, args, k, u):
    """The analytic gradient has the input's shape and dtype and matches finite differences."""
    assert analytic.shape == args[k].shape and analytic.dtype == args[k].dtype
    np.testing.assert_allclose(analytic, numeric_grad(f, args, k, u), rtol=1e-6, atol=1e-8)


def inner(a, b):
    return float(np.sum(a * b))


@st.composite
def rngs(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


@st.composite
def conv_params(draw, max_size=5):
    """(k, s, pad, d, size) along one axis with at least one output."""
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 2))
    d = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    low = max(1, d * (k - 1) + 1 - 2 * pad)
    size = draw(st.integers(low, max(low, max_size)))
    return k, s, pad, d, size


@st.composite
def conv_configs(draw, max_size=5):
    """A small grouped conv: shapes, stride, padding, dilation, groups, and a rng."""
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k_h, s_h, pad_h, d_h, H = draw(conv_params(max_size))
    k_w, s_w, pad_w, d_w, W = draw(conv_params(max_size))
    n = draw(st.integers(1, 2))
    return dict(x_shape=(n, c_in, H, W), weight_shape=(c_out, c_in // groups, k_h, k_w),
                stride=(s_h, s_w), padding=(pad_h, pad_w), dilation=(d_h, d_w), groups=groups, rng=draw(rngs()))


# ---------------------------------------------------------------------------
# helpers of the module
# ---------------------------------------------------------------------------
def _count_windows(size, k, s, p, d, ceil_mode):
    """Count pooling/conv windows one by one over the padded line of length size + 2p.

    floor: window n (starting at n·s in padded coordinates) must fit entirely.
    ceil:  window n is kept while the previous one has not reached the last
           padded element, and only if it starts inside the input or the left padding.
    """
    padded, extent = size + 2 * p, d * (k - 1) + 1
    n = 0
    while True:
        start = n * s
        if ceil_mode:
            keep = (n == 0 or (n - 1) * s + extent < padded) and start - p < size
        else:
            keep = start + extent <= padded
        if not keep:
            return n
        n += 1


def test_output_sizes_against_enumeration():
    for size, k, s, p, d in np.ndindex(8, 5, 4, 3, 3):
        if min(size, k, s, d) == 0 or p > k // 2 or d * (k - 1) + 1 > size + 2 * p:
            continue
        assert ref.conv_output_size(size, k, s, p, d) == _count_windows(size, k, s, p, d, False)
        assert ref.pool_output_size(size, k, s, p, d, False) == _count_windows(size, k, s, p, d, False)
        assert ref.pool_output_size(size, k, s, p, d, True) == _count_windows(size, k, s, p, d, True)


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------
@SETTINGS
@given(conv_configs())
def test_im2col_col2im_adjoint(cfg):
    """<im2col(x), cols> == <x, col2im(cols)>."""
    rng = cfg["rng"]
    kernel_size = cfg["weight_shape"][2:]
    args = (kernel_size, cfg["stride"], cfg["padding"], cfg["dilation"])
    x = rng.standard_normal(cfg["x_shape"])
    cols = ref.im2col(x, *args)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(inner(cols, c), inner(x, ref.col2im(c, x.shape, *args)), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(conv_configs())
def test_conv2d_is_matmul_of_im2col(cfg):
    """For groups=1, conv2d(x)[n] == weight.reshape(C_out, -1) @ im2col(x)[n] (two independent loops)."""
    rng = cfg["rng"]
    n, c_in, H, W = cfg["x_shape"]
    weight = rng.standard_normal((cfg["weight_shape"][0], c_in) + cfg["weight_shape"][2:])
    x = rng.standard_normal(cfg["x_shape"])
    y = ref.conv2d_forward(x, weight, None, cfg["stride"], cfg["padding"], cfg["dilation"], 1)
    cols = ref.im2col(x, weight.shape[2:], cfg["stride"], cfg["padding"], cfg["dilation"])
    expected = np.einsum("ok,nkl->nol", weight.reshape(weight.shape[0], -1), cols)  # (N, C_out, out_h·out_w)
    np.testing.assert_allclose(y.reshape(expected.shape), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------
@SETTINGS
@given(conv_configs(max_size=4))
def test_conv2d_backward_finite_differences(cfg):
    rng = cfg["rng"]
    conf = (cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    bias = rng.standard_normal(weight.shape[0])
    u = rng.standard_normal(ref.conv2d_forward(x, weight, bias, *conf).shape)
    grads = ref.conv2d_backward(u, x, weight, *conf)
    f = lambda x, weight, bias: ref.conv2d_forward(x, weight, bias, *conf)  # noqa: E731
    for k in range(3):
        assert_grad(grads[k], f, [x, weight, bias], k, u)


def test_conv2d_needs_and_dtype():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = ref.conv2d_forward(x, weight, None, (1, 1), (1, 1), (1, 1), 1)
    assert y.dtype == np.float32
    grads = ref.conv2d_backward(np.ones_like(y), x, weight, (1, 1), (1, 1), (1, 1), 1, needs=(False, True, False))
    assert grads[0] is None and grads[2] is None and grads[1].dtype == np.float32
    zero = ref.conv2d_backward(np.zeros_like(y), x, weight, (1, 1), (1, 1), (1, 1), 1)
    assert all(not g.any() for g in zero)


@SETTINGS
@given(rngs(), st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_1x1_conv_is_matmul(rng, n, c_in, c_out, size):
    x = rng.standard_normal((n, c_in, size, size + 1))
    weight = rng.standard_normal((c_out, c_in, 1, 1))
    bias = rng.standard_normal(c_out)
    y = ref.conv2d_forward(x, weight, bias, (1, 1), (0, 0), (1, 1), 1)
    expected = weight[:, :, 0, 0] @ x.reshape(n, c_in, -1) + bias[:, None]  # (N, C_out, H·W)
    np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# depthwise
# ---------------------------------------------------------------------------
@st.composite
def depthwise_configs(draw, max_size=5):
    c, mult = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    k_h, s_h, pad_h, d_h, H = draw(conv_params(max_size))
    k_w, s_w, pad_w, d_w, W = draw(conv_params(max_size))
    return dict(x_shape=(draw(st.integers(1, 2)), c, H, W), weight_shape=(c * mult, 1, k_h, k_w),
                stride=(s_h, s_w), padding=(pad_h, pad_w), dilation=(d_h, d_w), rng=draw(rngs()))


@SETTINGS
@given(depthwise_configs())
def test_depthwise_equals_grouped_conv2d(cfg):
    rng = cfg["rng"]
    conf = (cfg["stride"], cfg["padding"], cfg["dilation"])
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    bias = rng.standard_normal(weight.shape[0])
    C = x.shape[1]
    y = ref.depthwise_conv2d_forward(x, weight, bias, *conf)
    np.testing.assert_allclose(y, ref.conv2d_forward(x, weight, bias, *conf, C), rtol=1e-12, atol=1e-12)
    u = rng.standard_normal(y.shape)
    for got, expected in zip(ref.depthwise_conv2d_backward(u, x, weight, *conf),
                             ref.conv2d_backward(u, x, weight, *conf, C)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(depthwise_configs(max_size=4))
def test_depthwise_backward_finite_differences(cfg):
    rng = cfg["rng"]
    conf = (cfg["stride"], cfg["padding"], cfg["dilation"])
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    bias = rng.standard_normal(weight.shape[0])
    u = rng.standard_normal(ref.depthwise_conv2d_forward(x, weight, bias, *conf).shape)
    grads = ref.depthwise_conv2d_backward(u, x, weight, *conf)
    f = lambda x, weight, bias: ref.depthwise_conv2d_forward(x, weight, bias, *conf)  # noqa: E731
    for k in range(3):
        assert_grad(grads[k], f, [x, weight, bias], k, u)


# ---------------------------------------------------------------------------
# transposed conv
# ---------------------------------------------------------------------------
def _transpose_setup(cfg):
    """conv2d config -> (x of the conv, weight, output_padding making conv_transpose return x's size)."""
    rng = cfg["rng"]
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    output_padding = tuple(
        (size + 2 * p - d * (k - 1) - 1) % s
        for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], cfg["stride"], cfg["padding"], cfg["dilation"]))
    return rng, x, weight, output_padding


@SETTINGS
@given(conv_configs())
def test_conv_transpose_is_adjoint_of_conv2d(cfg):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>, and conv_transpose's grad_input is conv2d."""
    rng, x, weight, output_padding = _transpose_setup(cfg)
    stride, padding, dilation, groups = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]
    y = rng.standard_normal(ref.conv2d_forward(x, weight, None, stride, padding, dilation, groups).shape)
    xt = ref.conv_transpose2d_forward(y, weight, None, stride, padding, output_padding, groups, dilation)
    assert xt.shape == x.shape
    np.testing.assert_allclose(inner(ref.conv2d_forward(x, weight, None, stride, padding, dilation, groups), y),
                               inner(x, xt), rtol=1e-12, atol=1e-12)
    grad_input, _, _ = ref.conv_transpose2d_backward(x, y, weight, stride, padding, output_padding, groups,
                                                     dilation)
    np.testing.assert_allclose(grad_input, ref.conv2d_forward(x, weight, None, stride, padding, dilation, groups),
                               rtol=1e-12, atol=1e-12)


@st.composite
def transpose_configs(draw):
    """A small conv_transpose2d config: output_padding < max(stride, dilation) as PyTorch requires,
    and padding small enough to leave at least one output."""
    cfg = draw(conv_configs(max_size=3))
    output_padding, padding = [], []
    for size, k, s, d in zip(cfg["x_shape"][2:], cfg["weight_shape"][2:], cfg["stride"], cfg["dilation"]):
        op = draw(st.integers(0, max(s, d) - 1))
        uncropped = (size - 1) * s + d * (k - 1) + op + 1
        output_padding.append(op)
        padding.append(draw(st.integers(0, min(2, (uncropped - 1) // 2))))
    cfg["output_padding"], cfg["padding"] = tuple(output_padding), tuple(padding)
    return cfg


@SETTINGS
@given(transpose_configs())
def test_conv_transpose_backward_finite_differences(cfg):
    rng = cfg["rng"]
    groups = cfg["groups"]
    conf = (cfg["stride"], cfg["padding"], cfg["output_padding"], groups, cfg["dilation"])
    c_out, c_g = cfg["weight_shape"][:2]
    x = rng.standard_normal((cfg["x_shape"][0], c_out) + cfg["x_shape"][2:])  # conv_transpose reads C_out channels
    weight = rng.standard_normal(cfg["weight_shape"])  # (C_in', C_out'/G) = (c_out, c_g)
    bias = rng.standard_normal(c_g * groups)
    y = ref.conv_transpose2d_forward(x, weight, bias, *conf)
    assert y.shape[2:] == tuple(ref.conv_transpose_output_size(size, k, s, p, op, d) for size, k, s, p, op, d in
                                zip(x.shape[2:], weight.shape[2:], *conf[:3], cfg["dilation"]))
    u = rng.standard_normal(y.shape)
    grads = ref.conv_transpose2d_backward(u, x, weight, *conf)
    f = lambda x, weight, bias: ref.conv_transpose2d_forward(x, weight, bias, *conf)  # noqa: E731
    for k in range(3):
        assert_grad(grads[k], f, [x, weight, bias], k, u)


# ---------------------------------------------------------------------------
# deformable conv
# ---------------------------------------------------------------------------
@st.composite
def deform_configs(draw, max_size=4):
    """A small deformable conv: conv config plus offset groups dividing C_in."""
    cfg = draw(conv_configs(max_size))
    c_in = cfg["x_shape"][1]
    cfg["offset_groups"] = draw(st.sampled_from([g for g in (1, 2) if c_in % g == 0]))
    return cfg


def _deform_shapes(cfg):
    N, _, H, W = cfg["x_shape"]
    k_h, k_w = cfg["weight_shape"][2:]
    out = [ref.conv_output_size(size, k, s, p, d) for size, k, s, p, d in
           zip((H, W), (k_h, k_w), cfg["stride"], cfg["padding"], cfg["dilation"])]
    K = cfg["offset_groups"] * k_h * k_w
    return (N, 2 * K, *out), (N, K, *out)


def _off_grid_offsets(rng, shape, spread):
    """Offsets whose fractional part lies in [0.1, 0.9]: sample points stay off the integer grid."""
    return rng.integers(-spread, spread + 1, size=shape) + rng.uniform(0.1, 0.9, size=shape)


@SETTINGS
@given(deform_configs(max_size=5))
def test_deform_zero_offset_unit_mask_equals_conv2d(cfg):
    rng = cfg["rng"]
    stride, padding, dilation, groups = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    bias = rng.standard_normal(weight.shape[0])
    offset_shape, mask_shape = _deform_shapes(cfg)
    expected = ref.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    for mask in (None, np.ones(mask_shape)):
        y = ref.deform_conv2d_forward(x, np.zeros(offset_shape), weight, bias, stride, padding, dilation, mask)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(deform_configs(max_size=5))
def test_deform_mask_of_ones_equals_v1(cfg):
    rng = cfg["rng"]
    conf = (cfg["stride"], cfg["padding"], cfg["dilation"])
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    offset_shape, mask_shape = _deform_shapes(cfg)
    offset = rng.uniform(-2, 2, size=offset_shape)
    v1 = ref.deform_conv2d_forward(x, offset, weight, None, *conf, None)
    v2 = ref.deform_conv2d_forward(x, offset, weight, None, *conf, np.ones(mask_shape))
    np.testing.assert_allclose(v2, v1, rtol=1e-12, atol=1e-12)
    u = rng.standard_normal(v1.shape)
    g1 = ref.deform_conv2d_backward(u, x, offset, weight, *conf, None)
    g2 = ref.deform_conv2d_backward(u, x, offset, weight, *conf, np.ones(mask_shape))
    assert g1[4] is None
    for a, b in zip(g1[:4], g2[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _shift(x, dy, dx):
    """x shifted so that result[..., h, w] = x[..., h + dy, w + dx] (0 outside)."""
    out = np.zeros_like(x)
    H, W = x.shape[2:]
    for h in range(H):
        for w in range(W):
            if 0 <= h + dy < H and 0 <= w + dx < W:
                out[:, :, h, w] = x[:, :, h + dy, w + dx]
    return out


@SETTINGS
@given(deform_configs(max_size=5), st.integers(-2, 2), st.integers(-2, 2))
def test_deform_integer_offset_equals_shifted_conv2d(cfg, dy, dx):
    rng = cfg["rng"]
    stride, padding, dilation, groups = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    offset_shape, _ = _deform_shapes(cfg)
    offset = np.zeros(offset_shape)
    offset[:, 0::2], offset[:, 1::2] = dy, dx  # every tap moved by (dy, dx)
    y = ref.deform_conv2d_forward(x, offset, weight, None, stride, padding, dilation, None)
    # pad first, then shift: a tap in the padding may be moved onto a real pixel
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    expected = ref.conv2d_forward(_shift(padded, dy, dx), weight, None, stride, (0, 0), dilation, groups)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(deform_configs(max_size=3), st.booleans())
def test_deform_backward_finite_differences(cfg, with_mask):
    rng = cfg["rng"]
    conf = (cfg["stride"], cfg["padding"], cfg["dilation"])
    x = rng.standard_normal(cfg["x_shape"])
    weight = rng.standard_normal(cfg["weight_shape"])
    bias = rng.standard_normal(weight.shape[0])
    offset_shape, mask_shape = _deform_shapes(cfg)
    offset = _off_grid_offsets(rng, offset_shape, spread=1)
    mask = rng.uniform(0.2, 1.5, size=mask_shape) if with_mask else None
    u = rng.standard_normal(ref.deform_conv2d_forward(x, offset, weight, bias, *conf, mask).shape)
    grads = ref.deform_conv2d_backward(u, x, offset, weight, *conf, mask)
    f = lambda x, offset, weight, bias, mask: ref.deform_conv2d_forward(x, offset, weight, bias, *conf, mask)  # noqa
    args = [x, offset, weight, bias, mask]
    for k in range(5 if with_mask else 4):
        assert_grad(grads[k], f, args, k, u)
    if not with_mask:
        assert grads[4] is None


def test_bilinear_partials_and_borders():
    """bilinear's partials against differences; zero outside (-1, H) x (-1, W); fades linearly over the border pixel."""
    rng = np.random.default_rng(1)
    img = rng.standard_normal((3, 4))
    for y, x in [(0.3, 0.6), (-0.4, 1.2), (2.7, 3.5), (1.5, -0.8), (-0.7, -0.2)]:
        d_dy, d_dx = ref.bilinear_grad_yx(img, y, x)
        num_y = (ref.bilinear(img, y + EPS, x) - ref.bilinear(img, y - EPS, x)) / (2 * EPS)
        num_x = (ref.bilinear(img, y, x + EPS) - ref.bilinear(img, y, x - EPS)) / (2 * EPS)
        np.testing.assert_allclose([d_dy, d_dx], [num_y, num_x], rtol=1e-7, atol=1e-9)
    assert ref.bilinear(img, 1.0, 2.0) == img[1, 2]
    assert ref.bilinear(img, -1.0, 1.0) == 0.0 and ref.bilinear(img, 1.0, 4.0) == 0.0
    assert ref.bilinear(img, -0.25, 2.0) == pytest.approx(0.75 * img[0, 2])
    assert ref.bilinear_grad_yx(img, -1.5, 1.0) == (0.0, 0.0)


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------
@st.composite
def pool_configs(draw, dilation=True, max_size=5):
    """A pooling config as PyTorch allows it: pad <= k // 2, at least one output."""
    def axis():
        k = draw(st.integers(1, 3))
        s = draw(st.integers(1, 3))
        d = draw(st.integers(1, 2)) if dilation else 1
        pad = draw(st.integers(0, k // 2))
        size = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * pad), max_size))
        return k, s, pad, d, size
    (k_h, s_h, p_h, d_h, H), (k_w, s_w, p_w, d_w, W) = axis(), axis()
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 2)), H, W), kernel_size=(k_h, k_w),
                stride=(s_h, s_w), padding=(p_h, p_w), dilation=(d_h, d_w), ceil_mode=draw(st.booleans()),
                rng=draw(rngs()))


def _tie_free(rng, shape):
    """A permutation of spaced values: no two equal, gaps of 0.1 >> EPS."""
    return rng.permutation(np.arange(int(np.prod(shape)))).reshape(shape) * 0.1 - 1.0


@SETTINGS
@given(pool_configs())
def test_max_pool_backward_finite_differences(cfg):
    rng = cfg["rng"]
    conf = (cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"])
    x = _tie_free(rng, cfg["shape"])
    y, indices = ref.max_pool2d_forward(x, *conf)
    assume(np.isfinite(y).all())  # a dilated window may miss the input entirely: tested separately
    assert indices.dtype == np.int64 and y.shape == indices.shape
    # every output is the value its index points at, and no window element beats it
    assert (np.take_along_axis(x.reshape(x.shape[:2] + (-1,)), indices.reshape(y.shape[:2] + (-1,)), 2)
            == y.reshape(y.shape[:2] + (-1,))).all()
    u = rng.standard_normal(y.shape)
    grad_input = ref.max_pool2d_backward(u, indices, x.shape)
    assert_grad(grad_input, lambda x: ref.max_pool2d_forward(x, *conf)[0], [x], 0, u)


def test_max_pool_ties_go_to_first_and_padding_never_wins():
    x = np.array([[[[2.0, 2.0], [2.0, -5.0]]]])
    y, indices = ref.max_pool2d_forward(x, (2, 2), (1, 1), (0, 0), (1, 1), False)
    assert indices.item() == 0 and y.item() == 2.0
    x = -np.ones((1, 1, 2, 2))  # every real value below the zero a padded conv would read
    y, indices = ref.max_pool2d_forward(x, (3, 3), (1, 1), (1, 1), (1, 1), False)
    assert (y == -1).all() and indices[0, 0].tolist() == [[0, 0], [0, 0]]


def test_max_pool_window_missing_the_input():
    """H = 1, k = 2, d = 2, pad = 1: the taps are rows -1 and 1, both padding -> -inf, index -1, no gradient."""
    x = np.array([[[[3.0]]]])
    y, indices = ref.max_pool2d_forward(x, (2, 1), (1, 1), (1, 0), (2, 1), False)
    assert y.shape == (1, 1, 1, 1) and y.item() == -np.inf and indices.item() == -1
    assert ref.max_pool2d_backward(np.ones(y.shape), indices, x.shape).item() == 0.0


@SETTINGS
@given(pool_configs(dilation=False), st.booleans())
def test_avg_pool_backward_finite_differences(cfg, count_include_pad):
    rng = cfg["rng"]
    conf = (cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["ceil_mode"], count_include_pad)
    x = rng.standard_normal(cfg["shape"])
    u = rng.standard_normal(ref.avg_pool2d_forward(x, *conf).shape)
    grad_input = ref.avg_pool2d_backward(u, x.shape, *conf)
    assert_grad(grad_input, lambda x: ref.avg_pool2d_forward(x, *conf), [x], 0, u)


@SETTINGS
@given(rngs(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_avg_pool_unpadded_equals_window_mean(rng, k_h, k_w, out_h, out_w, count_include_pad):
    """Without padding (k = s, sizes divisible) every window is a plain mean, whatever count_include_pad."""
    x = rng.standard_normal((2, 2, k_h * out_h, k_w * out_w))
    y = ref.avg_pool2d_forward(x, (k_h, k_w), (k_h, k_w), (0, 0), False, count_include_pad)
    expected = x.reshape(2, 2, out_h, k_h, out_w, k_w).mean(axis=(3, 5))  # (N, C, out_h, k_h, out_w, k_w)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # adaptive pooling with a dividing output size is the same pooling
    np.testing.assert_allclose(ref.adaptive_avg_pool2d_forward(x, (out_h, out_w)), expected, rtol=1e-12, atol=1e-12)


def test_avg_pool_divisors_match_pytorch_rules():
    """Hand-worked divisors. 3x3 ones, k=2, s=2, pad=1, ceil_mode: windows rows [-1,0], [1,2], [3,4]->cut."""
    x = np.ones((1, 1, 3, 3))
    # count_include_pad: windows clipped to [-1, 4): lengths 2, 2 -> every divisor 4; sums 1, 2, 2, 4
    y = ref.avg_pool2d_forward(x, (2, 2), (2, 2), (1, 1), True, True)
    assert y[0, 0].tolist() == [[0.25, 0.5], [0.5, 1.0]]
    # without count_include_pad every output of an all-ones input is 1
    assert (ref.avg_pool2d_forward(x, (2, 2), (2, 2), (1, 1), True, False) == 1).all()
    # 4 wide, k=3, s=2, pad=1, ceil: windows [-1, 2), [1, 4), [3, 6) clipped to [-1, 5) -> [3, 5), length 2
    x = np.ones((1, 1, 1, 4))
    y = ref.avg_pool2d_forward(x, (1, 3), (1, 2), (0, 1), True, True)
    assert y[0, 0, 0].tolist() == [2 / 3, 1.0, 0.5]


@SETTINGS
@given(rngs(), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))
def test_adaptive_avg_pool_backward_finite_differences(rng, H, W, out_h, out_w):
    x = rng.standard_normal((2, 2, H, W))
    y = ref.adaptive_avg_pool2d_forward(x, (out_h, out_w))
    assert y.shape == (2, 2, out_h, out_w)
    u = rng.standard_normal(y.shape)
    grad_input = ref.adaptive_avg_pool2d_backward(u, x.shape)
    assert_grad(grad_input, lambda x: ref.adaptive_avg_pool2d_forward(x, (out_h, out_w)), [x], 0, u)


def test_adaptive_windows_match_pytorch():
    """5 -> 3: windows [0, 2), [1, 4), [3, 5) (floor(i·5/3), ceil((i+1)·5/3))."""
    x = np.arange(5.0).reshape(1, 1, 1, 5)
    assert ref.adaptive_avg_pool2d_forward(x, (1, 3))[0, 0, 0].tolist() == [0.5, 2.0, 3.5]
    assert ref.adaptive_avg_pool2d_forward(x, (1, 1)).item() == 2.0


# ---------------------------------------------------------------------------
# batch norm
# ---------------------------------------------------------------------------
@st.composite
def bn_shapes(draw):
    n, c = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([(), (1, 2), (2, 2), (3, 1)]))
    return (n, c) + spatial


@SETTINGS
@given(bn_shapes(), rngs(), st.booleans())
def test_batch_norm_backward_finite_differences(shape, rng, affine):
    x = rng.standard_normal(shape) * 2 + 1
    C = shape[1]
    weight = rng.standard_normal(C) if affine else None
    bias = rng.standard_normal(C) if affine else None
    eps = 1e-5
    y, mean, inv_std = ref.batch_norm_forward(x, weight, bias, eps)
    u = rng.standard_normal(y.shape)
    grads = ref.batch_norm_backward(u, x, weight, mean, inv_std)
    f = lambda x, weight, bias: ref.batch_norm_forward(x, weight, bias, eps)[0]  # noqa: E731
    args = [x, weight, bias]
    assert_grad(grads[0], f, args, 0, u)
    if affine:
        assert_grad(grads[1], f, args, 1, u)
        assert_grad(grads[2], f, args, 2, u)
    else:
        assert grads[1] is None
        np.testing.assert_allclose(grads[2], u.sum(axis=tuple(a for a in range(u.ndim) if a != 1)), rtol=1e-12)


@SETTINGS
@given(bn_shapes(), rngs())
def test_batch_norm_normalises_and_matches_inference(shape, rng):
    x = rng.standard_normal(shape) * 3 - 2
    axes = tuple(a for a in range(x.ndim) if a != 1)
    y, mean, inv_std = ref.batch_norm_forward(x, None, None, 0.0)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-10)  # np.var is biased, as the forward
    np.testing.assert_allclose(mean, x.mean(axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(inv_std, 1 / x.std(axis=axes), rtol=1e-12)
    # inference with the batch's own statistics gives the training output
    weight, bias = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    y, _, _ = ref.batch_norm_forward(x, weight, bias, 1e-3)
    y_inf = ref.batch_norm_inference(x, x.mean(axis=axes), x.var(axis=axes), weight, bias, 1e-3)
    np.testing.assert_allclose(y_inf, y, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# channel shuffle
# ---------------------------------------------------------------------------
@SETTINGS
@given(rngs(), st.integers(1, 4), st.integers(1, 4), st.sampled_from([(), (2, 3)]))
def test_channel_shuffle_inverse_and_gradient(rng, groups, per_group, spatial):
    C = groups * per_group
    x = rng.standard_normal((2, C) + spatial)
    y = ref.channel_shuffle_forward(x, groups)
    assert sorted(y[0].ravel().tolist()) == sorted(x[0].ravel().tolist())  # a permutation of channels
    np.testing.assert_array_equal(ref.channel_shuffle_forward(y, per_group), x)  # g then C/g: identity
    u = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(ref.channel_shuffle_backward(u, groups), ref.channel_shuffle_forward(u, per_group))
    assert_grad(ref.channel_shuffle_backward(u, groups), lambda x: ref.channel_shuffle_forward(x, groups), [x], 0, u)

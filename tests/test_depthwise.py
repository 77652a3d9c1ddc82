"""The direct grouped kernel (kernels/depthwise.py: few channels per group, depthwise = one channel per group)
against kernels/reference.py (conv2d with groups, and the naive depthwise loop), gradients through
tinyconv.functional.conv2d, which routes convolutions with few channels a group there (runs_direct)."""
import os
import subprocess
import sys
from unittest import mock

import numba
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st

from conftest import ROOT, record_thread_counts

import tinyconv
import tinyconv.functional as F
from kernels import conv2d as dense_conv, depthwise, reference
from tinyconv import Tensor

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@st.composite
def grouped_configs(draw, max_size=9, max_channels=4, channels=None, outputs=st.integers(1, 3)):
    """(x shape, groups, output channels per group, kernel, stride, padding, dilation), non-empty output.
    Input channels per group from `channels` (default 1 ... max_channels), output channels from `outputs`."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    channels = st.integers(1, max_channels) if channels is None else channels
    groups, c_group, o_group = draw(st.integers(1, 3)), draw(channels), draw(outputs)
    shape = (draw(st.integers(1, 3)), groups * c_group, draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    assume(all(reference.conv_output_size(shape[2 + a], k[a], s[a], p[a], d[a]) >= 1 for a in range(2)))
    return shape, groups, o_group, k, s, p, d


def operands(shape, groups, o_group, k, rng, dtype):
    c_out = groups * o_group
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c_out, shape[1] // groups) + k).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b


def check_against_reference(x, w, b, s, p, d, groups, dtype, rng):
    y = depthwise.grouped_conv2d_forward(x, w, b, s, p, d, groups)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference.conv2d_forward(x, w, b, s, p, d, groups), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = depthwise.grouped_conv2d_backward(g, x, w, s, p, d, groups)
    expected = reference.conv2d_backward(g, x, w, s, p, d, groups)
    for got, want, like in zip(grads, expected, (x, w, np.zeros(w.shape[0], dtype))):
        assert got.shape == like.shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(grouped_configs(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**31))
def test_grouped_matches_reference(config, dtype, with_bias, seed):
    shape, groups, o_group, k, s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = operands(shape, groups, o_group, k, rng, dtype)
    check_against_reference(x, w, b if with_bias else None, s, p, d, groups, dtype, rng)


@settings(max_examples=25, deadline=None)
@given(grouped_configs(max_size=6, channels=st.sampled_from([1, 3, 8, 16]), outputs=st.sampled_from([4, 8, 12, 16])),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31))
def test_wide_groups_match_reference(config, dtype, seed):
    """Groups of many channels take the register-blocked loops: 8 output channels at a time through
    _gather_rows8 (O_g a multiple of 8; grad_input too when C_g is), grad_weight 4 output channels at a
    time through _dot_taps4 (O_g a multiple of 4), any tap count (T % 4 taps one per pass)."""
    shape, groups, o_group, k, s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = operands(shape, groups, o_group, k, rng, dtype)
    check_against_reference(x, w, b, s, p, d, groups, dtype, rng)


@pytest.mark.parametrize("shape, groups, o_group, k, s, p, d, dtype", [
    ((3, 16, 5, 16), 2, 8, (3, 3), (1, 1), (1, 1), (1, 1), np.float32),   # 16-pixel rows: 5 vectors a plane (odd)
    ((2, 8, 6, 34), 1, 8, (3, 3), (1, 1), (0, 0), (1, 1), np.float32),    # a dense conv, rows of 2 vectors
    ((2, 16, 8, 32), 2, 8, (3, 3), (2, 2), (1, 1), (1, 1), np.float32),   # stride 2: the forward's phases
    ((2, 16, 7, 8), 2, 16, (3, 3), (1, 1), (2, 2), (2, 2), np.float64),   # float64 vectors of 8, dilated
    ((2, 8, 3, 16), 1, 8, (1, 5), (1, 1), (0, 2), (1, 1), np.float64),    # a 1x5 kernel, 2 vectors a row
    ((3, 5, 9, 16), 5, 1, (3, 3), (1, 1), (1, 1), (1, 1), np.float32),    # depthwise: 9 vectors a plane
    ((2, 3, 7, 16), 3, 2, (5, 5), (1, 1), (2, 2), (1, 1), np.float64),    # multiplier 2, 14 vectors a plane
    ((2, 4, 6, 32), 4, 1, (3, 3), (2, 2), (1, 1), (1, 1), np.float32),    # stride 2: phases, a vector a row
])
def test_rows_of_whole_vectors_match_reference(shape, groups, o_group, k, s, p, d, dtype):
    """Output (and, at stride 1, input) rows a whole number of vectors long are gathered without the junk
    column, sample by sample: 8 channels through _gather_planes8 (one run a plane into the output), one
    channel through _gather_vectors straight into it."""
    rng = np.random.default_rng(3)
    x, w, b = operands(shape, groups, o_group, k, rng, dtype)
    check_against_reference(x, w, b, s, p, d, groups, dtype, rng)


@st.composite
def whole_vector_rows(draw):
    """A grouped convolution, wide (8 or 16 output channels a group: _gather_planes8) or narrow (1-3: one
    channel at a time, _gather_vectors straight into y), whose output rows are a whole number of vectors
    long (8, 16 or 24 pixels in float64), the input width solved from the drawn kernel, stride, padding
    and dilation: (x shape, groups, o_group, kernel, stride, padding, dilation)."""
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    out_w = draw(st.sampled_from([8, 16, 24]))  # 1, 2 or 3 vectors a row: pairs of vectors straddle rows
    width = (out_w - 1) * s[1] + d[1] * (k[1] - 1) + 1 - 2 * p[1]  # the input width that gives out_w
    height = draw(st.integers(1, 4))
    assume(width >= 1 and reference.conv_output_size(height, k[0], s[0], p[0], d[0]) >= 1)
    groups, c_group = draw(st.integers(1, 2)), draw(st.sampled_from([1, 8]))
    shape = (draw(st.integers(1, 3)), groups * c_group, height, width)
    return shape, groups, draw(st.sampled_from([1, 2, 3, 8, 16])), k, s, p, d


@settings(max_examples=40, deadline=None)
@given(whole_vector_rows(), st.integers(0, 2**31))
def test_rows_of_whole_vectors_drawn_match_reference(config, seed):
    """The same over drawn kernels, strides, paddings and dilations (float64: rows of 8, 16 or 24 pixels)."""
    shape, groups, o_group, k, s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = operands(shape, groups, o_group, k, rng, np.float64)
    check_against_reference(x, w, b, s, p, d, groups, np.float64, rng)


@pytest.mark.parametrize("vectors", [1, 3, 8, 11, 16])  # fewer than 8, a whole 8, and a short last group
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_vectors_sums_every_tap_into_each_vector(vectors, dtype):
    """dst[first + v·lanes + l] = start + Σ_t weights[t] · src[offsets[t] + bases[v] + l], bases in any order
    (rows of whole vectors P apart), nothing written outside the vectors."""
    rng = np.random.default_rng(vectors)
    lanes, first, taps = 64 // np.dtype(dtype).itemsize, 3, 7
    src = rng.standard_normal(40 * lanes).astype(dtype)
    offsets = rng.integers(0, 10 * lanes, taps)
    bases = (np.arange(vectors) // 2 * 3 * lanes + np.arange(vectors) % 2 * lanes).astype(np.int64)  # pairs a row
    weights = rng.standard_normal(taps).astype(dtype)
    dst = np.full(first + vectors * lanes + 5, -7.0, dtype)
    depthwise._gather_vectors(dst, first, src, bases, offsets, weights, vectors, dtype(0.5))
    reads = offsets[:, None, None] + bases[None, :, None] + np.arange(lanes)[None, None, :]  # (T, V, lanes)
    want = 0.5 + np.einsum("t,tvl->vl", weights.astype(np.float64), src[reads].astype(np.float64))
    np.testing.assert_allclose(dst[first:first + vectors * lanes], want.reshape(-1), **TOL[dtype])
    assert (dst[:first] == -7).all() and (dst[first + vectors * lanes:] == -7).all()


def test_items_stack_samples_by_plane_and_path():
    """An item stacks samples up to ITEM_ELEMENTS values a plane, but not depthwise planes of
    DEPTHWISE_STACK_BELOW values or more, nor in a forward over rows of whole vectors."""
    def samples(x_shape, w_shape, forward_lanes=0):
        return depthwise._Layout(x_shape, w_shape, (1, 1), (1, 1), (1, 1), forward_lanes).samples

    assert samples((64, 128, 16, 16), (128, 16, 3, 3)) == 4        # grouped: planes of 17x17, stacked
    assert samples((64, 128, 16, 16), (128, 16, 3, 3), 16) == 1    # its forward: rows of one vector
    assert samples((64, 128, 15, 15), (128, 16, 3, 3), 16) == 4    # 15-pixel rows: a flat forward
    assert samples((64, 128, 16, 16), (128, 1, 3, 3)) == 1         # depthwise planes of 289 values
    assert samples((64, 128, 7, 7), (128, 1, 3, 3), 16) == 16      # depthwise planes of 64 values
    assert samples((3, 128, 7, 7), (128, 1, 3, 3)) == 3            # no more than the batch


def test_by_rows_puts_the_rows_of_a_block_last():
    tap_weights = np.arange(2 * 16 * 3, dtype=np.float64).reshape(32, 3)  # 2 groups of 16 rows, 3 taps
    blocks = depthwise._by_rows(tap_weights, 2)
    assert depthwise.ROWS == 8 and blocks.shape == (4, 3, 8)
    np.testing.assert_array_equal(blocks[2, :, 5], tap_weights[2 * 8 + 5])
    assert depthwise._by_rows(tap_weights, 8).shape == (0, 3, 8)  # 4 rows a group: not a multiple of 8


@pytest.mark.parametrize("shape, groups, o_group, k, s, p, d", [
    ((2, 4, 1, 1), 2, 3, (1, 1), (1, 1), (0, 0), (1, 1)),   # 1x1 image, 1x1 kernel
    ((1, 3, 1, 1), 3, 1, (3, 3), (1, 1), (1, 1), (1, 1)),   # 1x1 image, only the centre tap sees it
    ((1, 6, 3, 2), 2, 2, (5, 4), (1, 1), (1, 1), (1, 1)),   # kernel as large as the padded input: 1x1 output
    ((2, 4, 7, 8), 2, 3, (2, 2), (4, 3), (1, 0), (1, 1)),   # stride > kernel: rows and columns never read
    ((1, 2, 5, 5), 2, 2, (1, 1), (3, 3), (4, 4), (1, 1)),   # padding > kernel: whole phases of padding
    ((1, 32, 6, 6), 2, 3, (3, 3), (1, 1), (1, 1), (1, 1)),  # C_g = 16 (the dispatch threshold), odd O_g
    ((1, 5, 9, 7), 1, 2, (3, 2), (2, 3), (2, 1), (2, 2)),   # groups = 1 (a dense conv) runs too
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_cases_match_reference(shape, groups, o_group, k, s, p, d, dtype):
    rng = np.random.default_rng(5)
    x, w, b = operands(shape, groups, o_group, k, rng, dtype)
    check_against_reference(x, w, b, s, p, d, groups, dtype, rng)


@settings(max_examples=20, deadline=None)
@given(grouped_configs(max_channels=1), st.integers(0, 2**31))
def test_depthwise_names_match_the_depthwise_reference(config, seed):
    """depthwise_conv2d_* (weight (C·M, 1, k_h, k_w)) against the reference's own depthwise loop."""
    shape, groups, mult, k, s, p, d = config
    rng = np.random.default_rng(seed)
    x, w, b = operands(shape, groups, mult, k, rng, np.float64)
    y = depthwise.depthwise_conv2d_forward(x, w, b, s, p, d)
    np.testing.assert_allclose(y, reference.depthwise_conv2d_forward(x, w, b, s, p, d), **TOL[np.float64])
    g = rng.standard_normal(y.shape)
    for got, want in zip(depthwise.depthwise_conv2d_backward(g, x, w, s, p, d),
                         reference.depthwise_conv2d_backward(g, x, w, s, p, d)):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


@pytest.mark.parametrize("item_elements", [1, 40])  # one sample per item; 2 of 5 samples per item (a short last item)
def test_items_of_several_samples_match_reference(monkeypatch, item_elements):
    """An item stacks samples until its planes reach ITEM_ELEMENTS; any stacking gives the reference's answer."""
    monkeypatch.setattr(depthwise, "ITEM_ELEMENTS", item_elements)
    rng = np.random.default_rng(9)
    for shape, groups, o_group, k, s, p, d in [((5, 4, 5, 4), 2, 3, (3, 3), (1, 1), (1, 1), (1, 1)),
                                               ((5, 3, 6, 5), 3, 1, (3, 2), (2, 3), (2, 1), (1, 2)),
                                               ((5, 32, 5, 4), 2, 16, (3, 3), (1, 1), (1, 1), (1, 1)),  # wide loops
                                               ((5, 6, 4, 5), 2, 4, (1, 1), (1, 1), (0, 0), (1, 1))]:  # T = 3 < 4
        x, w, b = operands(shape, groups, o_group, k, rng, np.float64)
        check_against_reference(x, w, b, s, p, d, groups, np.float64, rng)


@pytest.mark.parametrize("o_group", [8, 3])  # _dot_taps4; _dot_taps in pairs and an odd one
def test_grad_weight_over_several_chunks_matches_reference(o_group):
    """A 70x70 plane (5,041 pixels with its border) is more than DOT_CHUNK: grad_weight's dot products run
    chunk by chunk, every channel and tap over one chunk, then the next."""
    rng = np.random.default_rng(11)
    x, w, b = operands((1, 4, 70, 70), 2, o_group, (3, 3), rng, np.float64)
    assert depthwise._Layout(x.shape, w.shape, (1, 1), (1, 1), (1, 1)).plane > depthwise.DOT_CHUNK
    check_against_reference(x, w, b, (1, 1), (1, 1), (1, 1), 2, np.float64, rng)


def test_needs_returns_none_for_grads_not_requested():
    rng = np.random.default_rng(0)
    x, w, _ = operands((2, 6, 6, 5), 2, 3, (3, 3), rng, np.float64)
    g = rng.standard_normal((2, 6, 6, 5))
    full = depthwise.grouped_conv2d_backward(g, x, w, (1, 1), (1, 1), (1, 1), 2)
    for needs in [(True, False, False), (False, True, False), (False, False, True), (False, False, False)]:
        grads = depthwise.grouped_conv2d_backward(g, x, w, (1, 1), (1, 1), (1, 1), 2, needs)
        for need, got, want in zip(needs, grads, full):
            if need:
                np.testing.assert_array_equal(got, want)
            else:
                assert got is None


@pytest.mark.parametrize("shape, groups, o_group, k, args", [
    ((3, 6, 11, 7), 2, 3, (3, 2), ((2, 1), (1, 1), (1, 2), 2)),
    ((9, 16, 16, 16), 1, 16, (3, 3), ((1, 1), (1, 1), (1, 1), 1))])  # dense, wide; 3 items of 4 samples
def test_result_does_not_depend_on_the_thread_count(shape, groups, o_group, k, args):
    """The items are split into a fixed number of blocks (grad_weight partials added in block order):
    1 or all threads must give identical bits."""
    rng = np.random.default_rng(1)
    x, w, b = operands(shape, groups, o_group, k, rng, np.float32)
    g = rng.standard_normal(depthwise.grouped_conv2d_forward(x, w, b, *args).shape).astype(np.float32)
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append((depthwise.grouped_conv2d_forward(x, w, b, *args),)
                           + depthwise.grouped_conv2d_backward(g, x, w, *args))
    finally:
        numba.set_num_threads(previous)
    for got, want in zip(results[-1], results[0]):
        np.testing.assert_array_equal(got, want)


PLAIN_PYTHON_CHECK = """
import numpy as np
from kernels import depthwise, reference
rng = np.random.default_rng(0)
# wide loops (_gather_rows8, _dot_taps4); narrow ones (_gather_vectors); rows of whole vectors (8 float64
# pixels: _gather_planes8, and _gather_vectors for depthwise with a multiplier of 2)
for groups, c_in, c_out, width in [(1, 8, 8, 5), (2, 4, 2, 5), (1, 8, 8, 8), (4, 4, 8, 8)]:
    x, w = rng.standard_normal((2, c_in, 4, width)), rng.standard_normal((c_out, c_in // groups, 3, 3))
    args = ((1, 1), (1, 1), (1, 1), groups)
    y = depthwise.grouped_conv2d_forward(x, w, None, *args)
    g = rng.standard_normal(y.shape)
    got = (y,) + depthwise.grouped_conv2d_backward(g, x, w, *args)
    want = (reference.conv2d_forward(x, w, None, *args),) + reference.conv2d_backward(g, x, w, *args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
print("ok")
"""


def test_the_kernel_runs_as_plain_python():
    """With NUMBA_DISABLE_JIT=1 (to step through the loops in a debugger) every function is plain Python:
    _stack_array is np.empty there, and the answers are the reference's."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", PLAIN_PYTHON_CHECK], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout[-3000:] + proc.stderr[-3000:]


ONE_SIGNATURE_CHECK = """
import numba, numpy as np
from kernels import depthwise
rng = np.random.default_rng(0)
# flat and row gathers, wide (8 output channels) and narrow (1), forward and backward, one dtype
for c_in, c_out, groups, width in [(8, 8, 1, 5), (8, 8, 1, 16), (4, 4, 4, 5), (4, 4, 4, 16)]:
    x = rng.standard_normal((2, c_in, 4, width)).astype(np.float32)
    w = rng.standard_normal((c_out, c_in // groups, 3, 3)).astype(np.float32)
    y = depthwise.grouped_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), groups)
    depthwise.grouped_conv2d_backward(y, x, w, (1, 1), (1, 1), (1, 1), groups)
many = {name: len(f.signatures) for name, f in vars(depthwise).items()
        if isinstance(f, numba.core.registry.CPUDispatcher) and f.py_func.__module__ == depthwise.__name__
        and name != "_ceil_div" and len(f.signatures) > 1}
print(many)
"""


def test_each_gather_compiles_once_per_dtype(tmp_path):
    """A literal 0 passed as a gather's `first` compiled it a second time (Literal[int](0) beside int64), 1-2 s
    of a cold start each: in a fresh Numba cache every jitted function of this file gets one signature per
    dtype (_ceil_div aside: a literal lane count, a one-line function; conv2d's _block takes prange's
    unsigned index here, a signed one there: 0.1 s)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", ONE_SIGNATURE_CHECK], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "{}", proc.stdout[-3000:] + proc.stderr[-3000:]


def test_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 9, 4)).transpose(0, 3, 1, 2)   # (2, 4, 7, 9), not C-contiguous
    w = rng.standard_normal((6, 3, 2, 3)).transpose(0, 2, 1, 3)   # (6, 2, 3, 3)
    g = rng.standard_normal((2, 7, 4, 6)).transpose(0, 3, 1, 2)   # (2, 6, 7, 4) = the output's shape
    args = ((1, 2), (1, 0), (1, 1), 2)
    y = depthwise.grouped_conv2d_forward(x, w, None, *args)
    np.testing.assert_allclose(y, reference.conv2d_forward(x, w, None, *args), **TOL[np.float64])
    for got, want in zip(depthwise.grouped_conv2d_backward(g, x, w, *args),
                         reference.conv2d_backward(g, x, w, *args)):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


# ---------------------------------------------------------------------------
# through tinyconv.functional.conv2d
# ---------------------------------------------------------------------------
def grouped_conv(s, p, d, groups):
    return lambda x, w, b: F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=groups)


@settings(max_examples=30, deadline=None)
@given(grouped_configs(max_size=7), st.integers(0, 2**31))
def test_gradcheck_fast(config, seed):
    shape, groups, o_group, k, s, p, d = config
    assume(groups > 1)  # groups = 1 is the dense route
    rng = np.random.default_rng(seed)
    x, w, b = (Tensor(a, requires_grad=True) for a in operands(shape, groups, o_group, k, rng, np.float64))
    assert tinyconv.gradcheck(grouped_conv(s, p, d, groups), [x, w, b], fast_mode=True, seed=seed)


@pytest.mark.parametrize("shape, groups, o_group, k, s, p, d", [
    ((1, 2, 4, 3), 2, 2, (2, 3), (1, 1), (1, 1), (1, 1)),   # depthwise, multiplier 2
    ((2, 4, 5, 4), 2, 1, (3, 2), (2, 1), (0, 1), (1, 2)),   # 2 channels per group, strided, dilated
])
def test_gradcheck_full(shape, groups, o_group, k, s, p, d):
    rng = np.random.default_rng(3)
    x, w, b = (Tensor(a, requires_grad=True) for a in operands(shape, groups, o_group, k, rng, np.float64))
    assert tinyconv.gradcheck(grouped_conv(s, p, d, groups), [x, w, b])


AT_16X16 = depthwise.DIRECT_MIN_PIXELS_WIDE // (16 * 16)  # the batch from which 16x16 outputs have enough pixels


@pytest.mark.parametrize("n, groups, c_group, o_group, k, size, stride, direct", [
    (1, 2, 1, 2, 3, 4, 1, True), (1, 2, depthwise.DIRECT_MAX_CHANNELS, 2, 3, 4, 2, True),
    (AT_16X16, 2, depthwise.DIRECT_MAX_CHANNELS + 1, 4, 3, 16, 1, False),  # 17 a group: only wide groups
    (AT_16X16, 2, depthwise.DIRECT_MAX_CHANNELS_WIDE, 8, 3, 16, 1, True),  # wide: 8 output channels a group
    (AT_16X16, 1, depthwise.DIRECT_MAX_CHANNELS_WIDE, 32, 3, 16, 1, True),  # a dense conv too
    (AT_16X16, 1, depthwise.DIRECT_MAX_CHANNELS_WIDE + 1, 32, 3, 16, 1, False),
    (AT_16X16 - 1, 1, 32, 32, 3, 16, 1, False),                            # too few output pixels
    (4 * AT_16X16, 1, 32, 32, 3, 8, 1, True),                              # 8x8, four times the batch
    (AT_16X16, 1, 32, 32, 3, 32, 2, False),                                # stride 2 (16x16 outputs)
    (1, 1, 1, 16, 7, 8, 1, True),                                          # a one-channel image, 7x7 kernel
    (1, 1, 2, 16, 3, 16, 1, False),                                        # dense with 18 taps: too few
    (1, 1, 3, 16, 3, 16, 1, True),                                         # dense with 27 taps
    (1, 2, depthwise.DIRECT_MAX_CHANNELS_1X1, 2, 1, 4, 1, True),
    (1, 2, depthwise.DIRECT_MAX_CHANNELS_1X1 + 1, 2, 1, 4, 1, False),
    (1, 1, depthwise.DIRECT_MAX_CHANNELS_1X1 + 1, 16, 1, 16, 1, False)])
def test_conv2d_routes_to_the_direct_kernel_by_runs_direct(monkeypatch, n, groups, c_group, o_group, k, size, stride,
                                                          direct):
    """Few input channels a group go direct; up to 64 at stride 1 with DIRECT_MIN_PIXELS_WIDE output pixels
    a channel over the batch when the group's output channels fill _gather_rows8; dense convolutions
    (groups = 1) alike when they have DIRECT_MIN_TAPS_DENSE taps (C_in·k_h·k_w) or more."""
    seen = record_thread_counts(monkeypatch, depthwise, "_forward_items")
    rng = np.random.default_rng(6)
    x, w, _ = operands((n, groups * c_group, size, size), groups, o_group, (k, k), rng, np.float64)
    pad = k // 2
    y = F.conv2d(Tensor(x), Tensor(w), stride=stride, padding=pad, groups=groups)
    assert bool(seen) == direct
    np.testing.assert_allclose(y.data, reference.conv2d_forward(x, w, None, (stride, stride), (pad, pad), (1, 1),
                                                                groups), **TOL[np.float64])


def test_backward_is_reentrant_and_zero_grad_gives_zero():
    rng = np.random.default_rng(4)
    x, w, b = (Tensor(a, requires_grad=True) for a in operands((2, 6, 6, 6), 3, 3, (3, 3), rng, np.float32))
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


def test_bad_grouped_weight_is_rejected_before_the_kernel():
    x = Tensor(np.zeros((1, 4, 5, 5)))
    with pytest.raises(ValueError, match="weight"):
        F.conv2d(x, Tensor(np.zeros((4, 2, 3, 3))), groups=4)  # weight must be (C_out, C_in/groups, k_h, k_w)
    with pytest.raises(ValueError, match="C_out"):
        F.conv2d(x, Tensor(np.zeros((5, 2, 3, 3))), groups=2)  # C_out must be a multiple of groups


def test_small_work_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Below conv2d's _SERIAL_MULTIPLY_ADDS the kernel runs on one Numba thread (same answer); the count comes back."""
    seen = record_thread_counts(monkeypatch, depthwise, "_forward_items")
    x = np.random.default_rng(7).standard_normal((2, 4, 6, 6))
    w = np.random.default_rng(8).standard_normal((6, 2, 3, 3))
    previous = numba.get_num_threads()
    small = depthwise.grouped_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 2)
    monkeypatch.setattr(dense_conv, "_SERIAL_MULTIPLY_ADDS", 0)  # now every call counts as large
    large = depthwise.grouped_conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 2)
    assert seen == [1, previous] and numba.get_num_threads() == previous
    np.testing.assert_array_equal(small, large)


@pytest.mark.parametrize("shape, groups, o_group, k, s", [
    ((2, 3, 5, 6), 3, 1, (1, 1), (1, 1)),   # T = 1 < 4: the one-tap pass is also the first pass
    ((2, 3, 5, 6), 3, 3, (1, 1), (2, 1)),   # T = 1, channels in pairs and an odd one out; 1 tap in 1 of 2 phases
    ((2, 4, 5, 6), 2, 3, (1, 1), (1, 1)),   # T = 2
    ((2, 3, 5, 6), 3, 2, (1, 3), (1, 2)),   # T = 3; grad_input phases of 2 and 1 taps
    ((2, 3, 6, 5), 3, 1, (5, 1), (1, 1)),   # T = 5: one pass of 4 and one of 1
    ((2, 3, 6, 6), 3, 2, (3, 3), (1, 1)),   # T = 9: depthwise 3x3 with multiplier 2
    ((2, 6, 7, 6), 2, 3, (3, 3), (2, 2)),   # T = 27; grad_input phases of 4, 2, 2 and 1 (output) taps
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tap_counts_not_a_multiple_of_four(shape, groups, o_group, k, s, dtype):
    """grad_weight's T = C_g·k_h·k_w taps run in passes of 4 and then one pass per remaining tap (no
    zero-weight padding); the gathers take all T taps in one pass, whatever T."""
    rng = np.random.default_rng(10)
    x, w, b = operands(shape, groups, o_group, k, rng, dtype)
    check_against_reference(x, w, b, s, (k[0] // 2, k[1] // 2), (1, 1), groups, dtype, rng)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 3), st.integers(0, 3), st.integers(1, 2), st.integers(1, 2),
       st.integers(3, 7), st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 40, 100]), st.integers(0, 2**31))
def test_stride_one_shared_borders_match_reference(k_h, k_w, p_h, p_w, d_h, d_w, n, h, w, item_elements, seed):
    """At stride 1 neighbouring rows and stacked planes share their zero borders (_shared_border): reads past
    a row or plane land in the next one's leading zeros. Any padding (also wider than the kernel), dilation
    and stacking (short last items reuse scratch that still holds the previous item's data) gives the
    reference's answer in float64."""
    assume(reference.conv_output_size(h, k_h, 1, p_h, d_h) >= 1 and reference.conv_output_size(w, k_w, 1, p_w, d_w) >= 1)
    rng = np.random.default_rng(seed)
    groups, c_group, o_group = 2, int(rng.integers(1, 3)), int(rng.integers(1, 3))
    x, wt, b = operands((n, groups * c_group, h, w), groups, o_group, (k_h, k_w), rng, np.float64)
    with mock.patch.object(depthwise, "ITEM_ELEMENTS", item_elements):
        check_against_reference(x, wt, b, (1, 1), (p_h, p_w), (d_h, d_w), groups, np.float64, rng)


def test_shared_border_sizes():
    """16x16, 3x3, pad 1: rows of 17 (16 data + 1 shared zero), grad_output 1 column in; pad wider than the
    kernel: no grad_output margin, and the row still holds the whole output."""
    assert depthwise._shared_border(16, 1, 16, 2) == (17, 1)
    assert depthwise._shared_border(4, 5, 12, 2) == (12, 0)
    assert depthwise._shared_border(7, 0, 5, 2) == (7, 2)

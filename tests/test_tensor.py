"""The tape: gradients of every Tensor operation, accumulation, broadcasting,
no_grad, detach, a diamond-shaped graph, and the errors on bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tinyconv
from tinyconv import Tensor, gradcheck
from tinyconv.gradcheck import GradcheckError

SETTINGS = settings(max_examples=25, deadline=None)


def leaf(shape, seed=0, low=-2.0, high=2.0):
    rng = np.random.default_rng(seed)
    return Tensor(rng.uniform(low, high, size=shape), requires_grad=True)


def positive(shape, seed=0):
    return leaf(shape, seed, 0.5, 2.0)


# ---- dtypes and construction -----------------------------------------------
def test_float32_by_default_float64_kept():
    assert Tensor([1, 2, 3]).dtype == np.float32
    assert Tensor([1.5, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(3)).dtype == np.float64
    assert Tensor(np.zeros(3, dtype=np.int64)).dtype == np.float32
    assert Tensor(np.zeros(3), dtype="float32").dtype == np.float32


def test_bad_dtypes_are_type_errors():
    with pytest.raises(TypeError, match="numeric"):
        Tensor(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="float32 or float64"):
        Tensor([1, 2], dtype=np.int32)
    with pytest.raises(TypeError):
        Tensor([1.0]) + "text"


# ---- element-wise and binary ops -----------------------------------------
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


@SETTINGS
@given(broadcast_pairs, st.sampled_from(["+", "-", "*", "/"]))
def test_binary_ops_with_broadcasting(shapes, op):
    a_shape, b_shape = shapes.input_shapes
    a, b = leaf(a_shape, 1), positive(b_shape, 2)
    fns = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x / y}
    assert gradcheck(fns[op], [a, b])
    out = fns[op](a, b)
    out.backward(np.ones(out.shape))
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


@pytest.mark.parametrize("fn", [
    lambda x: x.exp(), lambda x: x.log(), lambda x: x.sqrt(), lambda x: x ** 3, lambda x: x ** -0.5,
    lambda x: -x, lambda x: 2.0 / x, lambda x: 3.0 - x, lambda x: 2.0 ** x, lambda x: x ** x, lambda x: x.abs(),
])
def test_unary_ops(fn):
    assert gradcheck(fn, [positive((2, 3))])


def test_scalars_and_arrays_on_either_side():
    x = leaf((3,))
    y = 1.0 + 2 * x - np.ones(3) * x / 4
    assert isinstance(y, Tensor) and y.dtype == np.float64
    assert isinstance(np.ones(3) * x, Tensor)


def test_shapes_that_cannot_broadcast():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        leaf((2, 3)) + leaf((4,))


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)),
                                             ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 2))])
def test_matmul(a_shape, b_shape):
    assert gradcheck(lambda a, b: a @ b, [leaf(a_shape, 1), leaf(b_shape, 2)])


def test_matmul_shape_error():
    with pytest.raises(ValueError, match="matmul"):
        leaf((2, 3)) @ leaf((2, 3))


def test_comparisons_give_plain_arrays():
    x = Tensor([1.0, 2.0, 3.0])
    assert isinstance(x > 1.5, np.ndarray)
    assert (x == Tensor([1.0, 0.0, 3.0])).tolist() == [True, False, True]


# ---- reductions and shape ops ----------------------------------------------
@SETTINGS
@given(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), st.data())
def test_reductions(shape, data):
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    keepdims = data.draw(st.booleans())
    # distinct values: max has no ties, so it is differentiable
    x = Tensor(np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape) * 0.1, requires_grad=True)
    for reduce in ("sum", "mean", "max"):
        assert gradcheck(lambda t: getattr(t, reduce)(axis=axis, keepdims=keepdims), [x])


def test_max_splits_gradient_between_ties():
    x = Tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    assert x.grad.tolist() == [0.0, 0.5, 0.5]


def test_shape_ops():
    x = leaf((2, 3, 4))
    assert gradcheck(lambda t: t.reshape(4, 6), [x])
    assert gradcheck(lambda t: t.reshape((-1,)), [x])
    assert gradcheck(lambda t: t.permute(2, 0, 1), [x])
    assert gradcheck(lambda t: t.transpose(0, 2), [x])
    assert gradcheck(lambda t: t.flatten(1), [x])
    assert gradcheck(lambda t: t.T, [x])
    assert x.flatten(1).shape == (2, 12)
    assert gradcheck(lambda t: t.pad(((0, 0), (1, 2), (0, 1)), value=3.0), [x])
    with pytest.raises(ValueError, match="reshape"):
        x.reshape(5, 5)
    with pytest.raises(ValueError, match="permutation"):
        x.permute(0, 0, 1)


@pytest.mark.parametrize("index", [1, slice(None, None, 2), (Ellipsis, 1), (slice(1), [0, 0, 2]),
                                   np.array([[0, 1], [1, 1]])])
def test_indexing_accumulates_repeated_indices(index):
    assert gradcheck(lambda t: t[index], [leaf((3, 4))])


def test_concat_and_stack():
    a, b = leaf((2, 3), 1), leaf((2, 1), 2)
    assert gradcheck(lambda x, y: tinyconv.concat([x, y], axis=1), [a, b])
    c, d = leaf((2, 3), 3), leaf((2, 3), 4)
    assert gradcheck(lambda x, y: tinyconv.stack([x, y], axis=1), [c, d])
    assert tinyconv.stack([c, d], axis=-1).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="concat"):
        tinyconv.concat([a, leaf((3, 3))], axis=1)
    with pytest.raises(ValueError, match="one shape"):
        tinyconv.stack([a, b])


# ---- the tape itself --------------------------------------------------------
def test_tensor_used_twice_gets_both_contributions():
    x = Tensor([3.0], requires_grad=True)
    (x * x + x).sum().backward()  # d/dx (x² + x) = 2x + 1
    assert x.grad.tolist() == [7.0]


def test_gradients_accumulate_across_backward_calls_and_are_reentrant():
    x = leaf((3,))
    y = (x * x).sum()
    y.backward()
    first = x.grad.copy()
    y.backward()
    np.testing.assert_array_equal(x.grad, 2 * first)
    x.zero_grad()
    y.backward()
    np.testing.assert_array_equal(x.grad, first)


def test_diamond_graph():
    # a -> b, c -> d: both paths reach a
    a = Tensor([2.0], requires_grad=True)
    b = a * 3
    c = a.exp()
    d = (b * c).sum()
    d.backward()
    np.testing.assert_allclose(a.grad, 3 * np.exp(2.0) + 3 * 2.0 * np.exp(2.0), rtol=1e-6)
    assert gradcheck(lambda t: (t * 3) * t.exp(), [Tensor(np.array([2.0]), requires_grad=True)])


def test_deep_graph_does_not_hit_recursion_limit():
    x = Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 5000], rtol=1e-4)


def test_no_grad_records_nothing():
    x = leaf((2,))
    with tinyconv.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    assert tinyconv.is_grad_enabled()
    with pytest.raises(ValueError, match="does not require grad"):
        y.sum().backward()


def test_detach_cuts_the_graph():
    x = leaf((2,))
    y = (x.detach() * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad, x.data)


def test_only_leaves_keep_grad_unless_retained():
    x = leaf((2,))
    h = x * 2
    k = (x * 3).retain_grad()
    (h + k).sum().backward()
    assert h.grad is None
    np.testing.assert_array_equal(k.grad, np.ones(2))


def test_stored_grads_never_alias_each_other_or_the_seed():
    # x + y hands one array to both leaves; reshape hands on a view; the seed is the caller's: a .grad
    # changed in place (clip_grad_norm_) must not change another .grad or the caller's array
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    seed = np.arange(3.0)
    (a + b).backward(seed)
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(seed, [0.0, 1.0, 2.0])
    leaf = Tensor(np.ones(3), requires_grad=True)
    leaf.backward(seed)
    leaf.grad += 1
    np.testing.assert_array_equal(seed, [0.0, 1.0, 2.0])
    r = Tensor(np.ones(6), requires_grad=True)
    upstream = np.ones((2, 3))
    r.reshape(2, 3).backward(upstream)
    assert not np.shares_memory(r.grad, upstream)


def doubled(x):
    """(y = 2·x recorded on the tape, made): made collects the fresh arrays y's backward returns."""
    made = []

    def backward(g):
        made.append(g * 2.0)
        return (made[-1],)

    return Tensor._make(x.data * 2.0, (x,), backward, "double"), made


def test_a_fresh_gradient_is_kept_without_a_copy():
    # the one array a backward made for one leaf alone is stored as it is (saves a copy per leaf)
    x = Tensor(np.ones(4), requires_grad=True)
    y, made = doubled(x)
    y.backward(np.ones(4))
    assert x.grad is made[0]


def test_backward_errors():
    x = leaf((2, 2))
    with pytest.raises(ValueError, match="single-element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(ValueError, match="does not require grad"):
        Tensor([1.0]).backward()


def test_grad_dtype_follows_each_leaf():
    a = Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    b = Tensor(np.ones(2, dtype=np.float64), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_zero_grad_output_gives_zero_grads():
    x = leaf((3, 2))
    y = (x.exp() @ leaf((2, 2), 5)).sum(axis=1)
    y.backward(np.zeros(3))
    np.testing.assert_array_equal(x.grad, np.zeros((3, 2)))


# ---- gradcheck itself --------------------------------------------------------
def test_gradcheck_catches_a_wrong_gradient():
    def wrong_square(t):
        return Tensor._make(t.data ** 2, (t,), lambda g: (g * 3 * t.data,), "wrong")

    x = leaf((3,))
    with pytest.raises(GradcheckError, match="analytic"):
        gradcheck(wrong_square, [x])
    with pytest.raises(GradcheckError):
        gradcheck(wrong_square, [x], fast_mode=True)


def test_gradcheck_needs_an_input_requiring_grad():
    with pytest.raises(ValueError, match="requires grad"):
        gradcheck(lambda t: t * 2, [Tensor([1.0])])


def test_gradcheck_leaves_inputs_unchanged():
    x = leaf((2, 2))
    before = x.data.copy()
    gradcheck(lambda t: t.exp(), [x])
    np.testing.assert_array_equal(x.data, before)


def test_joins_add_in_place_only_into_arrays_the_tape_owns():
    # a residual join: the first contribution, made fresh for x alone, takes the second in place
    x = Tensor(np.ones(4), requires_grad=True)
    y, made = doubled(x)
    (y + x * 3.0).backward(np.arange(4.0))
    assert x.grad is made[0]
    np.testing.assert_array_equal(x.grad, 5.0 * np.arange(4.0))
    # contributions that are the seed itself, or one array handed to two parents, are never changed
    seed = np.arange(4.0)
    a, b = Tensor(np.ones(4), requires_grad=True), Tensor(np.ones(4), requires_grad=True)
    s = a + b
    (s + a).backward(seed)   # a receives the seed twice, b once
    np.testing.assert_array_equal(seed, np.arange(4.0))
    np.testing.assert_array_equal(a.grad, 2.0 * seed)
    np.testing.assert_array_equal(b.grad, seed)
    c = Tensor(np.ones(4), requires_grad=True)
    d = Tensor(np.ones(4), requires_grad=True)
    t = c * 2.0               # t's grad (2·seed, fresh) goes on to both parents of u = t + d unchanged
    (((t + d) * 1.0) + c).backward(seed)
    np.testing.assert_array_equal(d.grad, seed)
    np.testing.assert_array_equal(c.grad, 3.0 * seed)


@pytest.mark.parametrize("index", [(slice(None), slice(None, None, -2)), (Ellipsis, None, np.int64(-1)),
                                   (1, slice(1, 3)), slice(None), (np.array([True, False, True]),),
                                   ([0, 0], slice(None))])
def test_indexing_backward_equals_add_at(index):
    # basic indices take a slice assignment, advanced ones np.add.at: both must give the add.at sum
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    y = x[index]
    g = np.random.default_rng(0).normal(size=y.shape)
    y.backward(g)
    expected = np.zeros((3, 4))
    np.add.at(expected, index, g)
    np.testing.assert_array_equal(x.grad, expected)

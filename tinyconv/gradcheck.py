"""gradcheck: compare the tape's gradients with central finite differences.

For a function f of tensors x_1..x_k returning a tensor y, the tape computes
vector-Jacobian products  vᵀ·∂y/∂x_i.  The numeric side perturbs one input
element at a time:

    ∂y/∂x[j]  ≈  (f(x + eps·e_j) - f(x - eps·e_j)) / (2·eps)      error O(eps²)

Two modes, as in PyTorch's gradcheck:

* full (default): the whole Jacobian.  The numeric Jacobian costs two
  forward calls per input element; the analytic one, one backward call per
  output element (with a unit vector as `grad`).  Use tiny shapes.
* fast_mode=True: one random direction u on the output and one random
  direction v on the inputs.  analytic = Σ_i <uᵀ·∂y/∂x_i, v_i>,
  numeric = <u, (f(x + eps·v) - f(x - eps·v)) / (2·eps)>.  Two forward
  calls and one backward call, whatever the size.

Inputs are copied to float64 (float32 has too few digits for eps = 1e-6).
A mismatch raises `GradcheckError` naming the input, the worst element's
index, and the analytic and numeric values; success returns True.
"""
import numpy as np

from tinyconv.tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when analytic and numeric gradients disagree."""


def _prepare(inputs):
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    prepared = []
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor):
            prepared.append(Tensor(t.data.astype(np.float64), requires_grad=t.requires_grad))
        elif isinstance(t, np.ndarray) and t.dtype.kind == "f":
            prepared.append(Tensor(t.astype(np.float64), requires_grad=True))
        else:
            prepared.append(t)  # integers, tuples, ...: passed through untouched
    differentiable = [i for i, t in enumerate(prepared) if isinstance(t, Tensor) and t.requires_grad]
    if not differentiable:
        raise ValueError("gradcheck: no input requires grad; pass Tensors with requires_grad=True")
    return prepared, differentiable


def _output(fn, inputs):
    y = fn(*inputs)
    if not isinstance(y, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(y).__name__}")
    return y


def _analytic_vjp(fn, inputs, differentiable, u):
    """Σ_out u·∂y/∂x_i for each differentiable input (one backward call)."""
    for i in differentiable:
        inputs[i].grad = None
    y = _output(fn, inputs)
    if not y.requires_grad:
        return [np.zeros_like(inputs[i].data) for i in differentiable]
    y.backward(u.reshape(y.shape))
    return [np.zeros_like(inputs[i].data) if inputs[i].grad is None else inputs[i].grad.copy()
            for i in differentiable]


def _check(name, index, analytic, numeric, atol, rtol):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    if (excess > 0).any() or not np.isfinite(analytic).all():
        worst = np.unravel_index(np.nanargmax(np.where(np.isfinite(excess), excess, np.inf)), excess.shape)
        raise GradcheckError(
            f"gradcheck failed for {name}{index(worst)}: analytic {float(analytic[worst])!r} vs numeric "
            f"{float(numeric[worst])!r} (|diff| {abs(analytic[worst] - numeric[worst]):.3g} > "
            f"atol {atol} + rtol {rtol}·|numeric|)")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=False, seed=0):
    """Check the gradients of `fn(*inputs)` against central differences.

    fn      a function of the inputs returning a Tensor (any shape)
    inputs  Tensors (those with requires_grad=True are checked), float
            arrays (checked), or anything else (passed through)

    Returns True, or raises GradcheckError with the worst element.

    >>> import tinyconv
    >>> x = tinyconv.Tensor(np.array([0.5, -1.5]), requires_grad=True)
    >>> gradcheck(lambda t: (t * t * t).sum(), [x])
    True
    """
    inputs, differentiable = _prepare(inputs)
    rng = np.random.default_rng(seed)
    y0 = _output(fn, inputs).data.astype(np.float64)

    def f(k, flat_index, delta):
        """Output with input k's element `flat_index` (or direction) moved by delta."""
        x = inputs[k].data
        saved = x.copy()
        if flat_index is None:
            x += delta
        else:
            x.reshape(-1)[flat_index] += delta
        try:
            return _output(fn, inputs).data.astype(np.float64)
        finally:
            x[...] = saved

    if fast_mode:
        u = rng.standard_normal(y0.shape)
        directions = {k: rng.standard_normal(inputs[k].shape) for k in differentiable}
        grads = _analytic_vjp(fn, inputs, differentiable, u)
        analytic = sum(float((g * directions[k]).sum()) for g, k in zip(grads, differentiable))
        plus = _shift_all(fn, inputs, directions, eps)
        minus = _shift_all(fn, inputs, directions, -eps)
        numeric = float((u * (plus - minus)).sum() / (2 * eps))
        _check("the directional derivative", lambda w: "", np.array(analytic), np.array(numeric), atol, rtol)
        return True

    for pos, k in enumerate(differentiable):
        x = inputs[k].data
        numeric = np.empty((x.size, y0.size))
        for j in range(x.size):
            numeric[j] = ((f(k, j, eps) - f(k, j, -eps)) / (2 * eps)).ravel()
        analytic = np.empty_like(numeric)
        for m in range(y0.size):
            u = np.zeros(y0.size)
            u[m] = 1.0
            analytic[:, m] = _analytic_vjp(fn, inputs, differentiable, u)[pos].ravel()

        def where(worst, shape=x.shape, out_shape=y0.shape):
            in_index = tuple(int(i) for i in np.unravel_index(worst[0], shape))
            out_index = tuple(int(i) for i in np.unravel_index(worst[1], out_shape))
            return f" input {k} at {in_index} -> output at {out_index}"

        _check("d(output)/d(input)", where, analytic, numeric, atol, rtol)
    return True


def gradcheck_module(module, inputs, fast_mode=True, seed=0, **tolerances):
    """gradcheck of `module(*inputs)` with respect to the inputs AND every parameter.

    The module is converted to float64 in place (`module.double()`).
    gradcheck perturbs float64 copies of what it is given, so the
    parameters are passed in as extra inputs and swapped into the module for
    each call, then put back.
    """
    module.double()
    slots = [(m, name) for m in module.modules() for name, p in m._parameters.items() if p is not None]
    originals = [m._parameters[name] for m, name in slots]
    inputs = list(inputs)
    n = len(inputs)

    def fn(*args):
        for (m, name), p in zip(slots, args[n:]):
            m._parameters[name] = p
        try:
            return module(*args[:n])
        finally:
            for (m, name), p in zip(slots, originals):
                m._parameters[name] = p

    params = [Tensor(p.data.copy(), requires_grad=True) for p in originals]
    return gradcheck(fn, inputs + params, fast_mode=fast_mode, seed=seed, **tolerances)


def _shift_all(fn, inputs, directions, delta):
    saved = {k: inputs[k].data.copy() for k in directions}
    try:
        for k, v in directions.items():
            inputs[k].data += delta * v
        return _output(fn, inputs).data.astype(np.float64)
    finally:
        for k, x in saved.items():
            inputs[k].data[...] = x


def _op_cases(rng):
    """(name, fn, inputs) for every differentiable op, on tiny float64 inputs."""
    import tinyconv.functional as F

    def t(*shape, low=-2.0, high=2.0):
        return Tensor(rng.uniform(low, high, size=shape), requires_grad=True)

    def distinct(*shape):
        """No ties, so max-pool is differentiable everywhere we look."""
        return Tensor(rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1, requires_grad=True)

    def offsets(n, taps, h, w):
        """Offsets whose fractional part stays in [0.2, 0.8]: away from bilinear's kinks."""
        whole = rng.integers(-1, 1, size=(n, 2 * taps, h, w))
        return Tensor(whole + rng.uniform(0.2, 0.8, size=whole.shape), requires_grad=True)

    labels = np.array([0, 2, 1])
    return [
        ("relu", F.relu, [t(3, 4)]),
        ("leaky_relu", F.leaky_relu, [t(3, 4)]),
        ("sigmoid", F.sigmoid, [t(3, 4)]),
        ("tanh", F.tanh, [t(3, 4)]),
        ("elu", F.elu, [t(3, 4)]),
        ("softmax", F.softmax, [t(3, 4)]),
        ("log_softmax", F.log_softmax, [t(3, 4)]),
        ("linear", F.linear, [t(3, 5), t(2, 5), t(2)]),
        ("cross_entropy", lambda z: F.cross_entropy(z, labels, label_smoothing=0.1), [t(3, 4)]),
        ("mse_loss", F.mse_loss, [t(3, 4), t(3, 4)]),
        ("normalize", F.normalize, [t(3, 4)]),
        ("focal_loss", lambda z: F.focal_loss(z, labels, mode="softmax"), [t(3, 4)]),
        ("triplet_margin_loss", F.triplet_margin_loss, [t(3, 4), t(3, 4), t(3, 4)]),
        ("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [t(2, 2, 5, 5), t(3, 2, 3, 3), t(3)]),
        ("conv2d dilated", lambda x, w: F.conv2d(x, w, dilation=2, padding=2), [t(1, 2, 5, 5), t(2, 2, 3, 3)]),
        ("conv2d grouped", lambda x, w: F.conv2d(x, w, groups=2), [t(1, 4, 4, 4), t(4, 2, 1, 3)]),
        ("conv2d depthwise", lambda x, w: F.conv2d(x, w, padding=1, groups=2), [t(1, 2, 4, 4), t(4, 1, 3, 3)]),
        ("conv_transpose2d", lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
         [t(1, 2, 3, 3), t(2, 3, 3, 3), t(3)]),
        ("deform_conv2d", lambda x, o, w, m: F.deform_conv2d(x, o, w, padding=1, mask=m),
         [t(1, 2, 4, 4), offsets(1, 4, 5, 5), t(2, 2, 2, 2), t(1, 4, 5, 5, low=0.1, high=1.0)]),
        ("max_pool2d", lambda x: F.max_pool2d(x, 2, stride=1), [distinct(1, 2, 4, 4)]),
        ("avg_pool2d", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), [t(1, 2, 5, 5)]),
        ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 2), [t(1, 2, 5, 5)]),
        ("batch_norm (training)", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
         [t(3, 2, 2, 2), t(2), t(2)]),
        ("channel_shuffle", lambda x: F.channel_shuffle(x, 2), [t(1, 4, 2, 2)]),
        ("interpolate (bilinear)", lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), [t(1, 1, 3, 3)]),
    ]


def check_ops(print_fn=print, seed=0):
    """Run gradcheck on every op; print one line per op; return the failures."""
    import time

    failures = []
    for name, fn, inputs in _op_cases(np.random.default_rng(seed)):
        start = time.perf_counter()
        try:
            gradcheck(fn, inputs)
            status = "ok"
        except GradcheckError as error:
            failures.append(name)
            status = f"FAILED: {error}"
        print_fn(f"{name:<24} {status:<6} {1000 * (time.perf_counter() - start):8.1f} ms")
    print_fn(f"{len(failures)} of the ops failed" if failures else "all gradients match finite differences")
    return failures

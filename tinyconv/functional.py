"""Differentiable functions, named and ordered as in `torch.nn.functional`.

Every function here does three things, always in this order:

1. validate its arguments, raising ValueError/TypeError that names the
   argument, its value and what was expected (no jitted kernel ever sees a
   bad shape);
2. compute the output with NumPy or a `kernels.<op>_forward`;
3. return `Tensor._make(output, parents, backward, name)`, where
   `backward(grad_output)` returns one gradient per parent.

This module never loops over pixels itself: the loops live in `kernels/`.
"""
import numbers

import numpy as np

from kernels import activation, batchnorm, pool, shuffle
from kernels import conv2d as dense_conv, conv_transpose, deform, depthwise
from kernels.im2col import conv_output_size
from tinyconv import cuda, random
from tinyconv.tensor import Tensor


# ---------------------------------------------------------------------------
# argument checking shared by every op
# ---------------------------------------------------------------------------
def _check_tensor(x, name, ndim=None):
    """`x` as a float Tensor (arrays are wrapped), or a clear error."""
    if isinstance(x, np.ndarray):
        x = Tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return x


def _pair(value, name, minimum=None):
    """An int or a pair of ints -> (h, w), each checked against `minimum`."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value) \
        if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                 for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = (int(pair[0]), int(pair[1]))
    if minimum is not None and min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _same_dtype(name, x, other):
    if other.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but input has dtype {x.dtype}; convert one of them")


def _device(op, **tensors):
    """The one device ('cpu' or 'cuda') that all the named tensors (None skipped) are on, else ValueError."""
    devices = [(name, t.device) for name, t in tensors.items() if t is not None]
    for name, device in devices[1:]:
        if device != devices[0][1]:
            raise ValueError(f"{op}: {devices[0][0]} is on device '{devices[0][1]}' but {name} is on '{device}'; "
                             f"move them to one device with .to()")
    return devices[0][1]


def _on(device, kernels_module):
    """kernels/<op>.py on the CPU; on 'cuda' its kernels/cuda/<op>.py twin (same names and arguments)."""
    return kernels_module if device == "cpu" else cuda.twin(kernels_module)


def _contiguous(data):
    """A C-contiguous NumPy array (device arrays always are)."""
    return np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data


def _parents_and_grads(tensors, grads):
    """Drop None entries (an absent bias) from parents and their gradients alike."""
    return tuple(t for t in tensors if t is not None), tuple(g for t, g in zip(tensors, grads) if t is not None)


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------
def _elementwise(x, y, local_grad, name):
    """y = f(x) applied element-wise; backward multiplies by f'(x)."""
    return Tensor._make(y, (x,), lambda g: (g * local_grad(),), name)


def relu(input):
    """max(x, 0); on the CPU one compiled pass each way (kernels/activation.py)."""
    x = _check_tensor(input, "input")
    if x.device != "cpu":
        return _elementwise(x, np.maximum(x.data, 0), lambda: x.data > 0, "relu")
    y = activation.relu_forward(x.data)
    return Tensor._make(y, (x,), lambda g: (activation.relu_backward(g, y),), "relu")  # y > 0 exactly where x > 0


def relu6(input):
    x = _check_tensor(input, "input")
    return _elementwise(x, np.clip(x.data, 0, 6), lambda: (x.data > 0) & (x.data < 6), "relu6")


def leaky_relu(input, negative_slope=0.01):
    x = _check_tensor(input, "input")
    slope = np.where(x.data > 0, 1, negative_slope).astype(x.dtype)
    return _elementwise(x, x.data * slope, lambda: slope, "leaky_relu")


def elu(input, alpha=1.0):
    x = _check_tensor(input, "input")
    neg = alpha * np.expm1(np.minimum(x.data, 0))
    y = np.where(x.data > 0, x.data, neg)
    return _elementwise(x, y, lambda: np.where(x.data > 0, 1, neg + alpha), "elu")


def sigmoid(input):
    x = _check_tensor(input, "input")
    y = 0.5 * (1 + np.tanh(0.5 * x.data))  # stable for large |x|
    return _elementwise(x, y, lambda: y * (1 - y), "sigmoid")


def tanh(input):
    x = _check_tensor(input, "input")
    y = np.tanh(x.data)
    return _elementwise(x, y, lambda: 1 - y * y, "tanh")


def softmax(input, dim=-1):
    """softmax(x)_i = exp(x_i - max) / Σ_j exp(x_j - max); backward y·(g - Σ g·y)."""
    x = _check_tensor(input, "input")
    e = np.exp(x.data - x.data.max(axis=dim, keepdims=True))
    y = e / e.sum(axis=dim, keepdims=True)
    return Tensor._make(y, (x,), lambda g: (y * (g - (g * y).sum(axis=dim, keepdims=True)),), "softmax")


def log_softmax(input, dim=-1):
    """log_softmax(x) = x - logsumexp(x); backward g - softmax·Σ g."""
    x = _check_tensor(input, "input")
    shifted = x.data - x.data.max(axis=dim, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    return Tensor._make(y, (x,), lambda g: (g - np.exp(y) * g.sum(axis=dim, keepdims=True),), "log_softmax")


# ---------------------------------------------------------------------------
# linear layers and regularisation
# ---------------------------------------------------------------------------
def linear(input, weight, bias=None):
    """y = x·Wᵀ + b, with W of shape (out_features, in_features)."""
    x = _check_tensor(input, "input")
    weight = _check_tensor(weight, "weight", ndim=2)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input's last dimension must be in_features = {weight.shape[1]}, got shape {x.shape}")
    y = x @ weight.T
    if bias is not None:
        bias = _check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
        y = y + bias
    return y


def dropout(input, p=0.5, training=True, generator=None):
    """Zero each element with probability p, scale the rest by 1/(1-p).

    `generator` is a `numpy.random.Generator` (seed it for reproducible
    masks); the default draws from tinyconv's global generator
    (`tinyconv.manual_seed`).
    """
    x = _check_tensor(input, "input")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    rng = generator if generator is not None else random.get_generator()
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / (1 - p) if p < 1 else np.zeros(x.shape, x.dtype)
    keep = cuda.to_device(keep, x.device)  # drawn on the host: the same mask on either device
    return Tensor._make(x.data * keep, (x,), lambda g: (g * keep,), "dropout")


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _class_targets(target, n, num_classes, name="target"):
    """Integer class labels as an int64 array of shape (n,), range-checked."""
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(t == np.round(t)):
            t = t.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {t.shape}")
    if n and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"{name} values must lie in [0, {num_classes - 1}], got min {t.min()} max {t.max()}")
    return t.astype(np.int64)


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def cross_entropy(input, target, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,).

    With smoothing ε the target distribution is q = (1-ε)·onehot + ε/C and
    loss_n = -Σ_c q_c·log_softmax(x_n)_c. Fused: the gradient with respect to
    the logits is softmax(x_n) - q, scaled by 1/N for the mean.
    """
    x = _check_tensor(input, "input", ndim=2)
    _check_reduction(reduction)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    n, num_classes = x.shape
    t = _class_targets(target, n, num_classes)
    if x.device != "cpu":
        return _cross_entropy_device(x, t, reduction, label_smoothing)
    shifted = x.data - x.data.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    q = np.full(x.shape, label_smoothing / num_classes, dtype=x.dtype)
    q[np.arange(n), t] += 1 - label_smoothing
    per_sample = -(q * log_probs).sum(axis=1)
    scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0

    def backward(g):
        g = g[:, None] if reduction == "none" else g * scale
        return ((np.exp(log_probs) - q) * g,)

    out = per_sample if reduction == "none" else np.asarray(per_sample.sum() * scale, dtype=x.dtype)
    return Tensor._make(out, (x,), backward, "cross_entropy")


def _cross_entropy_device(x, t, reduction, label_smoothing):
    """cross_entropy on 'cuda': the same maths, fused in kernels/cuda/loss.py (labels are copied to the device)."""
    kernels = cuda.device_kernels("loss")
    t = cuda.to_device(t, "cuda")
    per_sample, log_probs = kernels.cross_entropy_forward(x.data, t, label_smoothing)
    scale = 1.0 / max(x.shape[0], 1) if reduction == "mean" else 1.0

    def backward(g):
        return (kernels.cross_entropy_backward(g, log_probs, t, label_smoothing, scale),)

    out = per_sample if reduction == "none" else per_sample.sum() * scale
    return Tensor._make(out, (x,), backward, "cross_entropy")


def nll_loss(input, target, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C): -input[n, target[n]]."""
    x = _check_tensor(input, "input", ndim=2)
    _check_reduction(reduction)
    t = _class_targets(target, x.shape[0], x.shape[1])
    return _reduce(-x[np.arange(x.shape[0]), t], reduction)


def mse_loss(input, target, reduction="mean"):
    x = _check_tensor(input, "input")
    target = target if isinstance(target, Tensor) else Tensor(np.asarray(target, dtype=x.dtype))
    if target.shape != x.shape:
        raise ValueError(f"target must have the input's shape {x.shape}, got {target.shape}")
    _check_reduction(reduction)
    diff = x - target
    return _reduce(diff * diff, reduction)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    """x / max(‖x‖_p, eps) along `dim` (L2 by default), as FaceNet's embeddings."""
    x = _check_tensor(input, "input")
    if p != 2.0:
        raise ValueError(f"normalize supports p=2 only, got p={p}")
    norm = (x * x).sum(axis=dim, keepdims=True).sqrt()
    safe = Tensor(np.full_like(norm.data, eps))  # on x's device
    return x / _maximum(norm, safe)


def _maximum(a, b):
    pick_a = a.data >= b.data
    return Tensor._make(np.where(pick_a, a.data, b.data), (a, b), lambda g: (g * pick_a, g * ~pick_a), "maximum")


# ---------------------------------------------------------------------------
# convolution (conv2d, conv_transpose2d, deform_conv2d): see kernels/conv2d.py,
# kernels/conv_transpose.py, kernels/depthwise.py, kernels/deform.py
# ---------------------------------------------------------------------------
def _check_conv_operands(op, input, weight, bias, groups, weight_in_axis):
    """Tensors (input, weight, bias) and groups, checked: 4-D, one dtype, channels divisible by groups.

    weight_in_axis is the weight axis holding C_in/groups channels: 1 for conv2d (C_out, C_in/G, k_h, k_w),
    and for conv_transpose2d the weight is (C_in, C_out/G, k_h, k_w), so its axis 0 holds all C_in.
    """
    x = _check_tensor(input, "input", ndim=4)
    weight = _check_tensor(weight, "weight", ndim=4)
    _same_dtype("weight", x, weight)
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    if min(x.shape[1:]) < 1 or min(weight.shape) < 1:
        raise ValueError(f"{op}: input {x.shape} and weight {weight.shape} must have no zero-sized channel, "
                         f"height or width axis")
    c_in = x.shape[1]
    if c_in % groups:
        raise ValueError(f"{op}: input channels C_in = {c_in} must be divisible by groups = {groups}")
    expected = c_in // groups if weight_in_axis == 1 else c_in
    if weight.shape[weight_in_axis] != expected:
        raise ValueError(f"{op}: weight {weight.shape} must have {expected} channels on axis {weight_in_axis} "
                         f"(input has C_in = {c_in}, groups = {groups})")
    if bias is not None:
        bias = _check_tensor(bias, "bias", ndim=1)
        _same_dtype("bias", x, bias)
    return x, weight, bias


def _check_bias_size(op, bias, c_out):
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"{op}: bias must have shape ({c_out},) = (C_out,), got {bias.shape}")


def _same_padding(x, kernel_size, stride, dilation):
    """padding='same' as PyTorch: total d·(k-1) per axis, half on each side, the odd one on the right/bottom.

    Returns (x, padding): the symmetric part as padding, the odd extra row/column padded into x.
    """
    if stride != (1, 1):
        raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions, got stride={stride}")
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    extra_h, extra_w = total[0] % 2, total[1] % 2
    if extra_h or extra_w:
        x = x.pad(((0, 0), (0, 0), (0, extra_h), (0, extra_w)))
    return x, (total[0] // 2, total[1] // 2)


def _check_output_size(op, x, out, **arguments):
    if min(out) < 1:
        described = ", ".join(f"{name}={value!r}" for name, value in arguments.items())
        raise ValueError(f"{op}: the output would be {out[0]}x{out[1]} (empty) for input {x.shape} with {described}")


def _conv_result(y, operands, kernel_backward, op):
    """y on the tape; operands (x, weight, bias-or-None); kernel_backward(g, needs) -> one grad per operand."""
    def backward(grad_output):
        needs = tuple(t is not None and t.requires_grad for t in operands)
        return _parents_and_grads(operands, kernel_backward(grad_output, needs))[1]

    return Tensor._make(y, _parents_and_grads(operands, operands)[0], backward, op)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution, as torch.nn.functional.conv2d; the maths is in kernels/conv2d.py.

    input (N, C_in, H, W), weight (C_out, C_in/groups, k_h, k_w), bias (C_out,) or None.
    padding: an int, a pair, 'valid' (no padding) or 'same' (output as large as the
    input; stride 1 only, an odd total padding puts the extra row/column on the
    bottom/right, as PyTorch). On the CPU, convolutions with few input channels
    per group (depthwise included), and 3x3-like ones of up to 64 at stride 1
    (dense ones too), run the direct kernel of kernels/depthwise.py
    (depthwise.runs_direct says which); the rest kernels/conv2d.py's GEMM routes.
    """
    x, weight, bias = _check_conv_operands("conv2d", input, weight, bias, groups, weight_in_axis=1)
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_out % groups:
        raise ValueError(f"conv2d: output channels C_out = {c_out} (weight.shape[0]) must be divisible by "
                         f"groups = {groups}")
    _check_bias_size("conv2d", bias, c_out)
    stride, dilation = _pair(stride, "stride", 1), _pair(dilation, "dilation", 1)
    kernel_size = weight.shape[2:]
    if padding == "same":
        x, pad = _same_padding(x, kernel_size, stride, dilation)
    elif padding == "valid":
        pad = (0, 0)
    elif isinstance(padding, str):
        raise ValueError(f"conv2d: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    else:
        pad = _pair(padding, "padding", 0)
    out = tuple(conv_output_size(x.shape[2 + a], kernel_size[a], stride[a], pad[a], dilation[a]) for a in range(2))
    _check_output_size("conv2d", x, out, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)

    device = _device("conv2d", input=x, weight=weight, bias=bias)
    x_data, w_data = _contiguous(x.data), _contiguous(weight.data)
    b_data = None if bias is None else bias.data
    if device == "cpu" and depthwise.runs_direct(groups, c_in // groups, c_out // groups, kernel_size, stride,
                                                   x.shape[0] * out[0] * out[1]):
        y = depthwise.grouped_conv2d_forward(x_data, w_data, b_data, stride, pad, dilation, groups)

        def kernel_backward(g, needs):
            return depthwise.grouped_conv2d_backward(g, x_data, w_data, stride, pad, dilation, groups, needs)
    elif groups == c_in > 1 and c_out % c_in == 0:  # the GPU twin (kernels/cuda/depthwise.py) is depthwise only
        y = _on(device, depthwise).depthwise_conv2d_forward(x_data, w_data, b_data, stride, pad, dilation)

        def kernel_backward(g, needs):
            return _on(device, depthwise).depthwise_conv2d_backward(g, x_data, w_data, stride, pad, dilation, needs)
    else:
        y = _on(device, dense_conv).conv2d_forward(x_data, w_data, b_data, stride, pad, dilation, groups)

        def kernel_backward(g, needs):
            return _on(device, dense_conv).conv2d_backward(g, x_data, w_data, stride, pad, dilation, groups, needs)

    return _conv_result(y, (x, weight, bias), kernel_backward, "conv2d")


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed 2-D convolution, as torch.nn.functional.conv_transpose2d (note the order
    ..., output_padding, groups, dilation); the maths is in kernels/conv_transpose.py.

    input (N, C_in, H, W), weight (C_in, C_out/groups, k_h, k_w), bias (C_out,) or None;
    out = (H - 1)·stride - 2·padding + dilation·(k - 1) + output_padding + 1.
    """
    x, weight, bias = _check_conv_operands("conv_transpose2d", input, weight, bias, groups, weight_in_axis=0)
    c_out = weight.shape[1] * groups
    _check_bias_size("conv_transpose2d", bias, c_out)
    stride, dilation = _pair(stride, "stride", 1), _pair(dilation, "dilation", 1)
    pad, out_pad = _pair(padding, "padding", 0), _pair(output_padding, "output_padding", 0)
    if any(out_pad[a] >= stride[a] and out_pad[a] >= dilation[a] for a in range(2)):
        raise ValueError(f"conv_transpose2d: output_padding must be smaller than either stride or dilation, "
                         f"got output_padding={output_padding!r} with stride={stride} and dilation={dilation}")
    kernel_size = weight.shape[2:]
    out = tuple(conv_transpose.conv_transpose_output_size(x.shape[2 + a], kernel_size[a], stride[a], pad[a],
                                                          out_pad[a], dilation[a]) for a in range(2))
    _check_output_size("conv_transpose2d", x, out, kernel_size=kernel_size, stride=stride, padding=padding,
                       output_padding=output_padding, dilation=dilation)

    device = _device("conv_transpose2d", input=x, weight=weight, bias=bias)
    x_data, w_data = _contiguous(x.data), _contiguous(weight.data)
    kernels = _on(device, conv_transpose)
    y = kernels.conv_transpose2d_forward(x_data, w_data, None if bias is None else bias.data, stride, pad,
                                         out_pad, groups, dilation)

    def kernel_backward(g, needs):
        return kernels.conv_transpose2d_backward(g, x_data, w_data, stride, pad, out_pad, groups, dilation, needs)

    return _conv_result(y, (x, weight, bias), kernel_backward, "conv_transpose2d")


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution v1 (mask=None) and v2, as torchvision.ops.deform_conv2d; the maths is in
    kernels/deform.py.

    input (N, C_in, H, W); weight (C_out, C_in/G, k_h, k_w), the weight groups G = C_in / weight.shape[1];
    offset (N, 2·OG·k_h·k_w, out_h, out_w), interleaved (Δy, Δx) per tap t = p·k_w + q, the offset groups
    OG = offset.shape[1] / (2·k_h·k_w); mask (N, OG·k_h·k_w, out_h, out_w) or None; out_h, out_w as conv2d.
    """
    x = _check_tensor(input, "input", ndim=4)
    offset = _check_tensor(offset, "offset", ndim=4)
    weight = _check_tensor(weight, "weight", ndim=4)
    for name, t in (("offset", offset), ("weight", weight)):
        _same_dtype(name, x, t)
    if min(x.shape[1:]) < 1 or min(weight.shape) < 1:
        raise ValueError(f"deform_conv2d: input {x.shape} and weight {weight.shape} must have no zero-sized "
                         f"channel, height or width axis")
    (N, c_in, H, W), (c_out, c_g, k_h, k_w) = x.shape, weight.shape
    if c_in % c_g:
        raise ValueError(f"deform_conv2d: weight.shape[1] = {c_g} (C_in / groups) must divide the input "
                         f"channels C_in = {c_in}")
    groups = c_in // c_g
    if c_out % groups:
        raise ValueError(f"deform_conv2d: weight.shape[0] = {c_out} (C_out) must be divisible by the "
                         f"weight groups C_in / weight.shape[1] = {groups}")
    stride, dilation = _pair(stride, "stride", 1), _pair(dilation, "dilation", 1)
    pad = _pair(padding, "padding", 0)
    out = tuple(conv_output_size((H, W)[a], (k_h, k_w)[a], stride[a], pad[a], dilation[a]) for a in range(2))
    _check_output_size("deform_conv2d", x, out, kernel_size=(k_h, k_w), stride=stride, padding=padding,
                       dilation=dilation)
    taps = k_h * k_w
    offset_groups = offset.shape[1] // (2 * taps)
    if offset.shape[1] % (2 * taps) or offset_groups < 1 or c_in % offset_groups:
        raise ValueError(f"deform_conv2d: offset.shape[1] = {offset.shape[1]} must be 2·offset_groups·k_h·k_w "
                         f"= 2·offset_groups·{taps} with offset_groups dividing C_in = {c_in}")
    if offset.shape != (N, 2 * offset_groups * taps) + out:
        raise ValueError(f"deform_conv2d: offset must have shape (N, 2·offset_groups·k_h·k_w, out_h, out_w) = "
                         f"{(N, 2 * offset_groups * taps) + out}, got {offset.shape}")
    if mask is not None:
        mask = _check_tensor(mask, "mask", ndim=4)
        _same_dtype("mask", x, mask)
        if mask.shape != (N, offset_groups * taps) + out:
            raise ValueError(f"deform_conv2d: mask must have shape (N, offset_groups·k_h·k_w, out_h, out_w) = "
                             f"{(N, offset_groups * taps) + out}, got {mask.shape}")
    if bias is not None:
        bias = _check_tensor(bias, "bias", ndim=1)
        _same_dtype("bias", x, bias)
    _check_bias_size("deform_conv2d", bias, c_out)

    operands = (x, offset, weight, bias, mask)
    device = _device("deform_conv2d", input=x, offset=offset, weight=weight, bias=bias, mask=mask)
    x_data, off_data, w_data = (_contiguous(t.data) for t in (x, offset, weight))
    m_data = None if mask is None else _contiguous(mask.data)
    kernels = _on(device, deform)
    y = kernels.deform_conv2d_forward(x_data, off_data, w_data, None if bias is None else bias.data,
                                      stride, pad, dilation, m_data)

    def kernel_backward(g, needs):
        return kernels.deform_conv2d_backward(g, x_data, off_data, w_data, stride, pad, dilation, m_data, needs)

    return _conv_result(y, operands, kernel_backward, "deform_conv2d")



# ---------------------------------------------------------------------------
# pooling, normalisation, shuffling, resampling: see kernels/pool.py,
# kernels/batchnorm.py, kernels/shuffle.py
# ---------------------------------------------------------------------------
def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op):
    """Normalised (k, s, pad, d) and (out_h, out_w), with PyTorch's checks."""
    k = _pair(kernel_size, "kernel_size", 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride, "stride", 1)
    p = _pair(padding, "padding", 0)
    d = _pair(dilation, "dilation", 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{op}: padding must be at most half of kernel_size, got padding={padding!r} "
                         f"with kernel_size={kernel_size!r}")
    H, W = x.shape[2:]
    out = tuple(pool.pool_output_size(size, k[a], s[a], p[a], d[a], ceil_mode) for a, size in enumerate((H, W)))
    if min(out) < 1:
        raise ValueError(f"{op}: kernel_size={kernel_size!r} (dilation={dilation!r}) is larger than the input "
                         f"{H}x{W} padded by padding={padding!r}; the output would be {out[0]}x{out[1]}")
    return k, s, p, d, out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over each k_h x k_w window (padding reads -inf); see kernels/pool.py.

    stride defaults to kernel_size. With return_indices, also returns the
    int64 array of flat h·W + w argmax positions (as PyTorch).
    """
    x = _check_tensor(input, "input", ndim=4)
    k, s, p, d, out = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    for a, size in enumerate(x.shape[2:]):
        if (pool.window_taps(size, out[a], k[a], s[a], p[a], d[a])[1] == 0).any():
            raise ValueError(f"max_pool2d: with kernel_size={kernel_size!r}, dilation={dilation!r} and "
                             f"padding={padding!r} some window reads only padding (input {x.shape[2:]})")
    kernels = _on(x.device, pool)
    y, indices = kernels.max_pool2d_forward(x.data, k, s, p, d, bool(ceil_mode))
    shape = x.shape
    result = Tensor._make(y, (x,), lambda g: (kernels.max_pool2d_backward(g, indices, shape),), "max_pool2d")
    return (result, indices) if return_indices else result


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Mean over each window with PyTorch's divisor rules; see kernels/pool.py."""
    x = _check_tensor(input, "input", ndim=4)
    k, s, p, _, _ = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    ceil_mode, count_include_pad = bool(ceil_mode), bool(count_include_pad)
    kernels = _on(x.device, pool)
    y = kernels.avg_pool2d_forward(x.data, k, s, p, ceil_mode, count_include_pad)
    shape = x.shape

    def backward(g):
        return (kernels.avg_pool2d_backward(g, shape, k, s, p, ceil_mode, count_include_pad),)

    return Tensor._make(y, (x,), backward, "avg_pool2d")


def _adaptive_size(x, output_size):
    """output_size as (out_h, out_w); None keeps that input size (as PyTorch)."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(size if o is None else o for o, size in zip(output_size, x.shape[2:]))
    return _pair(output_size, "output_size", 1)


def adaptive_avg_pool2d(input, output_size):
    """Average over PyTorch's adaptive bins; output_size=1 is global average pooling."""
    x = _check_tensor(input, "input", ndim=4)
    size = _adaptive_size(x, output_size)
    shape = x.shape
    kernels = _on(x.device, pool)
    y = kernels.adaptive_avg_pool2d_forward(x.data, size)
    return Tensor._make(y, (x,), lambda g: (kernels.adaptive_avg_pool2d_backward(g, shape),), "adaptive_avg_pool2d")


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Max over PyTorch's adaptive bins; output_size=1 is global max pooling."""
    x = _check_tensor(input, "input", ndim=4)
    size = _adaptive_size(x, output_size)
    shape = x.shape
    kernels = _on(x.device, pool)
    y, indices = kernels.adaptive_max_pool2d_forward(x.data, size)
    result = Tensor._make(y, (x,), lambda g: (kernels.max_pool2d_backward(g, indices, shape),), "adaptive_max_pool2d")
    return (result, indices) if return_indices else result


def _running_stat(stat, name, channels):
    """A running statistic as the ndarray to update in place (a Tensor's .data), or None."""
    if stat is None:
        return None
    array = stat.data if isinstance(stat, Tensor) else stat
    if not isinstance(array, (np.ndarray, cuda.DeviceArray)) or array.dtype.kind != "f":
        raise TypeError(f"{name} must be a float NumPy array or Tensor, got {type(stat).__name__}")
    if array.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), one value per input channel, got {array.shape}")
    return array


def _channel_param(param, name, x):
    if param is None:
        return None
    param = _check_tensor(param, name)
    if param.shape != (x.shape[1],):
        raise ValueError(f"{name} must have shape ({x.shape[1]},), one value per input channel, got {param.shape}")
    _same_dtype(name, x, param)
    return param


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over every axis but 1; see kernels/batchnorm.py.

    training=True normalises with the batch's statistics and updates the
    running statistics IN PLACE (NumPy arrays or Tensors, may be None):
        running_mean ← (1 - momentum)·running_mean + momentum·mean
        running_var  ← (1 - momentum)·running_var  + momentum·var·M/(M-1)   (unbiased)
    training=False uses the running statistics (then an affine map of x).
    """
    x = _check_tensor(input, "input")
    if x.ndim < 2:
        raise ValueError(f"input must be (N, C) or (N, C, ...), got shape {x.shape}")
    C = x.shape[1]
    mean_stat = _running_stat(running_mean, "running_mean", C)
    var_stat = _running_stat(running_var, "running_var", C)
    weight, bias = _channel_param(weight, "weight", x), _channel_param(bias, "bias", x)
    if not isinstance(eps, numbers.Real) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    device = _device("batch_norm", input=x, weight=weight, bias=bias)
    for name, stat in (("running_mean", mean_stat), ("running_var", var_stat)):
        if stat is not None and cuda.device_of(stat) != device:
            raise ValueError(f"batch_norm: input is on device '{device}' but {name} is on '{cuda.device_of(stat)}'")
    kernels = _on(device, batchnorm)
    w, b = (None if weight is None else weight.data), (None if bias is None else bias.data)
    if training:
        M = x.size // C
        if M <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        y, mean, inv_std = kernels.batch_norm_forward(x.data, w, b, eps)
        if mean_stat is not None:
            mean_stat *= 1 - momentum
            mean_stat += momentum * mean
        if var_stat is not None:
            var = np.maximum(1.0 / inv_std.astype(np.float64) ** 2 - eps, 0.0)  # the biased batch variance
            var_stat *= 1 - momentum
            var_stat += momentum * var * M / (M - 1)

        def grads(g, needs):
            return kernels.batch_norm_backward(g, x.data, w, mean, inv_std, needs=needs)
    else:
        if mean_stat is None or var_stat is None:
            raise ValueError("running_mean and running_var must be given when training=False")
        mean, var = mean_stat.copy(), var_stat.copy()  # the values used now, whatever later steps do
        y = kernels.batch_norm_inference(x.data, mean, var, w, b, eps)

        def grads(g, needs):
            return kernels.batch_norm_inference_backward(g, x.data, mean, var, w, eps, needs=needs)

    tensors = (x, weight, bias)

    def backward(g):
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        return _parents_and_grads(tensors, grads(g, needs))[1]

    return Tensor._make(y, _parents_and_grads(tensors, tensors)[0], backward, "batch_norm")


def channel_shuffle(input, groups):
    """Interleave the channels of `groups` groups (ShuffleNet); see kernels/shuffle.py."""
    x = _check_tensor(input, "input")
    if x.ndim < 3:
        raise ValueError(f"input must have at least 3 dimensions (N, C, ...), got shape {x.shape}")
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the number of channels, got {x.shape[1]} channels")
    groups = int(groups)
    kernels = _on(x.device, shuffle)
    y = kernels.channel_shuffle_forward(x.data, groups)
    return Tensor._make(y, (x,), lambda g: (kernels.channel_shuffle_backward(g, groups),), "channel_shuffle")


def _resample_taps(in_size, out_size, scale_factor, mode, align_corners):
    """[(source index, weight), ...] per output position along one axis (PyTorch's conventions).

    nearest:  src = min(floor(dst·scale), in - 1)                       one tap
    bilinear: src = dst·(in-1)/(out-1)                   align_corners=True
              src = max((dst + 0.5)·scale - 0.5, 0)      align_corners=False
              taps floor(src) and floor(src)+1 (clamped), weights 1-λ and λ, λ = src - floor(src)
    scale = 1/scale_factor when scale_factor is given, else in/out.
    The source indices never decrease as dst grows.
    """
    dst = np.arange(out_size)
    scale = 1.0 / scale_factor if scale_factor is not None else in_size / out_size
    if mode == "nearest":  # PyTorch computes this index in float32
        src = np.floor(dst.astype(np.float32) * np.float32(scale)).astype(np.int64)
        return [(np.minimum(src, in_size - 1), np.ones(out_size))]
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = src - low
    return [(low, 1.0 - frac), (np.minimum(low + 1, in_size - 1), frac)]


def _along(v, axis, like):
    """A 1-D per-position vector shaped to broadcast along `axis` (2 or 3) of an NCHW array, in `like`'s
    dtype and on its device."""
    return cuda.to_device(v.astype(like.dtype), cuda.device_of(like)).reshape((-1,) + (1,) * (3 - axis))


def _resample_axis(x, taps, axis):
    """y[..., o, ...] = Σ_taps weight[o]·x[..., src[o], ...]: a gather along `axis`."""
    return sum(np.take(x, src, axis=axis) * _along(weight, axis, x) for src, weight in taps)


def _resample_axis_adjoint(g, taps, size, axis):
    """The exact adjoint of _resample_axis: grad[..., s, ...] = Σ_{o: src[o] = s} weight[o]·g[..., o, ...]."""
    shape = list(g.shape)
    shape[axis] = size
    if cuda.device_of(g) != "cpu":  # the same sums as one scatter-add per tap (atomic adds on the device)
        grad = np.zeros_like(g, shape=shape)
        for src, weight in taps:
            np.add.at(grad, (slice(None),) * axis + (src,), g * _along(weight, axis, g))
        return grad
    grad = np.zeros(shape, dtype=g.dtype)
    for src, weight in taps:
        rows, starts = np.unique(src, return_index=True)  # src is sorted: runs of equal source rows
        sums = np.add.reduceat(g * _along(weight, axis, g), starts, axis=axis)
        index = [slice(None)] * 4
        index[axis] = rows
        grad[tuple(index)] += sums
    return grad


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Resize (N, C, H, W) with 'nearest' or 'bilinear', as torch.nn.functional.interpolate.

    Both modes are separable linear maps: resample the rows (a gather with
    weights), then the columns. The backward is their exact adjoint, a
    scatter-add done as segment sums.
    """
    x = _check_tensor(input, "input", ndim=4)
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(f"align_corners can only be set with mode='bilinear', got align_corners={align_corners!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError(f"give exactly one of size and scale_factor, got size={size!r}, scale_factor={scale_factor!r}")
    H, W = x.shape[2:]
    if size is not None:
        out = _pair(size, "size", 1)
        factors = (None, None)
    else:
        factors = (scale_factor, scale_factor) if isinstance(scale_factor, numbers.Real) else tuple(scale_factor) \
            if isinstance(scale_factor, (tuple, list)) else ()
        if len(factors) != 2 or not all(isinstance(f, numbers.Real) and f > 0 for f in factors):
            raise ValueError(f"scale_factor must be a positive number or a pair of them, got {scale_factor!r}")
        out = (int(np.floor(H * float(factors[0]))), int(np.floor(W * float(factors[1]))))
        if min(out) < 1:
            raise ValueError(f"scale_factor={scale_factor!r} shrinks the input {H}x{W} to {out[0]}x{out[1]}")
    align = bool(align_corners)
    taps_h = _resample_taps(H, out[0], factors[0], mode, align)
    taps_w = _resample_taps(W, out[1], factors[1], mode, align)
    y = _resample_axis(_resample_axis(x.data, taps_h, 2), taps_w, 3)

    def backward(g):
        return (_resample_axis_adjoint(_resample_axis_adjoint(g, taps_w, W, 3), taps_h, H, 2),)

    return Tensor._make(y, (x,), backward, "interpolate")


def pad(input, pad, mode="constant", value=0):
    """Constant padding, torch's `pad` order: (left, right, top, bottom, ...) from the last axis back.

    Negative amounts crop, as in torch. The backward crops grad_output back.
    """
    x = _check_tensor(input, "input")
    if mode != "constant":
        raise ValueError(f"mode must be 'constant' (the only mode implemented), got {mode!r}")
    amounts = tuple(pad) if isinstance(pad, (tuple, list)) else None
    if amounts is None or len(amounts) % 2 or len(amounts) > 2 * x.ndim or \
            not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in amounts):
        raise ValueError(f"pad must be a tuple of an even number (at most {2 * x.ndim}) of ints, got {pad!r}")
    src, dst, out_shape = [slice(None)] * x.ndim, [slice(None)] * x.ndim, list(x.shape)
    for i in range(len(amounts) // 2):
        axis, before, after = x.ndim - 1 - i, int(amounts[2 * i]), int(amounts[2 * i + 1])
        size = x.shape[axis]
        out_shape[axis] = size + before + after
        if out_shape[axis] < 0:
            raise ValueError(f"pad={pad!r} crops axis {axis} of size {size} to a negative size {out_shape[axis]}")
        kept = max(size - max(-before, 0) - max(-after, 0), 0)
        src[axis] = slice(max(-before, 0), max(-before, 0) + kept)
        dst[axis] = slice(max(before, 0), max(before, 0) + kept)
    src, dst = tuple(src), tuple(dst)
    y = np.full_like(x.data, value, shape=out_shape)  # on x's device
    y[dst] = x.data[src]
    shape = x.shape

    def backward(g):
        grad = np.zeros_like(g, shape=shape)
        grad[src] = g[dst]
        return (grad,)

    return Tensor._make(y, (x,), backward, "pad")


def flatten(input, start_dim=0, end_dim=-1):
    """Merge axes start_dim..end_dim into one, as torch.flatten."""
    x = _check_tensor(input, "input")
    ndim = max(x.ndim, 1)
    for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not isinstance(dim, numbers.Integral) or not -ndim <= dim < ndim:
            raise ValueError(f"{name} must be an int in [{-ndim}, {ndim - 1}] for a {x.ndim}-D input, got {dim!r}")
    if start_dim % ndim > end_dim % ndim:
        raise ValueError(f"start_dim={start_dim} comes after end_dim={end_dim} for a {x.ndim}-D input")
    return x.flatten(start_dim, end_dim)


def dropout2d(input, p=0.5, training=True, generator=None):
    """Zero whole channels of (N, C, H, W) with probability p, scale the rest by 1/(1-p).

    The mask has shape (N, C, 1, 1); it comes from `generator` or tinyconv's
    global generator, like dropout.
    """
    x = _check_tensor(input, "input", ndim=4)
    if not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
    if not training or p == 0:
        return x
    rng = generator if generator is not None else random.get_generator()
    mask_shape = x.shape[:2] + (1, 1)
    keep = (rng.random(mask_shape) >= p).astype(x.dtype) / (1 - p) if p < 1 else np.zeros(mask_shape, x.dtype)
    keep = cuda.to_device(keep, x.device)  # drawn on the host: the same mask on either device
    return Tensor._make(x.data * keep, (x,), lambda g: (g * keep,), "dropout2d")


# ---------------------------------------------------------------------------
# losses from the literature: focal loss (RetinaNet), triplet loss (FaceNet)
# ---------------------------------------------------------------------------
def _focal_alpha(alpha, name="alpha"):
    if alpha is not None and (not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1):
        raise ValueError(f"{name} must be a number in [0, 1] or None (no weighting), got {alpha!r}")
    return alpha


def _focal_modulation(q, gamma):
    """The focal factor q^γ (q = 1 - p_t) and its derivative γ·q^(γ-1).

    Where q = 0 (p_t rounds to 1) the derivative is taken as 0: every
    caller multiplies it by p·(1 - p) or by the cross-entropy, both 0 there.
    """
    safe_q = np.where(q > 0, q, 1)
    return q ** gamma, np.where(q > 0, gamma * safe_q ** (gamma - 1), 0).astype(q.dtype)


def focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="mean", mode="sigmoid"):
    """Focal loss (Lin et al., RetinaNet 2017): FL(p_t) = -α_t·(1 - p_t)^γ·log(p_t).

    The factor (1 - p_t)^γ shrinks the loss of well-classified examples, so
    the many easy background anchors stop swamping the few hard ones: with
    γ = 2 an example at p_t = 0.9 weighs (0.1)² = 1/100 of its cross-entropy.
    γ = 0 gives α-weighted cross-entropy. Defaults α = 0.25, γ = 2 (the paper's).

    mode='sigmoid' (RetinaNet's form, as torchvision.ops.sigmoid_focal_loss):
        input: logits of any shape; target: 0/1 labels (floats in [0, 1]
        allowed) of the same shape; p = sigmoid(x), p_t = p if t = 1 else 1 - p,
        α_t = α·t + (1 - α)·(1 - t). Elementwise loss.
    mode='softmax': input (N, C) logits, target (N,) class indices;
        p_t = softmax(x)[n, t_n], α_t = α for every class. Loss per sample.
    alpha=None switches the α weighting off. reduction: 'mean' (over all
    elements), 'sum' or 'none'. (RetinaNet divides the sum by the number of
    anchors assigned to objects: use reduction='sum' and divide.)

    Gradient (sigmoid): with ce = -log p_t, q = 1 - p_t, m = q^γ,
        dFL/dx = α_t·(m·(p - t) - γ·q^(γ-1)·(2t - 1)·p·(1 - p)·ce)
    (softmax): dFL/dx_j = α_t·(m + γ·q^(γ-1)·p_t·ce)·(p_j - onehot_j).
    """
    x = _check_tensor(input, "input")
    _check_reduction(reduction)
    alpha = _focal_alpha(alpha)
    if not isinstance(gamma, numbers.Real) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if mode == "sigmoid":
        loss, grad = _sigmoid_focal(x, target, alpha, gamma)
    elif mode == "softmax":
        loss, grad = _softmax_focal(x, target, alpha, gamma)
    else:
        raise ValueError(f"mode must be 'sigmoid' or 'softmax', got {mode!r}")
    scale = 1.0 / max(loss.size, 1) if reduction == "mean" else 1.0

    def backward(g):
        g = g.reshape(g.shape + (1,) * (grad.ndim - g.ndim)) if reduction == "none" else g * scale
        return (grad * g,)

    if reduction == "none":
        out = loss
    else:
        out = loss.sum() * scale
        out = np.asarray(out, dtype=x.dtype) if x.device == "cpu" else out  # NumPy's sum gives a scalar
    return Tensor._make(out, (x,), backward, "focal_loss")


def _sigmoid_focal(x, target, alpha, gamma):
    """Elementwise sigmoid focal loss and d(loss)/dx, stable for large |x|."""
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if t.shape != x.shape:
        raise ValueError(f"target must have the input's shape {x.shape} in mode='sigmoid', got {t.shape}")
    if t.dtype.kind not in "biuf" or (t.size and (t.min() < 0 or t.max() > 1)):
        raise ValueError("target must hold labels in [0, 1] in mode='sigmoid'")
    t = cuda.to_device(t.astype(x.dtype), x.device)  # checked on the host, used on x's device
    p = 0.5 * (1 + np.tanh(0.5 * x.data))       # sigmoid(x)
    one_minus_p = 0.5 * (1 - np.tanh(0.5 * x.data))  # sigmoid(-x), accurate where p ≈ 1
    ce = np.logaddexp(0, x.data) - t * x.data   # -[t·log p + (1-t)·log(1-p)]
    q = t * one_minus_p + (1 - t) * p           # 1 - p_t, without cancellation
    m, slope = _focal_modulation(q, gamma)
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    loss = alpha_t * m * ce
    grad = alpha_t * (m * (p - t) - slope * (2 * t - 1) * p * one_minus_p * ce)
    return loss.astype(x.dtype), grad.astype(x.dtype)


def _softmax_focal(x, target, alpha, gamma):
    """Per-sample softmax focal loss (N,) and d(loss)/dx (N, C)."""
    if x.ndim != 2:
        raise ValueError(f"input must be (N, C) logits in mode='softmax', got shape {x.shape}")
    n = x.shape[0]
    t = _class_targets(target, n, x.shape[1])
    shifted = x.data - x.data.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), t] = 1
    ce = -log_probs[np.arange(n), t]
    p_t = probs[np.arange(n), t]
    q = (probs * (1 - onehot)).sum(axis=1)      # 1 - p_t as the sum of the other classes
    m, slope = _focal_modulation(q, gamma)
    alpha_t = 1.0 if alpha is None else alpha
    loss = alpha_t * m * ce
    grad = (alpha_t * (m + slope * p_t * ce))[:, None] * (probs - onehot)
    return loss.astype(x.dtype), grad.astype(x.dtype)


def triplet_margin_loss(anchor, positive, negative, margin=0.2, reduction="mean"):
    """Triplet loss (Schroff et al., FaceNet 2015): max(‖a - p‖² - ‖a - n‖² + margin, 0) per triplet.

    anchor, positive, negative: (N, D) embeddings (or (D,) for one triplet).
    Distances are SQUARED Euclidean, as FaceNet (torch's
    triplet_margin_loss uses plain distances and margin 1.0). The caller
    normalises: FaceNet's embedding ends with an L2-normalisation layer,
    ‖f(x)‖ = 1, so pass `F.normalize(embedding)`; on unit vectors the squared
    distance lies in [0, 4] and the default margin α = 0.2 is the paper's.
    Gradient (where the hinge is active): d/da = 2(n - p), d/dp = 2(p - a),
    d/dn = 2(a - n).
    """
    a = _check_tensor(anchor, "anchor", ndim=(1, 2))
    p = _check_tensor(positive, "positive")
    n = _check_tensor(negative, "negative")
    for name, other in (("positive", p), ("negative", n)):
        if other.shape != a.shape:
            raise ValueError(f"{name} must have the anchor's shape {a.shape}, got {other.shape}")
        _same_dtype(name, a, other)
    if not isinstance(margin, numbers.Real) or not np.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    _check_reduction(reduction)
    d_pos = ((a - p) * (a - p)).sum(axis=-1)
    d_neg = ((a - n) * (a - n)).sum(axis=-1)
    return _reduce(relu(d_pos - d_neg + margin), reduction)

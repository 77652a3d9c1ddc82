"""Layers: Modules that hold parameters and call tinyconv.functional.

Each layer stores its hyper-parameters, creates its Parameters with
PyTorch's default initialisation, and its forward is one functional call.
"""
import numpy as np

import tinyconv.functional as F
from tinyconv.nn import init
from tinyconv.nn.module import Module, Parameter


def _pair(value, name):
    return F._pair(value, name)


def _positive(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_groups(in_channels, out_channels, groups):
    _positive(groups, "groups")
    if in_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")


def _empty(shape, dtype):
    return np.zeros(shape, dtype=dtype)


# ---------------------------------------------------------------------------
# convolutions
# ---------------------------------------------------------------------------
class Conv2d(Module):
    """2-D convolution; weight (out_channels, in_channels/groups, k_h, k_w)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, dtype=np.float32):
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        _check_groups(in_channels, out_channels, groups)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.weight = Parameter(_empty((out_channels, in_channels // groups) + self.kernel_size, dtype))
        self.bias = Parameter(_empty((out_channels,), dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        init.default_weight_and_bias_(self.weight, self.bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding!r}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        return s + (", bias=False" if self.bias is None else "")


class ConvTranspose2d(Module):
    """Transposed ("fractionally strided") convolution: the adjoint of Conv2d.

    weight (in_channels, out_channels/groups, k_h, k_w), as PyTorch;
    out = (H - 1)·stride - 2·padding + dilation·(k - 1) + output_padding + 1.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, dtype=np.float32):
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        _check_groups(in_channels, out_channels, groups)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.weight = Parameter(_empty((in_channels, out_channels // groups) + self.kernel_size, dtype))
        self.bias = Parameter(_empty((out_channels,), dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        init.default_weight_and_bias_(self.weight, self.bias)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}")


class DeformConv2d(Module):
    """Deformable convolution (Dai et al. 2017; v2 with `modulated=True`).

    Holds its own offset predictor: a plain conv with the same kernel,
    stride, padding and dilation producing 2·offset_groups·k_h·k_w channels
    (a (Δy, Δx) per tap and output pixel), initialised to zero so the layer
    starts as an ordinary convolution. With `modulated=True` a second conv
    predicts a mask through a sigmoid (starting at 0.5 everywhere, as DCNv2).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, offset_groups=1, modulated=False, dtype=np.float32):
        super().__init__()
        _check_groups(in_channels, out_channels, groups)
        if in_channels % _positive(offset_groups, "offset_groups"):
            raise ValueError(f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.offset_groups, self.modulated = offset_groups, modulated
        taps = offset_groups * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(_empty((out_channels, in_channels // groups) + self.kernel_size, dtype))
        self.bias = Parameter(_empty((out_channels,), dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        init.default_weight_and_bias_(self.weight, self.bias)
        self.offset_conv = Conv2d(in_channels, 2 * taps, kernel_size, stride, padding, dilation, dtype=dtype)
        init.zeros_(self.offset_conv.weight)
        init.zeros_(self.offset_conv.bias)
        if modulated:
            self.mask_conv = Conv2d(in_channels, taps, kernel_size, stride, padding, dilation, dtype=dtype)
            init.zeros_(self.mask_conv.weight)
            init.zeros_(self.mask_conv.bias)

    def forward(self, x):
        offset = self.offset_conv(x)
        mask = F.sigmoid(self.mask_conv(x)) if self.modulated else None
        return F.deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, offset_groups={self.offset_groups}, modulated={self.modulated}")


class SeparableConv2d(Module):
    """Depthwise k×k conv (one filter per channel, `depth_multiplier` of them)
    then a pointwise 1×1 conv mixing channels (Xception, MobileNet).

    Multiply-adds per output pixel: k²·C_in·m + C_in·m·C_out, against
    k²·C_in·C_out for the standard conv: a ratio of 1/C_out + 1/k².
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 depth_multiplier=1, dtype=np.float32):
        super().__init__()
        mid = in_channels * _positive(depth_multiplier, "depth_multiplier")
        self.depthwise = Conv2d(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                                bias=False, dtype=dtype)
        self.pointwise = Conv2d(mid, out_channels, 1, bias=bias, dtype=dtype)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class Linear(Module):
    """y = x·Wᵀ + b, W of shape (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features = _positive(in_features, "in_features")
        self.out_features = _positive(out_features, "out_features")
        self.weight = Parameter(_empty((out_features, in_features), dtype))
        self.bias = Parameter(_empty((out_features,), dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        init.default_weight_and_bias_(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------
class _BatchNorm(Module):
    """Batch norm over every axis but the channel axis 1.

    Training: normalise with the batch's mean and (biased) variance, and
    update running_mean/running_var (unbiased) with `momentum`.
    Evaluation: normalise with the running statistics.
    """

    expected_ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__()
        self.num_features = _positive(num_features, "num_features")
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)

    def forward(self, x):
        if hasattr(x, "ndim") and x.ndim not in self.expected_ndim:
            raise ValueError(f"{type(self).__name__} expects a {' or '.join(map(str, self.expected_ndim))}-D "
                             f"input, got shape {x.shape}")
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            self._buffers["num_batches_tracked"] = self.num_batches_tracked + 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch_stats, momentum=self.momentum if self.training else 0.0, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm2d(_BatchNorm):
    expected_ndim = (4,)


class BatchNorm1d(_BatchNorm):
    expected_ndim = (2, 3)


# ---------------------------------------------------------------------------
# pooling and resampling
# ---------------------------------------------------------------------------
class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average over bins that tile the input; output_size=1 is global average pooling."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    """Global max pooling (output 1x1)."""

    def __init__(self, output_size=1):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Upsample(Module):
    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x):
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class ChannelShuffle(Module):
    """Interleave the channels of `groups` groups (ShuffleNet)."""

    def __init__(self, groups):
        super().__init__()
        self.groups = _positive(groups, "groups")

    def forward(self, x):
        return F.channel_shuffle(x, self.groups)

    def extra_repr(self):
        return f"groups={self.groups}"


# ---------------------------------------------------------------------------
# element-wise layers
# ---------------------------------------------------------------------------
class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Zero whole channels (spatial dropout)."""

    def forward(self, x):
        return F.dropout2d(x, self.p, self.training)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


class Identity(Module):
    def forward(self, x):
        return x


class ReLU(Module):
    """max(x, 0)"""

    def forward(self, x):
        return F.relu(x)


class ReLU6(Module):
    """min(max(x, 0), 6), MobileNet's activation"""

    def forward(self, x):
        return F.relu6(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Softmax(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class ELU(Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

"""tinyconv.nn layers: output shapes, parameter counts, defaults as PyTorch's,
gradients through the layer, and construction errors."""
import numpy as np
import pytest

import tinyconv
import tinyconv.nn as nn
from tinyconv import Tensor
from tinyconv.gradcheck import gradcheck_module


def x_of(*shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("layer,in_shape,out_shape,params", [
    (lambda: nn.Conv2d(3, 8, 3), (2, 3, 10, 10), (2, 8, 8, 8), 8 * 3 * 9 + 8),
    (lambda: nn.Conv2d(4, 8, (1, 3), stride=2, padding=(0, 1), groups=2, bias=False), (1, 4, 7, 7), (1, 8, 4, 4),
     8 * 2 * 3),
    (lambda: nn.Conv2d(3, 6, 3, padding="same", dilation=2), (1, 3, 9, 9), (1, 6, 9, 9), 6 * 3 * 9 + 6),
    (lambda: nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1), (1, 4, 5, 5), (1, 2, 10, 10), 4 * 2 * 16 + 2),
    (lambda: nn.DeformConv2d(3, 4, 3, padding=1), (1, 3, 6, 6), (1, 4, 6, 6),
     4 * 3 * 9 + 4 + (18 * 3 * 9 + 18)),
    (lambda: nn.DeformConv2d(4, 4, 3, padding=1, offset_groups=2, modulated=True), (1, 4, 5, 5), (1, 4, 5, 5),
     4 * 4 * 9 + 4 + (36 * 4 * 9 + 36) + (18 * 4 * 9 + 18)),
    (lambda: nn.SeparableConv2d(8, 16, 3, padding=1), (1, 8, 6, 6), (1, 16, 6, 6), 8 * 9 + 8 * 16 + 16),
    (lambda: nn.Linear(5, 3), (4, 5), (4, 3), 18),
    (lambda: nn.BatchNorm2d(3), (2, 3, 4, 4), (2, 3, 4, 4), 6),
    (lambda: nn.BatchNorm1d(3), (4, 3), (4, 3), 6),
    (lambda: nn.MaxPool2d(2), (1, 2, 7, 7), (1, 2, 3, 3), 0),
    (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (1, 2, 8, 8), (1, 2, 5, 5), 0),
    (lambda: nn.AvgPool2d(2, 2), (1, 2, 6, 6), (1, 2, 3, 3), 0),
    (lambda: nn.AdaptiveAvgPool2d(1), (2, 5, 7, 3), (2, 5, 1, 1), 0),
    (lambda: nn.AdaptiveMaxPool2d(1), (2, 5, 7, 3), (2, 5, 1, 1), 0),
    (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (1, 2, 3, 4), (1, 2, 6, 8), 0),
    (lambda: nn.ChannelShuffle(2), (1, 4, 3, 3), (1, 4, 3, 3), 0),
    (lambda: nn.Flatten(), (2, 3, 4, 5), (2, 60), 0),
    (lambda: nn.Dropout2d(0.5), (2, 3, 4, 4), (2, 3, 4, 4), 0),
])
def test_shapes_and_parameter_counts(layer, in_shape, out_shape, params):
    module = layer()
    y = module(x_of(*in_shape))
    assert y.shape == out_shape
    assert module.num_parameters() == params


def test_deform_conv_starts_as_a_plain_conv():
    tinyconv.manual_seed(1)
    deform = nn.DeformConv2d(3, 4, 3, padding=1, modulated=False)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv.weight.data[...] = deform.weight.data
    conv.bias.data[...] = deform.bias.data
    x = x_of(2, 3, 6, 6)
    np.testing.assert_allclose(deform(x).data, conv(x).data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,shape", [
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 5, 5)),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2), (1, 2, 3, 3)),
    (lambda: nn.SeparableConv2d(2, 3, 3), (1, 2, 5, 5)),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.AvgPool2d(2)), (3, 2, 6, 6)),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 3), nn.Tanh()), (2, 2, 2, 2)),
])
def test_gradients_through_layers(layer, shape):
    x = Tensor(np.random.default_rng(2).standard_normal(shape), requires_grad=True)
    assert gradcheck_module(layer(), [x])
    assert gradcheck_module(layer(), [x], fast_mode=False)


def test_batchnorm_train_and_eval():
    bn = nn.BatchNorm2d(3, momentum=0.5)
    x = x_of(4, 3, 2, 2)
    y = bn(x)
    np.testing.assert_allclose(y.data.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    n = 4 * 2 * 2
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.data.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * x.data.var(axis=(0, 2, 3)) * n / (n - 1), rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    before = bn.running_mean.copy()
    y = bn(x)
    np.testing.assert_array_equal(bn.running_mean, before)
    expected = (x.data - before[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="4-D"):
        bn(x_of(4, 3))


def test_dropout_off_in_eval():
    d = nn.Dropout(0.5).eval()
    x = x_of(10, 10)
    assert d(x) is x or np.array_equal(d(x).data, x.data)


def test_default_init_matches_pytorch_bounds():
    conv = nn.Conv2d(16, 8, 3)
    bound = 1 / np.sqrt(16 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.9 * bound
    deconv = nn.ConvTranspose2d(16, 8, 3)  # fan_in from weight axis 1, as PyTorch
    assert np.abs(deconv.weight.data).max() <= 1 / np.sqrt(8 * 9)


@pytest.mark.parametrize("build,match", [
    (lambda: nn.Conv2d(3, 8, 3, groups=2), "in_channels \\(3\\) must be divisible by groups \\(2\\)"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), "out_channels \\(6\\) must be divisible by groups \\(4\\)"),
    (lambda: nn.Conv2d(0, 8, 3), "in_channels must be a positive int"),
    (lambda: nn.Conv2d(3, 8, 0.5), "kernel_size must be an int or a pair"),
    (lambda: nn.DeformConv2d(3, 4, 3, offset_groups=2), "offset_groups"),
    (lambda: nn.Dropout(2.0), "p must be in"),
    (lambda: nn.ChannelShuffle(0), "groups must be a positive int"),
])
def test_construction_errors(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="channel"):
        nn.Conv2d(3, 4, 3)(x_of(1, 2, 5, 5))
    with pytest.raises(ValueError):
        nn.BatchNorm2d(3)(x_of(2, 4, 3, 3))

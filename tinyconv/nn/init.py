"""Weight initialisation, as torch.nn.init (functions end in _ and fill in place).

fan_in  = C_in/groups · k_h · k_w  for a conv weight (C_out, C_in/groups, k_h, k_w)
fan_out = C_out · k_h · k_w        (in_features / out_features for a Linear)

* Xavier / Glorot (tanh, sigmoid nets): keep the variance of activations and
  of gradients equal, Var(w) = 2 / (fan_in + fan_out):
      uniform  U[-a, a],  a = gain·√(6 / (fan_in + fan_out))
      normal   N(0, std²), std = gain·√(2 / (fan_in + fan_out))
  Caffe's "xavier" filler uses n = fan_in alone: U[-√(3/n), √(3/n)].
* He / Kaiming (ReLU nets): ReLU zeroes half the signal, so double it,
  Var(w) = 2 / fan_in:  std = gain / √fan,  gain = √2 for relu,
      normal   N(0, std²);  uniform  U[-√3·std, √3·std].
* PyTorch's defaults for Conv2d and Linear: kaiming_uniform_(a=√5), i.e.
  U[-1/√fan_in, 1/√fan_in], and the bias U[-1/√fan_in, 1/√fan_in].
"""
import math

import numpy as np

from tinyconv import random


def _array(tensor):
    return tensor.data if hasattr(tensor, "data") and not isinstance(tensor, np.ndarray) else tensor


def _rng(generator):
    return generator if generator is not None else random.get_generator()


def calculate_fan_in_and_fan_out(tensor):
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with 2 or more dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """The factor that keeps activations' variance: √2 for relu, 5/3 for tanh, ..."""
    linear = ("linear", "conv1d", "conv2d", "conv_transpose2d", "sigmoid", "identity")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fill(tensor, values):
    array = _array(tensor)
    array[...] = values.astype(array.dtype)
    return tensor


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    return _fill(tensor, _rng(generator).uniform(a, b, size=_array(tensor).shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    return _fill(tensor, _rng(generator).normal(mean, std, size=_array(tensor).shape))


def constant_(tensor, value):
    _array(tensor)[...] = value
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _kaiming_std(tensor, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


def default_weight_and_bias_(weight, bias=None, generator=None):
    """PyTorch's default for Conv2d and Linear: U[-1/√fan_in, 1/√fan_in] for both."""
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        uniform_(bias, -bound, bound, generator)

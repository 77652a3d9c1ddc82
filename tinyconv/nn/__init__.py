"""tinyconv.nn: Modules and layers, mirroring torch.nn."""
from tinyconv.nn import init  # noqa: F401
from tinyconv.nn.module import Module, Parameter, Sequential, ModuleList  # noqa: F401
from tinyconv.nn.layers import (  # noqa: F401
    Conv2d, ConvTranspose2d, DeformConv2d, SeparableConv2d, Linear,
    BatchNorm1d, BatchNorm2d,
    MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, Upsample, ChannelShuffle,
    Dropout, Dropout2d, Flatten, Identity,
    ReLU, ReLU6, LeakyReLU, ELU, Sigmoid, Tanh, Softmax,
)

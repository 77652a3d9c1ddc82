"""The model zoo: each function returns a `tinyconv.nn` Module.

Every model takes `in_channels` and `num_classes`, runs on 28x28x1
(MNIST, Fashion-MNIST) and 32x32x3 (CIFAR-10) inputs, and records the input
it was built for as `model.input_shape = (C, H, W)`; the ImageNet-size
layouts (MobileNet, ShuffleNet, SqueezeNet, ...) are the papers' own, so
`tinyconv.summary(model, (3, 224, 224))` reproduces the published counts.

    model = tinyconv.models.get("resnet20", in_channels=3, num_classes=10)
    tinyconv.models.list_models()   # the names get() accepts

Almost every model ends with global average pooling, so it accepts any
input size; LeNet-5 and the Fashion-MNIST net end with fully connected
layers sized by `input_size`.
"""
from collections import OrderedDict

from tinyconv import blocks, nn
from tinyconv.blocks import conv_bn


def _classifier_head(channels, num_classes, dropout=0.0):
    """Global average pooling → flatten → (dropout) → fully connected."""
    layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(channels, num_classes))


def _named(input_shape, **parts):
    """A Sequential with named parts, remembering the input it was sized for."""
    model = nn.Sequential(OrderedDict(parts))
    model.input_shape = tuple(input_shape)
    return model


# ---------------------------------------------------------------------------
# small classic nets
# ---------------------------------------------------------------------------
def _default_size(in_channels, input_size):
    """The dataset's side when not given: 28 for 1 channel (MNIST family), 32 otherwise (CIFAR-10)."""
    return input_size if input_size is not None else (28 if in_channels == 1 else 32)


def lenet5(in_channels=1, num_classes=10, input_size=None):
    """LeNet-5 (LeCun et al. 1998): conv5x5(6)-tanh-avgpool-conv5x5(16)-tanh-avgpool-fc120-fc84-fc.

    conv1 pads by 2, so a 28x28 MNIST digit is treated as LeCun's 32x32
    frame; with 28x28x1 input and 10 classes: 61,706 parameters.
    input_size defaults to 28 for 1 channel, 32 otherwise.
    """
    input_size = _default_size(in_channels, input_size)
    if input_size < 12:
        raise ValueError(f"lenet5 needs input_size >= 12, got {input_size}")
    side = ((input_size // 2) - 4) // 2  # conv1 keeps the size, pool halves, conv2 loses 4, pool halves
    return _named((in_channels, input_size, input_size),
                  features=nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                         nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2)),
                  classifier=nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, 120), nn.Tanh(),
                                           nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes)))


def fashion_cnn(in_channels=1, num_classes=10, input_size=None, dropout=0.25, channels=(32, 64), hidden=128,
                convs_per_stage=1):
    """The 2-conv BN net of the Fashion-MNIST benchmark table (93.4% there; 92.6% here in 10 epochs).

    [conv3x3-BN-ReLU (x convs_per_stage) - maxpool2] x2 (`channels`) → fc `hidden` → ReLU → dropout → fc.
    input_size defaults to 28 for 1 channel, 32 otherwise.
    """
    input_size = _default_size(in_channels, input_size)
    side = input_size // 4
    layers, c_in = [], in_channels
    for c_out in channels:
        for _ in range(convs_per_stage):
            layers.append(conv_bn(c_in, c_out, 3))
            c_in = c_out
        layers.append(nn.MaxPool2d(2))
    return _named((in_channels, input_size, input_size),
                  features=nn.Sequential(*layers),
                  classifier=nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(),
                                           nn.Dropout(dropout), nn.Linear(hidden, num_classes)))


def fashion_vgg(in_channels=1, num_classes=10, input_size=None, dropout=0.25, channels=(32, 64), hidden=128):
    """fashion_cnn with two 3x3 convs per stage (VGG's rule: two 3x3 see as far as one 5x5, with
    28% fewer weights and one more non-linearity): tinyconv's default training model,
    ≥ 93% on Fashion-MNIST in 10 epochs."""
    return fashion_cnn(in_channels, num_classes, input_size, dropout, channels, hidden, convs_per_stage=2)


# ---------------------------------------------------------------------------
# ResNets
# ---------------------------------------------------------------------------
def resnet_cifar(depth, in_channels=3, num_classes=10, shortcut_option="A", se_reduction=None):
    """The ResNet paper's CIFAR-10 nets (section 4.2): depth = 6n + 2.

    conv3x3(16) then three stages of n basic blocks with 16, 32, 64
    channels on 32x32, 16x16, 8x8 maps (stride 2 on each stage's first
    block), global average pooling, fc. Option A shortcuts add no
    parameters: ResNet-20 has 0.27M, -32 0.46M, -44 0.66M, -56 0.85M,
    -110 1.7M. `se_reduction=r` adds an SE block to every residual branch.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet_cifar: depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth!r}")
    n = (depth - 2) // 6
    stages, channels = [], 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            stages.append(blocks.BasicBlock(channels, width, stride, shortcut_option, se_reduction))
            channels = width
    return _named((in_channels, 32, 32), stem=conv_bn(in_channels, 16, 3), stages=nn.Sequential(*stages),
                  head=_classifier_head(64, num_classes))


def resnet20(in_channels=3, num_classes=10, shortcut_option="A"):
    return resnet_cifar(20, in_channels, num_classes, shortcut_option)


def resnet32(in_channels=3, num_classes=10, shortcut_option="A"):
    return resnet_cifar(32, in_channels, num_classes, shortcut_option)


def resnet44(in_channels=3, num_classes=10, shortcut_option="A"):
    return resnet_cifar(44, in_channels, num_classes, shortcut_option)


def resnet56(in_channels=3, num_classes=10, shortcut_option="A"):
    return resnet_cifar(56, in_channels, num_classes, shortcut_option)


def resnet110(in_channels=3, num_classes=10, shortcut_option="A"):
    return resnet_cifar(110, in_channels, num_classes, shortcut_option)


def se_resnet20(in_channels=3, num_classes=10, reduction=16):
    """ResNet-20 with a squeeze-and-excitation block in every residual branch (Hu et al. 2018)."""
    return resnet_cifar(20, in_channels, num_classes, "A", se_reduction=reduction)


def resnet18(in_channels=3, num_classes=10, width=64):
    """ResNet-18 in its CIFAR form: a 3x3 stem (no 7x7/2, no max-pool), then [2, 2, 2, 2] basic
    blocks of width, 2·width, 4·width, 8·width channels (option B shortcuts). 11.2M params at width 64."""
    stages, channels = [], width
    for stage in range(4):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            stages.append(blocks.BasicBlock(channels, width * 2 ** stage, stride, "B"))
            channels = width * 2 ** stage
    return _named((in_channels, 32, 32), stem=conv_bn(in_channels, width, 3), stages=nn.Sequential(*stages),
                  head=_classifier_head(channels, num_classes))


# ---------------------------------------------------------------------------
# mobile nets
# ---------------------------------------------------------------------------
_MOBILENET_UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet(in_channels=3, num_classes=10, alpha=1.0, rho=1.0, input_size=32):
    """MobileNet v1 (Howard et al. 2017, table 1) with width multiplier α and resolution multiplier ρ.

    conv3x3/2 (32α) then 13 depthwise separable units (64α ... 1024α),
    global average pooling, fc. α thins every layer (cost ≈ α²); ρ scales
    the input: the model is built for (in_channels, round(ρ·input_size))²
    (`model.input_shape`), cost ≈ ρ². At 224x224, 1000 classes, α = 1:
    569M multiply-adds, 4.2M parameters.
    """
    if not 0 < alpha <= 4 or not 0 < rho <= 4:
        raise ValueError(f"mobilenet: alpha and rho must be in (0, 4], got alpha={alpha!r}, rho={rho!r}")
    width = lambda c: max(1, int(c * alpha))  # noqa: E731
    units, channels = [], width(32)
    for out, stride in _MOBILENET_UNITS:
        units.append(blocks.MobileNetUnit(channels, width(out), stride))
        channels = width(out)
    size = round(rho * input_size)
    return _named((in_channels, size, size), stem=conv_bn(in_channels, width(32), 3, stride=2),
                  units=nn.Sequential(*units), head=_classifier_head(channels, num_classes))


_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # (expansion t, channels c, repeats n, stride s)


def mobilenetv2(in_channels=3, num_classes=10, alpha=1.0, input_size=32, dropout=0.2):
    """MobileNet v2 (Sandler et al. 2018, table 2): conv3x3/2 (32), 17 inverted residuals, conv1x1
    (1280), global average pooling, fc. 300M multiply-adds and 3.4M params at 224x224, 1000 classes."""
    width = lambda c: max(1, int(c * alpha))  # noqa: E731
    layers, channels = [], width(32)
    for t, c, n, s in _MOBILENETV2_STAGES:
        for i in range(n):
            layers.append(blocks.InvertedResidual(channels, width(c), s if i == 0 else 1, t))
            channels = width(c)
    last = max(1280, width(1280))
    return _named((in_channels, input_size, input_size), stem=conv_bn(in_channels, width(32), 3, 2, act="relu6"),
                  blocks=nn.Sequential(*layers), last=conv_bn(channels, last, 1, act="relu6"),
                  head=_classifier_head(last, num_classes, dropout))


_SHUFFLENET_WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}  # stage 2 output channels per group count


def shufflenet(in_channels=3, num_classes=10, groups=3, scale=1.0, input_size=32):
    """ShuffleNet v1 (Zhang et al. 2017, table 1): conv3x3/2 (24), max-pool 3x3/2, three stages of
    4, 8, 4 units (the first of each with stride 2), global average pooling, fc.

    Stage widths for g = 1, 2, 3, 4, 8: 144, 200, 240, 272, 384 (x2, x4),
    times `scale` ("ShuffleNet 0.5x"). ShuffleNet 1x, g = 3 at 224x224:
    ≈140M multiply-adds (the paper's "MFLOPs").
    """
    if groups not in _SHUFFLENET_WIDTHS:
        raise ValueError(f"shufflenet: groups must be one of {sorted(_SHUFFLENET_WIDTHS)}, got {groups!r}")
    units, channels = [], 24
    for stage, repeats in enumerate((4, 8, 4)):
        width = int(_SHUFFLENET_WIDTHS[groups] * scale * 2 ** stage)
        for i in range(repeats):
            units.append(blocks.ShuffleNetUnit(channels, width, groups, stride=2 if i == 0 else 1,
                                               group_first=not (stage == 0 and i == 0)))
            channels = width
    return _named((in_channels, input_size, input_size), stem=conv_bn(in_channels, 24, 3, stride=2),
                  pool=nn.MaxPool2d(3, 2, 1), units=nn.Sequential(*units), head=_classifier_head(channels, num_classes))


def squeezenet(in_channels=3, num_classes=10, input_size=32):
    """SqueezeNet 1.0 (Iandola et al. 2016, table 1): conv7x7/2 (96), 8 fire modules with three
    3x3/2 max-pools, dropout, conv1x1 to the classes, global average pooling (no fc).

    With in_channels=3, num_classes=1000: 1,248,424 parameters (≈1.25M, 50x fewer than AlexNet).
    """
    fire = blocks.Fire
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    features = nn.Sequential(nn.Conv2d(in_channels, 96, 7, stride=2), nn.ReLU(), pool(),
                             fire(96, 16, 64, 64), fire(128, 16, 64, 64), fire(128, 32, 128, 128), pool(),
                             fire(256, 32, 128, 128), fire(256, 48, 192, 192), fire(384, 48, 192, 192),
                             fire(384, 64, 256, 256), pool(), fire(512, 64, 256, 256))
    classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _named((in_channels, input_size, input_size), features=features, classifier=classifier)


# ---------------------------------------------------------------------------
# multi-branch and densely connected nets
# ---------------------------------------------------------------------------
def inception(in_channels=3, num_classes=10):
    """A small Inception net for 32x32 that shows each Inception generation once:
    stem → v1 module → grid reduction → v3 module A (two 3x3) → grid reduction →
    v3 module B (1x3 / 3x1) → Inception-ResNet-A → global average pooling → fc."""
    layers = nn.Sequential(
        conv_bn(in_channels, 32, 3),
        blocks.InceptionV1(32, 16, 16, 24, 4, 8, 8),           # 16 + 24 + 8 + 8 = 56 channels, 32x32
        blocks.GridReduction(56, 16, 32, 8, 16),               # 32 + 16 + 56 = 104, 16x16
        blocks.InceptionFactorized(104, 32, 24, 32, 16, 24, 16),  # 32 + 32 + 24 + 16 = 104
        blocks.GridReduction(104, 24, 48, 16, 24),             # 48 + 24 + 104 = 176, 8x8
        blocks.InceptionAsymmetric(176, 48, 32, 48, 32, n=3),  # 48 + 96 + 32 = 176
        blocks.InceptionResNetA(176, 16))
    return _named((in_channels, 32, 32), features=layers, head=_classifier_head(176, num_classes))


def densenet(in_channels=3, num_classes=10, depth=40, growth_rate=12, bottleneck=True, compression=0.5):
    """DenseNet for CIFAR (Huang et al. 2017): conv3x3, three dense blocks joined by transitions,
    BN-ReLU, global average pooling, fc.

    Each block has (depth - 4)/3 layers, or (depth - 4)/6 with bottlenecks
    (each then holds two convs); transitions compress to ⌊θ·C⌋ channels.
    DenseNet-BC (bottleneck, θ = 0.5), k = 12, depth 100: ≈0.8M params.
    """
    per_layer = 6 if bottleneck else 3
    if not isinstance(depth, int) or depth < 4 + per_layer or (depth - 4) % per_layer:
        raise ValueError(f"densenet: depth - 4 must be a positive multiple of {per_layer} "
                         f"(bottleneck={bottleneck}), got depth={depth!r}")
    if not 0 < compression <= 1:
        raise ValueError(f"densenet: compression must be in (0, 1], got {compression!r}")
    num_layers = (depth - 4) // per_layer
    channels = 2 * growth_rate if bottleneck and compression < 1 else 16
    layers = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
    for i in range(3):
        block = blocks.DenseBlock(channels, num_layers, growth_rate, bottleneck)
        layers.append(block)
        channels = block.out_channels
        if i < 2:
            layers.append(blocks.Transition(channels, int(channels * compression)))
            channels = int(channels * compression)
    layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    return _named((in_channels, 32, 32), features=nn.Sequential(*layers), head=_classifier_head(channels, num_classes))


def densenet_bc(in_channels=3, num_classes=10, depth=100, growth_rate=12):
    """DenseNet-BC (bottleneck + compression 0.5); depth 100, k = 12: ≈0.8M parameters."""
    return densenet(in_channels, num_classes, depth, growth_rate, bottleneck=True, compression=0.5)


def nin(in_channels=3, num_classes=10):
    """Network in Network for CIFAR-10 (Lin et al. 2013): three mlpconv layers, max/avg pools with
    dropout, and global average pooling of a num_classes-channel map instead of fc layers."""
    return _named((in_channels, 32, 32),
                  features=nn.Sequential(blocks.MLPConv(in_channels, (192, 160, 96), 5), nn.MaxPool2d(3, 2, 1),
                                         nn.Dropout(0.5),
                                         blocks.MLPConv(96, (192, 192, 192), 5), nn.AvgPool2d(3, 2, 1),
                                         nn.Dropout(0.5),
                                         blocks.MLPConv(192, (192, 192, num_classes), 3)),
                  pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))


def lenet300(in_channels=1, num_classes=10, input_size=28):
    """LeNet-300-100 (LeCun et al. 1998), the fully connected net of the Deep Compression paper:
    flatten → fc 300 → ReLU → fc 100 → ReLU → fc. With 28x28x1 input and 10 classes: 266,610 parameters."""
    return _named((in_channels, input_size, input_size), flatten=nn.Flatten(),
                  fc1=nn.Linear(in_channels * input_size * input_size, 300), relu1=nn.ReLU(),
                  fc2=nn.Linear(300, 100), relu2=nn.ReLU(), fc3=nn.Linear(100, num_classes))


# ---------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------
_MODELS = {f.__name__: f for f in (lenet5, lenet300, fashion_cnn, fashion_vgg, resnet20, resnet32, resnet44, resnet56, resnet110,
                                   resnet18, se_resnet20, mobilenet, mobilenetv2, shufflenet, squeezenet, inception,
                                   densenet, densenet_bc, nin)}


def list_models():
    """The names `get` accepts, sorted."""
    return sorted(_MODELS)


def get(name, **kwargs):
    """Build the zoo model `name` with keyword arguments (in_channels, num_classes, alpha, ...)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)

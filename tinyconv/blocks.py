"""The blocks of the CNN literature, each a small `tinyconv.nn.Module`.

Every docstring says what the block computes, why the paper built it that
way, and what it costs. Notation for costs:

    C_in, C_out   input / output channels       k        kernel size
    H, W          output height / width         s        stride
    params        weights + biases (BN: 2 per channel, γ and β; running
                  statistics are buffers, not parameters)
    MACs          multiply-adds of the conv and linear layers for ONE image
                  (BN, activations, pools and additions are not counted);
                  FLOPs = 2·MACs. A k×k conv costs k²·(C_in/groups)·C_out·H·W.

`conv_bn(...)` (conv without bias, then BN, then an activation) is the unit
most blocks are built from; `tinyconv.summary(block, (C, H, W))` prints the
per-layer counts that the formulas below predict.
"""
import numpy as np

import tinyconv.functional as F
from tinyconv import nn
from tinyconv.nn import init
from tinyconv.tensor import concat

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, None: None}


def _same_padding(kernel_size, dilation=1):
    """Padding that keeps H×W at stride 1 for an odd kernel (an int or an (h, w) pair)."""
    k_h, k_w = F._pair(kernel_size, "kernel_size")
    return (dilation * (k_h - 1) // 2, dilation * (k_w - 1) // 2)


def conv_bn(in_channels, out_channels, kernel_size, stride=1, groups=1, dilation=1, act="relu"):
    """Conv (no bias: BN's β replaces it) → BatchNorm2d → activation ('relu', 'relu6' or None).

    params = k_h·k_w·(C_in/groups)·C_out + 2·C_out
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"act must be one of {list(_ACTIVATIONS)}, got {act!r}")
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, _same_padding(kernel_size, dilation),
                        dilation, groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if act is not None:
        layers.append(_ACTIVATIONS[act]())
    return nn.Sequential(*layers)


def conv_relu(in_channels, out_channels, kernel_size, stride=1, dilation=1):
    """Conv with bias → ReLU, the pre-BN unit (GoogLeNet v1, NiN, SqueezeNet). params = k²·C_in·C_out + C_out."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                   _same_padding(kernel_size, dilation), dilation), nn.ReLU())


def _check_positive(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# ---------------------------------------------------------------------------
# residual blocks (He et al. 2015, 2016)
# ---------------------------------------------------------------------------
class ZeroPadShortcut(nn.Module):
    """ResNet shortcut option A: subsample by `stride`, append zero channels.

    y = concat(x[:, :, ::s, ::s], zeros(C_out - C_in channels)). No parameters.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"shortcut option A can only add channels, got in_channels={in_channels} > "
                             f"out_channels={out_channels}")
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return x.pad(((0, 0), (0, self.extra), (0, 0), (0, 0)))


def shortcut(in_channels, out_channels, stride, option):
    """The ResNet paper's three shortcuts, as a Module.

    A  identity, or ZeroPadShortcut where the shape changes: 0 params
    B  identity, or a 1×1 conv (stride s) + BN where the shape changes
    C  a 1×1 conv + BN always: C_in·C_out + 2·C_out params per block
    """
    if option not in ("A", "B", "C"):
        raise ValueError(f"shortcut option must be 'A', 'B' or 'C', got {option!r}")
    same = stride == 1 and in_channels == out_channels
    if option == "C" or (option == "B" and not same):
        return conv_bn(in_channels, out_channels, 1, stride, act=None)
    return nn.Identity() if same else ZeroPadShortcut(in_channels, out_channels, stride)


class BasicBlock(nn.Module):
    """ResNet basic block: y = relu(F(x) + shortcut(x)), F = conv3x3-BN-ReLU-conv3x3-BN.

    Why: a deep plain net trains worse than a shallow one (degradation); a
    block that only has to learn the residual F(x) = H(x) - x can fall back
    to the identity, so depth stops hurting (He et al. 2015).
    `se_reduction=r` inserts an SE block on F before the addition (SE-ResNet).

    params = 9·C_in·C_out + 9·C_out² + 4·C_out (+ shortcut, see `shortcut`)
    MACs   = 9·C_in·C_out·H·W + 9·C_out²·H·W (+ C_in·C_out·H·W for a projection)
    Halving H and W while doubling C keeps the MACs of a layer (ResNet's
    rule): 56·56·64·(3·3·64) = 28·28·128·(3·3·128) = 115,605,504.
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut_option="B", se_reduction=None):
        super().__init__()
        self.residual = nn.Sequential(conv_bn(in_channels, out_channels, 3, stride),
                                      conv_bn(out_channels, out_channels, 3, act=None))
        if se_reduction is not None:
            self.residual.append(SEBlock(out_channels, se_reduction))
        self.shortcut = shortcut(in_channels, out_channels, stride, shortcut_option)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 reduce to C_mid → 3×3 (stride s) → 1×1 expand to 4·C_mid, plus shortcut.

    Why: the 3×3 runs on C_mid = C_out/4 channels, so a 256-channel block
    costs about what a 64-channel basic block does, letting ResNet-50/101/152
    go deep at a fixed budget. `se_reduction=r` adds an SE block on F
    (SE-ResNet-50: 28.1M params against ResNet-50's 25.6M).

    params = C_in·C_mid + 9·C_mid² + C_mid·C_out + 2·(2·C_mid + C_out) (+ shortcut)
    MACs   = C_in·C_mid·H_in·W_in + (9·C_mid² + C_mid·C_out)·H·W  (the stride sits on the 3×3)
    """

    expansion = 4

    def __init__(self, in_channels, mid_channels, stride=1, shortcut_option="B", se_reduction=None):
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.residual = nn.Sequential(conv_bn(in_channels, mid_channels, 1),
                                      conv_bn(mid_channels, mid_channels, 3, stride),
                                      conv_bn(mid_channels, out_channels, 1, act=None))
        if se_reduction is not None:
            self.residual.append(SEBlock(out_channels, se_reduction))
        self.shortcut = shortcut(in_channels, out_channels, stride, shortcut_option)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): y = x' + conv(relu(bn(conv(relu(bn(x)))))).

    Why: with BN and ReLU moved before each conv, nothing follows the
    addition, so the shortcut path is a pure identity from block to block and
    signals (and gradients) pass unchanged through hundreds of layers
    (ResNet-1001). The shortcut x' is shortcut(x) on the raw input.

    params = 9·C_in·C_out + 9·C_out² + 2·C_in + 2·C_out (+ shortcut)
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut_option="B"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = shortcut(in_channels, out_channels, stride, shortcut_option)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class DeformableBlock(BasicBlock):
    """A basic residual block whose second 3×3 conv is a deformable conv (Dai et al. 2017).

    Why: a fixed 3×3 grid samples the same geometry everywhere; a deformable
    conv learns a (Δy, Δx) per tap and output pixel (a zero-initialised
    offset conv, so the block starts as the plain block) and can follow the
    object's shape. DCN puts it in the last stages of a ResNet.
    `modulated=True` adds DCNv2's per-tap mask.

    params = BasicBlock's + (offset conv: 9·C_out·18 + 18; mask conv: 9·C_out·9 + 9 if modulated)
             (the deformable conv keeps the 9·C_out² weights of the conv it replaces)
    MACs   = BasicBlock's + 9·C_out·18·H·W (offsets) (+ 9·C_out·9·H·W mask); bilinear sampling not counted
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut_option="B", modulated=False):
        super().__init__(in_channels, out_channels, stride, shortcut_option)
        second = self.residual[1]  # Sequential(conv, bn): swap its conv for a deformable one
        setattr(second, "0", nn.DeformConv2d(out_channels, out_channels, 3, padding=1, bias=False,
                                             modulated=modulated))


# ---------------------------------------------------------------------------
# highway networks (Srivastava et al. 2015)
# ---------------------------------------------------------------------------
class _Highway(nn.Module):
    """y = H(x)·T(x) + x·(1 - T(x)), H = relu(transform(x)), T = sigmoid(gate(x))."""

    def __init__(self, transform, gate, gate_bias):
        super().__init__()
        self.transform, self.gate = transform, gate
        init.constant_(self.gate.bias, gate_bias)

    def forward(self, x):
        t = F.sigmoid(self.gate(x))
        return F.relu(self.transform(x)) * t + x * (1 - t)


class Highway(_Highway):
    """Highway layer (dense): y = H(x)·T(x) + x·(1 - T(x)), T = sigmoid(W_T·x + b_T).

    Why: the transform gate T decides per unit how much of x to carry
    unchanged; with b_T initialised negative (the paper uses -1 to -3) the
    layer starts close to the identity, so very deep stacks (100 layers)
    train with plain SGD, the idea ResNet later made gate-free.

    params = 2·(D² + D)     MACs = 2·D²
    """

    def __init__(self, features, gate_bias=-2.0):
        super().__init__(nn.Linear(features, features), nn.Linear(features, features), gate_bias)


class ConvHighway(_Highway):
    """Convolutional highway layer: H and T are k×k convs ('same' padding), the same gating.

    params = 2·(k²·C² + C)     MACs = 2·k²·C²·H·W
    """

    def __init__(self, channels, kernel_size=3, gate_bias=-2.0):
        pad = _same_padding(kernel_size)
        super().__init__(nn.Conv2d(channels, channels, kernel_size, padding=pad),
                         nn.Conv2d(channels, channels, kernel_size, padding=pad), gate_bias)


# ---------------------------------------------------------------------------
# Inception (Szegedy et al. 2014, 2015; Inception-v4 / Inception-ResNet 2016)
# ---------------------------------------------------------------------------
class _Branches(nn.Module):
    """Run parallel branches on the same input and concatenate along channels."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return concat([branch(x) for branch in self.branches], axis=1)


class InceptionNaive(_Branches):
    """Naive Inception module: 1×1, 3×3 and 5×5 convs and a 3×3 max-pool side by side, concatenated.

    Why: let the next layer pick the scale (GoogLeNet fig. 2a). The flaw
    the paper points out: the pool branch passes all C_in channels, so the
    output width only grows, and the 5×5 on C_in channels is expensive.

    out channels = c1 + c3 + c5 + C_in
    params = C_in·(c1 + 9·c3 + 25·c5) + c1 + c3 + c5
    """

    def __init__(self, in_channels, c1, c3, c5):
        super().__init__(conv_relu(in_channels, c1, 1), conv_relu(in_channels, c3, 3),
                         conv_relu(in_channels, c5, 5), nn.MaxPool2d(3, 1, 1))


class InceptionV1(_Branches):
    """GoogLeNet's Inception module: 1×1 reductions before the 3×3 and 5×5, and after the pool.

    Why: a 1×1 conv to fewer channels first makes the big kernels cheap.
    A 5×5 conv 128→256 has 128·5·5·256 = 819,200 weights; after a 1×1
    128→32 the 5×5 32→256 has 32·25·256 = 204,800, and with the 1×1's
    128·32 = 4,096 the path has 208,896: 3.9x fewer.

    out channels = c1 + c3 + c5 + pool_proj
    params = C_in·(c1 + r3 + r5 + pool_proj) + 9·r3·c3 + 25·r5·c5 + (c1 + r3 + c3 + r5 + c5 + pool_proj)
    """

    def __init__(self, in_channels, c1, r3, c3, r5, c5, pool_proj):
        super().__init__(conv_relu(in_channels, c1, 1),
                         nn.Sequential(conv_relu(in_channels, r3, 1), conv_relu(r3, c3, 3)),
                         nn.Sequential(conv_relu(in_channels, r5, 1), conv_relu(r5, c5, 5)),
                         nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_relu(in_channels, pool_proj, 1)))


class FactorizedConv(nn.Module):
    """A k×k conv (k odd), or one of Inception v3's factorizations of it; each stage conv-BN-ReLU.

    factorization='none'        one k×k conv:                    k²·C_in·C_out weights
                  'stacked'     (k-1)/2 stacked 3×3 convs (VGG; Inception v3 fig. 1: 5×5 → two 3×3):
                                9·C_in·C_out + 9·C_out²·((k-1)/2 - 1)
                  'asymmetric'  1×k then k×1 (Inception v3 fig. 3): k·C_in·C_out + k·C_out²

    Why: the same receptive field for fewer weights and an extra
    non-linearity. With C_in = C_out: two 3×3 cost 18 against 25 per channel
    pair (28% fewer); 1×3 + 3×1 cost 6 against 9 (33% fewer); in general an
    n×1 + 1×n pair costs 2n instead of n².
    MACs = weights·H·W (stride 1, 'same' padding).
    """

    def __init__(self, in_channels, out_channels, kernel_size=5, factorization="none"):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        if factorization == "none":
            stages = [conv_bn(in_channels, out_channels, kernel_size)]
        elif factorization == "stacked":
            if kernel_size < 3:
                raise ValueError(f"factorization='stacked' needs kernel_size >= 3, got {kernel_size}")
            count = (kernel_size - 1) // 2
            stages = [conv_bn(in_channels if i == 0 else out_channels, out_channels, 3) for i in range(count)]
        elif factorization == "asymmetric":
            stages = [conv_bn(in_channels, out_channels, (1, kernel_size)),
                      conv_bn(out_channels, out_channels, (kernel_size, 1))]
        else:
            raise ValueError(f"factorization must be 'none', 'stacked' or 'asymmetric', got {factorization!r}")
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        return self.stages(x)


class InceptionFactorized(_Branches):
    """Inception v3's module A (fig. 5): the 5×5 branch replaced by two stacked 3×3 convs.

    Branches: 1×1 (c1); 1×1 (r3) → 3×3 (c3); 1×1 (rd) → 3×3 (cd) → 3×3 (cd);
    3×3 average pool → 1×1 (pool_proj). All convs conv-BN-ReLU.

    out channels = c1 + c3 + cd + pool_proj
    params = C_in·(c1 + r3 + rd + pool_proj) + 9·r3·c3 + 9·rd·cd + 9·cd²
             + 2·(c1 + r3 + c3 + rd + 2·cd + pool_proj)
    """

    def __init__(self, in_channels, c1, r3, c3, rd, cd, pool_proj):
        super().__init__(conv_bn(in_channels, c1, 1),
                         nn.Sequential(conv_bn(in_channels, r3, 1), conv_bn(r3, c3, 3)),
                         nn.Sequential(conv_bn(in_channels, rd, 1), conv_bn(rd, cd, 3), conv_bn(cd, cd, 3)),
                         nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                       conv_bn(in_channels, pool_proj, 1)))


class InceptionAsymmetric(_Branches):
    """Inception v3's module B (fig. 6): n×n convs factorized into 1×n then n×1.

    Branches: 1×1 (c1); 1×1 (r) → 1×n (r) → n×1 (c); 1×1 (r) → 1×n → n×1 →
    1×n → n×1 (the last to c); 3×3 average pool → 1×1 (pool_proj).
    The paper uses n = 7 on the 17×17 grid.

    out channels = c1 + 2·c + pool_proj
    params = C_in·(c1 + 2·r + pool_proj) + n·(r² + r·c) + n·(3·r² + r·c) + 2·(c1 + 2·c + 6·r + pool_proj)
    """

    def __init__(self, in_channels, c1, r, c, pool_proj, n=7):
        one_by_n, n_by_one = (1, n), (n, 1)
        super().__init__(conv_bn(in_channels, c1, 1),
                         nn.Sequential(conv_bn(in_channels, r, 1), conv_bn(r, r, one_by_n), conv_bn(r, c, n_by_one)),
                         nn.Sequential(conv_bn(in_channels, r, 1), conv_bn(r, r, one_by_n), conv_bn(r, r, n_by_one),
                                       conv_bn(r, r, one_by_n), conv_bn(r, c, n_by_one)),
                         nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                       conv_bn(in_channels, pool_proj, 1)))


class GridReduction(_Branches):
    """Inception v3's grid-size reduction (fig. 10): stride-2 conv and pool branches in parallel.

    Why: pooling first loses information (a representational bottleneck);
    convolving first at full size is expensive. Doing both side by side
    and concatenating halves H×W while widening the output cheaply.
    Branches: 1×1 (r) → 3×3/2 (c); 1×1 (rd) → 3×3 (cd) → 3×3/2 (cd);
    3×3/2 max-pool. Padded: out size (H - 1)//2 + 1 (the paper's 35 → 17
    uses no padding).

    out channels = c + cd + C_in
    params = C_in·(r + rd) + 9·(r·c + rd·cd + cd²) + 2·(r + c + rd + 2·cd)
    """

    def __init__(self, in_channels, r, c, rd, cd):
        super().__init__(nn.Sequential(conv_bn(in_channels, r, 1), conv_bn(r, c, 3, stride=2)),
                         nn.Sequential(conv_bn(in_channels, rd, 1), conv_bn(rd, cd, 3), conv_bn(cd, cd, 3, stride=2)),
                         nn.MaxPool2d(3, 2, 1))


class InceptionResNetA(nn.Module):
    """Inception-ResNet-A (Szegedy et al. 2016, fig. 16): y = relu(x + scale·conv1x1(inception(x))).

    Branches: 1×1 (b); 1×1 (b) → 3×3 (b); 1×1 (b) → 3×3 (3b/2) → 3×3 (2b),
    concatenated, then a linear 1×1 conv (with bias, no activation) back to
    C channels. Why the scale (0.1 to 0.3): with more than ~1000 filters
    the residual variant "died" early in training; scaling the residual
    down before the addition stabilised it.

    params = 7·C·b + 9·b² + 27·b·b' + C + 12·b + 2·b'   (b' = ⌊3b/2⌋; BN included)
    out channels = C (the shortcut is the identity)
    """

    def __init__(self, channels, branch_channels=32, scale=0.17):
        super().__init__()
        b, b15 = branch_channels, branch_channels * 3 // 2
        self.branches = _Branches(conv_bn(channels, b, 1),
                                  nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b, 3)),
                                  nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b15, 3), conv_bn(b15, 2 * b, 3)))
        self.project = nn.Conv2d(4 * b, channels, 1)
        self.scale = scale

    def forward(self, x):
        return F.relu(x + self.project(self.branches(x)) * self.scale)


# ---------------------------------------------------------------------------
# depthwise separable convolutions: MobileNet v1/v2, Xception
# ---------------------------------------------------------------------------
class MobileNetUnit(nn.Module):
    """MobileNet v1's depthwise separable unit: 3×3 depthwise-BN-ReLU, then 1×1 pointwise-BN-ReLU.

    Why: a standard conv filters and combines channels in one step, costing
    Dk²·M·N·Df² MACs. Splitting it into a per-channel Dk×Dk filter
    (Dk²·M·Df²) and a 1×1 combination (M·N·Df²) costs
    Dk²·M·Df² + M·N·Df², a ratio of 1/N + 1/Dk² to the standard conv:
    8 to 9x fewer for 3×3 (Howard et al. 2017).

    params = 9·M + M·N + 2·M + 2·N       MACs = (9·M + M·N)·Df²  (Df = output size)
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.depthwise = conv_bn(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = conv_bn(in_channels, out_channels, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNet v2's inverted residual with a linear bottleneck (Sandler et al. 2018).

    1×1 expand C_in → t·C_in (BN, ReLU6) → 3×3 depthwise (stride s, BN, ReLU6)
    → 1×1 project to C_out (BN, NO activation); y = x + that when s = 1 and
    C_in = C_out. Why: the narrow tensors carry the information and ReLU on
    a low-dimensional manifold destroys it, so the projection stays linear;
    the non-linearities work in the expanded space, and the shortcuts join
    the thin bottlenecks (the inverse of ResNet's wide-narrow-wide).

    params = C_in·tC_in + 9·tC_in + tC_in·C_out + 2·(2·tC_in + C_out)   (no expand conv when t = 1)
    MACs   = C_in·tC_in·H_in·W_in + (9·tC_in + tC_in·C_out)·H·W
    """

    def __init__(self, in_channels, out_channels, stride=1, expand_ratio=6):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = [conv_bn(in_channels, hidden, 1, act="relu6")] if expand_ratio != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                   conv_bn(hidden, out_channels, 1, act=None)]
        self.layers = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.layers(x)
        return x + out if self.use_residual else out


class SeparableConv(nn.Module):
    """Xception's separable conv unit: ReLU → depthwise k×k → pointwise 1×1 → BN, `repeats` times.

    Xception (Chollet 2017) puts no non-linearity between the depthwise and
    the pointwise step (it found one hurt), unlike MobileNet. NASNet and
    AmoebaNet's "sep k×k" ops apply this unit twice (repeats=2); the stride
    sits on the first depthwise conv.

    params = Σ over repeats: k²·C_a + C_a·C_out + 2·C_out   (C_a = C_in first, then C_out)
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, repeats=1):
        super().__init__()
        layers = []
        for i in range(repeats):
            layers += [nn.ReLU(),
                       nn.SeparableConv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                          stride if i == 0 else 1, _same_padding(kernel_size), bias=False),
                       nn.BatchNorm2d(out_channels)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class XceptionBlock(nn.Module):
    """Xception's residual block: `reps` separable conv units (+ a 3×3/2 max-pool if stride 2).

    Why: Xception's hypothesis is that cross-channel and spatial
    correlations can be mapped entirely separately; a stack of depthwise
    separable convs with residual connections (a "linear stack") is the
    whole architecture. Shortcut: identity, or 1×1 conv (stride s) + BN
    when the shape changes (the entry flow).

    params = Σ SeparableConv units + (C_in·C_out + 2·C_out if projected)
    """

    def __init__(self, in_channels, out_channels, reps=2, stride=1):
        super().__init__()
        _check_positive(reps, "reps")
        units = [SeparableConv(in_channels if i == 0 else out_channels, out_channels) for i in range(reps)]
        if stride != 1:
            units.append(nn.MaxPool2d(3, stride, 1))
        self.residual = nn.Sequential(*units)
        self.shortcut = shortcut(in_channels, out_channels, stride, "B")

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


# ---------------------------------------------------------------------------
# grouped convolutions: ResNeXt, ShuffleNet
# ---------------------------------------------------------------------------
class ResNeXtBlock(nn.Module):
    """ResNeXt block (Xie et al. 2017): a bottleneck whose 3×3 is a grouped conv of `cardinality` paths.

    1×1 C_in → D, 3×3 grouped D → D (groups = cardinality, stride s), 1×1
    D → C_out, each BN (ReLU on the first two), plus shortcut (option B);
    D = cardinality·width. Why: aggregating many same-shaped thin paths
    ("split-transform-merge", one grouped conv) raises accuracy more than
    going deeper or wider at the same cost: 32×4d matches ResNet-50's cost.

    params = C_in·D + 9·D²/cardinality + D·C_out + 2·(2·D + C_out) (+ shortcut)
    """

    def __init__(self, in_channels, out_channels, stride=1, cardinality=32, width=4):
        super().__init__()
        _check_positive(cardinality, "cardinality")
        _check_positive(width, "width")
        mid = cardinality * width
        self.residual = nn.Sequential(conv_bn(in_channels, mid, 1),
                                      conv_bn(mid, mid, 3, stride, groups=cardinality),
                                      conv_bn(mid, out_channels, 1, act=None))
        self.shortcut = shortcut(in_channels, out_channels, stride, "B")

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class ShuffleNetUnit(nn.Module):
    """ShuffleNet unit (Zhang et al. 2017): 1×1 group conv → channel shuffle → 3×3 depthwise → 1×1 group conv.

    Why: in a small net the 1×1 convs dominate the cost (as MobileNet's
    table shows), so make them grouped (g times cheaper); then shuffle the
    channels so each group of the next conv sees every group's output,
    otherwise information never crosses groups.
      stride 1: y = relu(x + branch(x)), C_out = C_in
      stride 2: y = relu(concat(avgpool3x3/2(x), branch(x))): the branch
                makes C_out - C_in channels, the concatenation widens cheaply.
    Bottleneck width m = C_out/4 (the paper). BN after each conv, ReLU after
    the first only. `group_first=False` keeps the first 1×1 ungrouped (the
    first unit of stage 2, whose input has only 24 channels).

    params = C_in·m/g' + 9·m + m·C_b/g + 2·(2·m + C_b)   (g' = g or 1, C_b the branch's output)
    MACs   = C_in·m/g'·H_in·W_in + (9·m + m·C_b/g)·H·W
    """

    def __init__(self, in_channels, out_channels, groups=3, stride=1, group_first=True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleNetUnit: stride must be 1 or 2, got {stride!r}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"ShuffleNetUnit: stride 1 adds the input, so out_channels ({out_channels}) must "
                             f"equal in_channels ({in_channels})")
        branch_out = out_channels if stride == 1 else out_channels - in_channels
        mid = out_channels // 4
        first_groups = groups if group_first else 1
        for name, value, g in (("in_channels", in_channels, first_groups), ("bottleneck channels (out_channels/4)",
                               mid, groups), ("branch output channels", branch_out, groups)):
            if value <= 0 or value % g:
                raise ValueError(f"ShuffleNetUnit: {name} = {value} must be a positive multiple of groups = {g} "
                                 f"(in_channels={in_channels}, out_channels={out_channels}, stride={stride})")
        self.stride = stride
        self.compress = conv_bn(in_channels, mid, 1, groups=first_groups)
        self.shuffle = nn.ChannelShuffle(groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = conv_bn(mid, branch_out, 1, groups=groups, act=None)
        if stride == 2:
            self.pool = nn.AvgPool2d(3, 2, 1)

    def forward(self, x):
        out = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 1:
            return F.relu(x + out)
        return F.relu(concat([self.pool(x), out], axis=1))


# ---------------------------------------------------------------------------
# DenseNet, SE, NiN, SqueezeNet
# ---------------------------------------------------------------------------
class DenseLayer(nn.Module):
    """One DenseNet layer: y = concat(x, H(x)), H = BN-ReLU-conv3×3 to k channels (k = growth rate).

    bottleneck=True (DenseNet-B): H = BN-ReLU-conv1×1 (4k) - BN-ReLU-conv3×3 (k).
    params = 2·C_in + 9·C_in·k, or 2·C_in + 4k·C_in + 2·4k + 9·4k·k with the bottleneck
    """

    def __init__(self, in_channels, growth_rate, bottleneck=False):
        super().__init__()
        layers = []
        channels = in_channels
        if bottleneck:
            layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 4 * growth_rate, 1, bias=False)]
            channels = 4 * growth_rate
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, growth_rate, 3, padding=1, bias=False)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return concat([x, self.layers(x)], axis=1)


class DenseBlock(nn.Sequential):
    """DenseNet dense block (Huang et al. 2017): L layers, each fed the concatenation of all before it.

    Why: every layer sees every earlier feature map and the loss directly
    (deep supervision for free), features are reused rather than relearnt,
    so each layer can be narrow (k = 12 channels): DenseNet-BC with k = 12,
    L = 100 has 0.8M parameters.

    out channels = C_in + L·k
    params = Σ_{l<L} DenseLayer(C_in + l·k)
    """

    def __init__(self, in_channels, num_layers, growth_rate, bottleneck=False):
        super().__init__(*[DenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck)
                           for i in range(num_layers)])
        self.out_channels = in_channels + num_layers * growth_rate


class Transition(nn.Sequential):
    """DenseNet transition between blocks: BN-ReLU-conv1×1 (C_in → C_out) then 2×2 average pool.

    DenseNet-C compresses with C_out = ⌊θ·C_in⌋, θ = 0.5.
    params = 2·C_in + C_in·C_out       MACs = C_in·C_out·H_in·W_in
    """

    def __init__(self, in_channels, out_channels):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.AvgPool2d(2))


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): rescale each channel by a gate computed from all channels.

    s = sigmoid(W_2·relu(W_1·avgpool(x) + b_1) + b_2), y = x·s (per channel),
    W_1: C → C/r, W_2: C/r → C. Why: a conv mixes channels only locally;
    the squeeze (global pooling) gives each channel a global descriptor and
    the excitation learns which channels to emphasise, for a small cost.

    params = 2·C·⌊C/r⌋ + ⌊C/r⌋ + C  (= 2·C²/r, biases aside, when r divides C)
    MACs   = 2·C·⌊C/r⌋
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        _check_positive(channels, "channels")
        if not isinstance(reduction, (int, float)) or reduction <= 0 or channels // reduction < 1:
            raise ValueError(f"SEBlock: reduction must be a number in (0, channels={channels}], got {reduction!r}")
        hidden = int(channels // reduction)
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(channels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x):
        s = self.squeeze(x)  # (N, C)
        return x * s.reshape(s.shape + (1, 1))  # (N, C, 1, 1) broadcasts over H, W


class MLPConv(nn.Sequential):
    """Network in Network's mlpconv layer (Lin et al. 2013): a k×k conv then 1×1 convs, each + ReLU.

    Why: a conv is a generalised linear model of each patch; a small MLP
    (the 1×1 convs) slid over the image is a more expressive local
    function. NiN then ends with global average pooling of a C=classes map
    instead of fully connected layers (fewer parameters, less overfitting).

    params = k²·C_in·c_1 + c_1·c_2 + c_2·c_3 + c_1 + c_2 + c_3   (channels = (c_1, c_2, c_3))
    """

    def __init__(self, in_channels, channels, kernel_size, stride=1, padding=None):
        padding = _same_padding(kernel_size) if padding is None else padding
        layers = [nn.Conv2d(in_channels, channels[0], kernel_size, stride, padding), nn.ReLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 1), nn.ReLU()]
        super().__init__(*layers)


class Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016): 1×1 squeeze → 1×1 and 3×3 expand, concatenated.

    Why: SqueezeNet's strategies to cut parameters: replace 3×3 filters by
    1×1 (9x fewer), and feed the 3×3s fewer input channels (the squeeze
    layer, s < e1 + e3). With them the net matches AlexNet with 50x fewer
    parameters (1.25M).

    out channels = e1 + e3
    params = C_in·s + s + s·e1 + e1 + 9·s·e3 + e3
    """

    def __init__(self, in_channels, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = conv_relu(in_channels, squeeze, 1)
        self.expand1x1 = conv_relu(squeeze, expand1x1, 1)
        self.expand3x3 = conv_relu(squeeze, expand3x3, 3)

    def forward(self, x):
        s = self.squeeze(x)
        return concat([self.expand1x1(s), self.expand3x3(s)], axis=1)


# ---------------------------------------------------------------------------
# cells found by architecture search: NASNet-A, AmoebaNet-A
# ---------------------------------------------------------------------------
def _cell_op(name, channels):
    if name == "sep_3x3":
        return SeparableConv(channels, channels, 3, repeats=2)
    if name == "sep_5x5":
        return SeparableConv(channels, channels, 5, repeats=2)
    if name == "avg_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    if name == "max_3x3":
        return nn.MaxPool2d(3, 1, 1)
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown cell op {name!r}")


class _Cell(nn.Module):
    """A searched cell: inputs h_i (state 0) and h_{i-1} (state 1) are each mapped by
    ReLU-conv1×1-BN to C channels; each of the 5 steps adds op_a(state_a) + op_b(state_b)
    into a new state (2, 3, ...); the output concatenates the states in `CONCAT`.

    `STEPS` is the cell's op list as published (the TensorFlow reference's
    `operations` / `hiddenstate_indices`). Both inputs must have the same
    H×W (a normal cell keeps the size; the reference reduces h_{i-1} first
    when it does not). forward(x, x_prev=None) uses x for h_{i-1} when
    x_prev is None.
    """

    STEPS = ()
    CONCAT = ()

    def __init__(self, in_channels_prev, in_channels, channels):
        super().__init__()
        self.preprocess = nn.Sequential(nn.ReLU(), conv_bn(in_channels, channels, 1, act=None))
        self.preprocess_prev = nn.Sequential(nn.ReLU(), conv_bn(in_channels_prev, channels, 1, act=None))
        self.ops = nn.ModuleList(_cell_op(op, channels) for step in self.STEPS for op, _ in step)
        self.out_channels = len(self.CONCAT) * channels

    def forward(self, x, x_prev=None):
        states = [self.preprocess(x), self.preprocess_prev(x if x_prev is None else x_prev)]
        ops = iter(self.ops)
        for (_, a), (_, b) in self.STEPS:
            states.append(next(ops)(states[a]) + next(ops)(states[b]))
        return concat([states[i] for i in self.CONCAT], axis=1)


class NASNetANormalCell(_Cell):
    """NASNet-A normal cell (Zoph et al. 2018, fig. 4 left), found by RL architecture search.

    States: 0 = h_i, 1 = h_{i-1}. Steps (op(state) + op(state)):
      2 = sep5x5(0) + sep3x3(1)        3 = sep5x5(1) + sep3x3(1)
      4 = avg3x3(0) + identity(1)      5 = avg3x3(1) + avg3x3(1)
      6 = sep3x3(0) + identity(0)
    Output: concat(1, 2, 3, 4, 5, 6), 6·C channels. "sepKxK" is ReLU-
    depthwise-pointwise-BN applied twice; pools are 3×3, stride 1.
    Why: search a small cell on CIFAR-10, then stack it to any depth and
    width; the cell transferred to ImageNet beat human-designed nets.

    params = 2 preprocess (C_in·C + 2C each) + 2·sep5x5 + 3·sep3x3,
             sepKxK(C→C) = 2·(K²·C + C² + 2C)
    """

    STEPS = ((("sep_5x5", 0), ("sep_3x3", 1)),
             (("sep_5x5", 1), ("sep_3x3", 1)),
             (("avg_3x3", 0), ("identity", 1)),
             (("avg_3x3", 1), ("avg_3x3", 1)),
             (("sep_3x3", 0), ("identity", 0)))
    CONCAT = (1, 2, 3, 4, 5, 6)


class AmoebaNetANormalCell(_Cell):
    """AmoebaNet-A normal cell (Real et al. 2019, fig. 4), found by regularized evolution.

    States: 0 = h_i, 1 = h_{i-1}. Steps (op(state) + op(state)):
      2 = avg3x3(0) + max3x3(0)        3 = sep3x3(1) + identity(1)
      4 = identity(0) + avg3x3(1)      5 = sep3x3(0) + sep5x5(2)
      6 = avg3x3(5) + sep3x3(0)
    Output: concat of the states no step consumes: (1, 3, 4, 6), 4·C channels.
    Why: evolution with aging (the oldest, not the worst, model dies)
    matched RL search's accuracy with fewer resources, and the cell it found
    is simpler (more pools, fewer separable convs) than NASNet-A's.

    params = 2 preprocess + 1·sep5x5 + 3·sep3x3  (pools and identities are free)
    """

    STEPS = ((("avg_3x3", 0), ("max_3x3", 0)),
             (("sep_3x3", 1), ("identity", 1)),
             (("identity", 0), ("avg_3x3", 1)),
             (("sep_3x3", 0), ("sep_5x5", 2)),
             (("avg_3x3", 5), ("sep_3x3", 0)))
    CONCAT = (1, 3, 4, 6)


# ---------------------------------------------------------------------------
# dense prediction: dilated stacks, FCN head
# ---------------------------------------------------------------------------
class DilatedStack(nn.Sequential):
    """3×3 convs with dilations 1, 2, 4, 8, ... each + ReLU, size-preserving (Yu & Koltun 2016).

    Why: the receptive field grows exponentially with depth,
    1 + (k-1)·Σ dilations (31×31 for 1, 2, 4, 8), while the parameter
    count grows only linearly and no resolution is lost to pooling
    (context aggregation; WaveNet uses the 1-D form).

    params = L·(k²·C² + C)        MACs = L·k²·C²·H·W
    """

    def __init__(self, channels, dilations=(1, 2, 4, 8), kernel_size=3):
        super().__init__(*[conv_relu(channels, channels, kernel_size, dilation=d) for d in dilations])
        self.receptive_field = 1 + (kernel_size - 1) * sum(dilations)


def bilinear_kernel(channels, kernel_size):
    """FCN's bilinear-interpolation weights for a ConvTranspose2d (channels, channels, k, k), diagonal."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(kernel_size) - center) / factor  # (k,)
    weight = np.zeros((channels, channels, kernel_size, kernel_size))
    weight[np.arange(channels), np.arange(channels)] = np.outer(taps, taps)  # (k, k) on the diagonal
    return weight


class FCNHead(nn.Module):
    """FCN head (Long et al. 2015): a 1×1 conv classifier per pixel, then a transposed conv upsampling by s.

    Why: a classification net's fully connected layers are convolutions
    over the whole map; written as 1×1 convs the net runs on any input
    size and outputs a coarse class map, and a learnable upsampling
    (initialised to bilinear interpolation) brings it back to pixels.
    Upsampling: kernel k_up = 2s - (s mod 2), stride s, padding (s - s mod 2)/2,
    so that out = (H - 1)·s - 2·pad + k_up = s·H exactly.

    params = C_in·K + K + K²·k_up²   (K classes, the transposed conv has no bias)
    """

    def __init__(self, in_channels, num_classes, scale_factor=8):
        super().__init__()
        _check_positive(scale_factor, "scale_factor")
        s = scale_factor
        kernel, pad = 2 * s - s % 2, (s - s % 2) // 2
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.upsample = nn.ConvTranspose2d(num_classes, num_classes, kernel, s, pad, bias=False)
        self.upsample.weight.data[...] = bilinear_kernel(num_classes, kernel)

    def forward(self, x):
        return self.upsample(self.classifier(x))

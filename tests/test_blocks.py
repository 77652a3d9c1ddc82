"""The literature's blocks: output shape and parameter count against each docstring's formula,
and gradients (input AND parameters) against finite differences in float64."""
import numpy as np
import pytest

import tinyconv
import tinyconv.functional as F
from tinyconv import Tensor, blocks as B, nn
from tinyconv.gradcheck import GradcheckError, gradcheck_module


def sep(c_in, c_out, k=3, repeats=1):
    """Parameters of SeparableConv: Σ over repeats k²·C_a + C_a·C_out + 2·C_out."""
    return sum(k * k * c + c * c_out + 2 * c_out for c in [c_in] + [c_out] * (repeats - 1))


def dense_layer(c, k, bottleneck):
    return 2 * c + 4 * k * c + 8 * k + 36 * k * k if bottleneck else 2 * c + 9 * c * k


def shuffle_unit(c_in, c_out, g, stride, group_first=True):
    m = c_out // 4
    branch = c_out if stride == 1 else c_out - c_in
    return c_in * m // (g if group_first else 1) + 2 * m + 9 * m + 2 * m + m * branch // g + 2 * branch


def basic(ci, co):
    return 9 * ci * co + 9 * co * co + 4 * co


def cell_prep(ip, ic, c):
    return ip * c + ic * c + 4 * c


# (name, block factory, input shape (C, H, W) or (D,), expected output shape, expected parameter count)
CASES = [
    ("basic-A-stride2", lambda: B.BasicBlock(4, 8, 2, "A"), (4, 8, 8), (8, 4, 4), basic(4, 8)),
    ("basic-B-stride2", lambda: B.BasicBlock(4, 8, 2, "B"), (4, 8, 8), (8, 4, 4), basic(4, 8) + 4 * 8 + 16),
    ("basic-B-same", lambda: B.BasicBlock(4, 4, 1, "B"), (4, 6, 6), (4, 6, 6), basic(4, 4)),
    ("basic-C-same", lambda: B.BasicBlock(4, 4, 1, "C"), (4, 6, 6), (4, 6, 6), basic(4, 4) + 16 + 8),
    ("basic-SE", lambda: B.BasicBlock(8, 8, 1, "A", se_reduction=4), (8, 6, 6), (8, 6, 6),
     basic(8, 8) + 2 * 8 * 2 + 2 + 8),
    ("bottleneck-B", lambda: B.Bottleneck(8, 2, 2, "B"), (8, 8, 8), (8, 4, 4),
     8 * 2 + 4 + 9 * 4 + 4 + 2 * 8 + 16 + 8 * 8 + 16),
    ("preact-A", lambda: B.PreActBlock(4, 6, 2, "A"), (4, 8, 8), (6, 4, 4), 8 + 9 * 24 + 12 + 9 * 36),
    ("deformable", lambda: B.DeformableBlock(4, 4), (4, 6, 6), (4, 6, 6), basic(4, 4) + 9 * 4 * 18 + 18),
    ("deformable-v2-stride2", lambda: B.DeformableBlock(3, 4, 2, "B", modulated=True), (3, 6, 6), (4, 3, 3),
     basic(3, 4) + 3 * 4 + 8 + 9 * 4 * 18 + 18 + 9 * 4 * 9 + 9),
    ("highway", lambda: B.Highway(5), (5,), (5,), 2 * (25 + 5)),
    ("conv-highway", lambda: B.ConvHighway(3), (3, 6, 6), (3, 6, 6), 2 * (9 * 9 + 3)),
    ("inception-naive", lambda: B.InceptionNaive(3, 2, 2, 2), (3, 6, 6), (9, 6, 6), 3 * (2 + 18 + 50) + 6),
    ("inception-v1", lambda: B.InceptionV1(3, 2, 2, 3, 1, 2, 2), (3, 6, 6), (9, 6, 6),
     3 * (2 + 2 + 1 + 2) + 9 * 2 * 3 + 25 * 1 * 2 + (2 + 2 + 3 + 1 + 2 + 2)),
    ("factorized-5x5", lambda: B.FactorizedConv(3, 4, 5), (3, 6, 6), (4, 6, 6), 25 * 12 + 8),
    ("factorized-stacked", lambda: B.FactorizedConv(3, 4, 5, "stacked"), (3, 6, 6), (4, 6, 6), 9 * 12 + 9 * 16 + 16),
    ("factorized-asym", lambda: B.FactorizedConv(3, 4, 3, "asymmetric"), (3, 6, 6), (4, 6, 6), 3 * 12 + 3 * 16 + 16),
    ("inception-factorized", lambda: B.InceptionFactorized(4, 2, 2, 3, 2, 3, 2), (4, 6, 6), (10, 6, 6),
     4 * (2 + 2 + 2 + 2) + 9 * 6 + 9 * 6 + 9 * 9 + 2 * (2 + 2 + 3 + 2 + 6 + 2)),
    ("inception-asymmetric", lambda: B.InceptionAsymmetric(4, 2, 2, 3, 2, n=3), (4, 6, 6), (10, 6, 6),
     4 * (2 + 4 + 2) + 3 * (4 + 6) + 3 * (12 + 6) + 2 * (2 + 6 + 12 + 2)),
    ("grid-reduction", lambda: B.GridReduction(4, 2, 3, 2, 3), (4, 7, 7), (10, 4, 4),
     4 * 4 + 9 * (6 + 6 + 9) + 2 * (2 + 3 + 2 + 6)),
    ("inception-resnet-a", lambda: B.InceptionResNetA(4, 2), (4, 6, 6), (4, 6, 6),
     7 * 4 * 2 + 9 * 4 + 27 * 2 * 3 + 4 + 12 * 2 + 2 * 3),
    ("mobilenet-unit", lambda: B.MobileNetUnit(4, 6, 2), (4, 8, 8), (6, 4, 4), 9 * 4 + 8 + 24 + 12),
    ("inverted-residual", lambda: B.InvertedResidual(4, 4, 1, 2), (4, 6, 6), (4, 6, 6),
     4 * 8 + 16 + 9 * 8 + 16 + 8 * 4 + 8),
    ("inverted-residual-t1-stride2", lambda: B.InvertedResidual(4, 6, 2, 1), (4, 6, 6), (6, 3, 3),
     9 * 4 + 8 + 4 * 6 + 12),
    ("separable-x2", lambda: B.SeparableConv(4, 6, 3, 1, 2), (4, 6, 6), (6, 6, 6), sep(4, 6, 3, 2)),
    ("xception", lambda: B.XceptionBlock(4, 6, 2, 2), (4, 8, 8), (6, 4, 4), sep(4, 6) + sep(6, 6) + 24 + 12),
    ("resnext", lambda: B.ResNeXtBlock(4, 8, 2, 2, 2), (4, 8, 8), (8, 4, 4),
     4 * 4 + 8 + 9 * 16 // 2 + 8 + 4 * 8 + 16 + 4 * 8 + 16),
    ("shufflenet-s1", lambda: B.ShuffleNetUnit(12, 12, 3), (12, 6, 6), (12, 6, 6), shuffle_unit(12, 12, 3, 1)),
    ("shufflenet-s2", lambda: B.ShuffleNetUnit(12, 24, 3, 2), (12, 6, 6), (24, 3, 3), shuffle_unit(12, 24, 3, 2)),
    ("shufflenet-s2-first", lambda: B.ShuffleNetUnit(4, 24, 2, 2, group_first=False), (4, 6, 6), (24, 3, 3),
     shuffle_unit(4, 24, 2, 2, group_first=False)),
    ("dense-block", lambda: B.DenseBlock(4, 3, 2), (4, 6, 6), (10, 6, 6), sum(dense_layer(4 + 2 * i, 2, False)
                                                                              for i in range(3))),
    ("dense-block-bc", lambda: B.DenseBlock(4, 2, 2, bottleneck=True), (4, 6, 6), (8, 6, 6),
     dense_layer(4, 2, True) + dense_layer(6, 2, True)),
    ("transition", lambda: B.Transition(4, 2), (4, 6, 6), (2, 3, 3), 8 + 8),
    ("se", lambda: B.SEBlock(8, 4), (8, 6, 6), (8, 6, 6), 2 * 8 * 2 + 2 + 8),
    ("mlpconv", lambda: B.MLPConv(3, (4, 3, 2), 3), (3, 6, 6), (2, 6, 6), 9 * 3 * 4 + 12 + 6 + 4 + 3 + 2),
    ("fire", lambda: B.Fire(4, 2, 3, 3), (4, 6, 6), (6, 6, 6), 8 + 2 + 6 + 3 + 9 * 6 + 3),
    ("nasnet-a-normal", lambda: B.NASNetANormalCell(3, 4, 2), (4, 6, 6), (12, 6, 6),
     cell_prep(3, 4, 2) + 2 * sep(2, 2, 5, 2) + 3 * sep(2, 2, 3, 2)),
    ("amoebanet-a-normal", lambda: B.AmoebaNetANormalCell(3, 4, 2), (4, 6, 6), (8, 6, 6),
     cell_prep(3, 4, 2) + sep(2, 2, 5, 2) + 3 * sep(2, 2, 3, 2)),
    ("dilated", lambda: B.DilatedStack(2, (1, 2)), (2, 8, 8), (2, 8, 8), 2 * (9 * 4 + 2)),
    ("fcn-head", lambda: B.FCNHead(4, 3, 2), (4, 4, 4), (3, 8, 8), 4 * 3 + 3 + 9 * 16),
    ("fcn-head-odd", lambda: B.FCNHead(2, 2, 3), (2, 3, 3), (2, 9, 9), 2 * 2 + 2 + 4 * 25),
]


def _input(shape, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return Tensor(rng.standard_normal((batch,) + shape), requires_grad=True)


def _two_inputs(block):
    """Cells take (h_i, h_{i-1}); h_{i-1} here has 3 channels."""
    return isinstance(block, B._Cell)


@pytest.mark.parametrize("name, make, in_shape, out_shape, params", CASES, ids=[c[0] for c in CASES])
def test_output_shape_and_parameter_count(name, make, in_shape, out_shape, params):
    tinyconv.manual_seed(0)
    block = make().double()
    assert block.num_parameters() == params
    args = [_input(in_shape)]
    if _two_inputs(block):
        args.append(_input((3,) + in_shape[1:], seed=1))
    y = block(*args)
    assert y.shape == (2,) + out_shape
    assert y.dtype == np.float64


def check_block_gradients(block, inputs, seed=0):
    """Directional gradcheck with respect to the inputs and every parameter."""
    return gradcheck_module(block, inputs, seed=seed)


def _perturb_offsets(block):
    """Give a deformable block's offset conv a constant 0.5 shift plus small weights, so every
    bilinear sample sits mid-cell (fractional part near 0.5): no kink within eps."""
    for m in block.modules():
        if isinstance(m, nn.DeformConv2d):
            m.offset_conv.bias.data[...] = 0.5
            m.offset_conv.weight.data[...] = 1e-3 * np.random.default_rng(3).standard_normal(m.offset_conv.weight.shape)


@pytest.mark.parametrize("name, make, in_shape, out_shape, params", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_finite_differences(name, make, in_shape, out_shape, params):
    tinyconv.manual_seed(1)
    block = make().double()
    _perturb_offsets(block)
    args = [_input(in_shape, seed=2)]
    if _two_inputs(block):
        args.append(_input((3,) + in_shape[1:], seed=3))
    assert check_block_gradients(block, args)  # training mode: BN uses the batch of 2


def test_gradient_check_can_fail():
    """The block gradcheck catches a wrong gradient in one parameter's path."""
    block = B.SEBlock(4, 2).double()
    fc = block.squeeze[2]
    original_forward = fc.forward

    def wrong_backward_forward(x):
        y = original_forward(x)
        return Tensor._make(y.data, (y,), lambda g: (2 * g,), "wrong")  # doubles the gradient

    fc.forward = wrong_backward_forward
    with pytest.raises(GradcheckError):
        check_block_gradients(block, [_input((4, 6, 6))])


def test_blocks_in_eval_mode_pass_gradcheck():
    block = B.InvertedResidual(3, 3, 1, 2).double()
    block(_input((3, 6, 6)))  # one training step fills the running statistics
    block.eval()
    assert check_block_gradients(block, [_input((3, 6, 6), seed=5, batch=1)])


# ---------------------------------------------------------------------------
# what each block's argument is about
# ---------------------------------------------------------------------------
def test_shortcut_option_a_adds_no_parameters_and_b_only_where_shapes_change():
    a, b, c = (B.BasicBlock(16, 32, 2, opt).num_parameters() for opt in "ABC")
    assert a == basic(16, 32)
    assert b - a == 16 * 32 + 2 * 32  # the 1x1 projection + its BN
    assert B.BasicBlock(16, 16, 1, "B").num_parameters() == B.BasicBlock(16, 16, 1, "A").num_parameters()
    assert B.BasicBlock(16, 16, 1, "C").num_parameters() - basic(16, 16) == 16 * 16 + 32
    assert c == b


def test_option_a_shortcut_is_subsampled_input_with_zero_channels():
    x = _input((2, 4, 4))
    y = B.ZeroPadShortcut(2, 5, 2)(x)
    assert y.shape == (2, 5, 2, 2)
    np.testing.assert_array_equal(y.data[:, :2], x.data[:, :, ::2, ::2])
    np.testing.assert_array_equal(y.data[:, 2:], 0)
    with pytest.raises(ValueError, match="option A can only add channels"):
        B.ZeroPadShortcut(4, 2, 1)


def test_highway_gate_starts_closed():
    """With the negative gate bias and zero gate weights, T = sigmoid(-2) ≈ 0.12: mostly carry."""
    layer = B.Highway(4, gate_bias=-2.0).double()
    assert np.all(layer.gate.bias.data == -2.0)
    layer.gate.weight.data[...] = 0
    x = _input((4,))
    t = 1 / (1 + np.exp(2.0))
    h = np.maximum(layer.transform(x).data, 0)
    np.testing.assert_allclose(layer(x).data, h * t + x.data * (1 - t), rtol=1e-12)


def test_separable_cost_ratio_is_one_over_n_plus_one_over_k_squared():
    """MobileNet eq. 5: (Dk²·M·Df² + M·N·Df²) / (Dk²·M·N·Df²) = 1/N + 1/Dk²."""
    M, N, k = 32, 64, 3
    unit = B.MobileNetUnit(M, N)
    conv_weights = sum(m.weight.size for m in unit.modules() if isinstance(m, nn.Conv2d))
    assert conv_weights == k * k * M + M * N
    assert conv_weights / (k * k * M * N) == pytest.approx(1 / N + 1 / k ** 2, rel=1e-12)


def _conv_weights(module):
    return sum(m.weight.size for m in module.modules() if isinstance(m, nn.Conv2d))


def test_factorizations_save_28_and_33_percent():
    C = 16
    full5, stacked = (_conv_weights(B.FactorizedConv(C, C, 5, f)) for f in ("none", "stacked"))
    assert (full5, stacked) == (25 * C * C, 18 * C * C)
    assert 1 - stacked / full5 == pytest.approx(0.28)
    full3, asym = (_conv_weights(B.FactorizedConv(C, C, 3, f)) for f in ("none", "asymmetric"))
    assert 1 - asym / full3 == pytest.approx(1 / 3)
    full7, asym7 = (_conv_weights(B.FactorizedConv(C, C, 7, f)) for f in ("none", "asymmetric"))
    assert (full7, asym7) == (49 * C * C, 14 * C * C)  # n² against 2n


def test_inception_reduction_1x1_cuts_5x5_weights_4x():
    five = nn.Conv2d(128, 256, 5, bias=False)
    reduced = nn.Sequential(nn.Conv2d(128, 32, 1, bias=False), nn.Conv2d(32, 256, 5, bias=False))
    assert five.num_parameters() == 819_200
    assert reduced[1].num_parameters() == 204_800  # the 5x5 after the reduction: 32·25·256
    # the whole reduced path adds the 1x1's 128·32 = 4,096 (LITERATURE.md's sum omits them): 3.9x fewer
    assert reduced.num_parameters() == 208_896
    assert five.num_parameters() / reduced.num_parameters() == pytest.approx(3.92, abs=0.01)


def test_se_adds_two_c_squared_over_r():
    for C, r in ((64, 16), (64, 4), (32, 8)):
        plain = B.BasicBlock(C, C, 1, "A").num_parameters()
        with_se = B.BasicBlock(C, C, 1, "A", se_reduction=r).num_parameters()
        assert with_se - plain - (C // r + C) == 2 * C * C // r  # biases aside


def test_se_rescales_channels_by_a_gate_in_0_1():
    block = B.SEBlock(6, 3).double()
    x = _input((6, 4, 4))
    gate = block.squeeze(x).data  # (N, C)
    assert np.all((gate > 0) & (gate < 1))
    np.testing.assert_allclose(block(x).data, x.data * gate[:, :, None, None], rtol=1e-12)


def test_inverted_residual_adds_only_when_shapes_match_and_projection_is_linear():
    assert B.InvertedResidual(4, 4, 1).use_residual
    assert not B.InvertedResidual(4, 4, 2).use_residual
    assert not B.InvertedResidual(4, 6, 1).use_residual
    block = B.InvertedResidual(4, 4, 1)
    assert not isinstance(block.layers[-1][-1], (nn.ReLU, nn.ReLU6))  # conv, BN, no activation
    assert isinstance(block.layers[0][-1], nn.ReLU6)


def test_shufflenet_rejects_channels_not_divisible_by_groups_at_construction():
    with pytest.raises(ValueError, match="multiple of groups = 3"):
        B.ShuffleNetUnit(10, 10, groups=3)
    with pytest.raises(ValueError, match="bottleneck channels"):
        B.ShuffleNetUnit(6, 18, groups=3, stride=2)
    with pytest.raises(ValueError, match="must equal in_channels"):
        B.ShuffleNetUnit(12, 24, groups=3, stride=1)


def test_shufflenet_mixes_groups():
    """After the shuffle, every output channel of the second group conv depends on every input group."""
    block = B.ShuffleNetUnit(36, 36, groups=3).double().eval()  # 9 bottleneck channels, 3 per group
    for m in block.modules():  # positive weights and input: every ReLU stays open
        if isinstance(m, nn.Conv2d):
            m.weight.data[...] = np.abs(m.weight.data) + 0.01
    x = Tensor(np.ones((1, 36, 4, 4)), requires_grad=True)
    y = block(x)
    g = np.zeros(y.shape)
    g[0, 0] = 1  # one output channel
    y.backward(g)
    touched = np.abs(x.grad[0]).sum(axis=(1, 2)) > 0
    assert touched.reshape(3, 12).any(axis=1).all()  # all three input groups reach it (unshuffled: group 0 only)


def test_dilated_stack_receptive_field_grows_exponentially():
    stack = B.DilatedStack(1, (1, 2, 4)).double()
    assert stack.receptive_field == 1 + 2 * (1 + 2 + 4)
    for m in stack.modules():  # positive weights: every ReLU stays open, every tap counts
        if isinstance(m, nn.Conv2d):
            m.weight.data[...] = 0.1
            m.bias.data[...] = 0.1
    x = Tensor(np.ones((1, 1, 31, 31)), requires_grad=True)
    y = stack(x)
    g = np.zeros(y.shape)
    g[0, 0, 15, 15] = 1
    y.backward(g)
    rows = np.flatnonzero(np.abs(x.grad[0, 0]).sum(axis=1))
    assert rows.max() - rows.min() + 1 == 15


def test_fcn_head_starts_as_bilinear_upsampling():
    head = B.FCNHead(2, 2, scale_factor=2).double()
    head.classifier.weight.data[...] = np.eye(2)[:, :, None, None]
    head.classifier.bias.data[...] = 0
    x = Tensor(np.ones((1, 2, 4, 4)))
    y = head(x).data
    np.testing.assert_allclose(y[0, :, 1:-1, 1:-1], 1.0)  # a constant map stays constant inside


def test_cells_follow_their_published_op_lists():
    nas = B.NASNetANormalCell(8, 8, 4)
    ops = [type(m).__name__ for m in nas.ops]
    assert ops.count("SeparableConv") == 5 and ops.count("AvgPool2d") == 3 and ops.count("Identity") == 2
    assert nas.out_channels == 24
    amoeba = B.AmoebaNetANormalCell(8, 8, 4)
    ops = [type(m).__name__ for m in amoeba.ops]
    assert ops.count("SeparableConv") == 4 and ops.count("AvgPool2d") == 3 and ops.count("MaxPool2d") == 1
    assert amoeba.out_channels == 16
    kernel = [m.layers[1].depthwise.kernel_size for m in amoeba.ops if isinstance(m, B.SeparableConv)]
    assert sorted(kernel) == [(3, 3)] * 3 + [(5, 5)]


def test_deformable_block_with_zero_offsets_equals_the_plain_block():
    tinyconv.manual_seed(4)
    deform = B.DeformableBlock(3, 3).double().eval()
    plain = B.BasicBlock(3, 3).double().eval()
    state = {k: v for k, v in deform.state_dict().items() if "offset_conv" not in k}
    plain.load_state_dict(state)
    x = _input((3, 6, 6))
    np.testing.assert_allclose(deform(x).data, plain(x).data, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda: B.FactorizedConv(4, 4, 4), "odd positive int"),
    (lambda: B.FactorizedConv(4, 4, 5, "diagonal"), "factorization"),
    (lambda: B.SEBlock(8, 16), "reduction"),
    (lambda: B.BasicBlock(4, 8, 2, "D"), "shortcut option"),
    (lambda: B.ResNeXtBlock(4, 8, cardinality=0), "cardinality"),
    (lambda: B.XceptionBlock(4, 8, reps=0), "reps"),
    (lambda: B.conv_bn(4, 8, 3, act="gelu"), "act"),
])
def test_bad_configurations_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------
# losses from the same literature: focal loss (RetinaNet), triplet loss (FaceNet)
# ---------------------------------------------------------------------------
def test_focal_loss_weighs_an_easy_example_100x_less():
    """p_t = 0.9 with γ = 2: (1 - 0.9)² = 1/100 of the cross-entropy (α switched off)."""
    logit = np.log(9.0)  # sigmoid(log 9) = 0.9
    ce = -np.log(0.9)
    fl = F.focal_loss(Tensor(np.array([logit])), np.array([1.0]), alpha=None, gamma=2.0).item()
    assert fl == pytest.approx(ce / 100, rel=1e-12)
    fl_soft = F.focal_loss(Tensor(np.array([[logit, 0.0]])), np.array([0]), alpha=None, mode="softmax").item()
    assert fl_soft == pytest.approx(ce / 100, rel=1e-12)


def test_focal_loss_with_gamma_0_is_alpha_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    logits = Tensor(rng.standard_normal((5, 4)))
    labels = np.array([0, 3, 1, 1, 2])
    fl = F.focal_loss(logits, labels, alpha=0.25, gamma=0.0, mode="softmax")
    assert fl.item() == pytest.approx(0.25 * F.cross_entropy(logits, labels).item(), rel=1e-12)
    t = (rng.random((5, 4)) > 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-logits.data))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    weights = 0.25 * t + 0.75 * (1 - t)
    np.testing.assert_allclose(F.focal_loss(logits, t, gamma=0.0, reduction="none").data, weights * bce, rtol=1e-12)


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_loss_gradcheck(mode, gamma, reduction):
    rng = np.random.default_rng(1)
    x = Tensor(3 * rng.standard_normal((4, 3)), requires_grad=True)
    target = (rng.random((4, 3)) > 0.5).astype(np.float64) if mode == "sigmoid" else np.array([0, 2, 1, 1])
    assert tinyconv.gradcheck(lambda z: F.focal_loss(z, target, 0.25, gamma, reduction, mode), [x])


def test_focal_loss_is_finite_for_confident_logits():
    x = Tensor(np.array([[60.0, -60.0], [-60.0, 60.0]]), requires_grad=True)
    loss = F.focal_loss(x, np.array([[1.0, 0.0], [1.0, 0.0]]), gamma=0.5, reduction="sum")
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(x.grad).all()
    # the two wrong logits of row 1 (cross-entropy 60 each, (1 - p_t)^γ = 1): α·60 + (1 - α)·60
    assert loss.item() == pytest.approx(0.25 * 60 + 0.75 * 60, rel=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    ({"gamma": -1.0}, "gamma"), ({"alpha": 1.5}, "alpha"), ({"mode": "hinge"}, "mode"),
    ({"reduction": "max"}, "reduction"),
])
def test_focal_loss_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.focal_loss(Tensor(np.zeros((2, 3))), np.zeros((2, 3)), **kwargs)


def test_focal_loss_bad_targets():
    with pytest.raises(ValueError, match="target must have the input's shape"):
        F.focal_loss(Tensor(np.zeros((2, 3))), np.zeros((3,)))
    with pytest.raises(ValueError, match="target values must lie in"):
        F.focal_loss(Tensor(np.zeros((2, 3))), np.array([0, 3]), mode="softmax")


def test_triplet_loss_values_with_squared_distances():
    a = Tensor(np.array([[1.0, 0.0], [1.0, 0.0]]))
    p = Tensor(np.array([[0.0, 1.0], [1.0, 0.0]]))
    n = Tensor(np.array([[-1.0, 0.0], [0.0, 1.0]]))
    # row 0: ‖a-p‖² = 2, ‖a-n‖² = 4: 2 - 4 + 0.2 < 0 -> 0; row 1: 0 - 2 + 0.2 < 0 -> 0
    assert F.triplet_margin_loss(a, p, n).item() == 0.0
    # positives and negatives swapped: row 0: 4 - 2 + 0.2 = 2.2; row 1: 2 - 0 + 0.2 = 2.2
    losses = F.triplet_margin_loss(a, n, p, reduction="none").data
    np.testing.assert_allclose(losses, [2.2, 2.2])
    assert F.triplet_margin_loss(a, n, p, margin=0.0, reduction="sum").item() == pytest.approx(4.0)


def test_triplet_loss_gradcheck_on_normalised_embeddings():
    """Embeddings L2-normalised by the caller (FaceNet); hinge kept away from its kink."""
    rng = np.random.default_rng(2)
    raw = [Tensor(rng.standard_normal((5, 4)), requires_grad=True) for _ in range(3)]

    def loss(a, p, n):
        return F.triplet_margin_loss(F.normalize(a), F.normalize(p), F.normalize(n), margin=0.2)

    hinge = (lambda a, p, n: ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + 0.2)(
        *[r.data / np.linalg.norm(r.data, axis=1, keepdims=True) for r in raw])
    assert np.abs(hinge).min() > 1e-3 and (hinge > 0).any() and (hinge < 0).any()
    assert tinyconv.gradcheck(loss, raw)


def test_triplet_loss_bad_shapes():
    with pytest.raises(ValueError, match="positive must have the anchor's shape"):
        F.triplet_margin_loss(Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 4))), Tensor(np.zeros((2, 3))))
    with pytest.raises(ValueError, match="margin"):
        F.triplet_margin_loss(Tensor(np.zeros(3)), Tensor(np.zeros(3)), Tensor(np.zeros(3)), margin=float("nan"))


def _resnet50(se_reduction=None):
    """ImageNet ResNet-50 from Bottleneck blocks: 7x7/2 stem, [3, 4, 6, 3] blocks, fc 1000 (built, not run)."""
    layers, channels = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)], 64
    for stage, (mid, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for i in range(count):
            layers.append(B.Bottleneck(channels, mid, 2 if stage and i == 0 else 1, "B", se_reduction))
            channels = 4 * mid
    return nn.Sequential(*layers, nn.Linear(channels, 1000))


def test_se_resnet50_has_28_1m_parameters_against_resnet50s_25_6m():
    plain, se = _resnet50().num_parameters(), _resnet50(se_reduction=16).num_parameters()
    assert plain == 25_557_032 and round(plain / 1e6, 1) == 25.6
    assert round(se / 1e6, 1) == 28.1

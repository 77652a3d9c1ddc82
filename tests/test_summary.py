"""tinyconv.summary: per-layer counts that reproduce the literature's numbers (LITERATURE.md), the
layer-kind shares of MobileNet's table 2, --compare, and the `tinyconv summary` command."""
import argparse

import pytest

import tinyconv
import tinyconv.summary
from tinyconv import blocks, models, nn
from tinyconv.summary import add_cli, compare, summary


def _row(result, name):
    (row,) = [r for r in result.rows if r.name == name]
    return row


# ---------------------------------------------------------------------------
# counting rules
# ---------------------------------------------------------------------------
def test_rows_totals_and_labels():
    model = models.resnet20()
    result = summary(model, (3, 32, 32), name="resnet20")
    assert result.total_params == model.num_parameters() == sum(r.params for r in result.rows)
    stem = _row(result, "stem.0")
    assert (stem.type, stem.kind, stem.output_shape, stem.params) == ("Conv2d", "full conv", (16, 32, 32), 432)
    assert stem.macs == 32 * 32 * 16 * 27
    assert _row(result, "stem.1").macs == 0  # BN: parameters, no multiply-adds
    fc = _row(result, "head.2")
    assert (fc.kind, fc.macs, fc.params) == ("fully connected", 640, 650)
    assert result.total_flops == 2 * result.total_macs
    text = str(result)
    assert "MACs" in text and "multiply-adds" in text and "FLOPs" in text and "(= 2·MACs)" in text
    assert "stages.8.residual.1.0" in text and f"{result.total_params:,}" in text


def test_resnet_stage_transition_keeps_the_multiply_adds():
    """56·56·64·(3·3·64) = 28·28·128·(3·3·128) = 115,605,504: stride 2 with doubled channels."""
    net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False),
                        nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False),
                        nn.Conv2d(128, 128, 3, padding=1, bias=False))
    result = summary(net, (64, 56, 56))
    assert _row(result, "0").macs == 115_605_504 == _row(result, "2").macs
    assert _row(result, "1").macs == 115_605_504 // 2  # the strided conv itself: half


def test_depthwise_separable_costs_one_over_n_plus_one_over_k_squared():
    M, N = 32, 256
    separable = summary(blocks.MobileNetUnit(M, N), (M, 16, 16))
    standard = summary(nn.Conv2d(M, N, 3, padding=1, bias=False), (M, 16, 16))
    assert standard.total_macs == 9 * M * N * 16 * 16
    assert separable.total_macs == (9 * M + M * N) * 16 * 16
    assert separable.total_macs / standard.total_macs == pytest.approx(1 / N + 1 / 9, rel=1e-12)
    assert 8 < standard.total_macs / separable.total_macs < 9


def test_factorized_convs_via_summary():
    C = 16
    count = {f: summary(blocks.FactorizedConv(C, C, 5, f), (C, 8, 8)) for f in ("none", "stacked")}
    assert count["stacked"].total_weights / count["none"].total_weights == pytest.approx(0.72)
    assert count["stacked"].total_macs / count["none"].total_macs == pytest.approx(0.72)


def test_transposed_conv_and_linear_macs():
    up = summary(nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, bias=False), (4, 5, 5))
    assert up.rows[0].output_shape == (6, 10, 10)
    assert up.total_macs == 4 * 5 * 5 * 6 * 16  # each input element meets C_out·k² weights
    fc = summary(nn.Linear(7, 3), (7,))
    assert (fc.total_macs, fc.total_params) == (21, 24)


def test_deformable_conv_counts_its_offset_conv_as_a_row():
    result = summary(blocks.DeformableBlock(4, 4), (4, 6, 6))
    kinds = [r.kind for r in result.rows]
    assert kinds.count("deformable conv") == 1
    deform = [r for r in result.rows if r.kind == "deformable conv"][0]
    offset = _row(result, deform.name + ".offset_conv")
    assert deform.macs == 36 * 4 * 36 and offset.macs == 36 * 18 * 36
    assert result.total_params == blocks.DeformableBlock(4, 4).num_parameters()


def test_summary_restores_modes_and_counts_a_shared_layer_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(4))
    model.train()
    result = summary(model, (4,))
    assert [r.params for r in result.rows if r.type == "Linear"] == [20, 0]
    assert [r.macs for r in result.rows if r.type == "Linear"] == [16, 16]
    assert result.total_params == 28 and all(m.training for m in model.modules())
    assert nn.Module.__call__ is not None and "recording" not in nn.Module.__call__.__name__


def test_bad_arguments():
    with pytest.raises(TypeError, match="tinyconv.nn.Module"):
        summary(lambda x: x, (3, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        summary(models.lenet5(), (1, 0, 28))


def test_module_is_callable_as_tinyconv_summary():
    result = tinyconv.summary(models.lenet5(), (1, 28, 28))
    assert result.total_params == 61_706
    assert callable(tinyconv.summary.add_cli)


# ---------------------------------------------------------------------------
# MobileNet (Howard et al. 2017) at 224x224, 1000 classes
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mobilenet_224():
    return summary(models.mobilenet(num_classes=1000), (3, 224, 224), name="mobilenet")


def test_mobilenet_569m_macs_and_4_2m_params(mobilenet_224):
    assert round(mobilenet_224.total_macs / 1e6) == 569
    assert round(mobilenet_224.total_params / 1e6, 1) == 4.2


@pytest.mark.parametrize("alpha, macs_m, params_m", [(0.75, 325, 2.6), (0.5, 149, 1.3), (0.25, 41, 0.5)])
def test_mobilenet_width_multiplier_table(alpha, macs_m, params_m, mobilenet_224):
    result = summary(models.mobilenet(num_classes=1000, alpha=alpha), (3, 224, 224))
    assert abs(result.total_macs / 1e6 - macs_m) < 1  # the paper's millions, as printed
    assert round(result.total_params / 1e6, 1) == params_m
    if alpha == 0.5:  # cost ≈ α²
        assert result.total_macs / mobilenet_224.total_macs == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("size, macs_m", [(192, 418), (160, 290), (128, 186)])
def test_mobilenet_resolution_multiplier_table(size, macs_m, mobilenet_224):
    model = models.mobilenet(num_classes=1000, rho=size / 224, input_size=224)
    assert model.input_shape == (3, size, size)
    result = summary(model, model.input_shape)
    assert abs(result.total_macs / 1e6 - macs_m) < 1  # 290.7M prints as 290 in the paper
    assert result.total_params == mobilenet_224.total_params


def test_mobilenet_table_2_shares_by_layer_kind(mobilenet_224):
    """Paper: 1x1 94.86% of MACs / 74.59% of params; depthwise 3.06 / 1.06; first conv 1.19 (a
    misprint: the four shares sum to 100% only with 1.91) / 0.02; FC 0.18 / 24.33. The paper's
    parameter shares count weights (no biases, no BN)."""
    kinds = mobilenet_224.by_kind()
    measured = {k: (round(v["macs_share"], 2), round(v["weights_share"], 2)) for k, v in kinds.items()}
    assert measured["conv 1x1"] == (94.86, 74.59)
    assert measured["depthwise conv"] == (3.06, 1.06)
    assert measured["full conv"] == (1.91, 0.02)
    assert measured["fully connected"] == (0.18, 24.33)
    table = mobilenet_224.format_kinds()
    assert "94.86%" in table and "74.59%" in table


def test_shufflenet_1x_g3_about_140m_multiply_adds():
    result = summary(models.shufflenet(num_classes=1000, groups=3), (3, 224, 224))
    assert result.total_macs == pytest.approx(140e6, rel=0.03)
    assert result.total_macs == 137_460_672


# ---------------------------------------------------------------------------
# compare and the command line
# ---------------------------------------------------------------------------
def test_compare_prints_both_with_the_ratio():
    a = summary(models.mobilenet(), (3, 32, 32), name="mobilenet")
    b = summary(models.mobilenet(alpha=0.5), (3, 32, 32), name="mobilenet alpha=0.5")
    text = compare(a, b)
    assert "mobilenet alpha=0.5" in text and "MACs (multiply-adds)" in text and "FLOPs (= 2·MACs)" in text
    macs_line = [line for line in text.splitlines() if line.startswith("MACs")][0]
    assert f"{a.total_macs:,}" in macs_line and f"{b.total_macs / a.total_macs:.3f}" in macs_line


def _cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="tinyconv")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.run(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_summary_of_a_zoo_model(capsys):
    code, out, _ = _cli(["summary", "resnet20", "--input", "1,28,28", "--num-classes", "7"], capsys)
    assert code == 0
    assert "resnet20 on input 1x28x28" in out
    assert f"{models.resnet20(in_channels=1, num_classes=7).num_parameters():,}" in out


def test_cli_compare_settings_of_a_block(capsys):
    code, out, _ = _cli(["summary", "blocks.FactorizedConv", "kernel_size=5", "out_channels=16", "--input",
                         "16,8,8", "--compare", "factorization='stacked'"], capsys)
    assert code == 0
    full_conv = [line for line in out.splitlines() if "full conv" in line][0]  # the MACs section comes first
    assert full_conv.rstrip().endswith("0.720")


def test_cli_mobilenet_alpha_and_by_kind(capsys):
    code, out, _ = _cli(["summary", "mobilenet", "--alpha", "0.5", "--by-kind"], capsys)
    assert code == 0 and "depthwise conv" in out and "layer kind" in out


def test_cli_unknown_names_list_the_available_ones(capsys):
    code, _, err = _cli(["summary", "resnet21"], capsys)
    assert code == 2 and "available models" in err and "resnet20" in err
    code, _, err = _cli(["summary", "blocks.Nope", "--input", "3,8,8"], capsys)
    assert code == 2 and "blocks.Fire" in err
    code, _, err = _cli(["summary", "resnet20", "--alpha", "0.5"], capsys)
    assert code == 2 and "does not take alpha" in err
    code, _, err = _cli(["summary", "blocks.Fire", "squeeze=2", "expand1x1=2", "expand3x3=2"], capsys)
    assert code == 2 and "--input" in err


def test_cli_list(capsys):
    code, out, _ = _cli(["summary", "--list"], capsys)
    assert code == 0 and "resnet20" in out and "blocks.InvertedResidual" in out
    code, _, err = _cli(["summary"], capsys)
    assert code == 2 and "--list" in err


def test_googlenet_inception_3a_costs_128m_multiply_adds():
    """GoogLeNet table 1, inception (3a) on 28x28x192: 128M ops."""
    block = blocks.InceptionV1(192, 64, 96, 128, 16, 32, 32)
    result = summary(block, (192, 28, 28))
    assert result.rows[-1].output_shape == (32, 28, 28)
    assert round(result.total_macs / 1e6) == 128

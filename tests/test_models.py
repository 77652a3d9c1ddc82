"""The model zoo: every model trains (forward + backward) on a batch of two at its native input,
runs on both 28x28x1 and 32x32x3, and `get` / `list_models` behave."""
import inspect

import numpy as np
import pytest

import tinyconv
import tinyconv.functional as F
from tinyconv import Tensor, models

ZOO = models.list_models()
# deeper copies of an architecture tested at full size (resnet20, densenet): same code, 2.5-5x the
# layers; they train on 8x8 inputs to keep this file fast (their counts are checked below at full size)
DEEP_REPEATS = {"resnet32", "resnet44", "resnet56", "resnet110", "densenet_bc"}


def _forward_backward(model, shape, num_classes):
    x = Tensor(np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32), requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    loss = F.cross_entropy(logits, np.array([1, num_classes - 1]))
    loss.backward()
    assert np.isfinite(loss.item())
    assert x.grad.shape == x.shape and np.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.shape != p.shape]
    assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize("name", ZOO)
def test_model_trains_on_its_native_input(name):
    tinyconv.manual_seed(0)
    model = models.get(name, num_classes=7)
    shape = model.input_shape[:1] + (8, 8) if name in DEEP_REPEATS else model.input_shape
    _forward_backward(model, shape, 7)


@pytest.mark.parametrize("name", sorted(set(ZOO) - DEEP_REPEATS))
def test_model_runs_on_the_other_dataset_shape(name):
    """28x28x1 models on 32x32x3 and the other way round (forward only, eval mode)."""
    tinyconv.manual_seed(0)
    native = models.get(name).input_shape
    other = (3, 32, 32) if native[0] == 1 else (1, 28, 28)
    kwargs = {"in_channels": other[0]}
    if "input_size" in inspect.signature(models._MODELS[name]).parameters:
        kwargs["input_size"] = other[1]
    model = models.get(name, **kwargs).eval()
    assert model.input_shape == other or name not in ("lenet5", "fashion_cnn")
    assert models.get(name, in_channels=other[0]).input_shape[0] == other[0]
    with tinyconv.no_grad():
        y = model(Tensor(np.zeros((1,) + other, dtype=np.float32)))
    assert y.shape == (1, 10)


def test_names_and_unknown_name():
    for name in ("lenet5", "fashion_cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18",
                 "se_resnet20", "mobilenet", "mobilenetv2", "shufflenet", "squeezenet", "inception", "densenet",
                 "densenet_bc", "nin"):
        assert name in ZOO
    assert ZOO == sorted(ZOO)
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*available models: .*resnet20"):
        models.get("resnet21")


@pytest.mark.parametrize("depth, params_m", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_resnet_cifar_parameter_counts(depth, params_m):
    """The ResNet paper's table 6 (option A, 10 classes)."""
    assert round(models.get(f"resnet{depth}").num_parameters() / 1e6, 2) == params_m


def test_resnet110_parameter_count():
    assert round(models.resnet110().num_parameters() / 1e6, 1) == 1.7


def test_option_b_adds_exactly_the_two_projections():
    a, b = models.resnet20().num_parameters(), models.resnet20(shortcut_option="B").num_parameters()
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_resnet_rejects_depths_that_are_not_6n_plus_2():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet_cifar(21)


def test_squeezenet_imagenet_parameter_count():
    params = models.squeezenet(in_channels=3, num_classes=1000).num_parameters()
    assert params == 1_248_424 and round(params / 1e6, 2) == 1.25  # AlexNet's 61M / 50 ≈ 1.2M


def test_densenet_bc_100_k12_parameter_count():
    params = models.densenet_bc(depth=100, growth_rate=12).num_parameters()
    assert round(params / 1e6, 1) == 0.8
    assert params == 769_162


def test_densenet_rejects_bad_depth():
    with pytest.raises(ValueError, match="multiple of 6"):
        models.densenet(depth=41)


def test_lenet5_classic_parameter_count():
    assert models.lenet5().num_parameters() == 61_706


def test_se_resnet20_adds_se_blocks():
    """Nine blocks; with C = 16, 32, 64 and r = 16 each adds 2·C·(C/16) + C/16 + C."""
    extra = sum(3 * (2 * c * (c // 16) + c // 16 + c) for c in (16, 32, 64))
    assert models.se_resnet20().num_parameters() - models.resnet20().num_parameters() == extra


def test_mobilenet_rho_sets_the_input_and_keeps_the_parameters():
    m = models.mobilenet(rho=0.5, input_size=224)
    assert m.input_shape == (3, 112, 112)
    assert m.num_parameters() == models.mobilenet().num_parameters()
    with pytest.raises(ValueError, match="alpha"):
        models.mobilenet(alpha=0)


def test_shufflenet_rejects_unknown_groups():
    with pytest.raises(ValueError, match="groups must be one of"):
        models.shufflenet(groups=5)


def test_fc_nets_default_to_the_dataset_side():
    """Built from in_channels alone (as `tinyconv train` does): 28 for 1 channel, 32 for 3."""
    for name in ("lenet5", "fashion_cnn"):
        assert models.get(name, in_channels=1).input_shape == (1, 28, 28)
        assert models.get(name, in_channels=3).input_shape == (3, 32, 32)

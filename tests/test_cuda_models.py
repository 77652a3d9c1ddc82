"""Every model of the zoo trains on the 'cuda' device exactly as on the CPU, under Numba's CUDA simulator.

As tests/test_cuda_tensor.py: the checks run in a child pytest process with
NUMBA_ENABLE_CUDASIM=1 (and once more without it when a real GPU is
present); in the child (TINYCONV_CUDA_CHILD=1) this file holds the checks.

One SGD step (forward, cross-entropy, backward, momentum update) per model,
float64: the loss, every parameter's gradient and updated value, and the
batch-norm running statistics must agree with the CPU to 1e-10.

The simulator runs every GPU thread as a Python thread (about 0.2 ms per
thread here), so the zoo's own widths (16 to 1024 channels) would take
hours. Each model therefore trains as a STAND-IN: the same block classes,
wired as in tinyconv/models.py, at 1 to 12 channels on 2x2 to 8x8 inputs
(BN still sees more than one value per channel: batch 2); fashion_cnn and
fashion_vgg run as the zoo's own functions with small widths and inputs. `test_stand_ins_cover_every_model`
(in the parent, no simulator) checks that each stand-in holds every module
class its full-size model is built from, so a new model or block cannot
slip past these tests.
"""
import sys

import numpy as np
import pytest

from conftest import CUDA_CHILD as CHILD, real_gpu_present, run_cuda_child

TIGHT = dict(rtol=1e-10, atol=1e-12)
CLASSES = 3

from tinyconv import blocks, models, nn  # noqa: E402  (plain imports: no kernel runs here)
from tinyconv.blocks import conv_bn  # noqa: E402


# ---------------------------------------------------------------------------
# the stand-ins: (builder, input (C, H, W)); builders take no arguments
# ---------------------------------------------------------------------------
def _head(channels, dropout=0.0):
    return models._classifier_head(channels, CLASSES, dropout)


def resnet_cifar_tiny():
    """resnet20 ... resnet110: stem, an identity block, an option-A block (strided slice + zero channels)."""
    return nn.Sequential(conv_bn(3, 2, 3), blocks.BasicBlock(2, 2, 1, "A"), blocks.BasicBlock(2, 4, 2, "A"),
                         _head(4))


def se_resnet_tiny():
    return nn.Sequential(conv_bn(3, 2, 3), blocks.BasicBlock(2, 2, 1, "A", se_reduction=2),
                         blocks.BasicBlock(2, 4, 2, "A", se_reduction=2), _head(4))


def resnet18_tiny():
    """Option-B shortcuts: a 1x1 strided conv + BN where the shape changes."""
    return nn.Sequential(conv_bn(3, 2, 3), blocks.BasicBlock(2, 2, 1, "B"), blocks.BasicBlock(2, 3, 2, "B"),
                         _head(3))


def mobilenet_tiny():
    return nn.Sequential(conv_bn(3, 2, 3, stride=2), blocks.MobileNetUnit(2, 3, 1), _head(3))


def mobilenetv2_tiny():
    """t = 1 (no expansion), a residual unit (stride 1, C_in = C_out) and a strided one; ReLU6; dropout."""
    return nn.Sequential(conv_bn(3, 2, 3, 2, act="relu6"), blocks.InvertedResidual(2, 2, 1, 1),
                         blocks.InvertedResidual(2, 2, 1, 2), blocks.InvertedResidual(2, 3, 2, 2),
                         conv_bn(3, 4, 1, act="relu6"), _head(4, dropout=0.2))


def shufflenet_tiny():
    """Stride 2 (concat with the pooled input, ungrouped first 1x1) then stride 1 (channel shuffle, + x)."""
    return nn.Sequential(conv_bn(3, 6, 3, stride=2), nn.MaxPool2d(3, 2, 1),
                         blocks.ShuffleNetUnit(6, 12, 3, stride=2, group_first=False),
                         blocks.ShuffleNetUnit(12, 12, 3, stride=1), _head(12))


def squeezenet_tiny():
    return nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                         blocks.Fire(3, 1, 1, 2),
                         nn.Sequential(nn.Dropout(0.5), nn.Conv2d(3, CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten()))


def inception_tiny():
    """Each Inception generation of models.inception once, at 1 channel per branch."""
    return nn.Sequential(conv_bn(3, 2, 3),
                         blocks.InceptionV1(2, 1, 1, 1, 1, 1, 1),       # 4 channels
                         blocks.GridReduction(4, 1, 1, 1, 1),           # 1 + 1 + 4 = 6, stride 2
                         blocks.InceptionFactorized(6, 1, 1, 1, 1, 1, 1),  # 4
                         blocks.InceptionAsymmetric(4, 1, 1, 1, 1, n=3),   # 1 + 2 + 1 = 4
                         blocks.InceptionResNetA(4, 1), _head(4))


def nin_tiny():
    return nn.Sequential(blocks.MLPConv(3, (2, 2), 5), nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5),
                         blocks.MLPConv(2, (2, CLASSES), 3), nn.AvgPool2d(3, 2, 1), nn.Dropout(0.5),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))


def lenet5_tiny():
    """lenet5's layers (5x5 convs, tanh, average pools, three fully connected) at 2 and 3 channels on 4x4
    (the second conv padded, so that 4x4 suffices)."""
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                       nn.Conv2d(2, 3, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2)),
                         nn.Sequential(nn.Flatten(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(),
                                       nn.Linear(4, CLASSES)))


def lenet300_tiny():
    """lenet300's layers (flatten, three fully connected, ReLU) with 3 hidden units instead of 300 and 100."""
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, CLASSES))


def densenet_tiny():
    """models.densenet's layout with one bottleneck dense block (DenseNet-BC) and one transition."""
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, bias=False), blocks.DenseBlock(2, 1, 2, bottleneck=True),
                         blocks.Transition(4, 2), nn.BatchNorm2d(2), nn.ReLU(), _head(2))


STAND_INS = {  # model name -> (stand-in builder, input shape (C, H, W))
    "densenet": (densenet_tiny, (3, 2, 2)),
    "densenet_bc": (densenet_tiny, (3, 2, 2)),
    "fashion_cnn": (lambda: models.fashion_cnn(1, CLASSES, input_size=4, channels=(2, 2), hidden=3), (1, 4, 4)),
    "fashion_vgg": (lambda: models.fashion_vgg(1, CLASSES, input_size=4, channels=(2, 2), hidden=3), (1, 4, 4)),
    "inception": (inception_tiny, (3, 2, 2)),
    "lenet300": (lenet300_tiny, (1, 2, 2)),
    "lenet5": (lenet5_tiny, (1, 4, 4)),
    "mobilenet": (mobilenet_tiny, (3, 2, 2)),
    "mobilenetv2": (mobilenetv2_tiny, (3, 2, 2)),
    "nin": (nin_tiny, (3, 2, 2)),
    "resnet110": (resnet_cifar_tiny, (3, 2, 2)),
    "resnet18": (resnet18_tiny, (3, 2, 2)),
    "resnet20": (resnet_cifar_tiny, (3, 2, 2)),
    "resnet32": (resnet_cifar_tiny, (3, 2, 2)),
    "resnet44": (resnet_cifar_tiny, (3, 2, 2)),
    "resnet56": (resnet_cifar_tiny, (3, 2, 2)),
    "se_resnet20": (se_resnet_tiny, (3, 2, 2)),
    "shufflenet": (shufflenet_tiny, (3, 4, 4)),
    "squeezenet": (squeezenet_tiny, (3, 8, 8)),
}
# models sharing a stand-in train it once, under the shortest name (densenet, resnet20)
DISTINCT = sorted({builder: name for name, (builder, _) in
                   sorted(STAND_INS.items(), key=lambda item: (len(item[0]), item[0]), reverse=True)}.values())


def _module_classes(model):
    return {type(m) for m in model.modules()}


def test_stand_ins_cover_every_model():
    """Every zoo model has a stand-in holding each module class the full-size model uses."""
    assert sorted(STAND_INS) == models.list_models()
    for name, (builder, _) in STAND_INS.items():
        missing = _module_classes(models.get(name)) - _module_classes(builder())
        assert not missing, f"{name}: the stand-in lacks {sorted(c.__name__ for c in missing)}"


# ---------------------------------------------------------------------------
# parent: the child processes
# ---------------------------------------------------------------------------
if not CHILD:
    GPU = real_gpu_present()

    def test_zoo_trains_on_cuda_under_simulator():
        run_cuda_child(__file__, simulator=True, timeout=900)

    @pytest.mark.skipif(not GPU, reason="no CUDA GPU")
    def test_zoo_trains_on_cuda_on_gpu():
        run_cuda_child(__file__, simulator=False, timeout=900)

else:
    sys.setswitchinterval(1e-4)  # the simulator polls its threads: frequent GIL hand-overs make it ~2x faster

    import tinyconv
    import tinyconv.functional as F
    from tinyconv import optim
    from tinyconv.tensor import Tensor

    def one_step(builder, input_shape, device):
        """(loss, {param: grad}, state_dict after one SGD step) of a float64 model on `device`."""
        tinyconv.manual_seed(0)
        model = builder().double().to(device)
        optimizer = optim.SGD(list(model.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3)
        rng = np.random.default_rng(4)
        x, target = rng.standard_normal((2,) + input_shape), np.array([0, 2])
        loss = F.cross_entropy(model(Tensor(x).to(device)), target)
        optimizer.zero_grad()
        loss.backward()
        grads = {name: p.grad if device == "cpu" else p.grad.numpy() for name, p in model.named_parameters()}
        optimizer.step()
        return loss.item(), grads, model.state_dict()

    @pytest.mark.parametrize("name", DISTINCT)
    def test_one_training_step_matches_cpu(name):
        builder, input_shape = STAND_INS[name]
        cpu = one_step(builder, input_shape, "cpu")
        gpu = one_step(builder, input_shape, "cuda")
        np.testing.assert_allclose(gpu[0], cpu[0], **TIGHT)
        for got, want in ((gpu[1], cpu[1]), (gpu[2], cpu[2])):
            assert got.keys() == want.keys()
            for key in want:
                assert isinstance(got[key], np.ndarray) and got[key].dtype == want[key].dtype, key
                np.testing.assert_allclose(got[key], want[key], **TIGHT, err_msg=f"{name}: {key}")
        assert any("running_var" in key for key in cpu[2]) or name in ("lenet300", "lenet5", "nin", "squeezenet")

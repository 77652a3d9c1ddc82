"""One training step (forward + cross-entropy + backward + SGD), tinyconv vs PyTorch.

    python -m benchmarks.train_step [--batch 128] [--repeat 10] [--threads N] [--models fashion_cnn,resnet20]
                                    [--no-torch]

Times ms per step for the Fashion-MNIST net (28x28x1) and ResNet-20 (32x32x3)
at batch 128, the two models issue 6 names. PyTorch runs the same
architecture, written out below, in the same process, alternating with
tinyconv repeat by repeat (so both see the same machine load), with the same
thread count. The first step of each (Numba's compile or cache load,
PyTorch's warm-up) is reported separately. PyTorch is optional: without it
only tinyconv's column is printed.
"""
import argparse
import statistics
import time

import numpy as np

import tinyconv
import tinyconv.functional as F
from benchmarks.harness import cpu_model
from tinyconv import models, optim


def tinyconv_step(name, in_channels, batch):
    model = models.get(name, in_channels=in_channels, num_classes=10)
    opt = optim.SGD(list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    side = 28 if in_channels == 1 else 32
    rng = np.random.default_rng(0)
    x = tinyconv.Tensor(rng.standard_normal((batch, in_channels, side, side)).astype(np.float32))
    y = rng.integers(0, 10, size=batch)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def torch_step(name, in_channels, batch):
    import torch
    from torch import nn

    def conv_bn(c_in, c_out, stride=1):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    class Basic(nn.Module):  # ResNet basic block, option A shortcut (subsample + zero channels)
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(c_in, c_out, stride)[:3],
                                      nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            self.stride, self.extra = stride, c_out - c_in

        def forward(self, x):
            shortcut = x[:, :, ::self.stride, ::self.stride]
            if self.extra:
                shortcut = torch.nn.functional.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
            return torch.relu(self.body(x) + shortcut)

    if name == "fashion_cnn":
        model = nn.Sequential(*conv_bn(in_channels, 32), nn.MaxPool2d(2), *conv_bn(32, 64), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
                              nn.Linear(128, 10))
        side = 28
    elif name == "resnet20":
        layers, c = conv_bn(in_channels, 16), 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(Basic(c, c_out, stride if i == 0 else 1))
                c = c_out
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
        side = 32
    else:
        raise ValueError(f"no PyTorch twin for {name!r}")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, in_channels, side, side)
    y = torch.randint(0, 10, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _time(fn):
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="fashion_cnn,resnet20")
    parser.add_argument("--no-torch", action="store_true", help="do not import PyTorch even when installed")
    args = parser.parse_args(argv)
    threads = args.threads or tinyconv.get_num_threads()
    tinyconv.set_num_threads(threads)
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            print("PyTorch is not installed: the torch column is skipped (pip install torch==2.13.0)")
    print(f"{cpu_model()}, {threads} threads, batch {args.batch}, float32, {args.repeat} repeats "
          f"({time.strftime('%Y-%m-%d')})")
    header = f"{'model':<12} {'first step':>11} {'tinyconv ms (median, min-max)':>32}"
    header += f" {'torch ms (median, min-max)':>30} {'ratio':>6}" if torch else ""
    print(header)
    for name in args.models.split(","):
        in_channels = 1 if name == "fashion_cnn" else 3
        ours = tinyconv_step(name, in_channels, args.batch)
        theirs = torch_step(name, in_channels, args.batch) if torch else None
        first = _time(ours)
        if theirs:
            theirs()
        ours_ms, theirs_ms = [], []
        for _ in range(args.repeat):  # alternate, so both see the same load
            ours_ms.append(_time(ours))
            if theirs:
                theirs_ms.append(_time(theirs))
        line = f"{name:<12} {first:>9.0f}ms {statistics.median(ours_ms):>12.1f} ({min(ours_ms):.1f}-{max(ours_ms):.1f})"
        if theirs:
            line += (f"{statistics.median(theirs_ms):>20.1f} ({min(theirs_ms):.1f}-{max(theirs_ms):.1f})"
                     f" {statistics.median(ours_ms) / statistics.median(theirs_ms):>6.2f}")
        print(line)


if __name__ == "__main__":
    main()

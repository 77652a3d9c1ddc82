"""Training and evaluation runs: what `tinyconv train` and `tinyconv eval` do.

A run lives in one directory (`runs/NAME`):

    config.json      the settings, as given (human-readable)
    checkpoint.npz   model, optimizer, schedule, data-loader position and
                     random state (tinyconv.save: atomic, no pickle); written
                     at every epoch end and on Ctrl-C
    metrics.csv      one row per epoch: losses, accuracies, lr, time, images/s
    curves.png       loss and accuracy curves (when matplotlib is installed)

Everything random descends from `seed` (weight init, the data order, the
augmentation, dropout), and the checkpoint holds the state of all of it, so
a run stopped after epoch k (or mid-epoch, by Ctrl-C) and resumed ends with
the same weights, bit for bit, as a run never stopped (same machine, same
thread count).
"""
import csv
import dataclasses
import io
import json
import math
import os
import signal
import threading
import time

import numpy as np

import tinyconv
import tinyconv.functional as F
from tinyconv import cuda, data, models, optim, random
from tinyconv.checkpoint import atomic_write
from tinyconv.tensor import Tensor, no_grad

CHECKPOINT = "checkpoint.npz"
METRICS_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s")


@dataclasses.dataclass
class TrainConfig:
    model: str = "fashion_vgg"
    data: str = "fashion-mnist"
    data_dir: str = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"          # sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"        # none | step | multistep | cosine
    step_size: int = 30
    milestones: tuple = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    clip_grad_norm: float = None
    augment: bool = None            # None: crop+flip for cifar10, none for the 28x28 sets
    seed: int = 0
    threads: int = None
    limit_train: int = None         # use only the first N training images (quick experiments, tests)
    limit_test: int = None
    dtype: str = "float32"
    device: str = "cpu"             # cpu | cuda (tinyconv/cuda.py)

    def validate(self):
        checks = [
            (self.epochs >= 1, "epochs", "an int >= 1"),
            (self.batch_size >= 1, "batch_size", "an int >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a positive number"),
            (self.optimizer in ("sgd", "adam", "adamw"), "optimizer", "one of sgd, adam, adamw"),
            (self.schedule in ("none", "step", "multistep", "cosine"), "schedule",
             "one of none, step, multistep, cosine"),
            (self.dtype in ("float32", "float64"), "dtype", "float32 or float64"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {getattr(self, name)!r}")
        if self.data not in data.DATASETS:
            raise ValueError(f"--data must be one of {sorted(data.DATASETS)}, got {self.data!r}")
        if self.model not in models.list_models():
            raise ValueError(f"--model {self.model!r} does not exist; available: {', '.join(models.list_models())}")
        cuda.check_device(self.device)  # 'cuda' without a GPU: CudaUnavailableError, before any data is read
        return self


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopRequested(KeyboardInterrupt):
    """Ctrl-C, honoured at a consistent point: between two steps."""


# ---------------------------------------------------------------------------
# building the pieces of a run
# ---------------------------------------------------------------------------
def _load_split(config, train):
    split = data.load_dataset(config.data, config.data_dir, train=train)
    limit = config.limit_train if train else config.limit_test
    if limit is not None:
        split = split._replace(images=split.images[:limit], labels=split.labels[:limit])
    return split


def _transform(info, augment):
    normalize = data.Normalize(info.mean, info.std)
    if not augment:
        return normalize
    c, h, w = info.shape
    return data.Compose([data.RandomCrop(h, padding=4 if h >= 32 else 2), data.RandomHorizontalFlip(), normalize])


def build_optimizer(config, params):
    if config.optimizer == "sgd":
        return optim.SGD(params, config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                         nesterov=config.nesterov)
    cls = optim.Adam if config.optimizer == "adam" else optim.AdamW
    return cls(params, config.lr, weight_decay=config.weight_decay)


def build_scheduler(config, optimizer):
    after_warmup = config.epochs - config.warmup_epochs
    if config.schedule == "step":
        schedule = optim.StepLR(optimizer, config.step_size, config.gamma)
    elif config.schedule == "multistep":
        schedule = optim.MultiStepLR(optimizer, config.milestones, config.gamma)
    elif config.schedule == "cosine":
        schedule = optim.CosineAnnealingLR(optimizer, max(after_warmup, 1))
    else:
        schedule = optim.StepLR(optimizer, step_size=1, gamma=1.0)  # constant
    if config.warmup_epochs:
        schedule = optim.LinearWarmup(optimizer, config.warmup_epochs, after=schedule)
    return schedule


class Run:
    """A model, its data, optimizer and schedule, and where they stand."""

    def __init__(self, config, directory):
        self.config = config.validate()
        self.directory = directory
        if config.threads:
            tinyconv.set_num_threads(config.threads)
        random.manual_seed(config.seed)
        self.train_set = _load_split(config, train=True)
        self.test_set = _load_split(config, train=False)
        info = self.train_set.info
        augment = config.augment if config.augment is not None else config.data == "cifar10"
        self.loader = data.DataLoader(self.train_set.images, self.train_set.labels, config.batch_size,
                                      shuffle=True, seed=config.seed, transform=_transform(info, augment))
        self.model = models.get(config.model, in_channels=info.shape[0], num_classes=len(info.classes))
        self.model.to(config.dtype).to(config.device)
        self.optimizer = build_optimizer(config, list(self.model.parameters()))
        self.scheduler = build_scheduler(config, self.optimizer)
        self.history = []
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.stop_requested = False  # set by Ctrl-C; honoured between two steps

    # ---- checkpoints ------------------------------------------------------
    def state(self):
        return {"format": "tinyconv-run", "config": dataclasses.asdict(self.config),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "loader": self.loader.state_dict(),
                "rng": random.get_state(), "history": self.history, "partial": dict(self.partial)}

    def save(self):
        tinyconv.save(self.state(), os.path.join(self.directory, CHECKPOINT))

    def restore(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        random.set_state(state["rng"])
        self.history = [dict(row) for row in state["history"]]
        self.partial = dict(state["partial"])

    # ---- one epoch ----------------------------------------------------------
    def train_epoch(self, progress=None):
        """Train over the rest of the current epoch; returns the epoch's metrics."""
        self.model.train()
        config, p = self.config, self.partial
        epoch = self.loader.epoch
        bar = progress(total=len(self.loader), initial=self.loader.batch, epoch=epoch) if progress else None
        for images, labels in self.loader:
            start = time.perf_counter()
            logits = self.model(Tensor(images.astype(config.dtype, copy=False)).to(config.device))
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            if not np.isfinite(loss.item()):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {self.loader.batch} "
                    f"(lr {self.optimizer.lr:g}): the learning rate is probably too high for this model; "
                    f"try a smaller --lr (e.g. {config.lr / 10:g}) or --warmup-epochs")
            self.optimizer.zero_grad()
            loss.backward()
            if config.clip_grad_norm:
                optim.clip_grad_norm_(self.optimizer.params, config.clip_grad_norm)
            self.optimizer.step()
            p["loss_sum"] += loss.item() * len(labels)
            p["correct"] += int((logits.numpy().argmax(axis=1) == labels).sum())  # a host copy on 'cuda'
            p["seen"] += len(labels)
            p["seconds"] += time.perf_counter() - start
            if bar is not None:
                bar.update(1, loss=p["loss_sum"] / p["seen"], acc=p["correct"] / p["seen"],
                           images_per_s=p["seen"] / max(p["seconds"], 1e-9))
            if self.stop_requested:
                if bar is not None:
                    bar.close()
                raise StopRequested
        if bar is not None:
            bar.close()
        row = {"epoch": epoch + 1, "train_loss": p["loss_sum"] / max(p["seen"], 1),
               "train_acc": p["correct"] / max(p["seen"], 1), "lr": self.optimizer.lr,
               "seconds": p["seconds"], "images_per_s": p["seen"] / max(p["seconds"], 1e-9)}
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.scheduler.step()
        return row


def evaluate(model, dataset, batch_size=256, dtype="float32", device="cpu"):
    """Test loss, accuracy, per-class accuracy and the confusion matrix (rows: true class)."""
    model.eval()
    info = dataset.info
    normalize = data.Normalize(info.mean, info.std)
    n_classes = len(info.classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    loss_sum = 0.0
    with no_grad():
        for start in range(0, len(dataset.labels), batch_size):
            images = normalize(dataset.images[start:start + batch_size]).astype(dtype, copy=False)
            labels = dataset.labels[start:start + batch_size]
            logits = model(Tensor(images).to(device))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            np.add.at(confusion, (labels, logits.numpy().argmax(axis=1)), 1)
    n = max(len(dataset.labels), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"loss": loss_sum / n, "accuracy": confusion.diagonal().sum() / n,
            "per_class": per_class, "confusion": confusion}


# ---------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------
def train(config, directory, resume=False, progress=None, log=print):
    """Train (or resume) the run in `directory`; returns the metrics history.

    `progress(total=, initial=, epoch=)` makes a progress bar with
    `update(n, **metrics)` and `close()` (the CLI passes a tqdm one);
    `log` prints the epoch summaries.
    """
    checkpoint_path = os.path.join(directory, CHECKPOINT)
    if resume:
        state = _read_checkpoint(directory)
        config = TrainConfig(**{**state["config"], "milestones": tuple(state["config"]["milestones"])})
        run = Run(config, directory)
        run.restore(state)
        log(f"resuming {directory} at epoch {run.loader.epoch + 1}, batch {run.loader.batch}")
    else:
        if os.path.exists(checkpoint_path):
            raise FileExistsError(f"{directory} already holds a run; pass --resume to continue it "
                                  f"or choose another --out")
        run = Run(config, directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(config), f, indent=2)
    log(f"{config.model} on {config.data}: {len(run.train_set.labels)} training / {len(run.test_set.labels)} "
        f"test images, {run.model.num_parameters():,} parameters, {len(run.loader)} steps per epoch")

    def request_stop(signum, frame):
        run.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, request_stop) if in_main_thread else None
    try:
        while run.loader.epoch < config.epochs:
            if run.stop_requested:
                raise StopRequested
            row = run.train_epoch(progress)
            result = evaluate(run.model, run.test_set, dtype=config.dtype, device=config.device)
            row.update(test_loss=result["loss"], test_acc=result["accuracy"])
            run.history.append(row)
            run.save()
            _write_metrics(directory, run.history)
            log(f"epoch {row['epoch']:>3}/{config.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                f"lr {row['lr']:.4g}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s")
    except StopRequested:
        run.save()
        log(f"interrupted: checkpoint saved at epoch {run.loader.epoch + 1}, batch {run.loader.batch}; "
            f"continue with: tinyconv train --resume {directory}")
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    _plot_curves(directory, run.history, log)
    return run.history


def _read_checkpoint(directory):
    path = os.path.join(directory, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory!r} holds no checkpoint ({CHECKPOINT}); "
                                f"is it a run directory written by `tinyconv train --out`?")
    state = tinyconv.load(path)
    if not isinstance(state, dict) or state.get("format") != "tinyconv-run":
        raise ValueError(f"{path!r} is a tinyconv file but not a training run checkpoint")
    return state


def load_run(directory):
    """(model, config) of a saved run, weights loaded."""
    state = _read_checkpoint(directory)
    config = TrainConfig(**{**state["config"], "milestones": tuple(state["config"]["milestones"])})
    info = data.DATASETS[config.data]
    model = models.get(config.model, in_channels=info.shape[0], num_classes=len(info.classes))
    model.to(config.dtype)
    model.load_state_dict(state["model"])
    return model, config


def _write_metrics(directory, history):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRICS_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in METRICS_FIELDS})
    atomic_write(os.path.join(directory, "metrics.csv"), lambda f: f.write(text.getvalue().encode()))


def _plot_curves(directory, history, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping curves.png (pip install matplotlib)")
        return
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [r["test_acc"] for r in history], label="test")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "curves.png"), dpi=100)
    plt.close(fig)

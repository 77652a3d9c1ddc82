"""The command line: `tinyconv train | eval | bench | summary | gradcheck`.

Each subcommand is a small function that reads its parsed options and calls
the library; `main(argv)` returns the process exit status.
"""
import argparse
import dataclasses
import os
import sys

import tinyconv


# ---------------------------------------------------------------------------
# train / eval
# ---------------------------------------------------------------------------
def _tqdm_progress(total, initial, epoch):
    """A progress bar for one epoch: loss, accuracy, images/s and the ETA."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", unit="step", leave=False,
               dynamic_ncols=True, file=sys.stderr)
    update = bar.update

    def update_with_metrics(n, loss, acc, images_per_s):
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{images_per_s:.0f}", refresh=False)
        update(n)

    bar.update = update_with_metrics
    return bar


def _train(args):
    from tinyconv import train

    if args.resume:
        directory = args.resume
        config = None
    else:
        fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
        values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
        if "milestones" in values:
            values["milestones"] = tuple(int(m) for m in values["milestones"].split(",") if m)
        config = train.TrainConfig(**values)
        directory = args.out or os.path.join("runs", f"{config.model}-{config.data}-seed{config.seed}")
    progress = None if args.no_progress else _tqdm_progress
    try:
        history = train.train(config, directory, resume=bool(args.resume), progress=progress)
    except tinyconv.cuda.CudaUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except train.StopRequested:
        return 130
    except train.TrainingDiverged as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 3
    last = history[-1]
    print(f"final test accuracy {last['test_acc']:.4f} (loss {last['test_loss']:.4f}); run saved in {directory}")
    return 0


def _eval(args):
    from tinyconv import data, train

    from tinyconv import compress

    if compress.is_compressed(args.run_dir):
        model, config = compress.load_compressed(args.run_dir)
    else:
        model, config = train.load_run(args.run_dir)
    dataset = data.load_dataset(args.data or config.data, args.data_dir or config.data_dir, train=False)
    if args.limit:
        dataset = dataset._replace(images=dataset.images[:args.limit], labels=dataset.labels[:args.limit])
    result = train.evaluate(model, dataset, dtype=config.dtype)
    classes = dataset.info.classes
    print(f"{config.model} on {dataset.info.name} test set ({len(dataset.labels)} images): "
          f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}")
    print("\nper-class accuracy:")
    for name, acc in zip(classes, result["per_class"]):
        print(f"  {name:<14} {acc:.4f}")
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    width = max(5, len(str(result["confusion"].max())) + 1)
    print(" " * 15 + "".join(f"{i:>{width}}" for i in range(len(classes))))
    for i, row in enumerate(result["confusion"]):
        print(f"  {i:>2} {classes[i][:10]:<10}" + "".join(f"{v:>{width}}" for v in row))
    return 0


def _add_train(sub):
    from tinyconv.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a model (default: fashion_vgg, a 4-conv BN net, on Fashion-MNIST)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="a name from `tinyconv summary --list`")
    p.add_argument("--data", default=d.data, choices=["fashion-mnist", "mnist", "cifar10"])
    p.add_argument("--data-dir", default=None, help="directory holding the data set's files")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", default=d.schedule, choices=["none", "step", "multistep", "cosine"])
    p.add_argument("--step-size", type=int, default=d.step_size, help="epochs per step of the step schedule")
    p.add_argument("--milestones", default=None, help="comma-separated epochs for multistep, e.g. 30,60")
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + horizontal flip (default: on for cifar10 only)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"],
                   help="where to train: cuda needs a CUDA GPU (numba.cuda); see README, GPU")
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N images only")
    p.add_argument("--limit-test", type=int, default=None, help="test on the first N images only")
    p.add_argument("--out", default=None, help="run directory (default: runs/MODEL-DATA-seedSEED)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    p.set_defaults(run=_train)


def _add_eval(sub):
    p = sub.add_parser("eval", help="test accuracy, per-class accuracy and confusion matrix of a run")
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by `tinyconv train`, or a .tcz file "
                                                  "written by `tinyconv compress`")
    p.add_argument("--data", default=None, help="another data set of the same shape")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N test images only")
    p.set_defaults(run=_eval)


# ---------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------
def _gradcheck_ops(args):
    """Check every differentiable op's gradient against finite differences."""
    from tinyconv.gradcheck import check_ops
    failures = check_ops(print_fn=print)
    return 1 if failures else 0


def build_parser():
    parser = argparse.ArgumentParser(prog="tinyconv", description="A from-scratch reference CNN engine.")
    parser.add_argument("--version", action="version", version=f"tinyconv {tinyconv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    from tinyconv import compress
    from tinyconv.summary import add_cli as add_summary_cli
    from benchmarks.cli import add_cli as add_bench_cli
    compress.add_cli(sub)
    add_summary_cli(sub)
    add_bench_cli(sub)
    p = sub.add_parser("gradcheck", help="check every op's gradient against finite differences")
    p.set_defaults(run=_gradcheck_ops)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    try:
        return args.run(args) or 0
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        if os.environ.get("TINYCONV_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

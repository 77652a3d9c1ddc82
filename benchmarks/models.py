"""Suite `models`: forward and training-step time per image for the zoo models.

Every model of tinyconv.models.list_models() is built with its defaults,
so at its native input size (model.input_shape: 1x28x28 for the MNIST
nets, 3x32x32 for the CIFAR nets), 10 classes, and timed on a batch of
random images:

    forward        model.eval(), under no_grad
    training step  model.train(); zero_grad; cross_entropy(model(x), y);
                   backward; SGD(momentum 0.9).step()

per image = median batch time / batch size. MACs per image come from
tinyconv.summary (conv and linear layers only). For MobileNet (and the
default Fashion-MNIST net) a note puts the forward's share of time by layer
kind beside its share of MACs (the paper's table 2: 1x1 convs 95% of the
MACs; depthwise convs 3% of the MACs but memory-bound). A slow model stops
repeating after BUDGET_S seconds of timed calls (at least 2 repeats); one
whose warm-up step alone took longer than that is reported with its
warm-up only. A model whose ops have not landed yet is reported as
'unavailable', never as a crash.

Run: python -m benchmarks.models [--repeat R] [--threads N] [--smoke]
"""
import time

import numpy as np

import tinyconv
from benchmarks.harness import SuiteResult, fmt_count, fmt_ms, fmt_num, time_call

NAME = "models"
TITLE = "zoo models: forward and training step per image, native input size"
HEADERS = ["model", "input", "batch", "params", "MACs/image", "warm-up s", "fwd ms/img", "train ms/img",
           "train min-max ms/img", "GFLOP/s train", "note"]
BUDGET_S = 8.0
SMOKE_MODELS = ("lenet5", "fashion_cnn")
SHARE_MODELS = ("mobilenet", "fashion_cnn")   # printed: forward time share by layer kind (MobileNet's table 2)


def model_names(ctx):
    try:
        from tinyconv import models
    except ImportError:
        return None
    names = models.list_models()
    return [n for n in names if n in SMOKE_MODELS] if ctx.smoke else names


def _unavailable(exc):
    """True for the errors an op that has not landed yet raises (a missing name or module)."""
    return isinstance(exc, (ImportError, NotImplementedError)) or (
        isinstance(exc, AttributeError) and ("functional" in str(exc) or "kernels" in str(exc)))


def _macs_per_image(model, shape):
    """(MACs per image, {layer kind: % of MACs}) from tinyconv.summary; (None, None) without it."""
    try:
        from tinyconv.summary import summary
    except ImportError:
        return None, None
    counted = summary(model, shape)
    return counted.total_macs, {kind: entry["macs_share"] for kind, entry in counted.by_kind().items()}


def forward_time_by_kind(model, x):
    """{layer kind: seconds} over one eval forward, timing every leaf module (no children).

    Kinds as tinyconv.summary.layer_kind groups them (MobileNet's table 2:
    conv 1x1, depthwise conv, full conv, fully connected, other = BN,
    activations, pools); 'unattributed' is the forward time outside any leaf
    (residual additions, concatenations, the tape's own bookkeeping).
    """
    from tinyconv import nn
    from tinyconv.summary import layer_kind
    seconds = {}
    original_call = nn.Module.__call__

    def timed_call(module, *args, **kwargs):
        if module._modules:
            return original_call(module, *args, **kwargs)
        start = time.perf_counter()
        y = original_call(module, *args, **kwargs)
        kind = layer_kind(module)
        seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - start
        return y

    model.eval()
    nn.Module.__call__ = timed_call
    try:
        start = time.perf_counter()
        with tinyconv.no_grad():
            model(x)
        total = time.perf_counter() - start
    finally:
        nn.Module.__call__ = original_call
    seconds["unattributed"] = max(0.0, total - sum(seconds.values()))
    return seconds


def share_note(rec):
    """'mobilenet forward: conv 1x1 81% of time / 95% of MACs, ...' from a record."""
    time_share, mac_share = rec.get("time_share_pct") or {}, rec.get("mac_share_pct") or {}
    parts = [f"{kind} {pct:.0f}% of time" + (f" / {mac_share[kind]:.1f}% of MACs" if kind in mac_share else "")
             for kind, pct in sorted(time_share.items(), key=lambda kv: -kv[1])]
    return f"{rec['model']} forward by layer kind: " + ", ".join(parts)


def time_model(ctx, name):
    """One record: forward and training-step timings for model `name`."""
    from tinyconv import models, optim
    F = tinyconv.functional
    batch = ctx.pick(32, 2)
    rec = {"model": name, "batch": batch, "status": "ok", "note": "", "input": None, "params": None,
           "macs_per_image": None, "forward": None, "train": None, "mac_share_pct": None, "time_share_pct": None}
    try:
        model = models.get(name)
        shape = tuple(model.input_shape)
        rec.update(input=shape, params=int(sum(p.size for p in model.parameters())))
        model.to(ctx.dtype)
        rng = np.random.default_rng(0)
        x = tinyconv.Tensor(rng.standard_normal((batch, *shape)).astype(ctx.dtype))
        labels = rng.integers(0, 10, batch)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def forward():
            model.eval()
            with tinyconv.no_grad():
                model(x)

        def train_step():
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(x), labels).backward()
            opt.step()

        min_repeat = 1 if ctx.smoke else 2
        for key, fn in (("forward", forward), ("train", train_step)):
            timing = time_call(fn, ctx.repeat, budget_s=BUDGET_S, min_repeat=min_repeat)
            rec[key] = {"warmup_s": timing.warmup, "median_s": timing.median, "min_s": timing.min,
                        "max_s": timing.max, "times_s": timing.times}
        rec["macs_per_image"], rec["mac_share_pct"] = _macs_per_image(model, shape)
        by_kind = forward_time_by_kind(model, x)
        total = sum(by_kind.values())
        rec["time_share_pct"] = {kind: 100 * t / total for kind, t in by_kind.items()}
    except Exception as exc:  # a benchmark reports a failing model, it does not stop the run
        rec["status"] = "unavailable" if _unavailable(exc) else "error"
        rec["note"] = f"{type(exc).__name__}: {exc}"
    return rec


def _row(rec):
    fwd, train = rec["forward"] or {}, rec["train"] or {}
    batch = rec["batch"]
    per_image = {k: (v / batch if v is not None else None) for k, v in
                 (("fwd", fwd.get("median_s")), ("train", train.get("median_s")),
                  ("min", train.get("min_s")), ("max", train.get("max_s")))}
    gflops = None
    if rec["macs_per_image"] and per_image["train"]:
        gflops = 3 * 2 * rec["macs_per_image"] / per_image["train"] / 1e9
    warmup = sum(v["warmup_s"] for v in (fwd, train) if v) or None
    note = rec["note"] if len(rec["note"]) <= 70 else rec["note"][:67] + "..."
    if rec["status"] != "ok":
        note = f"{rec['status']}: {note}"
    spread = f"{fmt_ms(per_image['min'])}-{fmt_ms(per_image['max'])}" if per_image["min"] else "-"
    return [rec["model"], "x".join(map(str, rec["input"])) if rec["input"] else "-", batch, fmt_count(rec["params"]),
            fmt_count(rec["macs_per_image"]), fmt_num(warmup, 2), fmt_ms(per_image["fwd"]),
            fmt_ms(per_image["train"]), spread, fmt_num(gflops), note], per_image["train"]


def run(ctx):
    names = model_names(ctx)
    if names is None:
        return SuiteResult(NAME, TITLE, HEADERS, [], [], ["tinyconv.models not available yet: models suite skipped."])
    records, rows, plot = [], [], []
    for name in names:
        rec = time_model(ctx, name)
        records.append(rec)
        row, train_ms = _row(rec)
        rows.append(row)
        if train_ms is not None:
            plot.append((name, train_ms * 1e3))
    notes = [share_note(r) for r in records if r["model"] in SHARE_MODELS and r["time_share_pct"]]
    notes += ["warm-up s = first forward + first training step (JIT compile or cache load); "
             "GFLOP/s train = 3 x 2 x MACs/image / train time per image.",
             f"timed repeats stop after {BUDGET_S:.0f} s of timed calls per model and mode."]
    return SuiteResult(NAME, TITLE, HEADERS, rows, records, notes, plot, "training step ms per image")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

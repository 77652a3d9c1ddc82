"""Per-layer output shapes, parameters and multiply-adds: `tinyconv.summary(model, input_shape)`.

How it works: run one forward pass on a zero image of `input_shape`
(batch 1, eval mode, under no_grad) while `Module.__call__` is wrapped to
record, for every module that owns parameters or has no children, its name,
type, output shape, parameter count and multiply-adds.

Multiply-adds (MACs) count only conv and linear layers, for ONE image:

    Conv2d            out_h·out_w·C_out · (C_in/groups)·k_h·k_w
    DeformConv2d      the same (its offset/mask convs are their own rows;
                      the bilinear sampling is not counted)
    ConvTranspose2d   H_in·W_in·C_in · (C_out/groups)·k_h·k_w
    Linear            in_features·out_features (per row of the input)

BN, activations, pools and additions count 0, as in the papers' tables.
FLOPs = 2·MACs; both are printed with their names, because the popular
counters print MACs under the name "FLOPs", and MobileNet's and
ShuffleNet's "FLOPs" are multiply-adds.

    s = tinyconv.summary(tinyconv.models.mobilenet(num_classes=1000), (3, 224, 224))
    print(s)                  # the per-layer table and the totals
    print(s.format_kinds())   # shares by layer kind (MobileNet's table 2)

`compare(a, b)` prints two summaries side by side; `add_cli(subparsers)`
registers `tinyconv summary MODEL [KEY=VALUE ...] [--compare ...]`.
"""
import ast
import inspect
import sys
import types
from collections import OrderedDict, namedtuple

import numpy as np

from tinyconv import nn
from tinyconv.tensor import Tensor, no_grad

Row = namedtuple("Row", "name type kind output_shape params weights macs")

KINDS = ("conv 1x1", "depthwise conv", "full conv", "grouped conv", "transposed conv", "deformable conv",
         "fully connected", "other")


def layer_kind(module):
    """The cost class of a layer, as MobileNet's table 2 groups them."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        if module.kernel_size == (1, 1):
            return "conv 1x1"
        return "grouped conv" if module.groups > 1 else "full conv"
    for layer_type, kind in ((nn.ConvTranspose2d, "transposed conv"), (nn.DeformConv2d, "deformable conv"),
                             (nn.Linear, "fully connected")):
        if isinstance(module, layer_type):
            return kind
    return "other"


def layer_macs(module, x, y):
    """Multiply-adds of one call for the first image of the batch (0 for layers that do no products)."""
    per_image = lambda t: t.size // t.shape[0]  # noqa: E731
    if isinstance(module, (nn.Conv2d, nn.DeformConv2d)):
        _, c_in_per_group, k_h, k_w = module.weight.shape
        return per_image(y) * c_in_per_group * k_h * k_w
    if isinstance(module, nn.ConvTranspose2d):
        _, c_out_per_group, k_h, k_w = module.weight.shape
        return per_image(x) * c_out_per_group * k_h * k_w
    if isinstance(module, nn.Linear):
        return per_image(y) * module.in_features
    return 0


class Summary:
    """The result of `summary`: `rows` (Row tuples) and totals; str() is the table."""

    def __init__(self, model_name, input_shape, rows, model_params, trainable_params):
        self.model_name, self.input_shape, self.rows = model_name, tuple(input_shape), rows
        self.total_params = model_params
        self.trainable_params = trainable_params
        self.total_macs = sum(r.macs for r in rows)
        self.uncalled_params = model_params - sum(r.params for r in rows)

    @property
    def total_flops(self):
        """FLOPs = 2·MACs (a multiply and an add)."""
        return 2 * self.total_macs

    @property
    def total_weights(self):
        """Conv and linear weights only: no biases, no BN (what the papers' parameter shares count)."""
        return sum(r.weights for r in self.rows)

    def by_kind(self):
        """kind -> {'params', 'weights', 'macs'} and their shares in % of the totals, for the kinds present."""
        table = OrderedDict()
        for kind in KINDS:
            rows = [r for r in self.rows if r.kind == kind]
            if rows:
                entry = {what: sum(getattr(r, what) for r in rows) for what in ("params", "weights", "macs")}
                for what, total in (("params", self.total_params), ("weights", self.total_weights),
                                    ("macs", self.total_macs)):
                    entry[what + "_share"] = 100.0 * entry[what] / max(total, 1)
                table[kind] = entry
        return table

    def format(self):
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        header = f"{'layer':<34} {'type':<18} {'output shape':>16} {'params':>12} {'MACs':>15}"
        lines = [f"{self.model_name} on input {shape(self.input_shape)} (per image)", header, "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r.name[-34:]:<34} {r.type:<18} {shape(r.output_shape):>16} {r.params:>12,} {r.macs:>15,}")
        lines.append("-" * len(header))
        lines += self._totals()
        return "\n".join(lines)

    def _totals(self):
        lines = [f"parameters  {self.total_params:,} (trainable {self.trainable_params:,})",
                 f"MACs        {self.total_macs:,} multiply-adds (conv and linear layers)",
                 f"FLOPs       {self.total_flops:,} (= 2·MACs)"]
        if self.uncalled_params:
            lines.append(f"note: {self.uncalled_params:,} parameters sit in modules the forward did not call")
        return lines

    def format_kinds(self):
        """Totals grouped by layer kind: parameters (all), weights (conv/linear, no bias or BN), MACs, with shares."""
        header = (f"{'layer kind':<18} {'params':>12} {'%':>7} {'weights':>12} {'%':>7} {'MACs':>15} {'%':>7}")
        lines = [header, "-" * len(header)]
        for kind, v in self.by_kind().items():
            lines.append(f"{kind:<18} {v['params']:>12,} {v['params_share']:>6.2f}% {v['weights']:>12,} "
                         f"{v['weights_share']:>6.2f}% {v['macs']:>15,} {v['macs_share']:>6.2f}%")
        return "\n".join(lines)

    __str__ = format

    def __repr__(self):
        return (f"Summary({self.model_name}, input {self.input_shape}: {self.total_params:,} params, "
                f"{self.total_macs:,} MACs)")


def summary(model, input_shape, name=None):
    """Run `model` on one zero image of `input_shape` (C, H, W) and count each layer.

    Returns a `Summary`; print it for the table. The model's train/eval
    modes are restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a tinyconv.nn.Module, got {type(model).__name__}")
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be positive ints without the batch axis, e.g. (3, 32, 32), "
                         f"got {input_shape!r}")
    names = {id(m): path or type(m).__name__ for path, m in model.named_modules()}
    dtype = next((p.dtype for p in model.parameters()), np.float32)
    rows, seen = [], set()
    original_call = nn.Module.__call__

    def recording_call(module, *args, **kwargs):
        y = original_call(module, *args, **kwargs)
        own_params = [p for p in module._parameters.values() if p is not None]
        if own_params or not module._modules:
            params = 0 if id(module) in seen else sum(p.size for p in own_params)
            seen.add(id(module))
            x = args[0] if args and isinstance(args[0], Tensor) else y
            kind = layer_kind(module)
            weights = module.weight.size if params and kind != "other" else 0
            rows.append(Row(names.get(id(module), type(module).__name__), type(module).__name__, kind,
                            tuple(y.shape[1:]), params, weights, layer_macs(module, x, y)))
        return y

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    nn.Module.__call__ = recording_call
    try:
        with no_grad():
            model(Tensor(np.zeros((1,) + tuple(input_shape), dtype=dtype)))
    finally:
        nn.Module.__call__ = original_call
        for m, training in modes:
            object.__setattr__(m, "training", training)
    return Summary(name or type(model).__name__, input_shape, rows, model.num_parameters(),
                   model.num_parameters(trainable_only=True))


def compare(first, second):
    """Two Summaries side by side: totals, then MACs and params by layer kind, with the ratio second/first."""
    shape = lambda s: "x".join(map(str, s))  # noqa: E731
    width = max(22, len(first.model_name) + 2, len(second.model_name) + 2)

    def line(label, a, b, ratio=True):
        text = f"{label:<24}{a:>{width},}{b:>{width},}" if ratio else f"{label:<24}{a:>{width}}{b:>{width}}"
        return text + (f"{b / a:>10.3f}" if ratio and a else "")

    lines = [f"{'':<24}{first.model_name:>{width}}{second.model_name:>{width}}{'ratio':>10}",
             line("input", shape(first.input_shape), shape(second.input_shape), ratio=False),
             line("parameters", first.total_params, second.total_params),
             line("MACs (multiply-adds)", first.total_macs, second.total_macs),
             line("FLOPs (= 2·MACs)", first.total_flops, second.total_flops)]
    kinds_a, kinds_b = first.by_kind(), second.by_kind()
    for what in ("macs", "params"):
        lines.append(f"{what.replace('macs', 'MACs')} by layer kind:")
        for kind in KINDS:
            if kind in kinds_a or kind in kinds_b:
                lines.append(line(f"  {kind}", kinds_a.get(kind, {}).get(what, 0), kinds_b.get(kind, {}).get(what, 0)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the command line: tinyconv summary MODEL [KEY=VALUE ...]
# ---------------------------------------------------------------------------
def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_settings(tokens):
    """['alpha=0.5', 'resnet56'] -> (model name or None, {'alpha': 0.5})."""
    model, settings = None, {}
    for token in tokens:
        if "=" in token:
            key, value = token.split("=", 1)
            settings[key.strip().replace("-", "_")] = _parse_value(value)
        elif model is None:
            model = token
        else:
            raise ValueError(f"expected one model name and KEY=VALUE settings, got a second name {token!r}")
    return model, settings


def _input_shape(text):
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 1 or min(shape) < 1:
        raise ValueError(f"--input must be positive ints like 3,32,32 (C,H,W), got {text!r}")
    return shape


def _builder(name):
    """The function or block class that `name` names: a zoo model, or blocks.<ClassName>."""
    from tinyconv import blocks, models
    if name.startswith("blocks."):
        block = getattr(blocks, name[len("blocks."):], None)
        if not (isinstance(block, type) and issubclass(block, nn.Module)):
            available = sorted(n for n, v in vars(blocks).items() if isinstance(v, type) and issubclass(v, nn.Module)
                               and not n.startswith("_"))
            raise ValueError(f"unknown block {name!r}; available blocks: {', '.join('blocks.' + a for a in available)}")
        return block
    if name not in models.list_models():
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(models.list_models())} "
                         f"(or blocks.<ClassName>)")
    return getattr(models, name)


def build(name, settings, input_shape=None, num_classes=None):
    """Build model/block `name` from CLI settings; returns (module, input shape to feed, label)."""
    builder = _builder(name)
    if input_shape is None and name.startswith("blocks."):
        raise ValueError(f"{name}: a block has no default input shape; pass --input C,H,W")
    accepted = inspect.signature(builder).parameters
    kwargs = dict(settings)
    if num_classes is not None and "num_classes" in accepted:
        kwargs.setdefault("num_classes", num_classes)
    if input_shape is not None:
        for key in ("in_channels", "channels", "features"):
            if key in accepted:
                kwargs.setdefault(key, input_shape[0])
                break
        if "input_size" in accepted and len(input_shape) == 3:
            kwargs.setdefault("input_size", input_shape[1])
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; its options: {', '.join(accepted)}")
    module = builder(**kwargs)
    shape = module.input_shape if input_shape is None or "rho" in kwargs else input_shape
    label = " ".join([name] + [f"{k}={v}" for k, v in settings.items()])
    return module, tuple(shape), label


def _list():
    from tinyconv import blocks, models
    block_names = sorted(n for n, v in vars(blocks).items() if isinstance(v, type) and issubclass(v, nn.Module)
                         and not n.startswith("_"))
    print("models: " + ", ".join(models.list_models()))
    print("blocks: " + ", ".join("blocks." + n for n in block_names))
    return 0


def _run(args):
    if args.list:
        return _list()
    if args.model is None:
        raise ValueError("name a MODEL (see --list)")
    options = {"alpha": args.alpha, "rho": args.rho, "groups": args.groups}
    options = {k: v for k, v in options.items() if v is not None}
    model_name, settings = _parse_settings([args.model] + args.settings)
    settings = {**options, **settings}
    model, shape, label = build(model_name, settings, args.input, args.num_classes)
    first = summary(model, shape, name=label)
    if args.compare is None:
        print(first)
        if args.by_kind:
            print()
            print(first.format_kinds())
        return 0
    other_name, overrides = _parse_settings(args.compare)
    base = settings if other_name in (None, model_name) else options
    other, other_shape, other_label = build(other_name or model_name, {**base, **overrides}, args.input,
                                            args.num_classes)
    print(compare(first, summary(other, other_shape, name=other_label)))
    return 0


def _run_cli(args):
    try:
        return _run(args)
    except (ValueError, TypeError) as error:
        print(f"tinyconv summary: {error}", file=sys.stderr)
        return 2


def add_cli(subparsers):
    """Register `tinyconv summary` on an argparse subparsers object (from cli.build_parser)."""
    p = subparsers.add_parser(
        "summary", help="per-layer shapes, parameters and multiply-adds of a model",
        description="Print a model's per-layer output shapes, parameters and multiply-adds (MACs; FLOPs = 2·MACs). "
                    "MODEL is a zoo name (resnet20, mobilenet, ...) or blocks.<ClassName>; KEY=VALUE settings are "
                    "passed to it. Example: tinyconv summary mobilenet --input 3,224,224 --num-classes 1000 "
                    "--compare alpha=0.5")
    p.add_argument("model", metavar="MODEL", nargs="?")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="keyword arguments for the model or block")
    p.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="input shape without the batch axis (default: the model's own)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--alpha", "--width-mult", dest="alpha", type=float, help="MobileNet width multiplier")
    p.add_argument("--rho", type=float, help="MobileNet resolution multiplier (scales the input size)")
    p.add_argument("--groups", type=int, help="ShuffleNet groups")
    p.add_argument("--by-kind", action="store_true", help="also print totals grouped by layer kind")
    p.add_argument("--list", action="store_true", help="list the zoo models and blocks, then exit")
    p.add_argument("--compare", nargs="+", metavar="MODEL|KEY=VALUE",
                   help="a second model, or the same one with changed settings, printed side by side")
    p.set_defaults(run=_run_cli)
    return p


class _CallableModule(types.ModuleType):
    """Lets `tinyconv.summary(model, shape)` call summary() while `tinyconv.summary.add_cli` stays reachable."""

    def __call__(self, model, input_shape, name=None):
        return summary(model, input_shape, name)


sys.modules[__name__].__class__ = _CallableModule

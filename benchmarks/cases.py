"""Benchmark cases: one op on fixed shapes, timed through tinyconv.functional
and, when PyTorch is installed, through torch.nn.functional.

A `Case` holds the input shapes, which inputs are differentiated, and one
`call(F, **tensors)` that runs the op. tinyconv.functional mirrors
torch.nn.functional (same names, argument order, defaults), so the same
call serves both libraries; `torch_call` overrides it where torch spells the
op differently (deformable convolution lives in torchvision).

`measure(ctx, case, impl)` returns two records, forward ("fwd", under
no_grad) and forward+backward ("fwd+bwd": forward on the tape, then
backward from a fixed random grad_output), each with warm-up, median,
min-max, and, when the case counts multiply-adds, GFLOP/s and % of the
machine's GEMM rate.

Status of a record: "ok"; "unavailable" when tinyconv.functional (or the
kernels module) does not have the op yet; "skipped" for torch when it is
not installed; "error" when the call raised, with the message in "note".
"""
from dataclasses import dataclass, field

import numpy as np

import tinyconv
from benchmarks.harness import peak_mb, time_call, time_side_by_side

MODES = ("fwd", "fwd+bwd")
BACKWARD_FACTOR = 3    # fwd+bwd of a conv = forward + grad-input + grad-weight


class Unavailable(Exception):
    """The op this case needs has not landed (yet)."""


@dataclass
class Case:
    name: str
    op: str                          # the tinyconv.functional name it needs
    inputs: dict                     # input name -> shape; arrays are N(0, 1) unless `make` says otherwise
    grad: tuple                      # inputs differentiated in fwd+bwd
    call: object                     # call(F, **tensors) -> output, F = tinyconv.functional or torch's
    macs: int = None                 # forward multiply-adds (None: not a MAC op)
    params: int = 0
    torch_call: object = None        # torch's spelling, when it differs
    make: dict = field(default_factory=dict)   # input name -> fn(rng, shape, dtype) -> array
    modes: tuple = MODES
    conv: tuple = None               # (stride, padding, dilation, groups), pairs: for calling kernels directly

    def mode_macs(self, mode):
        if self.macs is None:
            return None
        return self.macs * (BACKWARD_FACTOR if mode == "fwd+bwd" else 1)

    def arrays(self, dtype, seed=0):
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.inputs.items():
            maker = self.make.get(name)
            arr = maker(rng, shape, dtype) if maker else rng.standard_normal(shape)
            out[name] = np.ascontiguousarray(arr, dtype=dtype)
        return out


# ---- shape arithmetic ---------------------------------------------------------
def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_out(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def conv_case(name, n, c_in, c_out, size, kernel, stride=1, padding=0, dilation=1, groups=1):
    """conv2d (or depthwise when groups == c_in == c_out) on an N x c_in x size x size input, no bias."""
    (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = pair(kernel), pair(stride), pair(padding), pair(dilation)
    out_h, out_w = conv_out(size, k_h, s_h, p_h, d_h), conv_out(size, k_w, s_w, p_w, d_w)
    weight = (c_out, c_in // groups, k_h, k_w)
    macs = n * c_out * out_h * out_w * (c_in // groups) * k_h * k_w
    return Case(name, "conv2d", {"x": (n, c_in, size, size), "w": weight}, ("x", "w"),
                lambda F, x, w: F.conv2d(x, w, None, (s_h, s_w), (p_h, p_w), (d_h, d_w), groups),
                macs=macs, params=int(np.prod(weight)), conv=((s_h, s_w), (p_h, p_w), (d_h, d_w), groups))


def conv_transpose_case(name, n, c_in, c_out, size, kernel, stride, padding):
    """conv_transpose2d: each input pixel scatters a k x k x c_out patch (MACs = N c_in H W c_out k k)."""
    weight = (c_in, c_out, kernel, kernel)
    macs = n * c_in * size * size * c_out * kernel * kernel
    return Case(name, "conv_transpose2d", {"x": (n, c_in, size, size), "w": weight}, ("x", "w"),
                lambda F, x, w: F.conv_transpose2d(x, w, None, stride, padding),
                macs=macs, params=int(np.prod(weight)))


def sequence_case(name, convs):
    """conv_cases applied one after the other (weights w0, w1, ...): MACs and params add up."""
    inputs = {"x": convs[0].inputs["x"]}
    inputs.update({f"w{i}": conv.inputs["w"] for i, conv in enumerate(convs)})

    def call(F, x, **weights):
        for i, conv in enumerate(convs):
            x = conv.call(F, x, weights[f"w{i}"])
        return x

    return Case(name, "conv2d", inputs, tuple(inputs), call,
                macs=sum(c.macs for c in convs), params=sum(c.params for c in convs))


def deform_case(name, n, c, size, kernel=3, mask=False):
    """deform_conv2d v1, c -> c channels, stride 1, padding k//2, offsets ~ N(0, 0.5^2) pixels;
    mask=True: v2, with a mask ~ U(0.2, 1) (differentiated too).

    MACs count the convolution only, not the 4-tap bilinear sampling.
    """
    pad = kernel // 2
    weight = (c, c, kernel, kernel)
    macs = n * c * size * size * c * kernel * kernel
    inputs = {"x": (n, c, size, size), "offset": (n, 2 * kernel * kernel, size, size), "w": weight}
    make = {"offset": lambda rng, shape, dtype: 0.5 * rng.standard_normal(shape)}
    if mask:
        inputs["mask"] = (n, kernel * kernel, size, size)
        make["mask"] = lambda rng, shape, dtype: rng.uniform(0.2, 1.0, shape)
    return Case(name, "deform_conv2d", inputs, tuple(inputs),
                lambda F, x, offset, w, mask=None: F.deform_conv2d(x, offset, w, None, 1, pad, 1, mask),
                macs=macs, params=int(np.prod(weight)),
                torch_call=lambda F, x, offset, w, mask=None: torch_deform_conv2d(x, offset, w, pad, mask),
                make=make, conv=((1, 1), (pad, pad), (1, 1), 1))


def pool_case(name, op, n, c, size, kernel, stride, padding=0):
    return Case(name, op, {"x": (n, c, size, size)}, ("x",),
                lambda F, x: getattr(F, op)(x, kernel, stride, padding))


def batch_norm_case(name, n, c, size):
    """Training-mode batch norm (batch statistics; running stats updated in place)."""
    return Case(name, "batch_norm",
                {"x": (n, c, size, size), "mean": (c,), "var": (c,), "w": (c,), "b": (c,)}, ("x", "w", "b"),
                lambda F, x, mean, var, w, b: F.batch_norm(x, mean, var, w, b, training=True),
                params=2 * c,
                make={"mean": lambda rng, shape, dtype: np.zeros(shape),
                      "var": lambda rng, shape, dtype: np.ones(shape)})


def shuffle_case(name, n, c, size, groups):
    return Case(name, "channel_shuffle", {"x": (n, c, size, size)}, ("x",),
                lambda F, x: F.channel_shuffle(x, groups))


# ---- the fixed layer set (issue 3 and issue 4) --------------------------------
def kernel_cases(ctx):
    """Every kernel on the documented layer set; tiny shapes in smoke mode."""
    n, n_deform, big, small = ctx.pick((64, 16, 32, 16), (2, 2, 8, 6))
    c64, c128, c32 = ctx.pick((64, 128, 32), (8, 16, 8))
    return [
        conv_case(f"conv 3x3 {c64}->{c64} {big}x{big}", n, c64, c64, big, 3, padding=1),
        conv_case(f"conv 1x1 {c128}->{c128} {small}x{small}", n, c128, c128, small, 1),
        conv_case(f"depthwise 3x3 C={c128} {small}x{small}", n, c128, c128, small, 3, padding=1, groups=c128),
        conv_case(f"grouped g=8 3x3 {c128}->{c128} {small}x{small}", n, c128, c128, small, 3, padding=1, groups=8),
        conv_case(f"dilated d=2 3x3 {c64}->{c64} {big}x{big}", n, c64, c64, big, 3, padding=2, dilation=2),
        conv_transpose_case(f"transposed 4x4 s2 {c64}->{c32} {small}->{2 * small}", n, c64, c32, small, 4, 2, 1),
        deform_case(f"deformable 3x3 C={c64} {big}x{big} N={n_deform}", n_deform, c64, big),
        pool_case(f"max pool 2x2 s2 C={c64} {big}x{big}", "max_pool2d", n, c64, big, 2, 2),
        pool_case(f"max pool 3x3 s2 p1 C={c64} {big}x{big}", "max_pool2d", n, c64, big, 3, 2, 1),
        pool_case(f"avg pool 2x2 s2 C={c64} {big}x{big}", "avg_pool2d", n, c64, big, 2, 2),
        batch_norm_case(f"batch norm (train) C={c64} {big}x{big}", n, c64, big),
        shuffle_case(f"channel shuffle g=4 C={c64} {big}x{big}", n, c64, big, 4),
    ]


def dev_cases(mask=False):
    """The kernel developers' layers by short name (python -m benchmarks.dev --cases NAME ...).

    The suite's layers at full size, ResNet-20's convolutions at batch 128
    (few channels, small planes), a large-plane depthwise, and tiny cases for
    smoke runs. mask=True makes the deformable cases v2.
    """
    return {
        "3x3": conv_case("3x3 64->64 32x32 N=64", 64, 64, 64, 32, 3, padding=1),
        "1x1": conv_case("1x1 128->128 16x16 N=64", 64, 128, 128, 16, 1),
        "g8": conv_case("grouped g=8 3x3 128 16x16 N=64", 64, 128, 128, 16, 3, padding=1, groups=8),
        "d2": conv_case("dilated d=2 3x3 64->64 32x32 N=64", 64, 64, 64, 32, 3, padding=2, dilation=2),
        "t4x4s2": conv_transpose_case("transposed 4x4 s2 64->32 16->32 N=64", 64, 64, 32, 16, 4, 2, 1),
        "r20_16": conv_case("ResNet-20 3x3 16->16 32x32 N=128", 128, 16, 16, 32, 3, padding=1),
        "r20_32": conv_case("ResNet-20 3x3 32->32 16x16 N=128", 128, 32, 32, 16, 3, padding=1),
        "r20_64": conv_case("ResNet-20 3x3 64->64 8x8 N=128", 128, 64, 64, 8, 3, padding=1),
        "r20_s2": conv_case("ResNet-20 3x3 s2 16->32 32x32 N=128", 128, 16, 32, 32, 3, stride=2, padding=1),
        "dw16": conv_case("depthwise 3x3 C=128 16x16 N=64", 64, 128, 128, 16, 3, padding=1, groups=128),
        "dw112": conv_case("depthwise 3x3 C=32 112x112 N=8", 8, 32, 32, 112, 3, padding=1, groups=32),
        "deform": deform_case(f"deformable {'v2' if mask else 'v1'} 3x3 64->64 32x32 N=16", 16, 64, 32, mask=mask),
        "maxpool2": pool_case("max pool 2x2 s2 C=64 32x32 N=64", "max_pool2d", 64, 64, 32, 2, 2),
        "maxpool3": pool_case("max pool 3x3 s2 p1 C=64 32x32 N=64", "max_pool2d", 64, 64, 32, 3, 2, 1),
        "avgpool2": pool_case("avg pool 2x2 s2 C=64 32x32 N=64", "avg_pool2d", 64, 64, 32, 2, 2),
        "bn": batch_norm_case("batch norm (train) C=64 32x32 N=64", 64, 64, 32),
        "shuffle": shuffle_case("channel shuffle g=4 C=64 32x32 N=64", 64, 64, 32, 4),
        "tiny_conv": conv_case("tiny 3x3 4->4 6x6 N=2", 2, 4, 4, 6, 3, padding=1),
        "tiny_dw": conv_case("tiny depthwise 3x3 C=4 6x6 N=2", 2, 4, 4, 6, 3, padding=1, groups=4),
        "tiny_deform": deform_case(f"tiny deformable {'v2' if mask else 'v1'} 3x3 4->4 6x6 N=2", 2, 4, 6, mask=mask),
        "tiny_shuffle": shuffle_case("tiny channel shuffle g=2 C=4 6x6 N=2", 2, 4, 6, 2),
    }


# ---- running one case -----------------------------------------------------------
def _tinyconv_fns(case, arrays):
    """(forward, forward+backward) closures through tinyconv.functional."""
    F = tinyconv.functional
    if not hasattr(F, case.op):
        raise Unavailable(f"tinyconv.functional.{case.op} not available yet")
    tensors = {k: tinyconv.Tensor(a, requires_grad=k in case.grad) for k, a in arrays.items()}
    grad_output = {}

    def forward():
        with tinyconv.no_grad():
            return case.call(F, **tensors)

    def forward_backward():
        for k in case.grad:
            tensors[k].grad = None
        y = case.call(F, **tensors)
        if "g" not in grad_output:
            grad_output["g"] = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
        y.backward(grad_output["g"])

    return forward, forward_backward


def _torch_fns(torch, case, arrays):
    """(forward, forward+backward) closures through torch.nn.functional."""
    F = torch.nn.functional
    call = case.torch_call or case.call
    tensors = {k: torch.from_numpy(a.copy()).requires_grad_(k in case.grad) for k, a in arrays.items()}
    grad_output = {}

    def forward():
        with torch.no_grad():
            return call(F, **tensors)

    def forward_backward():
        for k in case.grad:
            tensors[k].grad = None
        y = call(F, **tensors)
        if "g" not in grad_output:
            g = np.random.default_rng(1).standard_normal(tuple(y.shape))
            grad_output["g"] = torch.from_numpy(g).to(y.dtype)
        y.backward(grad_output["g"])

    return forward, forward_backward


def record(case, impl, mode, status="ok", note="", timing=None, ctx=None):
    """One row of results, JSON-ready (seconds, counts, rates)."""
    macs = case.mode_macs(mode)
    rec = {"case": case.name, "op": case.op, "impl": impl, "mode": mode, "status": status, "note": note,
           "macs": macs, "flops": 2 * macs if macs is not None else None, "params": case.params,
           "warmup_s": None, "median_s": None, "min_s": None, "max_s": None, "times_s": [],
           "gflops": None, "gemm_pct": None}
    if timing is not None:
        rec.update(warmup_s=timing.warmup, median_s=timing.median, min_s=timing.min, max_s=timing.max,
                   times_s=list(timing.times))
        if macs is not None:
            rec["gflops"] = 2 * macs / timing.median / 1e9
            rec["gemm_pct"] = 100 * rec["gflops"] / ctx.gemm if ctx.gemm else None
    return rec


def measure(ctx, case, impl="tinyconv"):
    """Time `case` through `impl` ('tinyconv' or 'torch'): one record per mode.

    Results are cached in ctx.cache for the run (a case measured by two
    suites at the same thread count is timed once). tinyconv's fwd+bwd record
    also gets peak_mb: NumPy memory allocated at the peak of one call.
    """
    key = (case.name, impl, ctx.threads, ctx.dtype.name)
    if key in ctx.cache:
        return ctx.cache[key]
    if impl == "torch" and ctx.torch is None:
        return [record(case, impl, mode, "skipped", ctx.torch_status) for mode in case.modes]
    try:
        arrays = case.arrays(ctx.dtype)
        fns = _torch_fns(ctx.torch, case, arrays) if impl == "torch" else _tinyconv_fns(case, arrays)
    except Unavailable as exc:
        return [record(case, impl, mode, "unavailable", str(exc)) for mode in case.modes]
    records = []
    for mode, fn in zip(MODES, fns):
        if mode not in case.modes:
            continue
        records.append(timed_record(ctx, case, impl, mode, fn))
        if impl == "tinyconv" and mode == "fwd+bwd" and records[-1]["status"] == "ok":
            records[-1]["peak_mb"] = peak_mb(fn)
    ctx.cache[key] = records
    return records


def measure_side_by_side(ctx, case):
    """tinyconv and PyTorch on one case, timed alternately: [(tinyconv record, torch record) per mode]."""
    arrays = case.arrays(ctx.dtype)
    try:
        ours = _tinyconv_fns(case, arrays)
    except Unavailable as exc:
        return [(record(case, "tinyconv", mode, "unavailable", str(exc)), measure(ctx, case, "torch")[i])
                for i, mode in enumerate(case.modes)]
    theirs = _torch_fns(ctx.torch, case, arrays)
    pairs = []
    for mode, ours_fn, theirs_fn in zip(MODES, ours, theirs):
        try:
            timings = time_side_by_side({"tinyconv": ours_fn, "torch": theirs_fn}, ctx.repeat)
        except Exception:   # find out which side failed: time each alone, errors become records
            pairs.append((timed_record(ctx, case, "tinyconv", mode, ours_fn),
                          timed_record(ctx, case, "torch", mode, theirs_fn)))
            continue
        pairs.append(tuple(record(case, impl, mode, timing=timings[impl], ctx=ctx) for impl in ("tinyconv", "torch")))
    return pairs


def timed_record(ctx, case, impl, mode, fn):
    """Time fn into a record; an exception becomes an 'error' (or 'unavailable') record."""
    try:
        timing = time_call(fn, ctx.repeat)
    except Unavailable as exc:
        return record(case, impl, mode, "unavailable", str(exc))
    except NotImplementedError as exc:
        return record(case, impl, mode, "unavailable", f"NotImplementedError: {exc}")
    except Exception as exc:  # a benchmark reports a failing kernel, it does not stop the run
        return record(case, impl, mode, "error", f"{type(exc).__name__}: {exc}")
    return record(case, impl, mode, timing=timing, ctx=ctx)


# ---- PyTorch's deformable convolution without torchvision ------------------------
def torch_deform_conv2d(x, offset, weight, pad, mask=None):
    """Deformable conv v1 (v2 with a mask) from plain PyTorch ops (what a user without torchvision writes).

    torchvision.ops.deform_conv2d when torchvision is installed; otherwise
    each tap's sampling grid (base position + learned offset) goes through
    F.grid_sample(align_corners=True, padding_mode='zeros'), which gives
    exactly torchvision's "zero outside (-1, H)" bilinear rule, then one
    matmul with the weight. Stride 1, dilation 1, one offset group, no groups.
    """
    import torch
    if torch_deform_method() == "torchvision":
        from torchvision.ops import deform_conv2d
        return deform_conv2d(x, offset, weight, None, 1, pad, mask=mask)
    n, c, h, w = x.shape
    c_out, _, k_h, k_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = k_h * k_w
    off = offset.view(n, taps, 2, out_h, out_w)                          # (N, K, 2, out_h, out_w)
    tap_y = torch.arange(k_h, dtype=x.dtype).repeat_interleave(k_w)      # (K,)
    tap_x = torch.arange(k_w, dtype=x.dtype).repeat(k_h)                 # (K,)
    base_y = torch.arange(out_h, dtype=x.dtype) - pad                    # (out_h,)
    base_x = torch.arange(out_w, dtype=x.dtype) - pad                    # (out_w,)
    sample_y = base_y[None, None, :, None] + tap_y[None, :, None, None] + off[:, :, 0]   # (N, K, out_h, out_w)
    sample_x = base_x[None, None, None, :] + tap_x[None, :, None, None] + off[:, :, 1]
    grid = torch.stack([2 * sample_x / max(w - 1, 1) - 1, 2 * sample_y / max(h - 1, 1) - 1], dim=-1)
    grid = grid.view(n, taps * out_h, out_w, 2)                           # (N, K*out_h, out_w, 2)
    cols = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if mask is not None:                                                  # v2: each tap's samples scaled
        cols = cols.view(n, c, taps, out_h * out_w) * mask.view(n, 1, taps, out_h * out_w)   # (N, C, K, L)
    cols = cols.reshape(n, c * taps, out_h * out_w)                       # (N, C*K, L): rows ordered (c, tap)
    y = torch.matmul(weight.view(c_out, c * taps), cols)                  # (N, C_out, L)
    return y.view(n, c_out, out_h, out_w)


def torch_deform_method():
    """'torchvision' when torchvision is importable, else 'grid_sample + matmul'."""
    import importlib.util
    return "torchvision" if importlib.util.find_spec("torchvision") else "grid_sample + matmul"


def compare(ctx, base, alt):
    """Time two cases that compute the same layer two ways: one dict per mode.

    time_ratio = alt / base median time; mac_ratio and param_ratio likewise.
    """
    out = []
    for b, a in zip(measure(ctx, base), measure(ctx, alt)):
        ratio = a["median_s"] / b["median_s"] if a["median_s"] and b["median_s"] else None
        out.append({"mode": b["mode"], "base": b, "alt": a, "time_ratio": ratio,
                    "mac_ratio": alt.macs / base.macs, "param_ratio": alt.params / base.params})
    return out

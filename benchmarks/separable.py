"""Suite `separable`: a standard 3x3 conv vs the depthwise-separable pair (MobileNet).

Same input, same in/out channels M = N = C, stride 1, padding 1:

    standard     3x3 conv C -> C                  Dk^2 M N Df^2 MACs
    separable    3x3 depthwise (groups=C), then   Dk^2 M Df^2 + M N Df^2 MACs
                 1x1 pointwise C -> C

MobileNet's predicted cost ratio separable / standard = 1/N + 1/Dk^2
(8-9x fewer multiply-adds for 3x3). The table puts the measured time ratio
beside it: the depthwise half does few MACs per byte it reads, so it runs
far below the GEMM rate, and the time saved is smaller than the MACs saved.

Run: python -m benchmarks.separable [--repeat R] [--threads N] [--smoke]
"""
from benchmarks.cases import compare, conv_case, sequence_case
from benchmarks.harness import SuiteResult, fmt_count, fmt_ms, status_cell

NAME = "separable"
TITLE = "standard 3x3 conv vs depthwise 3x3 + pointwise 1x1 (MobileNet)"
HEADERS = ["layer", "mode", "standard ms", "separable ms", "time ratio", "MAC ratio 1/N+1/Dk^2",
           "std MACs", "sep MACs", "std params", "sep params", "note"]


def layers(ctx):
    """(batch, channels, size) triples: the MobileNet-like stages at 32x32-ish inputs."""
    return ctx.pick([(32, 64, 32), (32, 128, 16), (32, 256, 8)], [(2, 8, 8)])


def run(ctx):
    records, rows, plot = [], [], []
    for n, c, size in layers(ctx):
        label = f"C={c} {size}x{size} N={n}"
        standard = conv_case(f"standard 3x3 {label}", n, c, c, size, 3, padding=1)
        separable = sequence_case(f"separable 3x3 {label}", [
            conv_case("depthwise", n, c, c, size, 3, padding=1, groups=c),
            conv_case("pointwise", n, c, c, size, 1)])
        predicted = 1 / c + 1 / 9
        for cmp in compare(ctx, standard, separable):
            cmp.update(layer=label, predicted_mac_ratio=predicted)
            records.append(cmp)
            ratio = cmp["time_ratio"]
            rows.append([label, cmp["mode"], fmt_ms(cmp["base"]["median_s"]), fmt_ms(cmp["alt"]["median_s"]),
                         "-" if ratio is None else f"{ratio:.3f}", f"{predicted:.3f}",
                         fmt_count(cmp["base"]["macs"]), fmt_count(cmp["alt"]["macs"]),
                         fmt_count(standard.params), fmt_count(separable.params),
                         status_cell(cmp["base"]) or status_cell(cmp["alt"])])
            if ratio is not None:
                plot.append((f"{label} {cmp['mode']}", ratio))
    notes = ["time ratio = separable / standard median time; MAC ratio = the MobileNet paper's 1/N + 1/Dk^2 "
             "(N output channels, Dk = 3). Measured ratio above the MAC ratio = the depthwise half is memory-bound."]
    return SuiteResult(NAME, TITLE, HEADERS, rows, records, notes, plot, "time ratio separable / standard")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

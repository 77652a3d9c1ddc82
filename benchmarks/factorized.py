"""Suite `factorized`: Inception v2/v3 factorizations, time and parameters.

    5x5 conv C -> C (padding 2)   vs  two 3x3 convs C -> C (padding 1 each)
        weights per channel pair 25 vs 9 + 9 = 18: 28% fewer
    3x3 conv C -> C (padding 1)   vs  1x3 (padding (0, 1)) then 3x1 (padding (1, 0))
        9 vs 3 + 3 = 6: 33% fewer

Same receptive field, no nonlinearity in between (the papers put a ReLU
there; it does not change the conv cost). The table shows whether time
follows the parameter/MAC saving: a 1xn kernel has a thinner im2col
matrix (K = 3C instead of 9C), which BLAS runs at a lower rate.

Run: python -m benchmarks.factorized [--repeat R] [--threads N] [--smoke]
"""
from benchmarks.cases import compare, conv_case, sequence_case
from benchmarks.harness import SuiteResult, fmt_count, fmt_ms, status_cell

NAME = "factorized"
TITLE = "5x5 vs two 3x3; 3x3 vs 1x3 + 3x1 (Inception v2/v3)"
HEADERS = ["comparison", "mode", "big ms", "factorized ms", "time ratio", "param ratio", "MAC ratio",
           "big params", "fact. params", "note"]


def comparisons(ctx):
    n, c, size = ctx.pick((32, 64, 32), (2, 8, 8))
    tag = f"C={c} {size}x{size} N={n}"
    five = conv_case(f"5x5 {tag}", n, c, c, size, 5, padding=2)
    two_threes = sequence_case(f"3x3+3x3 {tag}", [conv_case("a", n, c, c, size, 3, padding=1),
                                                  conv_case("b", n, c, c, size, 3, padding=1)])
    three = conv_case(f"3x3 {tag}", n, c, c, size, 3, padding=1)
    one_by_three = sequence_case(f"1x3+3x1 {tag}", [conv_case("a", n, c, c, size, (1, 3), padding=(0, 1)),
                                                    conv_case("b", n, c, c, size, (3, 1), padding=(1, 0))])
    return [(f"5x5 vs 3x3+3x3 {tag}", five, two_threes), (f"3x3 vs 1x3+3x1 {tag}", three, one_by_three)]


def run(ctx):
    records, rows, plot = [], [], []
    for label, big, small in comparisons(ctx):
        for cmp in compare(ctx, big, small):
            cmp["comparison"] = label
            records.append(cmp)
            ratio = cmp["time_ratio"]
            rows.append([label, cmp["mode"], fmt_ms(cmp["base"]["median_s"]), fmt_ms(cmp["alt"]["median_s"]),
                         "-" if ratio is None else f"{ratio:.3f}", f"{cmp['param_ratio']:.3f}",
                         f"{cmp['mac_ratio']:.3f}", fmt_count(big.params), fmt_count(small.params),
                         status_cell(cmp["base"]) or status_cell(cmp["alt"])])
            if ratio is not None:
                plot.append((f"{label} {cmp['mode']}", ratio))
    notes = ["ratios = factorized / big (time: median; params and MACs: counted). 18/25 = 0.72, 6/9 = 0.667."]
    return SuiteResult(NAME, TITLE, HEADERS, rows, records, notes, plot, "time ratio factorized / big")


if __name__ == "__main__":
    from benchmarks.cli import main_suite
    raise SystemExit(main_suite(NAME))

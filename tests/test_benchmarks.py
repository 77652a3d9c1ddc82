"""benchmarks/: every suite runs in smoke mode (tiny shapes, one repeat), the JSON
output has its documented structure, and the table is aligned. No test asserts
a time. PyTorch is never imported here; the torch suite's comparison path runs
only when torch is installed (benchmarks/ imports it, optionally)."""
import argparse
import importlib.util
import json
import sys
import time

import numpy as np
import pytest

from benchmarks import cli, harness
from benchmarks.cases import Case, conv_case, conv_transpose_case, measure
from benchmarks.harness import format_table, time_call

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
RECORD_KEYS = {"case", "op", "impl", "mode", "status", "note", "macs", "flops", "params", "warmup_s", "median_s",
               "min_s", "max_s", "times_s", "gflops", "gemm_pct"}


@pytest.fixture(scope="module")
def ctx():
    """One smoke context for the module: threads = all cores, no torch, GEMM rate measured once."""
    return harness.make_context(smoke=True, use_torch=False, print_fn=lambda *a: None)


# ---- every suite, smoke mode -------------------------------------------------------
@pytest.mark.parametrize("name", list(cli.SUITES))
def test_suite_runs_in_smoke_mode(ctx, name):
    result = importlib.import_module(cli.SUITES[name]).run(ctx)
    assert result.name == name
    assert cli.count_errors(result.records) == 0, [r for r in result.records if r.get("status") == "error"]
    text = result.text()
    assert text.startswith(f"== {name}: ")
    for row in result.rows:
        assert len(row) == len(result.headers)
    json.dumps(result.records, default=cli._jsonable)    # JSON-ready


def test_threads_suite_restores_thread_count(ctx):
    importlib.import_module(cli.SUITES["threads"]).run(ctx)
    assert harness.current_threads()["numba"] == ctx.threads


def test_torch_suite_says_once_when_torch_is_off(ctx):
    result = importlib.import_module(cli.SUITES["torch"]).run(ctx)
    assert result.rows == [] and result.records == []
    assert len(result.notes) == 1 and "PyTorch not used" in result.notes[0] and "skipped" in result.notes[0]


def test_missing_torch_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(harness, "import_torch", lambda: None)      # as if torch were not installed
    no_torch = harness.make_context(smoke=True, use_torch=True, print_fn=lambda *a: None)
    assert no_torch.torch is None
    result = importlib.import_module(cli.SUITES["torch"]).run(no_torch)
    assert result.notes == ["PyTorch not installed (pip install torch==2.13.0): torch comparison skipped."]
    header = harness.header_lines(harness.machine_info(no_torch))
    assert sum("PyTorch not installed" in line for line in header) == 1


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed: the comparison path cannot run")
def test_torch_suite_compares_when_torch_is_installed():
    torch_ctx = harness.make_context(smoke=True, use_torch=True, print_fn=lambda *a: None)
    result = importlib.import_module(cli.SUITES["torch"]).run(torch_ctx)
    assert cli.count_errors(result.records) == 0
    timed = [r for r in result.records if r["ratio"] is not None]
    assert timed, "no case was timed through both libraries"
    for r in timed:
        assert r["ratio"] == pytest.approx(r["tinyconv"]["median_s"] / r["torch"]["median_s"])
        assert r["min_ratio"] == pytest.approx(r["tinyconv"]["min_s"] / r["torch"]["min_s"])
        assert r["torch"]["impl"] == "torch" and r["torch"]["status"] == "ok"


# ---- the harness ---------------------------------------------------------------------
def test_time_call_excludes_the_warmup_and_repeats():
    calls = []
    timing = time_call(lambda: calls.append(1), 4)
    assert len(calls) == 5 and len(timing.times) == 4
    assert timing.min <= timing.median <= timing.max
    assert timing.warmup >= 0


def test_time_call_budget_stops_early_after_min_repeat():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.01)

    timing = time_call(slow, 100, budget_s=0.015, min_repeat=2)
    assert len(timing.times) == 2 and len(calls) == 3


def test_format_table_aligns_columns():
    table = format_table(["case", "mode", "ms"], [["conv 3x3", "fwd", "1.5"], ["bn", "fwd+bwd", "120.25"]])
    assert table.splitlines() == [
        "case         mode      ms",
        "--------  -------  ------",
        "conv 3x3      fwd     1.5",
        "bn        fwd+bwd  120.25",
    ]


def test_time_side_by_side_alternates():
    order = []
    timings = harness.time_side_by_side({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # one warm-up each, then rounds a b, b a, a b
    assert len(timings["a"].times) == len(timings["b"].times) == 3


def test_time_side_by_side_starts_each_round_one_contender_later():
    order = []
    harness.time_side_by_side({name: (lambda name=name: order.append(name)) for name in "abc"}, 4)
    rounds = ["".join(order[3 + 3 * r:6 + 3 * r]) for r in range(4)]
    assert order[:3] == ["a", "b", "c"] and rounds == ["abc", "bca", "cab", "abc"]


def test_startup_runs_in_a_fresh_process():
    seconds = harness.startup_seconds()                  # warm: the usual Numba cache
    assert seconds > 0


def test_formatters():
    assert harness.fmt_count(1234567) == "1.23 M"
    assert harness.fmt_count(2.5e9) == "2.50 G"
    assert harness.fmt_count(None) == "-"
    assert harness.fmt_ms(0.0015) == "1.50" and harness.fmt_ms(0.25) == "250.0" and harness.fmt_ms(None) == "-"
    assert harness.fmt_spread(0.001, 0.002) == "1.00-2.00"


def test_header_names_cpu_threads_and_roofline(ctx):
    info = harness.machine_info(ctx)
    lines = harness.header_lines(info)
    assert info["cpu"] and info["threads"] == ctx.threads and info["gemm_gflops"] > 0
    assert any(info["cpu"] in line and "threads" in line for line in lines)
    assert any("GFLOP/s" in line and "GEMM" in line for line in lines)
    assert any("FLOPs = 2 x MACs" in line for line in lines)
    cores = info["openblas_cores"]
    assert set(cores) == {"numpy", "scipy"}
    openblas = [line for line in lines if line.startswith("OpenBLAS kernels:")]
    assert len(openblas) == 1 and all(f"{package} {name or 'unknown'}" in openblas[0] for package, name in cores.items())


def test_openblas_line_says_who_chose_the_kernels():
    cores = {"numpy": "Haswell", "scipy": None}
    line = harness.openblas_line(cores, "Haswell")
    assert "numpy Haswell, scipy unknown" in line and "OPENBLAS_CORETYPE=Haswell set in the environment" in line
    assert "chosen by OpenBLAS from the CPU model" in harness.openblas_line(cores, None)


def test_conv_flop_counts_follow_the_shape():
    case = conv_case("c", 2, 4, 6, 8, 3, padding=1, groups=2)
    assert case.macs == 2 * 6 * 8 * 8 * (4 // 2) * 3 * 3
    assert case.mode_macs("fwd+bwd") == 3 * case.macs
    strided = conv_case("s", 1, 3, 5, 9, (1, 3), stride=2, padding=(0, 1))
    assert strided.macs == 1 * 5 * 5 * 5 * 3 * 1 * 3          # out 5x5
    transposed = conv_transpose_case("t", 2, 4, 3, 5, 4, 2, 1)
    assert transposed.macs == 2 * 4 * 5 * 5 * 3 * 4 * 4


def test_missing_op_is_unavailable_and_a_raising_op_is_an_error(ctx):
    missing = Case("missing", "no_such_op_yet", {"x": (1, 2, 3, 3)}, ("x",), lambda F, x: F.no_such_op_yet(x))
    records = measure(ctx, missing)
    assert [r["status"] for r in records] == ["unavailable", "unavailable"]
    assert "no_such_op_yet" in records[0]["note"]
    assert cli.count_errors(records) == 0

    def boom(F, x):
        raise RuntimeError("kernel exploded")

    broken = Case("broken", "relu", {"x": (1, 2, 3, 3)}, ("x",), boom)
    records = measure(ctx, broken)
    assert [r["status"] for r in records] == ["error", "error"]
    assert "kernel exploded" in records[0]["note"]
    assert cli.count_errors({"suites": [{"records": records}]}) == 2


def test_records_carry_gflops_and_roofline(ctx):
    records = measure(ctx, conv_case("conv for the record test", 2, 4, 4, 6, 3, padding=1))
    for rec in records:
        assert set(RECORD_KEYS) <= set(rec)
        assert rec["status"] == "ok" and len(rec["times_s"]) == ctx.repeat
        assert rec["flops"] == 2 * rec["macs"]
        assert rec["gflops"] == pytest.approx(rec["flops"] / rec["median_s"] / 1e9)
        assert rec["gemm_pct"] == pytest.approx(100 * rec["gflops"] / ctx.gemm)


# ---- the command line, JSON and plot ---------------------------------------------------
def test_cli_writes_json_with_the_documented_structure(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    status, report = cli.run(["factorized"], dtype="float64", smoke=True, json_path=str(out), use_torch=False,
                             print_fn=lines.append)
    assert status == 0
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report, default=cli._jsonable))
    machine = data["machine"]
    for key in ("date", "cpu", "cores", "threads", "dtype", "gemm_gflops", "gemm_size", "repeat", "smoke", "torch"):
        assert key in machine
    assert machine["dtype"] == "float64" and machine["smoke"] is True and machine["torch"] is None
    (suite,) = data["suites"]
    assert suite["name"] == "factorized" and suite["records"]
    for cmp in suite["records"]:
        assert {"mode", "base", "alt", "time_ratio", "param_ratio", "mac_ratio"} <= set(cmp)
        assert set(RECORD_KEYS) <= set(cmp["base"])
    assert cmp["param_ratio"] == pytest.approx(6 / 9)
    assert any(line.startswith("tinyconv bench") for line in lines)


def test_add_cli_registers_bench(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tinyconv")
    cli.add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "k.json"
    args = parser.parse_args(["bench", "separable", "--smoke", "--no-torch", "--threads", "1", "--json", str(out)])
    assert args.run(args) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 1 and data["suites"][0]["name"] == "separable"
    assert "== separable:" in capsys.readouterr().out
    args = parser.parse_args(["bench", "no-such-suite", "--smoke"])
    assert args.run(args) == 2
    assert "unknown suite 'no-such-suite'" in capsys.readouterr().err
    harness.set_threads(harness.core_count())


def test_resolve_suites():
    assert cli.resolve_suites([]) == list(cli.SUITES) == cli.resolve_suites(["all"])
    assert cli.resolve_suites(["torch", "kernels", "torch"]) == ["torch", "kernels"]
    with pytest.raises(ValueError, match="unknown suite 'gpu'"):
        cli.resolve_suites(["gpu"])


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        harness.make_context(dtype="float16", smoke=True, use_torch=False)
    with pytest.raises(ValueError, match="repeat"):
        harness.make_context(repeat=0, smoke=True, use_torch=False)


def _plotted_suite():
    return harness.SuiteResult("kernels", "t", ["case", "ms"], [["a", "1"]], [], [], [("a fwd", 1.0), ("b", 2.0)])


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed")
def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "bench.png"
    assert cli.save_plot([_plotted_suite()], str(out), print_fn=lambda *a: None)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    lines = []
    out = tmp_path / "bench.png"
    assert cli.save_plot([_plotted_suite()], str(out), print_fn=lines.append) is False
    assert len(lines) == 1 and "matplotlib not installed" in lines[0]
    assert not out.exists()


def test_smoke_arrays_follow_the_dtype(ctx):
    case = conv_case("c", 1, 2, 2, 4, 3, padding=1)
    assert all(a.dtype == np.float32 for a in case.arrays(np.float32).values())
    assert all(a.dtype == np.float64 for a in case.arrays(np.float64).values())


def test_train_step_benchmark_smoke(capsys):
    from benchmarks import train_step

    train_step.main(["--batch", "4", "--repeat", "1", "--models", "fashion_cnn,resnet20", "--no-torch"])
    out = capsys.readouterr().out
    assert "fashion_cnn" in out and "resnet20" in out and "ratio" not in out


# ---- the kernel developers' script (python -m benchmarks.dev) ----------------------------
def test_dev_script_smoke_without_torch(capsys):
    from benchmarks import dev

    assert dev.main(["--cases", "tiny_conv", "--repeats", "1", "--no-torch", "--cpu-time"]) == 0
    out = capsys.readouterr().out
    assert "busy-loop control before" in out and "busy-loop control after" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("tiny_conv ")]
    assert [row[1:3] for row in rows] == [["fwd", "tinyconv"], ["fwd+bwd", "tinyconv"]]
    assert "wall med ms" in out and "PyTorch not used" in out


def test_dev_script_times_an_old_kernel_file_beside_the_current_one(tmp_path, capsys):
    import shutil

    from benchmarks import dev

    old = tmp_path / "shuffle_old.py"
    shutil.copy(dev.F.shuffle.__file__, old)
    current = dev.F.shuffle
    assert dev.main(["--cases", "tiny_shuffle", "--repeats", "1", "--no-torch", "--old",
                     f"kernels/shuffle.py={old}"]) == 0
    assert dev.F.shuffle is current                       # the swap is undone after each call
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("tiny_shuffle ")]
    assert {row[1] for row in rows if row[2:4] == ["old", "shuffle.py"]} == {"fwd", "fwd+bwd"}


def test_dev_script_rejects_a_bad_old_argument(capsys):
    from benchmarks import dev

    with pytest.raises(SystemExit):
        dev.main(["--cases", "tiny_conv", "--no-torch", "--old", "kernels/shuffle.py"])
    assert "kernels/X.py=PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dev.main(["--cases", "tiny_conv", "--no-torch", "--old", f"kernels/im2col.py={dev.__file__}"])
    assert "does not call kernels/im2col.py" in capsys.readouterr().err

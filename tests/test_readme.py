"""The README's tour runs as written, and its commands exist."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)  # the tour saves a file
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "resnet20.npz").exists()


def test_readme_commands_are_real_subcommands():
    from tinyconv.cli import build_parser

    commands = set(re.findall(r"`tinyconv (\w+)", README.read_text()))
    known = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= known, commands - known

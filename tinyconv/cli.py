"""The command line: `tinyconv train | eval | bench | summary | gradcheck`.

Each subcommand is a small function that parses its own options and calls
the library; `main(argv)` returns the process exit status.
"""
import argparse
import sys

import tinyconv


def _gradcheck_ops(args):
    """Check every differentiable op's gradient against finite differences."""
    from tinyconv.gradcheck import check_ops
    failures = check_ops(print_fn=print)
    return 1 if failures else 0


def build_parser():
    parser = argparse.ArgumentParser(prog="tinyconv", description="A from-scratch reference CNN engine.")
    parser.add_argument("--version", action="version", version=f"tinyconv {tinyconv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""The einattn command line: a thin shell over the Python API.

Exit codes: 0 success, 1 a check failed, 2 bad input (spec, arguments, unsupported target).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("list", "explain", "check", "compile", "bench", "targets")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="einattn", description="Compile attention variants written as einsum cascades.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"einattn.commands.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name != f"einattn.commands.{name}_cmd":
                raise
            continue
        mod.add(sub)
    return p


def main(argv=None) -> int:
    from einattn.ir import EinattnError
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EinattnError as e:
        print(f"einattn {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The einattn command line: a thin shell over the Python API.

Exit codes: 0 success; 1 a check ran and mismatched (nothing else exits 1); 2 bad input
(spec, arguments, unsupported target), printed as one line
``einattn <command>: <ErrorType>: <message>``; 3 an internal error (a bug: the traceback
is printed, please report it); 130 interrupted (Ctrl-C); 141 (128 + SIGPIPE) the reader
of stdout went away, as in ``einattn list | head -1``, which ends quietly.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

COMMANDS = ("list", "explain", "check", "compile", "bench", "tune", "cache", "targets", "trace")
EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 3, 130, 141


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="einattn", description="Compile attention variants written as einsum cascades.",
                                epilog="Exit codes: 0 ok, 1 a check mismatched, 2 bad input, 3 internal error.")
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
    """Run one command; returns the exit code (argparse's own usage errors exit 2 by SystemExit)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()     # here, not at interpreter exit, so a closed pipe is caught below
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _run(argv) -> int:
    from einattn.ir import EinattnError
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EinattnError as e:
        print(f"einattn {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:
        print(f"einattn {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(f"einattn {args.command}: internal error (a bug in einattn, not in the input): "
              f"please report the traceback above", file=sys.stderr)
        return EXIT_INTERNAL


def _stdout_to_devnull() -> None:
    """The Python docs' recipe for SIGPIPE: later writes (the interpreter's final flush) go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())

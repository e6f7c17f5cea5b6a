"""The ``packetscript`` command line.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` to a callable taking the parsed arguments and returning the
exit status. Errors meant for the user are raised as :class:`CliError` and printed to
stderr without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order they appear in --help.
_COMMANDS = ("replay", "check", "export", "kernel", "lab", "run", "demo")


class CliError(Exception):
    """A mistake or a missing prerequisite, reported as one clear message and exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="packetscript",
        description="Prototype PacketScript (xt_LUA) scripts: replay them over pcaps, "
        "run them on a private lab network, check them for the kernel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"packetscript_lab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"packetscript_lab.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


# Commands that run a script in a Judge: its process starts before the command line's own
# imports, so Python's and lupa's start-up there overlap them.
_JUDGED = ("replay", "check")


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] and words[0] in _JUDGED and not {"-h", "--help"} & set(words):
        from packetscript_lab.judge import start_process_ahead
        start_process_ahead()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"packetscript {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"packetscript {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

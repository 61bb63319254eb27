"""The ``harness`` command line. Imports nothing heavy at start-up: ``--help`` and the listings never
load torch (``models --json`` imports the builders to read their options)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from harness.cli.parser import build_parser
from harness.errors import HarnessError

__all__ = ["main", "build_parser"]


def _apply_plugin_options(args: argparse.Namespace) -> None:
    if getattr(args, "plugin", None):
        existing = [p for p in os.environ.get("HARNESS_EXTRA_PLUGINS", "").split(os.pathsep) if p]
        os.environ["HARNESS_EXTRA_PLUGINS"] = os.pathsep.join(existing + list(args.plugin))
    if getattr(args, "strict_plugins", False):
        os.environ["HARNESS_STRICT_PLUGINS"] = "1"


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from harness.cli import commands

    return {"models": commands.listing, "tasks": commands.listing, "plugins": commands.listing,
            "run": commands.run, "horizon": commands.horizon, "gradients": commands.gradients,
            "plot": commands.plot, "report": commands.report, "bench": commands.bench,
            "merge": commands.merge}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _apply_plugin_options(args)
    from harness.runs.environment import invoked_as

    try:
        with invoked_as(sys.argv[1:] if argv is None else argv):
            return _commands()[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head or less, closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m expportrait_core <command> ...``.

Each stage module may contribute sub-commands through an ``add_cli(subparsers)`` function; they
are registered here. User-fixable errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .errors import ExpPortraitError

# Modules that contribute sub-commands via add_cli(subparsers); missing ones are skipped.
CLI_MODULES = (
    "expportrait_core.demo",
    "expportrait_core.pipeline",
    "expportrait_core.workflow.cli",
    "expportrait_core.workflow.templates",
    "expportrait_core.generator.train",
    "expportrait_core.transfer.cli",
    "expportrait_core.fit.cli",
    "expportrait_core.track.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m expportrait_core", description="ExpPortrait command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        for attr in ("add_cli", "add_generate_cli"):
            if hasattr(mod, attr):
                getattr(mod, attr)(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except ExpPortraitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130

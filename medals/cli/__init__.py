"""The `medals` command line. Each area registers its own subcommands; errors end in one line, not a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import MedalSError

# Modules that contribute subcommands: each has `register(subparsers)` and sets `func` on its parsers.
COMMAND_MODULES = ("medals.weights.cli", "medals.cli.info", "medals.cli.serve", "medals.bench", "medals.cli.evaluate",
                   "medals.cli.train", "medals.cli.segment", "medals.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medals", description="Medal S text-prompted 3D medical segmentation")
    parser.add_argument("--version", action="version", version=f"medals {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedalSError as error:
        print(f"medals: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("medals: interrupted", file=sys.stderr)
        return 130


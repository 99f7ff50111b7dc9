"""The `medtrt` command line: one module per command, each with ``add_parser(subparsers)`` and
``run(args) -> int``. Argument parsing and printing live there; the work lives in the library.

Bad arguments and user errors print one line, ``medtrt: error: ...``, and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medtrt.cli import (bench, build, data, debug_layers, export, export_triton, import_, info,
                        predict, preset, train)
from medtrt.cli import eval as eval_
from medtrt.cli._common import Parser
from medtrt.errors import MedtrtError

__all__ = ["build_parser", "main"]

_COMMANDS = (info, data, train, import_, export, build, preset, debug_layers, bench,
             eval_, predict, export_triton)  # in --help order


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medtrt", description="Fast, verified TensorRT deployments of "
                                               "medical-imaging classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, MedtrtError) as exc:
        print(f"medtrt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medtrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

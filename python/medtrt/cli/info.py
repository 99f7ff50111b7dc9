"""`medtrt info`: how medtrt was built and which CUDA devices it sees."""

from __future__ import annotations

import argparse
import json
import platform

import medtrt

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="how medtrt was built and which CUDA devices it "
                                                "sees")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = {"medtrt": medtrt.__version__, "python": platform.python_version()}
    info.update(medtrt.build_info())
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0

"""`medtrt data synth`: write the synthetic MedNIST-like set."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtrt.cli._common import Parser, progress_task
from medtrt.data import synthesize

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND",
                                   parser_class=Parser)
    synth = data_sub.add_parser("synth", help="write the synthetic MedNIST-like set "
                                              "(OUT/<Class>/<n>.jpeg)")
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--per-class", type=int, default=300, help="images per class (300)")
    synth.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (0)")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    synth.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with progress_task("generating", args.quiet) as update:
        result = synthesize(args.out, per_class=args.per_class, seed=args.seed, progress=update)
    total = sum(result.counts.values())
    print(f"wrote {total} images ({args.per_class} per class, seed {args.seed}) to {result.root}")
    return 0

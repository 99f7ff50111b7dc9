"""The `medtrt` command line. Argument parsing lives here; the work lives in the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    import platform

    import medtrt

    info = {"medtrt": medtrt.__version__, "python": platform.python_version()}
    info.update(medtrt.build_info())
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medtrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="how medtrt was built and which CUDA devices it sees")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

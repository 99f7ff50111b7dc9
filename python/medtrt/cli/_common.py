"""Helpers shared by the command modules: the parser class, integer flags, the model preset
flags, tables, progress."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from medtrt.foreign import carried_preset
from medtrt.models.presets import ACTIVATIONS, Preset, preset_from_args

__all__ = ["Parser", "add_preset_arguments", "positive_int", "preset_for", "print_wide",
           "progress_task"]

# The namespace attributes add_preset_arguments sets (medtrt.models.presets.preset_from_args
# reads them).
PRESET_ATTRS = ("preset", "preset_labels", "size", "channels", "mean", "std", "scale", "window",
                "activation", "threshold")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that points to --help (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str, name: str) -> int:
    """``text`` as an integer >= 1; otherwise a ValueError that names the flag ``name``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be 'dynamic' or a positive integer; got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    """``224`` or ``224x256`` (H x W) as (H, W)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 224 or 224x256); got {text!r}")
    return size  # type: ignore[return-value]


def _floats(text: str) -> tuple[float, ...]:
    """``0.5`` or ``0.485,0.456,0.406``."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers; got "
                                         f"{text!r}") from None


def add_preset_arguments(parser: argparse.ArgumentParser, *, labels_flag: bool = True) -> None:
    """The model preset flags, for a model that carries no preset (an ONNX medtrt did not
    export) or to change the one it carries. ``labels_flag=False`` leaves out ``--labels``
    (``medtrt eval`` uses it for its label table); ``--class-labels`` is always there."""
    g = parser.add_argument_group(
        "model preset", "what a model that carries no preset expects and predicts (an ONNX not "
        "exported by medtrt), or changes to the one it carries; see `medtrt preset show`")
    g.add_argument("--preset", metavar="FILE|NAME",
                   help="preset JSON file, or a built-in preset (mednist, chexnet)")
    flags = ("--labels", "--class-labels") if labels_flag else ("--class-labels",)
    g.add_argument(*flags, dest="preset_labels", type=Path, metavar="FILE",
                   help="class labels, one per line, in the order of the model's outputs")
    g.add_argument("--size", type=_size, metavar="N|HxW", help="input size, e.g. 224 or 224x256")
    g.add_argument("--channels", type=int, choices=(1, 3), help="input channels")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="normalisation mean")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="normalisation std")
    g.add_argument("--scale", type=float, help="intensity scale (default 1/255 for 8-bit, "
                                               "1/65535 for 16-bit images)")
    g.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"),
                   help="intensity window (CT), replaces the scale")
    g.add_argument("--activation", choices=ACTIVATIONS,
                   help="softmax (one class per image) or sigmoid (independent labels)")
    g.add_argument("--threshold", type=float, help="sigmoid: report labels above this (0.5)")


def preset_for(model: str | os.PathLike[str], args: argparse.Namespace) -> Preset | None:
    """The preset the flags ask for, starting from what ``model`` carries (``--preset``
    replaces it); None when no preset flag is given (the model's own applies)."""
    if all(getattr(args, a, None) is None for a in PRESET_ATTRS):
        return None
    base = None if args.preset is not None else carried_preset(model).preset
    return preset_from_args(base, args, name=Path(model).name.split(".")[0])


def print_wide(table: Table) -> None:
    """Print a rich table; when stdout is not a terminal (a log, a pipe) use 160 columns
    rather than rich's 80, so long layer/backend names are not cut."""
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)


@contextmanager
def progress_task(description: str, quiet: bool) -> Iterator[Callable[..., None]]:
    """A transient progress display (none when ``quiet``) with one task; yields
    ``update(done, total, description=None)`` for the library's progress callbacks."""
    with Progress(transient=True, disable=quiet) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int, what: str | None = None) -> None:
            progress.update(task, completed=done, total=total, description=what)

        yield update

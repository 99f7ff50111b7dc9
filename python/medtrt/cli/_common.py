"""Helpers shared by the command modules: the parser class, integer flags, tables, progress."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

__all__ = ["Parser", "positive_int", "print_wide", "progress_task"]


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

"""Results of Engine.infer: per-item views plus whole-batch arrays."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtrt.errors import ImageReadError

__all__ = ["Result", "Results"]


@dataclass(frozen=True)
class Result:
    """One input item. ``error`` is set (and the arrays are empty) when it could not be read."""

    index: int
    indices: np.ndarray  # int32 [k], best first
    scores: np.ndarray  # float32 [k]
    labels: tuple[str, ...]
    probs: np.ndarray | None = None  # float32 [C] when asked for
    logits: np.ndarray | None = None
    positives: tuple[str, ...] | None = None  # multi-label presets: labels above the threshold
    error: Exception | None = None
    source: str | None = None  # the file path, for path inputs

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None


class Results(Sequence[Result]):
    """Sequence of Result, and the batch arrays (rows of failed items are NaN / -1)."""

    def __init__(self, items: list[Result], scores: np.ndarray, indices: np.ndarray,
                 probs: np.ndarray | None, logits: np.ndarray | None) -> None:
        self._items = items
        self.scores = scores
        self.indices = indices
        self.probs = probs
        self.logits = logits

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: Any) -> Any:
        return self._items[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._items)

    @property
    def ok(self) -> np.ndarray:
        return np.array([r.ok for r in self._items], dtype=bool)

    @property
    def errors(self) -> list[Result]:
        return [r for r in self._items if not r.ok]

    @property
    def top1(self) -> np.ndarray:
        return self.indices[:, 0]

    def __repr__(self) -> str:
        failed = len(self.errors)
        return f"Results({len(self)} items{f', {failed} failed' if failed else ''})"


def failed(index: int, error: Exception, source: str | None) -> Result:
    return Result(index, np.empty(0, np.int32), np.empty(0, np.float32), (), error=error,
                  source=source)


def is_read_error(exc: Exception) -> bool:
    return isinstance(exc, ImageReadError)

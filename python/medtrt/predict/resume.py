"""``--resume``: whether a run may continue an output, and which inputs it skips.

Rows are written in input order, so over unchanged inputs the output's paths are a prefix of
the inputs: ``SkipDone`` walks the two side by side in constant memory. Where they part (inputs
added, removed or reordered since), it falls back to a multiset of the output's remaining paths
and skips what is in it: no input is written twice, and the new rows follow the old ones.
A walked file that is not an image never had a row; it is recognised (its first bytes read
here) so it does not count as a difference.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from medtrt.artifacts import sha256_file
from medtrt.predict.decode import is_skipped
from medtrt.predict.inputs import InputItem
from medtrt.predict.record import PredictRecord, Session
from medtrt.predict.rows import RowSchema

__all__ = ["SkipDone", "check_compatible"]

log = logging.getLogger(__name__)


def check_compatible(record: PredictRecord, out: Path, fmt: str, schema: RowSchema,
                     model: Path, precision: str, session: Session) -> None:
    """ValueError with the fix unless this run may add rows to the output ``record`` describes:
    the same columns (labels, k, probs, tags), the same model file (sha256) and precision, and
    relative INPUTs taken from the same folder."""
    fix = "resume with the same model and options, or use --overwrite or another --out"
    if record.output_format != fmt or record.columns != schema.columns(fmt):
        was = RowSchema(record.labels, record.k, record.probs, record.multilabel,
                        record.dicom_tags, record.threshold)
        diff = [f"{name} {a!r} (this run: {b!r})" for name, a, b in (
            ("labels", list(was.labels), list(schema.labels)), ("--k", was.k, schema.k),
            ("--probs", was.probs, schema.probs),
            ("DICOM tags", list(was.dicom_tags), list(schema.dicom_tags))) if a != b]
        raise ValueError(f"{out} was written with {', '.join(diff) or 'other columns'}; {fix}")
    sha = sha256_file(model)
    if sha != record.model_sha256:
        raise ValueError(f"{out} was written by {record.model} (sha256 "
                         f"{record.model_sha256[:12]}); {model} is another model (sha256 "
                         f"{sha[:12]}); {fix}")
    if record.precision != precision:
        raise ValueError(f"{out} was written at {record.precision}; this run is {precision}; "
                         f"{fix}")
    last = record.sessions[-1] if record.sessions else None
    relative = [a for a in session.inputs if a != "-" and not os.path.isabs(a)]
    if last is not None and relative and last.cwd != session.cwd:
        raise ValueError(f"{out} was started in {last.cwd} and its relative INPUTs "
                         f"({relative[0]}, ...) name files from there; run --resume from "
                         f"{last.cwd}, or pass absolute paths")


class SkipDone:
    """Drops the inputs already in the output (``resume``), in O(1) memory while the inputs
    follow the output's rows; after the first difference (inputs added, removed or reordered
    since) it holds the output's remaining paths in a multiset and skips what is in it."""

    def __init__(self, done: Iterator[str]) -> None:
        self.done = done
        self.skipped = 0
        self.not_images = 0  # walked non-images met while matching (no row either way)
        self._rest: Counter[str] | None = None

    def __call__(self, items: Iterable[InputItem]) -> Iterator[InputItem]:
        nxt = next(self.done, None)
        for item in items:
            if nxt is None and self._rest is None:
                yield item
                continue
            if self._rest is None:
                if item.path == nxt:
                    self.skipped += 1
                    nxt = next(self.done, None)
                    continue
                if is_skipped(item):  # a walked non-image: never had a row
                    self.not_images += 1
                    continue
                self._rest = Counter([nxt, *self.done])
                log.warning("the inputs differ from the output's rows from %s on; resuming by "
                            "path (the output's remaining %d paths held in memory), new rows "
                            "are appended after the existing ones", item.path,
                            sum(self._rest.values()))
            if self._rest[item.path] > 0:
                self._rest[item.path] -= 1
                self.skipped += 1
            else:
                yield item

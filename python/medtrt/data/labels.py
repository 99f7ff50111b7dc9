"""Per-image label tables for multi-label data (CheXNet-style), read from CSV.

Two layouts are recognised from the header:

- **wide** (CheXpert-like): an image column (``Path``, ``Image``, ``Image Index``, ``File``,
  ``Filename``...; else the first column) and one column per label: ``1`` positive, ``0``
  negative, ``-1`` or empty = uncertain / not annotated, left out of that label's metrics;
- **NIH ChestX-ray14** (``Data_Entry_2017.csv``): ``Image Index`` and ``Finding Labels``, the
  image's labels joined by ``|``; ``No Finding`` means every label negative.

Label names match the model's case-insensitively, with spaces, hyphens and underscores equal
(``Pleural Thickening`` = ``Pleural_Thickening``). Image paths are relative to ``root`` (default:
the table's folder); a bare file name not found there is looked up by name among the images
below ``root`` (NIH ships its images in ``images_001/images/...``). Rows whose image does not
exist are kept in ``missing_files``, not dropped silently.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrt.data.readers import list_images

__all__ = ["LabelTable", "read_label_table"]

_IMAGE_COLUMNS = ("path", "image", "image_index", "image_path", "file", "filename", "file_name")
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}
_UNKNOWN = {"", "-1", "-1.0", "nan", "u", "uncertain"}


@dataclass(frozen=True)
class LabelTable:
    source: Path
    paths: tuple[Path, ...]
    targets: np.ndarray                 # [N, L] float32: 1 positive, 0 negative, NaN unknown
    labels: tuple[str, ...]             # the model's label order
    missing_labels: tuple[str, ...]     # model labels the table does not annotate
    missing_files: tuple[str, ...]      # table rows whose image file does not exist

    def __len__(self) -> int:
        return len(self.paths)


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def read_label_table(path: str | os.PathLike[str], labels: tuple[str, ...], *,
                     root: str | os.PathLike[str] | None = None) -> LabelTable:
    """Read a CSV label table for a model with ``labels`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} does not exist; multi-label evaluation needs "
                                "a CSV with an image column and one column per label (or NIH's "
                                "'Image Index' + 'Finding Labels')")
    root = Path(root) if root is not None else path.parent
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header and at least one row")
    header = [_norm(h) for h in rows[0]]
    want = {_norm(name): j for j, name in enumerate(labels)}
    nih = "finding_labels" in header
    image_col = next((header.index(c) for c in _IMAGE_COLUMNS if c in header), 0)
    if nih:
        finding_col = header.index("finding_labels")
        present = list(labels)
    else:
        columns = {want[h]: i for i, h in enumerate(header) if h in want and i != image_col}
        present = [labels[j] for j in sorted(columns)]
        if not columns:
            raise ValueError(f"{path}: no column names a label of the model; expected some of "
                             f"{list(labels)} (or NIH's 'Finding Labels' column); got {rows[0]}")

    by_name: dict[str, Path] | None = None
    paths: list[Path] = []
    targets: list[np.ndarray] = []
    missing_files: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        name = row[image_col].strip()
        file = root / name
        if not file.is_file():
            if by_name is None:
                by_name = {p.name: p for p in list_images(root, recursive=True)} if root.is_dir() else {}
            found = by_name.get(Path(name).name)
            if found is None:
                missing_files.append(name)
                continue
            file = found
        t = np.full(len(labels), np.nan, np.float32)
        if nih:
            findings = {_norm(x) for x in row[finding_col].split("|") if x.strip()}
            unknown = findings - set(want) - {"no_finding"}
            if unknown:
                raise ValueError(f"{path}:{line}: findings {sorted(unknown)} are not labels of the "
                                 f"model ({list(labels)})")
            t[:] = 0.0
            for x in findings - {"no_finding"}:
                t[want[x]] = 1.0
        else:
            for j, col in columns.items():
                cell = row[col].strip().lower() if col < len(row) else ""
                if cell in _TRUE:
                    t[j] = 1.0
                elif cell in _FALSE:
                    t[j] = 0.0
                elif cell not in _UNKNOWN:
                    raise ValueError(f"{path}:{line}: column {rows[0][col]!r} holds {row[col]!r}; "
                                     "expected 1, 0, -1 or empty")
        paths.append(file)
        targets.append(t)
    if not paths:
        raise ValueError(f"{path}: none of its {len(rows) - 1} rows names an existing image under "
                         f"{root} (first missing: {missing_files[:3]}); pass the image folder as root")
    return LabelTable(path, tuple(paths), np.stack(targets), tuple(labels),
                      tuple(x for x in labels if x not in present), tuple(missing_files))

"""``OUT.meta.json``: the record beside every `medtrt predict` output.

It says which model produced the rows (path, size, sha256, preset, precision), how (one
``Session`` per run or resumed run: backend, device, decode, workers, fallback, counts; for a
run on Ray, ``Session.ray``: the cluster, the actors and what each engine reported) and
what is committed: ``rows`` and ``failed`` so far and, for CSV and JSONL, ``committed_bytes``,
the length of the file up to the last chunk that was fsynced before the record was. A reader
(``medtrt.predict.iter_rows``) or ``--resume`` ignores anything past it (a chunk torn by a kill
during its write). Parquet outputs also carry the record in their schema metadata (key
``medtrt.predictions``). Written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from medtrt.artifacts import _dataclass_from_json, _Record, _to_json
from medtrt.errors import ArtifactError

__all__ = ["EngineReport", "PredictRecord", "RayRun", "Session", "now", "record_path"]


def record_path(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class EngineReport(_Record):
    """What the engines of a Ray run on one node said they were, and how many rows they made
    (rows carry the same in their ``medtrt_*`` columns)."""

    node: str
    backend: str
    device: str
    precision: str
    fallback: str | None = None  # why they do not run where asked (``Engine.fallback``)
    rows: int = 0


@dataclass(frozen=True)
class RayRun(_Record):
    """How a session ran on Ray (``medtrt predict --ray``)."""

    address: str  # as given; "local": a cluster this run started on this machine
    actors: int  # engine actors (one Engine each)
    gpus_per_actor: float
    cpus_per_actor: float
    nodes: int  # alive nodes when the run started
    cluster_cpus: float
    cluster_gpus: float
    engines: tuple[EngineReport, ...] = ()


@dataclass(frozen=True)
class Session(_Record):
    """One run of `medtrt predict` over the output (the first, then each ``--resume``)."""

    started: str
    inputs: tuple[str, ...]  # the INPUT arguments, as given
    cwd: str  # where relative INPUTs were taken from
    backend: str  # Ray: the actors' backends, joined by "+" ("none" before their first rows)
    device: str  # Ray: likewise
    precision: str
    decode: str
    workers: int  # decode worker processes of this process (Ray: 0, Ray's tasks decode)
    batch_size: int
    fallback: str | None = None
    finished: str | None = None  # None: killed, interrupted or failed before the end
    rows_before: int = 0  # rows already in the output when it started
    rows_written: int = 0
    failed: int = 0
    skipped_existing: int = 0  # inputs already in the output (--resume)
    skipped_not_images: int = 0  # walked files that are not images
    images_per_s: float | None = None
    ray: RayRun | None = None  # a run on Ray


@dataclass(frozen=True)
class PredictRecord(_Record):
    """The record of one output (see the module docstring)."""

    FORMAT: ClassVar[str] = "medtrt.predictions"
    SCHEMA_VERSION: ClassVar[int] = 1

    output: str  # the file name, beside this record
    output_format: str  # parquet, csv or jsonl
    columns: tuple[str, ...]
    labels: tuple[str, ...]
    k: int
    probs: bool
    multilabel: bool
    threshold: float | None
    dicom_tags: tuple[str, ...]
    model: str  # as given
    model_bytes: int
    model_sha256: str
    preset: str
    precision: str
    medtrt: str
    sessions: tuple[Session, ...] = ()
    rows: int = 0
    failed: int = 0
    committed_bytes: int | None = None  # CSV and JSONL
    complete: bool = False

    def __post_init__(self) -> None:
        if self.output_format not in ("parquet", "csv", "jsonl"):
            raise ValueError(f"output_format must be parquet, csv or jsonl; got "
                             f"{self.output_format!r}")
        if self.rows < 0 or self.failed < 0 or self.failed > self.rows:
            raise ValueError(f"rows {self.rows} and failed {self.failed} are inconsistent")
        if (self.committed_bytes is None) != (self.output_format == "parquet"):
            raise ValueError("committed_bytes is set for CSV and JSONL outputs only")

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "schema_version": self.SCHEMA_VERSION, **_to_json(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: Any = "record") -> PredictRecord:
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ArtifactError(f"{where} is not a medtrt predictions record (no \"format\": "
                                f"\"{cls.FORMAT}\"); use --overwrite or another --out")
        version = data.get("schema_version")
        if version != cls.SCHEMA_VERSION:
            newer = isinstance(version, int) and version > cls.SCHEMA_VERSION
            raise ArtifactError(f"{where}: schema version {version!r} is "
                                f"{'from a newer medtrt' if newer else 'not one medtrt writes'}"
                                f" (this one reads {cls.SCHEMA_VERSION}); "
                                f"{'upgrade medtrt, or ' if newer else ''}use --overwrite")
        body = {k: v for k, v in data.items() if k not in ("format", "schema_version")}
        try:
            return _dataclass_from_json(cls, body, "record")
        except ValueError as exc:
            raise ArtifactError(f"{where}: {exc}; the file was damaged or edited: use "
                                "--overwrite to start again") from None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PredictRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path} is missing: without its record medtrt cannot tell "
                                "which rows of the output are complete; use --overwrite or "
                                "another --out") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc}): the file was damaged; use "
                                "--overwrite") from None
        return cls.from_dict(data, path)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Atomically: a reader sees the old record or the new one, never half of one."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def replace(self, **changes: Any) -> PredictRecord:
        return dataclasses.replace(self, **changes)

    def with_session(self, session: Session) -> PredictRecord:
        """The record with its last session replaced by ``session``."""
        return self.replace(sessions=(*self.sessions[:-1], session))

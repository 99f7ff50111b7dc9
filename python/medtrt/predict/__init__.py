"""`medtrt predict`: a model over folders, lists or manifests of images, one row per input.

    from medtrt.predict import predict, iter_rows
    summary = predict("model.int8.engine", ["studies/", "more.txt"], "preds.parquet",
                      {"k": 3, "probs": True, "dicom_tags": True})
    for row in iter_rows("preds.parquet"): ...

The parts, each usable on its own (the scale-out paths build on them): ``inputs`` (INPUT
arguments expanded lazily into image paths), ``decode`` (what a decode worker does, and the
ordered, bounded pool), ``rows`` (the row schema and its Parquet / JSONL / CSV encodings),
``writers`` (crash-safe output files, resume, compaction), ``record`` (``OUT.meta.json``: which
model produced the rows and what is committed) and ``run`` (the loop). See docs/predict.md.

Parquet output and manifests need pyarrow (``pip install 'medtrt[parquet]'``); nothing here
imports it, torch or TensorRT until they are used.
"""

from __future__ import annotations

from medtrt.predict.decode import DEFAULT_DICOM_TAGS
from medtrt.predict.inputs import InputItem, iter_items, plan_inputs
from medtrt.predict.record import PredictRecord, Session, record_path
from medtrt.predict.rows import FORMATS, RowSchema
from medtrt.predict.run import (PredictOptions, PredictProgress, PredictSummary, default_workers,
                                predict)
from medtrt.predict.writers import iter_rows, output_format

__all__ = [
    "DEFAULT_DICOM_TAGS",
    "FORMATS",
    "InputItem",
    "PredictOptions",
    "PredictProgress",
    "PredictRecord",
    "PredictSummary",
    "RowSchema",
    "Session",
    "default_workers",
    "iter_items",
    "iter_rows",
    "output_format",
    "plan_inputs",
    "predict",
    "record_path",
]

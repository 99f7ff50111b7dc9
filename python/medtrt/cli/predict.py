"""`medtrt predict`: one row per input image (Parquet, CSV or JSONL), crash-safe, resumable."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from medtrt.cli._common import add_preset_arguments, preset_for
from medtrt.predict import PredictOptions, PredictProgress, PredictSummary, predict
from medtrt.ray import predict_files  # Ray itself is imported when --ray is used

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="run a model over files, folders, lists or manifests of images and "
                        "write one row per input (Parquet, CSV or JSONL)",
        description="Runs MODEL over every INPUT image and writes one row per input, in input "
                    "order: path, ok, error, top-k labels and scores (and with the options: "
                    "probabilities, DICOM tags). A file that cannot be read is a row with its "
                    "error; the run goes on. Rows are written in chunks as they come; a killed "
                    "run leaves the finished rows readable, and --resume continues it. With "
                    "--ray the rows are computed on a Ray cluster (one engine per actor) and "
                    "written here as locally. See docs/predict.md.")
    p.add_argument("model", type=Path, help="engine bundle, ONNX file (any ONNX classifier with "
                                            "--preset) or checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (JPEG, PNG, DICOM, told apart by content), folders (walked "
                        "recursively, in name order), text files listing paths (one per line; "
                        "relative to the list's folder), CSV/TSV/Parquet manifests with a path "
                        "column, or - for a list on standard input")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="output file: .parquet, .csv or .jsonl (OUT.meta.json is written beside "
                        "it: model, backend, precision, what is committed)")
    p.add_argument("--k", type=int, default=None, help="top-k labels and scores per row "
                                                       "(default 3, or the number of labels)")
    p.add_argument("--probs", action="store_true", help="also one prob_<label> column per label")
    p.add_argument("--dicom-tags", action="store_true",
                   help="DICOM rows: also SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID "
                        "and PatientID (a column each; empty for other files)")
    p.add_argument("--dicom-tag", action="append", metavar="KEYWORD", dest="dicom_tag",
                   help="a DICOM keyword to write as a column, instead of the --dicom-tags set "
                        "(repeat for several; e.g. --dicom-tag SOPInstanceUID --dicom-tag "
                        "AccessionNumber)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per model call (64; with --ray the bundle profile's opt batch, "
                        "else 64)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode worker processes (default: the cores left over: all but one on "
                        "a GPU backend, none on the CPU; 0 decodes in a thread of this process)")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT: skip the inputs already in it, append the rest")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--device", default=None,
                   help="GPU index, or cpu (default 0; a model that cannot run there falls back, "
                        "as recorded). With --ray: cpu, or 0/cuda to require a GPU per actor "
                        "(default: GPUs where the cluster has them)")
    p.add_argument("--backend",
                   choices=("auto", "tensorrt", "torch", "onnxruntime", "openvino"),
                   default="auto")
    p.add_argument("--decode", choices=("cpu", "nvjpeg", "auto"), default="cpu",
                   help="cpu: the decode workers decode every file; nvjpeg/auto: JPEGs are "
                        "decoded on the GPU by the engine (GPU backends)")
    p.add_argument("--path-column", default="path", help="manifests: the column of image paths "
                                                         "(path)")
    p.add_argument("--chunk-rows", type=int, default=2048,
                   help="rows per written chunk (a chunk is also written every 10 s)")
    ray = p.add_argument_group("scale-out on Ray (pip install 'medtrt[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="compute the rows on a Ray cluster: one engine per actor, decoding in "
                          "Ray tasks; the rows, OUT and --resume are as without it. ADDRESS: "
                          "auto, HOST:6379 or ray://HOST:10001 (a running cluster); without "
                          "one, a local cluster with this machine's cores")
    ray.add_argument("--actors", type=int, default=None,
                     help="engine actors (default: one per GPU of the cluster, or one per node "
                          "without GPUs)")
    ray.add_argument("--gpus-per-actor", type=float, default=None,
                     help="GPUs per actor (default 1 where the cluster has GPUs, else 0; 0.5 "
                          "puts two actors on a GPU)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_preset_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tags: bool | tuple[str, ...] = tuple(args.dicom_tag) if args.dicom_tag else args.dicom_tags
    if args.ray is None and (args.actors is not None or args.gpus_per_actor is not None):
        raise ValueError("--actors and --gpus-per-actor apply to a run on Ray: add --ray "
                         "[ADDRESS]")
    opts = PredictOptions(k=args.k, probs=args.probs, batch_size=args.batch_size,
                          workers=args.workers, resume=args.resume, overwrite=args.overwrite,
                          device=args.device, backend=args.backend, decode=args.decode,
                          dicom_tags=tags, path_column=args.path_column,
                          chunk_rows=args.chunk_rows,
                          preset=preset_for(args.model, args) if args.model.exists() else None)
    try:
        with _progress(args.quiet) as update:
            if args.ray is None:
                summary = predict(args.model, args.inputs, args.out, opts, progress=update)
            else:
                _quiet_ray_data()
                summary = predict_files(args.model, args.inputs, args.out, opts,
                                        address=args.ray, actors=args.actors,
                                        gpus_per_actor=args.gpus_per_actor, progress=update)
    except KeyboardInterrupt:
        print(f"medtrt: interrupted; the rows finished so far are in {args.out} "
              "(run the same command with --resume to go on)", file=sys.stderr)
        return 130
    print(_final_line(summary))
    return 0


def _quiet_ray_data() -> None:
    """Ray Data's own progress lines stay out of this command's output (it shows its own); its
    warnings (an actor restarted, ...) still show."""
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[PredictProgress], None]]:
    """A live line (rich) with images, images/s and errors so far; none when ``quiet`` or when
    stderr is not a terminal."""
    console = Console(stderr=True)
    disable = quiet or not console.is_terminal
    columns = (SpinnerColumn(), TextColumn("predicting"), TextColumn("{task.completed} images"),
               TextColumn("{task.fields[rate]:.1f} images/s"),
               TextColumn("{task.fields[errors]} failed"),
               TextColumn("{task.fields[skipped]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=disable) as bar:
        task = bar.add_task("predict", total=None, rate=0.0, errors=0, skipped="")

        def update(p: PredictProgress) -> None:
            skipped = f"{p.skipped_existing} already done" if p.skipped_existing else ""
            bar.update(task, completed=p.rows, rate=p.images_per_s, errors=p.failed,
                       skipped=skipped)

        yield update


def _final_line(s: PredictSummary) -> str:
    extra = []
    if s.skipped_existing:
        extra.append(f"{_n(s.skipped_existing, 'input')} already there skipped")
    if s.skipped_not_images:
        extra.append(f"{_n(s.skipped_not_images, 'file')} that {'is' if s.skipped_not_images == 1 else 'are'} "
                     "not an image skipped")
    on_ray = s.record.sessions[-1].ray
    where = (f" (Ray, {_n(on_ray.actors, 'actor')} on {_n(on_ray.nodes, 'node')})"
             if on_ray else "")
    return (f"wrote {_n(s.rows_written, 'row')} to {s.out} ({s.rows} in all): "
            f"{s.rows_written - s.failed} predicted, {s.failed} failed"
            + (f"; {'; '.join(extra)}" if extra else "")
            + f"; {s.images_per_s:.1f} images/s, {s.backend} {s.precision} on {s.device}{where}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"

"""`medtrt export-triton`: a Triton Inference Server model repository from an engine bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtrt.triton import PLATFORMS, ExportOptions, export_triton

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-triton", help="write a Triton Inference Server model repository for an engine "
                              "bundle (network, pre/post-processing, their ensemble)",
        description="Writes REPO/NAME (the network), NAME_preprocess and NAME_postprocess "
                    "(Python backend: encoded images -> network input; logits -> labels), "
                    "NAME_pipeline (their ensemble: IMAGE bytes in, LABELS/SCORES/INDICES/PROBS "
                    "out), NAME_engine (one Python model running medtrt.Engine) and README.md "
                    "(the TensorRT the plan needs and the Triton release that ships it). See "
                    "docs/serving.md.")
    p.add_argument("bundle", type=Path, help="engine bundle (NAME.engine or NAME.engine.json)")
    p.add_argument("--out", type=Path, required=True, help="model repository folder (REPO)")
    p.add_argument("--name", help="the network's model name (default: the preset's name)")
    p.add_argument("--platform", choices=PLATFORMS, default="tensorrt",
                   help="how the network is served: tensorrt (model.plan, GPU; default), "
                        "onnxruntime (the precision ONNX, CPU) or python (the bundle through "
                        "medtrt: TensorRT on a GPU instance that can run it, else ONNX Runtime)")
    p.add_argument("--instances", default="1",
                   help="instances of each model (per GPU for GPU instances; 1)")
    p.add_argument("--max-queue-delay-us", default="100",
                   help="dynamic batcher: microseconds to wait to fill a batch (100)")
    p.add_argument("--kind", choices=("gpu", "cpu"),
                   help="GPU or CPU instances (default: gpu for tensorrt, cpu otherwise)")
    p.add_argument("--k", help="labels per image in the results (default min(5, classes))")
    p.add_argument("--no-engine-model", dest="engine_model", action="store_false",
                   help="do not write NAME_engine")
    p.add_argument("--allow-tensorrt-rtx", action="store_true",
                   help="write a tensorrt repository for a TensorRT-RTX bundle anyway (its plan "
                        "does not load in Triton; for the layout and configs)")
    p.add_argument("--overwrite", action="store_true", help="replace this export's model "
                                                            "folders in REPO")
    p.set_defaults(func=run)


def _integer(text: str, flag: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{flag} must be an integer >= {minimum}; got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    options = ExportOptions(
        name=args.name, platform=args.platform, kind=args.kind,
        instances=_integer(args.instances, "--instances", 1),
        max_queue_delay_us=_integer(args.max_queue_delay_us, "--max-queue-delay-us", 0),
        k=None if args.k is None else _integer(args.k, "--k", 1),
        engine_model=args.engine_model, allow_tensorrt_rtx=args.allow_tensorrt_rtx,
        overwrite=args.overwrite)
    result = export_triton(args.bundle, args.out, options)
    # result.warnings were logged (WARNING: shown) and are in REPO/README.md
    print(f"wrote {result.repository}: {', '.join(result.models)} "
          f"(network: {result.platform}, {result.kind.upper()} instances)")
    print(f"clients call {result.pipeline}; how to serve it: {result.readme}")
    return 0

"""`medtrt train`: train a preset's model on a MedNIST-layout folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtrt.train import TrainConfig, train

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a preset's model on a MedNIST-layout "
                                                 "folder")
    parser.add_argument("--data", required=True, type=Path, help="ROOT/<ClassName>/*.jpeg")
    parser.add_argument("--preset", default="mednist", help="model preset (mednist)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the weights")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--reproducible", action="store_true",
                        help="the same weights on every x86-64 CPU with AVX2 (CPU only; pinned "
                             "kernels and 2 threads in a child process; about 3x slower)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint path (model.pt)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, device=args.device,
                         augment=not args.no_augment, reproducible=args.reproducible)
    result = train(args.data, args.out, config, progress=not args.quiet)
    for h in result.history:
        print(f"epoch {h['epoch']}: train loss {h['train_loss']:.4f}  val loss "
              f"{h['val_loss']:.4f}  val accuracy {h['val_accuracy']:.4f}  ({h['seconds']:.0f} s)")
    print(f"held-out test accuracy {result.test_accuracy:.4f}; {result.seconds:.0f} s")
    if result.skipped_files:
        print(f"skipped {len(result.skipped_files)} unreadable files (listed in {result.metrics})")
    print(f"wrote {result.checkpoint} and {result.metrics}")
    return 0

"""Command-line flags shared by `leapalign eval` and `leapalign generate`: which model to sample and how."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights / --model and the sampling options shared by `eval` and `generate`."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="DIR", help="a run directory, its final/ or a checkpoints/step_* directory")
    src.add_argument("--model", metavar="ADAPTER", help="a base model instead: flux, sd3, shapes or pkg.mod:Class")
    parser.add_argument("--model-path", help="with --model: hub id or local directory (default: the adapter's)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw trained weights, not their EMA")
    parser.add_argument("--seed", type=int, default=0, help="image i uses noise seed (seed, i) (default 0)")
    parser.add_argument("--steps", type=int, help="Euler sampling steps (default: the run's eval.num_steps, or 25)")
    parser.add_argument("--height", type=int, help="pixels (default: the run's model.height, or 32)")
    parser.add_argument("--width", type=int, help="pixels (default: the run's model.width, or 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per sampling batch (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def load_model(args: argparse.Namespace):
    """(adapter, the run's TrainConfig or None for a base model), with args.steps/height/width filled in."""
    from leapalign.models import load_trained

    if args.weights:
        adapter, cfg = load_trained(args.weights, ema=not args.no_ema, device=args.device)
    else:
        from leapalign.adapters import load_adapter

        adapter, cfg = load_adapter(args.model, args.model_path, device=args.device), None
    args.steps = args.steps or (cfg.eval.num_steps if cfg else 25)
    args.height = args.height or (cfg.model.height if cfg else 32)
    args.width = args.width or (cfg.model.width if cfg else 32)
    if min(args.steps, args.height, args.width, args.batch_size) < 1:
        raise ValueError("--steps, --height, --width and --batch-size must be >= 1")
    return adapter, cfg

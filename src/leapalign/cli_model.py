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
    parser.add_argument("--rollout-path", default="auto",
                        choices=("auto", "plain", "merged", "compiled", "merged_compiled"),
                        help="no-grad sampling path (auto: a LoRA merged into weight copies where exact; "
                             "compiled: torch.compile, opt-in)")


def load_model(args: argparse.Namespace):
    """(adapter, the run's TrainConfig or None for a base model), with args.steps/height/width filled in."""
    import torch

    from leapalign.models import load_trained

    given = {"--steps": args.steps, "--height": args.height, "--width": args.width, "--batch-size": args.batch_size}
    for flag, value in given.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.weights:
        adapter, cfg = load_trained(args.weights, ema=not args.no_ema, device=args.device)
    else:
        from leapalign.adapters import load_adapter

        adapter, cfg = load_adapter(args.model, args.model_path, device=args.device), None
    # `is None`, not `or`: an explicit 0 is an error above, never silently the run's value.
    if args.steps is None:
        args.steps = cfg.eval.num_steps if cfg else 25
    if args.height is None:
        args.height = cfg.model.height if cfg else 32
    if args.width is None:
        args.width = cfg.model.width if cfg else 32
    return adapter, cfg

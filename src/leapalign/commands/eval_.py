"""`leapalign eval`: reward(s) and, on ShapesWorld prompts, GenEval-like scores with fixed seeds; an image grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "evaluate a trained run (or a base model) on a prompt file with fixed seeds: rewards, GenEval-like scores, grid"


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
    from leapalign.evaluate import load_trained

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompts", help="prompt file (.txt/.jsonl) or shapes:eval (default: the run's eval.prompts)")
    parser.add_argument("--num-prompts", type=int, default=0, help="evenly spread subset of N prompts (0 = all)")
    parser.add_argument("--reward", action="append", metavar="NAME",
                        help="reward(s) to report; repeatable (default: the run's reward, or shapes)")
    parser.add_argument("--no-geneval", action="store_true", help="skip the GenEval-like evaluator")
    parser.add_argument("--out", default=None, help="write eval.json and grid.png here (default: print only)")


def run(args: argparse.Namespace) -> int:
    from leapalign.data import load_prompts, spread
    from leapalign.evaluate import sample_images, save_grid, score_images
    from leapalign.rewards import load_reward

    if args.num_prompts < 0:
        raise ValueError(f"--num-prompts must be >= 0, got {args.num_prompts}")
    adapter, cfg = load_model(args)
    spec = args.prompts or (cfg.eval.prompts if cfg and cfg.eval.prompts else "shapes:eval")
    prompts = spread(load_prompts(spec), args.num_prompts)
    names = args.reward or [cfg.reward.name if cfg else "shapes"]
    rewards = {name: load_reward(name, device=args.device) for name in names}
    samples = sample_images(adapter, prompts, seed=args.seed, num_steps=args.steps, height=args.height,
                            width=args.width, batch_size=args.batch_size)
    metrics: dict[str, float] = {}
    for i, (name, reward) in enumerate(rewards.items()):
        scores = score_images(samples.images, prompts, reward, geneval=i == 0 and not args.no_geneval,
                              batch_size=args.batch_size, device=args.device)
        metrics.update({(k.replace("reward", name, 1) if k.startswith("reward") else k): v for k, v in scores.items()})
    report = {"prompts": spec, "num_prompts": len(prompts), "seed": args.seed, "steps": args.steps,
              "weights": args.weights or f"base:{args.model}", "metrics": metrics}
    for key, value in sorted(metrics.items()):
        print(f"{key:28s} {value:.4f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=1))
        save_grid(samples.images, out / "grid.png")
        print(f"wrote {out / 'eval.json'} and {out / 'grid.png'}")
    return 0

"""`leapalign eval`: reward(s) and, on ShapesWorld prompts, GenEval-like scores with fixed seeds; an image grid."""

from __future__ import annotations

import argparse
import json

from leapalign.cli_model import add_model_arguments, load_model

HELP = "evaluate a trained run (or a base model) on a prompt file with fixed seeds: rewards, GenEval-like scores, grid"


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
    from leapalign.outputs import prepare_output_dir
    from leapalign.rewards import load_reward

    if args.num_prompts < 0:
        raise ValueError(f"--num-prompts must be >= 0, got {args.num_prompts}")
    out = prepare_output_dir(args.out, "--out") if args.out else None
    adapter, cfg = load_model(args)
    spec = args.prompts or (cfg.eval.prompts if cfg and cfg.eval.prompts else "shapes:eval")
    prompts = spread(load_prompts(spec), args.num_prompts)
    names = args.reward or [cfg.reward.name if cfg else "shapes"]
    rewards = {name: load_reward(name, device=args.device) for name in names}
    samples = sample_images(adapter, prompts, seed=args.seed, num_steps=args.steps, height=args.height,
                            width=args.width, batch_size=args.batch_size, rollout=args.rollout_path)
    metrics: dict[str, float] = {}
    for i, (name, reward) in enumerate(rewards.items()):
        scores = score_images(samples.images, prompts, reward, geneval=i == 0 and not args.no_geneval,
                              batch_size=args.batch_size, device=args.device)
        metrics.update({(k.replace("reward", name, 1) if k.startswith("reward") else k): v for k, v in scores.items()})
    report = {"prompts": spec, "num_prompts": len(prompts), "seed": args.seed, "steps": args.steps,
              "weights": args.weights or f"base:{args.model}", "metrics": metrics}
    for key, value in sorted(metrics.items()):
        print(f"{key:28s} {value:.4f}")
    if out is not None:
        (out / "eval.json").write_text(json.dumps(report, indent=1))
        save_grid(samples.images, out / "grid.png")
        print(f"wrote {out / 'eval.json'} and {out / 'grid.png'}")
    return 0

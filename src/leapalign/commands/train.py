"""`leapalign train --config FILE [key=value ...]`: one training run (use `accelerate launch` for many GPUs)."""

from __future__ import annotations

import argparse
import sys

HELP = "fine-tune a flow model on a reward with LeapAlign or a baseline, from a YAML config and key=value overrides"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (see configs/); defaults apply where omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides parsed as YAML, e.g. optim.lr=5e-6 method.args.alpha=0.1 resume=none")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--list-keys", action="store_true",
                        help="list every config key with default and help, the chosen method's method.args.* "
                             "included, and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still logged)")


def run(args: argparse.Namespace) -> int:
    from leapalign.config import config_yaml, describe_train, load_config

    cfg = load_config(args.config, args.overrides)
    if args.list_keys:
        print("\n".join(describe_train(cfg)))
        return 0
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    from leapalign.trainer import TrainingAborted, train

    try:
        result = train(cfg, progress=not args.no_progress)
    except TrainingAborted as err:
        print(f"leapalign train: {err}", file=sys.stderr)
        return 1
    if result.history or result.eval_metrics:
        last = next((r for r in reversed(result.history) if "reward" in r), {})
        # float(): metrics.jsonl stores a non-finite value as the string 'nan'/'inf' (JSON has no NaN)
        print(f"done in {result.wall_seconds:.1f} s: final reward {float(last.get('reward', 'nan')):.4f}, "
              f"{result.skipped_steps} skipped steps")
        if result.eval_metrics:
            print("evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.eval_metrics.items())))
        print(f"weights: {result.weights}" + (f" (EMA: {result.ema_weights})" if result.ema_weights else ""))
    return 0

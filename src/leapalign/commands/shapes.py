"""`leapalign shapes ...`: pretrain ShapesWorld's flow model, train its reward model and scene parser, evaluate
a flow model."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch

HELP = ("ShapesWorld: pretrain the base flow model (pretrain), train the reward model (reward) or the composition "
        "reward's scene parser (parser), evaluate (eval)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shapes_command", metavar="ACTION", required=True)
    p = sub.add_parser("pretrain", help="pretrain the base flow model on rendered scenes")
    p.add_argument("--out", default="runs/shapes/flow", help="checkpoint path (writes .safetensors and .json)")
    _loop_arguments(p, "flow", "e.g. steps=6600 batch_size=512 lr=5e-4 model.dim=192 workers=4 device=cuda")
    r = sub.add_parser("reward", help="train the contrastive reward model with hard negatives")
    r.add_argument("--out", default="runs/shapes/reward", help="checkpoint path (writes .safetensors and .json)")
    _loop_arguments(r, "reward", "e.g. steps=2600 robust_weight=1 adversarial_train=0.1 device=cuda")
    q = sub.add_parser("parser", help="train the scene parser of the composition reward (shapes-compose)")
    q.add_argument("--out", default="runs/shapes/compose", help="checkpoint path (writes .safetensors and .json)")
    _loop_arguments(q, "parser", "e.g. steps=1000 adversarial_eps=0.12 device=cuda")
    e = sub.add_parser("eval", help="GenEval-like scores and reward of a flow model on the held-out captions")
    e.add_argument("--model", default=None, help="flow checkpoint (default: the shipped base model)")
    e.add_argument("--reward-model", default=None, help="reward checkpoint (default: the shipped one)")
    e.add_argument("--seeds", type=int, default=4, help="noise seeds per caption (0 .. seeds-1)")
    e.add_argument("--steps", type=int, default=20, help="Euler sampling steps")
    e.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    e.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    e.add_argument("--json", default=None, help="also write the scores to this JSON file")


def _loop_arguments(parser: argparse.ArgumentParser, kind: str, example: str) -> None:
    parser.add_argument("--init", default=None, help=f"continue from this {kind} checkpoint (a next training stage; "
                                                     f"its network shape replaces model.*)")
    parser.add_argument("--list-keys", action="store_true", help="list every setting with default and help, exit")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                        help=f"training settings, parsed as `leapalign train` overrides; {example}")


def _loop_config(args: argparse.Namespace, cls: type, base: dict):
    """The loop's config from KEY=VALUE settings (None after printing the keys for --list-keys)."""
    from leapalign.config import describe, parse_overrides

    if args.list_keys:
        print("\n".join(describe(cls)))
        return None
    return parse_overrides(cls, args.settings, base)


def _progress(start: float):
    def report(step: int, metrics: dict[str, float]) -> None:
        vals = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"step {step:6d}  {vals}  ({time.time() - start:.0f}s)", flush=True)
    return report


def _provenance(cfg, start: float) -> dict:
    return {"command": "leapalign " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "seed": cfg.seed,
            "device": cfg.device, "torch": torch.__version__, "wall_seconds": round(time.time() - start, 1)}


def _continue_from(args: argparse.Namespace, cfg, kind: str):
    """--init: (the loaded model, whose network shape cfg.model takes, and its provenance for `earlier_stages`);
    (None, []) for a fresh model."""
    from leapalign.shapes.checkpoint import load_flow_model, load_parser, load_reward_model, model_info

    if not args.init:
        return None, []
    init = {"flow": load_flow_model, "reward": load_reward_model, "parser": load_parser}[kind](args.init, cfg.device)
    cfg.model = init.cfg
    return init, [model_info(args.init, kind)]


def _pretrain(args: argparse.Namespace) -> int:
    from leapalign.shapes.checkpoint import save_model
    from leapalign.shapes.pretrain import FlowPretrainConfig, pretrain_flow

    cfg = _loop_config(args, FlowPretrainConfig, {"save_every": 500})
    if cfg is None:
        return 0
    init, history = _continue_from(args, cfg, "flow")
    start = time.time()

    def snapshot(step: int, model: torch.nn.Module) -> None:  # a long run killed midway still leaves a model
        save_model(model, args.out, {**_provenance(cfg, start), "mix": list(cfg.mix), "steps": step,
                                     "earlier_stages": history})

    model = pretrain_flow(cfg, _progress(start), snapshot, init)
    snapshot(cfg.steps, model)
    print(f"saved {args.out}.safetensors")
    return 0


def _train_and_save(args: argparse.Namespace, cls: type, kind: str, train, measure) -> int:
    """Train a reward or parser model from KEY=VALUE settings (--init continues one), save snapshots while training
    and the final model with `measure(model, cfg)`'s held-out figures in its JSON sidecar."""
    from leapalign.shapes.checkpoint import save_model

    cfg = _loop_config(args, cls, {})
    if cfg is None:
        return 0
    init, history = _continue_from(args, cfg, kind)
    start = time.time()
    model = train(cfg, _progress(start), lambda step, m: save_model(
        m, args.out, {**_provenance(cfg, start), "steps": step, "earlier_stages": history}), init)
    info = _provenance(cfg, start)
    figures = measure(model, cfg)
    save_model(model, args.out, {**info, **figures, "steps": cfg.steps, "earlier_stages": history})
    print(f"saved {args.out}.safetensors  (" + ", ".join(f"{k} {v}" for k, v in figures.items()) + ")")
    return 0


def _reward(args: argparse.Namespace) -> int:
    from leapalign.shapes.reward_train import RewardTrainConfig, reward_accuracy, reward_hackability, train_reward

    def measure(model, cfg) -> dict:
        return {"hard_negative_accuracy": round(reward_accuracy(model, device=cfg.device), 4),
                "hackability": {k: round(v, 4) for k, v in reward_hackability(model, device=cfg.device).items()}}

    return _train_and_save(args, RewardTrainConfig, "reward", train_reward, measure)


def _parser(args: argparse.Namespace) -> int:
    from leapalign.shapes.parser_eval import compose_accuracy, compose_hackability
    from leapalign.shapes.parser_train import ParserTrainConfig, train_parser

    def measure(model, cfg) -> dict:
        model.cpu()  # the measurements run on the CPU
        return {"accuracy": {k: {m: round(v, 4) for m, v in d.items()} for k, d in compose_accuracy(model).items()},
                "hackability": {k: round(v, 4) for k, v in compose_hackability(model).items()}}

    return _train_and_save(args, ParserTrainConfig, "parser", train_parser, measure)


def _eval(args: argparse.Namespace) -> int:
    from leapalign.adapters.shapes import ShapesAdapter
    from leapalign.rewards.shapes import ShapesReward
    from leapalign.shapes.evaluator import evaluate, geneval_scores
    from leapalign.shapes.prompts import heldout_prompts

    if args.seeds < 1 or args.steps < 1:
        raise ValueError("--seeds and --steps must be >= 1")
    adapter = ShapesAdapter.from_pretrained(args.model, device=args.device, guidance_scale=args.guidance)
    reward = ShapesReward.from_pretrained(args.reward_model, device=args.device)
    prompts = heldout_prompts()
    rows, rewards = [], []
    for seed in range(args.seeds):
        noise = adapter.noise(len(prompts), torch.Generator().manual_seed(seed))
        with torch.no_grad():
            images = adapter.generate(prompts, args.steps, noise)
            rewards.append(float(reward(images, prompts).mean()))
        rows.append(geneval_scores(prompts, evaluate(images, prompts)))
    keys = list(rows[0])
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    std = {k: (sum((r[k] - mean[k]) ** 2 for r in rows) / max(1, len(rows) - 1)) ** 0.5 for k in keys}
    out = {"mean": mean, "std": std, "reward": sum(rewards) / len(rewards), "seeds": args.seeds,
           "steps": args.steps, "guidance": args.guidance, "prompts": len(prompts)}
    for k in keys:
        print(f"{k:14s} {mean[k]:.3f} +- {std[k]:.3f}")
    print(f"{'reward':14s} {out['reward']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def run(args: argparse.Namespace) -> int:
    return {"pretrain": _pretrain, "reward": _reward, "parser": _parser, "eval": _eval}[args.shapes_command](args)

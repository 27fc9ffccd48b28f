"""The ShapesWorld demo: align the shipped base model with LeapAlign and the baselines at equal budget,
evaluate everything on held-out captions with fixed noise, and write report.json / report.md.

Every method trains from the same base with the same iterations, batch, rollout steps, learning rate and
training seed; base and fine-tuned models are sampled from the same noise (evaluation seed = training seed),
so the layout-change rate compares like with like. Settings are a dataclass so they are visible and
configurable from `leapalign demo key=value`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from leapalign.methods import get_method
from leapalign.types import option


@dataclass
class DemoConfig:
    methods: list = option(["leapalign", "refl", "draft_lv", "drtune"], "compared methods")
    seeds: list = option([0, 1, 2], "training seed = evaluation noise seed, per run")
    iterations: int = option(80, "optimizer steps per method and seed (equal budget)")
    batch_size: int = option(8, "prompts per iteration")
    num_steps: int = option(10, "Euler steps T of every training rollout (equal for all methods)")
    eval_steps: int = option(10, "Euler steps for evaluation sampling")
    guidance: float = option(3.0, "classifier-free guidance of every rollout, training and evaluation (1 = none)")
    eval_per_category: int = option(8, "held-out captions per GenEval category (at most; 6 categories)")
    eval_repeats: int = option(4, "noise samples per held-out caption (the held-out split has few captions)")
    lr: float = option(1e-5, "AdamW learning rate (3e-5 and up: the reward is hacked with patch noise)")
    alpha: float = option(0.3, "LeapAlign's nested-term discount")
    ema_decay: float = option(0.0, "EMA of the weights used for evaluation (0 = final weights)")
    grid_prompts: int = option(12, "captions shown in the same-noise sample grids")

    def __post_init__(self) -> None:
        for name in self.methods:
            get_method(name)
        if not self.seeds:
            raise ValueError("demo needs at least one seed")
        for key in ("iterations", "batch_size", "num_steps", "eval_steps", "eval_per_category", "eval_repeats",
                    "grid_prompts"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.num_steps < 2:
            raise ValueError("num_steps must be >= 2 (a leap pair needs two steps before the sample)")
        if self.guidance < 1:
            raise ValueError(f"guidance must be >= 1 (1 disables it), got {self.guidance}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


QUICK = {"seeds": [0, 1, 2], "iterations": 8, "eval_per_category": 4, "eval_repeats": 2, "num_steps": 8,
         "eval_steps": 8, "grid_prompts": 6}


def train_config(cfg: DemoConfig, method: str, seed: int, out: Path):
    """The TrainConfig of one demo run: the ShapesWorld preset with the demo's budget."""
    from leapalign.config import from_dict

    args = {"alpha": cfg.alpha} if method == "leapalign" else {}
    return from_dict({
        "output_dir": str(out / "runs" / f"{method}_seed{seed}"), "iterations": cfg.iterations,
        "batch_size": cfg.batch_size, "seed": seed, "ema_decay": cfg.ema_decay, "save_every": 0,
        "keep_checkpoints": 1, "resume": "none", "logger": "none",
        "model": {"adapter": "shapes", "height": 32, "width": 32, "num_steps": cfg.num_steps,
                  "guidance_scale": cfg.guidance},
        "reward": {"name": "shapes"},
        "method": {"name": method, "args": args},
        "optim": {"lr": cfg.lr, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "data": {"prompts": "shapes:train"},
        "eval": {"prompts": None},
    })


def _log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)


def _summary(runs: list[dict]) -> dict:
    """Mean over seeds of every metric, with the sample std over seeds under 'std'."""
    keys = runs[0].keys()
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    std = {k: statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0 for k in keys}
    return {**mean, "std": std, "per_seed": runs}


def run_demo(cfg: DemoConfig, out: str | Path) -> dict:
    """Train every method for every seed, evaluate, write out/report.json, report.md, plots and grids."""
    from leapalign.adapters import load_adapter
    from leapalign.demo.report import write_report
    from leapalign.evaluate import evaluate_adapter
    from leapalign.models import load_trained
    from leapalign.rewards import load_reward
    from leapalign.shapes.evaluator import layout_changed
    from leapalign.shapes.prompts import heldout_prompts
    from leapalign.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    captions = heldout_prompts(cfg.eval_per_category)
    prompts = captions * cfg.eval_repeats  # sample i has its own noise, so repeats are distinct samples
    reward = load_reward("shapes")
    sample = dict(num_steps=cfg.eval_steps, height=32, width=32, batch_size=64)

    def scores(report) -> dict:
        m = report.metrics
        return {"reward": m["reward_mean"], **{k.removeprefix("geneval_"): v for k, v in m.items()
                                                if k.startswith("geneval_")}}

    base = load_adapter("shapes", None, guidance_scale=cfg.guidance)
    base_runs, base_images = [], {}
    for seed in cfg.seeds:
        rep = evaluate_adapter(base, reward, prompts, seed=seed, **sample)
        base_runs.append(scores(rep))
        base_images[seed] = rep.images
    _log(f"base model: reward {statistics.fmean(r['reward'] for r in base_runs):.3f}, GenEval-like overall "
         f"{statistics.fmean(r['overall'] for r in base_runs):.3f} on {len(captions)} held-out captions x "
         f"{cfg.eval_repeats} samples", start)

    results, curves, grids = {"base": _summary(base_runs)}, {}, {"base": base_images[cfg.seeds[0]]}
    for method in cfg.methods:
        runs, histories = [], []
        for seed in cfg.seeds:
            t0 = time.perf_counter()
            res = train(train_config(cfg, method, seed, out), progress=False)
            adapter, _ = load_trained(res.output_dir / "final", ema=cfg.ema_decay > 0)
            rep = evaluate_adapter(adapter, reward, prompts, seed=seed, **sample)
            run = scores(rep)
            run["layout_change_rate"] = float(layout_changed(base_images[seed], rep.images).float().mean())
            run["train_seconds"] = res.wall_seconds
            runs.append(run)
            histories.append([h["reward"] for h in res.history if "reward" in h])
            if seed == cfg.seeds[0]:
                grids[method] = rep.images
            _log(f"{method:>9} seed {seed}: reward {run['reward']:.3f}, overall {run['overall']:.3f}, "
                 f"position {run.get('position', float('nan')):.3f}, layout changed "
                 f"{run['layout_change_rate']:.0%} ({time.perf_counter() - t0:.0f}s)", start)
        results[method] = _summary(runs)
        curves[method] = histories

    report = {
        "methods": results,
        "seeds": list(cfg.seeds),
        "iterations": cfg.iterations,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "eval_captions": len(captions),
        "eval_samples": len(prompts),
        "settings": asdict(cfg),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    picks = [i * len(captions) // cfg.grid_prompts for i in range(min(cfg.grid_prompts, len(captions)))]
    write_report(report, curves, {k: v[picks] for k, v in grids.items()}, [prompts[i] for i in picks], out)
    _log(f"wrote {out / 'report.json'} and {out / 'report.md'}", start)
    return report

"""`leapalign demo world=modes`: every method on the mode world under one protocol, reported three ways.

(a) Shared budget (the paper's protocol): every row trains at the same lr for the same iterations, batch and
    rollout steps, `seeds` seeds; curves of target-mode rate, off-manifold rate and reward on the held-out
    conditions every `eval_every` iterations; the end point is report["methods"][row].
(b) Equal reward gain: where each seed's curve first reaches a common reward gain (half the median, over the
    main rows, of the largest mean gain), the off-manifold and target-mode rates there.
(c) Tuned: each main method's lr chosen from `lrs` by the validation reward (one seed, `tune_seed`), then `seeds`
    seeds at that lr on the held-out conditions.
Equal time: every main row again at the shared lr with iterations scaled to LeapAlign's measured training time.
Also the base model's mode-decision curve and, per row, where it changed the velocity field (by step).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from leapalign.flow import sigma_schedule
from leapalign.modes import stats
from leapalign.modes.jobs import Job, rows, run_jobs
from leapalign.modes.metrics import mode_decision_curve
from leapalign.modes.model import load_base
from leapalign.modes.rewards import REWARDS
from leapalign.modes.train import EvalSet, ModeRun, velocity_of
from leapalign.modes.world import ModeWorld
from leapalign.types import option

METRICS = ("target_mode_rate", "off_manifold_rate", "reward", "detail_shift", "moved", "mode_changed")
PAIRED = ("target_mode_rate", "off_manifold_rate", "reward")


@dataclass
class ModesDemoConfig:
    dim: int = option(2, "world dimension (2: the picture; 16: the ring embedded in 16-D)")
    reward: str = option("structure", "training reward: structure, detail or sum")
    methods: list = option(["leapalign", "refl", "draft_k1", "draft_k3", "draft_lv", "drtune", "full", "flow_grpo",
                            "mix_grpo"], "main rows (views a, b, c, equal time); the first is the paired reference")
    ablations: list = option(["leapalign_late_half", "leapalign_alpha0", "leapalign_alpha1",
                              "leapalign_no_weighting", "leapalign_one_leap"], "LeapAlign ablation rows (view a)")
    seeds: list = option([0, 1, 2, 3, 4], "training seeds of every reported row")
    lr: float = option(1e-3, "the shared AdamW lr of view (a), the ablations and equal time")
    iterations: int = option(60, "iterations of every row (equal budget)")
    num_steps: int = option(10, "rollout steps T of training and evaluation")
    conds_per_iter: int = option(8, "conditions per iteration (x group samples each = the batch)")
    group: int = option(8, "samples per condition (the GRPO group)")
    eval_every: int = option(10, "curve evaluation period in iterations")
    eval_per_cond: int = option(256, "held-out samples per condition at the end point (fixed noise)")
    curve_per_cond: int = option(64, "samples per condition on the curves (the first of the fixed noise)")
    eval_seed: int = option(0, "noise seed of every evaluation sample")
    lrs: list = option([3e-4, 1e-3, 3e-3], "view (c): lrs tried per main method on the validation conditions")
    tune_seed: int = option(100, "training seed of the tuning runs")
    tune: bool = option(True, "run view (c)")
    equal_time: bool = option(True, "run the equal-time rows")
    workers: int = option(2, "worker processes (one torch thread each); results do not depend on it")
    base_dir: str | None = option(None, "directory of flow{D}d.safetensors (None: the shipped models)")

    def __post_init__(self) -> None:
        known = rows(self.num_steps, self.iterations)
        for name in list(self.methods) + list(self.ablations):
            if name not in known:
                raise ValueError(f"unknown mode-world row {name!r}; choose from: {', '.join(known)}")
        if not self.methods:
            raise ValueError("methods must name at least one row")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown mode-world reward {self.reward!r}; choose one of: {', '.join(REWARDS)}")
        if not self.seeds or self.iterations < 1 or self.lr <= 0 or self.workers < 1:
            raise ValueError("need seeds, iterations >= 1, lr > 0 and workers >= 1")


QUICK = {"seeds": [0, 1], "iterations": 6, "eval_every": 3, "eval_per_cond": 16, "curve_per_cond": 8,
         "lrs": [3e-4, 1e-3], "methods": ["leapalign", "refl", "draft_lv", "full", "flow_grpo"],
         "ablations": ["leapalign_late_half"], "workers": 1}


def _job(cfg: ModesDemoConfig, name: str, seed: int, lr: float, iterations: int, split: str = "heldout",
         picture: int | None = None, run_name: str | None = None) -> Job:
    method, args = ("base", {}) if name == "base" else rows(cfg.num_steps, cfg.iterations)[name]
    spec = ModeRun(run_name or name, method, args, lr, iterations, seed, cfg.reward, cfg.num_steps,
                   cfg.conds_per_iter, cfg.group, cfg.eval_every if split == "heldout" else 0)
    return Job(spec, cfg.dim, split, cfg.eval_per_cond, cfg.curve_per_cond, cfg.eval_seed, picture, cfg.base_dir)


def _rowstats(results: list[dict]) -> dict:
    out = {k: stats.mean_std([r["final"][k] for r in results]) for k in METRICS if k in results[0]["final"]}
    out.update(lr=results[0]["lr"], iterations=results[0]["iterations"],
               train_seconds=stats.mean_std([r["train_seconds"] for r in results]))
    return out


def _curves(results: list[dict]) -> dict:
    if not results[0]["curve"]:
        return {}
    its = [p["iteration"] for p in results[0]["curve"]]
    return {"iteration": its, **{k: [statistics.fmean(r["curve"][i][k] for r in results) for i in range(len(its))]
                                  for k in ("target_mode_rate", "off_manifold_rate", "reward")}}


def _paired(ref: list[dict], other: list[dict]) -> dict:
    return {k: stats.paired_interval([r["per_cond"][k] for r in ref], [o["per_cond"][k] for o in other])
            for k in PAIRED}


def _equal_gain(groups: dict[str, list[dict]], base_reward: float, main: list[str]) -> dict:
    best = [max(statistics.fmean(r["curve"][i]["reward"] for r in groups[n]) for i in range(len(groups[n][0]["curve"])))
            - base_reward for n in main]
    gain = 0.5 * statistics.median(best)
    out = {"gain": gain, "rows": {}}
    for name, results in groups.items():
        hits = [stats.at_gain(r["curve"], base_reward, gain, "off_manifold_rate") for r in results]
        tgt = [stats.at_gain(r["curve"], base_reward, gain, "target_mode_rate") for r in results]
        reached = [i for i, h in enumerate(hits) if h is not None]
        row = {"seeds_reached": len(reached)}
        if reached:
            row.update(off_manifold_rate=stats.mean_std([hits[i][0] for i in reached]),
                       target_mode_rate=stats.mean_std([tgt[i][0] for i in reached]),
                       iteration=stats.mean_std([hits[i][1] for i in reached]))
        out["rows"][name] = row
    return out


def _decision_curve(cfg: ModesDemoConfig, world: ModeWorld) -> list[dict]:
    base = load_base(cfg.dim, cfg.base_dir)
    ev = EvalSet.build(world, world.split("heldout"), cfg.curve_per_cond, cfg.eval_seed)
    return mode_decision_curve(world, velocity_of(base), ev.noise, sigma_schedule(cfg.num_steps),
                               world.features(ev.cond), torch.Generator().manual_seed(cfg.eval_seed + 2))


def run_modes_demo(cfg: ModesDemoConfig, out: str | Path) -> dict:
    from leapalign.modes.report import write_report

    out, t0 = Path(out), time.perf_counter()
    world = ModeWorld(dim=cfg.dim)
    # the picture: the held-out layout where the target mode is lightest (the largest structural change)
    picture = min(world.split("heldout"), key=lambda c: float(world.weights(torch.tensor([c]))[0, world.target]))
    names = ["base"] + list(cfg.methods) + list(cfg.ablations)
    jobs = [_job(cfg, n, s, cfg.lr, 0 if n == "base" else cfg.iterations, picture=picture if s == cfg.seeds[0] else None)
            for n in names for s in (cfg.seeds[:1] if n == "base" else cfg.seeds)]
    if cfg.tune:
        jobs += [_job(cfg, n, cfg.tune_seed, lr, cfg.iterations, split="validation", run_name=f"tune:{n}")
                 for n in cfg.methods for lr in cfg.lrs]
    results = run_jobs(jobs, cfg.workers)
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["name"], []).append(r)
    base = groups.pop("base")[0]
    tuning = {n: {r["lr"]: r["final"]["reward"] for r in groups.pop(f"tune:{n}")} for n in cfg.methods if cfg.tune}
    chosen = {n: max(t, key=t.get) for n, t in tuning.items()}

    later = []  # view (c) at lrs other than the shared one, and equal time
    for n, lr in chosen.items():
        if lr != cfg.lr:
            later += [_job(cfg, n, s, lr, cfg.iterations, run_name=f"tuned:{n}") for s in cfg.seeds]
    t_ref = statistics.fmean(r["train_seconds"] for r in groups[cfg.methods[0]])
    equal_iters = {}
    if cfg.equal_time:
        for n in cfg.methods[1:]:
            its = max(1, round(cfg.iterations * t_ref / statistics.fmean(r["train_seconds"] for r in groups[n])))
            equal_iters[n] = its
            later += [_job(cfg, n, s, cfg.lr, its, run_name=f"time:{n}") for s in cfg.seeds]
    for r in run_jobs(later, cfg.workers):
        groups.setdefault(r["name"], []).append(r)

    ref = groups[cfg.methods[0]]
    row_names = list(cfg.methods) + list(cfg.ablations)
    report = {
        "world": {"dim": cfg.dim, "num_modes": world.num_modes, "radius": world.radius, "std": world.std,
                  "layouts": world.layouts, "kappa": world.kappa, "target": world.target, "off_radius": world.off_radius,
                  "splits": {s: world.split(s) for s in ("train", "validation", "heldout")},
                  "picture_condition": picture},
        "config": asdict(cfg),
        "methods": {"base": {k: {"mean": v, "std": 0.0} for k, v in base["final"].items()}, **{
            n: _rowstats(groups[n]) for n in row_names}},
        "paired": {n: _paired(ref, groups[n]) for n in row_names[1:]},
        "curves": {"base": base["final"], **{n: _curves(groups[n]) for n in row_names}},
        "equal_gain": _equal_gain({n: groups[n] for n in row_names}, base["final"]["reward"], list(cfg.methods)),
        "tuned": {"validation_reward": {n: {str(k): v for k, v in t.items()} for n, t in tuning.items()},
                  "chosen_lr": chosen,
                  "rows": {n: _rowstats(groups[f"tuned:{n}"] if lr != cfg.lr else groups[n]) for n, lr in chosen.items()}},
        "equal_time": {"reference_seconds": t_ref, "iterations": equal_iters,
                       "rows": {n: _rowstats(groups[f"time:{n}"]) for n in equal_iters}},
        "velocity_change": {n: [statistics.fmean(v) for v in zip(*(r["velocity_change"] for r in groups[n]))]
                            for n in row_names},
        "mode_decision": _decision_curve(cfg, world),
        "seeds": list(cfg.seeds), "iterations": cfg.iterations,
    }
    tuned_rates = [report["tuned"]["rows"][n]["target_mode_rate"]["mean"] for n in chosen]
    report["tuned"]["saturated"] = bool(tuned_rates) and min(tuned_rates) >= 0.95
    report["pictures"] = {"base": base["picture"], **{n: groups[n][0]["picture"] for n in row_names}}
    report["wall_seconds"] = time.perf_counter() - t0
    write_report(report, out)
    return report

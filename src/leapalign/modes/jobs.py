"""The mode-world demo's jobs: named rows (method + args), one job = train one model and score it, and a pool
that runs jobs in worker processes with one torch thread each (results do not depend on the number of workers:
every job seeds its own generators)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch

from leapalign.modes.metrics import sample_metrics, summary
from leapalign.modes.model import load_base
from leapalign.modes.rewards import reward as make_reward
from leapalign.modes.train import EvalSet, ModeRun, finetune, sample, velocity_change
from leapalign.modes.world import ModeWorld


def rows(num_steps: int, iterations: int) -> dict[str, tuple[str, dict]]:
    """Row name -> (registry method, method args) at rollout steps T = num_steps. The GRPO family's group is the
    demo's group (8); MixGRPO's window (4 steps) slides over the stochastic steps once over the run. Gradient
    checkpointing is off: it changes memory, never the gradient, and this model is tiny."""
    half = num_steps // 2
    slide = max(1, iterations // max(1, num_steps - 1 - 4 + 1))
    return {
        "leapalign": ("leapalign", {}),
        "refl": ("refl", {}),
        "draft_k1": ("draft", {"k": 1, "checkpointing": False}),
        "draft_k3": ("draft", {"k": 3, "checkpointing": False}),
        "draft_lv": ("draft_lv", {"checkpointing": False}),
        "drtune": ("drtune", {"checkpointing": False}),
        "full": ("full", {"checkpointing": False}),
        "flow_grpo": ("flow_grpo", {"group_size": 8}),
        "mix_grpo": ("mix_grpo", {"group_size": 8, "window_size": 4, "shift_interval": slide}),
        # LeapAlign's ablations (paper defaults otherwise: alpha 0.3, weighting on, two leaps over all steps)
        "leapalign_late_half": ("leapalign", {"min_step": half}),
        "leapalign_alpha0": ("leapalign", {"alpha": 0.0}),
        "leapalign_alpha1": ("leapalign", {"alpha": 1.0}),
        "leapalign_no_weighting": ("leapalign", {"weighting": "none"}),
        "leapalign_one_leap": ("leapalign", {"leaps": 1}),
    }


@dataclass(frozen=True)
class Job:
    """Train spec.method (None: the base model) and score it on `split` (validation for tuning, heldout else)."""

    spec: ModeRun
    dim: int
    split: str
    per_cond: int
    curve_per_cond: int
    eval_seed: int
    picture_cond: int | None = None  # also return this condition's trajectories (plane coordinates)
    base_dir: str | None = None


@lru_cache(maxsize=4)
def _base(dim: int, directory: str | None):
    return load_base(dim, directory)


@lru_cache(maxsize=8)
def _eval_set(dim: int, split: str, per_cond: int, seed: int) -> EvalSet:
    world = ModeWorld(dim=dim)
    return EvalSet.build(world, world.split(split), per_cond, seed)


def run_job(job: Job) -> dict:
    torch.set_num_threads(1)
    world = ModeWorld(dim=job.dim)
    base = _base(job.dim, job.base_dir)
    ev = _eval_set(job.dim, job.split, job.per_cond, job.eval_seed)
    steps = job.spec.num_steps
    if job.spec.method == "base":
        model, res = base, None
    else:
        res = finetune(world, base, job.spec, world.split("train"), ev.head(job.curve_per_cond))
        model = res.model
    base_x = sample(world, base, ev, steps)
    x = sample(world, model, ev, steps)
    with torch.no_grad():
        r = make_reward(job.spec.reward, world)(x, ev.cond)
    out = {"name": job.spec.name, "seed": job.spec.seed, "lr": job.spec.lr, "iterations": job.spec.iterations,
           "final": summary(world, x, r, base_x), "curve": res.curve if res else [],
           "train_seconds": res.train_seconds if res else 0.0}
    if job.split == "heldout":
        m, n = sample_metrics(world, x), len(world.split(job.split))
        out["per_cond"] = {"target_mode_rate": m["in_target"].float().view(n, -1).mean(1).tolist(),
                           "off_manifold_rate": m["off_manifold"].float().view(n, -1).mean(1).tolist(),
                           "reward": r.view(n, -1).mean(1).tolist()}
        if model is not base:
            out["velocity_change"] = velocity_change(world, base, model, ev.head(job.curve_per_cond), steps)
    if job.picture_cond is not None:
        pic = EvalSet.build(world, [job.picture_cond], job.curve_per_cond, job.eval_seed + 1)
        out["picture"] = world.plane(sample(world, model, pic, steps, keep_path=True).flatten(0, 1)).view(
            steps + 1, -1, 2).tolist()
    return out


def run_jobs(jobs: list[Job], workers: int) -> list[dict]:
    """Results in job order; workers > 1: a fork pool of single-thread processes."""
    if workers <= 1:
        return [run_job(j) for j in jobs]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(run_job, jobs, chunksize=1))


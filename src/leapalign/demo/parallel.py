"""One demo job (train one model, sample the evaluation captions with fixed noise, score them) and a pool that
runs independent jobs in worker processes with one torch thread each.

Why processes with one thread: on a 2-core machine shared with other work, torch's spin-waiting intra-op
threads collapse (a 2-thread training took 78.7 s where OMP_NUM_THREADS=1 took 5.5 s), while independent
(method, seed, lr) runs scale with the cores. Every job sets one thread itself, in a worker or in the serial
path, so the two paths compute bit-identical results (tests/test_demo.py).
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class Job:
    """One model to train (method None: the base model, no training) and evaluate.

    prompts: the evaluation samples (sample i uses noise (eval_seed, i)); probe: captions of the velocity-change
    profile (base trajectories; empty = none)."""

    name: str
    method: str | None
    args: dict
    seed: int
    lr: float
    iterations: int
    batch_size: int
    num_steps: int
    guidance: float
    reward: str
    ema_decay: float
    out_dir: str
    prompts: tuple[str, ...]
    eval_seed: int
    eval_steps: int
    probe: tuple[str, ...] = ()


@dataclass
class JobResult:
    job: Job
    rewards: torch.Tensor  # (N,) per-sample reward
    correct: torch.Tensor  # (N,) bool, the GenEval-like verdict
    objects: list  # per sample, the evaluator's DetectedObjects
    images: torch.Tensor  # (N, 3, H, W) uint8
    history: list[dict] = field(default_factory=list)  # training log records
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    velocity_change: list[float] = field(default_factory=list)  # per step i: (s_i - s_{i+1}) mean |v - v_base|


def train_config(job: Job):
    """The TrainConfig of one job: the ShapesWorld preset with the demo's budget."""
    from leapalign.config import from_dict

    return from_dict({
        "output_dir": job.out_dir, "iterations": job.iterations, "batch_size": job.batch_size, "seed": job.seed,
        "ema_decay": job.ema_decay, "save_every": 0, "keep_checkpoints": 1, "resume": "none", "logger": "none",
        "model": {"adapter": "shapes", "height": 32, "width": 32, "num_steps": job.num_steps,
                  "guidance_scale": job.guidance},
        "reward": {"name": job.reward},
        "method": {"name": job.method, "args": dict(job.args)},
        "optim": {"lr": job.lr, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "data": {"prompts": "shapes:train"},
        "eval": {"prompts": None},
    })


@torch.no_grad()
def velocity_change(adapter, base, prompts: list[str], num_steps: int, seed: int) -> list[float]:
    """Which steps fine-tuning changed: along the BASE model's trajectories (same noise), per step i the mean
    |v_tuned(x_i) - v_base(x_i)| times the step length s_i - s_{i+1} (the change it makes to x_{i+1})."""
    from leapalign.evaluate import sample_noise
    from leapalign.flow import sample_trajectory

    sigmas = base.sigmas(num_steps, 32, 32)
    cond = base.encode_prompts(prompts)
    traj = sample_trajectory(base.velocity, sample_noise(base, len(prompts), seed=seed, height=32, width=32),
                             sigmas, cond)
    out = []
    for i in range(num_steps):
        s = sigmas[i].expand(len(prompts))
        x = traj.latents[i]
        diff = (adapter.velocity(x, s, cond) - base.velocity(x, s, cond)).abs().mean()
        out.append(float(diff * (sigmas[i] - sigmas[i + 1])))
    return out


def run_job(job: Job) -> JobResult:
    """Train (unless base), sample job.prompts with noise (eval_seed, i), score; one torch thread throughout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(job)
    finally:
        torch.set_num_threads(threads)


def _run(job: Job) -> JobResult:
    from leapalign.adapters import load_adapter
    from leapalign.evaluate import sample_images
    from leapalign.models import load_trained
    from leapalign.rewards import load_reward
    from leapalign.shapes.evaluator import check, detect
    from leapalign.trainer import train

    base = load_adapter("shapes", None, guidance_scale=job.guidance)
    history, train_seconds = [], 0.0
    if job.method is None:
        adapter = base
    else:
        shutil.rmtree(job.out_dir, ignore_errors=True)  # a rerun into the same folder starts clean
        res = train(train_config(job), progress=False)
        history, train_seconds = res.history, res.wall_seconds
        adapter, _ = load_trained(res.output_dir / "final", ema=job.ema_decay > 0)
    t0 = time.perf_counter()
    prompts = list(job.prompts)
    images = sample_images(adapter, prompts, seed=job.eval_seed, num_steps=job.eval_steps, height=32, width=32,
                           batch_size=64).images
    reward = load_reward(job.reward)
    with torch.no_grad():
        rewards = torch.cat([reward(images[i:i + 64], prompts[i:i + 64]).float()
                             for i in range(0, len(prompts), 64)])
    objects = detect(images)
    correct = torch.tensor([check(p, o) for p, o in zip(prompts, objects)])
    eval_seconds = time.perf_counter() - t0
    change = (velocity_change(adapter, base, list(job.probe), job.num_steps, job.eval_seed)
              if job.probe and job.method is not None else [])
    return JobResult(job, rewards, correct, objects, (images * 255).round().to(torch.uint8), history,
                     train_seconds, eval_seconds, change)


class Pool:
    """Runs jobs serially (workers = 1) or in `workers` spawned processes; results come back in job order."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = None
        if workers > 1:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, jobs: list[Job]) -> list[JobResult]:
        for job in jobs:
            Path(job.out_dir).parent.mkdir(parents=True, exist_ok=True)
        if self._pool is None:
            return [run_job(job) for job in jobs]
        # longest first (training jobs before evaluation-only ones) packs the workers better
        order = sorted(range(len(jobs)), key=lambda i: -(jobs[i].iterations if jobs[i].method else 0))
        futures = {i: self._pool.submit(run_job, jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

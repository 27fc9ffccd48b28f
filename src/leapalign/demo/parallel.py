"""One demo job (train one model, sample the evaluation captions with fixed noise, score them) and a pool that
runs independent jobs in worker processes with one torch thread each.

Why processes with one thread: on a 2-core machine shared with other work, torch's spin-waiting intra-op
threads collapse (a 2-thread training took 78.7 s where OMP_NUM_THREADS=1 took 5.5 s), while independent
(method, seed, lr) runs scale with the cores. Every job sets one thread itself, in a worker or in the serial
path, so the two paths compute bit-identical results (tests/test_demo.py).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch

from leapalign.allocator import keep_freed_memory


# Evaluation sampling batch: 64 on the CPU (what the measured tables used); on a GPU one batch holds most of a
# job's samples (a few hundred 32x32 images, doubled for guidance), so the sampler's per-step overhead is paid once.
EVAL_BATCH, EVAL_BATCH_GPU = 64, 1024


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
    precision: str = "fp32"  # or bf16: autocast in training and evaluation sampling
    device: str = "cpu"  # where training, evaluation sampling and the reward run (cuda: workers share the GPU)


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
        "mixed_precision": "bf16" if job.precision == "bf16" else "no",
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

    device = base.model.dit.out.weight.device
    sigmas = base.sigmas(num_steps, 32, 32).to(device)
    cond = base.encode_prompts(prompts)
    traj = sample_trajectory(base.velocity, sample_noise(base, len(prompts), seed=seed, height=32, width=32)
                             .to(device), sigmas, cond)
    out = []
    for i in range(num_steps):
        s = sigmas[i].expand(len(prompts))
        x = traj.latents[i]
        diff = (adapter.velocity(x, s, cond) - base.velocity(x, s, cond)).abs().mean()
        out.append(float(diff * (sigmas[i] - sigmas[i + 1])))
    return out


class _Autocast(torch.nn.Module):
    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.device_type = next(module.parameters()).device.type  # autocast where the weights are: cpu or cuda

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.module(*args, **kwargs)


@contextmanager
def autocast_transformer(adapter, enabled: bool) -> Iterator[None]:
    """Inside the block the adapter's transformer runs under bfloat16 autocast on its device, as the trainer's
    mixed_precision=bf16 runs it (the text encoder stays float32); the adapter returns float32 velocities."""
    if not enabled:
        yield
        return
    plain = adapter.transformer
    adapter.transformer = _Autocast(plain)
    try:
        yield
    finally:
        adapter.transformer = plain


@contextmanager
def accelerate_device(device: str) -> Iterator[None]:
    """Inside the block accelerate trains on `device` (its ACCELERATE_TORCH_DEVICE), not on the device it would
    pick itself (CUDA whenever one is visible): device=cpu trains on the CPU on any machine."""
    before = os.environ.get("ACCELERATE_TORCH_DEVICE")
    os.environ["ACCELERATE_TORCH_DEVICE"] = device
    try:
        yield
    finally:
        if before is None:
            del os.environ["ACCELERATE_TORCH_DEVICE"]
        else:
            os.environ["ACCELERATE_TORCH_DEVICE"] = before


def run_job(job: Job) -> JobResult:
    """Train (unless base), sample job.prompts with noise (eval_seed, i), score; one torch thread throughout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    keep_freed_memory()
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

    base = load_adapter("shapes", None, device=job.device, guidance_scale=job.guidance)
    history, train_seconds = [], 0.0
    if job.method is None:
        adapter = base
    else:
        shutil.rmtree(job.out_dir, ignore_errors=True)  # a rerun into the same folder starts clean
        with accelerate_device(job.device):
            res = train(train_config(job), progress=False)
        history, train_seconds = res.history, res.wall_seconds
        adapter, _ = load_trained(res.output_dir / "final", ema=job.ema_decay > 0, device=job.device)
    t0 = time.perf_counter()
    prompts = list(job.prompts)
    batch = EVAL_BATCH if job.device == "cpu" else EVAL_BATCH_GPU
    with autocast_transformer(adapter, job.precision == "bf16"):
        images = sample_images(adapter, prompts, seed=job.eval_seed, num_steps=job.eval_steps, height=32, width=32,
                               batch_size=batch).images
    reward = load_reward(job.reward, device=job.device)
    with torch.no_grad():
        rewards = torch.cat([reward(images[i:i + batch].to(job.device), prompts[i:i + batch]).float().cpu()
                             for i in range(0, len(prompts), batch)])
    objects = detect(images)
    correct = torch.tensor([check(p, o) for p, o in zip(prompts, objects)])
    eval_seconds = time.perf_counter() - t0
    change = (velocity_change(adapter, base, list(job.probe), job.num_steps, job.eval_seed)
              if job.probe and job.method is not None else [])
    return JobResult(job, rewards, correct, objects, (images * 255).round().to(torch.uint8), history,
                     train_seconds, eval_seconds, change)


def _cost(job: Job) -> int:
    """A job's rough cost in sampler steps: a training iteration costs about three no-grad steps per sample."""
    train = 3 * job.iterations * job.batch_size * job.num_steps if job.method else 0
    return train + len(job.prompts) * job.eval_steps


class Pool:
    """Runs jobs serially (workers = 1) or in `workers` spawned processes; results come back in job order.
    log: called with one line as each job finishes (progress of long phases)."""

    def __init__(self, workers: int, log: Callable[[str], None] | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.log = workers, log
        self._pool = None
        if workers > 1:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def _done(self, res: JobResult, count: int, total: int) -> None:
        if self.log is not None:
            j = res.job
            what = "base" if j.method is None else f"{j.name} seed {j.seed} lr {j.lr:g}"
            self.log(f"job {count}/{total} done: {what} (train {res.train_seconds:.0f}s, "
                     f"evaluation {res.eval_seconds:.0f}s)")

    def map(self, jobs: list[Job]) -> list[JobResult]:
        for job in jobs:
            Path(job.out_dir).parent.mkdir(parents=True, exist_ok=True)
        if self._pool is None:
            results = []
            for job in jobs:
                results.append(run_job(job))
                self._done(results[-1], len(results), len(jobs))
            return results
        order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))  # longest first packs the workers better
        futures = {self._pool.submit(run_job, jobs[i]): i for i in order}
        results: dict[int, JobResult] = {}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            self._done(results[futures[future]], len(results), len(jobs))
        return [results[i] for i in range(len(jobs))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

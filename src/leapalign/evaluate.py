"""Evaluation: fixed-seed sampling, reward and GenEval-like scores, image grids.

Image i of a prompt list is always sampled from the noise of seed (seed, i), whatever the model or checkpoint,
so base and fine-tuned models can be compared on the same noise (same-noise layout comparisons need this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from leapalign.data import generator
from leapalign.fast_rollout import RolloutVelocity
from leapalign.flow import sample_trajectory


@dataclass
class SampleResult:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1], CPU float32
    latents: torch.Tensor  # (N, *latent_shape) final latents x_0, CPU float32


@dataclass
class EvalReport:
    metrics: dict[str, float]  # reward_mean, reward_std, per-reward values, geneval/overall and per category
    images: torch.Tensor  # (N, 3, H, W)
    latents: torch.Tensor  # (N, *latent_shape)


def sample_noise(adapter, n: int, *, seed: int, height: int, width: int, start: int = 0) -> torch.Tensor:
    """(n, *latent_shape) noise; sample i uses generator (seed, 3, start + i), independent of batching."""
    shape = adapter.latent_shape(height, width)
    return torch.stack([torch.randn(shape, generator=generator(seed, 3, start + i)) for i in range(n)])


@torch.no_grad()
def sample_images(adapter, prompts: list[str], *, seed: int = 0, num_steps: int = 25, height: int, width: int,
                  batch_size: int = 8, start: int = 0, rollout: str = "auto") -> SampleResult:
    """Sample one image per prompt with fixed per-index noise (see module doc); returns images and final latents.
    start: index of the first prompt in a longer list, so a slice gets the noise the whole list would give it.
    rollout: the no-grad path of fast_rollout.py (auto: merged LoRA where exact); no inference mode, so that a
    model's lazily cached tensors stay usable by a training run that samples in between."""
    if not prompts:
        raise ValueError("sample_images needs at least one prompt")
    sigmas = adapter.sigmas(num_steps, height, width)
    device = next(adapter.transformer.parameters()).device
    velocity = RolloutVelocity(adapter, rollout, inference_mode=False)
    images, latents = [], []
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first:first + batch_size]
        noise = sample_noise(adapter, len(chunk), seed=seed, height=height, width=width,
                             start=start + first).to(device)
        traj = sample_trajectory(velocity, noise, sigmas, adapter.encode_prompts(chunk))
        latents.append(traj.sample.float().cpu())
        images.append(adapter.decode(traj.sample).float().clamp(0, 1).cpu())
    return SampleResult(torch.cat(images), torch.cat(latents))


@torch.no_grad()
def score_images(images: torch.Tensor, prompts: list[str], reward=None, *, geneval: bool = True,
                 batch_size: int = 8, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean/std reward (and a composite reward's parts), plus GenEval-like scores when every prompt is a
    ShapesWorld caption and `geneval` is set."""
    metrics: dict[str, float] = {}
    if reward is not None:
        values: list[torch.Tensor] = []
        parts: dict[str, list[torch.Tensor]] = {}
        for first in range(0, len(prompts), batch_size):
            chunk = images[first:first + batch_size].to(device)
            values.append(reward(chunk, prompts[first:first + batch_size]).float().cpu())
            for name, value in getattr(reward, "last_values", {}).items():
                parts.setdefault(name, []).append(value.float().cpu())
        r = torch.cat(values)
        metrics.update(reward_mean=float(r.mean()), reward_std=float(r.std()) if r.numel() > 1 else 0.0)
        metrics.update({f"reward_{k}": float(torch.cat(v).mean()) for k, v in parts.items()})
    if geneval and _shapes_prompts(prompts):
        from leapalign.shapes.evaluator import evaluate, geneval_scores

        metrics.update({f"geneval_{k}": v for k, v in geneval_scores(prompts, evaluate(images, prompts)).items()})
    return metrics


def _shapes_prompts(prompts: list[str]) -> bool:
    from leapalign.shapes.prompts import parse_prompt

    try:
        for p in prompts:
            parse_prompt(p)
    except ValueError:
        return False
    return True


def evaluate_adapter(adapter, reward, prompts: list[str], *, num_steps: int, height: int, width: int, seed: int = 0,
                     batch_size: int = 8, geneval: bool = True) -> EvalReport:
    """Sample with fixed seeds and score: the evaluation the trainer runs periodically and `leapalign eval` runs."""
    samples = sample_images(adapter, prompts, seed=seed, num_steps=num_steps, height=height, width=width,
                            batch_size=batch_size)
    device = next(adapter.transformer.parameters()).device
    metrics = score_images(samples.images, prompts, reward, geneval=geneval, batch_size=batch_size, device=device)
    return EvalReport(metrics, samples.images, samples.latents)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, pad: int = 2) -> Path:
    """Images (N, 3, H, W) in [0, 1] -> one PNG grid (nrow per row, default ~square), white padding."""
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(3, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(grid, path)
    return path


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """One image (3, H, W) in [0, 1] -> PNG."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)

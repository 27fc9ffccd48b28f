"""Pretraining ShapesWorld's base flow model on rendered scenes (what `leapalign shapes pretrain` runs).

The loop reads top to bottom: a batch of rendered scenes and their captions (made in worker processes, see
batches.py), noise and sigma, one rectified-flow loss, AdamW, EMA. The caption mix makes spatial and counting
captions rare (as in web data), so the pretrained model is weak at exactly what GenEval's position and counting
categories test.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from leapalign.shapes.batches import flow_stream
from leapalign.shapes.model import FlowModelConfig, ShapesFlowModel
from leapalign.shapes.prompts import CATEGORIES
from leapalign.types import option

Progress = Callable[[int, dict[str, float]], None]  # (step, metrics) -> None, called every log interval
Snapshot = Callable[[int, torch.nn.Module], None]  # (step, model to save) -> None, called every save_every steps


@dataclass
class LoopConfig:
    """What both ShapesWorld training loops have: AdamW with warmup and cosine decay, seeding, batch workers,
    device and callback intervals. Subclasses set their own defaults for the schedule fields."""

    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(256, "scenes per step")
    lr: float = option(1e-3, "AdamW peak learning rate (linear warmup, cosine decay)")
    warmup: int = option(300, "warmup steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    seed: int = option(0, "seed of every random draw (init, batches, noise)")
    workers: int = option(0, "processes making batches (0 = in the training process); the batch sequence depends on it")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")
    log_every: int = option(200, "steps between progress callbacks")
    save_every: int = option(1000, "steps between snapshot callbacks")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.workers < 0:
            raise ValueError("steps and batch_size must be >= 1, lr > 0 and workers >= 0")


@dataclass
class FlowPretrainConfig(LoopConfig):
    steps: int = option(12000, "optimizer steps")
    lr: float = option(5e-4, "AdamW peak learning rate (linear warmup, cosine decay)")
    warmup: int = option(500, "warmup steps")
    ema: float = option(0.999, "EMA decay per step; the EMA weights are what ships")
    caption_dropout: float = option(0.1, "share of captions replaced by the empty caption, so classifier-free "
                                         "guidance is available")
    mix: tuple[float, ...] = option((0.22, 0.22, 0.03, 0.30, 0.02, 0.21),
                                    "caption category weights in CATEGORIES order (single_object, two_object, "
                                    "counting, colors, position, color_attr); spatial and counting captions are rare "
                                    "on purpose")
    sigma_sampling: str = option("uniform", "training sigma distribution: 'uniform' or 'logit_normal' (SD3's, centred "
                                            "on 0.5)")
    model: FlowModelConfig = option(FlowModelConfig(), "network shape")

    def __post_init__(self) -> None:
        if len(self.mix) != len(CATEGORIES) or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix needs {len(CATEGORIES)} non-negative weights ({', '.join(CATEGORIES)})")
        super().__post_init__()
        if self.sigma_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"sigma_sampling must be 'uniform' or 'logit_normal', got '{self.sigma_sampling}'")


def warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over `warmup` steps, then cosine decay to 0 at `steps`."""
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))


def pretrain_flow(cfg: FlowPretrainConfig, progress: Progress | None = None, snapshot: Snapshot | None = None,
                  init: ShapesFlowModel | None = None) -> ShapesFlowModel:
    """Rectified-flow pretraining; returns the EMA model (eval mode, on cfg.device).

    init: continue from these weights (a second stage; EMA restarts from them) instead of a fresh init.
    Loss: || v(x_s, s, c) - (eps - x0) ||^2 with x_s = (1 - s) x0 + s eps and s ~ U(0, 1) by
    default (SD3's logit-normal rarely visits the low sigmas where 32 px edges get sharp; all three stages of the
    shipped model used uniform).
    """
    torch.manual_seed(cfg.seed)  # parameter init is the one draw that cannot take a generator
    model = ShapesFlowModel(cfg.model).to(cfg.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))
    data = flow_stream(cfg.seed, cfg.workers, batch_size=cfg.batch_size, size=cfg.model.image_size, mix=cfg.mix,
                       caption_dropout=cfg.caption_dropout)
    g = torch.Generator(cfg.device).manual_seed(cfg.seed)  # noise and sigma, drawn where the model runs
    for step in range(cfg.steps):
        x0, texts = next(data)  # (B, 3, S, S) in [-1, 1], captions
        x0 = x0.to(cfg.device, non_blocking=True)
        eps = torch.randn(x0.shape, generator=g, device=cfg.device)
        if cfg.sigma_sampling == "uniform":
            s = torch.rand(cfg.batch_size, generator=g, device=cfg.device)  # (B,)
        else:
            s = torch.sigmoid(torch.randn(cfg.batch_size, generator=g, device=cfg.device))  # (B,)
        xs = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * eps
        loss = F.mse_loss(model(xs, s, texts), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - cfg.ema)
        if progress and (step + 1) % cfg.log_every == 0:
            progress(step + 1, {"loss": loss.item(), "grad_norm": gn.item(), "lr": sched.get_last_lr()[0]})
        if snapshot and (step + 1) % cfg.save_every == 0:
            snapshot(step + 1, ema)
    return ema.eval()

"""Training ShapesWorld's base flow model and its reward model from rendered scenes.

Both loops read top to bottom: sample captions, sample and render scenes that satisfy them, one loss, AdamW.
The base model's caption mix makes spatial and counting captions rare (as in web data), so the pretrained model
is weak at exactly what GenEval's position and counting categories test.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from leapalign.shapes.evaluator import facts, requirements, scene_objects
from leapalign.shapes.model import FlowModelConfig, ShapesFlowModel
from leapalign.shapes.prompts import CATEGORIES, Prompt, all_prompts, perturbations
from leapalign.shapes.render import render, sample_scenes
from leapalign.shapes.reward_model import RewardModelConfig, ShapesRewardModel

Progress = Callable[[int, dict[str, float]], None]  # (step, metrics) -> None, called every log interval
Snapshot = Callable[[int, torch.nn.Module], None]  # (step, model to save) -> None, called every save_every steps


@dataclass
class FlowPretrainConfig:
    steps: int = field(default=12000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=256, metadata={"help": "scenes per step"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate (linear warmup, cosine decay)"})
    warmup: int = field(default=500, metadata={"help": "warmup steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    ema: float = field(default=0.999, metadata={"help": "EMA decay per step; the EMA weights are what ships"})
    caption_dropout: float = field(default=0.1, metadata={
        "help": "share of captions replaced by the empty caption, so classifier-free guidance is available"})
    mix: tuple[float, ...] = field(default=(0.22, 0.22, 0.03, 0.30, 0.02, 0.21), metadata={
        "help": "caption category weights in CATEGORIES order (single_object, two_object, counting, colors, "
                "position, color_attr); spatial and counting captions are rare on purpose"})
    sigma_sampling: str = field(default="uniform", metadata={
        "help": "training sigma distribution: 'uniform' or 'logit_normal' (SD3's, centred on 0.5)"})
    seed: int = field(default=0, metadata={"help": "seed of every random draw (captions, scenes, noise, init)"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    log_every: int = field(default=200, metadata={"help": "steps between progress callbacks"})
    save_every: int = field(default=1000, metadata={"help": "steps between snapshot callbacks (EMA model)"})
    model: FlowModelConfig = field(default_factory=FlowModelConfig, metadata={"help": "network shape"})

    def __post_init__(self) -> None:
        if len(self.mix) != len(CATEGORIES) or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix needs {len(CATEGORIES)} non-negative weights ({', '.join(CATEGORIES)})")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")
        if self.sigma_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"sigma_sampling must be 'uniform' or 'logit_normal', got '{self.sigma_sampling}'")


@dataclass
class RewardTrainConfig:
    steps: int = field(default=6000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=256, metadata={"help": "image-caption pairs per step"})
    hard_negatives: int = field(default=6, metadata={"help": "hard-negative captions per image"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (linear warmup, cosine decay)"})
    warmup: int = field(default=300, metadata={"help": "warmup steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    noise: float = field(default=0.08, metadata={
        "help": "max std of Gaussian pixel noise added to renders (robustness to imperfect generated images)"})
    blur_prob: float = field(default=0.3, metadata={"help": "share of renders blurred with a 3x3 binomial kernel"})
    seed: int = field(default=0, metadata={"help": "seed of every random draw"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    log_every: int = field(default=200, metadata={"help": "steps between progress callbacks"})
    save_every: int = field(default=1000, metadata={"help": "steps between snapshot callbacks"})
    model: RewardModelConfig = field(default_factory=RewardModelConfig, metadata={"help": "network shape"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.lr <= 0 or self.hard_negatives < 0:
            raise ValueError("steps >= 1, batch_size >= 2, lr > 0 and hard_negatives >= 0 are required")


def sample_prompts(n: int, generator: torch.Generator, mix: tuple[float, ...] | None = None) -> list[Prompt]:
    """n captions: a category by `mix` (uniform if None), then a uniform caption of that category."""
    weights = torch.tensor(mix if mix is not None else [1.0] * len(CATEGORIES), dtype=torch.float64)
    cats = torch.multinomial(weights, n, replacement=True, generator=generator)
    pools = [all_prompts(c) for c in CATEGORIES]
    return [pools[c][int(torch.randint(len(pools[c]), (1,), generator=generator))] for c in cats.tolist()]


def _lr_lambda(warmup: int, steps: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))


def pretrain_flow(cfg: FlowPretrainConfig, progress: Progress | None = None, snapshot: Snapshot | None = None,
                  init: ShapesFlowModel | None = None) -> ShapesFlowModel:
    """Rectified-flow pretraining; returns the EMA model (eval mode, on cfg.device).

    init: continue from these weights (a second stage; EMA restarts from them) instead of a fresh init.
    Loss: || v(x_s, s, c) - (eps - x0) ||^2 with x_s = (1 - s) x0 + s eps and s ~ U(0, 1) by
    default (SD3's logit-normal rarely visits the low sigmas where 32 px edges get sharp; the shipped model's first
    stage used it, its second stage uniform).
    """
    torch.manual_seed(cfg.seed)  # parameter init is the one draw that cannot take a generator
    g = torch.Generator().manual_seed(cfg.seed)
    model = ShapesFlowModel(cfg.model).to(cfg.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.steps))
    size = cfg.model.image_size
    for step in range(cfg.steps):
        prompts = sample_prompts(cfg.batch_size, g, cfg.mix)
        x0 = render(sample_scenes(prompts, g, size), cfg.device) * 2 - 1  # (B, 3, S, S) in [-1, 1]
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        texts = ["" if d else p.text for p, d in zip(prompts, drop.tolist())]
        eps = torch.randn(x0.shape, generator=g).to(cfg.device)
        if cfg.sigma_sampling == "uniform":
            s = torch.rand(cfg.batch_size, generator=g).to(cfg.device)  # (B,)
        else:
            s = torch.sigmoid(torch.randn(cfg.batch_size, generator=g)).to(cfg.device)  # (B,)
        xs = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * eps
        loss = F.mse_loss(model(xs, s, texts), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema)
        if progress and (step + 1) % cfg.log_every == 0:
            progress(step + 1, {"loss": loss.item(), "grad_norm": gn.item(), "lr": sched.get_last_lr()[0]})
        if snapshot and (step + 1) % cfg.save_every == 0:
            snapshot(step + 1, ema)
    return ema.eval()


def _augment(images: torch.Tensor, cfg: RewardTrainConfig, g: torch.Generator) -> torch.Tensor:
    """Blur some renders and add noise of a random strength: generated images are never as crisp as renders."""
    b = images.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0], device=images.device)
    k = (k[:, None] * k[None]) / 16
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    pick = (torch.rand(b, generator=g) < cfg.blur_prob).to(images.device)[:, None, None, None]
    images = torch.where(pick, blurred, images)
    std = (torch.rand(b, generator=g) * cfg.noise).to(images.device)[:, None, None, None]
    return (images + std * torch.randn(images.shape, generator=g).to(images.device)).clamp(0, 1)


def train_reward(cfg: RewardTrainConfig, progress: Progress | None = None,
                 snapshot: Snapshot | None = None) -> ShapesRewardModel:
    """Contrastive training with hard negatives; returns the frozen model in eval mode.

    For image i the candidates are every caption in the batch (those true for scene i other than its own are
    masked out, judged on the scene's ground truth) plus `hard_negatives` single-edit variants of its caption
    that are false for it; cross-entropy picks its own caption.
    """
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = ShapesRewardModel(cfg.model).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.steps))
    b, h = cfg.batch_size, cfg.hard_negatives
    for step in range(cfg.steps):
        prompts = sample_prompts(b, g)
        scenes = sample_scenes(prompts, g, cfg.model.image_size)
        truth = [facts(objs) for objs in scene_objects(scenes)]
        images = _augment(render(scenes, cfg.device), cfg, g)
        negs, neg_ok = [], torch.zeros(b, h, dtype=torch.bool)
        for i, p in enumerate(prompts):
            false = [q for q in perturbations(p) if not requirements(q) <= truth[i]]
            order = torch.randperm(len(false), generator=g)[:h].tolist()
            chosen = [false[j].text for j in order]
            neg_ok[i, : len(chosen)] = True
            negs += chosen + [p.text] * (h - len(chosen))  # padding, masked below
        texts = [p.text for p in prompts]
        img = model.embed_images(images)  # (B, E)
        txt = model.embed_texts(texts)  # (B, E)
        hard = model.embed_texts(negs).view(b, h, -1) if h else txt.new_zeros(b, 0, txt.shape[1])  # (B, H, E)
        scale = model.logit_scale.exp().clamp(max=100)
        batch_logits = scale * img @ txt.T  # (B, B)
        needs = [requirements(p) for p in prompts]
        same_truth = torch.tensor([[j != i and needs[j] <= truth[i] for j in range(b)] for i in range(b)])
        batch_logits = batch_logits.masked_fill(same_truth.to(cfg.device), float("-inf"))
        hard_logits = (scale * torch.einsum("be,bhe->bh", img, hard)).masked_fill(~neg_ok.to(cfg.device),
                                                                                  float("-inf"))
        logits = torch.cat([batch_logits, hard_logits], dim=1)  # (B, B + H)
        loss = F.cross_entropy(logits, torch.arange(b, device=cfg.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step + 1) % cfg.log_every == 0:
            with torch.no_grad():
                margin = (img * txt).sum(-1)[:, None] - torch.einsum("be,bhe->bh", img, hard)
                hard_acc = float((margin > 0)[neg_ok.to(cfg.device)].float().mean())
            progress(step + 1, {"loss": loss.item(), "hard_negative_acc": hard_acc})
        if snapshot and (step + 1) % cfg.save_every == 0:
            snapshot(step + 1, model)
    return model.eval().requires_grad_(False)

"""Training ShapesWorld's reward model (what `leapalign shapes reward` runs) and measuring how hackable it is.

Two losses. Contrastive: each (augmented) render must pick its own caption among the batch's captions and
`hard_negatives` single-edit variants that are false for it (swapped colours, flipped positions, wrong counts,
wrong shapes). Robustness: the clean render must outscore, under its own caption, a corrupted copy of itself —
half of the copies are adversarial (projected gradient ascent on the reward inside an L-inf ball, i.e. what a
flow model fine-tuned on this reward searches for), half high-frequency noise (iid pixels or a patch-periodic
pattern, what an over-fitted 4-px-patch DiT emits). Without the second loss a fine-tuned model learns patch
noise that raises the reward and wrecks the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from leapalign.shapes.batches import reward_batch, reward_stream
from leapalign.shapes.pretrain import LoopConfig, warmup_cosine
from leapalign.shapes.reward_model import RewardModelConfig, ShapesRewardModel
from leapalign.types import option

Progress = Callable[[int, dict[str, float]], None]
Snapshot = Callable[[int, torch.nn.Module], None]


@dataclass
class RewardTrainConfig(LoopConfig):
    steps: int = option(6000, "optimizer steps")
    batch_size: int = option(256, "image-caption pairs per step")
    lr: float = option(1e-3, "AdamW peak learning rate (linear warmup, cosine decay)")
    warmup: int = option(300, "warmup steps")
    hard_negatives: int = option(6, "hard-negative captions per image")
    noise: float = option(0.08, "max std of Gaussian pixel noise added to renders (robustness to imperfect generated "
                                "images)")
    blur_prob: float = option(0.3, "share of renders blurred with a 3x3 binomial kernel")
    robust_weight: float = option(1.0, "weight of the clean-beats-corrupted ranking loss (0 = contrastive only, the "
                                       "hackable reward)")
    robust_eps: tuple[float, float] = option((0.02, 0.3), "range of the per-image L-inf radius of adversarial and "
                                                          "noise corruptions (pixels in [0, 1])")
    robust_steps: int = option(3, "gradient-ascent steps of the adversarial corruption")
    robust_margin: float = option(0.1, "score margin clean renders must keep")
    adversarial_train: float = option(0.0, "max L-inf radius of adversarial training: the contrastive loss sees "
                                           "images pushed (robust_steps of descent) away from their own caption; "
                                           "0 = off. Robust models have perceptually aligned gradients, which is what a reward whose gradient trains a generator "
                                           "needs")
    model: RewardModelConfig = option(RewardModelConfig(), "network shape")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2 or self.hard_negatives < 0:
            raise ValueError("batch_size >= 2 (in-batch negatives) and hard_negatives >= 0 are required")
        if (self.robust_weight < 0 or not 0 <= self.robust_eps[0] <= self.robust_eps[1] or self.robust_steps < 0
                or self.adversarial_train < 0):
            raise ValueError("robust_weight >= 0, 0 <= robust_eps[0] <= robust_eps[1], robust_steps >= 0 and "
                             "adversarial_train >= 0 are required")


def augment(images: torch.Tensor, noise: float, blur_prob: float, g: torch.Generator) -> torch.Tensor:
    """Blur some renders and add noise of a random strength: generated images are never as crisp as renders."""
    b = images.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0], device=images.device)
    k = (k[:, None] * k[None]) / 16
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    pick = (torch.rand(b, generator=g) < blur_prob).to(images.device)[:, None, None, None]
    images = torch.where(pick, blurred, images)
    std = (torch.rand(b, generator=g) * noise).to(images.device)[:, None, None, None]
    return (images + std * torch.randn(images.shape, generator=g).to(images.device)).clamp(0, 1)


def adversarial(model: ShapesRewardModel, images: torch.Tensor, text_emb: torch.Tensor, eps: torch.Tensor,
                steps: int, g: torch.Generator, sign: float = 1.0) -> torch.Tensor:
    """Projected sign-gradient ascent (sign = 1) or descent (sign = -1) on the score (Madry et al.: random start,
    step 2.5 eps / steps), keeping each image's best iterate: images (B, 3, S, S) in [0, 1], unit text embeddings
    (B, E), radius eps (B,) -> images within eps (L-inf) of the input, in [0, 1]. Parameters get no gradient."""
    r = eps.to(images.device)[:, None, None, None]
    t = text_emb.detach()
    x = (images + r * (2 * torch.rand(images.shape, generator=g).to(images.device) - 1)).clamp(0, 1)
    best, best_score = x, torch.full((len(x),), -torch.inf, device=images.device)
    for i in range(steps + 1):
        x.requires_grad_(i < steps)
        with torch.set_grad_enabled(i < steps):
            score = sign * (model.embed_images(x) * t).sum(-1)  # (B,)
        better = (score > best_score).detach()
        best = torch.where(better[:, None, None, None], x.detach(), best)
        best_score = torch.where(better, score.detach(), best_score)
        if i < steps:
            (grad,) = torch.autograd.grad(score.sum(), x)
            x = x.detach() + 2.5 / steps * r * grad.sign()
            x = torch.minimum(torch.maximum(x, images - r), images + r).clamp(0, 1)
    return best


def high_frequency(images: torch.Tensor, eps: torch.Tensor, g: torch.Generator, patch: int = 4) -> torch.Tensor:
    """Sign noise of amplitude eps (B,): iid per pixel for even batch indices, one (3, patch, patch) pattern tiled
    over the canvas for odd ones (the artefact of a patch-based generator)."""
    b, c, h, w = images.shape
    iid = torch.rand(images.shape, generator=g) * 2 - 1
    tile = (torch.rand(b, c, patch, patch, generator=g) * 2 - 1).repeat(1, 1, h // patch + 1, w // patch + 1)
    tiled = tile[..., :h, :w]
    pattern = torch.where((torch.arange(b) % 2 == 0)[:, None, None, None], iid, tiled).sign()
    return (images + (eps[:, None, None, None] * pattern).to(images.device)).clamp(0, 1)


def train_reward(cfg: RewardTrainConfig, progress: Progress | None = None, snapshot: Snapshot | None = None,
                 init: ShapesRewardModel | None = None) -> ShapesRewardModel:
    """Contrastive training with hard negatives plus the robustness ranking; returns the frozen model (eval).

    For image i the candidates are every caption in the batch (those true for scene i other than its own are
    masked out, judged on the scene's ground truth) plus `hard_negatives` single-edit variants of its caption
    that are false for it; cross-entropy picks its own caption. init: continue from these weights.
    """
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)  # augmentations and corruptions (batches have their own)
    model = ShapesRewardModel(cfg.model).to(cfg.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))
    b, h, dev = cfg.batch_size, cfg.hard_negatives, cfg.device
    data = reward_stream(cfg.seed, cfg.workers, batch_size=b, size=cfg.model.image_size, hard_negatives=h)
    for step in range(cfg.steps):
        batch = next(data)
        clean = batch["images"].to(dev)
        neg_ok = batch["neg_ok"].to(dev)
        txt = model.embed_texts(batch["texts"])  # (B, E)
        seen = augment(clean, cfg.noise, cfg.blur_prob, g)
        if cfg.adversarial_train > 0:
            radius = cfg.adversarial_train * torch.rand(b, generator=g)
            seen = adversarial(model, seen, txt, radius, cfg.robust_steps, g, sign=-1.0)
        img = model.embed_images(seen)  # (B, E)
        hard = (model.embed_texts(batch["negatives"]).view(b, h, -1) if h
                else txt.new_zeros(b, 0, txt.shape[1]))  # (B, H, E)
        scale = model.logit_scale.exp().clamp(max=100)
        batch_logits = (scale * img @ txt.T).masked_fill(batch["same_truth"].to(dev), float("-inf"))  # (B, B)
        hard_logits = (scale * torch.einsum("be,bhe->bh", img, hard)).masked_fill(~neg_ok, float("-inf"))
        loss = F.cross_entropy(torch.cat([batch_logits, hard_logits], dim=1), torch.arange(b, device=dev))
        metrics = {"contrastive": loss.item()}
        if cfg.robust_weight > 0:
            lo, hi = cfg.robust_eps
            eps = lo + (hi - lo) * torch.rand(b, generator=g)
            half = b // 2
            bad = torch.cat([adversarial(model, clean[:half], txt[:half], eps[:half], cfg.robust_steps, g),
                             high_frequency(clean[half:], eps[half:], g)])
            s_clean = (model.embed_images(clean) * txt).sum(-1)
            s_bad = (model.embed_images(bad) * txt).sum(-1)
            rank = F.softplus(10 * (s_bad - s_clean + cfg.robust_margin)).mean() / 10
            loss = loss + cfg.robust_weight * rank
            metrics["ranking"] = rank.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step + 1) % cfg.log_every == 0:
            with torch.no_grad():
                margin = (img * txt).sum(-1)[:, None] - torch.einsum("be,bhe->bh", img, hard)
                metrics["hard_negative_acc"] = float((margin > 0)[neg_ok].float().mean())
            progress(step + 1, metrics)
        if snapshot and (step + 1) % cfg.save_every == 0:
            snapshot(step + 1, model)
    return model.eval().requires_grad_(False)


def reward_accuracy(model: ShapesRewardModel, n: int = 512, seed: int = 12345, device: str = "cpu") -> float:
    """Share of (clean render, false single-edit caption) pairs where the reward prefers the true caption."""
    batch = reward_batch(torch.Generator().manual_seed(seed), batch_size=n, size=model.cfg.image_size,
                         hard_negatives=64)
    images = batch["images"].to(device)
    h = batch["neg_ok"].shape[1]
    img, slot = batch["neg_ok"].nonzero(as_tuple=True)  # the real negatives: image index, slot
    captions = [batch["negatives"][i * h + j] for i, j in zip(img.tolist(), slot.tolist())]
    img = img.to(device)
    with torch.no_grad():
        pos = model(images, batch["texts"])  # (n,)
        negs = model(images[img], captions)
    return float((pos[img] > negs).float().mean())


def reward_hackability(model: ShapesRewardModel, eps: float = 0.1, steps: int = 10, n: int = 256,
                       seed: int = 12345, device: str = "cpu") -> dict[str, float]:
    """How far pixel perturbations of L-inf radius eps can raise the score of a clean render under its caption:
    mean score of the clean renders, mean gain after `steps` sign-gradient ascent steps, and the mean gain of
    high-frequency sign noise (half iid, half patch-periodic). A robust reward has a small adversarial gain and a
    negative noise gain."""
    g = torch.Generator().manual_seed(seed)
    batch = reward_batch(g, batch_size=n, size=model.cfg.image_size, hard_negatives=0)
    images = batch["images"].to(device)
    with torch.no_grad():
        txt = model.embed_texts(batch["texts"])
    r = torch.full((n,), eps)

    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (model.embed_images(x) * txt).sum(-1)

    clean = score(images)
    adv = score(adversarial(model, images, txt, r, steps, g))
    noisy = score(high_frequency(images, r, g))
    return {"clean": float(clean.mean()), "adversarial_gain": float((adv - clean).mean()),
            "noise_gain": float((noisy - clean).mean()), "eps": eps}

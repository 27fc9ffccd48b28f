"""Training ShapesWorld's scene parser (what `leapalign shapes parser` runs).

Data: rendered scenes of random captions, drawn here with their per-pixel targets (class of the object under
each pixel; a unit-mass blob at each object's centre) and with augmentations that mimic the base model's
samples: a smooth random warp of the shapes' outlines (ragged edges), per-object colour shifts, white bites out
of objects (partial shapes; the object still counts), 0-2 passes of a 3x3 blur and pixel noise.
Loss: cross-entropy on the classes + binary cross-entropy of the centre heatmap against peak-1 Gaussians at the
object centres + L1 on each class's total count.
Robustness: half of every batch is attacked before the loss (projected sign-gradient ascent on the soft caption
score of a random caption, i.e. what a generator fine-tuned on this reward searches for) and must still be
parsed as the scene it is. Its ground truth is the scene itself; the evaluator is never consulted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from leapalign.shapes.batches import sample_prompts
from leapalign.shapes.parser import BLOB_MASS, BLOB_STD, N_CLASSES, ParserConfig, ShapesParser, compose_score
from leapalign.shapes.pretrain import LoopConfig, warmup_cosine
from leapalign.shapes.prompts import BACKGROUND, COLORS, PALETTE, SHAPES
from leapalign.shapes.render import SceneBatch, sample_scenes, signed_distance
from leapalign.types import option

Progress = Callable[[int, dict[str, float]], None]
Snapshot = Callable[[int, torch.nn.Module], None]
_BINOMIAL = (torch.tensor([[1.0, 2.0, 1.0]]).T @ torch.tensor([[1.0, 2.0, 1.0]]) / 16).expand(3, 1, 3, 3)


@dataclass
class ParserTrainConfig(LoopConfig):
    steps: int = option(1500, "optimizer steps")
    batch_size: int = option(48, "scenes per step (the attacked half is extra)")
    lr: float = option(2e-3, "AdamW peak learning rate (linear warmup, cosine decay)")
    warmup: int = option(100, "warmup steps")
    log_every: int = option(100, "steps between progress callbacks")
    save_every: int = option(500, "steps between snapshot callbacks")
    warp: float = option(1.2, "max amplitude (px) of the smooth outline warp")
    color_shift: float = option(0.08, "max per-channel shift of each object's colour")
    bite_prob: float = option(0.3, "share of scenes with a white bite out of an object")
    noise: float = option(0.1, "max std of Gaussian pixel noise")
    density_weight: float = option(1.0, "weight of the heatmap and count losses")
    adversarial_eps: float = option(0.12, "max L-inf radius of the attack on half the batch (pixels in [0, 1]; 0 = "
                                          "no adversarial training)")
    adversarial_steps: int = option(2, "sign-gradient ascent steps of the attack")
    model: ParserConfig = option(ParserConfig(), "network shape")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adversarial_eps < 0 or self.adversarial_steps < 1 or not 0 <= self.bite_prob <= 1:
            raise ValueError("adversarial_eps >= 0, adversarial_steps >= 1 and bite_prob in [0, 1] are required")


def blur(images: torch.Tensor) -> torch.Tensor:
    """One pass of a 3x3 binomial blur, (B, 3, H, W)."""
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), _BINOMIAL.to(images), groups=3)


def draw(scenes: SceneBatch, g: torch.Generator, warp: float = 0.0, color_shift: float = 0.0,
         bite_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scenes -> images (B, 3, S, S) in [0, 1], class targets (B, S, S) long (0 = background, 1 + class) and
    density targets (B, C*S, S, S). With all options 0 the image equals render(scenes)."""
    b, n = scenes.shapes.shape
    s = scenes.size
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    px = (coords[None, None, None, :] - scenes.centers[..., 0, None, None]).expand(b, n, s, s)
    py = (coords[None, None, :, None] - scenes.centers[..., 1, None, None]).expand(b, n, s, s)
    if warp > 0:  # a smooth field from a 4x4 grid of random offsets: wavy, ragged outlines
        amp = warp * torch.rand(b, 1, 1, 1, generator=g)
        field_ = F.interpolate(torch.randn(b, 2, 4, 4, generator=g), size=(s, s), mode="bicubic",
                               align_corners=False) * amp  # (B, 2, S, S)
        px, py = px + field_[:, None, 0], py + field_[:, None, 1]
    shape = scenes.shapes[..., None, None]
    cover = (0.5 - signed_distance(shape.clamp(min=0), px, py, scenes.radii[..., None, None])).clamp(0, 1)
    cover = cover * (shape >= 0)  # (B, N, S, S)
    rgb = torch.tensor([PALETTE[c] for c in COLORS])[scenes.colors]  # (B, N, 3)
    rgb = (rgb + color_shift * (2 * torch.rand(rgb.shape, generator=g) - 1)).clamp(0, 1)
    img = torch.tensor(BACKGROUND)[None, :, None, None].expand(b, 3, s, s)
    target = torch.zeros(b, s, s, dtype=torch.long)
    cls = scenes.colors * len(SHAPES) + scenes.shapes.clamp(min=0)  # (B, N)
    for k in range(n):  # painted in slot order, as render does: a later object covers an earlier one
        a = cover[:, k, None]
        img = img * (1 - a) + rgb[:, k, :, None, None] * a
        target = torch.where(cover[:, k] >= 0.5, 1 + cls[:, k, None, None], target)
    if bite_prob > 0:  # a white disc centred on an object's rim: the object is partial but still there
        bite = torch.rand(b, generator=g) < bite_prob
        angle = 2 * torch.pi * torch.rand(b, generator=g)
        rad = scenes.radii[:, 0] * (0.5 + 0.5 * torch.rand(b, generator=g))
        cx = scenes.centers[:, 0, 0] + scenes.radii[:, 0] * angle.cos()
        cy = scenes.centers[:, 0, 1] + scenes.radii[:, 0] * angle.sin()
        dist = ((coords[None, None, :] - cx[:, None, None]) ** 2 + (coords[None, :, None] - cy[:, None, None]) ** 2).sqrt()
        a = ((rad[:, None, None] + 0.5 - dist).clamp(0, 1) * bite[:, None, None])[:, None]  # (B, 1, S, S)
        img = img * (1 - a) + torch.tensor(BACKGROUND)[None, :, None, None] * a
        target = torch.where(a[:, 0] >= 0.5, torch.zeros_like(target), target)
    blob = torch.exp(-((coords[None, None, None, :] - scenes.centers[..., 0, None, None]) ** 2
                       + (coords[None, None, :, None] - scenes.centers[..., 1, None, None]) ** 2) / (2 * BLOB_STD ** 2))
    blob = blob / blob.sum((-1, -2), keepdim=True) * (shape >= 0)  # (B, N, S, S), unit mass per object
    density = torch.zeros(b, N_CLASSES, s, s).scatter_add_(1, cls[..., None, None].expand(b, n, s, s), blob)
    return img, target, density


def parser_batch(g: torch.Generator, batch_size: int, cfg: ParserTrainConfig) -> dict:
    """Augmented renders with their targets and one random caption per image (for the attack)."""
    prompts = sample_prompts(batch_size, g)
    scenes = sample_scenes(prompts, g, cfg.model.image_size)
    img, target, density = draw(scenes, g, cfg.warp, cfg.color_shift, cfg.bite_prob)
    passes = torch.multinomial(torch.tensor([0.4, 0.35, 0.25]), batch_size, replacement=True, generator=g)
    once = blur(img)
    twice = blur(once)
    img = torch.where((passes == 1)[:, None, None, None], once, torch.where((passes == 2)[:, None, None, None], twice, img))
    std = cfg.noise * torch.rand(batch_size, 1, 1, 1, generator=g)
    img = (img + std * torch.randn(img.shape, generator=g)).clamp(0, 1)
    attack = [p.text for p in sample_prompts(batch_size, g)]
    return {"images": img, "target": target, "density": density, "attack_captions": attack}


def parser_loss(model: ShapesParser, images: torch.Tensor, target: torch.Tensor, density: torch.Tensor,
                density_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    seg, dens = model.logits(images)
    ce = F.cross_entropy(seg, target)
    heat = (density * BLOB_MASS).clamp(max=1.0)  # peak-1 Gaussians
    # centres are ~1% of the pixels: weight the heatmap so that they are not drowned by the background
    bce = F.binary_cross_entropy_with_logits(dens, heat, weight=1 + 20 * heat) * N_CLASSES
    pred = torch.sigmoid(dens) / BLOB_MASS  # the parser's density, as ShapesParser.forward maps it
    count = (pred.sum((-1, -2)) - density.sum((-1, -2))).abs().sum(1).mean()  # per image, all classes
    loss = ce + density_weight * (bce + 0.1 * count)
    return loss, {"ce": ce.item(), "heat_bce": bce.item(), "count_l1": count.item()}


def attack(model: ShapesParser, images: torch.Tensor, captions: list[str], eps: torch.Tensor, steps: int,
           g: torch.Generator) -> torch.Tensor:
    """Projected sign-gradient ascent on compose_score from a random start inside the L-inf ball eps (B,);
    returns the last iterate. Parameters get no gradient."""
    r = eps.to(images.device)[:, None, None, None]
    x = (images + r * (2 * torch.rand(images.shape, generator=g).to(images.device) - 1)).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(compose_score(model(x), captions).sum(), x)
        x = x.detach() + 2.5 / steps * r * grad.sign()
        x = torch.minimum(torch.maximum(x, images - r), images + r).clamp(0, 1)
    return x.detach()


def train_parser(cfg: ParserTrainConfig, progress: Progress | None = None, snapshot: Snapshot | None = None,
                 init: ShapesParser | None = None) -> ShapesParser:
    """Returns the frozen parser (eval). init: continue from these weights."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    random.seed(cfg.seed)
    model = ShapesParser(cfg.model).to(cfg.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))
    for step in range(cfg.steps):
        batch = parser_batch(g, cfg.batch_size, cfg)
        images, target, density = (batch[k].to(cfg.device) for k in ("images", "target", "density"))
        if cfg.adversarial_eps > 0:
            half = cfg.batch_size // 2
            eps = cfg.adversarial_eps * torch.rand(half, generator=g)
            model.requires_grad_(False)
            adv = attack(model, images[:half], batch["attack_captions"][:half], eps, cfg.adversarial_steps, g)
            model.requires_grad_(True)
            images = torch.cat([images, adv])
            target = torch.cat([target, target[:half]])
            density = torch.cat([density, density[:half]])
        loss, metrics = parser_loss(model, images, target, density, cfg.density_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress and (step + 1) % cfg.log_every == 0:
            progress(step + 1, {"loss": loss.item(), **metrics})
        if snapshot and (step + 1) % cfg.save_every == 0:
            snapshot(step + 1, model)
    return model.eval().requires_grad_(False)

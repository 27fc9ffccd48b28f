"""Measuring the composition reward (shapes-compose) against ShapesWorld's ground truth and its evaluator.

This module is the judge's side: it may use the evaluator (the reward itself, parser.py, never does).
    compose_accuracy     true caption vs a false single edit on clean or corrupted renders
    compose_hackability  score gain of small PGD and noise perturbations (reward_train.reward_hackability's
                         protocol), for the true caption and for a false one
    auc                  area under the ROC curve of scores against boolean verdicts
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leapalign.shapes.batches import sample_prompts
from leapalign.shapes.evaluator import satisfiable, scene_objects
from leapalign.shapes.parser import ShapesParser, compose_score
from leapalign.shapes.parser_train import attack, blur
from leapalign.shapes.prompts import perturbations
from leapalign.shapes.render import render, sample_scenes
from leapalign.shapes.reward_train import high_frequency


def _renders(n: int, seed: int, size: int) -> tuple[torch.Tensor, list[str], list[str], torch.Generator]:
    """Clean renders of random captions, their captions and one false single edit each (judged on the scene)."""
    g = torch.Generator().manual_seed(seed)
    prompts = sample_prompts(n, g)
    scenes = sample_scenes(prompts, g, size)
    false = []
    for p, objs in zip(prompts, scene_objects(scenes)):
        # position edits of a two-object scene can be true of its random layout; keep clear-cut edits only
        edits = [q for q in perturbations(p) if not satisfiable(q, objs)
                 and not (p.category == "two_object" and q.category == "position")]
        false.append(edits[int(torch.randint(len(edits), (1,), generator=g))].text)
    return render(scenes), [p.text for p in prompts], false, g


def corrupt(images: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """'clean', 'noise 0.1' (Gaussian std 0.1), 'blur' (one 3x3 binomial pass) or 'blur x2'."""
    if kind == "clean":
        return images
    if kind.startswith("noise"):
        return (images + float(kind.split()[1]) * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return {"blur": blur, "blur x2": lambda x: blur(blur(x))}[kind](images)


@torch.no_grad()
def compose_accuracy(model: ShapesParser, n: int = 512, seed: int = 12345,
                     corruptions: tuple[str, ...] = ("clean", "noise 0.1", "blur", "blur x2")) -> dict[str, dict]:
    """Per corruption: `ranking`, the share of renders whose true caption outscores a false single edit, and
    `true_above_half` / `false_below_half`, the shares of true (false) captions scored above (below) 0.5."""
    images, true, false, g = _renders(n, seed, model.cfg.image_size)
    out = {}
    for kind in corruptions:
        maps = model(corrupt(images, kind, g))
        st, sf = compose_score(maps, true), compose_score(maps, false)
        out[kind] = {"ranking": float((st > sf).float().mean()), "true_above_half": float((st > 0.5).float().mean()),
                     "false_below_half": float((sf < 0.5).float().mean())}
    return out


def smooth_attack(model: ShapesParser, images: torch.Tensor, captions: list[str], eps: torch.Tensor, steps: int,
                  g: torch.Generator, factor: int) -> torch.Tensor:
    """`attack` restricted to smooth perturbations: the perturbation lives on a grid `factor` times coarser than
    the image, within the L-inf ball eps (B,), and is upsampled bilinearly (so it stays within eps), the way a
    decoder from a coarse latent limits what a generator can draw. Returns the last iterate in [0, 1]."""
    b, c, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"factor {factor} must divide the image side {h}x{w}")
    r = eps.to(images.device)[:, None, None, None]

    def draw(d: torch.Tensor) -> torch.Tensor:
        return (images + F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)).clamp(0, 1)

    d = r * (2 * torch.rand((b, c, h // factor, w // factor), generator=g).to(images.device) - 1)
    for _ in range(steps):
        d.requires_grad_(True)
        (grad,) = torch.autograd.grad(compose_score(model(draw(d)), captions).sum(), d)
        d = torch.minimum(torch.maximum(d.detach() + 2.5 / steps * r * grad.sign(), -r), r)
    return draw(d).detach()


def compose_hackability(model: ShapesParser, eps: float = 0.1, steps: int = 10, n: int = 256,
                        seed: int = 12345, smooth: int = 1) -> dict[str, float]:
    """Mean score of clean renders and the mean gain of a `steps`-step PGD ascent and of high-frequency sign
    noise at L-inf radius eps, for the true caption and for a false single edit (what a fine-tuned generator
    would be paid for drawing a wrong scene more 'convincingly'). smooth > 1: the PGD perturbation is drawn on a
    grid that many times coarser (`smooth_attack`), the noise stays per pixel."""
    images, true, false, g = _renders(n, seed, model.cfg.image_size)
    r = torch.full((n,), eps)
    out = {"eps": eps, "smooth": smooth}
    for name, captions in (("true", true), ("false", false)):
        with torch.no_grad():
            clean = compose_score(model(images), captions)
            noisy = compose_score(model(high_frequency(images, r, g)), captions)
        adv_x = (attack(model, images, captions, r, steps, g) if smooth == 1 else
                 smooth_attack(model, images, captions, r, steps, g, smooth))
        with torch.no_grad():
            adv = compose_score(model(adv_x), captions)
        out |= {f"{name}_clean": float(clean.mean()), f"{name}_adversarial_gain": float((adv - clean).mean()),
                f"{name}_noise_gain": float((noisy - clean).mean())}
    return out


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted half; nan without both."""
    pos, neg = scores[labels.bool()], scores[~labels.bool()]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())

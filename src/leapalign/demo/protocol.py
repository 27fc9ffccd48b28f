"""The demo's fair protocol: caption sets, the learning-rate choice on validation, paired bootstrap intervals,
and which steps each method can reach.

- Validation captions come from the TRAINING compositions and the validation-only ones (tuning never sees a
  held-out composition; every category is seen); the held-out captions are scored once, at the end, with at
  least `min_samples` samples per category.
- A paired difference compares two models on the same (caption, noise, seed) samples; its 95% interval
  resamples (caption, seed) units with replacement (the noise samples of a unit stay together).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from leapalign.methods import get_method
from leapalign.methods.common import late_steps
from leapalign.shapes.prompts import CATEGORIES, heldout_prompts, parse_prompt, validation_pool


def validation_prompts(per_category: int, seed: int = 0) -> list[str]:
    """Up to `per_category` validation captions per category (seeded draw), grouped in CATEGORIES order.

    Training captions plus the validation-only compositions of the categories never trained on (single object,
    two objects): shapes.prompts.validation_pool. The held-out split shares no composition with them, so choosing
    hyperparameters on these never looks at a held-out composition, and every category is seen."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    train = validation_pool()
    rng = random.Random(seed)
    out: list[str] = []
    for cat in CATEGORIES:
        items = [p.text for p in train if p.category == cat]
        out += sorted(rng.sample(items, min(per_category, len(items))), key=items.index)
    return out


@dataclass(frozen=True)
class CaptionSet:
    """Evaluation samples: prompts[i] with noise index i; `unit[i]` = the caption index of sample i."""

    captions: list[str]
    prompts: list[str]
    unit: list[int]

    def repeats(self) -> dict[str, int]:
        """Noise samples per caption, by category."""
        out: dict[str, int] = {}
        for c, text in enumerate(self.captions):
            out.setdefault(parse_prompt(text).category, self.unit.count(c))
        return out


def expand(captions: list[str], min_repeats: int, min_samples: int) -> CaptionSet:
    """Each caption repeated max(min_repeats, ceil(min_samples / captions in its category)) times, so every
    category gets at least `min_samples` samples (the 3 single-object captions get 43 noise samples each)."""
    per_cat: dict[str, int] = {}
    for text in captions:
        cat = parse_prompt(text).category
        per_cat[cat] = per_cat.get(cat, 0) + 1
    prompts, unit = [], []
    for c, text in enumerate(captions):
        n = max(min_repeats, math.ceil(min_samples / per_cat[parse_prompt(text).category]))
        prompts += [text] * n
        unit += [c] * n
    return CaptionSet(list(captions), prompts, unit)


def heldout_set(per_category: int, min_repeats: int, min_samples: int) -> CaptionSet:
    return expand(heldout_prompts(per_category), min_repeats, min_samples)


def choose_lr(scores: dict[float, dict[str, float]]) -> float:
    """The lr with the best validation GenEval-like overall; ties broken by the validation reward, then the
    smaller lr."""
    return max(scores, key=lambda lr: (round(scores[lr]["overall"], 12), round(scores[lr]["reward"], 12), -lr))


def category_means(values: torch.Tensor, cs: CaptionSet) -> dict[str, float]:
    """Per-category mean of per-sample values (N,), and `overall` = the mean over categories (GenEval's)."""
    cats = [parse_prompt(p).category for p in cs.prompts]
    out = {c: float(values[[i for i, x in enumerate(cats) if x == c]].float().mean()) for c in CATEGORIES
           if c in cats}
    return {"overall": sum(out.values()) / len(out), **out}


def paired_units(a: list[torch.Tensor], b: list[torch.Tensor], cs: CaptionSet) -> dict[str, torch.Tensor]:
    """a, b: per seed, per-sample values (N,) of two models on the same samples. -> per category, the mean
    difference a - b of each (caption, seed) unit, (units,)."""
    if len(a) != len(b) or any(x.shape != y.shape or x.shape[0] != len(cs.prompts) for x, y in zip(a, b)):
        raise ValueError("paired differences need the same seeds and the same samples for both models")
    unit = torch.tensor(cs.unit)
    n_units = len(cs.captions)
    out: dict[str, list[torch.Tensor]] = {}
    for x, y in zip(a, b):
        diff = (x.double() - y.double())
        sums = torch.zeros(n_units, dtype=torch.float64).index_add_(0, unit, diff)
        means = sums / torch.bincount(unit, minlength=n_units)
        for c, text in enumerate(cs.captions):
            out.setdefault(parse_prompt(text).category, []).append(means[c])
    return {k: torch.stack(v) for k, v in out.items()}


def bootstrap(units: dict[str, torch.Tensor], resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """Per category (mean, low, high) of the mean unit difference, percentile bootstrap over units; `overall`
    resamples every category's units independently (stratified) and averages the category means."""
    g = torch.Generator().manual_seed(seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out, draws = {}, []
    for cat, u in units.items():
        idx = torch.randint(len(u), (resamples, len(u)), generator=g)
        boot = u[idx].mean(1)  # (resamples,)
        draws.append(boot)
        out[cat] = (float(u.mean()), float(boot.quantile(lo_q)), float(boot.quantile(hi_q)))
    total = torch.stack(draws).mean(0)
    mean = sum(float(u.mean()) for u in units.values()) / len(units)
    out["overall"] = (mean, float(total.quantile(lo_q)), float(total.quantile(hi_q)))
    return out


def reachable_steps(method: str, args: dict, num_steps: int) -> str:
    """Which of the T rollout steps a method's parameter gradient can reach, in words."""
    cfg = get_method(method).config(**args)
    last = num_steps - 1
    if method == "leapalign":
        lo, hi = cfg.min_step, last if cfg.max_step is None else cfg.max_step
        if cfg.leaps == 1:
            return f"one leap from k in {lo}-{hi} to the sample"
        return f"leaps k -> j with {lo} <= k < j <= {hi} (every step in {lo}-{hi})"
    if method == "refl":
        return f"t in {num_steps - late_steps(cfg.late_fraction, num_steps)}-{last} (one step)"
    if method == "drtune":
        lo = max(cfg.k - 1, num_steps - late_steps(cfg.late_fraction, num_steps))
        return f"{cfg.k} spaced steps in 0-t_min, t_min in {lo}-{last} (reward on a one-step prediction)"
    if method == "draft_lv":
        return f"{last} (the last step, {1 + cfg.n_extra} samples)"
    if method == "draft":
        return f"{num_steps - cfg.k}-{last}"
    if method == "full":
        return f"0-{last}"
    if method == "flow_grpo":
        return f"SDE steps 0-{num_steps - 2} (fraction {cfg.timestep_fraction} per rollout)"
    if method == "mix_grpo":
        end = num_steps - 2 if cfg.range_end is None else cfg.range_end
        return (f"a window of up to {cfg.window_size} SDE steps sliding over {cfg.range_start}-{end - 1} "
                f"every {cfg.shift_interval} iterations")
    return "?"


def drawn_step(method: str, record: dict) -> float | None:
    """The step an update was computed at, from one training-log record: LeapAlign's leap start k, ReFL's t,
    DRTune's first training step, DRaFT's last step, MixGRPO's window start."""
    key = {"leapalign": "k", "refl": "t", "drtune": "first_train_step", "mix_grpo": "window_start"}.get(method)
    return record.get(key) if key else None

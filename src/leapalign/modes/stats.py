"""Statistics of the mode-world demo: seed means, crossed paired bootstrap, equal-gain interpolation."""

from __future__ import annotations

import statistics

import torch


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_interval(a: list[list[float]], b: list[list[float]], resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> dict[str, float]:
    """Mean of a - b and its percentile interval. a, b: (seeds, conditions) per-condition means of two rows trained
    with the same seeds and scored on the same conditions and noise (paired). The bootstrap resamples seeds and
    conditions independently (crossed), so the interval carries both training-seed and condition variation."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)  # (S, C)
    g = torch.Generator().manual_seed(seed)
    s_idx = torch.randint(d.shape[0], (resamples, d.shape[0]), generator=g)
    c_idx = torch.randint(d.shape[1], (resamples, d.shape[1]), generator=g)
    boot = d[s_idx[:, :, None], c_idx[:, None, :]].mean((1, 2))  # (resamples,)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {"mean": float(d.mean()), "low": float(boot.quantile(lo)), "high": float(boot.quantile(hi))}


def at_gain(curve: list[dict], base_reward: float, gain: float, key: str) -> tuple[float, float] | None:
    """(value of `key`, iteration) where the curve's reward first reaches base_reward + gain, linearly
    interpolated between evaluation points; None if it never does."""
    target = base_reward + gain
    prev = None
    for point in curve:
        if point["reward"] >= target:
            if prev is None or point["reward"] == prev["reward"]:
                return point[key], float(point["iteration"])
            f = (target - prev["reward"]) / (point["reward"] - prev["reward"])
            return (prev[key] + f * (point[key] - prev[key]),
                    prev["iteration"] + f * (point["iteration"] - prev["iteration"]))
        prev = point
    return None

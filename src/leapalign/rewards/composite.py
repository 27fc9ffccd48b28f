"""Composite reward: a weighted sum of normalised, optionally hinged rewards.

    total = sum_i weight_i * (min(r_i, hinge_i) - mean_i) / std_i

mean/std put rewards of different scales on one footing (e.g. HPSv2.1 ~0.3 +- 0.02, PickScore ~21 +- 1);
the hinge (in raw units of reward i) caps a reward once it passes its threshold, so that it stops pulling
(zero gradient) and cannot be over-optimised while the others catch up. The raw value of every term in the
last call is kept for logging (`last_values`, `metrics()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.rewards.base import Reward, check_inputs


@dataclass(frozen=True)
class CompositeTerm:
    """One reward of a composite."""

    name: str  # registry name (see REWARDS) or "package.module:function"
    weight: float = 1.0  # multiplies the normalised value; negative weights penalise
    mean: float = 0.0  # normalisation: (r - mean) / std, in raw reward units
    std: float = 1.0  # must be > 0
    hinge: float | None = None  # raw-unit cap: r -> min(r, hinge); None = no cap
    path: str | None = None  # weights file / folder / hub id passed to load_reward

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError(f"composite term {self.name!r}: std must be > 0, got {self.std}")


class CompositeReward:
    """reward(images (B, 3, H, W) in [0, 1], prompts) -> (B,) weighted sum of the terms' normalised values."""

    def __init__(self, terms: list[CompositeTerm], rewards: list[Reward]):
        if not terms or len(terms) != len(rewards):
            raise ValueError(f"a composite needs one reward per term (>= 1); got {len(terms)} terms, {len(rewards)} rewards")
        self.terms = terms
        self.rewards = rewards
        # Unique log keys: a reward used twice (e.g. two hinges) is logged as name, name#2.
        self.keys: list[str] = []
        for term in terms:
            key, n = term.name, 1
            while key in self.keys:
                n += 1
                key = f"{term.name}#{n}"
            self.keys.append(key)
        self.name = "+".join(f"{t.weight:g}*{k}" for t, k in zip(terms, self.keys))
        self.last_values: dict[str, torch.Tensor] = {}

    @classmethod
    def from_terms(cls, terms: list[CompositeTerm], *, device="cpu", dtype: torch.dtype = torch.float32):
        """Load every term's reward with load_reward(term.name, path=term.path, device=..., dtype=...)."""
        from leapalign.rewards import load_reward

        return cls(terms, [load_reward(t.name, path=t.path, device=device, dtype=dtype) for t in terms])

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts (B,) -> total (B,) float32; raw values in last_values."""
        check_inputs(images, prompts)
        total = images.new_zeros(images.shape[0], dtype=torch.float32)
        values = {}
        for key, term, reward in zip(self.keys, self.terms, self.rewards):
            r = reward(images, prompts).float()  # (B,)
            values[key] = r.detach()
            if term.hinge is not None:
                r = r.clamp(max=term.hinge)
            total = total + term.weight * (r - term.mean) / term.std
        self.last_values = values
        return total

    def metrics(self) -> dict[str, float]:
        """Batch mean of every term's raw reward in the last call, as {"reward/<key>": value}."""
        return {f"reward/{k}": v.mean().item() for k, v in self.last_values.items()}

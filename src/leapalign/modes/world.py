"""The mode world's data: conditional Gaussian mixtures whose modes sit on a ring, in 2-D or embedded in D dims.

Mode m has centre mu_m = E @ R (cos(2 pi m / M), sin(2 pi m / M)), E (D, 2) with orthonormal columns, and isotropic
std s in all D dimensions. D = 2: E = I (the picture is the data); D > 2: E is a fixed random embedding (seeded
QR), so the data are D-dimensional Gaussians whose centres lie on a 2-D ring, and the picture is E^T x.

A condition is a layout a (of `layouts`): the mode weights w_{a,m} are proportional to
exp(kappa cos(2 pi m / M - alpha_a)), alpha_a = 2 pi a / layouts, so the mass leans toward direction alpha_a
(kappa = 1: from 22% down to 3% per mode); the model sees (cos alpha_a, sin alpha_a). The rewards prefer one
target mode (`target`, the same for every condition): in some layouts it is the heaviest mode, in others the
lightest, so the base model's target rate runs from 22% to 3% across conditions. Splits: a mod 4 in {0, 1} train,
2 validation, 3 held-out (interleaved around the ring: held-out layouts are new, between trained ones).

Off the data: a sample farther than r_off = s sqrt(chi2_D^{-1}(0.999)) from every centre (a data point is off with
probability 1e-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

COND_FEATURES = 2
OFF_QUANTILE = 0.999


def chi2_quantile(p: float, dof: int) -> float:
    """The p-quantile of chi^2 with `dof` degrees of freedom (bisection on the regularized lower gamma)."""
    lo, hi = 0.0, 10.0 * dof + 100.0
    k = torch.tensor(dof / 2.0, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.special.gammainc(k, torch.tensor(mid / 2, dtype=torch.float64))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class ModeWorld:
    dim: int = 2
    num_modes: int = 8
    radius: float = 2.5
    std: float = 0.15
    layouts: int = 16
    kappa: float = 1.0
    target: int = 0
    embed_seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2 (the ring lives in a 2-D plane), got {self.dim}")
        if self.num_modes < 4 or self.num_modes % 2:
            raise ValueError(f"num_modes must be even and >= 4, got {self.num_modes}")
        if not 0 <= self.target < self.num_modes or self.layouts % 4:
            raise ValueError(f"need 0 <= target < num_modes and layouts a multiple of 4, got target={self.target}, "
                             f"layouts={self.layouts}")

    # ---- geometry ----
    @cached_property
    def embedding(self) -> torch.Tensor:
        """E (D, 2) with orthonormal columns: the identity in 2-D, a seeded random plane otherwise."""
        if self.dim == 2:
            return torch.eye(2)
        g = torch.Generator().manual_seed(self.embed_seed)
        q, _ = torch.linalg.qr(torch.randn(self.dim, 2, generator=g, dtype=torch.float64))
        return q.float()

    @cached_property
    def off_radius(self) -> float:
        return self.std * math.sqrt(chi2_quantile(OFF_QUANTILE, self.dim))

    def weights(self, layout: torch.Tensor) -> torch.Tensor:
        """(B, M) mixture weights of layout indices (B,)."""
        m = torch.arange(self.num_modes, dtype=torch.float64)
        alpha = 2 * math.pi * layout.double() / self.layouts
        logits = self.kappa * torch.cos(2 * math.pi * m / self.num_modes - alpha[:, None])
        return torch.softmax(logits, -1).float()

    @cached_property
    def mode_angles(self) -> torch.Tensor:
        return 2 * math.pi * torch.arange(self.num_modes, dtype=torch.float64) / self.num_modes  # (M,)

    @cached_property
    def center_table(self) -> torch.Tensor:
        ang = self.mode_angles
        return (self.radius * torch.stack([ang.cos(), ang.sin()], -1)).float() @ self.embedding.T  # (M, D)

    def centers(self, x: torch.Tensor) -> torch.Tensor:
        """(M, D) mode centres in x's dtype and device (the same for every condition)."""
        return self.center_table.to(x)

    def plane(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2) coordinates of x (B, D) in the ring's plane (the picture)."""
        return x @ self.embedding.to(x)

    # ---- conditions ----
    @property
    def num_conditions(self) -> int:
        return self.layouts

    def features(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 2) model features of condition (layout) indices (B,)."""
        alpha = 2 * math.pi * cond.double() / self.layouts
        return torch.stack([alpha.cos(), alpha.sin()], -1).float()

    @property
    def target_angle(self) -> float:
        return float(self.mode_angles[self.target])

    def split(self, name: str) -> list[int]:
        """Condition indices of `train`, `validation` or `heldout` (see the module docstring)."""
        groups = {"train": (0, 1), "validation": (2,), "heldout": (3,)}
        if name not in groups:
            raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(groups)}")
        return [c for c in range(self.num_conditions) if c % 4 in groups[name]]

    # ---- data ----
    def sample(self, cond: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Data for condition indices (B,): x (B, D) and each sample's mode (B,)."""
        mode = torch.multinomial(self.weights(cond), 1, generator=generator)[:, 0]
        mu = self.center_table[mode]  # (B, D)
        return mu + self.std * torch.randn(mu.shape, generator=generator), mode

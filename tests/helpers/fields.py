"""Velocity fields and rewards with closed forms, for the method tests (float64)."""

import torch


class LinearField(torch.nn.Module):
    """v(x, s) = A x + (1 + s) b on flat latents (B, D): every leap gradient has a closed form."""

    def __init__(self, dim: int, seed: int = 0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(0.3 * torch.randn(dim, dim, generator=g, dtype=dtype))
        self.b = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=dtype))

    def forward(self, x, sigma, cond=None):
        return x @ self.A.T + (1 + sigma)[:, None] * self.b


class MLPField(torch.nn.Module):
    """A small nonlinear velocity model with a conditioning input, for equivalence tests."""

    def __init__(self, dim: int, seed: int = 0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, dim))
        self.to(dtype)

    def forward(self, x, sigma, cond=None):
        h = torch.cat([x, sigma[:, None].to(x.dtype)], 1)
        out = self.net(h)
        return out if cond is None else out + cond


def quadratic_reward(target):
    """r(x) = -||x - target||^2 per sample; dr/dx = -2 (x - target)."""
    return lambda x: -((x - target) ** 2).sum(1)

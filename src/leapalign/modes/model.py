"""The mode world's velocity model: a small MLP v(x, sigma, c), pretrained by rectified flow in seconds on a CPU.

Pretraining (minRF's loss in the project's convention): x_s = (1 - s) x0 + s eps, target v = eps - x0, s drawn
logit-normally (more weight mid-schedule, where modes are decided), conditions uniform over all of the world's
conditions. Deterministic: one torch thread, seeded generators, so `pretrain` rebuilds the shipped weights
(`python -m leapalign.modes.model --out src/leapalign/assets/modes`: about a minute per world on an idle core).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from leapalign.modes.world import COND_FEATURES, ModeWorld
from leapalign.types import option

SIGMA_FREQS = 4


class VelocityMLP(nn.Module):
    """v(x (B, D), sigma (B,), features (B, 4)) -> (B, D): SiLU MLP over [x, sigma Fourier features, features]."""

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3):
        super().__init__()
        layers, width = [], dim + 1 + 2 * SIGMA_FREQS + COND_FEATURES
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        self.dim, self.hidden, self.depth = dim, hidden, depth

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        freqs = math.pi * torch.arange(1, SIGMA_FREQS + 1, device=x.device, dtype=x.dtype)  # (F,)
        s = sigma.to(x)[:, None]  # (B, 1)
        emb = torch.cat([s, (s * freqs).sin(), (s * freqs).cos()], -1)  # (B, 1 + 2F)
        return self.net(torch.cat([x, emb, features.to(x)], -1))  # (B, D)


@dataclass
class PretrainConfig:
    dim: int = option(2, "data dimension D of the world (2: the picture; 16: embedded ring)")
    hidden: int = option(64, "MLP width")
    depth: int = option(3, "hidden layers")
    iterations: int = option(3000, "AdamW steps")
    batch_size: int = option(256, "samples per step")
    lr: float = option(3e-3, "peak lr (cosine decay to 0)")
    seed: int = option(0, "seed of data, noise and initialisation")


def pretrain(cfg: PretrainConfig) -> VelocityMLP:
    """Rectified-flow pretraining on the world of dimension cfg.dim (deterministic for a given cfg, one thread)."""
    world = ModeWorld(dim=cfg.dim)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = VelocityMLP(cfg.dim, cfg.hidden, cfg.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.iterations)))
    for _ in range(cfg.iterations):
        cond = torch.randint(world.num_conditions, (cfg.batch_size,), generator=g)
        x0, _ = world.sample(cond, g)
        eps = torch.randn(x0.shape, generator=g)
        s = torch.sigmoid(torch.randn(cfg.batch_size, generator=g))  # logit-normal(0, 1)
        xs = (1 - s[:, None]) * x0 + s[:, None] * eps
        loss = (model(xs, s, world.features(cond)) - (eps - x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


def asset_dir() -> Path:
    return Path(str(resources.files("leapalign") / "assets" / "modes"))


def load_base(dim: int, directory: str | Path | None = None) -> VelocityMLP:
    """The shipped base model of the dim-D world (frozen, eval mode)."""
    d = Path(directory) if directory else asset_dir()
    path = d / f"flow{dim}d.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no mode-world model for dim={dim} at {path}; shipped dims: 2, 16 (regenerate: "
                                f"python -m leapalign.modes.model --out {d})")
    meta = json.loads((d / f"flow{dim}d.json").read_text())
    model = VelocityMLP(dim, meta["hidden"], meta["depth"])
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="regenerate the mode world's shipped base models")
    parser.add_argument("--out", default=str(asset_dir()), help="directory for flow{D}d.safetensors/.json")
    parser.add_argument("--dims", default="2,16", help="comma-separated world dimensions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for dim in (int(d) for d in args.dims.split(",")):
        cfg, t0 = PretrainConfig(dim=dim), time.perf_counter()
        model = pretrain(cfg)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"flow{dim}d.safetensors"))
        meta = {**asdict(cfg), "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
        (out / f"flow{dim}d.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"dim {dim}: {meta['seconds']} s -> {out}")


if __name__ == "__main__":
    main()

"""A tiny random FlowAdapter and rewards for trainer/CLI tests (offline, CPU, milliseconds per call).

Loaded through the registries' "package.module:attr" paths (tests/ is on sys.path under pytest, and the
2-process test puts it on PYTHONPATH): adapter "helpers.toy:ToyAdapter", rewards "helpers.toy:toy_reward" / "helpers.toy:nan_reward".
"""

from __future__ import annotations

import os
import signal
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from leapalign.flow import sigma_schedule

CHANNELS, DIM = 3, 8


def _prompt_vector(prompt: str, dim: int) -> torch.Tensor:
    """A fixed pseudo-random vector per prompt (crc32-seeded, so identical in every process)."""
    return torch.randn(dim, generator=torch.Generator().manual_seed(zlib.crc32(prompt.encode())))


@dataclass
class ToyCond:
    emb: torch.Tensor  # (B, DIM)


class ToyTransformer(nn.Module):
    """v = W2 tanh(W1 x + U emb + t sigma) per pixel: two linear layers, every parameter reached by the reward."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(CHANNELS, DIM, 1)
        self.cond = nn.Linear(DIM, DIM)
        self.time = nn.Linear(1, DIM)
        self.out = nn.Conv2d(DIM, CHANNELS, 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + (self.cond(emb) + self.time(sigma[:, None].to(x.dtype)))[:, :, None, None]
        return self.out(torch.tanh(h))  # (B, C, H, W)


class ToyAdapter:
    name = "toy"

    def __init__(self, device="cpu", dtype=torch.float32):
        self.transformer = ToyTransformer().to(device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path=None, *, device="cpu", dtype=torch.float32, guidance_scale=None):
        if path is not None:
            raise FileNotFoundError(f"toy adapter has no weights to load, got path {path}")
        return cls(device, dtype)

    def encode_prompts(self, prompts: list[str]) -> ToyCond:
        device = next(self.transformer.parameters()).device
        return ToyCond(torch.stack([_prompt_vector(p, DIM) for p in prompts]).to(device))

    def velocity(self, x, sigma, cond: ToyCond):
        return self.transformer(x, sigma, cond.emb)

    def decode(self, latents):
        return torch.sigmoid(latents)  # (B, 3, H, W) in [0, 1]

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (CHANNELS, height, width)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        return sigma_schedule(num_steps, shift=3.0)

    def trainable_parameters(self):
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        pass


def toy_reward(path=None, *, device="cpu", dtype=torch.float32):
    """Reward factory: closeness of the image to a per-prompt colour (differentiable, prompt-dependent)."""

    kill_at = int(os.environ.get("LEAPALIGN_TOY_KILL_AT", "0"))  # SIGKILL this process at that call (resume test)
    nan_from = int(os.environ.get("LEAPALIGN_TOY_NAN_FROM", "0"))  # NaN rewards from that call on (0 = never)
    calls = 0

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        target = torch.stack([torch.sigmoid(_prompt_vector(p, CHANNELS)) for p in prompts]).to(images)
        r = -((images - target[:, :, None, None]) ** 2).flatten(1).mean(1)  # (B,)
        return r * float("nan") if 0 < nan_from <= calls else r

    return reward


def nan_reward(path=None, *, device="cpu", dtype=torch.float32):
    """Reward factory that always returns NaN (to exercise skip-and-abort)."""
    base = toy_reward()
    return lambda images, prompts: base(images, prompts) * float("nan")


def toy_config(tmp_path, **overrides):
    """A TrainConfig for the toy world: 4x4 images, 4 Euler steps, no evaluation, seconds on a CPU."""
    from leapalign.config import from_dict, validate

    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(7)) + "\n")
    data = {
        "output_dir": str(tmp_path / "run"), "iterations": 4, "batch_size": 2, "ema_decay": 0.9,
        "save_every": 0, "logger": "none", "resume": "none",
        "model": {"adapter": "helpers.toy:ToyAdapter", "height": 4, "width": 4, "num_steps": 4},
        "reward": {"name": "helpers.toy:toy_reward"},
        "method": {"name": "leapalign", "args": {"alpha": 0.3}},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "data": {"prompts": str(prompts)},
        "eval": {"prompts": None},
    }
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    cfg = from_dict(data)
    validate(cfg)
    return cfg

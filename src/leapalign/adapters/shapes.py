"""FlowAdapter for ShapesWorld's pixel-space flow model (the offline default).

Latents are the images themselves scaled to [-1, 1], shape (3, S, S); decode maps them back to [0, 1].
The velocity is already in our convention (sigma = 1 is noise, v = eps - x0), so the edge conversion is only
classifier-free guidance: v = v_uncond + g (v_cond - v_uncond), computed by batch doubling when g != 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.flow import sample_trajectory, sigma_schedule
from leapalign.shapes.checkpoint import load_flow_model
from leapalign.shapes.model import ShapesFlowModel


@dataclass
class ShapesConditioning:
    """Encoded captions, batch-first. uncond_*: the empty caption's features (same batch), or None when the
    adapter samples without guidance.

    tokens (B, L, D); mask (B, L) bool; pooled (B, D).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    uncond_tokens: torch.Tensor | None = None
    uncond_mask: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None


class ShapesAdapter:
    """ShapesWorld's text encoder + DiT behind the FlowAdapter protocol. Only the DiT is trainable."""

    name = "shapes"

    def __init__(self, model: ShapesFlowModel, guidance_scale: float = 1.0, shift: float = 1.0):
        """guidance_scale: classifier-free guidance (1.0 = none, one model call per velocity);
        shift: static schedule shift k (1.0 = the plain linear schedule)."""
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1.0 (1.0 disables guidance), got {guidance_scale}")
        self.model = model
        self.transformer = model.dit
        self.guidance = guidance_scale
        self.shift = shift
        model.text_encoder.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, guidance_scale: float | None = None,
                        shift: float = 1.0) -> "ShapesAdapter":
        """The shipped base model (path=None) or a saved checkpoint; guidance_scale None = 1.0 (none)."""
        model = load_flow_model(path, device).to(dtype)
        return cls(model, guidance_scale=1.0 if guidance_scale is None else guidance_scale, shift=shift)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> ShapesConditioning:
        tokens, mask, pooled = self.model.encode(prompts)
        if self.guidance == 1.0:
            return ShapesConditioning(tokens, mask, pooled)
        ut, um, up = self.model.encode([""] * len(prompts))
        return ShapesConditioning(tokens, mask, pooled, ut, um, up)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: ShapesConditioning) -> torch.Tensor:
        """x (B, 3, S, S), sigma (B,) -> v (B, 3, S, S) in x's dtype (also under bf16 autocast, so that guidance
        and the sampler's update run at the latents' precision); differentiable w.r.t. x and the DiT's parameters."""
        if cond.uncond_tokens is None:
            if self.guidance != 1.0:
                raise ValueError("conditioning was encoded without guidance; re-encode with this adapter")
            return self.transformer(x, sigma, cond.tokens, cond.mask, cond.pooled).to(x.dtype)
        v = self.transformer(torch.cat([x, x]), torch.cat([sigma, sigma]),
                             torch.cat([cond.tokens, cond.uncond_tokens]), torch.cat([cond.mask, cond.uncond_mask]),
                             torch.cat([cond.pooled, cond.uncond_pooled])).to(x.dtype)  # (2B, 3, S, S)
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + self.guidance * (v_cond - v_uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, 3, S, S) in [-1, 1] scale -> images (B, 3, S, S) in [0, 1] (clamped, as a VAE's output)."""
        return ((latents + 1) / 2).clamp(0, 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        p = self.model.cfg.patch
        if height != width or height % p:
            raise ValueError(f"ShapesWorld images must be square with a side divisible by {p}, got {height}x{width}")
        return (3, height, width)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        self.latent_shape(height, width)
        return sigma_schedule(num_steps, shift=self.shift)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def noise(self, batch: int, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
        """Initial noise (B, 3, S, S) from a CPU generator (same seed -> same noise on any device)."""
        s = size or self.image_size
        return torch.randn((batch, *self.latent_shape(s, s)), generator=generator).to(self.model.dit.out.weight.device)

    def generate(self, prompts: list[str], num_steps: int, noise: torch.Tensor) -> torch.Tensor:
        """Euler sampling without gradient: noise (B, 3, S, S) -> images (B, 3, S, S) in [0, 1]."""
        s = noise.shape[-1]
        traj = sample_trajectory(self.velocity, noise, self.sigmas(num_steps, s, s), self.encode_prompts(prompts))
        return self.decode(traj.sample)

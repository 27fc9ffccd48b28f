"""FLUX.1-dev / FLUX.1-schnell through diffusers' FluxPipeline, as a FlowAdapter.

Adapted from diffusers 0.42.1 `pipelines/flux/pipeline_flux.py` (FluxPipeline.__call__ denoising loop): we keep
its prompt encoding, latent packing, image/text ids, timestep/guidance conventions and VAE scaling, but own the
loop. The latent state is the *unpacked* VAE latent (B, C, H/8, W/8), so decode() and img_ids know the aspect
ratio; packing to (B, H/16 * W/16, 4C) tokens happens inside velocity().
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from leapalign.adapters.base import TensorRecord
from leapalign.adapters.diffusers_base import DiffusersAdapter, load_pipeline
from leapalign.flow import flux_mu, sigma_schedule

DEFAULT_DEV_GUIDANCE = 3.5  # FluxPipeline.__call__'s default guidance_scale


@dataclass
class FluxConditioning(TensorRecord):
    """prompt_embeds: (B, L, D) T5 hidden states; pooled_prompt_embeds: (B, P) CLIP pooled output."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor


class FluxAdapter(DiffusersAdapter):
    """FLUX.1 in the sigma convention. dev (guidance_embeds) takes a guidance tensor; schnell takes none."""

    conditioning_type = FluxConditioning
    TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

    def __init__(self, pipe, *, guidance_scale: float | None = None, max_sequence_length: int = 512,
                 model_id: str = "flux"):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.model_id = model_id
        self.max_sequence_length = max_sequence_length
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        self.name = "flux-dev" if self.guidance_embeds else "flux-schnell"
        if self.guidance_embeds:
            self.guidance_scale = DEFAULT_DEV_GUIDANCE if guidance_scale is None else float(guidance_scale)
        elif guidance_scale not in (None, 0.0):
            raise ValueError(f"FLUX.1-schnell has no guidance embedding; got guidance_scale={guidance_scale}, "
                             f"leave it unset (or 0)")
        else:
            self.guidance_scale = None
        self._freeze_frozen_parts()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, guidance_scale: float | None = None,
                        text_encoders: bool = True, max_sequence_length: int = 512) -> "FluxAdapter":
        """Load a FLUX.1 pipeline (hub id or local directory). `text_encoders=False` when using the cache."""
        from diffusers import FluxPipeline

        if path is None:
            raise ValueError("the flux adapter needs a model path: a hub id such as black-forest-labs/FLUX.1-dev "
                             "or a local diffusers directory")
        pipe = load_pipeline(FluxPipeline, path, dtype=dtype, device=device, text_encoders=text_encoders)
        return cls(pipe, guidance_scale=guidance_scale, max_sequence_length=max_sequence_length, model_id=str(path))

    def encode_with_text_encoders(self, prompts: list[str]) -> FluxConditioning:
        """CLIP pooled + T5 embeddings (no gradient), as FluxPipeline.encode_prompt."""
        self._require_text_encoders()
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                        max_sequence_length=self.max_sequence_length)
        return FluxConditioning(prompt_embeds=embeds, pooled_prompt_embeds=pooled)

    def cache_settings(self) -> dict:
        """What determines an embedding besides the prompt (keys the embedding cache)."""
        return {"adapter": "flux", "max_sequence_length": self.max_sequence_length}

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        step = self.vae_scale_factor * 2  # VAE downsampling times the 2x2 packing
        if height % step or width % step:
            raise ValueError(f"Flux needs height and width divisible by {step}, got {height}x{width}")
        channels = self.transformer.config.in_channels // 4
        return (channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """linspace(1, 1/T, T), then the dynamic shift from the token count (dev) or the static shift (schnell)."""
        _, h, w = self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        if cfg.get("use_dynamic_shifting"):
            mu = flux_mu((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
            return sigma_schedule(num_steps, mu=mu)
        return sigma_schedule(num_steps, shift=cfg.get("shift", 1.0))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: FluxConditioning) -> torch.Tensor:
        """x (B, C, h, w), sigma (B,) -> v (B, C, h, w); the transformer sees packed tokens and timestep = sigma."""
        b, c, h, w = x.shape
        packed = self.pipe._pack_latents(x, b, c, h, w)  # (B, h/2 * w/2, 4C)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)  # (N, 3)
        txt_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=x.device, dtype=x.dtype)  # (L, 3)
        # FluxPipeline passes (sigma * 1000).to(latents dtype) / 1000; mirror the rounding for bit-level fidelity.
        timestep = (sigma.to(torch.float32) * 1000).to(x.dtype) / 1000
        guidance = None
        if self.guidance_embeds:  # raw scale; the model multiplies by 1000 itself
            guidance = torch.full((b,), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed, timestep=timestep, guidance=guidance,
            pooled_projections=cond.pooled_prompt_embeds.to(x.dtype),
            encoder_hidden_states=cond.prompt_embeds.to(x.dtype),
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]
        return self.pipe._unpack_latents(out, h * self.vae_scale_factor, w * self.vae_scale_factor,
                                         self.vae_scale_factor)

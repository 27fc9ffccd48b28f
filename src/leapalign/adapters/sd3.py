"""Stable Diffusion 3 / 3.5 through diffusers' StableDiffusion3Pipeline, as a FlowAdapter.

Adapted from diffusers 0.42.1 `pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py`
(StableDiffusion3Pipeline.__call__): prompt encoding, true classifier-free guidance by batch doubling
(uncond first), `timestep = sigma * 1000`, the static-shift schedule and VAE scaling; we own the loop.
Skip-layer guidance and IP-adapters are not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from leapalign.adapters.base import TensorRecord
from leapalign.adapters.diffusers_base import DiffusersAdapter, load_pipeline
from leapalign.flow import sigma_schedule, static_shift

DEFAULT_GUIDANCE = 7.0  # StableDiffusion3Pipeline.__call__'s default guidance_scale


@dataclass
class SD3Conditioning(TensorRecord):
    """prompt_embeds (B, L, D) CLIP+T5 tokens, pooled (B, P); negatives likewise (None without CFG)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None


class SD3Adapter(DiffusersAdapter):
    """SD3/SD3.5 in the sigma convention, with true CFG when guidance_scale > 1."""

    name = "sd3"
    conditioning_type = SD3Conditioning
    TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, pipe, *, guidance_scale: float | None = None, negative_prompt: str = "",
                 max_sequence_length: int = 256, model_id: str = "sd3"):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.model_id = model_id
        self.guidance_scale = DEFAULT_GUIDANCE if guidance_scale is None else float(guidance_scale)
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 or less disables CFG), got {self.guidance_scale}")
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length
        if pipe.scheduler.config.get("use_dynamic_shifting"):
            raise ValueError("SD3 with use_dynamic_shifting is not supported; use the model's stock scheduler")
        self._freeze_frozen_parts()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, guidance_scale: float | None = None,
                        negative_prompt: str = "", text_encoders: bool = True,
                        max_sequence_length: int = 256) -> "SD3Adapter":
        """Load an SD3/SD3.5 pipeline (hub id or local directory). `text_encoders=False` when using the cache."""
        from diffusers import StableDiffusion3Pipeline

        if path is None:
            raise ValueError("the sd3 adapter needs a model path: a hub id such as "
                             "stabilityai/stable-diffusion-3.5-medium or a local diffusers directory")
        pipe = load_pipeline(StableDiffusion3Pipeline, path, dtype=dtype, device=device, text_encoders=text_encoders)
        return cls(pipe, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                   max_sequence_length=max_sequence_length, model_id=str(path))

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1

    def encode_with_text_encoders(self, prompts: list[str]) -> SD3Conditioning:
        """CLIP-L/G + T5 embeddings and the negative prompt's (if CFG), as StableDiffusion3Pipeline.encode_prompt."""
        self._require_text_encoders()
        prompts = list(prompts)
        with torch.no_grad():
            pe, npe, pooled, npooled = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
                do_classifier_free_guidance=self.do_cfg, negative_prompt=[self.negative_prompt] * len(prompts),
                max_sequence_length=self.max_sequence_length)
        return SD3Conditioning(pe, pooled, npe, npooled)

    def cache_settings(self) -> dict:
        """What determines an embedding besides the prompt (keys the embedding cache)."""
        return {"adapter": "sd3", "max_sequence_length": self.max_sequence_length, "cfg": self.do_cfg,
                "negative_prompt": self.negative_prompt if self.do_cfg else None}

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        step = self.vae_scale_factor * self.transformer.config.patch_size
        if height % step or width % step:
            raise ValueError(f"SD3 needs height and width divisible by {step}, got {height}x{width}")
        return (self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The scheduler's grid from sigma_max to the shifted 1/N_train, shifted again by k (SD3: 3.0)."""
        self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        shift = cfg.get("shift", 1.0)
        return sigma_schedule(num_steps, shift=shift,
                              base_end=float(static_shift(torch.tensor(1 / cfg.num_train_timesteps), shift)))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: SD3Conditioning) -> torch.Tensor:
        """x (B, C, h, w), sigma (B,) -> guided v (B, C, h, w); the transformer takes timestep = sigma * 1000."""
        timestep = sigma.to(torch.float32) * 1000  # (B,)
        embeds, pooled = cond.prompt_embeds, cond.pooled_prompt_embeds
        if self.do_cfg:
            if cond.negative_prompt_embeds is None:
                raise ValueError("guidance_scale > 1 needs negative embeddings; encode prompts with this adapter")
            x = torch.cat([x, x])  # (2B, C, h, w): uncond first, as the pipeline
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([cond.negative_prompt_embeds, embeds])
            pooled = torch.cat([cond.negative_pooled_prompt_embeds, pooled])
        out = self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds.to(x.dtype),
                               pooled_projections=pooled.to(x.dtype), return_dict=False)[0]
        if not self.do_cfg:
            return out
        uncond, text = out.chunk(2)
        return uncond + self.guidance_scale * (text - uncond)

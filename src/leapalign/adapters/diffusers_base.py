"""What the diffusers adapters share: loading (hub id or local directory, one-line offline errors) and the
parts of the FlowAdapter protocol that do not depend on the architecture (VAE decode, trainable parameters,
checkpointing)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Pipeline components that only prompt encoding needs; dropped when embeddings come from the cache.
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


def load_pipeline(pipeline_cls, path: str | os.PathLike, *, dtype: torch.dtype, device: str | torch.device,
                  text_encoders: bool = True):
    """`pipeline_cls.from_pretrained(path)` in `dtype` on `device`; text encoders skipped if `text_encoders=False`.

    `path` is a local diffusers directory (with model_index.json) or a hub id resolved from the local HF cache or
    the network. Failure to find it raises FileNotFoundError naming what to download and where to put it.
    """
    path = str(path)
    local = Path(path).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory (no model_index.json); "
                                f"pass the folder that `huggingface-cli download` wrote")
    skip = {name: None for name in TEXT_COMPONENTS} if not text_encoders else {}
    try:
        pipe = pipeline_cls.from_pretrained(str(local) if local.exists() else path, dtype=dtype, **skip)
    except OSError as err:
        if local.exists():
            raise FileNotFoundError(f"incomplete pipeline directory {path}: {str(err).splitlines()[0]}") from err
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", "~/.cache/huggingface") + "/hub"
        raise FileNotFoundError(
            f"model {path!r} is not available offline: run `huggingface-cli download {path} --local-dir DIR` on a "
            f"machine with network access and pass DIR as the model path (or copy the download into {cache})"
        ) from err
    return pipe.to(device)


class DiffusersAdapter:
    """Base of FluxAdapter and SD3Adapter; subclasses set self.pipe, self.transformer and TEXT_ENCODERS."""

    TEXT_ENCODERS: tuple[str, ...] = ()
    prompt_cache = None  # an EmbeddingCache once use_prompt_cache() is called: encode_prompts reads from it

    def encode_prompts(self, prompts: list[str]):
        """Prompts -> the conditioning record: from the embedding cache when one is in use, else the text encoders."""
        if self.prompt_cache is not None:
            return self.prompt_cache.load(prompts)
        return self.encode_with_text_encoders(prompts)

    def use_prompt_cache(self, cache) -> None:
        """Read every later encode_prompts from `cache` (an EmbeddingCache) and free the text encoders."""
        self.prompt_cache = cache
        self.drop_text_encoders()

    def _freeze_frozen_parts(self) -> None:
        for name in ("vae",) + self.TEXT_ENCODERS:
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        sched = self.pipe.scheduler.config
        for option in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if sched.get(option):
                raise ValueError(f"scheduler option {option} is not supported; use the model's stock scheduler")

    def _require_text_encoders(self) -> None:
        if any(getattr(self.pipe, name, None) is None for name in self.TEXT_ENCODERS):
            raise ValueError("text encoders are not loaded: load with text_encoders=True or read embeddings from "
                             "the cache (`leapalign cache`)")

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> images (B, 3, h*f, w*f) in [0, 1], differentiable (clamped as the pipeline)."""
        vae = self.pipe.vae
        z = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    def drop_text_encoders(self) -> None:
        """Free the text encoders and tokenizers (embeddings then come from the cache)."""
        for name in TEXT_COMPONENTS:
            if hasattr(self.pipe, name):
                setattr(self.pipe, name, None)

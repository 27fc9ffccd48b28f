"""The FlowAdapter protocol: a differentiable, convention-normalised view of a text-to-image flow model.

Every method, the trainer, evaluation and benchmarks see models only through this protocol. Adapters convert
at their edge only (Flux: timestep = sigma plus a guidance tensor; SD3: timestep = sigma * 1000 and true CFG);
nothing outside an adapter knows model-specific conventions.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class FlowAdapter(Protocol):
    """A text-to-image flow model in the sigma convention (sigma = 1 is noise, v = eps - x0)."""

    name: str
    transformer: torch.nn.Module  # the denoiser: what gets LoRA, gradient checkpointing, FSDP wrapping

    def encode_prompts(self, prompts: list[str]) -> Any:
        """Prompts -> a conditioning record (a dataclass of tensors, batch-first) for velocity()."""

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """x (B, *latent_shape), sigma (B,) -> v (B, *latent_shape), differentiable w.r.t. x and parameters."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, *latent_shape) -> images (B, 3, H, W) in [0, 1], differentiable."""

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one latent (without batch) for an image of height x width pixels."""

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The (num_steps + 1,) sigma schedule this model samples with at that resolution."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters with requires_grad=True (LoRA weights, or the whole transformer)."""


class TensorRecord:
    """Mixin for conditioning dataclasses whose fields are batch-first tensors (or None).

    The trainer splits micro-batches (`select`), moves records between devices (`to`), and the embedding cache
    stores them field by field (`tensors` / `from_tensors`).
    """

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-None fields, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]):
        names = {f.name for f in fields(cls)}
        unknown = set(tensors) - names
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**tensors)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move every tensor; `dtype` applies to floating-point tensors only (ids keep their integer type)."""
        moved = {
            k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
            for k, v in self.tensors().items()
        }
        return replace(self, **moved)

    def select(self, index: slice | torch.Tensor | list[int]):
        """The sub-batch `index` (a slice or indices along dim 0)."""
        return replace(self, **{k: v[index] for k, v in self.tensors().items()})

    def __len__(self) -> int:
        return next(iter(self.tensors().values())).shape[0]

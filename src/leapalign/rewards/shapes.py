"""ShapesWorld's learned reward behind the Reward protocol (the offline stand-in for HPSv2.1 / PickScore)."""

from __future__ import annotations

import torch

from leapalign.shapes.checkpoint import load_reward_model
from leapalign.shapes.reward_model import ShapesRewardModel


class ShapesReward:
    """reward(images (B, 3, H, W) in [0, 1], prompts) -> (B,) cosine image-text similarity, higher is better.

    Frozen and in eval(); any resizing happens in torch so gradients reach the pixels. Caption embeddings are
    cached per prompt (they never change: the model is frozen).
    """

    name = "shapes"

    def __init__(self, model: ShapesRewardModel):
        self.model = model.eval().requires_grad_(False)
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ShapesReward":
        """The shipped reward model (path=None) or a saved checkpoint."""
        return cls(load_reward_model(path, device).to(dtype))

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> unit embeddings (B, E), computed once per distinct caption."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            with torch.no_grad():
                for p, e in zip(new, self.model.embed_texts(new)):
                    self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
            raise ValueError(f"ShapesReward needs images (B, 3, H, W) and B prompts, got {tuple(images.shape)} "
                             f"and {len(prompts)} prompts")
        return (self.model.embed_images(images) * self.text_features(prompts).to(images.device)).sum(-1)  # (B,)

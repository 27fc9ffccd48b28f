"""ShapesWorld's reward model: a small contrastive image-text model (the stand-in for HPS / PickScore).

score(images, captions) = cosine(image_embedding, text_embedding), differentiable w.r.t. the pixels. The image
tower is a CNN that ends in a flatten (not a global pool) so that it keeps where things are; the text tower is
the same word-level transformer as the flow model's, trained separately. Training (pretrain.train_reward) uses
in-batch negatives plus hard negatives: swapped colours, flipped positions, wrong counts and wrong shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leapalign.shapes.model import TextEncoder, TextEncoderConfig, tokenize
from leapalign.types import option


@dataclass
class RewardModelConfig:
    image_size: int = option(32, "canvas side in pixels; other sizes are resized (antialiased) before scoring")
    width: int = option(32, "channels of the first conv stage; doubles at each of three stride-2 stages")
    embed_dim: int = option(256, "joint embedding width")
    text: TextEncoderConfig = option(TextEncoderConfig(), "the caption encoder's shape")

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):  # from a checkpoint's JSON
            self.text = TextEncoderConfig(**self.text)
        if self.image_size % 8:
            raise ValueError(f"reward image_size must be divisible by 8, got {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class ShapesRewardModel(nn.Module):
    """images (B, 3, S, S) in [0, 1] and captions -> cosine similarity (B,) in [-1, 1]."""

    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.image_tower = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(), _stage(w, w), _stage(w, 2 * w), _stage(2 * w, 4 * w),
            nn.Flatten(), nn.Linear(4 * w * (cfg.image_size // 8) ** 2, cfg.embed_dim))
        self.text_encoder = TextEncoder(cfg.text)
        self.text_proj = nn.Linear(cfg.text.dim, cfg.embed_dim)
        # CLIP's learned temperature, stored as log(1 / 0.07); only training uses it.
        self.logit_scale = nn.Parameter(torch.tensor(2.659))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> unit embeddings (B, E); resizing in torch keeps pixel gradients."""
        s = self.cfg.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return F.normalize(self.image_tower(images * 2 - 1), dim=-1)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """captions -> unit embeddings (B, E)."""
        ids, mask = tokenize(prompts)
        dev = self.text_proj.weight.device
        _, pooled = self.text_encoder(ids.to(dev), mask.to(dev))
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)  # (B,)

"""ShapesWorld's composition reward behind the Reward protocol: the analogue of a differentiable
open-vocabulary-detector reward (a parser's soft colour x shape maps scored by GenEval's rules made soft)."""

from __future__ import annotations

import torch

from leapalign.shapes.checkpoint import load_parser
from leapalign.shapes.parser import ShapesParser, compose_score


class ShapesComposeReward:
    """reward(images (B, 3, H, W) in [0, 1], prompts) -> (B,) soft caption score in [0, 1], higher is better.

    Frozen and in eval(); the gradient reaches the pixels (any resizing happens in torch). Captions outside
    ShapesWorld's templates raise ValueError. See shapes/parser.py for the terms of the score.
    """

    name = "shapes-compose"

    def __init__(self, model: ShapesParser):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ShapesComposeReward":
        """The shipped parser (path=None) or a saved checkpoint."""
        return cls(load_parser(path, device).to(dtype))

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
            raise ValueError(f"ShapesComposeReward needs images (B, 3, H, W) and B prompts, got "
                             f"{tuple(images.shape)} and {len(prompts)} prompts")
        return compose_score(self.model(images), prompts)  # (B,)

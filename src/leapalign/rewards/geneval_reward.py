"""GenEval's verdict as a reward for real models (Flow-GRPO's GenEval reward, in-process: Mask2Former + CLIP
colours through leapalign.geneval, batched on the training device, no reward server).

Prompts carry their GenEval metadata: either a prompt in GenEval's templates ("a photo of a red car and a blue
dog", parsed by geneval.prompts.parse_prompt) or one metadata row as JSON (a line of evaluation_metadata.jsonl).
`geneval`: partial credit, the share of the clauses that hold (geneval/credit.py: which clauses, equal weights);
`geneval-strict`: GenEval's 0/1 verdict. Not differentiable (detection, thresholds, argmax colours): the
direct-gradient methods refuse it; the `detector` reward is the differentiable analogue.

Weights load offline from one local folder holding `detector/` (a transformers COCO-instance Mask2Former, e.g.
facebook/mask2former-swin-small-coco-instance) and `clip/` (openai/clip-vit-large-patch14, GenEval's ViT-L-14).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from leapalign.geneval.credit import clause_scores, partial_score
from leapalign.geneval.evaluator import GenEvalDetector
from leapalign.geneval.prompts import parse_prompt
from leapalign.geneval.rules import TASKS, evaluate_image
from leapalign.rewards.base import check_inputs


def prompt_metadata(prompt: str) -> dict:
    """GenEval metadata of a prompt: a JSON row as is (checked), else parsed from GenEval's templates."""
    if not prompt.lstrip().startswith("{"):
        return parse_prompt(prompt)
    try:
        row = json.loads(prompt)
        if row["tag"] not in TASKS or not row["include"] or any(int(r["count"]) < 1 for r in row["include"]):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"not a GenEval metadata row: {prompt[:60]!r} (needs tag, include with class and count)") \
            from None
    return row


class GenEvalReward:
    """reward(images (B, 3, H, W) in [0, 1], GenEval prompts) -> (B,) float32 in [0, 1], no gradient.

    batch_size: images per detector forward (memory); the rules use GenEval's thresholds (0.3, 0.9 counting).
    """

    name = "geneval"
    differentiable = False
    strict = False

    def __init__(self, detector: GenEvalDetector, *, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.detector, self.batch_size = detector, batch_size
        self._metadata: dict[str, dict] = {}

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "GenEvalReward":
        if path is None:
            raise ValueError(f"reward {cls.name} needs reward.path = a folder holding detector/ (a COCO-instance "
                             f"Mask2Former, e.g. facebook/mask2former-swin-small-coco-instance) and clip/ "
                             f"(openai/clip-vit-large-patch14)")
        folder = Path(path)
        return cls(GenEvalDetector.from_pretrained(folder / "detector", folder / "clip", device=device, dtype=dtype))

    def metadata(self, prompt: str) -> dict:
        if prompt not in self._metadata:
            self._metadata[prompt] = prompt_metadata(prompt)
        return self._metadata[prompt]

    def score(self, detections: list, meta: dict) -> float:
        if self.strict:
            return float(evaluate_image(detections, meta)[0])
        return partial_score(clause_scores(detections, meta))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        metas = [self.metadata(p) for p in prompts]  # parse errors before any model runs
        x = images.detach().float().clamp(0, 1).to(self.detector.device)
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = x[start:start + self.batch_size]
            for image, meta, dets in zip(chunk, metas[start:], self.detector.detect(chunk)):
                scores.append(self.score(self.detector.with_colors(image, meta, dets), meta))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)  # (B,)


class GenEvalStrictReward(GenEvalReward):
    """GenEval's 0/1 verdict (rules.evaluate_image with its default thresholds)."""

    name = "geneval-strict"
    strict = True

"""ShapesWorld's evaluator as a reward: the GenEval-like verdict on the caption (the analogue of Flow-GRPO's GenEval
reward). Not differentiable: the detector segments and counts, so no gradient reaches the pixels, and the
direct-gradient methods refuse it (rewards.require_differentiable); the policy-gradient family trains on it.

`shapes-rules`: partial credit, the share of the caption's clauses that hold (geneval/credit.py says which
clauses and how they are weighted); `shapes-rules-strict`: the 0/1 verdict, exactly shapes.evaluator.check.
Training on the evaluator's own rules is why the demo scores held-out captions only and also reports the
contrastive reward and the layout-change rate (docs/methods.md).
"""

from __future__ import annotations

import torch

from leapalign.geneval.credit import clause_scores, partial_score
from leapalign.geneval.rules import Detection
from leapalign.rewards.base import check_inputs
from leapalign.shapes.evaluator import check, detect, geneval_metadata


class ShapesRulesReward:
    """reward(images (B, 3, H, W) in [0, 1], ShapesWorld captions) -> (B,) float32 in [0, 1], no gradient."""

    name = "shapes-rules"
    differentiable = False
    strict = False

    def __init__(self) -> None:
        self._metadata: dict[str, dict] = {}

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ShapesRulesReward":
        """The rules need no weights: path must be None (device and dtype follow the images)."""
        if path is not None:
            raise ValueError(f"{cls.name} is the ShapesWorld evaluator's rule engine and loads no weights; drop "
                             f"reward.path (got {path!r})")
        return cls()

    def metadata(self, prompt: str) -> dict:
        """The caption as GenEval metadata (shapes.evaluator.geneval_metadata), parsed once per caption."""
        if prompt not in self._metadata:
            self._metadata[prompt] = geneval_metadata(prompt)
        return self._metadata[prompt]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        scores = []
        for prompt, objects in zip(prompts, detect(images.detach().float().clamp(0, 1))):
            if self.strict:
                scores.append(float(check(prompt, objects)))
                continue
            # the evaluator's own reading (shapes.evaluator.check): every component is an object, the template
            # fit orders them, objects named by different descriptions are distinct
            dets = [Detection(o.shape, o.fit, o.box, o.color) for o in objects]
            scores.append(partial_score(clause_scores(dets, self.metadata(prompt), threshold=0.0,
                                                      counting_threshold=0.0, distinct_objects=True)))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)  # (B,)


class ShapesRulesStrictReward(ShapesRulesReward):
    """The 0/1 verdict of the ShapesWorld evaluator (shapes.evaluator.check)."""

    name = "shapes-rules-strict"
    strict = True

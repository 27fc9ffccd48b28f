"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic, in transformers format.

reward = exp(logit_scale) * cos(image, text), as in the official inference snippet (logit scale ~100, so
rewards are ~15-25). Weights: https://huggingface.co/yuvalkirstain/PickScore_v1 (config.json +
model.safetensors); its tokenizer is the one of laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
"""

from __future__ import annotations

import torch

from leapalign.rewards.clip import ClipReward, load_clip_model, load_tokenizer

WEIGHTS_REPO = "yuvalkirstain/PickScore_v1"
TOKENIZER_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(ClipReward):
    """PickScore: exp(logit_scale) * cos(image, text), (B,) float32."""

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32):
        """path: a folder or hub id with the PickScore_v1 files (None = yuvalkirstain/PickScore_v1)."""
        model = load_clip_model(path, WEIGHTS_REPO, "PickScore")
        tokenizer = load_tokenizer(path, TOKENIZER_REPO, "PickScore")
        return cls(model.to(device=device, dtype=dtype), tokenizer, name="pickscore", use_logit_scale=True)

"""HPSv2 and HPSv2.1 (Wu et al. 2023, https://github.com/tgxs002/HPSv2): OpenCLIP ViT-H-14 fine-tuned on HPD.

reward = cos(image, text) (the official `hpsv2.score`: normalised features, no logit scale; ~0.2-0.35), with the
official scoring inputs: the image resized on its longest side and zero-padded to a square (not centre-cropped;
preprocess.resize_longest_pad), the prompt cleaned as open_clip's tokenizer does (`clean_prompt`).
The official `HPS_v2*_compressed.pt` OpenCLIP state dict is mapped onto transformers' CLIPModel
(openclip_keys.py), so neither open_clip nor the hpsv2 wheel is needed. Files: `HPS_v2_compressed.pt` /
`HPS_v2.1_compressed.pt` from https://huggingface.co/xswu/HPSv2 and the OpenCLIP tokenizer, i.e. the
tokenizer files of https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (same BPE as OpenAI CLIP).
"""

from __future__ import annotations

import html
import re

import ftfy
import torch
from transformers import CLIPModel

from leapalign.rewards.clip import ClipReward, load_tokenizer
from leapalign.rewards.files import find_file, load_state_dict, require_keys
from leapalign.rewards.openclip_keys import (
    OPENCLIP_KEYS,
    OpenClipArch,
    openclip_config,
    openclip_to_transformers,
)
from leapalign.rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize, resize_longest_pad

WEIGHTS_REPO = "xswu/HPSv2"
TOKENIZER_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def clean_prompt(text: str) -> str:
    """open_clip's tokenizer cleaning (tgxs002/HPSv2 hpsv2/src/open_clip/tokenizer.py `basic_clean`, then
    `whitespace_clean`): ftfy.fix_text (curly quotes -> straight, mojibake repaired), HTML entities unescaped twice
    (`&amp;amp;` -> `&`), whitespace runs collapsed, stripped. Lowercasing is left to the tokenizer, which does it."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class HPSv21Reward(ClipReward):
    """HPSv2.1: cos(image, text) with HPS_v2.1_compressed.pt (the LeapAlign paper's reward), (B,) float32."""

    filename = "HPS_v2.1_compressed.pt"
    reward_name = "hpsv21"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, 3, S, S): longest side to S, zero padding, normalise."""
        return normalize(resize_longest_pad(images, self.image_size), CLIP_MEAN, CLIP_STD).to(self.dtype)

    def clean_text(self, prompt: str) -> str:
        return clean_prompt(prompt)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32):
        """path: the .pt file, a folder holding it (and optionally the tokenizer files), a hub id, or None."""
        file = find_file(path, [cls.filename], WEIGHTS_REPO, cls.reward_name)
        state = load_state_dict(file)
        require_keys(state, OPENCLIP_KEYS, file, f"an OpenCLIP HPS checkpoint ({cls.filename})")
        model = CLIPModel(openclip_config(state, OpenClipArch()))
        model.load_state_dict(openclip_to_transformers(state), strict=True)
        tokenizer = load_tokenizer(path, TOKENIZER_REPO, cls.reward_name)
        return cls(model.to(device=device, dtype=dtype), tokenizer, name=cls.reward_name)


class HPSv2Reward(HPSv21Reward):
    """HPSv2: cos(image, text) with HPS_v2_compressed.pt, (B,) float32."""

    filename = "HPS_v2_compressed.pt"
    reward_name = "hpsv2"

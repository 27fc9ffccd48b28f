"""CLIP score, and the CLIP scorer that PickScore and HPSv2 reuse (transformers' CLIPModel, frozen).

score = cos(image_embed, text_embed), optionally times exp(logit_scale) (PickScore). Images go through the
torch preprocessing of preprocess.py so the score is differentiable w.r.t. the pixels; text embeddings are
computed once per prompt and cached (prompts repeat across training steps).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from leapalign.rewards.base import FrozenReward, check_inputs, freeze
from leapalign.rewards.files import find_file, find_folder, load_state_dict, require_keys
from leapalign.rewards.preprocess import clip_preprocess

HF_CLIP_KEYS = [
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.post_layernorm.weight",
    "text_model.embeddings.token_embedding.weight",
    "visual_projection.weight",
    "text_projection.weight",
    "logit_scale",
]
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "vocab.txt"]


class ClipReward(FrozenReward):
    """reward = cos(image, text) [* exp(logit_scale)] with a transformers CLIPModel; (B,) float32."""

    def __init__(self, model: CLIPModel, tokenizer, *, name: str = "clip", use_logit_scale: bool = False):
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.name = name
        self.use_logit_scale = use_logit_scale
        self.image_size = model.config.vision_config.image_size
        self.max_length = model.config.text_config.max_position_embeddings
        self._text_cache: dict[str, torch.Tensor] = {}
        freeze(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> model input (B, 3, S, S): short side to S, centre crop, normalise."""
        return clip_preprocess(images, self.image_size, dtype=self.dtype)

    def clean_text(self, prompt: str) -> str:
        """The text the official scorer tokenizes (transformers' tokenizer as is here)."""
        return prompt

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> unit image embeddings (B, D) float32, differentiable."""
        x = self.preprocess(images)  # (B, 3, S, S)
        pooled = self.model.vision_model(pixel_values=x).pooler_output  # (B, width)
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """prompts (B,) -> unit text embeddings (B, D) float32, from the per-prompt cache."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            device = self.model.logit_scale.device
            tok = self.tokenizer([self.clean_text(p) for p in new], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            out = self.model.text_model(
                input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
            )
            feats = F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)  # (N, D)
            self._text_cache.update(zip(new, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts (B,) -> rewards (B,) float32."""
        check_inputs(images, prompts)
        score = (self.image_features(images) * self.text_features(prompts).to(images.device)).sum(-1)  # (B,)
        if self.use_logit_scale:
            score = self.model.logit_scale.exp().float() * score
        return score

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32):
        """CLIP score with openai/clip-vit-large-patch14 (or a transformers CLIP folder / hub id at `path`)."""
        model = load_clip_model(path, "openai/clip-vit-large-patch14", "CLIP score")
        tokenizer = load_tokenizer(path, "openai/clip-vit-large-patch14", "CLIP score")
        return cls(model.to(device=device, dtype=dtype), tokenizer, name="clip")


def load_clip_model(path: str | None, repo: str, what: str) -> CLIPModel:
    """A transformers CLIPModel from a folder or hub id holding config.json + model.safetensors (or
    pytorch_model.bin), loaded strictly after a key check so that a wrong checkpoint fails with one line."""
    if path is not None and Path(path).is_file():
        raise ValueError(
            f"{what} needs a transformers CLIP folder (config.json + model.safetensors), got the file {path}; "
            f"see https://huggingface.co/{repo}"
        )
    config_file = find_file(path, ["config.json"], repo, what)
    weights = find_file(path, ["model.safetensors", "pytorch_model.bin"], repo, what)
    state = load_state_dict(weights)
    require_keys(state, HF_CLIP_KEYS, weights, f"a transformers CLIP checkpoint ({what})")
    model = CLIPModel(CLIPConfig.from_json_file(str(config_file)))
    # position_ids buffers are rebuilt by the model; older checkpoints still carry them.
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    model.load_state_dict(state, strict=True)
    return model


def load_tokenizer(path: str | None, repo: str, what: str):
    """The tokenizer stored next to the weights at `path` (folder or hub id), else the one of hub repo `repo`."""
    sources = list(dict.fromkeys([find_folder(path, TOKENIZER_FILES, repo), repo]))
    for source in sources:
        try:
            return AutoTokenizer.from_pretrained(source)
        except Exception:  # noqa: BLE001 - offline / missing files: try the next source, then say what to fetch
            continue
    raise FileNotFoundError(
        f"{what}: no tokenizer found in {sources}; put the tokenizer files of https://huggingface.co/{repo} "
        f"(tokenizer.json or vocab.json + merges.txt) next to the weights"
    )

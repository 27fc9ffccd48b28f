"""ImageReward (Xu et al. 2023, https://github.com/THUDM/ImageReward): BLIP ViT-L image encoder, BERT text
encoder cross-attending to the image, MLP head on the [CLS] state; reward = (mlp(cls) - mean) / std.

Runs on transformers' BLIP modules (BlipVisionModel + BlipTextModel), not the `image-reward` package (which
fails on transformers 5, imports a git-only `clip` and needs torchvision). Official layout -> transformers:
  blip.visual_encoder.{cls_token, pos_embed, patch_embed.proj, norm} ->
      embeddings.{class_embedding, position_embedding, patch_embedding}, post_layernorm
  blip.visual_encoder.blocks.i.{norm1, norm2, attn.qkv, attn.proj, mlp.fc1, mlp.fc2} ->
      encoder.layers.i.{layer_norm1, layer_norm2, self_attn.qkv, self_attn.projection, mlp.fc1, mlp.fc2}
  blip.text_encoder.* -> the same names (transformers' BLIP text model is a port of BLIP's med.py);
  mlp.layers.* -> the head of aesthetic.py. Other blip.* keys (projections for retrieval) are unused.
Files: `ImageReward.pt` and `med_config.json` from https://huggingface.co/THUDM/ImageReward, and the
bert-base-uncased tokenizer (https://huggingface.co/google-bert/bert-base-uncased), taken from the weights'
folder when it holds vocab.txt / tokenizer.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import BlipTextConfig, BlipVisionConfig
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextModel

from leapalign.rewards.aesthetic import HEAD_LINEARS, preference_head
from leapalign.rewards.base import FrozenReward, check_inputs, freeze
from leapalign.rewards.clip import load_tokenizer
from leapalign.rewards.files import find_file, load_state_dict, require_keys
from leapalign.rewards.preprocess import clip_preprocess

REPO = "THUDM/ImageReward"
TOKENIZER_REPO = "google-bert/bert-base-uncased"
# Score normalisation of the official ImageReward class (statistics of its training set).
MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35  # the official tokenizer call: padding="max_length", truncation=True, max_length=35
VIT = "blip.visual_encoder."
TEXT = "blip.text_encoder."
VIT_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]
REQUIRED = [f"{VIT}cls_token", f"{VIT}pos_embed", f"{VIT}patch_embed.proj.weight",
            f"{TEXT}embeddings.word_embeddings.weight", "mlp.layers.0.weight"]


def blip_vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official BLIP ViT keys (prefix blip.visual_encoder.) -> BlipVisionModel keys; unknown keys raise."""
    out = {}
    for key, value in state.items():
        if not key.startswith(VIT):
            continue
        name = key.removeprefix(VIT)
        for pattern, target in VIT_RENAMES:
            if re.match(pattern, name):
                out[re.sub(pattern, target, name)] = value
                break
        else:
            raise ValueError(f"unexpected BLIP ViT key {key!r}: only the ImageReward BLIP layout is supported")
    return out


def blip_configs(state: dict[str, torch.Tensor], med: dict) -> tuple[BlipVisionConfig, BlipTextConfig]:
    """Vision config from the ViT's shapes (BLIP ViTs use 64-wide heads, LayerNorm eps 1e-6), text config from
    med_config.json with the cross-attention width of the checkpoint."""
    width, _, patch, _ = state[f"{VIT}patch_embed.proj.weight"].shape
    grid = round((state[f"{VIT}pos_embed"].shape[1] - 1) ** 0.5)
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state[f"{VIT}blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len({k.split(".")[3] for k in state if k.startswith(f"{VIT}blocks.")}),
        num_attention_heads=width // 64,
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )
    text = BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=state[f"{TEXT}encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=None,
        sep_token_id=None,
        is_decoder=True,  # builds the cross-attention layers; forward runs with a bidirectional mask
    )
    return vision, text


class ImageRewardReward(FrozenReward):
    """ImageReward: (mlp(text [CLS] state cross-attending to the image) - mean) / std, (B,) float32."""

    def __init__(self, vision: BlipVisionModel, text: BlipTextModel, head, tokenizer, *, name: str = "imagereward"):
        super().__init__()
        self.vision = vision
        self.text = text
        self.head = head
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = vision.config.image_size
        self._token_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        freeze(self)

    def tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B,) -> input_ids, attention_mask (B, 35), cached per prompt (the text encoder itself
        depends on the image, so only tokenisation can be cached)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._token_cache]
        if new:
            tok = self.tokenizer(new, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            self._token_cache.update(zip(new, zip(tok["input_ids"], tok["attention_mask"])))
        ids, mask = zip(*(self._token_cache[p] for p in prompts))
        return torch.stack(ids), torch.stack(mask)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts (B,) -> rewards (B,) float32."""
        check_inputs(images, prompts)
        dtype = self.head[0].weight.dtype
        pixels = clip_preprocess(images, self.image_size, dtype=dtype)  # (B, 3, S, S)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # (B, 1 + N, Dv)
        ids, mask = self.tokens(prompts)
        out = self.text(
            input_ids=ids.to(images.device),
            attention_mask=mask.to(images.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=images.device),
        )
        cls = out.last_hidden_state[:, 0]  # (B, D)
        return ((self.head(cls).float() - MEAN) / STD).squeeze(-1)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32):
        """path: ImageReward.pt, a folder with ImageReward.pt + med_config.json (+ tokenizer), a hub id, or None."""
        file = find_file(path, ["ImageReward.pt"], REPO, "imagereward")
        local = path is not None and Path(path).exists()  # else None or a hub id: med_config.json from the hub too
        config_file = find_file(str(file.parent) if local else path, ["med_config.json"], REPO, "imagereward")
        state = load_state_dict(file)
        require_keys(state, REQUIRED + [f"mlp.layers.{i}.weight" for i in HEAD_LINEARS], file, "an ImageReward checkpoint")
        vision_config, text_config = blip_configs(state, json.loads(config_file.read_text()))
        vision = BlipVisionModel(vision_config)
        vision.load_state_dict(blip_vision_state(state), strict=True)
        text = BlipTextModel(text_config, add_pooling_layer=False)
        text_state = {k.removeprefix(TEXT): v for k, v in state.items() if k.startswith(TEXT) and "position_ids" not in k}
        text.load_state_dict(text_state, strict=True)
        head = preference_head(state, prefix="mlp.layers.")
        tokenizer = load_tokenizer(path, TOKENIZER_REPO, "imagereward")
        return cls(vision, text, head, tokenizer).to(device=device, dtype=dtype)

"""OpenCLIP (open_clip / the hpsv2 fork) state dict -> transformers CLIPModel, so that HPSv2 runs without
open_clip (which needs torchvision) and without the hpsv2 wheel.

The layouts differ only in names, fused attention and transposed projections:
  visual.conv1 -> vision_model.embeddings.patch_embedding, visual.class_embedding -> ...class_embedding,
  visual.positional_embedding -> ...position_embedding.weight, visual.ln_pre -> pre_layrnorm,
  visual.ln_post -> post_layernorm, visual.proj (W, E) -> visual_projection.weight (E, W),
  *.transformer.resblocks.i.{ln_1, ln_2, mlp.c_fc, mlp.c_proj, attn.out_proj} ->
  *.encoder.layers.i.{layer_norm1, layer_norm2, mlp.fc1, mlp.fc2, self_attn.out_proj},
  attn.in_proj_{weight,bias} (3W, ...) -> self_attn.{q,k,v}_proj (split in that order),
  token_embedding, positional_embedding, ln_final, text_projection (W, E) -> text_model.* / text_projection.weight.
OpenCLIP pools the text at argmax(token id), i.e. the end-of-text token (the largest id); transformers pools
at the first eos_token_id, which we set to vocab_size - 1: the same position for tokenizer output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import CLIPConfig

OPENCLIP_KEYS = [
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_pre.weight",
    "visual.ln_post.weight",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
    "logit_scale",
]

BLOCK_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "self_attn.out_proj"}
PLAIN_NAMES = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "logit_scale": "logit_scale",
}
LAYER_NORMS = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
               "ln_final": "text_model.final_layer_norm"}
BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass(frozen=True)
class OpenClipArch:
    """What the state dict does not say: attention head widths and the MLP activation. Defaults: ViT-H-14."""

    vision_head_width: int = 80
    text_head_width: int = 64
    hidden_act: str = "gelu"  # open_clip uses exact GELU unless the model is a QuickGELU ("-quickgelu") one


def _num_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k.split(".")[prefix.count(".")] for k in state if k.startswith(prefix)})


def openclip_config(state: dict[str, torch.Tensor], arch: OpenClipArch) -> CLIPConfig:
    """A CLIPConfig read off the shapes of an OpenCLIP state dict."""
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vocab, text_width = state["token_embedding.weight"].shape
    vision = dict(
        hidden_size=vision_width,
        intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_num_layers(state, "visual.transformer.resblocks."),
        num_attention_heads=vision_width // arch.vision_head_width,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=arch.hidden_act,
        layer_norm_eps=1e-5,
    )
    text = dict(
        vocab_size=vocab,
        hidden_size=text_width,
        intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_num_layers(state, "transformer.resblocks."),
        num_attention_heads=text_width // arch.text_head_width,
        max_position_embeddings=state["positional_embedding"].shape[0],
        hidden_act=arch.hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=0,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["visual.proj"].shape[1])


def openclip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/split/transpose an OpenCLIP state dict into transformers' CLIPModel layout (every key mapped;
    an unknown key raises ValueError, so a different architecture cannot load silently)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in PLAIN_NAMES:
            out[PLAIN_NAMES[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key.rsplit(".", 1)[0] in LAYER_NORMS:
            base, kind = key.rsplit(".", 1)
            out[f"{LAYER_NORMS[base]}.{kind}"] = value
        elif key.endswith("attn_mask"):
            continue  # the causal mask buffer some open_clip versions saved; transformers builds its own
        else:
            out.update(_block_entries(key, value))
    return out


def _block_entries(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    match = BLOCK.match(key.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias"))
    if match is None:
        raise ValueError(f"unexpected OpenCLIP key {key!r}: only the ViT CLIP layout of HPSv2 is supported")
    visual, index, name, kind = match.groups()
    tower = "vision_model" if visual else "text_model"
    prefix = f"{tower}.encoder.layers.{index}"
    if name == "attn.in_proj":
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}.self_attn.{p}_proj.{kind}": t.contiguous() for p, t in zip("qkv", (q, k, v))}
    if name not in BLOCK_NAMES:
        raise ValueError(f"unexpected OpenCLIP key {key!r}: only the ViT CLIP layout of HPSv2 is supported")
    return {f"{prefix}.{BLOCK_NAMES[name]}.{kind}": value}

"""Tiny, random, offline stand-ins for the reward backbones and tokenizers (built in memory, never downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

WORDS = "a an the photo of cat dog red blue green square circle on left right above below two three big small".split()


def tiny_tokenizer(bos: str = "<sot>", eos: str = "<eot>", lowercase: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: <pad>=0, <unk>=1, words, then bos and eos last, so that eos has the largest id
    (OpenCLIP pools the text at argmax(token id))."""
    vocab = {"<pad>": 0, "<unk>": 1}
    for w in WORDS:
        vocab[w] = len(vocab)
    vocab[bos] = len(vocab)
    vocab[eos] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase() if lowercase else None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token=bos, eos_token=eos)


def tiny_clip_config(vocab_size: int, eos_id: int, image_size: int = 32, patch: int = 8, act: str = "quick_gelu") -> CLIPConfig:
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, eos_token_id=eos_id, bos_token_id=eos_id - 1, pad_token_id=0, hidden_act=act)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=image_size,
                  patch_size=patch, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def tiny_clip(seed: int = 0, **kwargs) -> tuple[CLIPModel, PreTrainedTokenizerFast]:
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(len(tok), tok.eos_token_id, **kwargs)).eval()
    return model, tok


def save_tiny_clip(folder, seed: int = 0, **kwargs) -> CLIPModel:
    """Write a tiny CLIP in transformers layout (config.json + model.safetensors + tokenizer) to `folder`."""
    model, tok = tiny_clip(seed, **kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def photos() -> list[torch.Tensor]:
    """The scikit-image photos astronaut, coffee, chelsea as float (3, H, W) tensors in [0, 1]."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1).float() / 255
        out.append(img)
    return out

"""ImageReward: the official checkpoint layout (BLIP ViT + med.py BERT + MLP) loaded onto transformers' BLIP
modules, against a reference forward.

The vision reference is BLIP's ViT (timm style: cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm; LayerNorm eps 1e-6) written here; the text reference is
transformers' BlipTextModel, whose parameter names are BLIP's med.py names.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.rewards_tiny import tiny_tokenizer
from helpers.reward_checks import OfficialMLP
from helpers.reward_checks import grad_checks
from helpers.reward_checks import randomize_norms
from torch import nn
from transformers import BlipTextConfig
from transformers.models.blip.modeling_blip_text import BlipTextModel

from leapalign.rewards import load_reward
from leapalign.rewards.imagereward import MEAN, STD
from leapalign.rewards.preprocess import clip_preprocess

MED = {"vocab_size": 25, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
       "max_position_embeddings": 40, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
       "add_cross_attention": True, "encoder_width": 128}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1) @ v  # (B, heads, N, d/heads)
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class BlipViT(nn.Module):
    def __init__(self, dim=128, depth=2, patch=8, image=32):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.1)
        self.blocks = nn.ModuleList([Block(dim, dim // 64) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_imagereward")
    tok = tiny_tokenizer(bos="[CLS]", eos="[SEP]")
    assert len(tok) <= MED["vocab_size"]
    torch.manual_seed(0)
    vit = BlipViT().eval()
    config = BlipTextConfig(**{k: MED[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                    "num_attention_heads", "max_position_embeddings")},
                            encoder_hidden_size=128, is_decoder=True, bos_token_id=None, sep_token_id=None)
    text = BlipTextModel(config, add_pooling_layer=False).eval()
    mlp = OfficialMLP(32).eval()
    for module in (vit, text):
        randomize_norms(module)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]  # stored by old transformers
    state["blip.vision_proj.weight"] = torch.zeros(4, 128)  # retrieval projections: present, unused
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(MED))
    tok.save_pretrained(folder)
    return folder, vit, text, mlp, tok


def test_imagereward_matches_reference(ir_dir):
    folder, vit, text, mlp, tok = ir_dir
    reward = load_reward("imagereward", path=str(folder))
    prompts = ["a red square", "two blue circles on the left of a green square"]
    images = torch.rand(2, 3, 45, 64)
    r = grad_checks(reward, images, prompts)
    enc = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        embeds = vit(clip_preprocess(images, 32))
        out = text(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], encoder_hidden_states=embeds,
                   encoder_attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))
        expected = ((mlp(out.last_hidden_state[:, 0]) - MEAN) / STD).squeeze(-1)
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-5)
    # The image matters (cross-attention is wired), and so does the prompt.
    assert not torch.allclose(r, reward(images.flip(0), prompts))
    assert not torch.allclose(r, reward(images, prompts[::-1]))


def test_imagereward_errors(tmp_path, ir_dir):
    with pytest.raises(FileNotFoundError, match=r"\['ImageReward.pt'\].*huggingface.co/THUDM/ImageReward"):
        load_reward("imagereward", path=str(tmp_path))
    (tmp_path / "ImageReward.pt").write_bytes((ir_dir[0] / "ImageReward.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"\['med_config.json'\]"):
        load_reward("imagereward", path=str(tmp_path))
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps(MED))
    with pytest.raises(ValueError, match="not an ImageReward checkpoint.*lacks 'blip.visual_encoder.cls_token'"):
        load_reward("imagereward", path=str(tmp_path))

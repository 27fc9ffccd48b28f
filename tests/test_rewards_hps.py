"""HPSv2/HPSv2.1: the OpenCLIP -> transformers key mapping against a reference OpenCLIP-layout module.

The reference below re-implements open_clip's ViT CLIP (nn.MultiheadAttention with fused in_proj, class token,
ln_pre/ln_post, argmax-token text pooling, causal mask) with open_clip's parameter names, because open_clip
itself needs torchvision, which cannot be installed here.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from helpers.reward_checks import randomize_norms
from helpers.rewards_tiny import save_tiny_clip, tiny_tokenizer
from helpers.reward_checks import grad_checks
from torch import nn

from leapalign.rewards import load_reward
from leapalign.rewards.openclip_keys import openclip_to_transformers
from leapalign.rewards.preprocess import clip_preprocess


class ResBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x, mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResBlock(width, heads) for _ in range(layers)])

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class Visual(nn.Module):
    def __init__(self, width=160, layers=2, heads=2, patch=8, image=32, embed=24):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.proj = nn.Parameter(torch.randn(width, embed) * width**-0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, N, W)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class OpenClipRef(nn.Module):
    """open_clip.CLIP (ViT) in miniature, with open_clip's state dict names. Text heads: width // 64."""

    def __init__(self, vocab: int, width=128, layers=2, context=16, embed=24):
        super().__init__()
        self.visual = Visual(embed=embed)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        self.transformer = Transformer(width, layers, width // 64)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)

    def encode_text(self, ids):
        x = self.transformer(self.token_embedding(ids) + self.positional_embedding, self.attn_mask)
        x = self.ln_final(x)
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection

    def hps(self, pixels, ids):
        """The official hpsv2 score: diag(normalised image features @ normalised text features^T)."""
        img = nn.functional.normalize(self.visual(pixels), dim=-1)
        txt = nn.functional.normalize(self.encode_text(ids), dim=-1)
        return (img @ txt.T).diagonal()


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_hps")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    ref = OpenClipRef(len(tok)).eval()
    randomize_norms(ref)
    torch.save({"state_dict": ref.state_dict()}, folder / "HPS_v2.1_compressed.pt")
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, folder / "HPS_v2_compressed.pt")
    tok.save_pretrained(folder)
    return folder, ref, tok


@pytest.mark.parametrize("name", ["hpsv21", "hpsv2"])
def test_hps_matches_reference_openclip_module(hps_dir, name):
    folder, ref, tok = hps_dir
    reward = load_reward(name, path=str(folder))
    prompts = ["a red square on the left", "two blue circles"]
    images = torch.rand(2, 3, 48, 40)
    r = grad_checks(reward, images, prompts)
    ids = tok(prompts, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = ref.hps(clip_preprocess(images, 32), ids)
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-5)


def test_every_openclip_key_maps_once_and_shapes_fit(hps_dir):
    from transformers import CLIPModel

    from leapalign.rewards.openclip_keys import OpenClipArch, openclip_config

    state = hps_dir[1].state_dict()
    mapped = openclip_to_transformers(state)
    model = CLIPModel(openclip_config(state, OpenClipArch()))
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    assert set(mapped) == expected
    assert sum(v.numel() for v in mapped.values()) == sum(v.numel() for v in state.values())
    with pytest.raises(ValueError, match="unexpected OpenCLIP key 'visual.transformer.resblocks.0.ls_1.gamma'"):
        openclip_to_transformers({**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(3)})


def test_wrong_or_missing_checkpoint(tmp_path):
    save_tiny_clip(tmp_path)  # a PickScore-style transformers CLIP folder
    with pytest.raises(FileNotFoundError, match=r"\['HPS_v2.1_compressed.pt'\].*huggingface.co/xswu/HPSv2"):
        load_reward("hpsv21", path=str(tmp_path))
    with pytest.raises(ValueError, match="not an OpenCLIP HPS checkpoint.*lacks 'visual.conv1.weight'"):
        load_reward("hpsv21", path=str(tmp_path / "model.safetensors"))

"""LAION aesthetic predictor: the official MLP layout loaded onto a tiny CLIP, against a reference forward."""

from __future__ import annotations

import pytest
import torch
from helpers.reward_checks import OfficialMLP
from helpers.rewards_tiny import save_tiny_clip
from helpers.reward_checks import grad_checks
from torch import nn

from leapalign.rewards import load_reward
from leapalign.rewards.aesthetic import HEAD_FILE
from leapalign.rewards.preprocess import clip_preprocess


@pytest.fixture(scope="module")
def aesthetic_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_aesthetic")
    clip = save_tiny_clip(folder)
    torch.manual_seed(1)
    head = OfficialMLP(clip.config.projection_dim).eval()
    torch.save(head.state_dict(), folder / HEAD_FILE)
    return folder, clip, head


def test_aesthetic_matches_official_forward(aesthetic_dir):
    folder, clip, head = aesthetic_dir
    reward = load_reward("aesthetic", path=str(folder / HEAD_FILE))
    images = torch.rand(3, 3, 50, 36)
    r = grad_checks(reward, images, ["x", "y", "z"])
    with torch.no_grad():  # official: embed = clip.encode_image(preprocess(pil)); embed /= norm; mlp(embed)
        embed = clip.visual_projection(clip.vision_model(pixel_values=clip_preprocess(images, 32)).pooler_output)
        expected = head(embed / embed.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(r, reward(images, ["other", "prompts", "ignored"]))


def test_aesthetic_errors(tmp_path, aesthetic_dir):
    with pytest.raises(FileNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE.pth.*improved-aesthetic-predictor"):
        load_reward("aesthetic", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no path given; download sac"):
        load_reward("aesthetic")
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / HEAD_FILE)
    with pytest.raises(ValueError, match="not the aesthetic MLP head.*lacks 'layers.0.weight'"):
        load_reward("aesthetic", path=str(tmp_path))
    folder = aesthetic_dir[0]
    torch.save(OfficialMLP(7).state_dict(), tmp_path / HEAD_FILE)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ValueError, match="takes 7-d embeddings but the CLIP backbone gives 24-d"):
        load_reward("aesthetic", path=str(tmp_path))

"""CLIP score, PickScore and the REWARDS registry on tiny random transformers CLIP models (offline)."""

from __future__ import annotations

import pytest
import torch
from helpers.reward_checks import grad_checks
from helpers.rewards_tiny import save_tiny_clip

from leapalign.rewards import REWARDS, load_reward
from leapalign.rewards.preprocess import clip_preprocess

PROMPTS = ["a red square", "two blue circles on the left"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    model = save_tiny_clip(folder)
    return folder, model


def reference_logits(model, tok, images, prompts):
    """transformers' own CLIPModel forward (logits_per_image diagonal) on our preprocessed pixels."""
    enc = tok(prompts, padding="max_length", max_length=16, return_tensors="pt")
    pixels = clip_preprocess(images, 32)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal()


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_clip_rewards_match_transformers_and_reach_pixels(clip_dir, name):
    folder, model = clip_dir
    reward = load_reward(name, path=str(folder))
    images = torch.rand(2, 3, 40, 56)
    r = grad_checks(reward, images, PROMPTS)
    ref = reference_logits(model, reward.tokenizer, images, PROMPTS)
    scale = 1.0 if name == "pickscore" else model.logit_scale.exp().item()
    torch.testing.assert_close(r, ref / scale, rtol=1e-5, atol=1e-5)


def test_text_features_cached_per_prompt(clip_dir):
    reward = load_reward("clip", path=str(clip_dir[0]))
    calls = []
    tokenizer = reward.tokenizer
    reward.tokenizer = lambda prompts, **kw: calls.append(list(prompts)) or tokenizer(prompts, **kw)
    images = torch.rand(1, 3, 32, 32).expand(3, -1, -1, -1)  # same image: rewards differ only by prompt
    first = reward(images, ["a cat", "a dog", "a cat"])
    second = reward(images, ["a dog", "a cat", "a cat"])
    assert calls == [["a cat", "a dog"]]
    torch.testing.assert_close(first[[0, 2]], second[[1, 2]])


def test_bf16_reward_runs_and_reaches_pixels(clip_dir):
    reward = load_reward("clip", path=str(clip_dir[0]), dtype=torch.bfloat16)
    r = grad_checks(reward, torch.rand(2, 3, 32, 32), PROMPTS)
    assert r.dtype == torch.float32


def test_missing_and_wrong_files_give_one_line_errors(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match="config.json.*huggingface.co/openai/clip-vit-large-patch14"):
        load_reward("clip", path=str(tmp_path))
    hps_like = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, hps_like)
    with pytest.raises(ValueError, match="needs a transformers CLIP folder"):
        load_reward("pickscore", path=str(hps_like))
    (tmp_path / "config.json").write_text((clip_dir[0] / "config.json").read_text())
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="not a transformers CLIP checkpoint.*lacks 'vision_model"):
        load_reward("pickscore", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a hub id"):
        load_reward("clip", path=str(tmp_path / "nowhere" / "x"))


def test_bad_inputs_are_rejected(clip_dir):
    reward = load_reward("clip", path=str(clip_dir[0]))
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(torch.rand(2, 3, 32, 32), ["only one"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(torch.rand(3, 32, 32), ["a"])


def my_factory(path=None, *, device="cpu", dtype=torch.float32):
    return lambda images, prompts: images.mean(dim=(1, 2, 3))


def test_registry_names_user_paths_and_errors(clip_dir):
    assert {"hpsv2", "hpsv21", "pickscore", "clip", "aesthetic", "imagereward", "shapes"} <= set(REWARDS)
    assert load_reward("test_rewards_clip:my_factory")(torch.ones(2, 3, 4, 4), ["a", "b"]).tolist() == [1.0, 1.0]
    reward = load_reward("leapalign.rewards.clip:ClipReward", path=str(clip_dir[0]))
    assert reward.name == "clip"
    with pytest.raises(ValueError, match="unknown reward 'hps'; valid names: aesthetic, clip, detector, geneval, "):
        load_reward("hps")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.mod'"):
        load_reward("no_such_pkg.mod:fn")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_reward("leapalign.rewards.clip:nope")

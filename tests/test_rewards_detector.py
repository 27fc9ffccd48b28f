"""The OWLv2 detector reward on a tiny random OWLv2 (offline): shapes, range, pixel gradients, frozen
parameters, the soft terms on hand-made logits, and one-line errors."""

from __future__ import annotations

import pytest
import torch
from helpers.rewards_tiny import tiny_tokenizer
from transformers import Owlv2Config, Owlv2ForObjectDetection

from leapalign.geneval.prompts import parse_prompt
from leapalign.rewards import load_reward
from leapalign.rewards.detector import DetectorReward, phrases_of

PROMPTS = ["a photo of a red circle and a blue square", "a photo of two circles",
           "a photo of a circle left of a square"]


def save_tiny_owlv2(folder, seed: int = 0) -> None:
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id - 1,
                pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_owlv2")
    save_tiny_owlv2(folder)
    return load_reward("detector", path=str(folder))


def test_scores_in_range_with_pixel_gradients_and_frozen_weights(reward):
    x = torch.rand(3, 3, 24, 40, requires_grad=True)  # non-square: padded to a square like OWLv2's processor
    r = reward(x, PROMPTS)
    assert r.shape == (3,) and r.dtype == torch.float32 and ((r >= 0) & (r <= 1)).all()
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for i in range(3):  # every image's own score reaches its own pixels
        assert x.grad[i].abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
    reward.train()
    assert not reward.training


def test_batch_invariance(reward):
    x = torch.rand(3, 3, 32, 32)
    together = reward(x, PROMPTS)
    alone = torch.stack([reward(x[i:i + 1], PROMPTS[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_terms_follow_the_clauses(reward):
    meta = parse_prompt("a photo of a circle left of a square")
    index = {"a circle": 0, "a square": 1}
    boxes = torch.tensor([[0.0, 0.4, 0.2, 0.6], [0.7, 0.4, 0.9, 0.6]])  # box 0 on the left, box 1 on the right
    circle_left = torch.tensor([[8.0, -8.0], [-8.0, 8.0]])  # (P, Q): the circle is box 0, the square box 1
    presence_a, presence_b, position = reward.terms(circle_left, boxes, meta, index)
    assert presence_a > 0.99 and presence_b > 0.99 and position > 0.99
    assert reward.terms(circle_left.flip(1), boxes, meta, index)[2] < 0.01
    count = parse_prompt("a photo of two circles")
    two = torch.tensor([[8.0], [8.0]])
    assert reward.terms(two, boxes, count, {"a circle": 0})[1] > 0.99
    # the same object found twice (identical boxes) counts once: far from two
    assert reward.terms(two, boxes[:1].repeat(2, 1), count, {"a circle": 0})[1] < 0.6


def test_colour_term_prefers_the_asked_colour(reward):
    meta = parse_prompt("a photo of a red circle")
    phrases = phrases_of(meta)
    index = {p: i for i, p in enumerate(phrases)}
    logits = torch.full((2, len(phrases)), -5.0)
    logits[0, index["a circle"]] = 5.0
    logits[0, index["a red circle"]] = 4.0
    red = reward.terms(logits, torch.rand(2, 4), meta, index)[1]
    logits[0, index["a red circle"]], logits[0, index["a blue circle"]] = -5.0, 4.0
    blue = reward.terms(logits, torch.rand(2, 4), meta, index)[1]
    assert red > 0.9 and blue < 0.1


def test_unparseable_prompt_and_bad_path(reward, tmp_path):
    with pytest.raises(ValueError, match="cannot parse"):
        reward(torch.rand(1, 3, 32, 32), ["a cat surfing at sunset"])
    with pytest.raises(FileNotFoundError, match="owlv2") as err:
        DetectorReward.from_pretrained(str(tmp_path))
    assert "\n" not in str(err.value)


def test_usable_in_a_composite(tmp_path):
    from leapalign.rewards.composite import CompositeReward, CompositeTerm

    save_tiny_owlv2(tmp_path)
    composite = CompositeReward.from_terms([CompositeTerm("detector", weight=2.0, path=str(tmp_path))])
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    r = composite(x, PROMPTS[:2])
    r.sum().backward()
    assert r.shape == (2,) and x.grad.abs().sum() > 0

"""Rule rewards: partial credit by hand on made-up scenes, 1 exactly when GenEval's verdict is correct, no gradient,
refused by the direct-gradient methods and taken by the GRPO family; the real-model `geneval` reward on a tiny
random Mask2Former + CLIP (its scores mean nothing)."""

import json
import random

import pytest
import torch
from helpers.rewards_tiny import save_tiny_clip, tiny_clip
from test_geneval_command import tiny_mask2former

from leapalign.geneval.credit import clause_scores, partial_score
from leapalign.geneval.evaluator import GenEvalDetector
from leapalign.geneval.prompts import load_metadata, parse_prompt
from leapalign.geneval.rules import COLORS, Detection, evaluate_image
from leapalign.methods import METHODS
from leapalign.methods.grpo import FlowGRPOConfig
from leapalign.rewards import load_reward, require_differentiable
from leapalign.rewards.clip import ClipReward
from leapalign.rewards.geneval_reward import GenEvalReward, GenEvalStrictReward
from leapalign.shapes.evaluator import check, detect
from leapalign.shapes.render import SceneBatch, render

SHAPE = {"circle": 0, "square": 1, "triangle": 2}
COLOUR = {"red": 0, "green": 1, "blue": 2, "yellow": 3, "purple": 4, "cyan": 5}


def scene(*objects):
    """objects: (shape, colour, cx, cy, r) on a 32x32 canvas -> (1, 3, 32, 32) image."""
    pad = [(-1, 0, 0.0, 0.0, 0.0)] * (4 - len(objects))
    rows = [(SHAPE[s], COLOUR[c], x, y, r) for s, c, x, y, r in objects] + pad
    return render(SceneBatch(shapes=torch.tensor([[r[0] for r in rows]]), colors=torch.tensor([[r[1] for r in rows]]),
                             centers=torch.tensor([[[r[2], r[3]] for r in rows]]),
                             radii=torch.tensor([[r[4] for r in rows]]), size=32))


# (caption, scene, clauses that hold / clauses): counting = count + exclude, position = 2 counts + relation,
# colour attribution = 2 counts + 2 colours
HAND = [
    ("a photo of two circles", [("circle", "red", 8, 16, 4)], [0.5, 1.0]),
    ("a photo of two circles", [("circle", "red", 6, 8, 4), ("circle", "blue", 16, 24, 4),
                                ("circle", "green", 26, 8, 4)], [1.0, 0.0]),
    ("a photo of two circles", [("circle", "red", 8, 16, 4), ("circle", "blue", 24, 16, 4)], [1.0, 1.0]),
    ("a photo of a circle left of a square", [("circle", "red", 24, 16, 4), ("square", "blue", 8, 16, 4)],
     [1.0, 1.0, 0.0]),
    ("a photo of a circle left of a square", [("circle", "red", 8, 16, 4)], [0.0, 1.0, 0.0]),
    ("a photo of a red circle and a blue square", [("circle", "red", 8, 16, 4), ("square", "green", 24, 16, 4)],
     [1.0, 1.0, 1.0, 0.0]),
    ("a photo of a red circle", [("triangle", "red", 16, 16, 5)], [0.0, 0.0]),
]


@pytest.mark.parametrize("caption,objects,expected", HAND)
def test_partial_credit_on_hand_made_scenes(caption, objects, expected):
    images = scene(*objects)
    partial = load_reward("shapes-rules")(images, [caption])
    strict = load_reward("shapes-rules-strict")(images, [caption])
    assert partial.dtype == torch.float32 and float(partial) == pytest.approx(sum(expected) / len(expected))
    assert float(strict) == float(check(caption, detect(images)[0])) == float(all(e == 1 for e in expected))


def test_partial_score_is_one_exactly_when_the_geneval_verdict_is_correct():
    rows = load_metadata()
    rng = random.Random(0)
    agree = {True: 0, False: 0}
    for _ in range(3000):
        meta = rng.choice(rows)
        classes = [r["class"] for r in meta["include"]] + ["dog"]
        dets = []
        for _ in range(rng.randint(0, 5)):
            x, y = rng.uniform(0, 80), rng.uniform(0, 80)
            dets.append(Detection(rng.choice(classes), rng.uniform(0.2, 1.0), (x, y, x + rng.uniform(5, 30),
                                                                                y + rng.uniform(5, 30)),
                                  rng.choice(COLORS[:3])))
        correct, _ = evaluate_image(dets, meta)
        score = partial_score(clause_scores(dets, meta))
        assert (score == 1.0) == correct and 0 <= score <= 1
        agree[correct] += 1
    assert min(agree.values()) > 50  # both verdicts exercised


def test_rule_rewards_need_no_gradient_and_direct_gradient_methods_refuse_them(tmp_path):
    images = scene(("circle", "red", 8, 16, 4)).requires_grad_(True)
    r = load_reward("shapes-rules")(images, ["a photo of a red circle"])
    assert not r.requires_grad and float(r) == 1.0
    for name in ("shapes-rules", "shapes-rules-strict", "geneval", "geneval-strict"):
        with pytest.raises(ValueError, match="non-differentiable rule verdict; train it with method.name=flow_grpo"):
            require_differentiable(["shapes", name], "leapalign")
    require_differentiable(["shapes", "shapes-compose", "helpers.toy:toy_reward"], "refl")
    with pytest.raises(ValueError, match="loads no weights"):
        load_reward("shapes-rules", path="x.safetensors")

    from helpers.toy import toy_config

    from leapalign.trainer import train

    for method in ("leapalign", "refl", "draft_lv", "drtune", "full"):
        with pytest.raises(ValueError, match=f"method {method} needs the reward's gradient"):
            train(toy_config(tmp_path / method, method__name=method, method__args={}, reward__name="shapes-rules"),
                  progress=False)
    assert not (tmp_path / "leapalign" / "run" / "final").exists()
    from leapalign.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "reward=shapes-rules", "methods=flow_grpo,refl"]) == 2
    assert not (tmp_path / "demo" / "runs").exists()


def test_grpo_trains_on_the_rule_reward_without_its_gradient():
    p = torch.nn.Parameter(torch.tensor(0.5))
    target = scene(("circle", "red", 16, 16, 6))  # the velocity field flows every sample towards this scene

    def velocity(x, sigma, cond):
        return (x - target) / sigma.clamp(min=1e-3).view(-1, 1, 1, 1) * (1 + p - p.detach())

    reward = load_reward("shapes-rules")
    g = 4
    noise = torch.randn(2 * g, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1, 0, 5)
    prompts = ["a photo of a red circle"] * g + ["a photo of two circles"] * g
    out = METHODS["flow_grpo"].step(velocity, noise, sigmas, None, lambda x: reward(x.clamp(0, 1), prompts),
                                    FlowGRPOConfig(group_size=g, noise_level=0.3), torch.Generator().manual_seed(1))
    assert 0 <= out.metrics["reward"] <= 1 and out.loss.requires_grad
    out.loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad)


# ---- the real-model reward on tiny random models ----

@pytest.fixture(scope="module")
def detector():
    model, tok = tiny_clip()
    return GenEvalDetector(tiny_mask2former(), ClipReward(model, tok), short_side=64, long_side=96, min_score=0.0)


PROMPTS = ["a photo of a red circle", "a photo of a circle and a square", "a photo of two circles",
           json.dumps({"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "blue"},
                                                        {"class": "square", "count": 1, "color": "red"}],
                       "prompt": "a blue circle and a red square"})]


def test_geneval_reward_is_the_evaluators_verdict_batched(detector):
    images = torch.rand(4, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    metas = [json.loads(p) if p.startswith("{") else parse_prompt(p) for p in PROMPTS]
    strict = GenEvalStrictReward(detector, batch_size=3)(images, PROMPTS)
    assert strict.tolist() == [float(r["correct"]) for r in detector.evaluate(images, metas)]
    partial = GenEvalReward(detector, batch_size=3)(images, PROMPTS)
    expected = [partial_score(clause_scores(detector.with_colors(im, m, d), m))
                for im, m, d in zip(images, metas, detector.detect(images))]
    torch.testing.assert_close(partial, torch.tensor(expected))
    torch.testing.assert_close(GenEvalReward(detector, batch_size=1)(images, PROMPTS), partial)
    assert ((partial == 1) == (strict == 1)).all() and partial.device == images.device
    with pytest.raises(ValueError, match="not a GenEval metadata row"):
        GenEvalReward(detector)(images[:1], ['{"tag": "colors"}'])
    with pytest.raises(ValueError, match="cannot parse"):
        GenEvalReward(detector)(images[:1], ["an image of stuff"])


def test_geneval_reward_loads_offline_from_one_folder(tmp_path):
    with pytest.raises(ValueError, match="detector/ .* and clip/"):
        load_reward("geneval")
    tiny_mask2former().save_pretrained(tmp_path / "detector")
    save_tiny_clip(tmp_path / "clip")
    reward = load_reward("geneval-strict", path=str(tmp_path))
    assert isinstance(reward, GenEvalStrictReward) and reward.detector.device.type == "cpu"
    assert reward(torch.rand(2, 3, 32, 32), PROMPTS[:2]).shape == (2,)

"""The demo's protocol pieces: caption sets, lr choice, paired differences and their bootstrap, layout matching."""

import pytest
import torch

from leapalign.demo import analysis, protocol
from leapalign.shapes.evaluator import DetectedObject
from leapalign.shapes.prompts import CATEGORIES, heldout_prompts, parse_prompt, validation_pool


def test_validation_captions_are_training_compositions_disjoint_from_heldout():
    val = protocol.validation_prompts(8, seed=0)
    held = heldout_prompts()
    assert val and not set(val) & set(held)
    held_keys = {parse_prompt(p).composition for p in held}
    assert not {parse_prompt(p).composition for p in val} & held_keys
    assert set(val) <= {p.text for p in validation_pool()}
    assert val == protocol.validation_prompts(8, seed=0) and val != protocol.validation_prompts(8, seed=1)
    cats = [parse_prompt(p).category for p in val]
    assert cats == sorted(cats, key=CATEGORIES.index)  # grouped by category
    assert set(cats) == set(CATEGORIES)  # tuning sees every category
    assert all(cats.count(c) == min(8, sum(p.category == c for p in validation_pool())) for c in set(cats))


def test_heldout_set_meets_the_minimums():
    cs = protocol.heldout_set(16, 8, 128)
    cats = [parse_prompt(p).category for p in cs.prompts]
    for c in CATEGORIES:
        n_caps = sum(parse_prompt(t).category == c for t in cs.captions)
        assert n_caps == min(16, sum(parse_prompt(t).category == c for t in heldout_prompts()))
        assert cats.count(c) >= 128
    assert min(cs.unit.count(u) for u in range(len(cs.captions))) >= 8
    assert all(cs.prompts[i] == cs.captions[u] for i, u in enumerate(cs.unit))


def test_choose_lr_by_overall_then_reward():
    assert protocol.choose_lr({1e-5: {"overall": 0.4, "reward": 0.1}, 3e-5: {"overall": 0.5, "reward": 0.0}}) == 3e-5
    assert protocol.choose_lr({1e-5: {"overall": 0.5, "reward": 0.2}, 3e-5: {"overall": 0.5, "reward": 0.1}}) == 1e-5


def _set(captions, repeats):
    return protocol.expand(captions, repeats, 1)


def test_paired_differences_use_matching_samples():
    caps = ["a photo of two circles", "a photo of three squares", "a photo of a circle left of a square"]
    cs = _set(caps, 2)  # 6 samples: caption 0 x2, caption 1 x2, caption 2 x2
    a = [torch.tensor([1, 1, 0, 1, 1, 0.]), torch.tensor([1, 0, 0, 0, 1, 1.])]  # seeds 0, 1
    b = [torch.tensor([0, 1, 0, 0, 0, 0.]), torch.tensor([1, 0, 1, 1, 1, 1.])]
    units = protocol.paired_units(a, b, cs)
    # counting: (caption 0, seed 0) (caption 1, seed 0) (caption 0, seed 1) (caption 1, seed 1)
    torch.testing.assert_close(units["counting"], torch.tensor([0.5, 0.5, 0.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(units["position"], torch.tensor([0.5, 0.0], dtype=torch.float64))
    # a shuffled copy of b (same values, other samples) gives another answer: the pairing matters
    shuffled = [x.flip(0) for x in b]
    assert not torch.equal(protocol.paired_units(a, shuffled, cs)["counting"], units["counting"])
    with pytest.raises(ValueError, match="same samples"):
        protocol.paired_units(a, b[:1], cs)
    ci = protocol.bootstrap(units, 500, seed=0)
    assert ci["counting"][0] == pytest.approx(0.0) and ci["position"][0] == pytest.approx(0.25)
    assert ci["overall"][0] == pytest.approx(0.125)
    assert ci == protocol.bootstrap(units, 500, seed=0)  # seeded


def test_bootstrap_interval_covers_the_true_difference():
    # synthetic: 40 units with true mean difference 0.1; the 95% interval covers it in most of 100 trials
    covered = 0
    for trial in range(100):
        g = torch.Generator().manual_seed(trial)
        units = {"x": 0.1 + 0.3 * torch.randn(40, generator=g, dtype=torch.float64)}
        _, lo, hi = protocol.bootstrap(units, 2000, seed=trial)["x"]
        covered += lo <= 0.1 <= hi
    assert 88 <= covered <= 100


def test_layout_matching_by_colour_and_shape():
    def obj(shape, color, x, y):
        return DetectedObject(shape, color, (x - 2, y - 2, x + 2, y + 2), 16.0)

    base = [[obj("circle", "red", 10, 10), obj("square", "blue", 20, 20)],
            [obj("circle", "red", 10, 10)],
            [obj("circle", "red", 10, 10)]]
    tuned = [[obj("square", "blue", 21, 20), obj("circle", "red", 10, 13)],  # moved 3 and 1 px: unchanged
             [obj("circle", "green", 10, 10)],  # colour changed: a vanished red + an appeared green circle
             [obj("circle", "red", 20, 10)]]  # moved 10 px > 3.2 px
    assert analysis.match_objects(base[0], tuned[0]) == ([1.0, 3.0], 0)  # blue square, then red circle
    assert analysis.match_objects(base[1], tuned[1]) == ([], 2)
    stats = analysis.layout_stats(base, tuned)
    assert stats["layout_change_rate"] == pytest.approx(2 / 3)
    assert stats["displacement_px"] == pytest.approx((3 + 1 + 10) / 3)


def test_step_histogram_splits_by_next_reward():
    hist = analysis.step_histogram([[{"k": 0, "reward": 0.1}, {"k": 2, "reward": 0.3}, {"k": 2, "reward": 0.2},
                                     {"k": 1, "reward": 0.5}]], lambda r: r["k"], 4)
    assert hist == {"raised": [1, 0, 1, 0], "other": [0, 0, 1, 0]}


def test_reachable_steps_at_the_demo_T():
    assert protocol.reachable_steps("refl", {}, 10) == "t in 6-9 (one step)"
    assert "0 <= k < j <= 9" in protocol.reachable_steps("leapalign", {}, 10)
    assert "5 <= k < j <= 9" in protocol.reachable_steps("leapalign", {"min_step": 5}, 10)
    assert protocol.reachable_steps("draft_lv", {}, 10).startswith("9 ")
    assert "t_min in 6-9" in protocol.reachable_steps("drtune", {}, 10)

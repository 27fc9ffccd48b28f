"""The composition reward (shapes-compose): soft GenEval rules on hand-made parser maps, gradients, errors, and
the shipped parser on renders."""

import pytest
import torch

from leapalign.rewards import load_reward
from leapalign.rewards.shapes_compose import ShapesComposeReward
from leapalign.shapes.checkpoint import SHIPPED, load_parser, save_model
from leapalign.shapes.parser import N_CLASSES, ParserConfig, ParserMaps, ShapesParser, caption_terms, compose_score
from leapalign.shapes.parser_train import ParserTrainConfig, draw, train_parser
from leapalign.shapes.prompts import COLORS, SHAPES
from leapalign.shapes.render import SceneBatch


def _scene(objects, size=32):
    """objects: (shape, colour, cx, cy, r) tuples -> SceneBatch of one scene."""
    n = 4
    pad = [("circle", "red", 0.0, 0.0, 0.0)] * (n - len(objects))
    objs = list(objects) + pad
    return SceneBatch(shapes=torch.tensor([[SHAPES.index(o[0]) if i < len(objects) else -1 for i, o in enumerate(objs)]]),
                      colors=torch.tensor([[COLORS.index(o[1]) for o in objs]]),
                      centers=torch.tensor([[[o[2], o[3]] for o in objs]]), radii=torch.tensor([[o[4] for o in objs]]),
                      size=size)


def _ideal_maps(scene):
    """What a perfect parser outputs for a scene: one-hot classes and unit-mass blobs at the centres."""
    _, target, density = draw(scene, torch.Generator().manual_seed(0))
    seg = torch.nn.functional.one_hot(target, 1 + N_CLASSES).permute(0, 3, 1, 2).float()
    return ParserMaps(seg, density.view(1, len(COLORS), len(SHAPES), *density.shape[-2:]))


RED_CIRCLE_LEFT = [("circle", "red", 8.0, 16.0, 4.5), ("square", "blue", 24.0, 16.0, 4.5)]


@pytest.mark.parametrize("wrong", [
    "a photo of a blue circle and a red square",  # colours swapped (binding)
    "a photo of a green circle and a blue square",  # wrong colour
    "a photo of a circle right of a square",  # wrong position
    "a photo of a square left of a circle",
    "a photo of a circle and a triangle",  # missing object
    "a photo of two circles",  # wrong count
])
def test_soft_rules_prefer_the_true_caption_on_ideal_maps(wrong):
    maps = _ideal_maps(_scene(RED_CIRCLE_LEFT))
    true = ["a photo of a red circle and a blue square", "a photo of a circle left of a square",
            "a photo of a square right of a circle", "a photo of a circle and a square", "a photo of a red circle"]
    good = compose_score(ParserMaps(maps.seg.expand(len(true), -1, -1, -1),
                                    maps.density.expand(len(true), -1, -1, -1, -1)), true)
    assert (good > 0.9).all(), good
    assert float(compose_score(maps, [wrong])) < 0.1
    terms = caption_terms(maps, [wrong])
    assert all(0 <= float(t) <= 1 for t in terms.values())


def test_soft_count_and_mixed_classes():
    three = _ideal_maps(_scene([("triangle", "green", 6.0, 6.0, 4.0), ("triangle", "red", 26.0, 6.0, 4.0),
                                ("triangle", "cyan", 16.0, 26.0, 4.0)]))
    scores = compose_score(ParserMaps(three.seg.expand(3, -1, -1, -1), three.density.expand(3, -1, -1, -1, -1)),
                           ["a photo of two triangles", "a photo of three triangles", "a photo of four triangles"])
    assert scores[1] > 0.9 and scores[0] < 0.05 and scores[2] < 0.05
    # an object painted as an even blend of two classes loses its purity
    mixed = three.seg.clone()
    fg = mixed[:, 1:].sum(1, keepdim=True)
    mixed[:, 1:] = fg * torch.full((1, N_CLASSES, 1, 1), 1.0 / N_CLASSES)
    assert float(caption_terms(ParserMaps(mixed, three.density), ["a photo of three triangles"])["purity"]) < 0.1


def test_gradient_reaches_pixels_without_parameter_gradients_and_bad_captions_fail():
    torch.manual_seed(0)
    reward = ShapesComposeReward(ShapesParser(ParserConfig(width=8, dilations=(1, 2))).double())
    img = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    prompts = ["a photo of a red circle and a blue square", "a photo of a triangle above a circle"]
    # fast_mode: checks a random projection of the Jacobian (the full one is 6144 columns, minutes on a CPU)
    assert torch.autograd.gradcheck(lambda x: reward(x, prompts), (img,), eps=1e-6, atol=1e-5, fast_mode=True)
    reward(img, prompts).sum().backward()
    assert img.grad.abs().sum() > 0 and all(p.grad is None and not p.requires_grad for p in reward.model.parameters())
    with pytest.raises(ValueError, match="not a ShapesWorld caption"):
        reward(img, ["a photo of a dog", "a photo of a circle"])
    with pytest.raises(ValueError, match="two different shapes"):
        reward(img, ["a photo of a circle left of a circle", "a photo of a circle"])
    with pytest.raises(ValueError, match="prompts"):
        reward(img, ["a photo of a circle"])


def test_training_runs_and_checkpoint_round_trips(tmp_path):
    cfg = ParserTrainConfig(steps=2, batch_size=4, warmup=1, model=ParserConfig(width=8, dilations=(1,)))
    model = train_parser(cfg)
    assert not any(p.requires_grad for p in model.parameters())
    save_model(model, tmp_path / "compose", {"seed": 0})
    assert load_parser(tmp_path / "compose").cfg == model.cfg
    with pytest.raises(ValueError, match="not a 'flow' model"):
        from leapalign.shapes.checkpoint import load_flow_model
        load_flow_model(tmp_path / "compose")


@pytest.mark.skipif(not SHIPPED["parser"].is_file(), reason="shipped parser not present")
def test_shipped_parser_separates_correct_from_incorrect_renders():
    from leapalign.shapes.parser_eval import compose_accuracy

    reward = load_reward("shapes-compose")
    assert isinstance(reward, ShapesComposeReward)
    acc = compose_accuracy(reward.model, n=128, corruptions=("clean", "blur x2"))
    assert acc["clean"]["ranking"] >= 0.9 and acc["blur x2"]["ranking"] >= 0.85


def test_smooth_attack_stays_in_the_ball_and_is_smooth():
    from leapalign.shapes.parser_eval import smooth_attack

    torch.manual_seed(0)
    model = ShapesParser(ParserConfig(width=8, dilations=(1,))).eval().requires_grad_(False)
    images = torch.rand(2, 3, 32, 32) * 0.8 + 0.1
    eps = torch.tensor([0.05, 0.1])
    captions = ["a photo of a red circle", "a photo of two squares"]
    x = smooth_attack(model, images, captions, eps, steps=3, g=torch.Generator().manual_seed(0), factor=8)
    delta = x - images
    assert (delta.abs().flatten(1).amax(1) <= eps + 1e-6).all()
    # bilinear upsampling of a 4x4 grid: neighbouring pixels differ by at most a 1/8 step of the grid's range
    assert (delta[..., 1:] - delta[..., :-1]).abs().max() <= 2 * eps.max() / 8 + 1e-6
    assert not any(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="must divide"):
        smooth_attack(model, images, captions, eps, steps=1, g=torch.Generator(), factor=5)

"""ShapesWorld networks, adapter, reward wrapper, checkpoints and training loops (tiny models, CPU, seconds)."""

import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from leapalign.adapters.shapes import ShapesAdapter
from leapalign.allocator import keep_freed_memory
from leapalign.flow import sample_trajectory
from leapalign.rewards.shapes import ShapesReward
from leapalign.shapes.checkpoint import SHIPPED, load_flow_model, load_reward_model, save_model
from leapalign.shapes.evaluator import check, scene_objects
from leapalign.shapes.model import (FlowModelConfig, GeluTanh, ShapesFlowModel, TextEncoderConfig, _attention,
                                   tokenize)
from leapalign.shapes.batches import sample_prompts
from leapalign.shapes.pretrain import FlowPretrainConfig, pretrain_flow
from leapalign.shapes.reward_train import RewardTrainConfig, reward_accuracy, reward_hackability, train_reward
from leapalign.shapes.prompts import perturbations
from leapalign.shapes.render import render, sample_scenes
from leapalign.shapes.reward_model import RewardModelConfig, ShapesRewardModel

TEXT = TextEncoderConfig(dim=16, depth=1, heads=2)


def tiny_flow(seed=0):
    torch.manual_seed(seed)
    m = ShapesFlowModel(FlowModelConfig(image_size=16, patch=4, dim=32, depth=2, heads=2, text=TEXT))
    for p in m.dit.parameters():  # adaLN-Zero starts as a zero map; randomise so tests see a real function
        p.data.normal_(0, 0.2)
    return m.eval()


def tiny_reward(seed=0):
    torch.manual_seed(seed)
    return ShapesRewardModel(RewardModelConfig(image_size=16, width=8, embed_dim=16, text=TEXT))


def test_tokenize_rejects_unknown_words_and_pads():
    ids, mask = tokenize(["a photo of a red circle", ""])
    assert mask[0].sum() == 6 and mask[1].sum() == 1  # "" is the <null> caption
    with pytest.raises(ValueError, match="vocabulary"):
        tokenize(["a photo of a dog"])


def test_gelu_sigmoid_form_is_the_tanh_gelu_with_its_derivative():
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    u = (2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)
    closed = 0.5 * x * (1 + torch.tanh(u))  # the tanh form, written out
    dclosed = 0.5 * (1 + torch.tanh(u)) + 0.5 * x * (1 - torch.tanh(u) ** 2) * (2 / torch.pi) ** 0.5 * (
        1 + 3 * 0.044715 * x ** 2)
    y = GeluTanh()(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, closed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, dclosed.detach(), rtol=1e-12, atol=1e-12)
    x32 = torch.randn(4096) * 4
    torch.testing.assert_close(GeluTanh()(x32), F.gelu(x32, approximate="tanh"), rtol=2e-6, atol=2e-6)
    assert torch.autograd.gradcheck(GeluTanh(), (torch.randn(20, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("masked", [False, True])
def test_written_out_attention_matches_the_fused_kernel(masked):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k, v = (torch.randn(3, 2, 7, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    mask = torch.rand(3, 1, 1, 7, generator=g) > 0.5 if masked else None
    if masked:
        mask[..., 0] = True  # every query attends to at least one key
    ours = _attention(q, k, v, mask)
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / 8 ** 0.5
    weights = logits.exp() * (1.0 if mask is None else mask)  # softmax over the attended keys, written out
    closed = torch.einsum("bhnm,bhmd->bhnd", weights / weights.sum(-1, keepdim=True), v)
    torch.testing.assert_close(ours, closed, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours.square().sum(), (q, k, v)),
                    torch.autograd.grad(closed.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and the fused kernel it replaces (whose float64 CPU backward is accurate to about 1e-6 only)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, fused, rtol=1e-5, atol=1e-5)


def test_attention_softmax_runs_in_float32_under_bf16_inputs():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 4, 8, generator=g) for _ in range(3))
    out = _attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v), rtol=0.05, atol=0.05)


def test_keep_freed_memory_applies_on_glibc():
    applied = keep_freed_memory()
    assert isinstance(applied, bool)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied


def test_padding_does_not_change_the_velocity():
    m = tiny_flow()
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([0.7, 0.2])
    tokens, mask, pooled = m.encode(["a photo of a red circle", "a photo of two squares"])
    full = m.dit(x, s, tokens, mask, pooled)
    n = int(mask.sum(1).max())  # drop trailing padding: masked attention must make it irrelevant
    short_tokens, short_pooled = m.text_encoder(tokenize(["a photo of a red circle", "a photo of two squares"])[0][:, :n],
                                                mask[:, :n])
    assert torch.allclose(full, m.dit(x, s, short_tokens, mask[:, :n], short_pooled), atol=1e-5)
    other = m.dit(x, s, *m.encode(["a photo of a blue circle", "a photo of two squares"]))
    assert not torch.allclose(full[0], other[0]) and torch.allclose(full[1], other[1], atol=1e-6)


def test_adapter_guidance_is_batch_doubled_cfg():
    m = tiny_flow()
    prompts = ["a photo of a circle left of a square", "a photo of three triangles"]
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([0.9, 0.4])
    plain = ShapesAdapter(m)
    v_c = plain.velocity(x, s, plain.encode_prompts(prompts))
    v_u = plain.velocity(x, s, plain.encode_prompts(["", ""]))
    guided = ShapesAdapter(m, guidance_scale=4.0)
    assert torch.allclose(guided.velocity(x, s, guided.encode_prompts(prompts)), v_u + 4.0 * (v_c - v_u), atol=1e-4)
    with pytest.raises(ValueError, match="guidance_scale"):
        ShapesAdapter(m, guidance_scale=0.5)


def test_adapter_protocol_and_sampling():
    a = ShapesAdapter(tiny_flow())
    assert a.latent_shape(16, 16) == (3, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        a.latent_shape(18, 18)
    assert set(map(id, a.trainable_parameters())) == set(map(id, a.transformer.parameters()))
    assert all(not p.requires_grad for p in a.model.text_encoder.parameters())
    noise = a.noise(2, torch.Generator().manual_seed(0), size=16)
    prompts = ["a photo of a red circle", "a photo of a square"]
    traj = sample_trajectory(a.velocity, noise, a.sigmas(4, 16, 16), a.encode_prompts(prompts))
    assert torch.equal(a.generate(prompts, 4, noise), a.decode(traj.sample))
    x = torch.linspace(-0.9, 0.9, 3 * 16 * 16).view(1, 3, 16, 16).requires_grad_()
    a.decode(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.5))  # decode = (x + 1) / 2 inside the range


def test_reward_gradient_reaches_pixels_exactly():
    model = tiny_reward().double()
    reward = ShapesReward(model)
    prompts = ["a photo of a red circle and a blue square"]
    img = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: reward(x, prompts), (img,), eps=1e-6, atol=1e-5)
    big = torch.rand(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)  # resized in torch
    assert torch.autograd.gradcheck(lambda x: reward(x, prompts), (big,), eps=1e-6, atol=1e-5)
    assert all(not p.requires_grad for p in model.parameters())
    # cached caption features are the model's own
    assert torch.allclose(reward.text_features(prompts), model.embed_texts(prompts))


def test_checkpoint_round_trip_and_errors(tmp_path):
    m, r = tiny_flow(), tiny_reward()
    save_model(m, tmp_path / "flow", {"seed": 0})
    save_model(r, tmp_path / "reward", {"seed": 0})
    m16 = tiny_flow()
    for p in m16.parameters():  # checkpoints store float16: compare against the same rounding
        p.data = p.data.half().float()
    x, s = torch.randn(1, 3, 16, 16), torch.tensor([0.5])
    assert torch.equal(load_flow_model(tmp_path / "flow")(x, s, ["a photo of a square"]),
                       m16(x, s, ["a photo of a square"]))
    assert load_reward_model(tmp_path / "reward").cfg == r.cfg
    with pytest.raises(ValueError, match="not a 'flow' model"):
        load_flow_model(tmp_path / "reward")
    with pytest.raises(FileNotFoundError, match="leapalign shapes pretrain"):
        load_flow_model(tmp_path / "missing")


def test_hard_negatives_are_false_and_training_learns_them():
    g = torch.Generator().manual_seed(0)
    prompts = sample_prompts(64, g)
    truth = scene_objects(sample_scenes(prompts, g))
    for p, t in zip(prompts, truth):
        assert check(p, t)
        assert any(not check(q, t) for q in perturbations(p))
    cfg = RewardTrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5, log_every=40,
                            model=RewardModelConfig(image_size=16, width=8, embed_dim=32, text=TEXT))
    logs = []
    train_reward(cfg, lambda step, m: logs.append(m))
    assert logs[-1]["hard_negative_acc"] > 0.6  # chance is 0.5


def test_flow_pretraining_reduces_loss_and_respects_mix():
    g = torch.Generator().manual_seed(0)
    only_counting = tuple(1.0 if i == 2 else 0.0 for i in range(6))
    assert {p.category for p in sample_prompts(50, g, only_counting)} == {"counting"}
    logs = []
    cfg = FlowPretrainConfig(steps=30, batch_size=16, lr=2e-3, warmup=3, log_every=5,
                             model=FlowModelConfig(image_size=16, patch=4, dim=32, depth=1, heads=2, text=TEXT))
    pretrain_flow(cfg, lambda step, m: logs.append(m["loss"]))
    assert sum(logs[-2:]) < sum(logs[:2])
    with pytest.raises(ValueError, match="mix"):
        FlowPretrainConfig(mix=(1.0, 0.0))


@pytest.mark.skipif(not SHIPPED["reward"].is_file(), reason="shipped reward checkpoint not present")
def test_shipped_reward_prefers_true_captions_and_resists_pixel_attacks():
    model = load_reward_model()
    assert reward_accuracy(model, n=64) > 0.85
    hack = reward_hackability(model, eps=0.1, steps=5, n=32)
    assert hack["adversarial_gain"] < 0 and hack["noise_gain"] < 0  # the contrastive-only reward gained +0.095


@pytest.mark.skipif(not SHIPPED["flow"].is_file(), reason="shipped flow checkpoint not present")
def test_shipped_flow_model_draws_held_out_colour_captions_at_its_documented_rate():
    # docs/shapesworld.md: colours 0.95 on the held-out captions at guidance 3 and 20 steps (4 noise seeds); these
    # 48 samples scored 0.83, 0.90, 0.90 with noise seeds 0, 1, 2. A rate of 0.85 falls below 0.7 with probability
    # < 0.5%; a broken model, sampler, schedule or guidance scores near 0 (the pixel clamp guarantees nothing here).
    from leapalign.shapes.evaluator import evaluate
    from leapalign.shapes.prompts import heldout_prompts, parse_prompt

    a = ShapesAdapter.from_pretrained(guidance_scale=3.0)
    captions = [p for p in heldout_prompts() if parse_prompt(p).category == "colors"]
    prompts = (captions * 48)[:48]
    with torch.no_grad():
        images = a.generate(prompts, 20, a.noise(len(prompts), torch.Generator().manual_seed(0)))
    assert images.shape == (48, 3, 32, 32)
    assert sum(evaluate(images, prompts)) / len(prompts) >= 0.7


def test_shapes_cli_rejects_bad_input(capsys, tmp_path):
    from leapalign.cli import main

    assert main(["shapes", "eval", "--seeds", "0"]) == 2
    assert main(["shapes", "eval", "--model", str(tmp_path / "none")]) == 2
    assert "leapalign shapes pretrain" in capsys.readouterr().err

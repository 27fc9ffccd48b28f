"""Device parity without a GPU: forward, sampling, reward and method code run on a stand-in accelerator
(helpers/device_check.py: `meta` backed by CPU memory) and must never mix a CPU tensor into a device op.

The check can fail for the right reason: it flags the exact pattern that crashed ShapesWorld training on CUDA
(`torch.addcmul(torch.full((), C, dtype=x.dtype), x, x)`: "CPU Scalar support for self argument is not
supported"), and the stand-in computes real values, equal to the CPU run's.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.device_check import DEVICE, on_stand_in_device, to_stand_in

from leapalign.adapters import load_adapter
from leapalign.demo.parallel import velocity_change
from leapalign.evaluate import sample_images, score_images
from leapalign.methods import METHODS
from leapalign.reference import ReferenceVelocity
from leapalign.rewards import load_reward
from leapalign.shapes.model import _GELU_A, _GELU_C, _gelu_gate

PROMPTS = ["a photo of a red circle", "a photo of a square left of a triangle"]


def _clean(record) -> None:
    assert not record.mixups, "device mix-ups:\n" + "\n".join(map(str, record.mixups[:10]))


def test_the_check_flags_a_cpu_scalar_in_a_device_op_and_a_cpu_generator_drawing_on_the_device():
    x = torch.randn(5)
    with on_stand_in_device() as record:
        xd = x.to(DEVICE)
        torch.addcmul(torch.full((), _GELU_C, dtype=xd.dtype), xd, xd, value=_GELU_C * _GELU_A)  # the CUDA crash
        torch.randn(3, generator=torch.Generator().manual_seed(0), device=DEVICE)
    assert [m.op for m in record.mixups] == ["aten.addcmul.default", "aten.randn.generator"]
    assert record.mixups[0].devices == ["cpu ()", "device", "device"]
    with on_stand_in_device() as record:  # transfers are not mix-ups; values are real
        xd = x.to(DEVICE)
        gate = _gelu_gate(xd)
        back = gate.cpu()
    _clean(record)
    assert gate.device == DEVICE and back.device.type == "cpu"
    assert torch.equal(back, _gelu_gate(x))
    assert torch.allclose(back, torch.sigmoid(_GELU_C * (x + _GELU_A * x ** 3)), atol=1e-6)


@pytest.fixture(scope="module")
def shapes():
    """The shipped ShapesWorld model with guidance (batch doubling), a copy as the frozen base, both rewards."""
    torch.manual_seed(0)
    return (load_adapter("shapes", None, guidance_scale=3.0), load_adapter("shapes", None, guidance_scale=3.0),
            {n: load_reward(n) for n in ("shapes", "shapes-compose")})


def _method_args(name: str) -> dict:
    args = {"group_size": 2, "kl_beta": 0.1} if "grpo" in name else {}
    return {**args, "window_size": 2} if name == "mix_grpo" else args


def _run_every_method(adapter, rewards):
    """One step of every method (reward gradient and policy gradient, KL on) with backward; -> losses."""
    sigmas = adapter.sigmas(4, 32, 32)
    losses = {}
    for name, method in METHODS.items():
        cfg = method.config(**_method_args(name))
        prompts = [p for p in PROMPTS for _ in range(method.samples_per_prompt(cfg))]
        reward = rewards["shapes" if name in ("refl", "flow_grpo") else "shapes-compose"]
        extra = {"iteration": 0} if method.uses_iteration else {}
        if method.needs_reference(cfg):
            extra["reference"] = ReferenceVelocity(adapter.velocity, adapter.trainable_parameters())
        noise = adapter.noise(len(prompts), torch.Generator().manual_seed(1))
        out = method.step(adapter.velocity, noise, sigmas, adapter.encode_prompts(prompts),
                          lambda x0, p=prompts: reward(adapter.decode(x0), p), cfg, torch.Generator().manual_seed(2),
                          **extra)
        if out.loss.requires_grad:
            out.loss.backward()
        losses[name] = float(out.loss.detach())
    return losses


def test_shapes_world_forward_sampling_rewards_and_every_method_step_stay_on_the_device(shapes):
    adapter, base, rewards = shapes
    cpu_images = sample_images(adapter, PROMPTS, num_steps=3, height=32, width=32).images
    with on_stand_in_device() as record:
        for module in (adapter.model, base.model, *(r.model for r in rewards.values())):
            to_stand_in(module)
        losses = _run_every_method(adapter, rewards)
        samples = sample_images(adapter, PROMPTS, num_steps=3, height=32, width=32)
        for reward in rewards.values():
            score_images(samples.images, PROMPTS, reward, geneval=False, device=DEVICE)
        change = velocity_change(adapter, base, PROMPTS, 3, seed=0)
    _clean(record)
    assert adapter.transformer.out.weight.device == DEVICE
    # the stand-in ran the real computation (composite ops decompose differently off the CPU key: ~1e-7 apart)
    assert torch.allclose(samples.images, cpu_images, atol=1e-5) and samples.images.device.type == "cpu"
    assert change == [0.0, 0.0, 0.0]
    assert all(math.isfinite(v) for v in losses.values()) and losses["leapalign"] != 0


def test_tiny_flux_and_sd3_adapters_with_lora_stay_on_the_device():
    from helpers.tiny_pipelines import flux_pipeline, sd3_pipeline

    from leapalign.adapters.flux import FluxAdapter
    from leapalign.adapters.lora import LoraConfig, apply_lora
    from leapalign.adapters.sd3 import SD3Adapter

    for adapter in (FluxAdapter(flux_pipeline(), guidance_scale=3.5, max_sequence_length=16),
                    SD3Adapter(sd3_pipeline(), guidance_scale=2.0, max_sequence_length=16)):
        apply_lora(adapter, LoraConfig(rank=4, targets="default"))
        with on_stand_in_device() as record:
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
                if getattr(adapter.pipe, name, None) is not None:
                    to_stand_in(getattr(adapter.pipe, name))
            cond = adapter.encode_prompts(PROMPTS)
            noise = torch.randn(2, *adapter.latent_shape(32, 32), generator=torch.Generator().manual_seed(0))
            for name in ("leapalign", "draft_lv"):
                method = METHODS[name]
                out = method.step(adapter.velocity, noise.to(adapter.device), adapter.sigmas(4, 32, 32), cond,
                                  lambda x0: adapter.decode(x0).mean((1, 2, 3)), method.config(),
                                  torch.Generator().manual_seed(0))
                out.loss.backward()
        _clean(record)
        assert all(p.grad is not None and p.grad.device == DEVICE for p in adapter.trainable_parameters())


def test_clip_reward_stays_on_the_device():
    from helpers.rewards_tiny import tiny_clip

    from leapalign.rewards.clip import ClipReward

    model, tok = tiny_clip()
    reward = ClipReward(model, tok)
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    expected = reward(images, PROMPTS)
    with on_stand_in_device() as record:
        to_stand_in(model)
        x = images.to(DEVICE).requires_grad_()
        r = reward(x, PROMPTS)
        r.sum().backward()
    _clean(record)
    assert torch.allclose(r.cpu(), expected, atol=1e-6) and x.grad.device == DEVICE


def test_the_training_loop_runs_on_the_device_and_matches_the_cpu(tmp_path, monkeypatch):
    """`leapalign train` (accelerate told to use the stand-in device): Flow-GRPO with its KL to the frozen reference
    (swapped in through .data), EMA, clipping and the final save; the logged metrics equal the CPU run's."""
    from leapalign.config import load_config
    from leapalign.trainer import train

    def config(name):
        return load_config("configs/shapes_flow_grpo.yaml", [
            "iterations=2", "batch_size=1", "model.num_steps=4", "method.args.kl_beta=0.1", "save_every=0",
            "logger=none", "resume=none", "eval.prompts=none", "ema_decay=0.9", f"output_dir={tmp_path / name}"])

    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cpu")
    cpu = train(config("cpu"), progress=False).history
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", str(DEVICE))
    with on_stand_in_device() as record:
        on_device = train(config("device"), progress=False).history
    _clean(record)
    assert on_device[-1]["kl"] > 0  # the reference differs from the policy after one step
    for key in ("loss", "kl", "reward", "grad_norm"):
        assert [h[key] for h in on_device] == pytest.approx([h[key] for h in cpu], rel=1e-4, abs=1e-7), key

"""The fast no-grad rollout paths compute the policy's own function: merged LoRA equals the unmerged rollout up to
rounding (fp32 and bf16) and never changes a weight; the compiled path (aot_eager: dynamo + AOT autograd, no
codegen, so CI needs no C compiler) is bitwise the plain one and compiles once across iterations."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_pipelines as tp
from leapalign.adapters.flux import FluxAdapter
from leapalign.adapters.lora import LoraConfig, apply_lora
from leapalign.fast_rollout import MergedLora, RolloutVelocity, choose_path
from leapalign.flow import sample_trajectory
from leapalign.reference import ReferenceVelocity


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo's compile cache is per code object and process-wide: start each test without earlier graphs."""
    torch._dynamo.reset()


def lora_flux(rank: int = 4, dropout: float = 0.0):
    adapter = FluxAdapter(tp.flux_pipeline())
    torch.manual_seed(0)
    params = apply_lora(adapter, LoraConfig(rank=rank, dropout=dropout, targets="default"))
    with torch.no_grad():  # B starts at 0; give the LoRA a visible effect
        for name, p in adapter.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return adapter, params


@pytest.fixture(scope="module")
def flux():
    adapter, params = lora_flux()
    cond = adapter.encode_prompts(["a red circle", "two blue squares"])
    noise = torch.randn(2, *adapter.latent_shape(32, 32), generator=torch.Generator().manual_seed(0))
    return adapter, params, cond, noise, adapter.sigmas(4, 32, 32)


def rollout(velocity, flux, dtype=torch.float32):
    adapter, _, cond, noise, sigmas = flux
    return sample_trajectory(velocity, noise.to(dtype), sigmas, cond.to(dtype=dtype)).latents.float()  # (T+1, B, ...)


def test_merged_rollout_equals_the_unmerged_one_up_to_rounding_in_fp32_and_bf16(flux):
    adapter, params, *_ = flux
    plain, merged = rollout(RolloutVelocity(adapter, "plain"), flux), rollout(RolloutVelocity(adapter, "merged"), flux)
    with torch.no_grad():  # the LoRA's own effect, so that a wrong merge (missing scale, no LoRA) cannot pass
        saved = [p.clone() for p in params if p.shape[0] != 4]
        for p in params:
            if p.shape[0] != 4:
                p.zero_()
        base = rollout(RolloutVelocity(adapter, "plain"), flux)
        for p, s in zip([p for p in params if p.shape[0] != 4], saved):
            p.copy_(s)
    fp32_dev, lora_effect = (merged - plain).abs().max(), (base - plain).abs().max()
    assert 0 < fp32_dev < 1e-5 * plain.abs().max() and lora_effect > 1e4 * fp32_dev  # measured 4.8e-7 of 4.54
    adapter.transformer.to(torch.bfloat16)
    try:
        plain16 = rollout(RolloutVelocity(adapter, "plain"), flux, torch.bfloat16)
        merged16 = rollout(RolloutVelocity(adapter, "merged"), flux, torch.bfloat16)
    finally:
        adapter.transformer.to(torch.float32)
    # merging moves the bf16 rollout by less than bf16 itself moves it from fp32 (measured 0.031 vs 0.094)
    assert 0 < (merged16 - plain16).abs().max() <= (plain16 - plain).abs().max()


def test_merge_cycles_leave_every_weight_bit_for_bit_unchanged(flux):
    adapter, params, cond, noise, sigmas = flux
    before = {k: v.clone() for k, v in adapter.transformer.state_dict().items()}
    layers = dict(adapter.transformer.named_modules())
    merged = MergedLora(adapter.transformer)
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():
        for i in range(30):
            for p in params:  # a changing LoRA forces a fresh merge every cycle
                p.mul_(-1)
            with merged.swapped():
                adapter.velocity(noise, sigma, cond)
    assert merged.merges == 30
    assert dict(adapter.transformer.named_modules()).keys() == layers.keys()
    assert all(m is layers[n] for n, m in adapter.transformer.named_modules())  # the LoRA modules are back
    after = adapter.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_merged_weights_follow_optimizer_steps_and_the_reference_swap(flux):
    adapter, params, cond, noise, sigmas = flux
    fast, plain = RolloutVelocity(adapter, "merged"), RolloutVelocity(adapter, "plain")
    reference = ReferenceVelocity(fast, params)  # the initial LoRA swapped in through .data (storage, no version)
    opt = torch.optim.AdamW(params, lr=1e-2)
    x, sigma = noise, torch.full((2,), 0.7)
    ref_before = reference(x, sigma, cond)
    for _ in range(2):
        opt.zero_grad()
        fast(x, sigma, cond).square().mean().backward()  # grad enabled: the training path, LoRA layers in place
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        opt.step()
        with torch.no_grad():
            for _ in range(2):  # policy, reference, policy: each sees its own weights
                torch.testing.assert_close(fast(x, sigma, cond), plain(x, sigma, cond), rtol=0, atol=1e-5)
                torch.testing.assert_close(reference(x, sigma, cond), ref_before, rtol=0, atol=0)
            assert (fast(x, sigma, cond) - ref_before).abs().max() > 1e-3  # training moved the policy
    assert fast.merged.merges >= 4


def test_compiled_rollout_is_bitwise_plain_and_compiles_once_across_iterations(flux):
    adapter, params, *_ = flux
    plain = RolloutVelocity(adapter, "plain")
    compiled = RolloutVelocity(adapter, "compiled", compile_backend="aot_eager")
    both = RolloutVelocity(adapter, "merged_compiled", compile_backend="aot_eager")
    opt = torch.optim.SGD(params, lr=1e-2)
    for _ in range(3):  # iterations: rollout, then a weight update
        reference = rollout(plain, flux)
        assert torch.equal(rollout(compiled, flux), reference)
        torch.testing.assert_close(rollout(both, flux), reference, rtol=0, atol=1e-5)
        opt.zero_grad()
        adapter.velocity(flux[3], torch.full((2,), 0.5), flux[2]).square().mean().backward()
        opt.step()
    for v in (compiled, both):  # by block: one graph for the double-stream block, one for the single-stream one
        assert (v.stats.compiles, v.stats.recompiles, v.stats.calls) == (2, 0, 12)


def test_regional_compile_reuses_one_graph_for_every_block_of_a_class():
    from diffusers import FluxTransformer2DModel

    adapter = FluxAdapter(tp.flux_pipeline())
    torch.manual_seed(0)
    adapter.transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=3, num_single_layers=5,
                                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                 pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=[4, 4, 8])
    flux = (adapter, None, adapter.encode_prompts(["a red circle"]),
            torch.randn(1, *adapter.latent_shape(32, 32), generator=torch.Generator().manual_seed(0)),
            adapter.sigmas(3, 32, 32))
    compiled = RolloutVelocity(adapter, "compiled", compile_backend="aot_eager")
    assert len(compiled.regions) == 8
    assert torch.equal(rollout(compiled, flux), rollout(RolloutVelocity(adapter, "plain"), flux))
    # 8 blocks, 3 graphs: each class once, and the single-stream class once more for its first block, whose input
    # (the concatenated streams) has other strides than the later blocks' inputs
    assert (compiled.stats.compiles, compiled.stats.recompiles) == (3, 0)


def test_auto_merges_a_lora_only_where_exact_and_bad_paths_fail_in_one_line():
    adapter, _ = lora_flux()
    assert choose_path("auto", adapter.transformer)[0] == "merged"
    dropped, _ = lora_flux(dropout=0.1)
    path, why = choose_path("auto", dropped.transformer)
    assert path == "plain" and "dropout" in why
    full = FluxAdapter(tp.flux_pipeline())
    assert choose_path("auto", full.transformer)[0] == "plain"
    with pytest.raises(ValueError, match="needs a LoRA model"):
        RolloutVelocity(full, "merged")
    with pytest.raises(ValueError, match="unknown rollout path 'fast'; choose one of: auto, plain"):
        RolloutVelocity(adapter, "fast")
    with pytest.raises(ValueError, match="unknown rollout dtype 'fp8'"):
        RolloutVelocity(adapter, "plain", dtype="fp8")


def test_bf16_rollout_is_opt_in_and_moves_the_fp32_rollout_by_bf16_rounding_only(flux):
    plain = rollout(RolloutVelocity(flux[0], "plain"), flux)
    low = rollout(RolloutVelocity(flux[0], "merged", dtype="bfloat16"), flux)
    assert 0 < (low - plain).abs().max() < 0.05 * plain.abs().max()


def test_sampling_takes_the_merged_path_by_default_for_a_lora(flux):
    from leapalign.evaluate import sample_images
    from leapalign.fast_rollout import merged_lora

    adapter = flux[0]
    merges = merged_lora(adapter.transformer).merges
    with torch.no_grad():
        for p in flux[1]:  # a new LoRA state: the default path must merge it
            p.mul_(-1)
    kwargs = dict(seed=0, num_steps=3, height=32, width=32)
    auto = sample_images(adapter, ["a red circle", "two blue squares"], **kwargs)
    assert merged_lora(adapter.transformer).merges == merges + 1
    plain = sample_images(adapter, ["a red circle", "two blue squares"], rollout="plain", **kwargs)
    assert 0 < (auto.latents - plain.latents).abs().max() < 1e-5

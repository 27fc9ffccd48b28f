"""LoRA presets, injection, diffusers-format export (load_lora_weights round trip) and merged-weight export."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from helpers import tiny_pipelines as tp
from leapalign.adapters.flux import FluxAdapter
from leapalign.adapters.lora import LoraConfig, apply_lora, save_lora, save_merged, set_full_finetuning
from leapalign.adapters.sd3 import SD3Adapter

SIZE = 32


def _train_like(params, seed=1):
    """Stand-in for training: random non-zero LoRA B (fresh LoRA is an exact no-op, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _velocity_inputs(adapter, prompts=("a red circle", "two green triangles")):
    x = torch.randn(len(prompts), *adapter.latent_shape(SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([0.8, 0.4]), adapter.encode_prompts(list(prompts))


@pytest.mark.parametrize("arch", ["flux", "sd3"])
def test_lora_export_loads_back_into_a_fresh_pipeline(arch, tmp_path):
    make = (lambda: FluxAdapter(tp.flux_pipeline(), max_sequence_length=tp.T5_LEN)) if arch == "flux" else \
        (lambda: SD3Adapter(tp.sd3_pipeline(), max_sequence_length=tp.T5_LEN))
    adapter = make()
    x, sigma, cond = _velocity_inputs(adapter)
    base_v = adapter.velocity(x, sigma, cond).detach()
    params = apply_lora(adapter, LoraConfig(rank=4, alpha=2.0, targets="default"))
    assert adapter.trainable_parameters() == params  # base weights frozen
    torch.testing.assert_close(adapter.velocity(x, sigma, cond), base_v)  # B = 0 at init
    _train_like(params)
    trained_v = adapter.velocity(x, sigma, cond).detach()
    assert (trained_v - base_v).abs().max() > 1e-3

    save_lora(adapter, tmp_path / "lora")
    fresh = make()  # same seeds -> same base weights, no LoRA
    fresh.pipe.load_lora_weights(tmp_path / "lora")
    torch.testing.assert_close(fresh.velocity(x, sigma, cond), trained_v, atol=1e-5, rtol=1e-4)


def test_merged_export_is_a_diffusers_model_with_the_trained_outputs(tmp_path):
    adapter = FluxAdapter(tp.flux_pipeline(), max_sequence_length=tp.T5_LEN)
    x, sigma, cond = _velocity_inputs(adapter)
    params = apply_lora(adapter, LoraConfig(rank=4, alpha=8.0, dropout=0.1, targets="all"))
    _train_like(params)
    adapter.transformer.eval()  # dropout off for the comparison
    trained_v = adapter.velocity(x, sigma, cond).detach()
    save_merged(adapter, tmp_path / "merged")
    adapter.pipe.transformer = FluxTransformer2DModel.from_pretrained(tmp_path / "merged")
    adapter.transformer = adapter.pipe.transformer
    assert not any("lora" in n for n, _ in adapter.transformer.named_parameters())
    torch.testing.assert_close(adapter.velocity(x, sigma, cond), trained_v, atol=1e-5, rtol=1e-4)


def test_full_finetuning_and_checkpointing_give_the_same_gradient():
    adapter = SD3Adapter(tp.sd3_pipeline(), max_sequence_length=tp.T5_LEN)
    params = set_full_finetuning(adapter)
    assert len(params) == len(list(adapter.transformer.parameters()))
    x, sigma, cond = _velocity_inputs(adapter)
    grads = []
    for checkpointing in (False, True):
        adapter.set_gradient_checkpointing(checkpointing)
        adapter.transformer.zero_grad()
        adapter.transformer.train()
        adapter.velocity(x, sigma, cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert adapter.transformer.is_gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_lora_bad_inputs():
    adapter = SD3Adapter(tp.sd3_pipeline(), guidance_scale=1.0, max_sequence_length=tp.T5_LEN)
    with pytest.raises(ValueError, match="unknown LoRA preset"):
        apply_lora(adapter, LoraConfig(targets="everything"))
    with pytest.raises(ValueError, match="matched no module"):
        apply_lora(adapter, LoraConfig(targets=["no_such_layer"]))
    with pytest.raises(ValueError, match="no LoRA to export"):
        save_lora(adapter, "/nonexistent/never-written")
    assert isinstance(adapter.transformer, SD3Transformer2DModel)

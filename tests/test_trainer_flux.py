"""The trainer on a tiny Flux directory: the embedding cache trains like the text encoders; LoRA runs export a
diffusers LoRA that `load_lora_weights` reads back with the trained outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from helpers.toy import toy_config

from leapalign.adapters.flux import FluxAdapter
from leapalign.models import load_trained
from leapalign.trainer import train


def flux_config(tmp_path, flux_dir, **overrides):
    model = {"adapter": "flux", "path": str(flux_dir), "height": 32, "width": 32, "num_steps": 2}
    return toy_config(tmp_path, **{"iterations": 1, "batch_size": 2, "model": model, **overrides})


def test_embedding_cache_trains_like_the_text_encoders(tmp_path, flux_dir):
    plain = train(flux_config(tmp_path / "plain", flux_dir), progress=False)
    cache = tmp_path / "cache"
    cached = train(flux_config(tmp_path / "cached", flux_dir, model__embedding_cache=str(cache)), progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 7  # the 7 training prompts of the toy config
    a, b = load_file(str(plain.weights)), load_file(str(cached.weights))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)  # batching noise of the encoders only


def test_embedding_cache_needs_a_diffusers_model(tmp_path):
    with pytest.raises(ValueError, match="embedding_cache needs a flux or sd3 model"):
        train(toy_config(tmp_path, iterations=1, model__embedding_cache=str(tmp_path / "c")), progress=False)


def test_lora_run_exports_a_diffusers_lora_with_the_trained_outputs(tmp_path, flux_dir):
    cfg = flux_config(tmp_path, flux_dir, iterations=2, ema_decay=0.0)
    cfg.model.lora_rank, cfg.model.lora_alpha = 4, 4.0
    result = train(cfg, progress=False)
    trained, _ = load_trained(result.output_dir / "final", ema=False)
    fresh = FluxAdapter.from_pretrained(str(flux_dir))  # the trainer loads with the default T5 length too
    cond = fresh.encode_prompts(["prompt number 1", "prompt number 4"])
    x = torch.randn(2, *fresh.latent_shape(32, 32), generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.7)
    with torch.no_grad():
        base_v = fresh.velocity(x, sigma, cond)
        fresh.pipe.load_lora_weights(result.output_dir / "final" / "lora")
        lora_v = fresh.velocity(x, sigma, cond)
        trained_v = trained.velocity(x, sigma, trained.encode_prompts(["prompt number 1", "prompt number 4"]))
    assert (trained_v - base_v).abs().max() > 1e-4  # training changed the model
    torch.testing.assert_close(lora_v, trained_v, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method,args", [("flow_grpo", {"group_size": 2, "kl_beta": 0.04}),
                                         ("mix_grpo", {"group_size": 2, "window_size": 1})])
def test_grpo_family_trains_a_flux_lora_with_a_kl_reference(tmp_path, flux_dir, method, args):
    # a 3-step rollout: two SDE steps (the last is deterministic); the KL reference is the LoRA at zero
    cfg = flux_config(tmp_path, flux_dir, iterations=2, ema_decay=0.0, method__name=method, method__args=args,
                      model={"adapter": "flux", "path": str(flux_dir), "height": 32, "width": 32, "num_steps": 3,
                             "lora_rank": 4, "lora_alpha": 4.0})
    result = train(cfg, progress=False)
    steps = [r for r in result.history if "loss" in r]
    assert len(steps) == 2 and all(r["skipped_steps"] == 0 for r in steps)
    assert "kl" not in steps[0] or steps[0]["kl"] == 0  # the first update starts at the reference itself
    weights = load_file(str(result.weights))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # B left zero

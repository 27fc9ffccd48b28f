"""Training with a fast rollout path equals training without it: ShapesWorld (full fine-tuning: merging is a no-op,
the compiled path bitwise equal) and a tiny random Flux with LoRA (merged: equal up to the rollout's rounding)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from helpers.toy import toy_config

from leapalign.trainer import train


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo's compile cache is per code object and process-wide: start each test without earlier graphs."""
    torch._dynamo.reset()


def weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.weights))


def shapes_config(tmp_path, **overrides):
    model = {"adapter": "shapes", "height": 32, "width": 32, "num_steps": 3}
    return toy_config(tmp_path, **{"iterations": 2, "batch_size": 2, "model": model, "ema_decay": 0.0,
                                   "reward__name": "shapes", "optim__lr": 1e-4, "data__prompts": "shapes:train",
                                   **overrides})


def test_shapes_training_with_the_compiled_rollout_equals_plain(tmp_path, capsys):
    plain = weights(train(shapes_config(tmp_path / "plain", model__rollout_path="plain"), progress=False))
    auto = weights(train(shapes_config(tmp_path / "auto"), progress=False))  # full fine-tuning: auto is plain
    compiled = weights(train(shapes_config(tmp_path / "compiled", model__rollout_path="compiled",
                                           model__rollout_compile_backend="aot_eager"), progress=False))
    err = capsys.readouterr().err
    assert "rollout: compiled" in err and "RECOMPILED" not in err  # compiled once, then reused by both iterations
    from leapalign.adapters.shapes import ShapesAdapter

    start = dict(ShapesAdapter.from_pretrained().transformer.named_parameters())
    assert plain.keys() == auto.keys() == compiled.keys()
    assert all(torch.equal(plain[k], auto[k]) and torch.equal(plain[k], compiled[k]) for k in plain)
    assert max((plain[k] - start[k].detach()).abs().max() for k in plain) > 1e-5  # training moved the weights


def flux_lora_config(tmp_path, flux_dir, **model):
    cfg = toy_config(tmp_path, iterations=2, batch_size=2, ema_decay=0.0,
                     model={"adapter": "flux", "path": str(flux_dir), "height": 32, "width": 32, "num_steps": 3,
                            "lora_rank": 4, **model})
    return cfg


def test_flux_lora_training_with_the_merged_rollout_equals_unmerged(tmp_path, flux_dir):
    plain = weights(train(flux_lora_config(tmp_path / "plain", flux_dir, rollout_path="plain"), progress=False))
    merged = weights(train(flux_lora_config(tmp_path / "merged", flux_dir), progress=False))  # auto = merged
    both = weights(train(flux_lora_config(tmp_path / "both", flux_dir, rollout_path="merged_compiled",
                                          rollout_compile_backend="aot_eager"), progress=False))
    assert plain.keys() == merged.keys() == both.keys() and all("lora" in k for k in plain)
    assert max(plain[k].abs().max() for k in plain if "lora_B" in k) > 1e-4  # B starts at 0: training moved it
    for k in plain:  # the rollouts differ by rounding only (test_fast_rollout.py), so do the trained weights
        torch.testing.assert_close(merged[k], plain[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(both[k], merged[k], rtol=1e-4, atol=1e-6)

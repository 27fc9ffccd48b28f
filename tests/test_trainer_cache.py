"""Training a tiny Flux with model.embedding_cache: same result as with text encoders, entries written once."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config

import tiny_pipelines as tp
from leapalign.trainer import train


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux")
    tp.flux_pipeline().save_pretrained(path)
    return path


def flux_config(tmp_path, flux_dir, **overrides):
    model = {"adapter": "flux", "path": str(flux_dir), "height": 32, "width": 32, "num_steps": 2}
    return toy_config(tmp_path, iterations=1, batch_size=2, model=model, **overrides)


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

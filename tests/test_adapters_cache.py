"""Embedding cache round trip, corruption/staleness detection, the `leapalign cache` CLI, and loading from disk."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_pipelines as tp
from leapalign.adapters import ADAPTERS, adapter_class, load_adapter
from leapalign.adapters.cache import EmbeddingCache, ensure_cache
from leapalign.adapters.flux import FluxAdapter
from leapalign.adapters.sd3 import SD3Adapter
from leapalign.cli import main

PROMPTS = ["a red circle", "two green triangles", "a photo of a cat on a mat"]


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd3")
    tp.sd3_pipeline().save_pretrained(path)
    return path


def _same(a, b):
    assert a.tensors().keys() == b.tensors().keys()
    for k in a.tensors():
        torch.testing.assert_close(a.tensors()[k], b.tensors()[k], atol=1e-5, rtol=1e-5)  # batching noise only


def test_cache_round_trip_and_rebuilds_corrupt_or_stale(tmp_path):
    adapter = SD3Adapter(tp.sd3_pipeline(), negative_prompt="blurry", max_sequence_length=tp.T5_LEN)
    assert ensure_cache(adapter, PROMPTS + PROMPTS[:1], tmp_path, batch_size=2) == 3
    cache = EmbeddingCache.for_adapter(tmp_path, adapter)
    _same(cache.load(PROMPTS[::-1]), adapter.encode_prompts(PROMPTS[::-1]))
    assert ensure_cache(adapter, PROMPTS, tmp_path) == 0  # valid entries are reused

    # A bit flip in the tensor bytes (file still parses) and a truncated file are both caught.
    flipped, truncated = cache.path(PROMPTS[0]), cache.path(PROMPTS[1])
    raw = bytearray(flipped.read_bytes())
    raw[-3] ^= 0x40
    flipped.write_bytes(bytes(raw))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    assert cache.invalid(PROMPTS) == PROMPTS[:2]
    with pytest.raises(ValueError, match="no valid entry for prompt 'a red circle'"):
        cache.load(PROMPTS)
    assert ensure_cache(adapter, PROMPTS, tmp_path) == 2
    _same(cache.load(PROMPTS), adapter.encode_prompts(PROMPTS))

    # Other settings (negative prompt) are other entries: never served from the old ones.
    adapter.negative_prompt = "ugly"
    assert EmbeddingCache.for_adapter(tmp_path, adapter).invalid(PROMPTS) == PROMPTS
    # An entry written for another prompt but placed under this prompt's name is stale.
    stale = EmbeddingCache(tmp_path, model=cache.model, settings=cache.settings, record_type=cache.record_type)
    stale.path(PROMPTS[2]).write_bytes(cache.path(PROMPTS[0]).read_bytes())
    assert stale.invalid(PROMPTS) == [PROMPTS[2]]


def test_training_without_text_encoders_uses_the_cache(tmp_path):
    adapter = FluxAdapter(tp.flux_pipeline(), max_sequence_length=tp.T5_LEN)
    expected = adapter.encode_prompts(PROMPTS)
    ensure_cache(adapter, PROMPTS, tmp_path)
    adapter.drop_text_encoders()
    with pytest.raises(ValueError, match="text encoders are not loaded"):
        adapter.encode_prompts(PROMPTS)
    cond = EmbeddingCache.for_adapter(tmp_path, adapter).load(PROMPTS)
    _same(cond, expected)
    x = torch.randn(2, *adapter.latent_shape(32, 32))
    sub = cond.select(torch.tensor([0, 2]))
    assert len(sub) == 2 and adapter.velocity(x, torch.full((2,), 0.5), sub).isfinite().all()


def test_cli_cache_and_loading_from_a_local_directory(sd3_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    args = ["cache", "--adapter", "sd3", "--model", str(sd3_dir), "--prompts", str(prompts), "--out",
            str(tmp_path / "cache"), "--device", "cpu", "--dtype", "float32", "--max-sequence-length", "16",
            "--guidance-scale", "4.0", "--negative-prompt", "blurry"]
    assert main(args) == 0
    adapter = load_adapter("sd3", sd3_dir, guidance_scale=4.0)
    assert isinstance(adapter, SD3Adapter) and adapter.guidance_scale == 4.0
    adapter.max_sequence_length, adapter.negative_prompt = 16, "blurry"
    _same(EmbeddingCache.for_adapter(tmp_path / "cache", adapter).load(PROMPTS), adapter.encode_prompts(PROMPTS))
    no_text = SD3Adapter.from_pretrained(sd3_dir, text_encoders=False)
    assert no_text.pipe.text_encoder_3 is None and no_text.pipe.transformer is not None

    (tmp_path / "empty.txt").write_text("\n")
    assert main(args[:5] + ["--prompts", str(tmp_path / "empty.txt")] + args[7:]) == 2
    assert main(args[:5] + ["--prompts", str(tmp_path / "missing.txt")] + args[7:]) == 2


def test_registry_and_loading_errors(tmp_path):
    assert set(ADAPTERS) >= {"flux", "sd3", "shapes"}
    assert adapter_class("flux") is FluxAdapter
    with pytest.raises(ValueError, match="valid names: flux, sd3, shapes"):
        load_adapter("flux2")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_adapter("flux", tmp_path)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download nobody-xyz/not-a-model"):
        load_adapter("flux", "nobody-xyz/not-a-model")

"""Prompt-embedding cache: text embeddings computed once, stored as safetensors, so training needs no text encoder.

Layout: DIR/<key>.safetensors, one file per prompt, key = sha256(model, prompt, settings). Each file holds the
conditioning record's tensors for that prompt (batch dimension 1) and metadata: the model, the prompt, the
settings (JSON) and a sha256 of the tensor bytes. An entry is *valid* only if it loads, its metadata matches the
request exactly and the checksum matches; anything else (truncated file, bit flip, other model or settings) is
reported and rebuilt by `ensure_cache`, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "leapalign-embedding-cache-v1"


def _settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def entry_key(model: str, prompt: str, settings: dict) -> str:
    blob = json.dumps([FORMAT, model, prompt, _settings_json(settings)])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class EmbeddingCache:
    """Cached conditioning records of one model + settings, read by prompt.

    `model` names the model (hub id or path as given to from_pretrained); `settings` is the adapter's
    `cache_settings()` (sequence length, negative prompt, ...); `record_type` the adapter's conditioning class.
    """

    def __init__(self, root: str | os.PathLike, *, model: str, settings: dict, record_type: type):
        self.root = Path(root)
        self.model = model
        self.settings = settings
        self.record_type = record_type

    @classmethod
    def for_adapter(cls, root: str | os.PathLike, adapter) -> "EmbeddingCache":
        return cls(root, model=adapter.model_id, settings=adapter.cache_settings(),
                   record_type=adapter.conditioning_type)

    def path(self, prompt: str) -> Path:
        return self.root / f"{entry_key(self.model, prompt, self.settings)}.safetensors"

    def _read(self, prompt: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors (batch 1), or None if missing, unreadable, stale or corrupt."""
        path = self.path(prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return None
        expected = {"format": FORMAT, "model": self.model, "prompt": prompt,
                    "settings": _settings_json(self.settings)}
        if any(meta.get(k) != v for k, v in expected.items()) or meta.get("sha256") != _checksum(tensors):
            return None
        return tensors

    def invalid(self, prompts: list[str]) -> list[str]:
        """The prompts (deduplicated, in order) whose entry is missing, stale or corrupt."""
        return [p for p in dict.fromkeys(prompts) if self._read(p) is None]

    def write(self, prompt: str, record) -> None:
        """Store one prompt's record (batch 1); written to a temp file, then renamed (no half-written entries)."""
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in record.tensors().items()}
        meta = {"format": FORMAT, "model": self.model, "prompt": prompt, "settings": _settings_json(self.settings),
                "sha256": _checksum(tensors)}
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(prompt)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

    def load(self, prompts: list[str]):
        """The conditioning record for `prompts` (batch = len(prompts)); ValueError if any entry is not valid."""
        rows = []
        for prompt in prompts:
            tensors = self._read(prompt)
            if tensors is None:
                raise ValueError(f"embedding cache {self.root} has no valid entry for prompt {prompt!r} "
                                 f"(missing, stale or corrupt): rebuild it with `leapalign cache`")
            rows.append(tensors)
        return self.record_type.from_tensors({k: torch.cat([r[k] for r in rows]) for k in rows[0]})


def ensure_cache(adapter, prompts: list[str], root: str | os.PathLike, *, batch_size: int = 8) -> int:
    """Encode with `adapter` every prompt whose entry is missing, stale or corrupt; returns how many were written."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cache = EmbeddingCache.for_adapter(root, adapter)
    todo = cache.invalid(prompts)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        record = adapter.encode_with_text_encoders(chunk)
        for i, prompt in enumerate(chunk):
            cache.write(prompt, record.select(slice(i, i + 1)))
    return len(todo)

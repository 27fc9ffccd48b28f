"""Whether a run may continue from, or write over, what its output directory already holds.

A checkpoint or `final/` written under one config must not be continued or replaced under settings that change
what is trained (method and its args, reward, model, data, optimizer, seed, batch layout, precision, EMA, ...):
the result would belong to neither run, and the earlier run's files would be lost. Settings that only change how
a run is observed or how long it lasts (SAFE) may differ; `iterations` may only grow, since a checkpoint or
`final/` past the new end would otherwise be replaced by an earlier state. `resume=force` continues anyway.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from leapalign.config import TrainConfig, from_dict, method_config, to_dict

# Exact keys, or prefixes ending in '.'. embedding_cache/gradient_checkpointing/inference_rollout change where
# embeddings live and what is recomputed, not the numbers (tests/test_trainer.py checks inference_rollout); the
# rollout path and its compile settings change the rollout by rounding only (tests/test_fast_rollout_training.py).
# rollout_dtype is not safe: a lower-precision rollout changes what the reward sees.
SAFE = ("output_dir", "resume", "log_every", "logger", "save_every", "keep_checkpoints", "max_consecutive_skips",
        "threads", "eval.", "model.embedding_cache", "model.gradient_checkpointing", "model.inference_rollout",
        "model.rollout_path", "model.rollout_compile_backend", "model.rollout_compile_mode")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat(cfg: TrainConfig) -> dict[str, Any]:
    """Dotted key -> value; method.args expanded to every field of the method's config, so that an omitted
    default and the same value written out compare equal."""
    data = to_dict(cfg)
    data["method"]["args"] = dataclasses.asdict(method_config(cfg))
    return _flatten(data)


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE)


def differences(saved: TrainConfig, new: TrainConfig) -> tuple[list[str], list[str]]:
    """(keys whose change alters what is trained, safe keys that differ), each as 'key: old -> new'."""
    a, b = flat(saved), flat(new)
    if saved.method.name != new.method.name:  # another method's fields differ anyway: name the method only
        a, b = ({k: v for k, v in d.items() if not k.startswith("method.args.")} for d in (a, b))
    unsafe, safe = [], []
    for key in sorted(set(a) | set(b)):
        old, cur = a.get(key, "unset"), b.get(key, "unset")
        if old == cur:
            continue
        grows = key == "iterations" and cur > old
        (safe if _safe(key) or grows else unsafe).append(f"{key}: {old!r} -> {cur!r}")
    return unsafe, safe


def _listed(items: list[str], limit: int = 4) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def check(cfg: TrainConfig, config_files: list[Path], *, force: bool) -> list[str]:
    """Compare cfg with each saved config.yaml that exists. Raises ValueError (one line) when one differs in a
    key that changes what is trained, unless force; returns the differences to report."""
    report: list[str] = []
    for file in config_files:
        if not file.is_file():
            continue
        try:
            saved = from_dict(yaml.safe_load(file.read_text()))
            unsafe, safe = differences(saved, cfg)
        except (ValueError, TypeError, yaml.YAMLError) as err:
            if force:
                continue
            raise ValueError(f"cannot compare with the run in {file.parent} ({err}); use a new output_dir, or "
                             f"resume=force to continue anyway") from None
        if unsafe and not force:
            raise ValueError(f"{file.parent} was written with other settings that change what is trained "
                             f"({_listed(unsafe)}); use a new output_dir, or resume=force to continue with the "
                             f"new settings")
        report += [d for d in unsafe + safe if d not in report]
    return report

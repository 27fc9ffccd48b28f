"""Prompt datasets and the deterministic order in which the trainer visits them.

Which prompt, noise and method seed a sample gets depends only on (seed, its global position), never on the
number of processes or the accumulation layout: sample i of iteration t sits at position t * G + i with
G = batch_size x grad_accum x world_size. That is what makes resume exact and 2 ranks equal to 1 process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def load_prompts(spec: str) -> list[str]:
    """A .txt file (one prompt per line, blank lines skipped), a .jsonl file ({"prompt": ...} per line), or
    shapes:train / shapes:eval (ShapesWorld's alignment and held-out splits)."""
    if spec.startswith("shapes:"):
        from leapalign.shapes.prompts import heldout_prompts, train_prompts

        splits = {"shapes:train": train_prompts, "shapes:eval": heldout_prompts}
        if spec not in splits:
            raise ValueError(f"unknown ShapesWorld prompt split {spec!r}; valid: {', '.join(splits)}")
        return splits[spec]()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {spec} (a .txt or .jsonl file, or shapes:train / shapes:eval)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{spec} line {n}: not valid JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{spec} line {n}: each JSONL record needs a string field 'prompt'")
            prompts.append(record["prompt"])
    else:
        prompts = lines
    if not prompts:
        raise ValueError(f"prompt file {spec} holds no prompts")
    return prompts


def spread(items: list, n: int) -> list:
    """At most n items evenly spread over the list (n = 0: all), so a prefix does not hold one category only."""
    if n == 0 or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that mixes its integer parts well (numpy's SeedSequence), for per-sample generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class PromptOrder:
    """Epoch-wise (optionally shuffled) order over the prompts, as a function of the global position."""

    def __init__(self, prompts: list[str], seed: int, shuffle: bool):
        self.prompts, self.seed, self.shuffle = prompts, seed, shuffle
        self._perms: dict[int, list[int]] = {}

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.prompts))
        if not self.shuffle:
            return offset
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(len(self.prompts), generator=generator(self.seed, 0, epoch)).tolist()}
        return self._perms[epoch][offset]

    def micro_batch(self, step: int, micro: int, rank: int, batch: int, world: int, accum: int) -> list[int]:
        """Global positions of (iteration step, micro-batch micro) on process rank."""
        first = step * batch * accum * world + micro * batch * world + rank * batch
        return list(range(first, first + batch))

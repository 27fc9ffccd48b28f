"""Training batches of rendered ShapesWorld scenes, made in worker processes so a GPU never waits for them.

Scene sampling and rendering are CPU work (about 50 ms for 256 scenes on one core), which would otherwise
bound a GPU step of the small models. `batch_stream(make, seed, workers)` yields `make(generator)` forever:
with workers = 0 or 1 from one generator seeded `seed`; with W workers, worker w draws from its own generator
seeded `seed + 100_003 w` and the loader takes the workers' batches in turn, so a (seed, workers) pair gives
the same batch sequence on every machine (a different worker count gives a different one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from leapalign.shapes.evaluator import satisfiable, scene_objects
from leapalign.shapes.prompts import CATEGORIES, Prompt, all_prompts, perturbations
from leapalign.shapes.render import render, sample_scenes

T = TypeVar("T")
WORKER_SEED_STRIDE = 100_003


def sample_prompts(n: int, generator: torch.Generator, mix: tuple[float, ...] | None = None) -> list[Prompt]:
    """n captions: a category by `mix` (uniform if None), then a uniform caption of that category."""
    weights = torch.tensor(mix if mix is not None else [1.0] * len(CATEGORIES), dtype=torch.float64)
    cats = torch.multinomial(weights, n, replacement=True, generator=generator)
    pools = [all_prompts(c) for c in CATEGORIES]
    return [pools[c][int(torch.randint(len(pools[c]), (1,), generator=generator))] for c in cats.tolist()]


class _Stream(IterableDataset):
    def __init__(self, make: Callable[[torch.Generator], object], seed: int):
        self.make, self.seed = make, seed

    def __iter__(self):
        info = get_worker_info()
        g = torch.Generator().manual_seed(self.seed + WORKER_SEED_STRIDE * (info.id if info else 0))
        while True:
            yield self.make(g)


def batch_stream(make: Callable[[torch.Generator], T], seed: int, workers: int = 0) -> Iterator[T]:
    """Endless batches `make(g)`; `make` must be picklable (a module-level function or a partial of one)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    stream = _Stream(make, seed)
    if workers <= 1:  # one generator in this process: the same sequence as a single worker, without the fork
        return iter(stream)
    return iter(DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4))


def flow_batch(g: torch.Generator, *, batch_size: int, size: int, mix: tuple[float, ...],
               caption_dropout: float) -> tuple[torch.Tensor, list[str]]:
    """Pretraining batch: images (B, 3, S, S) in [-1, 1] and captions ("" for the dropped ones)."""
    prompts = sample_prompts(batch_size, g, mix)
    x0 = render(sample_scenes(prompts, g, size)) * 2 - 1
    drop = torch.rand(batch_size, generator=g) < caption_dropout
    return x0, ["" if d else p.text for p, d in zip(prompts, drop.tolist())]


def reward_batch(g: torch.Generator, *, batch_size: int, size: int, hard_negatives: int) -> dict:
    """Reward-training batch: clean renders (B, 3, S, S) in [0, 1], captions, `hard_negatives` false single-edit
    captions per image (B * H strings, padded with the true caption where fewer exist; `neg_ok` (B, H) marks the
    real ones) and `same_truth` (B, B) bool: caption j (j != i) can also hold for scene i (`satisfiable`: for
    some detector's order of its objects)."""
    prompts = sample_prompts(batch_size, g)
    scenes = sample_scenes(prompts, g, size)
    truth = scene_objects(scenes)
    h = hard_negatives
    negs, neg_ok = [], torch.zeros(batch_size, h, dtype=torch.bool)
    for i, p in enumerate(prompts):
        false = [q for q in perturbations(p) if not satisfiable(q, truth[i])]
        chosen = [false[j].text for j in torch.randperm(len(false), generator=g)[:h].tolist()]
        neg_ok[i, : len(chosen)] = True
        negs += chosen + [p.text] * (h - len(chosen))
    same_truth = torch.tensor([[j != i and satisfiable(prompts[j], truth[i]) for j in range(batch_size)]
                               for i in range(batch_size)])
    return {"images": render(scenes), "texts": [p.text for p in prompts], "negatives": negs, "neg_ok": neg_ok,
            "same_truth": same_truth}


def flow_stream(seed: int, workers: int, **kwargs) -> Iterator[tuple[torch.Tensor, list[str]]]:
    return batch_stream(partial(flow_batch, **kwargs), seed, workers)


def reward_stream(seed: int, workers: int, **kwargs) -> Iterator[dict]:
    return batch_stream(partial(reward_batch, **kwargs), seed, workers)

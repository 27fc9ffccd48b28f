"""The frozen reference model of KL-regularised methods (Flow-GRPO's KL term): the trainable weights as they were
before training, swapped in for one no-grad velocity call.

One copy of the trainable parameters only (a LoRA's few MB; for full fine-tuning a copy of the transformer, as
any frozen reference needs; under FSDP a copy of this process's shards), no second model object: the frozen base
weights are shared.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from leapalign.sharding import is_sharded, local, reshard


class ReferenceVelocity:
    """velocity(x, sigma, cond) of the model with its initial trainable weights; the live weights are restored
    after each call. `model` is the module that holds `params`: when FSDP wraps it the swap goes through the
    shards (see sharding.py)."""

    def __init__(self, velocity: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
                 params: list[torch.nn.Parameter], model: torch.nn.Module | None = None):
        self.velocity = velocity
        self.params = list(params)
        self.model = model
        self.sharded = model is not None and is_sharded(model)
        self.initial = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if self.sharded:
            return self._sharded(x, sigma, cond)
        # Swap the storage (.data), not the values: an in-place copy would bump the version counters of
        # parameters that the policy's live autograd graph saved, and its backward would then refuse to run.
        live = [p.data for p in self.params]
        for p, w in zip(self.params, self.initial):
            p.data = w
        try:
            return self.velocity(x, sigma, cond)
        finally:
            for p, w in zip(self.params, live):
                p.data = w

    def _sharded(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        # FSDP gathers from its shard buffers, so the values are copied into the shards. The policy's graph saved
        # the gathered weights, not the shards, and its backward gathers them again after the final reshard.
        shards = [local(p.detach()) for p in self.params]
        live = [s.clone() for s in shards]
        reshard(self.model)
        for s, w in zip(shards, self.initial):
            s.copy_(local(w))
        try:
            return self.velocity(x, sigma, cond)
        finally:
            reshard(self.model)
            for s, w in zip(shards, live):
                s.copy_(w)

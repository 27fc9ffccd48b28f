"""Exponential moving average of trainable weights (paper: decay 0.995 after every optimizer step).

The shadow is kept in float32 whatever the parameter dtype, so that small updates are not rounded away in bf16.
Under FSDP the parameters are DTensor shards and so is the shadow; nothing here communicates, but swapping
values into the shards must free the weights FSDP keeps gathered (sharding.reshard), else the next forward would
use the stale gathered ones.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from leapalign.sharding import reshard


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, model: torch.nn.Module | None = None):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.params = list(params)
        self.decay = decay
        self.model = model  # the module holding params: resharded after a swap when FSDP wraps it
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param."""
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - self.decay)

    @contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """Parameters hold the EMA weights inside the block, their own weights again after it."""
        backup = [p.detach().clone() for p in self.params]
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))
        self._reshard()
        try:
            yield
        finally:
            for b, p in zip(backup, self.params):
                p.copy_(b)
            self._reshard()

    def _reshard(self) -> None:
        if self.model is not None:
            reshard(self.model)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)} trainable ones")
        self.decay = state["decay"]
        self.shadow = [s.to(p.device, torch.float32).clone() for s, p in zip(state["shadow"], self.params)]

"""Undoing an optimizer step that made weights non-finite: a copy of the trainable weights and their optimizer
state taken before the step, and its restoration (see trainer.SNAPSHOT_MAX_ELEMENTS for when a copy is kept)."""

from __future__ import annotations

import torch

from leapalign.sharding import reshard

Snapshot = tuple[list[torch.Tensor], dict]


def copy_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> Snapshot:
    """The trainable weights and their optimizer state (Adam moments, step), as they are before a step."""
    state = optimizer.state
    moments = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state[p].items()}
               for p in params if p in state}
    return [p.detach().clone() for p in params], moments


def restore_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], backup: Snapshot,
                  model: torch.nn.Module | None = None) -> None:
    """Put the weights and optimizer state of `backup` back. Under FSDP the values go into the shards, so no
    gathered copy of the undone step may survive (`model`: the module holding params; resharding is a no-op
    when FSDP does not wrap it)."""
    weights, moments = backup
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
    if model is not None:
        reshard(model)
    for p in params:
        if p in moments:
            optimizer.state[p] = moments[p]
        else:  # the first step created it
            optimizer.state.pop(p, None)

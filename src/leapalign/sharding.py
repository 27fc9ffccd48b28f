"""What the trainer needs to know about FSDP2 (`torch.distributed.fsdp.fully_shard`, through accelerate).

Under FSDP2 every parameter is a DTensor holding this process's shard; forward hooks all-gather the full weights
of one wrapped unit at a time and free them again. Four consequences for the trainer:
- The no-grad rollout must not run under `torch.inference_mode`: the gathered weights it creates are kept by
  units that do not reshard after forward (the root) and would be inference tensors in the leaps' graph.
- Collectives that take plain tensors (`accelerator.reduce`) need the local shards (`local`).
- Replacing a parameter's `.data` does not reach the weights FSDP gathers (it gathers from its own flat shard
  buffer, of which the DTensor's local tensor is a view): values are swapped in place, with every unit resharded
  before and after, so that the next forward (or the backward's pre-hook) gathers the values now in the shards.
- A launch meant to be distributed can silently be several independent runs (`check_launch`).
"""

from __future__ import annotations

import os

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` (or a submodule) is wrapped by FSDP2's fully_shard."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def reshard(model: torch.nn.Module) -> None:
    """Free every unit's gathered weights, so that the next use gathers them from the shards again."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def check_launch(num_processes: int, distributed_type: str, fsdp_version: int | None) -> None:
    """Stop, with one line and before anything is written, when the launch asked for something else than what
    accelerate set up: several processes that each became a single-process run (they would race on one
    output_dir), FSDP that became DDP or nothing, or FSDP1 (not supported: FSDP2's parameters keep their names
    and its state dicts are tested equal to one process; FSDP1's were not)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes == 1:
        raise ValueError(
            f"this process was launched as one of {launched} (WORLD_SIZE={launched}) but accelerate set up a "
            f"single-process run, so {launched} independent runs would write one output_dir; on a CPU-only machine "
            f"launch with ACCELERATE_USE_CPU=1 (DDP over gloo), on GPUs check that CUDA is visible to every process")
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and distributed_type != "FSDP":
        raise ValueError(
            f"FSDP was requested (ACCELERATE_USE_FSDP=true) but accelerate set up {distributed_type}, which would "
            f"train unsharded; accelerate selects FSDP on GPUs only (docs/training.md)")
    if distributed_type == "FSDP" and fsdp_version != 2:
        raise ValueError(f"FSDP version {fsdp_version} is not supported: set fsdp_version: 2 in the accelerate "
                           f"config (configs/accelerate/fsdp_*.yaml)")


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, names: list[str],
                  params: list[torch.nn.Parameter], ema_shadow: list[torch.Tensor] | None) -> dict:
    """What an FSDP checkpoint holds, as DTensors for torch.distributed.checkpoint (each process writes its
    shards): the trainable weights only (a LoRA checkpoint must not copy the frozen base), their EMA and the
    optimizer state. Loading into this same structure restores in place (then `load_optimizer`)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"model": {n: p.detach() for n, p in zip(names, params)},
             "optim": get_optimizer_state_dict(model, optimizer)}
    if ema_shadow is not None:
        state["ema"] = dict(zip(names, ema_shadow))
    return state


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"])

"""Run `leapalign train` under accelerate's FSDP2 on CPU processes (gloo), for the FSDP equivalence tests.

On a CPU accelerate never selects FSDP by itself: `PartialState._prepare_backend` returns MULTI_CPU, for which
`AcceleratorState` ignores ACCELERATE_USE_FSDP (with ACCELERATE_USE_CPU=1 an FSDP plugin silently becomes DDP).
`force_fsdp` makes it report a multi-device gloo run instead, so that the rest of accelerate (FSDP plugin from
the FSDP_* environment variables, fully_shard, sharded state dicts) runs its real code path on the CPU. This
depends on accelerate's internals: written against accelerate 1.15.0 (requirements-lock.txt pins it).

Usage: python -m torch.distributed.run --nproc_per_node 2 fsdp_cpu.py CONFIG.yaml
"""

from __future__ import annotations

import os
import sys


def force_fsdp() -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    def backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU

    PartialState._prepare_backend = backend
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    os.environ["ACCELERATE_USE_FSDP"] = "true"


def fsdp_env(wrap: str | None = None) -> dict[str, str]:
    """The variables `accelerate launch --config_file configs/accelerate/fsdp_*.yaml` sets (FSDP2, sharded
    checkpoints); `wrap` = comma-separated block classes for per-block sharding, None = one root unit."""
    env = {"FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_RESHARD_AFTER_FORWARD": "true",
           "FSDP_OFFLOAD_PARAMS": "false", "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}
    if wrap:
        env.update(FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP", FSDP_TRANSFORMER_CLS_TO_WRAP=wrap)
    return env


if __name__ == "__main__":
    import yaml

    force_fsdp()
    from leapalign.config import from_dict
    from leapalign.trainer import train

    train(from_dict(yaml.safe_load(open(sys.argv[1]))), progress=False)

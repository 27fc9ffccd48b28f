"""The shipped accelerate configs select FSDP2 with per-block sharding, and every block class they name exists in
the model family they are for (a typo would silently shard nothing but the root)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

CONFIGS = Path(__file__).parent.parent / "configs" / "accelerate"


def _block_classes(family: str) -> set[str]:
    if family == "shapes":
        from leapalign.shapes import model
    elif family == "flux":
        from diffusers.models.transformers import transformer_flux as model
    else:
        from diffusers.models.transformers import transformer_sd3 as model
        from diffusers.models import attention
        return set(vars(model)) | set(vars(attention))
    return set(vars(model))


@pytest.mark.parametrize("family", ["flux", "sd3", "shapes"])
def test_fsdp_config_shards_existing_blocks(family):
    path = CONFIGS / f"fsdp_{family}.yaml"
    raw = yaml.safe_load(path.read_text())
    cfg = load_config_from_file(str(path))  # accelerate's own reader accepts it
    assert cfg.distributed_type == "FSDP" and raw["fsdp_config"]["fsdp_version"] == 2
    assert raw["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    names = raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert names and set(names) <= _block_classes(family)

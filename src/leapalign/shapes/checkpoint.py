"""Saving and loading ShapesWorld models: weights in safetensors, config and provenance in a JSON sidecar.

The shipped checkpoints live in leapalign/assets/shapes/ (flow.*, reward.* and the scene parser compose.*); each
JSON records the exact command and seed that regenerate it and how long that took.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from leapalign.shapes.model import FlowModelConfig, ShapesFlowModel
from leapalign.shapes.parser import ParserConfig, ShapesParser
from leapalign.shapes.reward_model import RewardModelConfig, ShapesRewardModel

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "shapes"
SHIPPED = {"flow": ASSETS / "flow.safetensors", "reward": ASSETS / "reward.safetensors",
           "parser": ASSETS / "compose.safetensors"}
_KINDS = {ShapesFlowModel: "flow", ShapesRewardModel: "reward", ShapesParser: "parser"}
_REGENERATE = {"flow": "pretrain", "reward": "reward", "parser": "parser"}


def save_model(model: ShapesFlowModel | ShapesRewardModel | ShapesParser, path: str | Path, info: dict) -> None:
    """Write PATH (weights, float16 to keep the repository small) and PATH.json (kind, config, `info`).

    Both files are written to temporary names and renamed, so an interrupted save leaves no half file.
    """
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = _KINDS[type(model)]
    meta = {"kind": kind, "config": model.cfg.to_dict(), **info}
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp_w, tmp_j = path.with_name(path.name + ".tmp"), path.with_suffix(".json.tmp")
    save_file(tensors, str(tmp_w))
    tmp_j.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp_w, path)
    os.replace(tmp_j, path.with_suffix(".json"))


def _load(path: str | Path | None, kind: str) -> tuple[dict, dict]:
    p = SHIPPED[kind] if path is None else Path(path).with_suffix(".safetensors")
    side = p.with_suffix(".json")
    if not p.is_file() or not side.is_file():
        raise FileNotFoundError(f"ShapesWorld {kind} checkpoint not found: need {p} and {side} "
                                f"(regenerate with `leapalign shapes {_REGENERATE[kind]}`)")
    meta = json.loads(side.read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{p} holds a '{meta.get('kind')}' model, not a '{kind}' model")
    return meta, load_file(str(p))


def load_flow_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesFlowModel:
    """The shipped (path=None) or a saved ShapesWorld flow model, float32, eval mode."""
    meta, state = _load(path, "flow")
    model = ShapesFlowModel(FlowModelConfig(**meta["config"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()


def load_reward_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesRewardModel:
    """The shipped (path=None) or a saved ShapesWorld reward model, float32, eval mode, frozen."""
    meta, state = _load(path, "reward")
    model = ShapesRewardModel(RewardModelConfig(**meta["config"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval().requires_grad_(False)


def load_parser(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesParser:
    """The shipped (path=None) or a saved ShapesWorld scene parser, float32, eval mode, frozen."""
    meta, state = _load(path, "parser")
    model = ShapesParser(ParserConfig(**meta["config"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval().requires_grad_(False)


def model_info(path: str | Path | None, kind: str) -> dict:
    """The JSON sidecar of a checkpoint (config, command, seed, timings)."""
    return _load(path, kind)[0]

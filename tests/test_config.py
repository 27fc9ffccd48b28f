"""Config dataclasses, YAML + overrides, validation messages, and every preset in configs/."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leapalign.config import TrainConfig, describe, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_every_field_has_help_and_defaults_validate():
    lines = describe()
    assert len(lines) > 40 and all(": " in line and not line.endswith(": ") for line in lines)
    load_config(None)  # the defaults are a valid (ShapesWorld LeapAlign) config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_presets_load_validate_and_carry_a_comment_header(path):
    cfg = load_config(path)
    assert path.read_text().startswith("# ")
    assert cfg.method.name in path.stem or path.stem.startswith(("flux", "sd35m"))


def test_paper_recipe_values():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "flux_hpsv21.yaml")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (1e-5, 1e-4, [0.9, 0.999])
    assert (cfg.iterations, cfg.ema_decay, cfg.model.height, cfg.model.num_steps) == (300, 0.995, 720, 25)
    assert cfg.model.guidance_scale == 3.5 and cfg.model.lora_rank == 0
    assert cfg.method.args == {"alpha": 0.3, "tau": 0.1, "hinge": 0.55}
    assert cfg.batch_size * cfg.grad_accum * 16 == 64
    pick = load_config(Path(__file__).parent.parent / "configs" / "flux_pickscore.yaml")
    assert (pick.method.args["alpha"], pick.method.args["hinge"]) == (0.1, 0.4)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("iterations: 7\noptim:\n  lr: 3.0e-5\nmethod:\n  name: leapalign\n  args: {alpha: 0.5}\n")
    cfg = load_config(f, ["optim.lr=1e-4", "method.args.hinge=0.55", "model.guidance_scale=none", "batch_size=3"])
    assert isinstance(cfg, TrainConfig)
    assert (cfg.iterations, cfg.optim.lr, cfg.batch_size) == (7, 1e-4, 3)
    assert cfg.method.args == {"alpha": 0.5, "hinge": 0.55} and cfg.model.guidance_scale is None
    assert dataclasses.asdict(cfg)["optim"]["lr"] == 1e-4


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "unknown config key optim.lrr; valid keys here: lr, betas"),
    (["optim.lr=-1"], "optim.lr must be > 0"),
    (["optim.lr=fast"], "optim.lr must be float"),
    (["iterations=1.5"], "iterations must be int"),
    (["batch_size"], "must look like key=value"),
    (["method.name=ppo"], "unknown method 'ppo'; choose one of: leapalign"),
    (["method.args.alphaa=0.3"], "method.args for leapalign: .*valid fields: alpha"),
    (["method.args.alpha=2"], "alpha"),
    (["mixed_precision=fp8"], "mixed_precision must be no or bf16"),
    (["model.dtype=bfloat16"], "needs LoRA"),
    (["resume=/does/not/exist"], "resume must be auto, none or an existing checkpoint directory"),
])
def test_bad_values_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match="malformed YAML in .*bad.yaml"):
        load_config(bad)

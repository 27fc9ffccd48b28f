"""Config dataclasses, YAML + overrides, validation messages, and every preset in configs/."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leapalign.config import TrainConfig, describe, describe_train, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_every_field_has_help_and_defaults_validate():
    lines = describe(TrainConfig)
    assert len(lines) > 40 and all(": " in line and not line.endswith(": ") for line in lines)
    load_config(None)  # the defaults are a valid (ShapesWorld LeapAlign) config


def _config_classes():
    import importlib
    import pkgutil

    import leapalign

    for info in pkgutil.walk_packages(leapalign.__path__, "leapalign."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == info.name
                    and obj.__name__.endswith(("Config", "Spec"))):
                yield obj


@pytest.mark.parametrize("cls", list(_config_classes()), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_config_dataclass_declares_help_the_same_way(cls):
    # one idiom: leapalign.types.option(default, help) on every field of every config dataclass
    assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    assert all(": " in line for line in describe(cls))


def test_list_keys_shows_the_chosen_methods_fields():
    lines = describe_train(load_config(None, ["method.name=refl"]))
    assert any(line.startswith("method.args.late_fraction = 0.44: ") for line in lines)
    assert not any(line.startswith("method.args.alpha") for line in lines)
    assert any(line.startswith("method.args.alpha = 0.3: ") for line in describe_train(load_config(None)))


def test_one_override_parser_for_every_config():
    from leapalign.demo.run import QUICK, DemoConfig
    from leapalign.shapes.pretrain import FlowPretrainConfig

    demo = parse_overrides(DemoConfig, ["seeds=0,1", "methods=refl", "lr=3e-5"], QUICK)
    assert (demo.seeds, demo.methods, demo.lr, demo.iterations) == ([0, 1], ["refl"], 3e-5, QUICK["iterations"])
    assert parse_overrides(DemoConfig, ["seeds=4"]).seeds == [4]
    flow = parse_overrides(FlowPretrainConfig, ["model.dim=192", "mix=1,1,1,1,1,1"])
    assert flow.model.dim == 192 and flow.mix == (1, 1, 1, 1, 1, 1) and flow.steps == FlowPretrainConfig().steps
    with pytest.raises(ValueError, match="unknown config key itrations"):
        parse_overrides(DemoConfig, ["itrations=3"])


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
    (["resume=/does/not/exist"], "resume must be auto, none, force or an existing checkpoint directory"),
    (["optim.lr=inf"], "optim.lr must be a finite number"),
    (["optim.eps=.nan"], "optim.eps must be a finite number"),
    (["method.args.alpha=nan"], "method.args.alpha must be a finite number"),
    (["optim.betas=[0.9, .inf]"], r"optim.betas\[1\] must be a finite number"),
    (["reward.terms=[{name: shapes, weight: .nan}]"], r"reward.terms\[0\].weight must be a finite number"),
    (["threads=-1"], "threads must be >= 0"),
])
def test_bad_values_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_documented_none_choices_of_str_fields_are_accepted():
    # docs/training.md: logger=none, resume=none; YAML reads `none` as null, which a str field takes as 'none'
    cfg = load_config(None, ["logger=none", "resume=none"])
    assert (cfg.logger, cfg.resume) == ("none", "none")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="is a directory; give a YAML file"):
        load_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match="malformed YAML in .*bad.yaml"):
        load_config(bad)

"""Every documented string value works from the command line and from a YAML file, including the YAML 1.1 words
yes/no/on/off/true/false, which YAML reads as booleans: a str field gets the word back as written, a bool field
the boolean, and a boolean that did not come from YAML text is refused with one line."""

import dataclasses
import typing

import pytest

from leapalign.cli import main
from leapalign.config import TrainConfig, apply_overrides, from_dict, load_config, parse_overrides, read_yaml
from leapalign.demo.run import DemoConfig

WORDS = ["yes", "no", "on", "off", "true", "false", "No", "OFF", "True"]


def _fields(cls: type, kind: type, prefix: str = "") -> list[str]:
    """Dotted keys of the fields of `cls` (nested config sections flattened) annotated `kind` or `kind | None`."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _fields(tp, kind, prefix + f.name + ".")
        elif tp is kind or kind in typing.get_args(tp):
            keys.append(prefix + f.name)
    return keys


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


STR_FIELDS = _fields(TrainConfig, str)
BOOL_FIELDS = _fields(TrainConfig, bool)


def test_the_field_lists_cover_the_documented_choices():
    assert {"mixed_precision", "logger", "resume", "output_dir", "model.adapter", "model.dtype", "reward.name",
            "method.name", "data.prompts", "eval.prompts"} <= set(STR_FIELDS)
    assert {"model.gradient_checkpointing", "data.shuffle", "eval.geneval", "cudnn_sdp"} <= set(BOOL_FIELDS)


def _yaml_text(keys: list[str], word: str) -> str:
    """A config file setting every dotted key to the bare word (one section per prefix)."""
    sections: dict[str, list[str]] = {}
    for key in keys:
        section, _, name = key.rpartition(".")
        sections.setdefault(section, []).append(name)
    lines = [f"{name}: {word}" for name in sections.pop("", [])]
    for section, names in sections.items():
        lines += [f"{section}:"] + [f"  {name}: {word}" for name in names]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("word", WORDS)
def test_every_str_field_takes_a_yaml_word_back_from_the_command_line_and_from_a_file(word):
    cli = from_dict(apply_overrides({}, [f"{key}={word}" for key in STR_FIELDS]))
    from_file = from_dict(read_yaml(_yaml_text(STR_FIELDS, word)))  # what load_config reads, before validate()
    for key in STR_FIELDS:
        assert _get(cli, key) == word, key
        assert _get(from_file, key) == word, key


@pytest.mark.parametrize("word, value", [("yes", True), ("no", False), ("on", True), ("off", False),
                                         ("true", True), ("False", False)])
def test_every_bool_field_reads_the_words_as_booleans(tmp_path, word, value):
    cli = from_dict(apply_overrides({}, [f"{key}={word}" for key in BOOL_FIELDS]))
    assert all(_get(cli, key) is value for key in BOOL_FIELDS)
    file = tmp_path / "b.yaml"
    file.write_text(f"cudnn_sdp: {word}\nmodel:\n  gradient_checkpointing: {word}\ndata:\n  shuffle: {word}\n")
    cfg = load_config(file)
    assert cfg.cudnn_sdp is value and cfg.model.gradient_checkpointing is value and cfg.data.shuffle is value


def test_documented_values_validate_from_a_yaml_file(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("mixed_precision: no\nlogger: none\nresume: none\noutput_dir: out\n")
    cfg = load_config(file)
    assert (cfg.mixed_precision, cfg.logger, cfg.resume) == ("no", "none", "none")
    cfg = load_config(file, ["mixed_precision=bf16", "logger=none", "resume=none"])
    assert (cfg.mixed_precision, cfg.logger, cfg.resume) == ("bf16", "none", "none")
    for bad, says in [("mixed_precision: off", "mixed_precision must be no or bf16, got 'off'"),
                      ("logger: no", "logger must be tensorboard, wandb or none, got 'no'"),
                      ("model:\n  guidance_scale: no", "model.guidance_scale must be float, got no")]:
        file.write_text(bad + "\n")
        with pytest.raises(ValueError, match=says):
            load_config(file)


def test_a_boolean_not_written_as_a_word_is_refused_with_one_line():
    with pytest.raises(ValueError, match=r"^mixed_precision must be a string, got the boolean False: give the word"):
        from_dict({"mixed_precision": False})


def test_nested_free_form_values_keep_the_booleans_yaml_meant():
    cfg = from_dict(apply_overrides({}, ["method.args={same_noise: yes}", "optim.betas=0.9,0.99"]))
    assert cfg.method.args == {"same_noise": True} and cfg.method.args["same_noise"] is True


def test_demo_settings_take_the_words_too():
    cfg = parse_overrides(DemoConfig, ["equal_time=off", "precision=fp32"])
    assert cfg.equal_time is False
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32, got 'no'"):
        parse_overrides(DemoConfig, ["precision=no"])


def test_train_command_line_parses_mixed_precision_no(tmp_path, capsys):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("mixed_precision: no\nlogger: none\n")
    for argv in (["--config", "configs/shapes_leapalign.yaml", "mixed_precision=no", "logger=none", "resume=none"],
                 ["--config", str(yaml_file)]):
        assert main(["train", *argv, "--print-config"]) == 0
        printed = capsys.readouterr().out
        assert "mixed_precision: 'no'" in printed and "logger: none" in printed

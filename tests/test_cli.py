"""`leapalign train / eval / generate` end to end on the toy world, and one-line errors (exit 2) on bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from PIL import Image
from helpers.toy import toy_config

from leapalign.cli import main
from leapalign.config import to_dict


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = toy_config(tmp, iterations=2, save_every=1)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "--config", str(tmp / "cfg.yaml"), "--no-progress", "ema_decay=0.5"]) == 0
    return tmp / "run"


@pytest.mark.slow
def test_train_writes_final_weights_and_checkpoints(run_dir):
    assert (run_dir / "final" / "weights.safetensors").is_file() and (run_dir / "final" / "ema.safetensors").is_file()
    assert yaml.safe_load((run_dir / "final" / "config.yaml").read_text())["ema_decay"] == 0.5
    assert (run_dir / "checkpoints" / "step_0000002" / "meta.json").is_file()


@pytest.mark.slow
def test_eval_is_reproducible_and_ema_differs(run_dir, tmp_path, capsys):
    prompts = run_dir.parent / "prompts.txt"
    common = ["eval", "--prompts", str(prompts), "--steps", "4", "--height", "4", "--width", "4"]
    assert main(common + ["--weights", str(run_dir), "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--weights", str(run_dir), "--out", str(tmp_path / "b")]) == 0
    assert main(common + ["--weights", str(run_dir / "checkpoints" / "step_0000002"), "--out", str(tmp_path / "c")]) == 0
    assert main(common + ["--weights", str(run_dir), "--no-ema", "--out", str(tmp_path / "d")]) == 0
    a, b, c, d = (json.loads((tmp_path / x / "eval.json").read_text())["metrics"] for x in "abcd")
    assert a == b == c  # fixed seeds; final/ema and the last checkpoint's EMA are the same weights
    assert a["helpers.toy:toy_reward_mean"] != d["helpers.toy:toy_reward_mean"]
    assert Image.open(tmp_path / "a" / "grid.png").size[0] > 4


@pytest.mark.slow
def test_generate_writes_one_png_per_prompt(run_dir, tmp_path):
    assert main(["generate", "--weights", str(run_dir), "--prompt", "a red circle", "--prompt", "two squares",
                 "--steps", "3", "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert files == ["000_a_red_circle.png", "001_two_squares.png"]
    assert Image.open(tmp_path / files[0]).size == (4, 4)


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
    (["train", "optim.lr=-1"], "optim.lr must be > 0"),
    (["train", "method.name=ppo"], "unknown method 'ppo'"),
    (["train", "data.prompts=/no/prompts.txt"], "prompt file not found: /no/prompts.txt"),
    (["train", "model.adapter=helpers.toy:ToyAdapter", "reward.name=nosuch", "eval.prompts=none", "data.prompts=shapes:train"],
     "unknown reward 'nosuch'"),
    (["eval", "--weights", "/no/run"], "holds no trained weights"),
    (["eval", "--model", "nosuch"], "unknown adapter 'nosuch'"),
    (["generate", "--model", "helpers.toy:ToyAdapter", "--out", "/tmp/x"], "give at least one --prompt"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert message in err, err


@pytest.mark.slow
def test_bad_eval_prompt_file(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["eval", "--weights", str(run_dir), "--prompts", str(empty)]) == 2
    assert "holds no prompts" in capsys.readouterr().err


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["train", "eval", "generate", "demo"])
def test_output_path_that_is_a_file_or_not_writable_exits_2(command, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    for out, message in ((blocker, "is an existing file"), (blocker / "sub", "is not writable")):
        argv = {"train": ["train", f"output_dir={out}", "eval.prompts=none", "iterations=1"],
                "eval": ["eval", "--model", "helpers.toy:ToyAdapter", "--out", str(out)],
                "generate": ["generate", "--model", "helpers.toy:ToyAdapter", "--prompt", "a", "--out", str(out)],
                "demo": ["demo", "--quick", "--out", str(out)]}[command]
        assert main(argv) == 2
        assert message in one_line_error(capsys)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "helpers.toy:ToyAdapter", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["generate", "--model", "helpers.toy:ToyAdapter", "--prompt", "", "--out", "/tmp/x"],
     "--prompt must not be empty"),
    (["train", "--config", "."], "is a directory; give a YAML file"),
    (["train", "optim.lr=inf"], "optim.lr must be a finite number"),
])
def test_more_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in one_line_error(capsys)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_cuda_exits_2(capsys):
    assert main(["eval", "--model", "helpers.toy:ToyAdapter", "--device", "cuda"]) == 2
    assert "CUDA is not available here; use --device cpu" in one_line_error(capsys)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["final/ema.safetensors", "checkpoints/step_0000002/trainer_state_0.pt"])
def test_eval_on_truncated_weights_exits_2(run_dir, victim, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    f = copy / victim
    f.write_bytes(f.read_bytes()[:20])
    weights = copy if victim.startswith("final") else f.parent
    assert main(["eval", "--weights", str(weights), "--steps", "2"]) == 2
    err = one_line_error(capsys)
    assert f.name in err and ("unreadable" in err or "expected" in err), err


@pytest.mark.slow
def test_nan_on_the_last_step_does_not_break_the_summary(tmp_path, monkeypatch, capsys):
    # one reward call per LeapAlign iteration: the second (last) iteration's reward is NaN
    monkeypatch.setenv("LEAPALIGN_TOY_NAN_FROM", "2")
    cfg = toy_config(tmp_path, iterations=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "final reward nan, 1 skipped steps" in out, out

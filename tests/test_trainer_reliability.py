"""No run is overwritten or poisoned: resume compares configs, non-finite updates are undone, nothing non-finite
is written, corrupt checkpoints are skipped, a fresh start truncates the history (toy world, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.toy import ToyTransformer, toy_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from leapalign import checkpoint, trainer
from leapalign.config import to_dict
from leapalign.trainer import TrainingAborted, train

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def rerun(tmp, **overrides):
    return toy_config(tmp, **{"iterations": 6, "save_every": 2, "keep_checkpoints": 0, "resume": "auto", **overrides})


@pytest.fixture
def run(tmp_path):
    """A finished 6-iteration run with checkpoints 2, 4 and 6."""
    train(rerun(tmp_path), progress=False)
    return tmp_path


def test_rerun_with_fewer_iterations_refuses_and_keeps_every_checkpoint(run):
    before = snapshot(run / "run")
    with pytest.raises(ValueError, match=r"iterations: 6 -> 4.*use a new output_dir, or resume=force"):
        train(rerun(run, iterations=4), progress=False)
    # even when forced, the step-6 state is never written under step 4 (today's bug)
    with pytest.raises(ValueError, match="at iteration 6, past iterations=4"):
        train(rerun(run, iterations=4, resume="force"), progress=False)
    after = snapshot(run / "run")
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}


def test_rerun_with_other_method_and_lr_refuses_naming_the_keys(run):
    final = snapshot(run / "run" / "final")
    with pytest.raises(ValueError) as err:
        train(rerun(run, iterations=8, method__name="refl", method__args={}, optim__lr=1e-3), progress=False)
    message = str(err.value)
    assert "method.name: 'leapalign' -> 'refl'" in message and "optim.lr: 0.01 -> 0.001" in message
    assert "\n" not in message
    assert snapshot(run / "run" / "final") == final
    # a fresh start (resume=none) with other settings would overwrite final/ and the checkpoints: refused too
    with pytest.raises(ValueError, match="optim.lr: 0.01 -> 0.001"):
        train(rerun(run, resume="none", optim__lr=1e-3), progress=False)
    assert snapshot(run / "run" / "final") == final


def test_safe_changes_continue_and_are_reported(run, capsys):
    result = train(rerun(run, iterations=8, log_every=2, logger="none", eval__num_steps=3), progress=False)
    assert result.start_step == 6
    assert "with changed settings: eval.num_steps: 25 -> 3; iterations: 6 -> 8; log_every: 1 -> 2" \
        in capsys.readouterr().out
    assert checkpoint.step_of(checkpoint.latest_valid(run / "run" / "checkpoints")) == 8


def test_resume_force_continues_with_other_settings(run):
    result = train(rerun(run, iterations=7, optim__lr=1e-3, resume="force"), progress=False)
    assert result.start_step == 6


def inf_lr(tmp_path, monkeypatch, **overrides):
    """The reported case (optim.lr=inf: finite loss and gradient, non-finite weights after the step), past the
    config check that now rejects it, to test the trainer's own guard."""
    cfg = toy_config(tmp_path, **overrides)
    cfg.optim.lr = float("inf")
    monkeypatch.setattr(trainer, "validate", lambda cfg: None)
    return cfg


def test_non_finite_update_is_undone_skipped_counted_and_never_written(tmp_path, monkeypatch):
    cfg = inf_lr(tmp_path, monkeypatch, iterations=6, max_consecutive_skips=3, save_every=1, keep_checkpoints=0)
    with pytest.raises(TrainingAborted, match="3 consecutive steps had a non-finite loss, gradient or weight update"):
        train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [1, 2, 3]
    assert all(r["nonfinite_update"] == 1.0 and isinstance(r["loss"], float) for r in records)
    base = ToyTransformer().state_dict()
    for path in checkpoint.checkpoint_dirs(tmp_path / "run" / "checkpoints"):  # iterations 1 and 2
        assert checkpoint.problem(path) is None
        weights = {k.removeprefix("module."): v for k, v in load_file(str(path / "model.safetensors")).items()}
        assert all(torch.equal(weights[k], base[k]) for k in base)  # every update was undone


def test_without_a_copy_a_non_finite_update_aborts_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "SNAPSHOT_MAX_ELEMENTS", 0)  # as full fine-tuning of a large model
    cfg = inf_lr(tmp_path, monkeypatch, iterations=3, save_every=1)
    with pytest.raises(TrainingAborted, match="iteration 1 made weights non-finite.*keeps no copy"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "final").exists()


def test_non_finite_weights_are_never_written(tmp_path, monkeypatch):
    def poisoned_update(ema):
        for s in ema.shadow:
            s.fill_(float("nan"))

    monkeypatch.setattr(trainer.EMA, "update", poisoned_update)
    with pytest.raises(TrainingAborted, match="not writing the checkpoint of iteration 1: the weights hold non-finite"):
        train(toy_config(tmp_path, iterations=2, save_every=1), progress=False)
    assert not (tmp_path / "run" / "checkpoints" / "step_0000001").exists()


@pytest.mark.parametrize("damage", ["nan_weights", "garbage_header", "garbage_trainer_state"])
def test_resume_auto_skips_same_size_damaged_checkpoints(run, damage):
    newest = run / "run" / "checkpoints" / "step_0000006"
    if damage == "nan_weights":
        file = str(newest / "model.safetensors")
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata()  # kept, so that the file keeps its size
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(file).items()}, file, metadata)
    else:
        victim = newest / ("model.safetensors" if damage == "garbage_header" else "trainer_state_0.pt")
        data = bytearray(victim.read_bytes())
        data[:16] = b"\xff" * 16  # same size: meta.json's byte counts cannot see it
        victim.write_bytes(bytes(data))
    assert checkpoint.problem(newest) is not None
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint .*step_0000006"):
        result = train(rerun(run, iterations=7), progress=False)
    assert result.start_step == 4


def test_fresh_start_truncates_the_history_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    cfg = toy_config(tmp_path, iterations=3, resume="auto")
    (tmp_path / "run").mkdir()
    stale = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]  # what a killed first attempt logged
    partial = '{"step": 3, "lo'  # killed while writing
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale) + partial)
    result = train(cfg, progress=False)
    assert [r["step"] for r in result.history if "loss" in r] == [1, 2, 3]


@pytest.mark.slow
def test_cli_rerun_into_a_finished_run_with_fewer_iterations_exits_2(run):
    cfg = rerun(run, iterations=4)
    (run / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    proc = subprocess.run([sys.executable, "-m", "leapalign.cli", "train", "--config", str(run / "cfg.yaml"),
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "iterations: 6 -> 4" in err and "resume=force" in err, err


def test_threads_setting_is_applied(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(toy_config(tmp_path, iterations=1, threads=1), progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

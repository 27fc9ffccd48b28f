"""Trainer invariants on the toy world (CPU, fp32): learning, accumulation, exact resume, NaN handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from helpers.toy import ToyTransformer, toy_config

from leapalign import checkpoint
from leapalign.config import to_dict
from leapalign.ema import EMA
from leapalign.trainer import TrainingAborted, train

TESTS = Path(__file__).parent


def weights(result, ema=False):
    return load_file(str(result.ema_weights if ema else result.weights))


def test_every_trainable_parameter_changes_and_outputs_are_written(tmp_path):
    result = train(toy_config(tmp_path, iterations=3), progress=False)
    base = ToyTransformer().state_dict()
    trained = weights(result)
    assert set(trained) == set(base)
    for name, value in trained.items():
        assert not torch.allclose(value, base[name]), f"{name} did not change"
    # history: one record per iteration with the LeapAlign diagnostics the issue asks for
    steps = [r for r in result.history if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("loss", "reward", "grad_norm", "d_j", "d_0", "w", "sigma_k", "sigma_j", "skipped_steps"):
        assert key in steps[-1]
    assert (result.output_dir / "tensorboard").is_dir() is False  # logger=none in the toy config
    assert (result.output_dir / "final" / "config.yaml").is_file()


def test_batch4_accum1_equals_batch1_accum4(tmp_path):
    # max_step=1 pins the leap pair to (0, 1), so the method's own randomness cannot differ between layouts.
    args = {"alpha": 0.3, "max_step": 1}
    a = train(toy_config(tmp_path / "a", batch_size=4, grad_accum=1, method__args=args), progress=False)
    b = train(toy_config(tmp_path / "b", batch_size=1, grad_accum=4, method__args=args), progress=False)
    wa, wb = weights(a), weights(b)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(wa["out.weight"], ToyTransformer().state_dict()["out.weight"])


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    cfg = toy_config(tmp_path, iterations=6, save_every=2, keep_checkpoints=0, resume="auto")
    reference = train(toy_config(tmp_path / "ref", iterations=6), progress=False)

    # A real kill: the CLI run SIGKILLs itself inside iteration 4 (one reward call per LeapAlign iteration),
    # after the checkpoint of iteration 2 and before that of iteration 4.
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    # this tree's src first: an installed leapalign elsewhere must not be the one tested
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]),
           "LEAPALIGN_TOY_KILL_AT": "4"}
    proc = subprocess.run([sys.executable, "-m", "leapalign.cli", "train", "--config", str(tmp_path / "cfg.yaml"),
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in checkpoint.checkpoint_dirs(Path(cfg.output_dir) / "checkpoints")] == ["step_0000002"]

    resumed = train(cfg, progress=False)
    assert resumed.start_step == 2
    assert [r["step"] for r in resumed.history if "loss" in r] == [1, 2, 3, 4, 5, 6]
    for ema in (False, True):
        wr, wu = weights(resumed, ema), weights(reference, ema)
        for name in wu:
            torch.testing.assert_close(wr[name], wu[name], rtol=0, atol=1e-7)


def test_resume_auto_skips_corrupt_checkpoint_and_keeps_retention(tmp_path):
    cfg = toy_config(tmp_path, iterations=4, save_every=1, keep_checkpoints=2)
    train(cfg, progress=False)
    root = Path(cfg.output_dir) / "checkpoints"
    assert [p.name for p in checkpoint.checkpoint_dirs(root)] == ["step_0000003", "step_0000004"]
    newest = checkpoint.checkpoint_dirs(root)[-1]
    victim = next(f for f in newest.iterdir() if f.name.startswith("trainer_state"))
    victim.write_bytes(victim.read_bytes()[:10])  # truncated as by a full disk
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint .*step_0000004"):
        assert checkpoint.latest_valid(root) == root / "step_0000003"
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint"):
        resumed = train(toy_config(tmp_path, iterations=5, save_every=1, keep_checkpoints=2, resume="auto"),
                        progress=False)
    assert resumed.start_step == 3


def test_nan_rewards_are_skipped_counted_and_abort_after_n(tmp_path):
    cfg = toy_config(tmp_path, iterations=10, reward__name="helpers.toy:nan_reward", max_consecutive_skips=3)
    with pytest.raises(TrainingAborted, match="3 consecutive steps had a non-finite loss, gradient or weight update"):
        train(cfg, progress=False)
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [1, 2, 3]


def test_ema_follows_its_recurrence():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    expected = torch.zeros(3)
    for value in (1.0, 2.0, -1.0):
        p.data.fill_(value)
        ema.update()
        expected = 0.9 * expected + 0.1 * value
    torch.testing.assert_close(ema.shadow[0], expected)
    with ema.swapped():
        torch.testing.assert_close(p.data, expected)
    assert torch.equal(p.data, torch.full((3,), -1.0))


def test_composite_reward_terms_are_trained_on_and_logged(tmp_path):
    terms = [{"name": "helpers.toy:toy_reward", "weight": 2.0}, {"name": "helpers.toy:toy_reward", "weight": 0.5, "hinge": 1e6}]
    result = train(toy_config(tmp_path, iterations=2, reward__terms=terms), progress=False)
    last = [r for r in result.history if "loss" in r][-1]
    # both raw terms are logged; the same reward twice -> name, name#2, with identical raw values
    assert last["reward/helpers.toy:toy_reward"] == pytest.approx(last["reward/helpers.toy:toy_reward#2"])
    # the hinge (a cap) is far above the reward: total = 2 r + 0.5 r
    assert last["reward"] == pytest.approx(2.5 * last["reward/helpers.toy:toy_reward"], rel=1e-5)


def test_bad_composite_terms_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"reward.terms\[0\]"):
        toy_config(tmp_path, reward__terms=[{"weight": 1.0}])
    with pytest.raises(ValueError, match="unknown key"):
        toy_config(tmp_path, reward__terms=[{"name": "helpers.toy:toy_reward", "wieght": 1.0}])


def test_inference_mode_rollout_does_not_change_training(tmp_path):
    a = train(toy_config(tmp_path / "a", iterations=2), progress=False)
    b = train(toy_config(tmp_path / "b", iterations=2, model__inference_rollout=False), progress=False)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grpo_family_gets_prompt_groups_fresh_noise_a_frozen_reference_and_the_iteration(tmp_path, monkeypatch):
    import dataclasses

    from leapalign.methods import METHODS

    calls = []
    real = METHODS["mix_grpo"]

    def spy(velocity, noise, sigmas, cond, reward_fn, cfg, gen, backward=None, *, reference=None, iteration=0):
        x, s, c = noise[:2], torch.full((2,), 0.7), type(cond)(cond.emb[:2])
        with torch.no_grad():
            gap = float((reference(x, s, c) - velocity(x, s, c)).abs().max())
        calls.append({"emb": cond.emb.clone(), "noise": noise.clone(), "iteration": iteration, "ref_gap": gap})
        return real.step(velocity, noise, sigmas, cond, reward_fn, cfg, gen, backward, reference=reference,
                         iteration=iteration)

    monkeypatch.setitem(METHODS, "mix_grpo", dataclasses.replace(real, step=spy))
    args = {"group_size": 3, "kl_beta": 0.1, "window_size": 2, "shift_interval": 1}
    result = train(toy_config(tmp_path, iterations=3, batch_size=2, method__name="mix_grpo", method__args=args),
                   progress=False)
    assert [c["iteration"] for c in calls] == [0, 1, 2]
    for c in calls:
        emb, noise = c["emb"], c["noise"].flatten(1)  # (B*G, D)
        assert emb.shape[0] == noise.shape[0] == 6
        assert torch.equal(emb[0], emb[2]) and torch.equal(emb[3], emb[5]) and not torch.equal(emb[0], emb[3])
        assert len({tuple(row.tolist()) for row in noise}) == 6  # every sample its own noise
    # the reference is the initial model: equal to the live one before the first update, different after
    assert calls[0]["ref_gap"] == 0 and calls[-1]["ref_gap"] > 0
    base, trained = ToyTransformer().state_dict(), weights(result)
    assert any(not torch.allclose(v, base[k]) for k, v in trained.items())
    assert "kl" in next(r for r in result.history if "loss" in r)

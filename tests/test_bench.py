"""Smoke test of `leapalign bench`: a tiny grid runs and writes valid JSON (no timing assertions: benchmarks
measure performance, tests never assert wall-clock numbers)."""

import json

import pytest

from leapalign.cli import main


@pytest.mark.slow
def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--steps", "3", "--cases", "leapalign", "leapalign_coupled", "refl", "draft_k2", "flow_grpo",
                 "mix_grpo", "--leap-steps", "0", "--leap-T", "3", "--batch", "4", "--warmup", "0", "--iters", "1",
                 "--no-isolate", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "bench.json").read_text())
    labels = [r["label"] for r in doc["rows"]]
    assert labels == ["leapalign", "leapalign_coupled", "refl", "draft_k2", "flow_grpo", "mix_grpo", "leapalign@k0",
                      "leapalign_coupled@k0"]
    for r in doc["rows"]:
        assert r["time_s"] > 0 and 0 <= r["rollout_share"] <= 1 and r["peak_mib"] > 0
    # grad-enabled velocity calls per iteration: the two leaps, one ReFL call, two checkpointed DRaFT steps
    # (each run again in backward); GRPO: one per trained SDE step (Flow-GRPO T - 1 = 2, the last step is never
    # trained; MixGRPO's window stays within steps 0..T-3, MixGRPO's max_timesteps: one step at T = 3)
    assert [r["grad_calls"] for r in doc["rows"][:6]] == [2, 2, 1, 4, 2, 1]
    assert all(r["time_per_sample_s"] == r["time_s"] / 4 for r in doc["rows"])
    assert [f["steps"] for f in doc["floors"]] == [3]
    assert "leapalign_time_over_floor" in doc["summary"]
    assert "| leapalign |" in capsys.readouterr().out


def test_bench_rejects_bad_grid(tmp_path, capsys):
    assert main(["bench", "--at", "ten=refl", "--out", str(tmp_path)]) == 2
    assert "--at takes T=CASE" in capsys.readouterr().err

"""`leapalign bench --rollout-paths`: one row per path with its deviation from plain, compile counts and LeapAlign's
metrics (no timing assertions: benchmarks measure, tests never assert wall-clock numbers)."""

import json

import pytest
import torch

from leapalign.cli import main


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo's compile cache is per code object and process-wide: start each test without earlier graphs."""
    torch._dynamo.reset()


@pytest.mark.slow
def test_bench_rollout_paths_writes_one_row_per_path(tmp_path, capsys):
    out = tmp_path / "paths"
    assert main(["bench", "--model", "flux-tiny", "--steps", "2", "--warmup", "0", "--iters", "1", "--rollout-paths",
                 "plain", "merged", "compiled", "--compile-backend", "aot_eager", "--out", str(out)]) == 0
    rows = json.loads((out / "paths.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["plain", "merged", "compiled"]
    plain, merged, compiled = rows
    assert plain["deviation"] == 0 and compiled["deviation"] == 0  # aot_eager runs the same kernels
    assert 0 < merged["deviation"] < 0.02  # bf16 weights: W + sBA rounded once to bf16
    # by block: 1 double-stream + 2 single-stream blocks, 3 graphs (the first single block's input has other strides)
    assert (compiled["compiles"], compiled["recompiles"], merged["compiles"]) == (3, 0, 0)
    assert merged["merges"] >= 1 and all(r["leapalign_s"] > 0 and r["d_j"] >= 0 for r in rows)
    assert "| merged | 2 |" in capsys.readouterr().out


def test_bench_rejects_an_unknown_rollout_path(tmp_path, capsys):
    assert main(["bench", "--rollout-paths", "merged:fp8", "--out", str(tmp_path)]) == 2
    assert "--rollout-paths takes NAME or NAME:DTYPE" in capsys.readouterr().err

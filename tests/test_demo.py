"""`leapalign demo` end to end on a tiny budget: report.json schema, report.md, plots; bad settings."""

import json

import pytest

from leapalign.cli import main
from leapalign.shapes.prompts import CATEGORIES


@pytest.mark.slow
def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "methods=leapalign,refl", "seeds=0,1", "iterations=2", "batch_size=2",
                 "num_steps=3", "eval_steps=3", "eval_per_category=1", "eval_repeats=2", "grid_prompts=3"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"base", "leapalign", "refl"}
    assert report["seeds"] == [0, 1] and report["iterations"] == 2 and report["wall_seconds"] > 0
    for name, stats in report["methods"].items():
        for key in ("reward", "overall", *CATEGORIES):
            assert 0 <= stats[key] <= 1 or key == "reward", (name, key)
            assert key in stats["std"]
        assert len(stats["per_seed"]) == 2
        if name != "base":
            assert 0 <= stats["layout_change_rate"] <= 1
    # the mean over seeds is the mean of the per-seed values
    ls = report["methods"]["leapalign"]
    assert ls["overall"] == pytest.approx(sum(r["overall"] for r in ls["per_seed"]) / 2)
    md = (out / "report.md").read_text()
    assert "| leapalign |" in md and "samples.png" in md
    assert (out / "reward_curves.png").stat().st_size > 0 and (out / "samples.png").stat().st_size > 0
    assert "base model" in capsys.readouterr().out  # progress lines


@pytest.mark.parametrize("bad", ["iterations=0", "methods=leap", "nonsense=1", "lr=abc", "seeds=", "guidance=0.5"])
def test_demo_bad_settings_exit_2(tmp_path, capsys, bad):
    assert main(["demo", "--out", str(tmp_path / "d"), bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leapalign demo: error:") and "\n" not in err
    assert not (tmp_path / "d").exists()  # nothing half-written

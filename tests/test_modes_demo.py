"""`leapalign demo world=modes` at a tiny budget writes the report keys, the picture and report.md; bad worlds fail
with one line; the mode world's statistics helpers are exact on hand-made inputs."""

import json

import pytest

from leapalign.cli import main
from leapalign.modes.demo import ModesDemoConfig
from leapalign.modes.stats import at_gain, paired_interval


def test_modes_demo_tiny_budget_writes_the_report(tmp_path):
    out = tmp_path / "modes"
    rc = main(["demo", "world=modes", "seeds=0,1", "iterations=2", "eval_every=1", "eval_per_cond=4",
               "curve_per_cond=4", "methods=leapalign,refl,flow_grpo", "lrs=1e-3", "ablations=leapalign_late_half",
               "--quick", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("base", "leapalign", "refl", "flow_grpo", "leapalign_late_half"):
        for key in ("target_mode_rate", "off_manifold_rate", "reward"):
            cell = report["methods"][name][key]
            assert set(cell) == {"mean", "std"} and 0.0 <= cell["mean"] <= 1.0
    assert report["methods"]["base"]["reward"]["std"] == 0.0
    assert report["curves"]["leapalign"]["iteration"] == [0, 1, 2]
    assert set(report["tuned"]["chosen_lr"]) == {"leapalign", "refl", "flow_grpo"}
    assert set(report["equal_time"]["iterations"]) == {"refl", "flow_grpo"}
    assert set(report["paired"]) == {"refl", "flow_grpo", "leapalign_late_half"}
    assert len(report["mode_decision"]) == 10 and "gain" in report["equal_gain"]
    assert report["seeds"] == [0, 1] and len(report["velocity_change"]["refl"]) == 10
    assert (out / "modes_samples.png").stat().st_size > 0 and (out / "modes_curves.png").exists()
    assert "(b) Off-manifold rate at equal reward gain" in (out / "report.md").read_text()


def test_unknown_world_and_rows_fail_with_one_line(tmp_path, capsys):
    assert main(["demo", "world=cubes", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown world 'cubes'" in err
    assert main(["demo", "world=modes", "methods=leapalign,reflx", "--out", str(tmp_path)]) == 2
    assert "unknown mode-world row 'reflx'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reward"):
        ModesDemoConfig(reward="style")


def test_paired_interval_and_equal_gain_interpolation():
    a = [[1.0, 0.0], [1.0, 0.0]]
    b = [[0.0, 0.0], [0.0, 0.0]]
    p = paired_interval(a, b)
    assert p["mean"] == 0.5 and 0.0 <= p["low"] <= 0.5 <= p["high"] <= 1.0
    same = paired_interval(b, b)
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}
    curve = [{"iteration": 0, "reward": 0.2, "off": 0.1}, {"iteration": 10, "reward": 0.6, "off": 0.3}]
    assert at_gain(curve, 0.2, 0.2, "off") == pytest.approx((0.2, 5.0))
    assert at_gain(curve, 0.2, 0.5, "off") is None

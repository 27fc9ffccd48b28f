"""`leapalign demo` end to end on a tiny budget: report.json schema, report.md, grids; the parallel path equals
the serial one bit for bit; bad settings."""

import json

import pytest
import torch

from leapalign.cli import main
from leapalign.shapes.prompts import CATEGORIES

TINY = ["seeds=0,1", "iterations=2", "batch_size=2", "num_steps=3", "eval_steps=3", "eval_per_category=1",
        "eval_repeats=1", "eval_min_samples=2", "val_per_category=1", "val_repeats=1", "lrs=1e-5,3e-5",
        "tune_iterations=1", "probe_captions=2", "grid_captions=2"]


@pytest.mark.slow
def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "methods=leapalign,refl", "workers=1", "precision=bf16", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] == "bf16"
    assert set(report["methods"]) == {"base", "leapalign", "refl"}
    assert report["seeds"] == [0, 1] and report["iterations"] == 2 and report["wall_seconds"] > 0
    for name, stats in report["methods"].items():
        for key in ("reward", "overall", *CATEGORIES):
            assert 0 <= stats[key] <= 1 or key == "reward", (name, key)
            assert key in stats["std"]
        if name != "base":
            assert len(stats["per_seed"]) == 2
            assert 0 <= stats["layout_change_rate"] <= 1 and stats["displacement_px"] >= 0
            assert stats["wall_seconds"] >= stats["train_seconds"] > 0
    ls = report["methods"]["leapalign"]
    assert ls["overall"] == pytest.approx(sum(r["overall"] for r in ls["per_seed"]) / 2)
    # tuning on validation: one row per method x lr (plus the base), the chosen lr is one of them
    assert len(report["tuning"]) == 1 + 2 * 2 and set(report["chosen_lr"]) == {"leapalign", "refl"}
    assert all(lr in (1e-5, 3e-5) for lr in report["chosen_lr"].values())
    assert set(report["paired"]) == {"base", "refl"} and "overall" in report["paired"]["refl"]
    lo, hi = report["paired"]["refl"]["overall"][1:]
    assert lo <= hi
    assert report["entries"]["refl"]["reach"] == "t in 2-2 (one step)"
    assert len(report["entries"]["leapalign"]["velocity_change"]) == 3
    md = (out / "report.md").read_text()
    assert "| leapalign |" in md and "samples_color_attr.png" in md and "leapalign minus" in md
    for cat in CATEGORIES:
        assert (out / f"samples_{cat}.png").stat().st_size > 0
    assert (out / "why.png").stat().st_size > 0
    printed = capsys.readouterr().out  # progress lines
    assert "chosen lr" in printed and "job 4/4 done: refl seed 1 lr" in printed


@pytest.mark.slow
def test_parallel_workers_equal_serial_bit_for_bit(tmp_path):
    from leapalign.demo.parallel import Pool
    from leapalign.demo.run import Demo, DemoConfig, entries
    from leapalign.config import parse_overrides

    cfg = parse_overrides(DemoConfig, ["methods=leapalign,drtune", *TINY])
    results = {}
    for workers in (1, 2):
        with Pool(workers) as pool:
            demo = Demo(cfg, tmp_path / f"w{workers}", pool, ablation=False)
            jobs = [demo.job(e, s, 1e-5, 2, demo.held, 0, probe=demo.probe) for e in entries(cfg, False)
                    for s in (0, 1)]
            results[workers] = pool.map(jobs)
    for a, b in zip(results[1], results[2]):
        assert a.job.name == b.job.name and a.job.seed == b.job.seed
        assert torch.equal(a.rewards, b.rewards) and torch.equal(a.images, b.images)
        assert torch.equal(a.correct, b.correct) and a.velocity_change == b.velocity_change
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


@pytest.mark.slow
def test_demo_ablation_rows(tmp_path):
    out = tmp_path / "abl"
    assert main(["demo", "--ablation", "--out", str(out), "workers=2", *TINY, "seeds=0"]) == 0
    report = json.loads((out / "report.json").read_text())
    names = set(report["methods"]) - {"base"}
    assert names == {"leapalign", "alpha=0", "alpha=1", "weight d_j", "no weight", "late half (1-2)", "one leap"}
    assert len(set(report["chosen_lr"].values())) == 1  # tuned once, for the full method
    assert report["entries"]["late half (1-2)"]["reach"].startswith("leaps k -> j with 1 <= k")


@pytest.mark.parametrize("bad", ["iterations=0", "methods=leap", "nonsense=1", "lr=abc", "seeds=", "guidance=0.5",
                                 "lrs=fast", "workers=0", "precision=fp16"])
def test_demo_bad_settings_exit_2(tmp_path, capsys, bad):
    assert main(["demo", "--out", str(tmp_path / "d"), bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leapalign demo: error:") and "\n" not in err
    assert not (tmp_path / "d").exists()  # nothing half-written


@pytest.mark.slow
def test_demo_grpo_rows_at_equal_iterations_and_equal_time(tmp_path):
    out = tmp_path / "grpo"
    assert main(["demo", "--out", str(out), "methods=leapalign,flow_grpo,mix_grpo", "workers=1", *TINY,
                 "seeds=0", "batch_size=4", "num_steps=4", "lrs=1e-5"]) == 0
    report = json.loads((out / "report.json").read_text())
    timed = [n for n in report["methods"] if "equal time" in n]
    assert len(timed) == 2 and all(n.split()[0] in ("flow_grpo", "mix_grpo") for n in timed)
    e = report["entries"]["flow_grpo"]
    assert e["iterations"] == 2 and e["batch"] == "1 prompts x 4 samples"  # 4 samples per iteration, like LeapAlign
    assert e["reach"].startswith("SDE steps 0-2")


def test_autocast_transformer_runs_the_dit_in_bf16_and_returns_float32_velocities():
    from leapalign.adapters import load_adapter
    from leapalign.demo.parallel import autocast_transformer
    from leapalign.demo.run import DemoConfig

    adapter = load_adapter("shapes", None, guidance_scale=3.0)
    dit = adapter.transformer
    cond = adapter.encode_prompts(["a photo of a red circle", "a photo of two squares"])
    x, sigma = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        ref = adapter.velocity(x, sigma, cond)
        seen = []
        hook = dit.out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        with autocast_transformer(adapter, True):
            v = adapter.velocity(x, sigma, cond)
        hook.remove()
    assert seen == [torch.bfloat16] and v.dtype == torch.float32 and adapter.transformer is dit
    assert 0 < (v - ref).abs().max() and (v - ref).norm() < 0.05 * ref.norm()  # bf16 rounding, same function
    with autocast_transformer(adapter, False):
        assert adapter.transformer is dit
    assert DemoConfig(precision="auto").resolved_precision() in ("bf16", "fp32")
    assert DemoConfig(precision="fp32").resolved_precision() == "fp32"

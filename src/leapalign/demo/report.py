"""report.json's summary and report.md of the ShapesWorld demo: the held-out table, the paired differences, the
tuning table, what each method can reach and changed, plots and per-category sample grids."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from leapalign.demo import analysis, protocol
from leapalign.demo.grids import category_grid
from leapalign.shapes.prompts import CATEGORIES, parse_prompt

COLUMNS = ("reward", "overall", *CATEGORIES, "layout_change_rate", "displacement_px", "wall_seconds")
SHORT = {"single_object": "single", "two_object": "two obj", "counting": "count", "colors": "colours",
         "color_attr": "colour attr", "layout_change_rate": "layout changed", "displacement_px": "moved (px)",
         "wall_seconds": "time (s)"}


def summarise(demo, chosen: dict, tuning: list[dict], base, runs: dict) -> dict:
    """The report's numbers: per entry mean ± std over seeds, paired differences, tuning, reach, why."""
    cfg, held = demo.cfg, demo.held
    methods = {"base": analysis.seed_stats([analysis.run_scores(base, held, None)])}
    for name, results in runs.items():
        methods[name] = analysis.seed_stats([analysis.run_scores(r, held, base) for r in results])
    ref = demo.entries[0].name
    paired = {}
    for name, results in [("base", [base] * len(runs[ref])), *runs.items()]:
        if name == ref:
            continue
        units = protocol.paired_units([r.correct for r in runs[ref]], [r.correct for r in results], held)
        paired[name] = protocol.bootstrap(units, cfg.bootstrap, seed=0)
    info = {}
    for name, results in runs.items():
        job = results[0].job
        info[name] = {
            "method": job.method, "args": job.args, "lr": job.lr, "iterations": job.iterations,
            "batch": f"{job.batch_size} prompts x {job.args.get('group_size', 1)} samples",
            "reach": protocol.reachable_steps(job.method, job.args, cfg.num_steps),
            "velocity_change": [statistics.fmean(v) for v in zip(*(r.velocity_change for r in results))]
            if results[0].velocity_change else [],
            "step_histogram": analysis.step_histogram(
                [r.history for r in results], lambda rec, m=job.method: protocol.drawn_step(m, rec),
                cfg.num_steps) if job.method in ("leapalign", "refl", "drtune", "mix_grpo") else None,
        }
    cats = [parse_prompt(p).category for p in held.prompts]
    return {
        "reference": ref, "methods": methods, "paired": paired, "entries": info, "chosen_lr": chosen,
        "tuning": [{k: v for k, v in row.items() if k != "per_seed"} for row in tuning],
        "seeds": list(cfg.seeds), "iterations": cfg.iterations,
        "heldout": {"captions": len(held.captions), "samples": len(held.prompts),
                    "per_category": {c: {"captions": sum(parse_prompt(t).category == c for t in held.captions),
                                         "samples": cats.count(c)} for c in CATEGORIES if c in cats}},
        "validation": {"captions": len(demo.val.captions), "samples": len(demo.val.prompts)},
    }


def _cell(stats: dict, key: str) -> str:
    if key not in stats:
        return "–"
    fmt = ".0f" if key == "wall_seconds" else ".2f" if key == "displacement_px" else ".3f"
    return f"{stats[key]:{fmt}} ± {stats['std'][key]:{fmt}}"


def table(report: dict) -> str:
    """Markdown table: one row per entry, mean ± std over seeds."""
    head = "| method | lr | " + " | ".join(SHORT.get(c, c) for c in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 2) + "|"
    rows = [f"| {name} | {report['entries'].get(name, {}).get('lr', '–')} | "
            + " | ".join(_cell(stats, k) for k in COLUMNS) + " |" for name, stats in report["methods"].items()]
    return "\n".join([head, rule, *rows])


def paired_table(report: dict) -> str:
    cats = ["overall", *[c for c in CATEGORIES if c in report["heldout"]["per_category"]]]
    head = f"| {report['reference']} minus | " + " | ".join(SHORT.get(c, c) for c in cats) + " |"
    rule = "|---" * (len(cats) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(f"{d[c][0]:+.3f} [{d[c][1]:+.3f}, {d[c][2]:+.3f}]" for c in cats) + " |"
            for name, d in report["paired"].items()]
    return "\n".join([head, rule, *rows])


def tuning_table(report: dict) -> str:
    rows = ["| method | lr | validation overall | validation reward | train (s) |", "|---|---|---|---|---|"]
    for row in report["tuning"]:
        lr = "–" if row["lr"] is None else f"{row['lr']:g}"
        mark = " (chosen)" if row["lr"] is not None and report["chosen_lr"].get(row["entry"]) == row["lr"] else ""
        rows.append(f"| {row['entry']} | {lr}{mark} | {row['overall']:.3f} | {row['reward']:.3f} | "
                    f"{row['train_seconds']:.0f} |")
    return "\n".join(rows)


def plot_why(report: dict, path: Path) -> None:
    """Left: per-step velocity change along the base trajectories; right: where updates were computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name, e in report["entries"].items():
        if e["velocity_change"]:
            a.plot(range(len(e["velocity_change"])), e["velocity_change"], marker="o", label=name)
        h = e["step_histogram"]
        if h and sum(h["raised"]) + sum(h["other"]):
            steps = torch.arange(len(h["raised"]))
            total = torch.tensor(h["raised"]) + torch.tensor(h["other"])
            (line,) = b.plot(steps, total / total.sum(), marker="o", label=f"{name} (all updates)")
            raised = torch.tensor(h["raised"], dtype=torch.float)
            b.plot(steps, raised / raised.sum().clamp(min=1), ls="--", color=line.get_color(),
                   label=f"{name} (next reward rose)")
    a.set(xlabel="rollout step i (0 = pure noise)", ylabel="(s_i - s_i+1) mean |v - v_base|",
          title="what fine-tuning changed, per step")
    b.set(xlabel="step of the update (LeapAlign k, ReFL t, DRTune first step)", ylabel="share of updates",
          title="where updates were computed")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_grids(demo, base, runs: dict, out: Path) -> list[tuple[str, str]]:
    """One grid per category: grid_captions captions (first noise of each), rows base + every entry (first seed)."""
    held, n = demo.held, demo.cfg.grid_captions
    files = []
    for cat in CATEGORIES:
        caps = [c for c, t in enumerate(held.captions) if parse_prompt(t).category == cat]
        caps = caps[::max(1, len(caps) // n)][:n]
        if not caps:
            continue
        idx = [held.unit.index(c) for c in caps]
        rows = {"base": base.images[idx], **{name: rs[0].images[idx] for name, rs in runs.items()}}
        name = f"samples_{cat}.png"
        category_grid(rows, [held.captions[c] for c in caps], out / name)
        files.append((cat, name))
    return files


def write_report(report: dict, demo, base, runs: dict, out: Path) -> None:
    s = report["settings"]
    plot_why(report, out / "why.png")
    grids = write_grids(demo, base, runs, out)
    per_cat = ", ".join(f"{c} {v['captions']} x {v['samples'] // v['captions']}"
                        for c, v in report["heldout"]["per_category"].items())
    reach = "\n".join(f"- **{name}**: {e['reach']}; batch {e['batch']}" for name, e in report["entries"].items())
    load = report["load_average"]
    lines = [
        "# ShapesWorld demo" + (" — LeapAlign ablation" if report["ablation"] else ""),
        "",
        f"Reward `{s['reward']}`. Every method: {s['iterations']} iterations, {s['batch_size']} samples per "
        f"iteration, T = {s['num_steps']} rollout steps, guidance {s['guidance']}; lr chosen per method on "
        f"{report['validation']['captions']} validation captions from the training compositions "
        f"({report['validation']['samples']} samples; {s['tune_iterations']} iterations, seed {s['tune_seed']}, "
        f"lrs {s['lrs']}; ties by reward). Held-out: {report['heldout']['captions']} captions, "
        f"{report['heldout']['samples']} samples ({per_cat}), {s['eval_steps']} steps, the same noise for every "
        f"model; mean ± std over seeds {report['seeds']}. Wall time {report['wall_seconds']:.0f} s "
        f"(tuning {report['tune_seconds']:.0f} s) with {s['workers']} workers, {report['precision']}; load average "
        f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end.",
        "",
        "`overall` and the categories: the GenEval-like evaluator (never a training signal). `layout changed`: "
        "share of same-noise samples where an object appeared, vanished, changed colour or shape, or moved more "
        "than 3.2 px against the base model; `moved`: mean centre displacement of objects matched by colour and "
        "shape. `time`: training + held-out evaluation of one run, in a worker.",
        "",
        table(report),
        "",
        f"## Paired differences (95% bootstrap, {s['bootstrap']} resamples of caption x seed units)",
        "",
        "Same caption, same noise, same training seed; GenEval-like accuracy.",
        "",
        paired_table(report),
        "",
        "## Tuning (validation captions, one seed)",
        "",
        tuning_table(report),
        "",
        "## Steps each method can reach",
        "",
        reach,
        "",
        "## Why: which steps changed",
        "",
        "Left: along the base model's trajectories of validation captions (same noise), how much each fine-tuned "
        "model's velocity differs from the base at each step, times the step length. Right: where the updates "
        "were computed (LeapAlign's leap start k, ReFL's t, DRTune's first training step), all updates and those "
        "after which the next iteration's training reward rose (noisy: consecutive batches differ).",
        "",
        "![why](why.png)",
        "",
        "## Samples (first seed; one caption and one noise per column, the same for every row)",
        "",
        *[f"### {cat}\n\n![{cat}]({name})\n" for cat, name in grids],
    ]
    (out / "report.md").write_text("\n".join(lines))

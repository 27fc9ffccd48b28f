"""report.md, the reward-curve plot and the same-noise sample grid of the ShapesWorld demo."""

from __future__ import annotations

from pathlib import Path

import torch

from leapalign.evaluate import save_grid
from leapalign.shapes.prompts import CATEGORIES

COLUMNS = ("reward", "overall", *CATEGORIES, "layout_change_rate")


def _cell(stats: dict, key: str) -> str:
    if key not in stats:
        return "–"
    return f"{stats[key]:.3f} ± {stats['std'][key]:.3f}"


def table(report: dict) -> str:
    """Markdown table: one row per method, mean ± std over seeds."""
    head = "| method | " + " | ".join(COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(_cell(stats, k) for k in COLUMNS) + " |"
            for name, stats in report["methods"].items()]
    return "\n".join([head, rule, *rows])


def plot_curves(curves: dict[str, list[list[float]]], path: Path) -> None:
    """Training reward per iteration: mean over seeds, smoothed over 10 iterations (line), raw min-max over seeds
    (shade). Note the methods score different things: the final sample (LeapAlign, DRaFT), a one-step prediction
    from a late step (ReFL, DRTune)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, runs in curves.items():
        n = min(len(r) for r in runs)
        if n == 0:
            continue
        t = torch.tensor([r[:n] for r in runs])
        x = range(1, n + 1)
        mean = t.mean(0)
        smooth = torch.stack([mean[max(0, i - 9):i + 1].mean() for i in range(n)])
        ax.plot(x, smooth, label=name)
        ax.fill_between(x, t.min(0).values, t.max(0).values, alpha=0.08)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training reward (batch mean, 10-iteration average)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, curves: dict, grids: dict[str, torch.Tensor], grid_prompts: list[str],
                 out: Path) -> None:
    plot_curves(curves, out / "reward_curves.png")
    order = list(grids)
    stacked = torch.cat([grids[name] for name in order])  # rows: methods, columns: captions
    save_grid(stacked, out / "samples.png", nrow=len(grid_prompts))
    s = report["settings"]
    lines = [
        "# ShapesWorld demo",
        "",
        f"Base model vs {', '.join(s['methods'])} at equal budget: {s['iterations']} iterations x batch "
        f"{s['batch_size']}, {s['num_steps']} rollout steps, lr {s['lr']}, LeapAlign alpha {s['alpha']}; "
        f"{report['eval_captions']} held-out captions x {s['eval_repeats']} noise samples, {s['eval_steps']} "
        f"sampling steps; mean ± std over seeds "
        f"{report['seeds']}. Wall time {report['wall_seconds']:.0f} s.",
        "",
        "Scores: held-out reward (the training signal's model) and the GenEval-like evaluator's accuracy "
        "(never used for training). `layout_change_rate`: share of same-noise samples whose objects moved, "
        "appeared or vanished relative to the base model.",
        "",
        table(report),
        "",
        "## Training reward",
        "",
        "LeapAlign and DRaFT-LV score the final sample; ReFL and DRTune a one-step prediction from a late step, "
        "so the curves show each method's own signal; compare methods on the held-out table above.",
        "",
        "![reward curves](reward_curves.png)",
        "",
        "## Samples (same noise per column)",
        "",
        f"Rows, top to bottom: {', '.join(order)}. Columns: " + "; ".join(f"{i + 1}. {p}"
                                                                       for i, p in enumerate(grid_prompts)) + ".",
        "",
        "![samples](samples.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))

"""report.json, report.md and the pictures of the mode-world demo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from leapalign.modes.world import ModeWorld  # noqa: E402

COLUMNS = ("target_mode_rate", "off_manifold_rate", "reward", "moved", "mode_changed")


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    return "–" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}"


def _table(rows: dict, extra: tuple[str, ...] = ("lr", "iterations")) -> str:
    head = "| row | " + " | ".join(extra) + " | target mode | off manifold | reward | moved | mode changed | train s |"
    lines = [head, "|" + "---|" * (len(extra) + 7)]
    for name, row in rows.items():
        ex = " | ".join(f"{row.get(k, '–'):g}" if isinstance(row.get(k), float) else str(row.get(k, "–"))
                        for k in extra)
        lines.append(f"| {name} | {ex} | " + " | ".join(_cell(row, k) for k in COLUMNS)
                     + f" | {_cell(row, 'train_seconds')} |")
    return "\n".join(lines)


def _paired_table(paired: dict, ref: str) -> str:
    lines = [f"| {ref} minus | target mode | off manifold | reward |", "|---|---|---|---|"]
    for name, p in paired.items():
        lines.append(f"| {name} | " + " | ".join(f"{p[k]['mean']:+.3f} [{p[k]['low']:+.3f}, {p[k]['high']:+.3f}]"
                                                for k in ("target_mode_rate", "off_manifold_rate", "reward")) + " |")
    return "\n".join(lines)


def _gain_table(eq: dict) -> str:
    lines = [f"Common reward gain: +{eq['gain']:.3f} over the base model.", "",
             "| row | seeds reaching it | at iteration | off manifold there | target mode there |", "|---|---|---|---|---|"]
    for name, r in eq["rows"].items():
        if r["seeds_reached"]:
            lines.append(f"| {name} | {r['seeds_reached']} | {r['iteration']['mean']:.1f} | "
                         f"{_cell(r, 'off_manifold_rate')} | {_cell(r, 'target_mode_rate')} |")
        else:
            lines.append(f"| {name} | 0 | – | – | – |")
    return "\n".join(lines)


def _change_table(report: dict) -> str:
    steps = len(report["mode_decision"])
    lines = ["| row | " + " | ".join(str(i) for i in range(steps)) + " |", "|---|" + "---|" * steps,
             "| sigma | " + " | ".join(f"{p['sigma']:.2f}" for p in report["mode_decision"]) + " |",
             "| base: mode kept | " + " | ".join(f"{p['kept']:.2f}" for p in report["mode_decision"]) + " |"]
    for name, v in report["velocity_change"].items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + " |")
    return "\n".join(lines)


def plot_samples(report: dict, path: Path) -> None:
    """Per row: the picture condition's trajectories coloured by step, final samples, the base model's samples
    (grey) and the modes (circles of radius r_off; the target in red)."""
    w = report["world"]
    world = ModeWorld(dim=w["dim"])
    target = world.target
    centers = world.plane(world.center_table)  # (M, 2)
    pics = report["pictures"]
    cols = min(5, len(pics))
    rows = math.ceil(len(pics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    base_final = torch.tensor(pics["base"])[-1]
    lim = w["radius"] + 1.2
    for ax, (name, pic) in zip(axes.flat, pics.items()):
        path_xy = torch.tensor(pic)  # (T+1, n, 2)
        steps = path_xy.shape[0] - 1
        segs = torch.stack([path_xy[:-1], path_xy[1:]], 2).permute(1, 0, 2, 3).reshape(-1, 2, 2)  # (n*T, 2, 2)
        colour = torch.arange(steps).repeat(path_xy.shape[1]).float()
        lc = LineCollection(segs.numpy(), array=colour.numpy(), cmap="viridis", linewidths=0.5, alpha=0.6)
        ax.add_collection(lc)
        for m, (cx, cy) in enumerate(centers.tolist()):
            ax.add_patch(plt.Circle((cx, cy), w["off_radius"], fill=False, lw=1.2,
                                    color="red" if m == int(target) else "black"))
        if name != "base":
            ax.scatter(base_final[:, 0], base_final[:, 1], s=3, c="0.6")
        ax.scatter(path_xy[-1, :, 0], path_xy[-1, :, 1], s=4, c="black")
        row = report["methods"].get(name, {})
        tm, off = row.get("target_mode_rate", {}).get("mean"), row.get("off_manifold_rate", {}).get("mean")
        # the title's rates are over all held-out conditions; the panel shows the picture condition only
        ax.set_title(f"{name}\ntarget {tm:.2f}, off {off:.2f}" if tm is not None else name, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(pics):]:
        ax.axis("off")
    fig.colorbar(lc, ax=axes, shrink=0.6, label="rollout step (0 = noise)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(report["config"]["methods"]) + list(report["config"]["ablations"])[:1]
    for name in names:
        c = report["curves"][name]
        if not c:
            continue
        style = "--" if name not in report["config"]["methods"] else "-"
        for ax, key in zip(axes, ("target_mode_rate", "off_manifold_rate", "reward")):
            ax.plot(c["iteration"], c[key], style, label=name)
    for ax, key in zip(axes, ("target_mode_rate", "off_manifold_rate", "reward")):
        ax.axhline(report["curves"]["base"][key], color="0.5", lw=0.8)
        ax.set_title(f"{key} (held-out, mean over seeds)", fontsize=10)
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot_samples(report, out / "modes_samples.png")
    plot_curves(report, out / "modes_curves.png")
    data = {k: v for k, v in report.items() if k != "pictures"}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    cfg, methods = report["config"], report["methods"]
    main = {k: methods[k] for k in ["base"] + list(cfg["methods"])}
    abl = {k: methods[k] for k in [cfg["methods"][0]] + list(cfg["ablations"])}
    tuned = report["tuned"]
    md = [f"# Mode world ({cfg['dim']}-D, reward `{cfg['reward']}`)", "",
          f"{len(report['seeds'])} seeds, {cfg['iterations']} iterations of {cfg['conds_per_iter']} x {cfg['group']} "
          f"samples, T = {cfg['num_steps']}, held-out conditions {report['world']['splits']['heldout']} x "
          f"{cfg['eval_per_cond']} samples; off-manifold radius {report['world']['off_radius']:.3f}; "
          f"wall {report['wall_seconds']:.0f} s.", "",
          "![samples](modes_samples.png)", "", "![curves](modes_curves.png)", "",
          f"## (a) Shared budget: lr {cfg['lr']:g} for every row", "", _table(main), "",
          _paired_table({k: v for k, v in report["paired"].items() if k in cfg["methods"]}, cfg["methods"][0]), "",
          "## (b) Off-manifold rate at equal reward gain", "", _gain_table(report["equal_gain"]), "",
          "## (c) lr tuned per method on the validation conditions", "",
          "Validation reward per lr: " + "; ".join(
              f"{n}: " + ", ".join(f"{lr} -> {r:.3f}" for lr, r in t.items())
              for n, t in tuned["validation_reward"].items()), "",
          _table(tuned["rows"]), "",
          ("Saturated: every tuned method puts >= 95% of held-out samples in the target mode."
           if tuned["saturated"] else "Not saturated at the tuned end point."), "",
          "## Equal training time", "",
          f"Iterations scaled to {cfg['methods'][0]}'s {report['equal_time']['reference_seconds']:.2f} s of training.",
          "", _table(report["equal_time"]["rows"]), "",
          "## LeapAlign ablations (shared budget)", "", _table(abl), "",
          _paired_table({k: v for k, v in report["paired"].items() if k in cfg["ablations"]}, cfg["methods"][0]), "",
          "## Where the mode is decided, and where each row changed the velocity", "",
          "Base model: share of samples that keep their mode when re-noised to step i's sigma and re-sampled. Rows: "
          "mean ||v_tuned - v_base|| on the base model's trajectories at step i.", "", _change_table(report), ""]
    (out / "report.md").write_text("\n".join(md))

"""Presenting a benchmark document: a terminal/markdown table and a PNG of memory versus T and leap start step."""

from __future__ import annotations

from pathlib import Path


def _mem(mib: float, cuda: bool) -> str:
    return f"{mib / 1024:.2f} GiB" if cuda else f"{mib:.1f} MiB"


def table(doc: dict) -> str:
    """A markdown table, one row per case, then the floors and derived numbers."""
    cuda = doc["spec"]["device"].startswith("cuda")
    peak_name = "peak alloc" if cuda else "peak RSS"
    lines = [f"| case | T | {peak_name} | extra over start | time/iter | time/sample | rollout share | grad calls |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        per_sample = f"{r['time_per_sample_s']:.3f} s" if "time_per_sample_s" in r else "-"
        lines.append(f"| {r['label']} | {r['steps']} | {_mem(r['peak_mib'], cuda)} | {_mem(r['extra_mib'], cuda)} | "
                     f"{r['time_s']:.3f} s | {per_sample} | {100 * r['rollout_share']:.0f}% | {r['grad_calls']} |")
    if doc["floors"]:
        head = "| T | rollout | fwd+bwd (1 call) | decoder+reward fwd+bwd | floor | LeapAlign / floor |"
        if cuda:
            head += " rollout TFLOP/s |"
        lines += ["", head, "| ---: " * (head.count("|") - 1) + "|"]
        ratios = doc.get("summary", {}).get("leapalign_time_over_floor", {})
        for f in doc["floors"]:
            ratio = ratios.get(f["steps"], ratios.get(str(f["steps"])))
            line = (f"| {f['steps']} | {f['rollout_s']:.3f} s | {f['forward_backward_s']:.3f} s | "
                    f"{f['reward_s']:.3f} s | {f['floor_s']:.3f} s | {'-' if ratio is None else f'{ratio:.2f}'} |")
            if cuda:
                line += f" {f['rollout_tflops_per_s']:.0f} |"
            lines.append(line)
    for f in doc["floors"]:
        if "rollout_eager_s" in f:
            lines.append(f"\nT = {f['steps']}: {doc['spec']['rollout_path']} rollout {f['rollout_s']:.3f} s, plain "
                         f"{f['rollout_eager_s']:.3f} s (x{f['rollout_eager_s'] / f['rollout_s']:.2f}).")
    if "matmul_peak_tflops" in doc:
        lines += ["", f"Measured bf16 matmul peak: {doc['matmul_peak_tflops']:.0f} TFLOP/s."]
    return "\n".join(lines)


def plot(doc: dict, path: str | Path) -> Path | None:
    """Extra memory over the start versus T (every method) and versus the earliest updated step (T fixed):
    LeapAlign's leap start k, DRaFT-K's T - K. Returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cuda = doc["spec"]["device"].startswith("cuda")
    scale, unit = (1024, "GiB") if cuda else (1, "MiB")
    rows = doc["rows"]
    fig, (ax_t, ax_k) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_t.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 11 methods: the default cycle repeats after 10
    for label in dict.fromkeys(r["label"] for r in rows if "@" not in r["label"]):
        pts = sorted((r["steps"], r["extra_mib"] / scale) for r in rows if r["label"] == label)
        ax_t.plot(*zip(*pts), marker="o", label=label)
    ax_t.set(xlabel="sampling steps T", ylabel=f"peak memory over start ({unit})", title="memory vs T")
    ax_t.legend(fontsize=7)
    ax_t.set_ylim(bottom=0)
    sweep = [r for r in rows if r["leap_k"] is not None]
    if sweep:
        steps = sweep[0]["steps"]
        for name in ("leapalign", "leapalign_coupled"):
            pts = sorted((r["leap_k"], r["extra_mib"] / scale) for r in sweep if r["label"].startswith(name + "@"))
            if pts:
                ax_k.plot(*zip(*pts), marker="o", label=name)
        # DRaFT-K's gradient reaches step T - K; full backpropagation (K = T) reaches step 0
        draft = sorted((steps - r["cfg"].get("k", steps), r["extra_mib"] / scale) for r in rows
                       if r["method"] in ("draft", "full") and r["steps"] == steps)
        if draft:
            ax_k.plot(*zip(*draft), marker="s", linestyle="--", label="draft K (at T - K)")
        ax_k.set(xlabel=f"earliest step reached by the gradient (T = {steps})", ylabel=f"peak over start ({unit})",
                 title="memory vs leap start step")
        ax_k.legend(fontsize=7)
        ax_k.set_ylim(bottom=0)
    fig.suptitle(f"{doc['workload'].get('model')} on {doc['environment'].get('gpu', 'CPU')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

"""Score a finished ShapesWorld demo's models with rewards other than the one they trained on.

For every final run of a `leapalign demo --out DIR` (not the tuning runs) and the base model: resample the demo's
held-out samples (same captions, noise, steps, guidance and precision, read from DIR/report.json) and report, mean
± std over seeds, the contrastive reward (`shapes`), the composition reward (`shapes-compose`) and the GenEval-like
overall, which must reproduce the demo's own. Guards a rule-reward run against gains that are only the rule
engine's blind spot (docs/methods.md).

    python scripts/shapes_extra_scores.py DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from leapalign.adapters import load_adapter
from leapalign.demo import protocol
from leapalign.demo.parallel import autocast_transformer
from leapalign.evaluate import sample_images
from leapalign.models import load_trained
from leapalign.rewards import load_reward
from leapalign.shapes.evaluator import check, detect


def scores(adapter, held: protocol.CaptionSet, s: dict, rewards: dict) -> dict[str, float]:
    with autocast_transformer(adapter, s["precision"] == "bf16"):
        images = sample_images(adapter, held.prompts, seed=s["eval_seed"], num_steps=s["eval_steps"], height=32,
                               width=32, batch_size=64).images
    out = {}
    with torch.no_grad():
        for name, reward in rewards.items():
            out[name] = float(torch.cat([reward(images[i:i + 64], held.prompts[i:i + 64]).float()
                                         for i in range(0, len(held.prompts), 64)]).mean())
    correct = torch.tensor([check(p, o) for p, o in zip(held.prompts, detect(images))])
    out["overall"] = protocol.category_means(correct, held)["overall"]
    return out


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    report = json.loads((out / "report.json").read_text())
    s = {**report["settings"], "precision": report["precision"]}
    held = protocol.heldout_set(s["eval_per_category"], s["eval_repeats"], s["eval_min_samples"])
    rewards = {name: load_reward(name) for name in ("shapes", "shapes-compose")}
    models = {"base": [load_adapter("shapes", None, guidance_scale=s["guidance"])]}
    for name, entry in report["entries"].items():
        for seed in report["seeds"]:
            run = out / "runs" / f"{name}_seed{seed}_lr{entry['lr']:g}"
            adapter, _ = load_trained(run / "final", ema=s["ema_decay"] > 0)
            models.setdefault(name, []).append(adapter)
    result = {}
    for name, adapters in models.items():
        rows = [scores(a, held, s, rewards) for a in adapters]
        result[name] = {k: {"mean": statistics.fmean(r[k] for r in rows),
                            "std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0} for k in rows[0]}
        print(name, json.dumps(result[name]), flush=True)
    (out / "extra_scores.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/shapes_extra_scores.py DEMO_OUT_DIR")
    main(sys.argv[1])

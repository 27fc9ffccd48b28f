"""Why, not only what: how much each method moved the objects of the base model's samples (same noise), and at
which steps its updates were computed.

Objects are the evaluator's detections. A base object and a tuned object match when they have the same colour
and shape (greedy nearest centres within each colour x shape class); the displacement is the distance between
matched centres in pixels. A sample's layout changed when an object appeared, vanished or changed colour or
shape (unmatched), or a matched object moved more than `tol` x the canvas side.
"""

from __future__ import annotations

import math
import statistics

from leapalign.demo.protocol import category_means


def match_objects(before: list, after: list) -> tuple[list[float], int]:
    """(centre distances of the matched pairs, number of unmatched objects on either side)."""
    classes = {(o.color, o.shape) for o in before} | {(o.color, o.shape) for o in after}
    dists, unmatched = [], 0
    for key in sorted(classes):
        a = [o.center for o in before if (o.color, o.shape) == key]
        b = [o.center for o in after if (o.color, o.shape) == key]
        pairs = sorted(((math.dist(p, q), i, j) for i, p in enumerate(a) for j, q in enumerate(b)))
        used_a, used_b = set(), set()
        for d, i, j in pairs:
            if i not in used_a and j not in used_b:
                used_a.add(i), used_b.add(j)
                dists.append(d)
        unmatched += len(a) - len(used_a) + len(b) - len(used_b)
    return dists, unmatched


def layout_stats(base_objects: list[list], objects: list[list], side: int = 32, tol: float = 0.1) -> dict:
    """Same-noise samples -> layout_change_rate (share of samples changed) and displacement_px (mean centre
    displacement of matched objects, pixels)."""
    if len(base_objects) != len(objects):
        raise ValueError(f"need the same samples: {len(base_objects)} base vs {len(objects)} tuned")
    changed, moved = 0, []
    for before, after in zip(base_objects, objects):
        dists, unmatched = match_objects(before, after)
        moved += dists
        changed += unmatched > 0 or any(d > tol * side for d in dists)
    return {"layout_change_rate": changed / max(1, len(objects)),
            "displacement_px": statistics.fmean(moved) if moved else 0.0}


def step_histogram(histories: list[list[dict]], key_fn, num_steps: int) -> dict[str, list[int]]:
    """Counts per step of the updates' drawn step (key_fn(record) -> step or None), split by whether the next
    iteration's training reward rose ('raised') or not ('other'). Rewards of consecutive iterations are on
    different prompts and noise, so the split is noisy; the counts themselves show where updates happen."""
    raised, other = [0] * num_steps, [0] * num_steps
    for history in histories:
        records = [r for r in history if "reward" in r]
        for now, nxt in zip(records, records[1:]):
            step = key_fn(now)
            if step is None or not 0 <= round(step) < num_steps:
                continue
            (raised if nxt["reward"] > now["reward"] else other)[round(step)] += 1
    return {"raised": raised, "other": other}


def seed_stats(runs: list[dict]) -> dict:
    """Mean over seeds of every numeric metric, the sample std under 'std', the runs under 'per_seed'."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    std = {k: statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0 for k in keys}
    return {**mean, "std": std, "per_seed": runs}


def run_scores(res, cs, base) -> dict:
    """One job's scores (a parallel.JobResult on a protocol.CaptionSet): reward, GenEval-like per category and
    overall, times, and, given the base model's result on the same samples, layout change and displacement."""
    out = {"reward": float(res.rewards.mean()), **category_means(res.correct, cs),
           "train_seconds": res.train_seconds, "eval_seconds": res.eval_seconds,
           "wall_seconds": res.train_seconds + res.eval_seconds, "iterations": res.job.iterations}
    if base is not None:
        out.update(layout_stats(base.objects, res.objects))
    return out

"""GenEval's correctness rules over a neutral list of detections.

Rules and defaults follow the official evaluator (djghosh13/geneval, evaluation/evaluate_images.py):

- a detection counts when its score is strictly above the threshold (0.3; 0.9 for the "counting" task),
  at most `max_objects` (16) per class, most confident first;
- NMS per class with IoU in GenEval's inclusive-pixel convention (width = x1 - x0 + 1); a detection is dropped
  when its IoU with a kept one is >= `nms_iou`. GenEval's default is 1.0, which disables NMS;
- every `include` entry needs `count` objects of its class; only the `count` most confident are checked for
  colour (each must have the required colour) and position (each must stand in the relation to every object
  matched by the target entry, see `relative_position`). An entry that failed cannot be a position target;
- an `exclude` entry fails the image when `count` or more objects of its class were kept;
- summary: accuracy per task over images, overall = mean of the task accuracies.

One deliberate extension (`distinct_objects=True`, the default): objects matched by one include entry are not
offered to a later entry of the same class, and when two entries share a class the ones asking for a colour
pick the most confident objects of that colour. Official GenEval lets entries of one class share objects, so
"a red circle and a blue circle" could never be correct there; a synthetic world with few classes needs these
prompts. The official 553 prompts never repeat a class within one prompt (tests/test_geneval_prompts.py checks
it), so on them the extension changes nothing. `distinct_objects=False` gives the official behaviour always.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
_COLOR_RANK = {c: i for i, c in enumerate(COLORS)}


@dataclass(frozen=True)
class Detection:
    label: str  # object class ("dog", "circle")
    score: float  # detector confidence in [0, 1]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (y grows downwards)
    color: str | None = None  # colour name when classified, else None
    mask: torch.Tensor | None = None  # (H, W) bool, optional


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU with GenEval's inclusive-pixel areas ((x1 - x0 + 1) * (y1 - y0 + 1)), as mmdetection boxes are."""

    def area(x0: float, y0: float, x1: float, y1: float) -> float:
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...], margin: float = 0.1) -> set[str]:
    """Relations of A relative to B: the centre offset shrunk by margin x (size A + size B) per axis; a
    relation holds when the shrunk offset, divided by the unshrunk offset's length, exceeds 0.5 on its axis.
    An offset that shrinks to (almost) zero on both axes gives no relation (ties at the margin included)."""
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]), abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    revised = [max(abs(o) - margin * d, 0.0) * math.copysign(1.0, o) for o, d in zip(offset, dims)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def keep_detections(
    detections: list[Detection], threshold: float, max_objects: int = 16, nms_iou: float = 1.0
) -> dict[str, list[Detection]]:
    """Per class: score > threshold, the `max_objects` most confident, then greedy NMS (off at nms_iou=1)."""
    by_class: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.score):  # stable: equal scores keep input order
        if det.score > threshold:
            by_class.setdefault(det.label, []).append(det)
    kept: dict[str, list[Detection]] = {}
    for label, dets in by_class.items():
        candidates, chosen = dets[:max_objects], []
        while candidates:
            best = candidates.pop(0)
            chosen.append(best)
            if nms_iou < 1:
                candidates = [d for d in candidates if box_iou(best.box, d.box) < nms_iou]
        kept[label] = chosen
    return kept


def _assign(include: list[dict], kept: dict[str, list[Detection]], distinct: bool) -> list[list[Detection]]:
    """The objects each include entry is judged on (the official rule: its class's `count` most confident)."""
    if not distinct:
        return [kept.get(req["class"], [])[: req["count"]] for req in include]
    shared = {c for c in (r["class"] for r in include) if sum(r["class"] == c for r in include) > 1}
    used: set[int] = set()
    assigned: list[list[Detection] | None] = [None] * len(include)
    # Colour entries of a shared class choose first, so "a circle and a red circle" does not lose its red
    # circle to the plain entry; everything else takes the most confident objects still free.
    order = sorted(range(len(include)), key=lambda i: not (include[i]["class"] in shared and "color" in include[i]))
    for i in order:
        req = include[i]
        free = [d for d in kept.get(req["class"], []) if id(d) not in used]
        if req["class"] in shared and "color" in req:
            free = [d for d in free if d.color == req["color"]] + [d for d in free if d.color != req["color"]]
        assigned[i] = free[: req["count"]]
        used.update(id(d) for d in assigned[i])
    return assigned


def evaluate_image(
    detections: list[Detection],
    metadata: dict,
    *,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    nms_iou: float = 1.0,
    position_margin: float = 0.1,
    distinct_objects: bool = True,
) -> tuple[bool, str]:
    """(correct, reason) for one image under GenEval metadata ({"tag", "include", "exclude", "prompt"});
    reason joins one line per failed clause ("" when correct)."""
    kept = keep_detections(
        detections, counting_threshold if metadata["tag"] == "counting" else threshold, max_objects, nms_iou
    )
    include = metadata.get("include", [])
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req, found in zip(include, _assign(include, kept, distinct_objects)):
        name, count, ok = req["class"], req["count"], True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                if None in colors:
                    raise ValueError(f"a {name} detection has no colour; classify colours before judging {req}")
                if colors.count(req["color"]) < count:
                    ok = False
                    # the colours found, in GenEval's COLORS order (its reasons unchanged); colours outside it
                    # (ShapesWorld's "cyan") follow in order of first appearance, so any vocabulary is reported
                    found_colors = sorted(dict.fromkeys(colors), key=lambda c: _COLOR_RANK.get(c, len(COLORS)))
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in found_colors)
                    reasons.append(f"expected {req['color']} {name}>={count}, found {seen}")
            if "position" in req and ok:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for other in matched_groups[target]:
                            rels = relative_position(obj.box, other.box, position_margin)
                            if relation not in rels:
                                ok = False
                                found_rels = " and ".join(sorted(rels)) or "no relation"
                                reasons.append(f"expected {name} {relation} target, found {found_rels} target")
                                break
                        if not ok:
                            break
        matched_groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        n = len(kept.get(req["class"], []))
        if n >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return not reasons, "\n".join(reasons)


def summarize(results: list[dict]) -> dict:
    """results: dicts with "tag" and "correct" (one per image) -> {task: accuracy, ..., "overall": mean over
    the tasks present, "images": n, "missing_tasks": [...]}; overall is GenEval's only when no task is missing."""
    scores: dict = {}
    for tag in TASKS:
        rows = [bool(r["correct"]) for r in results if r["tag"] == tag]
        if rows:
            scores[tag] = sum(rows) / len(rows)
    unknown = sorted({r["tag"] for r in results} - set(TASKS))
    if unknown:
        raise ValueError(f"unknown GenEval task(s) {unknown}; valid: {', '.join(TASKS)}")
    scores["overall"] = sum(scores.values()) / len(scores) if scores else float("nan")
    scores["images"] = len(results)
    scores["missing_tasks"] = [t for t in TASKS if t not in scores]
    return scores

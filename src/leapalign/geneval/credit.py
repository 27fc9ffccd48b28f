"""Partial credit under GenEval's rules: the share of a caption's clauses that hold (a training reward).

Flow-GRPO (Liu et al. 2025) trains on GenEval with partial credit rather than the 0/1 verdict, so that a group of
samples that all fail still has a reward to rank. Its reward server scores, per include entry, a count term
1 - |c - n| / c over all detections of the class and a colour term, and a position term. Ours decomposes the
verdict of rules.evaluate_image into the checks it makes, each a clause of weight 1 / (number of clauses):

  count     per include entry: min(n, c) / c, n the objects the entry is judged on (rules._assign), c its count
  colour    per include entry naming a colour: (judged objects of that colour) / c
  position  per include entry with a relation: 1 if the entry's count and colour hold, its target entry holds
            and every judged object stands in the relation to every target object, else 0
  exclude   per exclude entry (counting's "not c + 1"): 1 if fewer than its count objects were kept, else 0

so the score is 1 exactly when the verdict is correct (tests/test_rewards_rules.py checks it on random scenes).
Differences from Flow-GRPO's server: extra objects cost credit only where GenEval's verdict punishes them (the
exclude clause; their count term penalises a second dog for "a photo of a dog", which GenEval accepts), and a
failed relation gives 0 (their server appends 0 and then 1 for it). Clause counts per GenEval task: single
object 1, two objects 2, counting 2, colours 2, position 3 (both counts and the relation), colour attribution 4.
"""

from __future__ import annotations

from leapalign.geneval.rules import Detection, _assign, keep_detections, relative_position


def clause_scores(
    detections: list[Detection],
    metadata: dict,
    *,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    nms_iou: float = 1.0,
    position_margin: float = 0.1,
    distinct_objects: bool = True,
) -> list[tuple[str, float]]:
    """(clause, score in [0, 1]) for one image under GenEval metadata; options as rules.evaluate_image."""
    kept = keep_detections(
        detections, counting_threshold if metadata["tag"] == "counting" else threshold, max_objects, nms_iou
    )
    include = metadata.get("include", [])
    clauses: list[tuple[str, float]] = []
    groups: list[list[Detection] | None] = []
    for req, found in zip(include, _assign(include, kept, distinct_objects)):
        name, count = req["class"], req["count"]
        clauses.append((f"{count} {name}", min(len(found), count) / count))
        ok = len(found) >= count
        if "color" in req:
            colors = [d.color for d in found]
            if None in colors:
                raise ValueError(f"a {name} detection has no colour; classify colours before judging {req}")
            clauses.append((f"{req['color']} {name}", min(colors.count(req["color"]), count) / count))
            ok = ok and colors.count(req["color"]) >= count
        if "position" in req:
            relation, target = req["position"]
            ok = ok and groups[target] is not None and all(
                relation in relative_position(obj.box, other.box, position_margin)
                for obj in found for other in groups[target])
            clauses.append((f"{name} {relation} {include[target]['class']}", float(ok)))
        groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        clauses.append((f"fewer than {req['count']} {req['class']}",
                        float(len(kept.get(req["class"], [])) < req["count"])))
    return clauses


def partial_score(clauses: list[tuple[str, float]]) -> float:
    """The mean of clause_scores: 1 exactly when rules.evaluate_image's verdict (same options) is correct."""
    if not clauses:
        raise ValueError("GenEval metadata with no include or exclude entry has no clause to score")
    return sum(score for _, score in clauses) / len(clauses)

"""GenEval's rules on hand-made detection lists: thresholds (ties included), NMS, counting, colours, position
margins, exclude, the distinct-objects extension and the summary."""

import math

import pytest

from leapalign.geneval import Detection, evaluate_image, relative_position, summarize
from leapalign.geneval.rules import box_iou, keep_detections


def det(label, score=0.95, box=(0, 0, 10, 10), color=None):
    return Detection(label, score, box, color)


def meta(tag, include, exclude=(), prompt=""):
    return {"tag": tag, "include": list(include), "exclude": list(exclude), "prompt": prompt}


SINGLE = meta("single_object", [{"class": "dog", "count": 1}])
TWO = meta("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])


def counting(n, cls="dog"):
    return meta("counting", [{"class": cls, "count": n}], [{"class": cls, "count": n + 1}])


def position(relation, a="dog", b="cat"):
    # GenEval's layout for "a photo of a A <relation> a B": B first, then A relative to entry 0.
    return meta("position", [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}])


# -- single object and thresholds


def test_single_object_present_missing_and_wrong_class():
    assert evaluate_image([det("dog")], SINGLE) == (True, "")
    ok, reason = evaluate_image([], SINGLE)
    assert not ok and reason == "expected dog>=1, found 0"
    assert not evaluate_image([det("cat")], SINGLE)[0]


def test_threshold_is_strict_and_ties_fail():
    assert not evaluate_image([det("dog", 0.3)], SINGLE)[0]  # exactly at the threshold: not kept
    assert evaluate_image([det("dog", 0.3000001)], SINGLE)[0]
    assert evaluate_image([det("dog", 0.5)], SINGLE, threshold=0.49)[0]
    assert not evaluate_image([det("dog", 0.5)], SINGLE, threshold=0.5)[0]


def test_counting_uses_its_own_threshold():
    dogs = [det("dog", 0.95, (i * 20, 0, i * 20 + 10, 10)) for i in range(2)]
    assert evaluate_image(dogs, counting(2))[0]
    low = [det("dog", 0.9, (0, 0, 10, 10)), det("dog", 0.95, (20, 0, 30, 10))]
    ok, reason = evaluate_image(low, counting(2))  # 0.9 is at the counting threshold: not counted
    assert not ok and "expected dog>=2, found 1" in reason
    # the same 0.9 detection counts for a non-counting task
    assert evaluate_image([det("dog", 0.9)], SINGLE)[0]
    assert evaluate_image(low, counting(2), counting_threshold=0.85)[0]


# -- counting, exclude, max objects, NMS


def test_counting_too_many_hits_the_exclude_clause():
    dogs = [det("dog", 0.95, (i * 20, 0, i * 20 + 10, 10)) for i in range(4)]
    ok, reason = evaluate_image(dogs, counting(3))
    assert not ok and reason == "expected dog<4, found 4"
    assert evaluate_image(dogs[:3], counting(3))[0]
    assert not evaluate_image(dogs[:2], counting(3))[0]


def test_exclude_checked_even_when_include_fails():
    ok, reason = evaluate_image([det("dog")] * 3, counting(4))
    assert not ok and reason.splitlines() == ["expected dog>=4, found 3"]
    m = meta("single_object", [{"class": "dog", "count": 1}], [{"class": "cat", "count": 1}])
    ok, reason = evaluate_image([det("cat", 0.5)], m)
    assert reason.splitlines() == ["expected dog>=1, found 0", "expected cat<1, found 1"]


def test_max_objects_caps_each_class():
    dogs = [det("dog", 0.95 - 0.001 * i, (i * 20, 0, i * 20 + 10, 10)) for i in range(20)]
    assert len(keep_detections(dogs, 0.3)["dog"]) == 16
    assert len(keep_detections(dogs, 0.3, max_objects=3)["dog"]) == 3
    assert [d.score for d in keep_detections(dogs, 0.3, max_objects=2)["dog"]] == [0.95, 0.949]


def test_nms_off_by_default_and_per_class_when_on():
    a = det("dog", 0.99, (0, 0, 9, 9))
    b = det("dog", 0.95, (1, 0, 10, 9))  # IoU = 90 / 110 with inclusive pixels
    c = det("cat", 0.95, (0, 0, 9, 9))  # same box, other class: never suppressed
    assert box_iou(a.box, b.box) == pytest.approx(90 / 110)
    assert len(keep_detections([a, b, c], 0.3)["dog"]) == 2  # GenEval default nms_iou = 1.0: no NMS
    kept = keep_detections([a, b, c], 0.3, nms_iou=0.5)
    assert kept["dog"] == [a] and kept["cat"] == [c]
    # a pair exactly at the NMS IoU is suppressed (kept only when IoU < nms_iou)
    assert keep_detections([a, b], 0.3, nms_iou=90 / 110)["dog"] == [a]
    assert evaluate_image([a, b], counting(2))[0]
    assert not evaluate_image([a, b], counting(2), nms_iou=0.5)[0]


def test_iou_of_disjoint_and_identical_boxes():
    assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1


# -- two objects and colours


def test_two_object_needs_both():
    assert evaluate_image([det("dog"), det("cat", 0.4)], TWO)[0]
    ok, reason = evaluate_image([det("dog")], TWO)
    assert not ok and reason == "expected cat>=1, found 0"


def test_colour_checks_only_the_most_confident_objects():
    m = meta("colors", [{"class": "car", "count": 1, "color": "red"}])
    assert evaluate_image([det("car", color="red")], m)[0]
    ok, reason = evaluate_image([det("car", 0.9, color="blue"), det("car", 0.8, color="red")], m)
    assert not ok and reason == "expected red car>=1, found 1 blue"
    assert evaluate_image([det("car", 0.8, color="blue"), det("car", 0.9, color="red")], m)[0]



def test_colour_reason_lists_colours_outside_genevals_vocabulary():
    # GenEval's colours keep its order; others (ShapesWorld's "cyan") are still reported
    m = meta("counting", [{"class": "car", "count": 3, "color": "red"}])
    found = [det("car", 0.9, color="cyan"), det("car", 0.8, color="blue"), det("car", 0.7, color="red")]
    ok, reason = evaluate_image(found, m, counting_threshold=0.3)
    assert not ok and reason == "expected red car>=3, found 1 red, 1 blue, 1 cyan"

def test_colour_needed_but_not_classified_is_an_error():
    m = meta("colors", [{"class": "car", "count": 1, "color": "red"}])
    with pytest.raises(ValueError, match="no colour"):
        evaluate_image([det("car")], m)


def test_color_attr_binds_each_colour_to_its_object():
    m = meta("color_attr", [{"class": "car", "count": 1, "color": "red"},
                            {"class": "bus", "count": 1, "color": "blue"}])
    assert evaluate_image([det("car", color="red"), det("bus", color="blue")], m)[0]
    ok, reason = evaluate_image([det("car", color="blue"), det("bus", color="red")], m)
    assert not ok and len(reason.splitlines()) == 2


# -- position


def test_relative_position_directions():
    assert relative_position((0, 0, 10, 10), (50, 0, 60, 10)) == {"left of"}
    assert relative_position((50, 0, 60, 10), (0, 0, 10, 10)) == {"right of"}
    assert relative_position((0, 0, 10, 10), (0, 50, 10, 60)) == {"above"}  # y grows downwards
    assert relative_position((0, 50, 10, 60), (0, 0, 10, 10)) == {"below"}
    assert relative_position((0, 0, 10, 10), (50, 50, 60, 60)) == {"left of", "above"}  # clean diagonal
    assert relative_position((0, 0, 10, 10), (0, 0, 10, 10)) == set()


def test_position_margin_ties_give_no_relation():
    # centres 2 apart, widths 10 + 10: margin 0.1 x 20 = 2 exactly cancels the offset
    assert relative_position((0, 0, 10, 10), (2, 0, 12, 10)) == set()
    # the shrunk offset must exceed half the full offset: 4 - 2 = 2 is exactly 0.5 x 4, a tie -> no relation
    assert relative_position((0, 0, 10, 10), (4, 0, 14, 10)) == set()
    assert relative_position((0, 0, 10, 10), (4.1, 0, 14.1, 10)) == {"left of"}
    assert relative_position((0, 0, 10, 10), (4.1, 0, 14.1, 10), margin=0.2) == set()
    assert relative_position((0, 0, 10, 10), (2, 0, 12, 10), margin=0.0) == {"left of"}


def test_position_mostly_sideways_is_not_above():
    # offset (-40, -20): shrunk dx = -38/|offset| ~ -0.85, dy = -18/44.7 ~ -0.40 -> left of only
    rels = relative_position((0, 0, 10, 10), (40, 20, 50, 30))
    assert rels == {"left of"}
    assert math.isclose(38 / math.hypot(40, 20), 0.8497, abs_tol=1e-3)


def test_position_rule_and_failed_target():
    dog_left = [det("dog", box=(0, 0, 10, 10)), det("cat", box=(50, 0, 60, 10))]
    assert evaluate_image(dog_left, position("left of"))[0]
    ok, reason = evaluate_image(dog_left, position("right of"))
    assert not ok and reason == "expected dog right of target, found left of target"
    ok, reason = evaluate_image([det("dog")], position("left of"))
    assert reason.splitlines() == ["expected cat>=1, found 0", "no target for dog to be left of"]


def test_position_judges_only_the_most_confident_pair():
    objs = [det("dog", 0.9, (100, 0, 110, 10)), det("dog", 0.8, (0, 0, 10, 10)), det("cat", box=(50, 0, 60, 10))]
    assert not evaluate_image(objs, position("left of"))[0]  # the top dog is right of the cat


# -- the distinct-objects extension


def test_same_class_entries_need_distinct_objects():
    m = meta("two_object", [{"class": "circle", "count": 1, "color": "red"}, {"class": "circle", "count": 1}])
    one = [det("circle", color="red")]
    assert not evaluate_image(one, m)[0]
    assert evaluate_image(one, m, distinct_objects=False)[0]  # the official rule reuses the red circle
    two = [det("circle", 0.9, color="blue"), det("circle", 0.8, (20, 0, 30, 10), color="red")]
    assert evaluate_image(two, m)[0]  # the red entry picks the red circle although it is less confident


def test_two_colours_of_one_class():
    m = meta("color_attr", [{"class": "circle", "count": 1, "color": "red"},
                            {"class": "circle", "count": 1, "color": "blue"}])
    objs = [det("circle", 0.9, color="blue"), det("circle", 0.8, (20, 0, 30, 10), color="red")]
    assert evaluate_image(objs, m)[0]
    assert not evaluate_image(objs, m, distinct_objects=False)[0]  # official: one circle cannot be both
    assert not evaluate_image(objs[:1] * 2, m)[0]


def test_same_class_position():
    m = position("left of", "circle", "circle")
    objs = [det("circle", 0.9, (0, 0, 10, 10)), det("circle", 0.8, (50, 0, 60, 10))]
    # the target entry takes the more confident (left) circle, the other entry the right one
    ok, reason = evaluate_image(objs, m)
    assert not ok and "found right of" in reason
    assert evaluate_image(objs, position("right of", "circle", "circle"))[0]


def test_distinct_changes_nothing_for_different_classes():
    objs = [det("dog", color="red"), det("cat", color="blue", box=(50, 0, 60, 10))]
    attr = meta("color_attr", [{"class": "dog", "count": 1, "color": "red"},
                               {"class": "cat", "count": 1, "color": "red"}])
    for m in (TWO, position("left of"), attr):
        assert evaluate_image(objs, m) == evaluate_image(objs, m, distinct_objects=False)


# -- summary


def test_summarize_task_accuracy_and_overall():
    results = [{"tag": "single_object", "correct": True}, {"tag": "single_object", "correct": False},
               {"tag": "counting", "correct": True}]
    s = summarize(results)
    assert s["single_object"] == 0.5 and s["counting"] == 1.0
    assert s["overall"] == 0.75  # mean over tasks, not images
    assert s["images"] == 3 and "position" in s["missing_tasks"]
    with pytest.raises(ValueError, match="unknown GenEval task"):
        summarize([{"tag": "nope", "correct": True}])

"""GenEval's packaged metadata loads, every official prompt parses back to its own metadata, and prompts
outside the templates fail with a clear error."""

import json

import pytest

from leapalign.geneval.prompts import METADATA_PATH, load_metadata, parse_prompt
from leapalign.geneval.rules import TASKS


def test_packaged_metadata_is_geneval_553_prompts():
    rows = load_metadata()
    assert len(rows) == 553
    counts = {tag: sum(r["tag"] == tag for r in rows) for tag in TASKS}
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}
    assert (METADATA_PATH.parent / "LICENSE").read_text().startswith("MIT License")


def test_official_prompts_never_repeat_a_class():
    # rules.py's distinct-objects extension only differs from GenEval when a prompt repeats a class
    for row in load_metadata():
        classes = [req["class"] for req in row["include"]]
        assert len(set(classes)) == len(classes), row["prompt"]


def test_every_official_prompt_parses_to_its_metadata():
    for row in load_metadata():
        assert parse_prompt(row["prompt"]) == row


@pytest.mark.parametrize("prompt, tag, include", [
    ("a photo of an orange", "single_object", [{"class": "orange", "count": 1}]),
    ("a photo of an orange circle", "colors", [{"class": "circle", "count": 1, "color": "orange"}]),
    ("a photo of three horses", "counting", [{"class": "horse", "count": 3}]),
    ("a photo of two buses", "counting", [{"class": "bus", "count": 2}]),
    ("a photo of four squares", "counting", [{"class": "square", "count": 4}]),
    ("a photo of a circle above a square", "position",
     [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 0]}]),
    ("a photo of a red circle and a red circle", "color_attr",
     [{"class": "circle", "count": 1, "color": "red"}, {"class": "circle", "count": 1, "color": "red"}]),
])
def test_templates_beyond_coco_names(prompt, tag, include):
    meta = parse_prompt(prompt)
    assert meta["tag"] == tag and meta["include"] == include and meta["prompt"] == prompt


@pytest.mark.parametrize("prompt", [
    "a dog on the beach", "a photo of the dog", "a photo of five dogs", "a photo of a red dog and a cat",
    "a photo of a dog and a cat and a bird", "a photo of a red dog left of a cat", "a photo of two",
])
def test_unparseable_prompts_raise(prompt):
    with pytest.raises(ValueError, match="cannot parse"):
        parse_prompt(prompt)


def test_load_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_metadata(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tag": "single_object", "include": [], "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_metadata(bad)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(parse_prompt("a photo of a dog")) + "\n\n")
    assert load_metadata(good) == [parse_prompt("a photo of a dog")]

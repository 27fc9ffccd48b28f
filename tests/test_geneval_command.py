"""The real-model GenEval evaluator on a tiny random Mask2Former + tiny CLIP, and `leapalign geneval` end to
end on the packaged ShapesWorld model: it runs, writes valid results, and a rerun resumes without
regenerating images. The scores of random models mean nothing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.rewards_tiny import save_tiny_clip, tiny_clip
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

from leapalign.geneval.evaluator import GenEvalDetector, mask_box
from leapalign.geneval.prompts import parse_prompt
from leapalign.geneval.rules import COLORS, TASKS
from leapalign.rewards.clip import ClipReward

LABELS = ["circle", "square", "mouse"]  # ShapesWorld words, so the shapes model can draw the prompts


def tiny_mask2former(seed: int = 0) -> Mask2FormerForUniversalSegmentation:
    torch.manual_seed(seed)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=10, num_labels=len(LABELS),
                               id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    return Mask2FormerForUniversalSegmentation(config).eval()


@pytest.fixture(scope="module")
def evaluator():
    model, tok = tiny_clip()
    # min_score 0: a random detector scores ~1/4, so keep everything to exercise masks and colours
    return GenEvalDetector(tiny_mask2former(), ClipReward(model, tok), short_side=64, long_side=96, min_score=0.0)


def test_mask_box_is_the_exclusive_extent():
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[2:5, 3:7] = True
    assert mask_box(mask) == (3.0, 2.0, 7.0, 5.0)
    assert mask_box(torch.zeros(4, 4, dtype=torch.bool)) == (0.0, 0.0, 0.0, 0.0)


def test_detect_gives_sorted_masked_detections_at_image_size(evaluator):
    dets = evaluator.detect(torch.rand(2, 3, 40, 56))
    assert len(dets) == 2 and all(len(d) == 10 for d in dets)  # top num_queries (class, query) pairs
    for d in dets[0]:
        assert d.mask.shape == (40, 56) and d.mask.dtype == torch.bool and 0 <= d.score <= 1
        assert d.label in ("circle", "square", "computer mouse")  # COCO's "mouse" is GenEval's "computer mouse"
        if d.mask.any():
            assert d.box == mask_box(d.mask)
    assert [d.score for d in dets[0]] == sorted((d.score for d in dets[0]), reverse=True)


def test_batching_does_not_change_detections(evaluator):
    images = torch.rand(3, 3, 40, 56)
    batched = evaluator.detect(images)
    single = evaluator.detect(images[1:2])
    assert [(d.label, round(d.score, 5)) for d in batched[1]] == [(d.label, round(d.score, 5)) for d in single[0]]


def test_evaluate_classifies_colours_of_required_classes(evaluator):
    metas = [parse_prompt("a photo of a red circle"), parse_prompt("a photo of a circle and a square")]
    results = evaluator.evaluate(torch.rand(2, 3, 40, 56), metas)
    assert [r["tag"] for r in results] == ["colors", "two_object"]
    assert all(isinstance(r["correct"], bool) for r in results)
    circles = results[0]["detections"].get("circle", [])
    assert circles and all(box[5] in COLORS for box in circles)
    assert all(box[5] is None for boxes in results[1]["detections"].values() for box in boxes)
    json.dumps(results)  # results are plain JSON


def test_from_pretrained_bad_paths_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="mask2former-swin-small-coco-instance"):
        GenEvalDetector.from_pretrained(tmp_path / "nope", tmp_path)
    tiny_mask2former().save_pretrained(tmp_path / "m2f")
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        GenEvalDetector.from_pretrained(tmp_path / "m2f", tmp_path / "noclip")


@pytest.mark.slow
def test_geneval_command_end_to_end_and_resume(tmp_path):
    from leapalign.cli import main

    tiny_mask2former().save_pretrained(tmp_path / "m2f")
    save_tiny_clip(tmp_path / "clip")
    metadata = tmp_path / "meta.jsonl"
    prompts = ["a photo of a circle", "a photo of two squares", "a photo of a red circle and a blue square",
               "a photo of a circle left of a square"]
    metadata.write_text("".join(json.dumps(parse_prompt(p)) + "\n" for p in prompts))
    out = tmp_path / "out"
    argv = ["geneval", "--model", "shapes", "--steps", "2", "--images-per-prompt", "2", "--metadata", str(metadata),
            "--detector", str(tmp_path / "m2f"), "--clip", str(tmp_path / "clip"), "--out", str(out)]
    assert main(argv + ["--limit", "3"]) == 0
    pngs = sorted((out / "images").glob("*/samples/*.png"))
    assert len(pngs) == 6
    assert json.loads((out / "images" / "00001" / "metadata.jsonl").read_text())["prompt"] == prompts[1]
    mtimes = {p: p.stat().st_mtime_ns for p in pngs}
    first = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in first] == [0, 0, 1, 1, 2, 2]
    # an interrupted run: the last prompt's results are lost (a torn line), its images remain
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in pngs} == mtimes  # nothing regenerated
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.endswith("}")]
    assert sorted(r["index"] for r in rows) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r["correct"] for r in rows if r["index"] == 2] == [r["correct"] for r in first if r["index"] == 2]
    summary = json.loads((out / "summary.json").read_text())
    assert set(TASKS) - set(summary["missing_tasks"]) == {"single_object", "counting", "color_attr", "position"}
    assert 0 <= summary["overall"] <= 1 and summary["images"] == 8


def test_geneval_command_bad_paths(tmp_path, capsys):
    from leapalign.cli import main

    code = main(["geneval", "--model", "shapes", "--detector", str(tmp_path / "x"), "--clip", str(tmp_path),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "config.json" in capsys.readouterr().err
    code = main(["geneval", "--model", "shapes", "--metadata", str(tmp_path / "none.jsonl"), "--detector",
                 str(tmp_path), "--clip", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "not found" in capsys.readouterr().err

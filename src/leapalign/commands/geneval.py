"""`leapalign geneval`: GenEval on a trained run or a base model: fixed-seed images in GenEval's folder layout,
Mask2Former + CLIP detections, GenEval's rules, per-task scores. Resumable: rerun the same command after an
interruption and it continues where it stopped."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from leapalign.cli_model import add_model_arguments, load_model

HELP = "GenEval (553 prompts x N images, six tasks) with transformers' Mask2Former + CLIP; resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--metadata", help="GenEval evaluation_metadata.jsonl (default: the packaged official one)")
    parser.add_argument("--detector", required=True, metavar="DIR",
                        help="transformers Mask2Former COCO-instance folder "
                        "(facebook/mask2former-swin-small-coco-instance)")
    parser.add_argument("--clip", required=True, metavar="DIR",
                        help="transformers CLIP folder for colours (openai/clip-vit-large-patch14, GenEval's ViT-L-14)")
    parser.add_argument("--out", required=True, help="output folder: images/NNNNN/samples/NNNN.png, results.jsonl, "
                        "summary.json")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt (GenEval: 4)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all); a smoke test")
    parser.add_argument("--eval-batch-size", type=int, default=4, help="images per detector batch (default 4)")


def _load_results(results_file: Path) -> list[dict]:
    """The rows of results.jsonl. A torn last line (killed while writing) is dropped from the file, atomically,
    so that its prompt is redone and the next append starts on a fresh line."""
    if not results_file.is_file():
        return []
    text = results_file.read_text()
    rows, lines = [], text.splitlines()
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if len(rows) != len(lines) or (text and not text.endswith("\n")):
        _write_atomic(results_file, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _append(results_file: Path, rows: list[dict]) -> None:
    """Append one prompt's rows as a single write + fsync, so a kill leaves whole prompts (or a torn last line,
    which _load_results drops)."""
    with open(results_file, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import torch

    from leapalign.evaluate import sample_images, save_png
    from leapalign.geneval.evaluator import GenEvalDetector
    from leapalign.geneval.prompts import load_metadata
    from leapalign.geneval.rules import TASKS, summarize

    if args.images_per_prompt < 1 or args.limit < 0 or args.eval_batch_size < 1:
        raise ValueError("--images-per-prompt and --eval-batch-size must be >= 1, --limit >= 0")
    rows = load_metadata(args.metadata)
    rows = rows[: args.limit] if args.limit else rows
    evaluator = GenEvalDetector.from_pretrained(args.detector, args.clip, device=args.device)
    adapter, _ = load_model(args)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {r["index"] for r in _load_results(results_file)}
    n = args.images_per_prompt
    for index, meta in enumerate(rows):
        if index in done:
            continue
        folder = out / "images" / f"{index:05d}"
        paths = [folder / "samples" / f"{k:04d}.png" for k in range(n)]
        if not all(p.is_file() for p in paths):
            # image k of prompt i uses noise seed (seed, i * n + k): the same images whatever --limit or resuming
            samples = sample_images(adapter, [meta["prompt"]] * n, seed=args.seed, num_steps=args.steps,
                                    height=args.height, width=args.width, batch_size=args.batch_size,
                                    start=index * n, rollout=args.rollout_path)
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / "metadata.jsonl", json.dumps(meta))
            for path, image in zip(paths, samples.images):
                tmp = path.with_name("tmp_" + path.name)
                save_png(image, tmp)
                os.replace(tmp, path)
        # GenEval scores the saved PNGs; reading them back keeps the 8-bit rounding it sees
        images = torch.stack([read_png(p) for p in paths])  # (n, 3, H, W)
        results = []
        for first in range(0, n, args.eval_batch_size):
            chunk = images[first:first + args.eval_batch_size]
            results += evaluator.evaluate(chunk, [meta] * len(chunk))
        for k, r in enumerate(results):
            r.update(index=index, filename=str(paths[k].relative_to(out)))
        _append(results_file, results)
        print(f"[{index + 1}/{len(rows)}] {meta['tag']:14s} {sum(r['correct'] for r in results)}/{n}  {meta['prompt']}")
    summary = summarize([r for r in _load_results(results_file) if r["index"] < len(rows)])
    summary.update(prompts=len(rows), images_per_prompt=n, seed=args.seed, steps=args.steps,
                   weights=args.weights or f"base:{args.model}")
    _write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    for task in (*TASKS, "overall"):
        print(f"{task:16s} {summary[task]:.4f}" if task in summary else f"{task:16s} -")
    print(f"wrote {out / 'summary.json'}")
    return 0


def read_png(path: Path):
    """PNG -> (3, H, W) float32 in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    array = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255

"""`leapalign generate`: PNG files from a trained run (checkpoint, final weights or LoRA run) or a base model."""

from __future__ import annotations

import argparse
import re

from leapalign.cli_model import add_model_arguments, load_model

HELP = "write PNG images for prompts from a trained run or a base model, with fixed seeds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt; repeatable")
    parser.add_argument("--prompts", help="a prompt file (.txt/.jsonl) or shapes:eval, instead of/besides --prompt")
    parser.add_argument("--out", required=True, help="output directory for NNN_<prompt>.png")


def run(args: argparse.Namespace) -> int:
    from leapalign.data import load_prompts
    from leapalign.evaluate import sample_images, save_png
    from leapalign.outputs import prepare_output_dir

    if any(not p.strip() for p in args.prompt):
        raise ValueError("--prompt must not be empty; give the text of a prompt")
    prompts = list(args.prompt) + (load_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("give at least one --prompt TEXT or a --prompts FILE")
    out = prepare_output_dir(args.out, "--out")
    adapter, _ = load_model(args)
    samples = sample_images(adapter, prompts, seed=args.seed, num_steps=args.steps, height=args.height,
                            width=args.width, batch_size=args.batch_size, rollout=args.rollout_path)
    for i, (prompt, image) in enumerate(zip(prompts, samples.images)):
        slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:60]
        save_png(image, out / f"{i:03d}_{slug}.png")
    print(f"wrote {len(prompts)} images to {out}")
    return 0

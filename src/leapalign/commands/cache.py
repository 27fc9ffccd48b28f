"""`leapalign cache`: precompute a prompt file's text embeddings so that training needs no text encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

HELP = "precompute text embeddings of a prompt file for a Flux/SD3 model (safetensors cache)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", choices=["flux", "sd3"], default="flux", help="model family")
    parser.add_argument("--model", required=True, help="hub id (e.g. black-forest-labs/FLUX.1-dev) or local "
                        "diffusers directory; must match the model path given to training")
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, help="cache directory (created; valid entries are kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="text encoder dtype")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts encoded per text-encoder call")
    parser.add_argument("--max-sequence-length", type=int, default=None,
                        help="T5 tokens (default: the pipeline's, 512 Flux / 256 SD3); must match training")
    parser.add_argument("--negative-prompt", default="", help="SD3 only: negative prompt for CFG; must match training")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="SD3 only: CFG scale; <= 1 means no CFG and no negative embeddings are stored")


def read_prompts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts


def run(args: argparse.Namespace) -> int:
    from leapalign.adapters import adapter_class
    from leapalign.adapters.cache import ensure_cache

    prompts = read_prompts(args.prompts)
    extra = {} if args.max_sequence_length is None else {"max_sequence_length": args.max_sequence_length}
    if args.adapter == "sd3":
        extra["negative_prompt"] = args.negative_prompt
    elif args.negative_prompt or args.guidance_scale is not None:
        raise ValueError("--negative-prompt and --guidance-scale apply to --adapter sd3 only "
                         "(Flux embeddings do not depend on guidance)")
    adapter = adapter_class(args.adapter).from_pretrained(args.model, device=args.device, dtype=DTYPES[args.dtype],
                                                          guidance_scale=args.guidance_scale, **extra)
    written = ensure_cache(adapter, prompts, args.out, batch_size=args.batch_size)
    unique = len(dict.fromkeys(prompts))
    print(f"{args.out}: {written} embeddings written, {unique - written} already valid ({unique} prompts)")
    return 0

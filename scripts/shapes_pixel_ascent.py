"""How far direct pixel ascent raises each shipped differentiable ShapesWorld reward on the base model's images.

A reward that sign-gradient ascent on the pixels themselves cannot raise cannot be raised through a sampler either,
so this bounds what any alignment method can get from it. Base images: the held-out captions (shapes/prompts.py),
`--repeats` noise samples each, guidance 3, 10 Euler steps (the demo's evaluation). Ascent: `--steps` steps of
x <- clip(x + step * sign(grad r(x)), 0, 1), on each reward separately. Prints one row per reward and category.

    python scripts/shapes_pixel_ascent.py [--steps 20] [--step 0.0078] [--repeats 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from leapalign.adapters.shapes import ShapesAdapter
from leapalign.rewards.shapes import ShapesReward
from leapalign.rewards.shapes_compose import ShapesComposeReward
from leapalign.shapes.prompts import CATEGORIES, heldout_prompts, parse_prompt


def ascend(reward, images: torch.Tensor, prompts: list[str], steps: int, step: float) -> torch.Tensor:
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(reward(x, prompts).sum(), x)
        x = (x.detach() + step * grad.sign()).clamp(0, 1)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step", type=float, default=2 / 255, help="per-step change of each pixel (in [0, 1])")
    parser.add_argument("--repeats", type=int, default=4, help="noise samples per held-out caption")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    adapter = ShapesAdapter.from_pretrained(guidance_scale=3.0)
    prompts = [p for p in heldout_prompts() for _ in range(args.repeats)]
    with torch.no_grad():
        images = adapter.generate(prompts, 10, adapter.noise(len(prompts), torch.Generator().manual_seed(0)))
    cats = [parse_prompt(p).category for p in prompts]
    out = {"steps": args.steps, "step": args.step, "samples": len(prompts), "rewards": {}}
    for name, reward in (("shapes-compose", ShapesComposeReward.from_pretrained()), ("shapes", ShapesReward.from_pretrained())):
        pushed = ascend(reward, images, prompts, args.steps, args.step)
        with torch.no_grad():
            before, after = reward(images, prompts), reward(pushed, prompts)
        rows = {}
        for cat in ("overall",) + CATEGORIES:
            sel = torch.tensor([cat == "overall" or c == cat for c in cats])
            rows[cat] = {"before": float(before[sel].mean()), "after": float(after[sel].mean()), "n": int(sel.sum())}
            print(f"{name:15s} {cat:14s} {rows[cat]['before']:.3f} -> {rows[cat]['after']:.3f}  (n={rows[cat]['n']})")
        out["rewards"][name] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

"""One check of scripts/gpu_smoke.sh: a tiny random Flux (dev) or SD3 pipeline through its adapter on DEVICE.

In float32 the adapter's no-grad rollout equals the diffusers pipeline's own output on the same latents (the
fidelity test of tests/test_adapters_fidelity.py, on the device); then, with LoRA and bf16 autocast, one LeapAlign
step (rollout, two leaps, the reward gradient through the VAE) gives finite LoRA gradients, some non-zero.
Exits non-zero with one line on failure.

    python scripts/gpu_smoke_pipelines.py flux --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/helpers: the tiny pipelines

from helpers import tiny_pipelines as tp  # noqa: E402

from leapalign.adapters.flux import FluxAdapter  # noqa: E402
from leapalign.adapters.lora import LoraConfig, apply_lora  # noqa: E402
from leapalign.adapters.sd3 import SD3Adapter  # noqa: E402
from leapalign.flow import sample_trajectory  # noqa: E402
from leapalign.methods import METHODS  # noqa: E402

PROMPTS = ["a red circle left of a blue square", "two green triangles"]
SIZE, STEPS = 32, 3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["flux", "sd3"])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.model == "flux":
        adapter = FluxAdapter(tp.flux_pipeline(guidance_embeds=True).to(dev), guidance_scale=4.0,
                              max_sequence_length=tp.T5_LEN)
    else:
        adapter = SD3Adapter(tp.sd3_pipeline().to(dev), guidance_scale=5.0, max_sequence_length=tp.T5_LEN)
    pipe = adapter.pipe
    noise = torch.randn(len(PROMPTS), *adapter.latent_shape(SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    noise = noise.to(dev)
    cond = adapter.encode_prompts(PROMPTS)
    traj = sample_trajectory(adapter.velocity, noise, adapter.sigmas(STEPS, SIZE, SIZE), cond)
    common = dict(prompt=PROMPTS, num_inference_steps=STEPS, height=SIZE, width=SIZE,
                  max_sequence_length=tp.T5_LEN, guidance_scale=adapter.guidance_scale, output_type="latent")
    if args.model == "flux":
        theirs = pipe(**common, latents=pipe._pack_latents(noise, *noise.shape)).images
        ours = pipe._pack_latents(traj.sample, *noise.shape)
    else:
        theirs, ours = pipe(**common, latents=noise).images, traj.sample
    gap = float((ours - theirs).abs().max())
    if not gap <= 1e-4 * max(1.0, float(theirs.abs().max())):
        raise SystemExit(f"{args.model}: the adapter's rollout differs from the pipeline's by {gap:.2e} on {dev}")
    params = apply_lora(adapter, LoraConfig(rank=4, targets="default"))
    method = METHODS["leapalign"]
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = method.step(adapter.velocity, noise, adapter.sigmas(4, SIZE, SIZE), cond,
                          lambda x0: adapter.decode(x0).float().mean((1, 2, 3)), method.config(),
                          torch.Generator().manual_seed(0))
    out.loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    finite = all(bool(g.isfinite().all()) for g in grads)
    if not grads or not finite or not any(bool(g.abs().sum() > 0) for g in grads):
        raise SystemExit(f"{args.model}: LoRA gradients on {dev}: {len(grads)} of {len(params)} set, finite {finite}")
    print(f"{args.model} on {dev}: rollout equals the pipeline's (max gap {gap:.1e}); LeapAlign step loss "
          f"{float(out.loss.detach()):.4f}, {len(grads)} LoRA gradients finite")
    return 0


if __name__ == "__main__":
    sys.exit(main())

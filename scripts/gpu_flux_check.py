"""Real-scale check (not in CI): a FLUX.1-dev-sized transformer with random bf16 weights through FluxAdapter.

Measures, at 512x512 and batch 1 with LoRA (rank 64, the "default" preset): an eager no-grad forward, a LoRA
forward+backward with and without gradient checkpointing (time, peak memory above the weights), and compares
one call's LoRA gradient across SDPA backends (math as reference vs flash, efficient, cuDNN), with and without
checkpointing (on an H100 the cuDNN backend gave NaN LoRA gradients in a FLUX-sized model, docs/models.md).
Prints a JSON report and writes it to --out.

    python scripts/gpu_flux_check.py --out results.json          # on a CUDA machine
    python scripts/gpu_flux_check.py --tiny --device cpu          # seconds-long dry run of the same code path
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch.nn.attention import SDPBackend, sdpa_kernel

from leapalign.adapters.flux import FluxAdapter, FluxConditioning
from leapalign.adapters.lora import LoraConfig, apply_lora

# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
TINY = dict(FLUX_DEV, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 4, 8))
BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}


def build(cfg: dict, device: str, dtype: torch.dtype, rank: int) -> FluxAdapter:
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # build directly in bf16: an fp32 FLUX (48 GB) would not fit next to the cast
    with torch.device(device):
        transformer = FluxTransformer2DModel(**cfg)
    torch.set_default_dtype(torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    adapter = FluxAdapter(pipe, guidance_scale=3.5)
    params = apply_lora(adapter, LoraConfig(rank=rank, targets="default"))
    with torch.no_grad():  # LoRA B starts at 0, which zeroes every A gradient: perturb as after some training
        for n, p in adapter.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    print(f"transformer params {sum(p.numel() for p in transformer.parameters()) / 1e9:.2f} B, "
          f"LoRA params {sum(p.numel() for p in params) / 1e6:.1f} M", flush=True)
    return adapter


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """(median seconds per call, peak GiB allocated during the calls); one warm-up call first."""
    fn()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config (dry run of the code path)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the JSON report here")
    ap.add_argument("--backends", default="math,flash,efficient,cudnn",
                    help="SDPA backends to compare, the first is the reference; run cuDNN in its own process: a "
                         "crash in it (illegal memory access) poisons the CUDA context")
    ap.add_argument("--ckpt", choices=["both", "true", "false"], default="both", help="gradient checkpointing variants")
    ap.add_argument("--skip-timing", action="store_true", help="only the backend comparison")
    ap.add_argument("--allow-cudnn", action="store_true",
                    help="leave the cuDNN SDPA backend on for the timings (off by default: it gave NaN LoRA gradients, docs/models.md)")
    args = ap.parse_args()
    dev, dtype = args.device, torch.bfloat16
    if dev == "cuda" and not args.allow_cudnn:
        torch.backends.cuda.enable_cudnn_sdp(False)
    cfg = TINY if args.tiny else FLUX_DEV
    t0 = time.perf_counter()
    adapter = build(cfg, dev, dtype, args.rank)
    sync(dev)
    report: dict = {"torch": torch.__version__, "size": args.size, "rank": args.rank, "config": cfg,
                    "build_s": round(time.perf_counter() - t0, 1)}
    if dev == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
        report["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, *adapter.latent_shape(args.size, args.size), generator=g, device=dev, dtype=dtype)
    cond = FluxConditioning(torch.randn(1, 512, cfg["joint_attention_dim"], generator=g, device=dev, dtype=dtype),
                            torch.randn(1, cfg["pooled_projection_dim"], generator=g, device=dev, dtype=dtype))
    target = torch.randn(x.shape, generator=g, device=dev, dtype=torch.float32)
    sigma = torch.tensor([0.7], device=dev)
    lora = adapter.trainable_parameters()

    def forward_nograd():
        with torch.inference_mode():
            return adapter.velocity(x, sigma, cond)

    def forward_backward() -> float:
        for p in lora:
            p.grad = None
        loss = (adapter.velocity(x, sigma, cond).float() * target).mean()
        loss.backward()
        return float(loss)

    ckpt_variants = {"both": (True, False), "true": (True,), "false": (False,)}[args.ckpt]
    if not args.skip_timing:
        sec, peak = timed(forward_nograd, dev, args.repeats)
        v = forward_nograd()
        report["nograd_forward"] = {"s": round(sec, 4), "peak_gib": round(peak, 2),
                                    "v_finite": bool(v.isfinite().all()), "v_std": float(v.float().std())}
        for ckpt in ckpt_variants:
            adapter.set_gradient_checkpointing(ckpt)
            sec, peak = timed(forward_backward, dev, args.repeats)
            report[f"lora_fwd_bwd_ckpt_{ckpt}"] = {"s": round(sec, 4), "peak_gib": round(peak, 2)}
            print(json.dumps(report), flush=True)

    backends = args.backends.split(",") if dev == "cuda" else ["math"]
    for ckpt in ckpt_variants:
        adapter.set_gradient_checkpointing(ckpt)
        grads = {}
        for name in backends:
            with sdpa_kernel(BACKENDS[name]):
                try:
                    forward_backward()
                except RuntimeError as err:  # backend unavailable for these shapes/dtype, or out of memory
                    report[f"sdpa_ckpt_{ckpt}_{name}"] = {"error": str(err).splitlines()[0][:200]}
                    if dev == "cuda":
                        torch.cuda.empty_cache()
                    continue
            grads[name] = torch.cat([p.grad.float().flatten() for p in lora])
        ref_name = backends[0] if backends[0] in grads else next(iter(grads))  # math may run out of memory
        ref = grads[ref_name]
        for name, grad in grads.items():
            report[f"sdpa_ckpt_{ckpt}_{name}"] = {
                "grad_norm": float(grad.norm()), "nonfinite": int((~torch.isfinite(grad)).sum()),
                f"rel_diff_vs_{ref_name}": float((grad - ref).norm() / ref.norm())}
        del grads, ref
        print(json.dumps(report), flush=True)
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

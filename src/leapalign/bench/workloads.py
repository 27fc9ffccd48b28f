"""Workloads for `leapalign bench`: ShapesWorld on CPU, a FLUX.1-dev-sized random-weight model on GPU.

flux-random: FluxTransformer2DModel at FLUX.1-dev's config (19 double + 38 single blocks, 24 heads x 128,
joint_attention_dim 4096, pooled 768, guidance embedding) with random bf16 weights, LoRA (rank 64, "default"
preset: the attention projections) and gradient checkpointing; conditioning = random T5/CLIP-shaped embeddings
(512 text tokens). Decoder + reward are random-weight stand-ins of the real architectures: FLUX's VAE decoder
(AutoencoderKL, 16 latent channels, blocks 128-256-512-512) and a ViT-H/14 image tower (HPSv2's architecture)
scoring the cosine similarity to a random text embedding. Memory and time do not depend on the weights' values.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from leapalign.bench.measure import Workload
from leapalign.fast_rollout import RolloutVelocity

# black-forest-labs/FLUX.1-dev transformer/config.json and vae/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
# HPSv2 / OpenCLIP ViT-H-14 image tower
VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
               image_size=224, patch_size=14, projection_dim=1024)
TINY_FLUX = dict(FLUX_DEV, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 4, 8))
TINY_VAE = dict(FLUX_VAE, block_out_channels=(32, 32, 32, 32), layers_per_block=1)
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                patch_size=8, projection_dim=16)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MODELS = ("shapes", "flux-random", "flux-tiny")


def _rollout_path(adapter, rollout_path: str):
    """The adapter's velocity, or its fast no-grad path (fast_rollout.py: merged LoRA, torch.compile'd copy)."""
    if rollout_path == "plain":
        return adapter.velocity
    return RolloutVelocity(adapter, rollout_path, inference_mode=False)  # the bench's SplitVelocity adds it


def shapes_workload(batch: int = 8, *, device: str = "cpu", rollout_path: str = "plain") -> Workload:
    """ShapesWorld's DiT (all weights trainable) and learned reward: each the shipped checkpoint, or random weights
    at the default config when it is not there (memory and time are the same; reward gains are not)."""
    from leapalign.adapters.shapes import ShapesAdapter
    from leapalign.rewards.shapes import ShapesReward
    from leapalign.shapes.model import FlowModelConfig, ShapesFlowModel
    from leapalign.shapes.prompts import train_prompts
    from leapalign.shapes.reward_model import RewardModelConfig, ShapesRewardModel

    torch.manual_seed(0)
    try:
        adapter, flow_weights = ShapesAdapter.from_pretrained(device=device), "shipped"
    except FileNotFoundError:
        adapter, flow_weights = ShapesAdapter(ShapesFlowModel(FlowModelConfig()).to(device)), "random"
    try:
        reward, reward_weights = ShapesReward.from_pretrained(device=device), "shipped"
    except FileNotFoundError:
        reward, reward_weights = ShapesReward(ShapesRewardModel(RewardModelConfig()).to(device)), "random"
    weights = f"flow {flow_weights}, reward {reward_weights}"
    prompts = list(itertools.islice(itertools.cycle(train_prompts()), batch))
    cond = adapter.encode_prompts(prompts)
    noise = adapter.noise(batch, torch.Generator().manual_seed(0))
    size = adapter.image_size

    def reward_fn(x0: torch.Tensor) -> torch.Tensor:
        return reward(adapter.decode(x0), prompts)

    info = {"model": "shapes", "weights": weights, "batch": batch, "size": size,
            "params_m": sum(p.numel() for p in adapter.transformer.parameters()) / 1e6,
            "rollout_path": rollout_path}
    return Workload("shapes", adapter.velocity, _rollout_path(adapter, rollout_path), noise, cond, reward_fn,
                    adapter.trainable_parameters(), lambda t: adapter.sigmas(t, size, size), info, adapter)


def _build_default_dtype(cls, cfg: dict, device: str, dtype: torch.dtype):
    """Construct a module directly in `dtype` on `device` (a float32 FLUX, 48 GB, would not fit beside the cast)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**cfg)
    finally:
        torch.set_default_dtype(previous)


class ClipStandInReward(torch.nn.Module):
    """Cosine similarity of a CLIP image tower's projected embedding to a fixed text embedding, preprocessing in
    torch (antialiased resize, CLIP normalisation) so gradients reach the pixels."""

    def __init__(self, vision, text_embed: torch.Tensor):
        super().__init__()
        self.vision = vision.eval().requires_grad_(False)
        self.register_buffer("text", F.normalize(text_embed, dim=-1))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.vision.config.image_size
        x = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = ((x - self.mean) / self.std).to(self.text.dtype)  # (B, 3, size, size)
        emb = F.normalize(self.vision(pixel_values=x).image_embeds.float(), dim=-1)  # (B, E)
        return (emb * self.text.float()).sum(-1)  # (B,)


def flux_workload(*, tiny: bool = False, size: int = 512, batch: int = 1, rank: int = 64, device: str = "cuda",
                  rollout_path: str = "plain", checkpointing: bool = True) -> Workload:
    """FLUX.1-dev-sized random-weight transformer + LoRA (module docstring); `tiny` for dry runs."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from leapalign.adapters.flux import FluxAdapter, FluxConditioning
    from leapalign.adapters.lora import LoraConfig, apply_lora

    dtype = torch.bfloat16
    tcfg, vcfg, ccfg = (TINY_FLUX, TINY_VAE, TINY_VIT) if tiny else (FLUX_DEV, FLUX_VAE, VIT_H14)
    transformer = _build_default_dtype(FluxTransformer2DModel, tcfg, device, dtype)
    vae = _build_default_dtype(AutoencoderKL, vcfg, device, dtype)
    vision = _build_default_dtype(CLIPVisionModelWithProjection,
                                  {"config": CLIPVisionConfig(**ccfg, attn_implementation="sdpa")}, device, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    adapter = FluxAdapter(pipe, guidance_scale=3.5)
    params = apply_lora(adapter, LoraConfig(rank=rank, targets="default"))
    with torch.no_grad():  # LoRA B starts at 0; give it values as after some training
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    adapter.set_gradient_checkpointing(checkpointing)
    g = torch.Generator(device=device).manual_seed(0)
    cond = FluxConditioning(
        torch.randn(batch, 512, tcfg["joint_attention_dim"], generator=g, device=device, dtype=dtype),
        torch.randn(batch, tcfg["pooled_projection_dim"], generator=g, device=device, dtype=dtype))
    noise = torch.randn(batch, *adapter.latent_shape(size, size), generator=g, device=device, dtype=dtype)
    reward = ClipStandInReward(vision, torch.randn(1, ccfg["projection_dim"], generator=g, device=device,
                                                   dtype=dtype)).to(device)

    def reward_fn(x0: torch.Tensor) -> torch.Tensor:
        return reward(adapter.decode(x0))

    info = {"model": "flux-tiny" if tiny else "flux-random", "batch": batch, "size": size, "lora_rank": rank,
            "dtype": "bfloat16", "checkpointing": checkpointing, "rollout_path": rollout_path,
            "params_b": sum(p.numel() for p in transformer.parameters()) / 1e9,
            "lora_params_m": sum(p.numel() for p in params) / 1e6}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    return Workload(info["model"], adapter.velocity, _rollout_path(adapter, rollout_path), noise, cond,
                    reward_fn, params, lambda t: adapter.sigmas(t, size, size).to(device), info, adapter)


def build_workload(model: str, *, device: str, batch: int, size: int | None, rollout_path: str) -> Workload:
    if model == "shapes":
        return shapes_workload(batch, device=device, rollout_path=rollout_path)
    if model in ("flux-random", "flux-tiny"):
        tiny = model == "flux-tiny"
        return flux_workload(tiny=tiny, size=size or (64 if tiny else 512), batch=batch, device=device,
                             rollout_path=rollout_path)
    raise ValueError(f"unknown bench model {model!r}; choose one of: {', '.join(MODELS)}")

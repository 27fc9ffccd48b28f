"""LoRA through peft on an adapter's transformer: target presets, injection, diffusers-format export, merging.

Export follows diffusers 0.42.1 examples/dreambooth/train_dreambooth_lora_flux.py: the peft state dict of the
transformer goes through `<Pipeline>.save_lora_weights` with the LoraConfig as adapter metadata, so that
`pipe.load_lora_weights(dir)` restores rank *and* alpha.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from leapalign.types import option

_ATTN = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
_ATTN_CONTEXT = ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
_FF = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]

# Module-name suffixes per architecture (peft matches a name equal to, or ending in "." + , a target).
LORA_PRESETS: dict[str, dict[str, list[str]]] = {
    "flux": {
        "attn": _ATTN,  # image-stream attention only (q, k, v, out), the smallest useful set
        "default": _ATTN + _ATTN_CONTEXT + _FF,  # diffusers' Flux DreamBooth-LoRA default
        "all": _ATTN + _ATTN_CONTEXT + _FF + ["proj_mlp", "single_transformer_blocks.*.proj_out"],
    },
    "sd3": {
        "attn": _ATTN,
        "default": _ATTN + _ATTN_CONTEXT,  # diffusers' SD3 DreamBooth-LoRA default (joint attention)
        "all": _ATTN + _ATTN_CONTEXT + _FF,
    },
}


@dataclass
class LoraConfig:
    """LoRA hyper-parameters. Effective update scale = alpha / rank."""

    rank: int = option(64, "inner dimension r of the update B @ A")
    alpha: float | None = option(None, "scale numerator; None = rank (scale 1)")
    dropout: float = option(0.0, "dropout on the LoRA branch input during training")
    targets: str | list[str] = option("default", "a preset name of LORA_PRESETS[arch] or explicit module-name suffixes")


def architecture(transformer: torch.nn.Module) -> str:
    name = type(transformer).__name__
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("SD3"):
        return "sd3"
    raise ValueError(f"no LoRA presets for {name}; pass explicit target module names in LoraConfig.targets")


def target_modules(transformer: torch.nn.Module, targets: str | list[str]) -> list[str] | str:
    """Resolve a preset name to suffixes; patterns with '*' become one peft regex."""
    if isinstance(targets, str):
        presets = LORA_PRESETS[architecture(transformer)]
        if targets not in presets:
            raise ValueError(f"unknown LoRA preset {targets!r}; valid: {', '.join(presets)} or a list of module names")
        targets = presets[targets]
    if any("*" in t for t in targets):
        alternatives = "|".join(t.replace(".", r"\.").replace("*", r"\d+") for t in targets)
        return rf".*(^|\.)({alternatives})$"
    return list(targets)


def apply_lora(adapter, cfg: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze the transformer and inject LoRA layers (B = 0, so outputs are unchanged); returns the LoRA params."""
    from peft import LoraConfig as PeftLoraConfig

    if cfg.rank < 1 or not 0 <= cfg.dropout < 1:
        raise ValueError(f"LoRA needs rank >= 1 and 0 <= dropout < 1, got rank={cfg.rank}, dropout={cfg.dropout}")
    transformer = adapter.transformer
    transformer.requires_grad_(False)
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                              lora_dropout=cfg.dropout, init_lora_weights="gaussian",
                              target_modules=target_modules(transformer, cfg.targets))
    try:
        transformer.add_adapter(peft_cfg)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"LoRA targets {cfg.targets!r} matched no module of {type(transformer).__name__} "
                         f"({str(err).splitlines()[0]})") from err
    return [p for n, p in transformer.named_parameters() if "lora_" in n]


def set_full_finetuning(adapter) -> list[torch.nn.Parameter]:
    """Make every transformer weight trainable (the paper's Flux recipe); VAE and text encoders stay frozen."""
    adapter.transformer.requires_grad_(True)
    return adapter.trainable_parameters()


def save_lora(adapter, out_dir: str | os.PathLike, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the LoRA in diffusers' format: `pipe.load_lora_weights(out_dir)` loads it (rank and alpha).

    `weights`: full tensors by parameter name to export instead of the module's own (an FSDP-sharded module holds
    only this process's shards; the trainer passes the gathered weights)."""
    from peft.utils import get_peft_model_state_dict

    transformer = adapter.transformer
    if not getattr(transformer, "peft_config", None):
        raise ValueError("this transformer has no LoRA to export; apply_lora first, or save merged/full weights")
    state = {k: v.detach().to("cpu").contiguous()
             for k, v in get_peft_model_state_dict(transformer, state_dict=weights).items()}
    out = Path(out_dir)
    type(adapter.pipe).save_lora_weights(
        out, transformer_lora_layers=state,
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict())
    return out


def merged_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The transformer's state dict with every LoRA delta folded into its base weight (the live model untouched)."""
    from peft.tuners.lora import LoraLayer

    merged: dict[str, torch.Tensor] = {}
    deltas = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer):
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in module.active_adapters)
    for key, value in transformer.state_dict().items():
        if "lora_" in key:
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        merged[key.replace(".base_layer.", ".")] = value.detach().to("cpu").contiguous()
    return merged


def save_merged(adapter, out_dir: str | os.PathLike, max_shard_size: str = "10GB") -> Path:
    """Save the (LoRA-merged, or fully fine-tuned) transformer as a diffusers model directory.

    `<TransformerClass>.from_pretrained(out_dir)` loads it; copy it over a pipeline's `transformer/` folder to
    ship a full model. Shards are named as diffusers' `save_pretrained` names them.
    """
    from huggingface_hub import save_torch_state_dict

    transformer = adapter.transformer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transformer.save_config(out)
    save_torch_state_dict(merged_state_dict(transformer), out, max_shard_size=max_shard_size,
                          filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
    return out


def lora_sites(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute name, peft LoRA layer) for every peft LoRA layer in `module`; [] when it has none."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    sites = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, LoraLayer):
                sites.append((parent, name, child))
    return sites


def merge_problem(layer: torch.nn.Module, training: bool) -> str | None:
    """Why `layer` (a peft LoRA layer) has no exact merged form for a rollout, or None: only plain LoRA on an
    nn.Linear, no DoRA or other variant, no dropout when `training` (it makes each call random)."""
    if not isinstance(layer.get_base_layer(), torch.nn.Linear) or getattr(layer, "fan_in_fan_out", False):
        return f"LoRA on a {type(layer.get_base_layer()).__name__} (only nn.Linear layers are merged)"
    for a in layer.active_adapters:
        if a in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(a, False):
            return f"LoRA variant (e.g. DoRA) on adapter {a!r}"
        dropout = layer.lora_dropout[a]
        if training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
            return f"LoRA dropout {dropout.p} in training mode (every rollout call is random)"
    return None


def merged_weight(layer: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    """W + sum over active adapters of scale * B @ A, summed in float32 and rounded once to W's dtype, written
    into `out` (W's shape; the layer's weights are only read)."""
    base = layer.get_base_layer().weight
    merged = base.detach().float()
    if not layer.disable_adapters:
        for a in layer.active_adapters:
            if a in layer.lora_A:
                delta = layer.lora_B[a].weight.detach().float() @ layer.lora_A[a].weight.detach().float()
                merged = merged + delta.to(base.device) * layer.scaling[a]  # (out, in)
    return out.copy_(merged)

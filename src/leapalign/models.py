"""Building the model a run trains (adapter + LoRA or full fine-tuning + embedding cache) and loading trained runs.

Used by the trainer, `leapalign eval`/`generate` and the demo; imports no trainer or evaluation code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from leapalign import checkpoint
from leapalign.adapters import load_adapter
from leapalign.adapters.cache import EmbeddingCache, ensure_cache
from leapalign.adapters.lora import LoraConfig, apply_lora, set_full_finetuning
from leapalign.config import TrainConfig, from_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(cfg: TrainConfig, device: torch.device | str):
    """The adapter with LoRA / gradient checkpointing applied as configured (also used by eval and generate)."""
    m = cfg.model
    adapter = load_adapter(m.adapter, m.path, device=device, dtype=DTYPES[m.dtype], guidance_scale=m.guidance_scale)
    if m.lora_rank > 0:
        apply_lora(adapter, LoraConfig(rank=m.lora_rank, alpha=m.lora_alpha, targets=m.lora_targets))
    else:
        set_full_finetuning(adapter)
    if m.gradient_checkpointing:
        adapter.set_gradient_checkpointing(True)
    return adapter


def use_embedding_cache(adapter, root: str, prompts: list[str]) -> None:
    """Encode the prompts missing from the cache at `root`, then make the adapter read every later encode_prompts
    (training and evaluation) from the cache and free its text encoders."""
    if not hasattr(adapter, "use_prompt_cache"):
        raise ValueError(f"model.embedding_cache needs a flux or sd3 model; {type(adapter).__name__} has no "
                         f"text-encoder cache, set model.embedding_cache=none")
    ensure_cache(adapter, prompts, root)
    adapter.use_prompt_cache(EmbeddingCache.for_adapter(root, adapter))


def load_trained(weights_dir: str | Path, *, ema: bool = True, device: torch.device | str = "cpu"):
    """(adapter with trained weights, its TrainConfig). `weights_dir` is a run directory, its `final/` directory, or
    a checkpoint directory (OUTPUT_DIR/checkpoints/step_*). ema=True loads the EMA weights when the run kept them."""
    d = Path(weights_dir)
    if (d / "final").is_dir():
        d = d / "final"
    sharded = (d / checkpoint.SHARDED).is_dir()  # written under FSDP
    is_checkpoint = (d / "meta.json").is_file() and ((d / "model.safetensors").is_file() or sharded)
    if not (d / "config.yaml").is_file() or not (is_checkpoint or (d / "weights.safetensors").is_file()):
        raise FileNotFoundError(f"{weights_dir} holds no trained weights (expected a run directory, its final/ "
                                f"directory or a checkpoints/step_* directory written by `leapalign train`)")
    file = d / "ema.safetensors" if ema and (d / "ema.safetensors").is_file() else d / "weights.safetensors"
    # A truncated or overwritten file fails here with one line, not inside safetensors or torch.load.
    why = checkpoint.problem(d) if is_checkpoint else checkpoint.file_problem(file)
    if why is not None:
        raise ValueError(f"checkpoint {d} is unusable: {why}" if is_checkpoint else f"{file} {why}")
    cfg = from_dict(yaml.safe_load((d / "config.yaml").read_text()))
    adapter = build_model(cfg, device)
    names = [n for n, p in adapter.transformer.named_parameters() if p.requires_grad]
    if sharded and is_checkpoint:
        params = dict(adapter.transformer.named_parameters())
        state = checkpoint.read_sharded(d, {n: params[n].detach() for n in names}, ema)
    elif is_checkpoint:
        # accelerate saved the (DDP-wrapped) trainable weights; the EMA shadow is a list in parameter order.
        state = {k.removeprefix("module."): v for k, v in load_file(str(d / "model.safetensors")).items()}
        ema_state = torch.load(d / "trainer_state_0.pt", map_location="cpu", weights_only=False)["ema"]
        if ema and ema_state is not None:
            state = dict(zip(names, ema_state["shadow"]))
    else:
        state = load_file(str(file))
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names))
    if missing or unexpected:
        raise ValueError(f"weights in {d} do not match the model: "
                         + (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"))
    adapter.transformer.load_state_dict(state, strict=False)
    adapter.transformer.eval()
    return adapter, cfg

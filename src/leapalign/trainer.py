"""The training loop: rollout -> method loss -> backward -> clip -> optimizer step -> EMA -> log -> eval -> checkpoint.

The only accelerate user (with the CLI). One process or many (DDP; FSDP for full fine-tuning), chosen by
`accelerate launch` / torchrun and accelerate's config, never by this file. Every sample's prompt and noise and
every micro-batch's method seed derive from (seed, global position) alone (see data.py), so a resumed run and a
run on a different number of processes with the same global batch see the same data.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from tqdm.auto import tqdm

from leapalign import checkpoint, evaluate
from leapalign.adapters import load_adapter
from leapalign.adapters.cache import EmbeddingCache, ensure_cache
from leapalign.adapters.lora import LoraConfig, apply_lora, save_lora, set_full_finetuning
from leapalign.config import TrainConfig, composite_terms, method_config, to_dict, validate
from leapalign.data import PromptOrder, generator, load_prompts, spread
from leapalign.flow import inference_rollout
from leapalign.ema import EMA
from leapalign.methods import get_method
from leapalign.metrics_log import MetricsLog
from leapalign.rewards import load_reward
from leapalign.rewards.composite import CompositeReward

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps: the run cannot recover by skipping."""


@dataclass
class TrainResult:
    output_dir: Path
    weights: Path  # final trainable weights (safetensors, names of the transformer's parameters)
    ema_weights: Path | None  # EMA of the same, None when ema_decay = 0
    history: list[dict] = field(default_factory=list)  # one record per logged iteration (metrics.jsonl)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # final evaluation (EMA weights if any)
    wall_seconds: float = 0.0
    skipped_steps: int = 0
    start_step: int = 0  # iterations already done by the checkpoint this run resumed from (0 = fresh start)


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
    """Encode the prompts missing from the cache at `root`, free the text encoders, and make the adapter read
    every later encode_prompts (training and evaluation) from the cache."""
    if not hasattr(adapter, "cache_settings"):
        raise ValueError(f"model.embedding_cache needs a flux or sd3 model; {type(adapter).__name__} has no "
                         f"text-encoder cache, set model.embedding_cache=none")
    ensure_cache(adapter, prompts, root)
    adapter.drop_text_encoders()
    adapter.encode_prompts = EmbeddingCache.for_adapter(root, adapter).load  # instance attribute shadows the method


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    validate(cfg)
    t_start = time.perf_counter()
    # The scheduler is stepped once per optimizer step, whatever the number of processes (accelerate's default
    # would step it num_processes times).
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)
    try:
        return _train(cfg, accelerator, progress, t_start)
    finally:
        # Lets one Python process call train() several times (the demo trains one model per method).
        AcceleratorState._reset_state()


def _train(cfg: TrainConfig, accelerator: Accelerator, progress: bool, t_start: float) -> TrainResult:
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_sdp)
    out_dir = Path(cfg.output_dir)
    ckpt_root = out_dir / "checkpoints"

    # ---- set up: model, reward, method, data, optimizer ----
    # Cheap inputs first, so that a typo fails before a 12B model is loaded.
    order = PromptOrder(load_prompts(cfg.data.prompts), cfg.seed, cfg.data.shuffle)
    eval_prompts = spread(load_prompts(cfg.eval.prompts), cfg.eval.num_prompts) if cfg.eval.prompts else []
    method, mcfg = get_method(cfg.method.name), method_config(cfg)
    adapter = build_model(cfg, device)
    if cfg.model.embedding_cache:
        with accelerator.main_process_first():  # one writer; the other ranks then find every entry valid
            use_embedding_cache(adapter, cfg.model.embedding_cache, order.prompts + eval_prompts)
    terms = composite_terms(cfg)
    reward = (CompositeReward.from_terms(terms, device=device) if terms
              else load_reward(cfg.reward.name, path=cfg.reward.path, device=device))
    m = cfg.model
    sigmas = adapter.sigmas(m.num_steps, m.height, m.width)
    velocity = inference_rollout(adapter.velocity) if m.inference_rollout else adapter.velocity
    latent_shape = adapter.latent_shape(m.height, m.width)

    params = adapter.trainable_parameters()
    if not params:
        raise ValueError("the model has no trainable parameters; set model.lora_rank > 0 or use full fine-tuning")
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    warmup = max(o.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model, optimizer, scheduler = accelerator.prepare(adapter.transformer, optimizer, scheduler)
    adapter.transformer = model  # so that adapter.velocity runs the wrapped (DDP/FSDP, autocast) module
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP replaces them by flat shards
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def keep_trainable(models, weights, output_dir):
        # Checkpoints hold the trainable weights only (a LoRA checkpoint must not copy the frozen base model).
        for state in weights:
            for key in [k for k in state if k not in trainable_names]:
                del state[key]

    accelerator.register_save_state_pre_hook(keep_trainable)

    # ---- resume ----
    start, skipped, consecutive = 0, 0, 0
    resume_from = None
    if cfg.resume == "auto":
        resume_from = checkpoint.latest_valid(ckpt_root)
    elif cfg.resume != "none":
        resume_from = Path(cfg.resume)
        why = checkpoint.problem(resume_from)
        if why is not None:
            raise ValueError(f"cannot resume from {resume_from}: {why}")
    if resume_from is not None:
        state = checkpoint.load(accelerator, resume_from)
        start, skipped, consecutive = state["step"], state["skipped"], state["consecutive"]
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if main:
            print(f"resuming from {resume_from} (iteration {start})")
    initial_step = start
    log = MetricsLog(out_dir, cfg.logger, to_dict(cfg), enabled=main)
    if main and resume_from is not None:
        evaluate.truncate_history(out_dir / "metrics.jsonl", start)

    def save_checkpoint(step: int) -> None:
        state = {"step": step, "skipped": skipped, "consecutive": consecutive,
                 "ema": ema.state_dict() if ema is not None else None}
        checkpoint.save(accelerator, ckpt_root, step, state, to_dict(cfg), cfg.keep_checkpoints)

    def run_eval(step: int) -> dict[str, float]:
        # DDP: the main process samples with the unwrapped module (no collectives); FSDP: every process must run
        # the sharded module in lockstep, so all sample and the main one reports.
        fsdp = accelerator.distributed_type == DistributedType.FSDP
        metrics: dict[str, float] = {}
        if eval_prompts and (main or fsdp):
            adapter.transformer = model if fsdp else accelerator.unwrap_model(model)
            with (ema.swapped() if ema is not None else nullcontext()), accelerator.autocast():
                report = evaluate.evaluate_adapter(
                    adapter, reward, eval_prompts, num_steps=cfg.eval.num_steps, height=m.height, width=m.width,
                    seed=cfg.eval.seed, batch_size=cfg.eval.batch_size, geneval=cfg.eval.geneval)
            adapter.transformer = model
            if main:
                evaluate.save_grid(report.images, out_dir / "samples" / f"step_{step:07d}.png")
                metrics = {f"eval/{k}": v for k, v in report.metrics.items()}
                log.log(step, metrics)
        accelerator.wait_for_everyone()
        return metrics

    # ---- the loop ----
    batch, accum = cfg.batch_size, cfg.grad_accum
    bar = tqdm(total=cfg.iterations, initial=start, disable=not (progress and main), desc=cfg.method.name,
               dynamic_ncols=True)
    model.train()
    for step in range(start, cfg.iterations):
        t_step = time.perf_counter()
        sums: dict[str, float] = {}
        for micro in range(accum):
            positions = order.micro_batch(step, micro, rank, batch, world, accum)
            prompts = [order.prompts[order.index(p)] for p in positions]
            cond = adapter.encode_prompts(prompts)
            noise = torch.stack([torch.randn(latent_shape, generator=generator(cfg.seed, 1, p)) for p in positions])
            noise = noise.to(device)  # (B, *latent_shape), per-sample seeds: independent of the process layout

            def reward_fn(x0: torch.Tensor, prompts=prompts) -> torch.Tensor:
                return reward(adapter.decode(x0), prompts)  # (B,)

            def backward(loss: torch.Tensor) -> None:
                accelerator.backward(loss / accum)

            # Gradients are all-reduced on the last micro-batch only; the pair/truncation seed is shared by all
            # processes for a given (step, micro), as one process with the whole global batch would use one.
            sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                out = method.step(velocity, noise, sigmas, cond, reward_fn, mcfg,
                                  generator(cfg.seed, 2, step, micro), backward=backward)
                if not out.backward_done:
                    backward(out.loss)
            parts = reward.metrics() if isinstance(reward, CompositeReward) else {}  # raw per-term rewards
            for k, v in {**out.metrics, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v / accum

        # Clip (and measure) the global gradient norm; non-finite anywhere -> skip the update on every process.
        grad_norm = accelerator.clip_grad_norm_(params, o.max_grad_norm if o.max_grad_norm > 0 else math.inf)
        keys = sorted(sums)
        reduced = accelerator.reduce(torch.tensor([sums[k] for k in keys], device=device), reduction="mean")
        metrics = dict(zip(keys, reduced.tolist()))
        grad_norm = float(grad_norm)
        finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in metrics.values())
        if finite:
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update()
            consecutive = 0
        else:
            skipped, consecutive = skipped + 1, consecutive + 1
        optimizer.zero_grad(set_to_none=True)
        metrics.update(grad_norm=grad_norm, lr=scheduler.get_last_lr()[0], skipped_steps=skipped,
                       step_seconds=time.perf_counter() - t_step)
        if (step + 1) % cfg.log_every == 0 or not finite:
            log.log(step + 1, metrics)
        bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.4f}", loss=f"{metrics.get('loss', 0):.4f}",
                        skipped=skipped)
        bar.update(1)
        if consecutive >= cfg.max_consecutive_skips:
            bar.close()
            log.close()
            raise TrainingAborted(
                f"aborted at iteration {step + 1}: {consecutive} consecutive steps had a non-finite loss or gradient "
                f"(last grad norm {grad_norm}, loss {metrics.get('loss')}); lower optim.lr, check the reward, or "
                f"resume from the last checkpoint in {ckpt_root}")
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.iterations:
            run_eval(step + 1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.iterations:
            save_checkpoint(step + 1)
    bar.close()

    # ---- finish: last checkpoint, final weights (raw and EMA), final evaluation ----
    save_checkpoint(cfg.iterations)
    final = out_dir / "final"
    weights, ema_path = final / "weights.safetensors", (final / "ema.safetensors" if ema is not None else None)
    state = _trainable_state(accelerator, model)
    with ema.swapped() if ema is not None else nullcontext():
        ema_state = _trainable_state(accelerator, model) if ema is not None else None
        if main:
            final.mkdir(parents=True, exist_ok=True)
            save_file(state, str(weights))
            if ema is not None:
                save_file(ema_state, str(ema_path))
            (final / "config.yaml").write_text(evaluate.config_yaml(cfg))
            if m.lora_rank > 0 and hasattr(adapter, "pipe"):
                # diffusers-format LoRA (EMA weights when kept): `pipe.load_lora_weights(final / "lora")` loads it.
                adapter.transformer = accelerator.unwrap_model(model)
                save_lora(adapter, final / "lora")
                adapter.transformer = model
    accelerator.wait_for_everyone()
    eval_metrics = run_eval(cfg.iterations)
    log.close()
    history = evaluate.read_history(out_dir / "metrics.jsonl") if main else []
    return TrainResult(out_dir, weights, ema_path, history, eval_metrics, time.perf_counter() - t_start, skipped,
                       start_step=initial_step)


def _trainable_state(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, unwrapped) trainable parameters, fp32 contiguous CPU copies; gathered on every process."""
    names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    full = accelerator.get_state_dict(model)
    # clone: on CPU .float().cpu() would alias the live parameters, which the EMA swap overwrites.
    return {k: v.detach().float().cpu().clone() for k, v in full.items() if k in names}

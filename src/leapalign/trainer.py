"""The training loop: rollout -> method loss -> backward -> clip -> optimizer step -> EMA -> log -> eval -> checkpoint.

The only accelerate user (with the CLI). One process or many (DDP; FSDP for full fine-tuning), chosen by
`accelerate launch` / torchrun and accelerate's config, never by this file. Every sample's prompt and noise and
every micro-batch's method seed derive from (seed, global position) alone (see data.py), so a resumed run and a
run on a different number of processes with the same global batch see the same data.

Reads top to bottom: `setup` builds everything a run needs, `resume` restores a checkpoint, `train` runs the loop
of one iteration at a time, `save_final` writes the final weights.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch.distributed.fsdp import MixedPrecisionPolicy
from tqdm.auto import tqdm

from leapalign import checkpoint, evaluate, resume_guard, sharding, undo
from leapalign.allocator import keep_freed_memory
from leapalign.adapters.lora import save_lora
from leapalign.config import TrainConfig, composite_terms, config_yaml, method_config, to_dict, validate
from leapalign.data import PromptOrder, generator, load_prompts, spread
from leapalign.ema import EMA
from leapalign.fast_rollout import rollout_velocity
from leapalign.methods import Method, get_method
from leapalign.metrics_log import MetricsLog, read_history, truncate_history
from leapalign.models import build_model, use_embedding_cache
from leapalign.outputs import prepare_output_dir
from leapalign.reference import ReferenceVelocity
from leapalign.rewards import load_reward, require_differentiable
from leapalign.rewards.composite import CompositeReward


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps, or non-finite weights that cannot be restored: the run cannot recover
    by skipping, and nothing non-finite is written."""


# A non-finite update is undone from a copy of the trainable weights and optimizer moments taken before each step
# when they hold at most this many elements (LoRA: a few million; ~3 GiB in fp32 with both Adam moments). Full
# fine-tuning of a large model keeps no copy, which would add 3x its trainable weights to device memory: there a
# non-finite update aborts at once (nothing is written) and the run resumes from its last checkpoint.
SNAPSHOT_MAX_ELEMENTS = 2**28


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


@dataclass
class Run:
    """Everything the loop needs, built once by `setup`."""

    cfg: TrainConfig
    accelerator: Accelerator
    adapter: Any  # its transformer is the accelerate-prepared module (DDP/FSDP wrapper, autocast)
    reward: Any
    method: Method
    method_cfg: Any
    order: PromptOrder
    eval_prompts: list[str]
    sigmas: torch.Tensor  # (T+1,) training schedule
    velocity: Any  # adapter.velocity; no-grad calls on the configured fast path (fast_rollout.py) unless sharded
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.nn.Parameter]  # what is clipped and EMA'd (FSDP: DTensors holding this process's shards)
    names: list[str]  # the plain parameter names of `params`, in order
    sharded: bool  # FSDP2: parameters are DTensor shards (sharding.py)
    ema: EMA | None
    reference: ReferenceVelocity | None  # the initial weights, for methods with a KL term to them
    snapshot: bool  # keep a copy to undo a non-finite update (see SNAPSHOT_MAX_ELEMENTS)
    log: MetricsLog | None = None
    rollouts: dict = field(default_factory=dict)  # a sampled batch the GRPO family reuses (updates_per_rollout)

    @property
    def model(self) -> torch.nn.Module:
        return self.adapter.transformer

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)


@dataclass
class Counters:
    """What a checkpoint stores besides accelerate's state."""

    step: int = 0  # iterations done
    skipped: int = 0  # non-finite steps skipped so far
    consecutive: int = 0  # of them, in a row up to now


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    validate(cfg)
    t_start = time.perf_counter()
    # The scheduler is stepped once per optimizer step, whatever the number of processes (accelerate's default
    # would step it num_processes times).
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)
    try:
        state = accelerator.state
        sharding.check_launch(accelerator.num_processes, accelerator.distributed_type.value,
                              state.fsdp_plugin.fsdp_version if getattr(state, "fsdp_plugin", None) else None)
        path, changed = resume_point(cfg)  # before setup: a refused resume must not wait for a 12B model to load
        run = setup(cfg, accelerator)
        counters = resume(run, path, changed)
        start = counters.step
        main = accelerator.is_main_process
        run.log = MetricsLog(run.out_dir, cfg.logger, to_dict(cfg), enabled=main)
        bar = tqdm(total=cfg.iterations, initial=start, disable=not (progress and main), desc=cfg.method.name,
                   dynamic_ncols=True)
        try:
            loop(run, counters, bar)
            if start < cfg.iterations:  # a resumed finished run (start == iterations) has this checkpoint already
                save_checkpoint(run, counters)
            weights, ema_weights = save_final(run)
            eval_metrics = run_eval(run, cfg.iterations)
        finally:
            bar.close()
            run.log.close()
        history = read_history(run.out_dir / "metrics.jsonl") if main else []
        return TrainResult(run.out_dir, weights, ema_weights, history, eval_metrics, time.perf_counter() - t_start,
                           counters.skipped, start_step=start)
    finally:
        # Lets one Python process call train() several times (the demo trains one model per method).
        AcceleratorState._reset_state()


def loop(run: Run, counters: Counters, bar: tqdm) -> None:
    """Iterations counters.step + 1 .. cfg.iterations: micro-steps, optimizer step, log, eval, checkpoint."""
    cfg = run.cfg
    run.model.train()
    for step in range(counters.step, cfg.iterations):
        t_step = time.perf_counter()
        metrics = {}
        for micro in range(cfg.grad_accum):
            for k, v in micro_step(run, step, micro).items():
                metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
        finite = optimizer_step(run, counters, metrics)
        metrics.update(lr=run.scheduler.get_last_lr()[0], skipped_steps=counters.skipped,
                       step_seconds=time.perf_counter() - t_step)
        counters.step = step + 1
        if counters.step % cfg.log_every == 0 or not finite:
            run.log.log(counters.step, metrics)
        bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.4f}",
                        loss=f"{metrics.get('loss', 0):.4f}", skipped=counters.skipped)
        bar.update(1)
        if counters.consecutive >= cfg.max_consecutive_skips:
            raise TrainingAborted(
                f"aborted at iteration {counters.step}: {counters.consecutive} consecutive steps had a non-finite "
                f"loss, gradient or weight update (last grad norm {metrics['grad_norm']}, loss "
                f"{metrics.get('loss')}); lower optim.lr, check the reward, or resume from the last checkpoint in "
                f"{run.out_dir / 'checkpoints'}")
        if counters.step < cfg.iterations:
            if cfg.eval.every and counters.step % cfg.eval.every == 0:
                run_eval(run, counters.step)
            if cfg.save_every and counters.step % cfg.save_every == 0:
                save_checkpoint(run, counters)


def setup(cfg: TrainConfig, accelerator: Accelerator) -> Run:
    """Model, reward, method, data, optimizer, EMA; cheap inputs first, so that a typo fails before a 12B model
    is loaded."""
    prepare_output_dir(cfg.output_dir, "output_dir")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_sdp)
    device = accelerator.device
    if device.type == "cpu":
        keep_freed_memory()
    order = PromptOrder(load_prompts(cfg.data.prompts), cfg.seed, cfg.data.shuffle)
    eval_prompts = spread(load_prompts(cfg.eval.prompts), cfg.eval.num_prompts) if cfg.eval.prompts else []
    method, method_cfg = get_method(cfg.method.name), method_config(cfg)
    if method.needs_reward_gradient:  # a rule reward has no pixel gradient: refuse before loading any model
        require_differentiable([t.name for t in composite_terms(cfg)] or [cfg.reward.name], method.name)
    # LoRA's random init (peft draws it from torch's global generator) is a function of the seed: every process
    # builds the same model, as FSDP (which shards each process's own copy) requires.
    torch.manual_seed(cfg.seed)
    adapter = build_model(cfg, device)
    if cfg.model.embedding_cache:
        with accelerator.main_process_first():  # one writer; the other ranks then find every entry valid
            use_embedding_cache(adapter, cfg.model.embedding_cache, order.prompts + eval_prompts)
    terms = composite_terms(cfg)
    reward = (CompositeReward.from_terms(terms, device=device) if terms
              else load_reward(cfg.reward.name, path=cfg.reward.path, device=device))
    m, o = cfg.model, cfg.optim
    params = adapter.trainable_parameters()
    if not params:
        raise ValueError("the model has no trainable parameters; set model.lora_rank > 0 or use full fine-tuning")
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    warmup = max(o.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    if accelerator.distributed_type == DistributedType.FSDP:
        # fp32 gathers and gradient reduction, bf16 compute by autocast: the numerics of one process (accelerate's
        # policy for mixed_precision=bf16 would round every gradient to bf16 before reducing it).
        accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy()
    # From here on adapter.velocity runs the wrapped (DDP/FSDP, autocast) module.
    adapter.transformer, optimizer, scheduler = accelerator.prepare(adapter.transformer, optimizer, scheduler)
    names, params = zip(*[(n, p) for n, p in adapter.transformer.named_parameters() if p.requires_grad])
    names, params, trainable = list(names), list(params), set(names)  # FSDP replaced them by DTensor shards
    sharded = sharding.is_sharded(adapter.transformer)

    def keep_trainable(models, weights, output_dir):
        # Checkpoints hold the trainable weights only (a LoRA checkpoint must not copy the frozen base model).
        for state in weights:
            for key in [k for k in state if k not in trainable]:
                del state[key]

    accelerator.register_save_state_pre_hook(keep_trainable)
    # FSDP: plain no_grad rollout, no fast path (sharding.py says why inference mode cannot be used there; sharded
    # LoRA layers have no merged copies), and autocast here: accelerate wraps the forward of DDP and single-process
    # models in it, not that of FSDP2 models.
    velocity = _autocast(adapter.velocity, accelerator) if sharded else rollout_velocity(adapter, m)
    return Run(cfg, accelerator, adapter, reward, method, method_cfg, order, eval_prompts,
               sigmas=adapter.sigmas(m.num_steps, m.height, m.width), velocity=velocity,
               optimizer=optimizer, scheduler=scheduler, params=params, names=names, sharded=sharded,
               ema=EMA(params, cfg.ema_decay, adapter.transformer) if cfg.ema_decay > 0 else None,
               # taken before resume, so it holds the base weights whatever checkpoint is loaded next
               reference=(ReferenceVelocity(velocity, params, adapter.transformer)
                          if method.needs_reference(method_cfg) else None),
               snapshot=sum(p.numel() for p in params) <= SNAPSHOT_MAX_ELEMENTS)


def _autocast(velocity, accelerator: Accelerator):
    """velocity under accelerate's autocast (bf16 when mixed_precision=bf16), its output in float32 as accelerate
    returns it from the modules it wraps."""

    def wrapped(x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        with accelerator.autocast():
            return velocity(x, sigma, cond).float()

    return wrapped


def resume_point(cfg: TrainConfig) -> tuple[Path | None, list[str]]:
    """The checkpoint that cfg.resume names (auto/force: the newest valid one; None = fresh start) and the changed
    safe settings, after checking that neither it nor final/ belongs to a run with other settings (resume_guard)
    and that it is not past cfg.iterations."""
    out_dir = Path(cfg.output_dir)
    root = out_dir / "checkpoints"
    path = None
    if cfg.resume in ("auto", "force"):
        path = checkpoint.latest_valid(root)
    elif cfg.resume != "none":
        path = Path(cfg.resume)
        why = checkpoint.problem(path)
        if why is not None:
            raise ValueError(f"cannot resume from {path}: {why}")
    # A fresh start would overwrite the newest checkpoint's run as well as final/.
    saved = path or next(reversed(checkpoint.checkpoint_dirs(root)), None)
    configs = [out_dir / "final" / "config.yaml"] + ([saved / "config.yaml"] if saved else [])
    changed = resume_guard.check(cfg, configs, force=cfg.resume == "force")
    step = checkpoint.step_of(path) if path is not None else 0
    if step > cfg.iterations:
        raise ValueError(f"checkpoint {path} is at iteration {step}, past iterations={cfg.iterations}; resuming "
                         f"would write its state under an earlier step: set iterations >= {step}, or use a new "
                         f"output_dir")
    return path, changed


def resume(run: Run, path: Path | None, changed: list[str]) -> Counters:
    """Restore the checkpoint at `path` and trim metrics.jsonl to it; a fresh start (None) empties metrics.jsonl,
    which a run killed before its first checkpoint may have filled."""
    accelerator, main = run.accelerator, run.accelerator.is_main_process
    if path is None:
        if main:
            truncate_history(run.out_dir / "metrics.jsonl", 0)
        return Counters()
    if run.sharded:  # loaded in place: weights, EMA shadow, optimizer; the scheduler from the trainer state
        shards = _sharded_state(run)
        state = checkpoint.load(accelerator, path, shards)
        sharding.load_optimizer(run.model, run.optimizer.optimizer, shards)
        run.scheduler.scheduler.load_state_dict(state["scheduler"])
    else:
        state = checkpoint.load(accelerator, path)
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
    if main:
        print(f"resuming from {path} (iteration {state['step']})"
              + (f" with changed settings: {'; '.join(changed)}" if changed else ""))
        truncate_history(run.out_dir / "metrics.jsonl", state["step"])
    return Counters(state["step"], state["skipped"], state["consecutive"])


def micro_step(run: Run, step: int, micro: int) -> dict[str, float]:
    """One micro-batch: prompts and noise for (step, micro, rank), the method's loss, backward. Returns its metrics.

    Methods that compare G samples of a prompt (the GRPO family) get each prompt G times in a contiguous block,
    with G independent noises; the group never straddles processes or micro-batches.
    """
    cfg, accelerator = run.cfg, run.accelerator
    group = run.method.samples_per_prompt(run.method_cfg)
    positions = run.order.micro_batch(step, micro, accelerator.process_index, cfg.batch_size,
                                      accelerator.num_processes, cfg.grad_accum)
    prompts = [run.order.prompts[run.order.index(p)] for p in positions for _ in range(group)]
    cond = run.adapter.encode_prompts(prompts)
    latent_shape = run.adapter.latent_shape(cfg.model.height, cfg.model.width)
    seeds = [(p,) if group == 1 else (p, g) for p in positions for g in range(group)]
    noise = torch.stack([torch.randn(latent_shape, generator=generator(cfg.seed, 1, *s)) for s in seeds])
    noise = noise.to(accelerator.device)  # (B*G, *latent_shape), per-sample seeds: independent of the process layout
    extra: dict[str, Any] = {}
    if run.reference is not None:
        extra["reference"] = run.reference
    if run.method.uses_iteration:
        extra["iteration"] = step
    if run.method.keeps_rollouts(run.method_cfg):
        extra["rollouts"] = run.rollouts

    def reward_fn(x0: torch.Tensor) -> torch.Tensor:
        return run.reward(run.adapter.decode(x0), prompts)  # (B,)

    def backward(loss: torch.Tensor) -> None:
        accelerator.backward(loss / cfg.grad_accum)

    # Gradients are all-reduced on the last micro-batch only; the pair/truncation seed is shared by all processes
    # for a given (step, micro), as one process with the whole global batch would use one. The GRPO family draws
    # its SDE noise per row from that generator, so it gets one per process (else ranks would share SDE noise):
    # its runs depend on the process layout, as Flow-GRPO's do.
    method_seed = (cfg.seed, 2, step, micro) + ((accelerator.process_index,) if group > 1 else ())
    with nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(run.model):
        out = run.method.step(run.velocity, noise, run.sigmas, cond, reward_fn, run.method_cfg,
                              generator(*method_seed), backward=backward, **extra)
        if not out.backward_done:
            backward(out.loss)
    parts = run.reward.metrics() if isinstance(run.reward, CompositeReward) else {}  # raw per-term rewards
    return {**out.metrics, **parts}


def optimizer_step(run: Run, counters: Counters, metrics: dict[str, float]) -> bool:
    """Average the metrics over processes, clip, and step (optimizer, scheduler, EMA) unless anything is
    non-finite on any process, in which case the update is skipped and counted. Returns whether it stepped."""
    accelerator, o = run.accelerator, run.cfg.optim
    grad_norm = accelerator.clip_grad_norm_(run.params, o.max_grad_norm if o.max_grad_norm > 0 else math.inf)
    keys = sorted(metrics)
    reduced = accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=accelerator.device), reduction="mean")
    metrics.clear()
    metrics.update(zip(keys, reduced.tolist()), grad_norm=float(grad_norm))
    finite = all(math.isfinite(v) for v in metrics.values())
    if finite:
        backup = undo.copy_state(run.optimizer.optimizer, run.params) if run.snapshot else None
        run.optimizer.step()
        finite = _all_finite(run, run.params)
        if not finite:
            metrics["nonfinite_update"] = 1.0
            if backup is None:
                run.optimizer.zero_grad(set_to_none=True)
                raise TrainingAborted(
                    f"the optimizer step of iteration {counters.step + 1} made weights non-finite (finite loss and "
                    f"gradient); this full fine-tuning keeps no copy to undo it (memory), so nothing more is "
                    f"written: lower optim.lr and resume from the last checkpoint in {run.out_dir / 'checkpoints'}")
            undo.restore_state(run.optimizer.optimizer, run.params, backup, run.model)
    if finite:
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update()
        counters.consecutive = 0
    else:
        counters.skipped, counters.consecutive = counters.skipped + 1, counters.consecutive + 1
    run.optimizer.zero_grad(set_to_none=True)
    return finite


def _all_finite(run: Run, tensors: list[torch.Tensor]) -> bool:
    """Whether every value on every process is finite: one fused norm per tensor, one reduction, one sync."""
    total = sum((torch.linalg.vector_norm(sharding.local(t.detach()), dtype=torch.float32) for t in tensors),
                torch.zeros((), device=run.accelerator.device))
    return math.isfinite(float(run.accelerator.reduce(total, reduction="sum")))


@contextmanager
def unwrapped(run: Run) -> Iterator[None]:
    """The adapter runs the plain (unwrapped) module inside the block, e.g. for sampling on one process."""
    wrapped = run.adapter.transformer
    run.adapter.transformer = run.accelerator.unwrap_model(wrapped)
    try:
        yield
    finally:
        run.adapter.transformer = wrapped


def run_eval(run: Run, step: int) -> dict[str, float]:
    """Sample the eval prompts with fixed seeds (EMA weights when kept), score, save a grid, log."""
    # DDP: the main process samples with the unwrapped module (no collectives); FSDP: every process must run the
    # sharded module in lockstep, so all sample and the main one reports.
    cfg, accelerator, main = run.cfg, run.accelerator, run.accelerator.is_main_process
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    metrics: dict[str, float] = {}
    if run.eval_prompts and (main or fsdp):
        e, m = cfg.eval, cfg.model
        with (nullcontext() if fsdp else unwrapped(run)), (run.ema.swapped() if run.ema else nullcontext()), \
                accelerator.autocast():
            report = evaluate.evaluate_adapter(run.adapter, run.reward, run.eval_prompts, num_steps=e.num_steps,
                                               height=m.height, width=m.width, seed=e.seed, batch_size=e.batch_size,
                                               geneval=e.geneval)
        if main:
            evaluate.save_grid(report.images, run.out_dir / "samples" / f"step_{step:07d}.png")
            metrics = {f"eval/{k}": v for k, v in report.metrics.items()}
            run.log.log(step, metrics)
    accelerator.wait_for_everyone()
    return metrics


def _require_finite(run: Run, what: str) -> None:
    """Never write non-finite weights (the trainable ones and the EMA shadow) as if they were a valid state."""
    tensors = list(run.params) + (list(run.ema.shadow) if run.ema is not None else [])
    if not _all_finite(run, tensors):
        raise TrainingAborted(f"not writing {what}: the weights hold non-finite values; lower optim.lr and resume "
                              f"from the last checkpoint in {run.out_dir / 'checkpoints'}")


def save_checkpoint(run: Run, counters: Counters) -> None:
    _require_finite(run, f"the checkpoint of iteration {counters.step}")
    state = {"step": counters.step, "skipped": counters.skipped, "consecutive": counters.consecutive,
             "ema": run.ema.state_dict() if run.ema is not None and not run.sharded else None}
    if run.sharded:
        state["scheduler"] = run.scheduler.scheduler.state_dict()
    checkpoint.save(run.accelerator, run.out_dir / "checkpoints", counters.step, state, to_dict(run.cfg),
                    run.cfg.keep_checkpoints, _sharded_state(run) if run.sharded else None)


def _sharded_state(run: Run) -> dict:
    return sharding.sharded_state(run.model, run.optimizer.optimizer, run.names, run.params,
                                  run.ema.shadow if run.ema is not None else None)


def save_final(run: Run) -> tuple[Path, Path | None]:
    """final/weights.safetensors, final/ema.safetensors (when kept), config.yaml and, for LoRA on a diffusers
    model, a diffusers-format LoRA (`pipe.load_lora_weights(final / "lora")`, EMA weights when kept)."""
    accelerator, ema, final = run.accelerator, run.ema, run.out_dir / "final"
    _require_finite(run, "the final weights")
    weights, ema_path = final / "weights.safetensors", (final / "ema.safetensors" if ema is not None else None)
    state = _trainable_state(accelerator, run.model)
    with ema.swapped() if ema is not None else nullcontext():
        ema_state = _trainable_state(accelerator, run.model) if ema is not None else None
        if accelerator.is_main_process:
            final.mkdir(parents=True, exist_ok=True)
            save_file(state, str(weights))
            if ema is not None:
                save_file(ema_state, str(ema_path))
            (final / "config.yaml").write_text(config_yaml(run.cfg))
            if run.cfg.model.lora_rank > 0 and hasattr(run.adapter, "pipe"):
                with unwrapped(run):  # from the gathered weights: under FSDP the module holds shards
                    save_lora(run.adapter, final / "lora", ema_state if ema is not None else state)
    accelerator.wait_for_everyone()
    return weights, ema_path


def _trainable_state(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, unwrapped) trainable parameters, fp32 contiguous CPU copies; gathered on every process."""
    names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    full = accelerator.get_state_dict(model)
    # clone: on CPU .float().cpu() would alias the live parameters, which the EMA swap overwrites.
    return {k: v.detach().float().cpu().clone() for k, v in full.items() if k in names}

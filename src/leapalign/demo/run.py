"""The ShapesWorld demo: align the shipped base model with LeapAlign and the baselines under one protocol,
evaluate on held-out captions with fixed noise, write report.json / report.md and sample grids.

Protocol (docs/shapesworld.md): every method gets the same iterations, batch and rollout steps; the same
tuning budget (each lr of `lrs`, one seed `tune_seed`, `tune_iterations`) chosen by the GenEval-like overall on
VALIDATION captions drawn from the training compositions (ties: reward); then `seeds` training runs at the
chosen lr, each scored once on the held-out captions (>= `eval_min_samples` per category, the same noise for
every model and seed); mean +/- std over seeds; paired reference-minus-method differences with bootstrap
intervals. `--ablation` runs LeapAlign's ablation rows under the same protocol (lr tuned for the full method).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from leapalign.demo import analysis, protocol
from leapalign.demo.parallel import Job, JobResult, Pool
from leapalign.demo.report import summarise, write_report
from leapalign.methods import get_method
from leapalign.rewards import require_differentiable
from leapalign.types import option

GRPO = ("flow_grpo", "mix_grpo")


@dataclass
class DemoConfig:
    methods: list = option(["leapalign", "refl", "draft_lv", "drtune"], "compared methods; the first is the "
                           "reference of the paired differences (add flow_grpo, mix_grpo: policy-gradient family)")
    seeds: list = option([0, 1, 2], "training seeds of the final runs (>= 3 for the protocol)")
    iterations: int = option(40, "optimizer steps per method and seed (equal budget)")
    batch_size: int = option(8, "samples per iteration; GRPO: batch_size / grpo_group prompts x grpo_group samples")
    num_steps: int = option(10, "Euler steps T of every training rollout (equal for all methods)")
    eval_steps: int = option(10, "Euler steps for evaluation sampling")
    guidance: float = option(3.0, "classifier-free guidance of every rollout, training and evaluation (1 = none)")
    reward: str = option("shapes-compose", "training reward by registry name (shapes-compose = the composition "
                         "parser, shapes = the contrastive model) or 'package.module:function'")
    lrs: list = option([3e-6, 1e-5, 3e-5], "AdamW learning rates tried per method on the validation captions")
    lr: float | None = option(None, "a fixed lr for every method instead of tuning (None = tune over lrs)")
    tune_iterations: int = option(20, "iterations of each tuning run (fewer than `iterations` to fit the budget)")
    tune_seed: int = option(100, "training seed of the tuning runs and of the validation caption draw")
    val_per_category: int = option(8, "validation captions per category, from the training compositions")
    val_repeats: int = option(4, "noise samples per validation caption")
    eval_per_category: int = option(16, "held-out captions per category (at most; the split has fewer in 5 of 6)")
    eval_repeats: int = option(8, "noise samples per held-out caption, at least")
    eval_min_samples: int = option(128, "held-out samples per category, at least (small categories repeat more)")
    eval_seed: int = option(0, "noise seed of every evaluation sample, the same for every model and seed")
    alpha: float = option(0.3, "LeapAlign's nested-term discount")
    ema_decay: float = option(0.0, "EMA of the weights used for evaluation (0 = final weights)")
    grpo_group: int = option(4, "GRPO group size G (samples per prompt)")
    grpo_args: dict = option({}, "further flow_grpo / mix_grpo arguments, e.g. grpo_args.updates_per_rollout=2 "
                             "grpo_args.kl_beta=0.04 (methods/grpo.py: FlowGRPOConfig)")
    equal_time: bool = option(True, "GRPO methods also run with iterations scaled to LeapAlign's training time")
    precision: str = option("auto", "bf16: bfloat16 autocast in training (float32 master weights) and evaluation "
                            "sampling; fp32: float32 throughout; auto: bf16 where the CPU has native bfloat16 dot "
                            "products (AVX512-BF16 or AMX) and on a GPU, else fp32")
    workers: int = option(os.cpu_count() or 1, "parallel worker processes, one torch thread each (1 = serial)")
    device: str = option("cpu", "where every job trains, samples and scores: cpu, cuda or cuda:N (the workers share "
                         "the GPU; detection and the statistics stay on the host)")
    bootstrap: int = option(2000, "bootstrap resamples of the paired differences (seeded)")
    probe_captions: int = option(16, "validation captions of the per-step velocity-change profile (0 = skip)")
    grid_captions: int = option(4, "captions per category in the sample grids")

    def __post_init__(self) -> None:
        for name in self.methods:
            if get_method(name).needs_reward_gradient:  # a rule reward (shapes-rules) is for flow_grpo, mix_grpo
                require_differentiable([self.reward], name)
        if not self.methods:
            raise ValueError("demo needs at least one method")
        if not self.seeds:
            raise ValueError("demo needs at least one seed")
        for key in ("iterations", "batch_size", "num_steps", "eval_steps", "tune_iterations", "val_per_category",
                    "val_repeats", "eval_per_category", "eval_repeats", "eval_min_samples", "workers",
                    "bootstrap", "grid_captions"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.num_steps < 2:
            raise ValueError("num_steps must be >= 2 (a leap pair needs two steps before the sample)")
        if self.guidance < 1:
            raise ValueError(f"guidance must be >= 1 (1 disables it), got {self.guidance}")
        try:  # YAML reads 1e-5 (no dot) as a string
            self.lrs = [float(x) for x in self.lrs]
        except (TypeError, ValueError):
            raise ValueError(f"lrs must be a list of positive numbers, e.g. lrs=3e-6,1e-5, got {self.lrs}") from None
        if not self.lrs or any(not x > 0 for x in self.lrs):
            raise ValueError(f"lrs must be a non-empty list of positive numbers, got {self.lrs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 or none (tune over lrs), got {self.lr}")
        if self.grpo_group < 2:
            raise ValueError(f"grpo_group must be >= 2, got {self.grpo_group}")
        try:
            get_method("flow_grpo").config(group_size=self.grpo_group, **self.grpo_args)
        except TypeError as err:
            raise ValueError(f"grpo_args: {err}; see leapalign train --list-keys method.name=flow_grpo") from None
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        self.device = check_device(self.device)

    def resolved_precision(self) -> str:
        """bf16 or fp32: what `auto` means on this machine."""
        if self.precision != "auto":
            return self.precision
        if self.device != "cpu":  # CUDA GPUs the demo targets (Ampere and later) compute bfloat16 natively
            return "bf16"
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch 2.x; absent = no
        return "bf16" if any(getattr(torch.cpu, f, lambda: False)() for f in probes) else "fp32"


def check_device(device: str) -> str:
    """`device` as torch spells it, if this machine has it: cpu, cuda or cuda:N; else a one-line ValueError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ValueError(f"device={device} asked for a GPU but this machine has {found} (torch "
                         f"{torch.__version__}); use device=cpu")
    return str(dev)


QUICK = {"seeds": [0, 1, 2], "iterations": 6, "batch_size": 4, "num_steps": 6, "eval_steps": 6,
         "lrs": [1e-5, 3e-5], "tune_iterations": 3, "val_per_category": 2, "val_repeats": 2,
         "eval_per_category": 4, "eval_repeats": 2, "eval_min_samples": 8, "probe_captions": 4, "grid_captions": 3}
# The paper's training budget (Table 2: 300 iterations x 64 rollouts) with a third of it per tuning run; the rest of
# the protocol as the default. Meant for a GPU (`--paper device=cuda`): on a CPU it takes many hours.
PAPER = {"iterations": 300, "batch_size": 64, "tune_iterations": 100}


@dataclass(frozen=True)
class Entry:
    """One row of the table: a method with its arguments."""

    name: str
    method: str
    args: dict


def entries(cfg: DemoConfig, ablation: bool) -> list[Entry]:
    if ablation:
        base = {"alpha": cfg.alpha}
        t = cfg.num_steps
        return [Entry("leapalign", "leapalign", base), Entry("alpha=0", "leapalign", {**base, "alpha": 0.0}),
                Entry("alpha=1", "leapalign", {**base, "alpha": 1.0}),
                Entry("weight d_j", "leapalign", {**base, "weighting": "j"}),
                Entry("no weight", "leapalign", {**base, "weighting": "none"}),
                Entry(f"late half ({t // 2}-{t - 1})", "leapalign", {**base, "min_step": t // 2}),
                Entry("one leap", "leapalign", {**base, "leaps": 1})]
    out = []
    for m in cfg.methods:
        args = ({"alpha": cfg.alpha} if m == "leapalign" else {"group_size": cfg.grpo_group, **cfg.grpo_args}
                if m in GRPO else {})
        if m == "mix_grpo":  # MixGRPO's window of 4 steps, its start sliding once over steps 0..T-3 in training
            args.update(window_size=min(4, cfg.num_steps - 2),
                        shift_interval=max(1, cfg.iterations // max(1, cfg.num_steps - 2)))
        out.append(Entry(m, m, args))
    return out


def _log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)


def _loop_seconds(res: JobResult) -> float:
    """Time in the training loop proper (sum of the logged step times; setup and model loading excluded)."""
    return sum(h.get("step_seconds", 0.0) for h in res.history)


class Demo:
    """The phases of one demo run, sharing settings, caption sets, the worker pool and the output folder."""

    def __init__(self, cfg: DemoConfig, out: Path, pool: Pool, ablation: bool, start: float | None = None):
        self.cfg, self.out, self.pool, self.ablation = cfg, out, pool, ablation
        self.entries = entries(cfg, ablation)
        self.val = protocol.expand(protocol.validation_prompts(cfg.val_per_category, cfg.tune_seed),
                                   cfg.val_repeats, 1)
        self.held = protocol.heldout_set(cfg.eval_per_category, cfg.eval_repeats, cfg.eval_min_samples)
        self.probe = tuple(self.val.captions[::max(1, len(self.val.captions) // max(1, cfg.probe_captions))]
                           [:cfg.probe_captions])
        self.start = time.perf_counter() if start is None else start
        self.precision = cfg.resolved_precision()

    def job(self, entry: Entry | None, seed: int, lr: float, iterations: int, cs: protocol.CaptionSet,
            eval_seed: int, tag: str = "", probe: tuple[str, ...] = ()) -> Job:
        c = self.cfg
        grpo = entry is not None and entry.method in GRPO
        name = "base" if entry is None else entry.name
        folder = "".join(ch if ch.isalnum() or ch in "-_=." else "_" for ch in f"{name}{tag}_seed{seed}_lr{lr:g}")
        return Job(name=name, method=None if entry is None else entry.method, args={} if entry is None else
                   entry.args, seed=seed, lr=lr, iterations=iterations,
                   batch_size=max(1, c.batch_size // c.grpo_group) if grpo else c.batch_size,
                   num_steps=c.num_steps, guidance=c.guidance, reward=c.reward, ema_decay=c.ema_decay,
                   out_dir=str(self.out / "runs" / folder), prompts=tuple(cs.prompts), eval_seed=eval_seed,
                   eval_steps=c.eval_steps, probe=probe, precision=self.precision, device=c.device)

    def tune(self) -> tuple[dict[str, float], list[dict], JobResult]:
        """Phase 1: every tuned entry x lr on the validation captions (one seed), plus the base model on the
        held-out captions. -> (chosen lr per entry, the tuning table, the base held-out result)."""
        c = self.cfg
        tuned = [] if c.lr is not None or len(c.lrs) == 1 else self.entries[:1] if self.ablation else self.entries
        jobs = [self.job(e, c.tune_seed, lr, c.tune_iterations, self.val, c.tune_seed, "_tune")
                for e in tuned for lr in c.lrs]
        jobs += [self.job(None, 0, 0.0, 0, self.val, c.tune_seed, "_val"),
                 self.job(None, 0, 0.0, 0, self.held, c.eval_seed, "_heldout")]
        results = self.pool.map(jobs)
        base_val, base_held = results[-2], results[-1]
        table = [{"entry": "base", "lr": None, **analysis.run_scores(base_val, self.val, None)}]
        table += [{"entry": r.job.name, "lr": r.job.lr, **analysis.run_scores(r, self.val, base_val)}
                  for r in results[:-2]]
        fixed = c.lr if c.lr is not None else c.lrs[0]
        chosen = {e.name: fixed for e in self.entries}
        for e in tuned:
            chosen[e.name] = protocol.choose_lr({row["lr"]: row for row in table if row["entry"] == e.name})
        if self.ablation and tuned:
            chosen = {e.name: chosen[tuned[0].name] for e in self.entries}
        for row in table[1:]:
            _log(f"tune {row['entry']:>10} lr {row['lr']:g}: validation overall {row['overall']:.3f}, reward "
                 f"{row['reward']:.3f} ({row['train_seconds']:.0f}s train)", self.start)
        return chosen, table, base_held

    def final(self, chosen: dict[str, float]) -> dict[str, list[JobResult]]:
        """Phase 2: every entry x seed at its chosen lr, scored on the held-out captions; then GRPO methods again
        with iterations scaled so that their training time matches LeapAlign's (equal wall-clock)."""
        c = self.cfg
        jobs = [self.job(e, s, chosen[e.name], c.iterations, self.held, c.eval_seed, probe=self.probe)
                for e in self.entries for s in c.seeds]
        results = self.pool.map(jobs)
        runs: dict[str, list[JobResult]] = {}
        for r in results:
            runs.setdefault(r.job.name, []).append(r)
        grpo = [e for e in self.entries if e.method in GRPO]
        ref = next((e.name for e in self.entries if e.method == "leapalign"), None)
        if c.equal_time and grpo and ref is not None:
            ref_time = statistics.fmean(_loop_seconds(r) for r in runs[ref])
            timed = []
            for e in grpo:
                per_iter = statistics.fmean(_loop_seconds(r) for r in runs[e.name]) / c.iterations
                n = max(1, round(ref_time / per_iter))
                timed += [self.job(e, s, chosen[e.name], n, self.held, c.eval_seed, "_time", self.probe)
                          for s in c.seeds]
            for r in self.pool.map(timed):
                runs.setdefault(f"{r.job.name} (equal time, {r.job.iterations} it)", []).append(r)
        return runs


def run_demo(cfg: DemoConfig, out: str | Path, *, ablation: bool = False) -> dict:
    """Tune, train every entry for every seed, evaluate once on held-out captions; write out/report.json,
    report.md and the sample grids."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    start = time.perf_counter()
    with Pool(cfg.workers, log=lambda line: _log(line, start)) as pool:
        demo = Demo(cfg, out, pool, ablation, start)
        _log(f"{len(demo.entries)} entries x {len(cfg.seeds)} seeds; validation {len(demo.val.prompts)} samples, "
             f"held-out {len(demo.held.captions)} captions / {len(demo.held.prompts)} samples; {cfg.workers} "
             f"workers; {demo.precision} on {cfg.device}", demo.start)
        t0 = time.perf_counter()
        chosen, tuning, base = demo.tune()
        tune_seconds = time.perf_counter() - t0
        base_overall = protocol.category_means(base.correct, demo.held)["overall"]
        _log(f"chosen lr: {chosen}; base held-out overall {base_overall:.3f}", demo.start)
        runs = demo.final(chosen)
    wall = time.perf_counter() - demo.start
    report = summarise(demo, chosen, tuning, base, runs)
    report.update(wall_seconds=round(wall, 1), tune_seconds=round(tune_seconds, 1),
                  load_average={"start": load_start, "end": os.getloadavg()}, ablation=ablation,
                  precision=demo.precision, settings=asdict(cfg))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(report, demo, base, runs, out)
    for name, stats in report["methods"].items():
        _log(f"{name:>24}: overall {stats['overall']:.3f} ± {stats['std']['overall']:.3f}, reward "
             f"{stats['reward']:.3f}", demo.start)
    _log(f"wrote {out / 'report.json'} and {out / 'report.md'} ({wall:.0f} s)", demo.start)
    return report

"""Memory and time per reward-gradient method: the measuring core of `leapalign bench`.

One *case* is a method with its config at T sampling steps. Measuring a case runs whole iterations, exactly as
the trainer does (METHODS[name].step, then backward unless the method did it itself), without the optimizer
step, and records:

    peak memory   CUDA: max_memory_allocated; CPU: the process's peak RSS (VmHWM; run each case in a fresh
                  process, since RSS peaks never come down). `extra` = peak minus what was held before the first
                  iteration (weights, optimizer-free state, the conditioning).
    time          median seconds per iteration (after warm-up iterations).
    rollout share the share of the iteration spent in no-grad velocity calls.

No-grad velocity calls are routed to a separate fast path (SplitVelocity): under torch.inference_mode, through
the chosen rollout path (fast_rollout.py: merged LoRA, torch.compile'd model). The methods never see the
difference: every method's rollout is a no-grad loop of velocity calls, and every grad-enabled call goes to the
training path.

The *floor* of a LeapAlign iteration is what it cannot avoid: the rollout, two grad-enabled forward+backward
calls and the decoder + reward forward+backward, each timed alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any, Callable

import torch

from leapalign.flow import inference_rollout, sample_trajectory
from leapalign.methods import METHODS
from leapalign.methods.leapalign import reward_gradient
from leapalign.types import RewardFn, VelocityFn

MIB = 2**20
DRAFT_KS = (1, 2, 4, 8)
ALL_CASES = ("leapalign", "leapalign_coupled", "refl", *(f"draft_k{k}" for k in DRAFT_KS), "draft_kT", "draft_lv",
             "drtune", "full", "flow_grpo", "mix_grpo")
GRPO_GROUP = 4  # samples per prompt of the policy-gradient cases: the workload's batch is B / 4 prompts x 4


@dataclass
class Workload:
    """Everything an iteration needs, built once per model; `rollout` is the fast no-grad path of `velocity`."""

    name: str
    velocity: VelocityFn             # grad-enabled training path
    rollout: VelocityFn              # no-grad path (fast_rollout.py); called under inference_mode
    noise: torch.Tensor              # (B, ...) initial noise of every iteration
    cond: Any
    reward_fn: RewardFn              # x0 (B, ...) -> (B,), decoder + reward inside
    params: list[torch.nn.Parameter]
    sigmas: Callable[[int], torch.Tensor]
    info: dict = field(default_factory=dict)
    adapter: Any = None              # the FlowAdapter, for building other rollout paths (bench/paths.py)

    @property
    def device(self) -> torch.device:
        return self.noise.device


@dataclass
class Case:
    """A method at T steps. `leap_k` marks a leap-start sweep point (pair k, k+1); `label` names the row."""

    label: str
    method: str
    steps: int
    cfg: dict
    leap_k: int | None = None


def make_case(name: str, steps: int, leap_k: int | None = None, batch: int = 8) -> Case | None:
    """A name of ALL_CASES at T steps -> Case (None where it does not exist, e.g. DRaFT-8 at T = 4, or a GRPO group
    that does not fit the batch)."""
    if name not in ALL_CASES:
        raise ValueError(f"unknown bench case {name!r}; choose from: {', '.join(ALL_CASES)}")
    if name.startswith("leapalign"):
        cfg: dict = {"decoupled": name == "leapalign"}
        if leap_k is not None:
            if not 0 <= leap_k <= steps - 2:
                raise ValueError(f"leap start step must be in [0, T-2 = {steps - 2}], got {leap_k}")
            cfg.update(min_step=leap_k, max_step=leap_k + 1)
        label = name if leap_k is None else f"{name}@k{leap_k}"
        return Case(label, "leapalign", steps, cfg, leap_k)
    if leap_k is not None:
        raise ValueError("only leapalign cases take a leap start step")
    if name.startswith("draft_k"):
        k = steps if name == "draft_kT" else int(name[len("draft_k"):])
        return Case(name, "draft", steps, {"k": k}) if k <= steps else None
    if name.endswith("grpo"):  # the paper-style defaults: every SDE step trained; MixGRPO's window of 4
        cfg = {"group_size": GRPO_GROUP} if name == "flow_grpo" else {"group_size": GRPO_GROUP,
                                                                        "window_size": min(4, steps - 1)}
        return Case(name, name, steps, cfg) if batch % GRPO_GROUP == 0 else None
    return Case(name, name, steps, {})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SplitVelocity:
    """velocity(x, sigma, cond): grad-enabled calls -> the training path; no-grad calls -> the fast path under
    inference_mode (flow.inference_rollout, which clones the output so methods may later save rollout latents
    for backward), timed."""

    def __init__(self, wl: Workload):
        self.wl = wl
        self.fast = inference_rollout(wl.rollout)
        self.reset()

    def reset(self) -> None:
        self.nograd_s, self.nograd_calls, self.grad_calls = 0.0, 0, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.grad_calls += 1
            return self.wl.velocity(x, sigma, cond)
        sync(x.device)
        start = time.perf_counter()
        v = self.fast(x, sigma, cond)  # grad is disabled here, so this takes the inference-mode path
        sync(x.device)
        self.nograd_s += time.perf_counter() - start
        self.nograd_calls += 1
        return v


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {key}")


def memory_now(device: torch.device) -> float:
    """MiB held now: CUDA allocated, or the process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / MIB
    return _proc_status_kib("VmRSS") / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_peak(device: torch.device) -> float:
    """MiB: CUDA max allocated since reset_peak, or the process's peak RSS on CPU (VmHWM, never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return _proc_status_kib("VmHWM") / 1024


def release(wl: Workload) -> None:
    for p in wl.params:
        p.grad = None
    if wl.device.type == "cuda":
        torch.cuda.empty_cache()


def iteration(wl: Workload, case: Case, split: SplitVelocity, generator: torch.Generator) -> dict[str, float]:
    """One training iteration's gradient computation (no optimizer step) -> the method's metrics."""
    for p in wl.params:
        p.grad = None
    method = METHODS[case.method]
    extra = {"iteration": 0} if method.uses_iteration else {}
    out = method.step(split, wl.noise, wl.sigmas(case.steps), wl.cond, wl.reward_fn, method.config(**case.cfg),
                      generator, backward=lambda loss: loss.backward(), **extra)
    # DRTune at small T can stop before its first training step: a loss without a graph, nothing to do.
    if not out.backward_done and out.loss.requires_grad:
        out.loss.backward()
    return out.metrics


def measure_case(wl: Workload, case: Case, warmup: int, iters: int) -> dict:
    """Run warm-up + timed iterations of one case -> a JSON-ready row."""
    dev = wl.device
    release(wl)
    split = SplitVelocity(wl)
    generator = torch.Generator().manual_seed(0)
    base = memory_now(dev)
    for _ in range(warmup):
        iteration(wl, case, split, generator)
    sync(dev)
    reset_peak(dev)
    times, shares = [], []
    for _ in range(iters):
        split.reset()
        start = time.perf_counter()
        metrics = iteration(wl, case, split, generator)
        sync(dev)
        times.append(time.perf_counter() - start)
        shares.append(split.nograd_s / times[-1])
    peak = memory_peak(dev)
    release(wl)
    return {**asdict(case), "time_s": median(times), "times_s": times,
            "time_per_sample_s": median(times) / len(wl.noise), "rollout_share": median(shares),
            "nograd_calls": split.nograd_calls, "grad_calls": split.grad_calls, "base_mib": base, "peak_mib": peak,
            "extra_mib": peak - base, "reward": metrics.get("reward"), "metrics": metrics}


def median_time(fn: Callable[[], Any], dev: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(dev)
        start = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - start)
    return median(times)


def measure_floor(wl: Workload, steps: int, warmup: int, iters: int) -> dict:
    """The unavoidable parts of one LeapAlign iteration at T steps, each timed alone (seconds)."""
    dev, sigmas = wl.device, wl.sigmas(steps)
    traj = sample_trajectory(wl.rollout, wl.noise, sigmas, wl.cond, inference_mode=True)
    x, sigma = traj.latents[steps // 2].clone(), sigmas[steps // 2].expand(wl.noise.shape[0]).to(wl.noise.dtype)
    target = torch.randn_like(x)

    def rollout() -> None:
        sample_trajectory(wl.rollout, wl.noise, sigmas, wl.cond, inference_mode=True)

    def forward_backward() -> None:
        for p in wl.params:
            p.grad = None
        (wl.velocity(x, sigma, wl.cond).float() * target).sum().backward()

    def reward() -> None:
        reward_gradient(traj, wl.reward_fn, None)

    parts = {"rollout_s": median_time(rollout, dev, warmup, iters),
             "forward_backward_s": median_time(forward_backward, dev, warmup, iters),
             "reward_s": median_time(reward, dev, warmup, iters)}
    if wl.info.get("rollout_path", "plain") != "plain":  # the plain rollout beside the fast one, for the speed-up
        parts["rollout_eager_s"] = median_time(
            lambda: sample_trajectory(wl.velocity, wl.noise, sigmas, wl.cond, inference_mode=True), dev, warmup, iters)
    release(wl)
    floor = parts["rollout_s"] + 2 * parts["forward_backward_s"] + parts["reward_s"]
    return {"steps": steps, **parts, "floor_s": floor}


def rollout_flops(wl: Workload, steps: int) -> float:
    """FLOPs of one T-step rollout, counted by torch's FlopCounterMode on one no-grad velocity call (eager)."""
    from torch.utils.flop_counter import FlopCounterMode

    sigma = wl.sigmas(steps)[:1].expand(wl.noise.shape[0]).to(wl.noise.dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        wl.velocity(wl.noise, sigma, wl.cond)
    return float(counter.get_total_flops()) * steps


def matmul_peak_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured dense bf16 matmul throughput (TFLOP/s) of an n x n x n product on a CUDA device."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12

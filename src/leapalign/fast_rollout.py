"""Fast no-grad rollouts: the policy's own velocity, computed faster, for every rollout (training, eval, sampling).

Every method's rollout is a loop of no-grad velocity calls. `RolloutVelocity` sends those calls to a fast path and
leaves every grad-enabled call (the leaps, ReFL's step, DRaFT's chain) on the training path, unchanged:

    plain            the adapter's velocity (under torch.inference_mode unless turned off)
    merged           each peft LoRA layer is swapped, for the call, for a plain nn.Linear holding W + s B A
    compiled         the transformer through torch.compile (CUDA graphs with compile_mode="reduce-overhead")
    merged_compiled  both: the compiled graph sees plain linear layers, no LoRA branches
    auto             merged for an unsharded LoRA without dropout, plain otherwise (full fine-tuning: nothing to
                     merge); compile stays opt-in until its GPU speed-up and compile time are measured
                     (docs/benchmarks.md)

Why `merged` leaves the weights exact. Nothing is merged in place: each LoRA layer gets one separate tensor
W' = W + sum_a s_a B_a A_a (summed in float32, rounded once to W's dtype), refreshed only when a LoRA factor or a
base weight changed (version counter or storage: optimizer steps, EMA swaps, the frozen reference's swap), and
the LoRA module is put back in its parent after the call. W, A and B are only ever read, so any number of
merge/unmerge cycles leaves them bit for bit unchanged; there is no W + d - d drift as with peft's in-place
merge/unmerge. Cost: memory of one copy of the touched layers' weights. W' computes x W'^T where the LoRA layer
computes x W^T + s (x A^T) B^T: the same function, rounded differently (measured in tests/test_fast_rollout.py:
the final sample of a tiny Flux rollout moves by rounding only, in float32 and in bfloat16).

Compile. A model that names its repeated blocks (diffusers' `_repeated_blocks`: Flux's double and single stream
blocks) is compiled by region: each block is wrapped by torch.compile and swapped into its parent for the no-grad
calls, so a few graphs serve all 57 of FLUX.1-dev's blocks (one per block class, plus one for the first
single-stream block, whose input has other strides; tested), not one graph of the whole 12 B model; other models (ShapesWorld's DiT, SD3) are compiled whole. Compiled graphs are counted (dynamo's graph counter around each call; the calls are sequential): the
graphs of the first compiling call, then every later one as a recompile, each printed with its wall time, so a
recompile per iteration (a guard on something that changes every iteration) shows at once. The merged weights
are refreshed in place and the merged layers are the same modules every call, so neither a merge nor an
optimizer step triggers one.

Opt-in lower precision (`dtype`, e.g. bfloat16): the no-grad calls run under autocast to that dtype; the leaps
keep the training precision, so the leap residuals d_j and d_0 grow by the rollout's rounding (`leapalign bench
--rollout-paths` reports reward, d_j and d_0 per path).
"""

from __future__ import annotations

import copy
import sys
import time
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from leapalign.adapters.lora import lora_sites, merge_problem, merged_weight

ROLLOUT_PATHS = ("auto", "plain", "merged", "compiled", "merged_compiled")
ROLLOUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_MERGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transformer -> its MergedLora (one copy)
_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        print(message, file=sys.stderr, flush=True)


def repeated_blocks(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, name, block) for every module whose class the model lists in `_repeated_blocks` (diffusers)."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child).__name__ in names]


@contextmanager
def swapped(sites: list[tuple[torch.nn.Module, str, torch.nn.Module]]) -> Iterator[None]:
    """Inside the block each (parent, name, stand-in) has the stand-in in its place; the originals come back."""
    originals = [getattr(parent, name) for parent, name, _ in sites]
    for parent, name, stand_in in sites:
        setattr(parent, name, stand_in)
    try:
        yield
    finally:
        for (parent, name, _), original in zip(sites, originals):
            setattr(parent, name, original)


class MergedLora:
    """Merged copies of a model's LoRA layers, swapped in as plain nn.Linear modules (module docstring)."""

    def __init__(self, model: torch.nn.Module):
        self.sites = lora_sites(model)  # (parent, name, LoRA layer)
        if not self.sites:
            raise ValueError(f"rollout path 'merged' needs a LoRA model; {type(model).__name__} has no peft LoRA "
                             f"layer: use model.rollout_path=plain or compiled")
        self.linears = []
        for _, _, layer in self.sites:
            base = layer.get_base_layer()
            linear = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            linear.weight = torch.nn.Parameter(torch.empty_like(base.weight), requires_grad=False)
            self.linears.append(linear)
        self.key: tuple | None = None
        self.merges = 0  # how often the merged weights were recomputed

    def _key(self) -> tuple:
        return tuple((p._version, p.data_ptr(), layer.disable_adapters, tuple(layer.active_adapters))
                     for _, _, layer in self.sites for p in layer.parameters())

    def refresh(self) -> None:
        """Recompute the merged weights if any LoRA factor or base weight changed since the last merge."""
        key = self._key()
        if key == self.key:
            return
        # normal tensors even when called inside an outer inference_mode (they are updated in place later)
        with torch.inference_mode(False), torch.no_grad():
            for (_, _, layer), linear in zip(self.sites, self.linears):
                problem = merge_problem(layer, layer.training)
                if problem:
                    raise ValueError(f"cannot merge the LoRA for the rollout: {problem}; set model.rollout_path=plain")
                base = layer.get_base_layer()
                if (linear.weight.dtype, linear.weight.device) != (base.weight.dtype, base.weight.device):
                    linear.weight = torch.nn.Parameter(torch.empty_like(base.weight), requires_grad=False)
                linear.bias = base.bias  # shared, never written
                merged_weight(layer, linear.weight)
        self.key, self.merges = key, self.merges + 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block every LoRA layer is replaced by its merged nn.Linear; restored on exit."""
        self.refresh()
        with swapped([(parent, name, linear) for (parent, name, _), linear in zip(self.sites, self.linears)]):
            yield


def merged_lora(model: torch.nn.Module) -> MergedLora:
    """The model's MergedLora, shared by every RolloutVelocity of that model (one copy of the merged weights)."""
    if model not in _MERGED:
        _MERGED[model] = MergedLora(model)
    return _MERGED[model]


def choose_path(requested: str, model: torch.nn.Module) -> tuple[str, str]:
    """(path, why) for the requested rollout path on an unsharded model (FSDP keeps its own plain rollout)."""
    if requested not in ROLLOUT_PATHS:
        raise ValueError(f"unknown rollout path {requested!r}; choose one of: {', '.join(ROLLOUT_PATHS)}")
    sites = lora_sites(model)
    problems = [p for p in (merge_problem(layer, training=True) for _, _, layer in sites) if p]
    if requested == "auto":
        if not sites:
            return "plain", "no LoRA to merge (full fine-tuning); compile is opt-in: model.rollout_path=compiled"
        if problems:
            return "plain", f"the LoRA has no exact merged form: {problems[0]}"
        return "merged", "LoRA merged into copies of the touched weights for the no-grad calls"
    if "merged" in requested and not sites:
        raise ValueError(f"rollout path {requested!r} needs a LoRA model; this one has none (model.lora_rank = 0): "
                         f"use plain or compiled")
    return requested, "as configured"


@dataclass
class RolloutStats:
    path: str
    calls: int = 0  # no-grad velocity calls
    compiles: int = 0  # graphs compiled by the first compiling call
    recompiles: int = 0  # graphs compiled by any later call
    compile_s: float = 0.0  # wall time of the calls that compiled (compile included)
    merges: int = 0


class RolloutVelocity:
    """velocity(x, sigma, cond): grad-enabled calls -> adapter.velocity unchanged; no-grad calls -> the fast path.

    The output of a no-grad call is cloned outside inference mode (as flow.inference_rollout does), so methods
    may later use rollout latents on a gradient path, and a CUDA-graph replay cannot overwrite a stored step.
    """

    def __init__(self, adapter: Any, path: str = "auto", *, inference_mode: bool = True,
                 compile_backend: str = "inductor", compile_mode: str | None = None, dtype: str | None = None):
        if dtype is not None and dtype not in ROLLOUT_DTYPES:
            raise ValueError(f"unknown rollout dtype {dtype!r}; choose one of: {', '.join(ROLLOUT_DTYPES)} or None")
        self.adapter = adapter
        self.path, self.why = choose_path(path, adapter.transformer)
        self.merged = merged_lora(adapter.transformer) if "merged" in self.path else None
        self.fast, self.regions, self.compiled = adapter, [], "compiled" in self.path
        if self.compiled:
            options = dict(backend=compile_backend, mode=compile_mode, dynamic=False)
            self.regions = [(parent, name, torch.compile(block, **options))
                            for parent, name, block in repeated_blocks(adapter.transformer)]
            if not self.regions:  # a shallow copy of the adapter whose transformer is compiled (shared weights)
                self.fast = copy.copy(adapter)
                self.fast.transformer = torch.compile(adapter.transformer, **options)
        self.inference_mode = inference_mode
        self.dtype = ROLLOUT_DTYPES.get(dtype) if dtype else None
        self.stats = RolloutStats(self.path)
        detail = (f", {compile_backend} {compile_mode or ''}".rstrip() + (", by block" if self.regions else "")
                  if self.compiled else "")
        _log_once(f"rollout path: {self.path}{detail}" + (f", {dtype} autocast" if dtype else "") + f" ({self.why})")

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.adapter.velocity(x, sigma, cond)
        with self.merged.swapped() if self.merged is not None else nullcontext(), swapped(self.regions), \
                torch.inference_mode() if self.inference_mode else nullcontext(), \
                torch.autocast(x.device.type, self.dtype) if self.dtype is not None else nullcontext():
            v = self._fast_call(x, sigma, cond).to(x.dtype)
        self.stats.calls += 1
        self.stats.merges = self.merged.merges if self.merged is not None else 0
        return v.clone() if self.inference_mode or self.compiled else v

    def _fast_call(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if not self.compiled:
            return self.adapter.velocity(x, sigma, cond)
        from torch._dynamo.utils import counters

        before, start = counters["stats"]["unique_graphs"], time.perf_counter()
        v = self.fast.velocity(x, sigma, cond)
        graphs = counters["stats"]["unique_graphs"] - before
        if graphs:
            seconds, s = time.perf_counter() - start, self.stats
            first = s.compiles == 0
            s.compiles, s.recompiles = s.compiles + graphs * first, s.recompiles + graphs * (not first)
            s.compile_s += seconds
            print(f"rollout: {'compiled' if first else 'RECOMPILED'} {graphs} graph(s) in {seconds:.1f} s "
                  f"(no-grad call {s.calls + 1}, x {tuple(x.shape)} {x.dtype})", file=sys.stderr, flush=True)
        return v


def rollout_velocity(adapter: Any, model_cfg: Any) -> RolloutVelocity:
    """The RolloutVelocity of a ModelConfig (rollout_path, inference_rollout, rollout_compile_*, rollout_dtype)."""
    return RolloutVelocity(adapter, model_cfg.rollout_path, inference_mode=model_cfg.inference_rollout,
                           compile_backend=model_cfg.rollout_compile_backend,
                           compile_mode=model_cfg.rollout_compile_mode, dtype=model_cfg.rollout_dtype)

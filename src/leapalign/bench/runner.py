"""Running a benchmark grid: in one process (GPU: peaks are reset per case) or one fresh process per case (CPU:
peak RSS never comes down, so each case needs its own process). Also the JSON document and its summary.

A child process is `python -m leapalign.bench.runner` reading {"spec": ..., "case": ...} on stdin and printing one
JSON row on its last stdout line.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from leapalign.bench.measure import Case, measure_case, measure_floor, matmul_peak_tflops, rollout_flops
from leapalign.bench.workloads import build_workload
from leapalign.types import option


@dataclass
class BenchSpec:
    model: str = option("shapes", "shapes | flux-random | flux-tiny")
    device: str = option("cpu", "torch device: cpu or cuda")
    batch: int = option(8, "prompts per iteration")
    size: int | None = option(None, "image side in pixels (None: the model's default; flux-random 512)")
    rollout_path: str = option("plain", "no-grad rollout path of the grid (fast_rollout.py): plain, merged, compiled, "
                                        "merged_compiled")
    warmup: int = option(2, "untimed iterations per case")
    iters: int = option(3, "timed iterations per case (the median is reported)")
    cudnn_sdp: bool = option(False, "cuDNN SDPA backend (off: on CUDA it gave NaN LoRA gradients in a "
                                    "FLUX-sized model, docs/models.md)")

    def build(self):
        if self.device.startswith("cuda"):
            torch.backends.cuda.enable_cudnn_sdp(self.cudnn_sdp)
        return build_workload(self.model, device=self.device, batch=self.batch, size=self.size,
                              rollout_path=self.rollout_path)


def environment(spec: BenchSpec) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_threads": torch.get_num_threads()}
    for name in ("diffusers", "transformers", "peft"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    if spec.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def run_in_process(spec: BenchSpec, cases: list[Case], floor_steps: list[int],
                   on_update: Callable[[dict], None] = lambda doc: None) -> dict:
    """Build the workload once; measure the floors (and GPU throughput) first, then every case."""
    wl = spec.build()
    doc = new_document(spec, wl.info)
    if spec.device.startswith("cuda"):
        doc["matmul_peak_tflops"] = matmul_peak_tflops(wl.device)
    add_floors(doc, wl, spec, floor_steps)
    on_update(doc)
    for case in cases:
        doc["rows"].append(measure_case(wl, case, spec.warmup, spec.iters))
        print(f"  {case.label} T={case.steps}: {doc['rows'][-1]['time_s']:.3f} s", file=sys.stderr, flush=True)
        on_update(doc)
    return doc


def add_floors(doc: dict, wl, spec: BenchSpec, floor_steps: list[int]) -> None:
    for steps in floor_steps:
        floor = measure_floor(wl, steps, max(1, spec.warmup), spec.iters)
        if spec.device.startswith("cuda"):
            flops = rollout_flops(wl, steps)
            floor["rollout_tflop"] = flops / 1e12
            floor["rollout_tflops_per_s"] = flops / floor["rollout_s"] / 1e12
        doc["floors"].append(floor)


def run_isolated(spec: BenchSpec, cases: list[Case], floor_steps: list[int],
                 on_update: Callable[[dict], None] = lambda doc: None) -> dict:
    """One fresh process per case (true per-case peak RSS); the floors in this process."""
    wl = spec.build()
    doc = new_document(spec, wl.info)
    for case in cases:
        payload = json.dumps({"spec": asdict(spec), "case": asdict(case)})
        proc = subprocess.run([sys.executable, "-m", "leapalign.bench.runner"], input=payload, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"bench case {case.label} T={case.steps} failed:\n{proc.stderr[-3000:]}")
        doc["rows"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {case.label} T={case.steps}: {doc['rows'][-1]['time_s']:.3f} s", file=sys.stderr, flush=True)
        on_update(doc)
    add_floors(doc, wl, spec, floor_steps)
    on_update(doc)
    return doc


def new_document(spec: BenchSpec, info: dict) -> dict:
    return {"spec": asdict(spec), "workload": info, "environment": environment(spec), "rows": [], "floors": []}


def summarize(doc: dict) -> dict:
    """Derived numbers: LeapAlign flatness in T and k, decoupled vs coupled, ratio to the floor."""
    rows, out = doc["rows"], {}
    for name in ("leapalign", "leapalign_coupled"):
        by_t = [r["extra_mib"] for r in rows if r["label"] == name]
        by_k = [r["extra_mib"] for r in rows if r["label"].startswith(name + "@")]
        for key, vals in (("T", by_t), ("k", by_k)):
            if len(vals) > 1 and max(vals) > 0:
                out[f"{name}_extra_spread_over_{key}"] = (max(vals) - min(vals)) / max(vals)
    pairs = {(r["label"], r["steps"]): r for r in rows}
    ratios = {}
    for (label, steps), r in pairs.items():
        if label == "leapalign" and ("leapalign_coupled", steps) in pairs:
            coupled = pairs[("leapalign_coupled", steps)]["extra_mib"]
            ratios[steps] = r["extra_mib"] / coupled if coupled > 0 else None
    if ratios:
        out["decoupled_over_coupled_extra"] = ratios
    floor_ratio = {}
    for floor in doc["floors"]:
        r = pairs.get(("leapalign", floor["steps"]))
        if r is not None:
            floor_ratio[floor["steps"]] = r["time_s"] / floor["floor_s"]
    if floor_ratio:
        out["leapalign_time_over_floor"] = floor_ratio
    return out


def _child() -> None:
    payload = json.loads(sys.stdin.read())
    spec, case = BenchSpec(**payload["spec"]), Case(**payload["case"])
    wl = spec.build()
    print(json.dumps(measure_case(wl, case, spec.warmup, spec.iters)))


if __name__ == "__main__":
    _child()

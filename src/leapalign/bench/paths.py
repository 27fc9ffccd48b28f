"""Rollout paths side by side: `leapalign bench --rollout-paths plain merged compiled ...` (docs/benchmarks.md).

Per path (fast_rollout.py), on one workload in one process (the same weights, noise and pair seed for every path):

    rollout_s          median time of a T-step no-grad rollout, after the first (compiling) one, timed in rounds
                       over all paths (a change in the machine's load hits every path alike); speedup = plain's
                       rollout_s (the plain row's, else the floor's) over it
    first_s            that first rollout, compile included; compiles, recompiles, compile_s from RolloutStats
                       (recompiles counts every later compile: the timed rollouts and the LeapAlign iterations)
    tflops             GPU: the plain rollout's FLOPs (FlopCounterMode, one eager call x T) over rollout_s, and
                       their share of the measured bf16 matmul peak
    leapalign_s        median LeapAlign iteration (decoupled) with this path; floor_s = rollout_s + 2 x one
                       grad-enabled forward+backward + decoder/reward forward+backward (the last two timed once,
                       with the plain path: they do not depend on it); over_floor = leapalign_s / floor_s
                       (the LeapAlign iterations run path after path, not in rounds)
    deviation          max |x_0(path) - x_0(plain)| / max |x_0(plain)| of the final rollout sample
    reward, d_j, d_0   LeapAlign's metrics of the last timed iteration (the low-precision rollout moves d_j, d_0)
    extra_mib          memory held after the first rollout minus before (the merged copies; on CPU the RSS)

A path is NAME or NAME:DTYPE, e.g. merged:bfloat16 (the opt-in autocast rollout).
"""

from __future__ import annotations

import time
from dataclasses import replace

from leapalign.bench.measure import (make_case, median_time, matmul_peak_tflops, measure_case, measure_floor,
                                     memory_now, rollout_flops, sync)
from leapalign.bench.runner import new_document
from leapalign.fast_rollout import ROLLOUT_DTYPES, ROLLOUT_PATHS, RolloutVelocity
from leapalign.flow import sample_trajectory


def parse_path(text: str) -> tuple[str, str | None]:
    name, _, dtype = text.partition(":")
    if name not in ROLLOUT_PATHS[1:] or (dtype and dtype not in ROLLOUT_DTYPES):
        raise ValueError(f"--rollout-paths takes NAME or NAME:DTYPE with NAME one of {', '.join(ROLLOUT_PATHS[1:])} "
                         f"and DTYPE one of {', '.join(ROLLOUT_DTYPES)}, got {text!r}")
    return name, dtype or None


def measure_paths(spec, paths: list[str], steps: list[int], *, compile_backend: str = "inductor",
                  compile_mode: str | None = None) -> dict:
    """spec: a runner.BenchSpec (its own rollout_path unused). -> a document with one row per path and T."""
    parsed = [parse_path(p) for p in paths]
    wl = spec.build()
    doc = {**new_document(spec, wl.info), "compile_backend": compile_backend, "compile_mode": compile_mode}
    for t in steps:
        doc["rows"] += _rows(wl, spec, paths, parsed, t, compile_backend, compile_mode)
    return doc


def _rows(wl, spec, paths: list[str], parsed: list, steps: int, compile_backend: str,
          compile_mode: str | None) -> list[dict]:
    dev, sigmas = wl.device, wl.sigmas(steps)
    floor = measure_floor(wl, steps, max(1, spec.warmup), spec.iters)  # plain rollout; fwd+bwd and reward parts
    plain_x0 = sample_trajectory(wl.velocity, wl.noise, sigmas, wl.cond, inference_mode=True).sample.float()
    cuda = dev.type == "cuda"
    velocities, rows = [], []
    for text, (name, dtype) in zip(paths, parsed):  # the first rollout of each path: compiles, merges
        rv = RolloutVelocity(wl.adapter, name, compile_backend=compile_backend, compile_mode=compile_mode, dtype=dtype)
        before = memory_now(dev)
        sync(dev)
        start = time.perf_counter()
        x0 = sample_trajectory(rv, wl.noise, sigmas, wl.cond).sample.float()
        sync(dev)
        velocities.append(rv)
        rows.append({"path": text, "steps": steps, "first_s": time.perf_counter() - start,
                     "extra_mib": memory_now(dev) - before,
                     "deviation": float((x0 - plain_x0).abs().max() / plain_x0.abs().max())})
    # Rollout times in rounds over all paths, so that a change in the machine's load hits every path alike.
    times: list[list[float]] = [[] for _ in paths]
    for round_ in range(spec.warmup + spec.iters):
        for rv, ts in zip(velocities, times):
            seconds = median_time(lambda: sample_trajectory(rv, wl.noise, sigmas, wl.cond), dev, 0, 1)
            if round_ >= spec.warmup:
                ts.append(seconds)
    for row, ts in zip(rows, times):
        row["rollout_s"] = sorted(ts)[len(ts) // 2]
    plain_s = next((r["rollout_s"] for r in rows if r["path"] == "plain"), floor["rollout_s"])
    peak = matmul_peak_tflops(dev) if cuda else None
    flops = rollout_flops(wl, steps) if cuda else None
    for row, rv in zip(rows, velocities):
        case = measure_case(replace(wl, rollout=rv), make_case("leapalign", steps), spec.warmup, spec.iters)
        floor_s = row["rollout_s"] + 2 * floor["forward_backward_s"] + floor["reward_s"]
        row.update(speedup=plain_s / row["rollout_s"], compiles=rv.stats.compiles, recompiles=rv.stats.recompiles,
                   compile_s=rv.stats.compile_s, merges=rv.stats.merges, leapalign_s=case["time_s"], floor_s=floor_s,
                   over_floor=case["time_s"] / floor_s, plain_rollout_s=plain_s, matmul_peak_tflops=peak,
                   **{k: case["metrics"].get(k) for k in ("reward", "d_j", "d_0")})
        if cuda:
            row["tflops"] = flops / row["rollout_s"] / 1e12
            row["peak_share"] = row["tflops"] / peak
    return rows


def paths_table(doc: dict) -> str:
    cuda = doc["spec"]["device"].startswith("cuda")
    head = ("| path | T | rollout | x plain | first (compile) | compiles / recompiles | LeapAlign iter | / floor | "
            "deviation | reward | d_j | d_0 |" + (" TFLOP/s | of peak |" if cuda else ""))
    lines = [f"Rollout paths on {doc['workload']['model']} ({doc['environment'].get('gpu', 'CPU')}, "
             f"compile backend {doc['compile_backend']}"
             + (f", mode {doc['compile_mode']}" if doc["compile_mode"] else "") + ")", "", head,
             "| --- " + "| ---: " * (head.count("|") - 2) + "|"]
    for r in doc["rows"]:
        line = (f"| {r['path']} | {r['steps']} | {r['rollout_s']:.3f} s | {r['speedup']:.2f} | {r['first_s']:.1f} s | "
                f"{r['compiles']} / {r['recompiles']} | {r['leapalign_s']:.3f} s | {r['over_floor']:.2f} | "
                f"{r['deviation']:.1e} | {r['reward']:.4f} | {r['d_j']:.4f} | {r['d_0']:.4f} |")
        if cuda:
            line += f" {r['tflops']:.0f} | {100 * r['peak_share']:.0f}% |"
        lines.append(line)
    if cuda and doc["rows"]:
        lines += ["", f"Measured bf16 matmul peak: {doc['rows'][0]['matmul_peak_tflops']:.0f} TFLOP/s."]
    return "\n".join(lines)

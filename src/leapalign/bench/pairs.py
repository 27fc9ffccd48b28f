"""Amortising the rollout: reward gain per wall-clock second for several `pairs_per_rollout` values.

For each M, from the same starting weights: `iters` LeapAlign (decoupled) optimizer steps, each on fresh noise,
with M leap pairs reusing one rollout and one reward backward. The reward is the mean over a fixed evaluation
batch (own noise, no gradient) before and after; gain per second divides by the training wall-clock time.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from leapalign.bench.measure import SplitVelocity
from leapalign.flow import sample_trajectory
from leapalign.methods.leapalign import LeapAlignConfig, step


def eval_reward(wl, steps: int) -> float:
    noise = torch.randn(wl.noise.shape, generator=torch.Generator().manual_seed(12345)).to(wl.noise)
    traj = sample_trajectory(wl.rollout, noise, wl.sigmas(steps), wl.cond, inference_mode=True)
    with torch.no_grad():
        return float(wl.reward_fn(traj.sample).mean())


def pairs_gain(spec, pairs: list[int], *, steps: int = 25, iters: int = 30, lr: float = 1e-4,
               alpha: float = 0.3) -> dict:
    """spec: a bench_run.BenchSpec. -> {"spec", "steps", "iters", "lr", "rows": [{pairs, reward_before, ...}]}."""
    rows = []
    for m in pairs:
        wl = spec.build()  # the same seeded starting weights for every M
        opt = torch.optim.AdamW(wl.params, lr=lr)
        split = SplitVelocity(wl)
        cfg = LeapAlignConfig(alpha=alpha, pairs_per_rollout=m, decoupled=True)
        gen, noise_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        before = eval_reward(wl, steps)
        start = time.perf_counter()
        for _ in range(iters):
            noise = torch.randn(wl.noise.shape, generator=noise_gen).to(wl.noise)
            opt.zero_grad(set_to_none=True)
            out = step(split, noise, wl.sigmas(steps), wl.cond, wl.reward_fn, cfg, gen,
                       backward=lambda loss: loss.backward())
            if not out.backward_done:
                out.loss.backward()
            opt.step()
        train_s = time.perf_counter() - start
        after = eval_reward(wl, steps)
        rows.append({"pairs": m, "reward_before": before, "reward_after": after, "gain": after - before,
                     "train_s": train_s, "gain_per_s": (after - before) / train_s, "s_per_iter": train_s / iters})
    return {"spec": asdict(spec), "workload": wl.info, "steps": steps, "iters": iters, "lr": lr, "alpha": alpha,
            "rows": rows}


def pairs_table(doc: dict) -> str:
    lines = [f"pairs_per_rollout on {doc['workload']['model']} ({doc['workload'].get('weights', '')}), T = "
             f"{doc['steps']}, {doc['iters']} steps, lr {doc['lr']}", "",
             "| pairs | reward before | reward after | gain | s/iter | gain per second |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        lines.append(f"| {r['pairs']} | {r['reward_before']:.4f} | {r['reward_after']:.4f} | {r['gain']:+.4f} | "
                     f"{r['s_per_iter']:.3f} | {r['gain_per_s']:+.5f} |")
    return "\n".join(lines)

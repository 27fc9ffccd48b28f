"""`leapalign bench`: peak memory, time per iteration and rollout share per method and T (docs/benchmarks.md).

    leapalign bench --out bench/cpu                                   # ShapesWorld on CPU, one process per case
    leapalign bench --model flux-random --device cuda --out bench/gpu # FLUX.1-dev-sized, LoRA, bf16, 512x512
    leapalign bench --pairs 1 2 4 --out bench/pairs                   # reward gain per second vs pairs_per_rollout
    leapalign bench --model flux-tiny --steps 25 --rollout-paths plain merged compiled --out bench/paths
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leapalign.bench.measure import ALL_CASES, make_case
from leapalign.bench.workloads import MODELS
from leapalign.fast_rollout import ROLLOUT_PATHS

HELP = "benchmark memory and time per method and number of steps (table, JSON, PNG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes", choices=MODELS, help="workload (flux-random: random weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50], help="numbers of sampling steps T")
    p.add_argument("--cases", nargs="+", default=list(ALL_CASES), choices=ALL_CASES, metavar="CASE",
                   help=f"cases at every T (default all: {' '.join(ALL_CASES)})")
    p.add_argument("--at", action="append", default=[], metavar="T=CASE,CASE",
                   help="override the cases at one T, e.g. --at 50=leapalign,leapalign_coupled (repeatable)")
    p.add_argument("--leap-steps", type=int, nargs="*", default=[], metavar="K",
                   help="leap start steps k (pair k, k+1) to sweep, coupled and decoupled, at T = --leap-T")
    p.add_argument("--leap-T", type=int, default=25, help="T of the leap start sweep")
    p.add_argument("--floor-steps", type=int, nargs="*", default=None,
                   help="T values at which to time the floor parts (default: every --steps)")
    p.add_argument("--batch", type=int, default=None, help="prompts per iteration (default: shapes 8, flux 1)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    p.add_argument("--rollout-path", default="plain", choices=ROLLOUT_PATHS[1:],
                   help="no-grad rollout path of the grid (fast_rollout.py; default plain)")
    p.add_argument("--rollout-paths", nargs="*", default=None, metavar="PATH[:DTYPE]",
                   help="instead of the grid: these rollout paths side by side at every --steps (e.g. plain merged "
                        "compiled merged_compiled merged:bfloat16)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled paths")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per case")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per case (median reported)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one fresh process per case (default on CPU, where peak RSS never comes down)")
    p.add_argument("--pairs", type=int, nargs="*", default=None, metavar="M",
                   help="instead of the grid: reward gain per second for these pairs_per_rollout values")
    p.add_argument("--pairs-iters", type=int, default=30, help="optimizer steps per --pairs run")
    p.add_argument("--out", required=True, help="output folder (bench.json, bench.png, bench.md)")


def parse_grid(args: argparse.Namespace) -> list:
    overrides = {}
    for item in args.at:
        steps, _, names = item.partition("=")
        if not steps.isdigit() or not names:
            raise ValueError(f"--at takes T=CASE,CASE (e.g. 50=leapalign), got {item!r}")
        overrides[int(steps)] = names.split(",")
    cases = []
    # in the order given (--steps, then --at), so a run cut short has measured the first ones
    for steps in dict.fromkeys([*args.steps, *overrides]):
        for name in overrides.get(steps, args.cases):
            case = make_case(name, steps, batch=args.batch)
            if case is not None:
                cases.append(case)
    for k in args.leap_steps:
        cases += [make_case("leapalign", args.leap_T, k), make_case("leapalign_coupled", args.leap_T, k)]
    return cases


def run(args: argparse.Namespace) -> int:
    from leapalign.bench.report import plot, table
    from leapalign.bench.runner import BenchSpec, run_in_process, run_isolated, summarize

    if args.batch is None:
        args.batch = 1 if args.model.startswith("flux") else 8
    if min(args.steps) < 2 or args.iters < 1 or args.warmup < 0 or args.batch < 1:
        raise ValueError("need every --steps >= 2, --iters >= 1, --warmup >= 0 and --batch >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = BenchSpec(model=args.model, device=args.device, batch=args.batch, size=args.size,
                     rollout_path=args.rollout_path, warmup=args.warmup, iters=args.iters)
    if args.pairs is not None:
        from leapalign.bench.pairs import pairs_gain, pairs_table

        doc = pairs_gain(spec, args.pairs or [1, 2, 4], steps=args.steps[0], iters=args.pairs_iters)
        text = pairs_table(doc)
    elif args.rollout_paths is not None:
        from leapalign.bench.paths import measure_paths, paths_table

        doc = measure_paths(spec, args.rollout_paths or ["plain", "merged", "compiled", "merged_compiled"],
                            args.steps, compile_backend=args.compile_backend, compile_mode=args.compile_mode)
        text = paths_table(doc)
    else:
        cases = parse_grid(args)

        def save(doc: dict) -> None:  # after every case, so an interrupted run keeps what it measured
            doc["summary"] = summarize(doc)
            tmp = out / "bench.json.tmp"
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(out / "bench.json")

        isolate = args.device == "cpu" if args.isolate is None else args.isolate
        floor_steps = args.steps if args.floor_steps is None else args.floor_steps
        doc = (run_isolated if isolate else run_in_process)(spec, cases, floor_steps, save)
        save(doc)
        plot(doc, out / "bench.png")
        text = table(doc) + "\n\n" + json.dumps(doc["summary"], indent=1)
    (out / "bench.md").write_text(text + "\n")
    if args.pairs is not None or args.rollout_paths is not None:
        (out / ("pairs.json" if args.pairs is not None else "paths.json")).write_text(json.dumps(doc, indent=1))
    print(text)
    return 0

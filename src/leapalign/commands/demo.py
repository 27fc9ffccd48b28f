"""`leapalign demo`: the ShapesWorld comparison, offline on a CPU (or on a GPU with device=cuda)."""

from __future__ import annotations

import argparse

HELP = ("ShapesWorld demo: LeapAlign vs ReFL, DRaFT-LV and DRTune under one protocol (tuning on validation, held-out "
        "once, seeds, paired bootstrap); world=modes: every method on the mode world; writes DIR/report.{json,md}")
WORLDS = ("shapes", "modes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small budget (CI smoke run, about 2 minutes)")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's budget: 300 iterations x 64 rollouts per run (Table 2), tuning runs of 100; "
                             "for a GPU: --paper device=cuda")
    parser.add_argument("--ablation", action="store_true",
                        help="LeapAlign's ablation rows (alpha, weighting, leap range, one vs two leaps), same protocol")
    parser.add_argument("--out", default="demo_out", help="output directory (report.json, report.md, PNGs, runs/)")
    parser.add_argument("--list-keys", action="store_true", help="list every demo setting with default and help, exit")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                        help="override a demo setting (parsed as `leapalign train` overrides), e.g. iterations=100 "
                             "lr=5e-5 alpha=0.1 seeds=0,1,2 methods=leapalign,refl; world=modes runs the mode world "
                             "(its own settings: world=modes --list-keys)")


def run(args: argparse.Namespace) -> int:
    from leapalign.config import describe, parse_overrides
    from leapalign.demo.run import PAPER, QUICK, DemoConfig, run_demo
    from leapalign.outputs import prepare_output_dir

    worlds = [s.split("=", 1)[1] for s in args.settings if s.startswith("world=")]
    settings = [s for s in args.settings if not s.startswith("world=")]
    world = worlds[-1] if worlds else "shapes"
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose one of: {', '.join(WORLDS)}")
    if world == "modes":
        return run_modes(args, settings)
    if args.list_keys:
        print("\n".join(describe(DemoConfig)))
        return 0
    if args.quick and args.paper:
        raise ValueError("--quick and --paper are two budgets; choose one")
    cfg = parse_overrides(DemoConfig, settings, QUICK if args.quick else PAPER if args.paper else None)
    prepare_output_dir(args.out, "--out")
    run_demo(cfg, args.out, ablation=args.ablation)
    return 0


def run_modes(args: argparse.Namespace, settings: list[str]) -> int:
    """The mode world (leapalign.modes.demo): every method, three views, ablations; --ablation is implied."""
    from leapalign.config import describe, parse_overrides
    from leapalign.modes.demo import QUICK, ModesDemoConfig, run_modes_demo
    from leapalign.outputs import prepare_output_dir

    if args.list_keys:
        print("\n".join(describe(ModesDemoConfig)))
        return 0
    if getattr(args, "paper", False):
        raise ValueError("--paper is a ShapesWorld budget; world=modes takes its own settings (world=modes --list-keys)")
    cfg = parse_overrides(ModesDemoConfig, settings, QUICK if args.quick else None)
    prepare_output_dir(args.out, "--out")
    report = run_modes_demo(cfg, args.out)
    print(f"mode world: {report['wall_seconds']:.0f} s; report in {args.out}/report.md")
    return 0

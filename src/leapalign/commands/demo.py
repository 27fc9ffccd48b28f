"""`leapalign demo`: the ShapesWorld comparison, offline on a CPU."""

from __future__ import annotations

import argparse

HELP = "ShapesWorld demo: LeapAlign vs ReFL, DRaFT-LV and DRTune at equal budget; writes DIR/report.{json,md}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small budget (CI smoke run, about 2 minutes)")
    parser.add_argument("--out", default="demo_out", help="output directory (report.json, report.md, PNGs, runs/)")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                        help="override a demo setting, e.g. iterations=100 lr=5e-5 alpha=0.1 seeds=0,1,2 "
                             "methods=leapalign,refl")


def parse_settings(items: list[str], quick: bool):
    from dataclasses import fields

    from leapalign.demo import QUICK, DemoConfig

    kinds = {f.name: f for f in fields(DemoConfig)}
    values = dict(QUICK) if quick else {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in kinds:
            raise ValueError(f"bad setting {item!r}: use KEY=VALUE with KEY one of {', '.join(kinds)}")
        default = DemoConfig().__dict__[key]
        try:
            if isinstance(default, list):
                cast = int if key == "seeds" else str
                values[key] = [cast(v) for v in raw.split(",") if v]
            else:
                values[key] = type(default)(raw)
        except ValueError:
            raise ValueError(f"bad value for {key}: {raw!r} (expected {type(default).__name__})") from None
    return DemoConfig(**values)


def run(args: argparse.Namespace) -> int:
    from leapalign.demo import run_demo

    run_demo(parse_settings(args.settings, args.quick), args.out)
    return 0

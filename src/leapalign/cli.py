"""`leapalign` command line: one subcommand per module in leapalign.commands, named as the module.

Each command module defines HELP (one line), add_arguments(parser) and run(args) -> int. Bad input anywhere
(ValueError, FileNotFoundError, KeyError raised with a message) ends with exit code 2 and one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import leapalign
from leapalign import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapalign", description="post-train flow matching text-to-image models "
                                     "on rewards with LeapAlign and its baselines")
    parser.add_argument("--version", action="version", version=f"leapalign {leapalign.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"leapalign.commands.{info.name}")
        p = sub.add_parser(info.name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"leapalign {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"leapalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

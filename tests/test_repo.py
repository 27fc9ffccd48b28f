"""Every module imports; no source file grows past ~500 lines."""

import importlib
import pkgutil
from pathlib import Path

import pytest

import leapalign

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(leapalign.__path__, "leapalign."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_no_file_over_500_lines():
    too_long = [(str(p.relative_to(ROOT)), n) for p in sorted(ROOT.glob("[st]*/**/*.py"))
                if (n := len(p.read_text().splitlines())) > 500]
    assert not too_long, f"split these files: {too_long}"


def test_cli_lists_every_command(capsys):
    from leapalign.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0

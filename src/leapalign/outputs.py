"""Output directories of train, eval, generate and demo, created before any work, so that a path that is a file or
cannot be written fails with one line instead of a traceback after minutes of training or sampling."""

from __future__ import annotations

import tempfile
from pathlib import Path


def prepare_output_dir(path: str | Path, what: str) -> Path:
    """Create `path` (and parents) and check that a file can be written in it; ValueError naming `what` (the flag
    or config key) otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {p} is an existing file, not a directory; choose another path")
    try:
        p.mkdir(parents=True, exist_ok=True)
        # os.access ignores read-only mounts and is always true for root: write a probe file instead.
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write_test_"):
            pass
    except OSError as err:
        raise ValueError(f"{what} {p} is not writable ({err.strerror or err}); choose another path") from None
    return p


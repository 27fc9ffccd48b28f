"""Atomic, validated, retention-limited training checkpoints.

Layout: OUTPUT_DIR/checkpoints/step_0000050/ holding accelerate's state (trainable weights only, optimizer,
scheduler, RNG states of every process) or, under FSDP, `sharded/` (torch.distributed.checkpoint: the trainable
weights, their EMA and the optimizer state, each process writing its shards; the run's randomness all comes from
explicit generators seeded by position, so no RNG state is needed), trainer_state_<rank>.pt (EMA shadow unless
sharded, counters, under FSDP the scheduler) per process,
config.yaml and meta.json (step, library version, file sizes). Every process writes into a temporary
directory that the main process renames into place after all writes, so a killed run never leaves a
half-written checkpoint under a valid name. `problem` catches what happens afterwards: meta.json's sizes a
truncated file, safetensors headers and finite values, and the zip CRCs of torch.save files (.pt/.bin) a file
overwritten in place.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open

import leapalign

META = "meta.json"
SHARDED = "sharded"


def checkpoint_dirs(root: Path) -> list[Path]:
    """step_* directories under root, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")), key=lambda p: p.name)


def problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when it is complete and its weights are finite."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return f"{META} missing or unreadable"
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, expected {size}"
        why = file_problem(f)
        if why is not None:
            return f"{name} {why}"
    return None


def file_problem(f: Path) -> str | None:
    """What is wrong with the values of one weights file, or None: safetensors must parse and hold finite
    floats (read one tensor at a time), torch.save archives (.pt, .bin) must pass their zip CRC check."""
    try:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as data:
                for key in data.keys():
                    t = data.get_tensor(key)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return f"holds non-finite values ({key})"
        elif f.suffix in (".pt", ".bin"):
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"is corrupt ({bad} fails its CRC check)"
    except (OSError, SafetensorError, zipfile.BadZipFile, ValueError, RuntimeError) as err:
        return f"is unreadable ({type(err).__name__}: {str(err)[:100]})"
    return None


def step_of(path: Path) -> int:
    """The iteration a valid checkpoint was written at."""
    return int(json.loads((path / META).read_text())["step"])


def latest_valid(root: Path) -> Path | None:
    """The newest complete checkpoint; corrupt ones are skipped with a warning."""
    for path in reversed(checkpoint_dirs(root)):
        why = problem(path)
        if why is None:
            return path
        warnings.warn(f"skipping corrupt checkpoint {path}: {why}", stacklevel=2)
    return None


def save(accelerator, root: Path, step: int, trainer_state: dict, config: dict, keep: int,
         sharded: dict | None = None) -> Path:
    """Write checkpoint `step` from every process; returns its final path. `sharded`: the FSDP state
    (sharding.sharded_state), written instead of accelerate's."""
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if sharded is None:
        accelerator.save_state(str(tmp))
    else:
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded, checkpoint_id=str(tmp / SHARDED))
    torch.save(trainer_state, tmp / f"trainer_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        meta = {"step": step, "version": leapalign.__version__, "world_size": accelerator.num_processes,
                "time": time.time(), "files": files}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if final.exists():  # a re-run of the same step after a crash between save and retention
            shutil.rmtree(final)
        tmp.rename(final)
        if keep > 0:
            for old in checkpoint_dirs(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path, sharded: dict | None = None) -> dict:
    """Restore accelerate's state (or, under FSDP, load into `sharded` in place) from `path` and return this
    process's trainer state."""
    meta = json.loads((path / META).read_text())
    if meta["world_size"] != accelerator.num_processes:
        raise ValueError(f"checkpoint {path} was written by {meta['world_size']} processes, this run has "
                         f"{accelerator.num_processes}; resume with the same number of processes")
    if (sharded is not None) != (path / SHARDED).is_dir():
        raise ValueError(f"checkpoint {path} was written " + ("under FSDP" if sharded is None else "without FSDP")
                         + "; resume it with the same accelerate configuration")
    if sharded is None:
        # strict=False: the saved model state holds the trainable parameters only (see trainer's save hook).
        accelerator.load_state(str(path), strict=False)
    else:
        import torch.distributed.checkpoint as dcp

        dcp.load(sharded, checkpoint_id=str(path / SHARDED))
    return torch.load(path / f"trainer_state_{accelerator.process_index}.pt", map_location="cpu", weights_only=False)


def read_sharded(path: Path, like: dict[str, torch.Tensor], ema: bool) -> dict[str, torch.Tensor]:
    """Full tensors (named and shaped as `like`) of an FSDP checkpoint's trainable weights, or of their EMA when
    ema=True and the run kept one, read in one process (torch.distributed.checkpoint reassembles the shards)."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(path / SHARDED))
    part = "ema" if ema and any(k.startswith("ema.") for k in reader.read_metadata().state_dict_metadata) else "model"
    state = {part: {n: torch.empty_like(t, device="cpu") for n, t in like.items()}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader, no_dist=True)
    return state[part]

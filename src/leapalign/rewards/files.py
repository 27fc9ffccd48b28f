"""Locating reward weights (local file, local folder or hub id) and reading state dicts safely.

Every failure is a one-line FileNotFoundError/ValueError that names the file(s) expected and where to get them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def find_file(path: str | None, filenames: list[str], repo: str | None, what: str, url: str | None = None) -> Path:
    """The first of `filenames` found at `path`.

    path: a file (used as is), a folder (searched for `filenames`), a hub id "owner/name", or None (the
    default hub repo `repo`; None when the file is not on the hub). The hub is tried through huggingface_hub,
    which uses its local cache first. url: where to download by hand (default: the hub page of `repo`).
    """
    url = url or f"https://huggingface.co/{repo}"
    if path is not None and Path(path).is_file():
        return Path(path)
    if path is not None and Path(path).is_dir():
        for name in filenames:
            if (Path(path) / name).is_file():
                return Path(path) / name
        raise FileNotFoundError(
            f"{what}: none of {filenames} in {path}; download it from {url} into that folder"
        )
    hub_repo = repo if path is None else path
    if hub_repo is None or (path is not None and (path.count("/") != 1 or path.startswith((".", "/", "~")))):
        where = "no path given" if path is None else f"{path} is neither a file, a folder nor a hub id"
        raise FileNotFoundError(f"{what}: {where}; download {filenames[0]} from {url} and pass its path")
    from huggingface_hub import hf_hub_download

    for name in filenames:
        try:
            return Path(hf_hub_download(hub_repo, name))
        except Exception:  # noqa: BLE001 - offline, missing file and bad repo all mean "not available here"
            continue
    raise FileNotFoundError(
        f"{what}: could not get {filenames} from hub repo {hub_repo} (offline?); download {filenames[0]} from "
        f"{url} and pass path=FILE_OR_FOLDER"
    )


def find_folder(path: str | None, markers: list[str], repo: str) -> str:
    """A local folder or hub id to load transformers files (e.g. a tokenizer) from.

    A local folder (or the folder of a local file) counts only if it holds one of `markers`; otherwise the
    default hub `repo`, so that a weights file can sit alone in its folder.
    """
    if path is not None and Path(path).is_file():
        path = str(Path(path).parent)
    if path is not None and Path(path).is_dir():
        return path if any((Path(path) / m).is_file() for m in markers) else repo
    return repo if path is None else path


def load_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch pickle file; a {"state_dict": ...} wrapper and "module." prefixes
    (DDP checkpoints) are removed. weights_only=True: the official reward files are plain tensor dicts."""
    if file.suffix == ".safetensors":
        state = load_file(str(file))
    else:
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a weights file"
            raise ValueError(f"{file} is not a readable torch weights file ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def require_keys(state: dict[str, torch.Tensor], keys: list[str], file: Path, expected: str) -> None:
    """One-line ValueError when `state` lacks any of `keys`, i.e. `file` is not the checkpoint `expected`."""
    missing = [k for k in keys if k not in state]
    if missing:
        sample = ", ".join(sorted(state)[:3])
        raise ValueError(
            f"{file} is not {expected}: it lacks {missing[0]!r} (and {len(missing) - 1} more expected keys); "
            f"its keys start with {sample}"
        )

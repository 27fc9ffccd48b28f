"""Model adapters: name -> "module:Class", resolved lazily so that importing leapalign never imports diffusers."""

from __future__ import annotations

import importlib
import os

import torch

from leapalign.adapters.base import FlowAdapter

# Each class has classmethod from_pretrained(path=None, *, device, dtype, guidance_scale, ...) -> FlowAdapter.
ADAPTERS: dict[str, str] = {
    "flux": "leapalign.adapters.flux:FluxAdapter",  # FLUX.1-dev vs -schnell from the transformer's guidance_embeds
    "sd3": "leapalign.adapters.sd3:SD3Adapter",  # SD3 and SD3.5 (true CFG)
    "shapes": "leapalign.adapters.shapes:ShapesAdapter",  # the offline ShapesWorld model
}


def adapter_class(name: str) -> type:
    """The adapter class registered as `name`, or a "package.module:Class" path to user code."""
    target = ADAPTERS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown adapter {name!r}; valid names: {', '.join(sorted(ADAPTERS))} "
                         f"(or a 'package.module:Class' path)")
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_adapter(name: str, path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, guidance_scale: float | None = None) -> FlowAdapter:
    """Load the model at `path` (hub id or local directory; None = the adapter's default) behind adapter `name`."""
    return adapter_class(name).from_pretrained(path, device=device, dtype=dtype, guidance_scale=guidance_scale)


__all__ = ["ADAPTERS", "FlowAdapter", "adapter_class", "load_adapter"]

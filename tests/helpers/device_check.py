"""A CPU-only check for device mix-ups: run code on a stand-in accelerator and record every op that mixes devices.

`on_stand_in_device()` makes `meta` behave as an accelerator backed by CPU memory: tensors moved to (or created
on) `meta` inside the block are `StandIn` tensors that report `device='meta'` but hold real CPU values, so whole
forward passes, samplers, rewards and method steps run with real numbers (`.item()` works). Every op whose tensor
arguments include both a stand-in tensor and a plain CPU tensor is recorded, 0-dim CPU tensors included: on CUDA
some of them work (a 0-dim CPU tensor as the second operand of `mul`) and others crash (as `self` of `addcmul`:
"CPU Scalar support for self argument is not supported"), so device-clean code (every tensor created in forward
code takes the input's device) has none. Also recorded: a CPU generator drawing directly onto the device
(`torch.randn(..., generator=cpu_gen, device=cuda)` raises on CUDA). Explicit transfers (`.to(device)`, `copy_`)
are not mix-ups. `meta` is used as the stand-in because autograd runs meta tensors on the calling thread, as CPU
ones, so backward passes run too; accelerate trains on it with ACCELERATE_TORCH_DEVICE=meta. Not seen: kernel-level
differences between devices and code that branches on `device.type == "cuda"` (scripts/gpu_smoke.sh runs those).
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
# Device transfers: a CPU source is what they are for.
_TRANSFERS = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default, torch.ops.aten.copy.default}


class StandIn(torch.Tensor):
    """A CPU tensor that reports the stand-in device; only meant to live inside `on_stand_in_device()`."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> "StandIn":
        out = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                  storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                  layout=elem.layout, device=DEVICE, requires_grad=elem.requires_grad)
        out.elem = elem
        return out

    def __repr__(self) -> str:
        return f"StandIn({self.elem!r})"

    @property
    def data(self) -> "StandIn":  # an alias of the values, as Tensor.data
        return StandIn(self.elem.detach())

    @data.setter
    def data(self, new: torch.Tensor) -> None:  # `p.data = w` swaps the values (ReferenceVelocity relies on it)
        if new.shape != self.shape:
            raise ValueError(f"a stand-in's .data keeps its shape {tuple(self.shape)}, got {tuple(new.shape)}")
        self.elem = new.elem if isinstance(new, StandIn) else new

    def tolist(self) -> list:  # works on CUDA tensors too (a sync); `.numpy()` does not, and fails here as well
        return self.elem.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, None)


@dataclass
class Mixup:
    op: str
    devices: list[str]  # one entry per tensor argument: 'device' or 'cpu (shape)'
    where: str  # the innermost project frames that issued the op (innermost first)

    def __str__(self) -> str:
        return f"{self.op}({', '.join(self.devices)}) at {self.where}"


@dataclass
class Record:
    mixups: list[Mixup] = field(default_factory=list)


def _where() -> str:
    frames = [f for f in traceback.extract_stack() if "/leapalign/" in f.filename and "/tests/" not in f.filename]
    return " < ".join(f"{f.filename.split('/src/')[-1]}:{f.lineno}" for f in frames[::-1][:3]) or "backward"


def _is_target(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


def _run(func, args, kwargs, record: Record | None):
    flat = tree_flatten((args, kwargs))[0]
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    on_device = any(isinstance(t, StandIn) for t in tensors)
    gen = kwargs.get("generator")
    if record is not None:
        cpu = [t for t in tensors if not isinstance(t, StandIn)]
        if on_device and cpu and func not in _TRANSFERS:
            record.mixups.append(Mixup(str(func), [f"cpu {tuple(t.shape)}" if not isinstance(t, StandIn) else "device"
                                                   for t in tensors], _where()))
        if gen is not None and gen.device.type == "cpu" and (_is_target(kwargs.get("device")) or on_device):
            record.mixups.append(Mixup(str(func), ["cpu generator"], _where()))
    to_device = _is_target(kwargs.get("device"))
    to_cpu = func in _TRANSFERS and kwargs.get("device") is not None and not to_device
    if to_device:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    args, kwargs = tree_map(lambda t: t.elem if isinstance(t, StandIn) else t, (args, kwargs))
    out = func(*args, **kwargs)
    if func is torch.ops.aten.copy_.default and on_device:  # in place into a stand-in: return the stand-in
        return flat[0]
    if (to_device or on_device) and not to_cpu:
        return tree_map(lambda t: StandIn(t) if isinstance(t, torch.Tensor) and not isinstance(t, StandIn) else t,
                        out)
    return out


class _Mode(TorchDispatchMode):
    def __init__(self, record: Record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, self.record)


def _from_data(factory):
    """torch.tensor / torch.as_tensor copy Python data to the device below the dispatcher, where no mode sees it:
    build on the CPU, then move (a dispatched transfer, which yields a stand-in)."""

    def build(data, *args, device=None, **kwargs):
        if _is_target(device):
            return factory(data, *args, **kwargs).to(DEVICE)
        return factory(data, *args, device=device, **kwargs)

    return build


@contextmanager
def on_stand_in_device() -> Iterator[Record]:
    """Inside the block, `meta` is a CPU-backed accelerator and every device mix-up is appended to the record."""
    record = Record()
    factories = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}
    try:
        for name, factory in factories.items():
            setattr(torch, name, _from_data(factory))
        with _Mode(record):
            yield record
    finally:
        for name, factory in factories.items():
            setattr(torch, name, factory)


def to_stand_in(module: torch.nn.Module) -> torch.nn.Module:
    """Move a module's parameters and buffers onto the stand-in device (call inside `on_stand_in_device()`)."""
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = torch.nn.Parameter(StandIn(p.detach()), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = StandIn(b)
    return module

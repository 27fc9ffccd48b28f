"""Reward-gradient methods, one pure torch-only file each, behind one call signature.

    out = METHODS[name].step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, backward=None)

Policy-gradient methods (Flow-GRPO, DanceGRPO, MixGRPO) fit the same registry later.
"""

from __future__ import annotations

from leapalign.methods import draft, drtune, full, leapalign, refl
from leapalign.methods.common import Method

METHODS: dict[str, Method] = {
    "leapalign": Method("leapalign", leapalign.LeapAlignConfig, leapalign.step),
    "refl": Method("refl", refl.ReFLConfig, refl.step),
    "draft": Method("draft", draft.DraftConfig, draft.step),
    "draft_lv": Method("draft_lv", draft.DraftLVConfig, draft.step_lv),
    "drtune": Method("drtune", drtune.DRTuneConfig, drtune.step),
    "full": Method("full", full.FullConfig, full.step),
}


def get_method(name: str) -> Method:
    """METHODS[name], or a ValueError that lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]

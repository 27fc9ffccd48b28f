"""Reward registry: names -> "module:attr" factories, resolved lazily so that importing leapalign.rewards
loads no model code.

A factory is a class with `from_pretrained(path=None, *, device="cpu", dtype=torch.float32)` or a function
with that signature; either returns a Reward (`reward(images (B, 3, H, W) in [0, 1], prompts) -> (B,)`).
Users register their own by passing "package.module:function" as the name. A factory with the attribute
`differentiable = False` (the rule rewards) gives no pixel gradient: only the policy-gradient methods take it.
"""

from __future__ import annotations

import importlib

import torch

from leapalign.rewards.base import Reward

REWARDS: dict[str, str] = {
    "hpsv2": "leapalign.rewards.hps:HPSv2Reward",
    "hpsv21": "leapalign.rewards.hps:HPSv21Reward",
    "pickscore": "leapalign.rewards.pickscore:PickScoreReward",
    "clip": "leapalign.rewards.clip:ClipReward",
    "aesthetic": "leapalign.rewards.aesthetic:AestheticReward",
    "imagereward": "leapalign.rewards.imagereward:ImageRewardReward",
    "shapes": "leapalign.rewards.shapes:ShapesReward",
    "detector": "leapalign.rewards.detector:DetectorReward",
    "shapes-compose": "leapalign.rewards.shapes_compose:ShapesComposeReward",
    # rule rewards: verdicts of the GenEval rule engine, no gradient (differentiable = False)
    "shapes-rules": "leapalign.rewards.shapes_rules:ShapesRulesReward",
    "shapes-rules-strict": "leapalign.rewards.shapes_rules:ShapesRulesStrictReward",
    "geneval": "leapalign.rewards.geneval_reward:GenEvalReward",
    "geneval-strict": "leapalign.rewards.geneval_reward:GenEvalStrictReward",
}


def resolve_factory(name: str):
    """The factory object behind a registry name or a "package.module:attr" path."""
    target = REWARDS.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown reward {name!r}; valid names: {', '.join(sorted(REWARDS))}, or 'package.module:function'"
        )
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"reward {name!r}: cannot import module {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def require_differentiable(names: list[str], method: str) -> None:
    """Refuse, in one line, a reward whose factory says `differentiable = False` (a rule verdict) for a method
    that backpropagates the reward into the pixels. Checked by name, before any model is loaded."""
    for name in names:
        if not getattr(resolve_factory(name), "differentiable", True):
            raise ValueError(f"method {method} needs the reward's gradient w.r.t. the pixels, but reward {name!r} is "
                             f"a non-differentiable rule verdict; train it with method.name=flow_grpo or mix_grpo, "
                             f"or choose a differentiable reward")


def load_reward(
    name: str, *, path: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Reward:
    """Build a frozen reward by registry name (see REWARDS) or "package.module:function" path.

    path: weights file, folder or hub id (None = the reward's default hub repo).
    """
    factory = resolve_factory(name)
    build = getattr(factory, "from_pretrained", factory)
    reward = build(path, device=device, dtype=dtype)
    if not callable(reward):
        raise ValueError(f"reward {name!r}: its factory returned a {type(reward).__name__}, not a callable reward")
    return reward

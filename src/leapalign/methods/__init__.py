"""Reward-gradient and policy-gradient methods, one pure torch-only file each, behind one call signature.

    out = METHODS[name].step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, backward=None)

The policy-gradient family (flow_grpo, mix_grpo; DanceGRPO as options of flow_grpo) needs more from the trainer,
declared on the registry entry so that the direct-gradient methods keep the plain signature:

    m = METHODS[name]; cfg = m.config(**args)
    G = m.samples_per_prompt(cfg)       # repeat each prompt G times (contiguous blocks), noise (B*G, ...)
    extra = {}
    if m.needs_reference(cfg): extra["reference"] = frozen_velocity   # e.g. the LoRA-disabled base model
    if m.uses_iteration: extra["iteration"] = step                     # global iteration (MixGRPO's window)
    if m.keeps_rollouts(cfg): extra["rollouts"] = run_dict             # one dict per run (updates per rollout)
    out = m.step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, backward=backward, **extra)

Those keywords exist only on the steps that declare them: passing them elsewhere fails loudly. The GRPO entries
also say `needs_reward_gradient=False`: they alone take a non-differentiable (rule) reward.
"""

from __future__ import annotations

from leapalign.methods import draft, drtune, full, grpo, leapalign, mix_grpo, refl
from leapalign.methods.common import Method

METHODS: dict[str, Method] = {
    "leapalign": Method("leapalign", leapalign.LeapAlignConfig, leapalign.step),
    "refl": Method("refl", refl.ReFLConfig, refl.step),
    "draft": Method("draft", draft.DraftConfig, draft.step),
    "draft_lv": Method("draft_lv", draft.DraftLVConfig, draft.step_lv),
    "drtune": Method("drtune", drtune.DRTuneConfig, drtune.step),
    "full": Method("full", full.FullConfig, full.step),
    "flow_grpo": Method("flow_grpo", grpo.FlowGRPOConfig, grpo.step, samples_per_prompt=grpo.group_size,
                        needs_reference=grpo.uses_kl, uses_iteration=True, keeps_rollouts=grpo.reuses_rollouts,
                        needs_reward_gradient=False),
    "mix_grpo": Method("mix_grpo", mix_grpo.MixGRPOConfig, mix_grpo.step, samples_per_prompt=grpo.group_size,
                       needs_reference=grpo.uses_kl, uses_iteration=True, keeps_rollouts=grpo.reuses_rollouts,
                       needs_reward_gradient=False),
}


def get_method(name: str) -> Method:
    """METHODS[name], or a ValueError that lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]

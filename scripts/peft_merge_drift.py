"""Why the merged rollout keeps separate merged copies: peft's in-place merge()/unmerge() moves the base weights.

A tiny random Flux with LoRA r4 on the "default" targets; each cycle draws new LoRA B factors (as training changes
them), then merges and unmerges every LoRA layer in place. Prints the base weights' deviation from their start
after 1, 10 and 100 cycles, in float32 and bfloat16. fast_rollout.MergedLora never writes W (tested: 0 after any
number of cycles). Run: PYTHONPATH=tests python scripts/peft_merge_drift.py
"""

import torch

from helpers import tiny_pipelines as tp
from leapalign.adapters.flux import FluxAdapter
from leapalign.adapters.lora import LoraConfig, apply_lora, lora_sites

for dtype in (torch.float32, torch.bfloat16):
    adapter = FluxAdapter(tp.flux_pipeline())
    torch.manual_seed(0)
    apply_lora(adapter, LoraConfig(rank=4, targets="default"))
    adapter.transformer.to(dtype)
    named = dict(adapter.transformer.named_parameters())
    start = {n: p.detach().clone() for n, p in named.items() if n.endswith("base_layer.weight")}
    scale = max(float(w.float().abs().max()) for w in start.values())
    g = torch.Generator().manual_seed(1)
    for cycle in range(1, 101):
        with torch.no_grad():
            for n, p in named.items():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for _, _, layer in lora_sites(adapter.transformer):
            layer.merge()
            layer.unmerge()
        if cycle in (1, 10, 100):
            diffs = [(named[n].detach().float() - w.float()) for n, w in start.items()]
            changed = sum(int((d != 0).sum()) for d in diffs) / sum(d.numel() for d in diffs)
            print(f"{dtype}, {cycle} cycles: {100 * changed:.0f}% of base elements changed, max |dW| "
                  f"{max(float(d.abs().max()) for d in diffs):.2e} (max |W| {scale:.2f})")

"""Two CPU processes (torchrun, gloo) == one process with the same global batch; ranks stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from helpers.toy import toy_config

from leapalign.config import to_dict
from leapalign.trainer import train

pytestmark = pytest.mark.slow  # two training processes launched by torchrun

TESTS = Path(__file__).parent
SCRIPT = """
import sys, yaml
from leapalign.config import from_dict
from leapalign.trainer import train
train(from_dict(yaml.safe_load(open(sys.argv[1]))), progress=False)
"""


# The leap pair is seeded per (iteration, micro-batch), shared by the ranks, so LeapAlign trains exactly what one
# process trains. The GRPO family draws its SDE noise per process (a layout-dependent run, as Flow-GRPO's): there
# the ranks must stay in sync and each group (G samples of one prompt) must stay on one rank.
@pytest.mark.parametrize("method,args", [("leapalign", {"alpha": 0.3}),
                                         ("flow_grpo", {"group_size": 2, "kl_beta": 0.1})])
def test_two_processes_equal_one_process_with_same_global_batch(tmp_path, method, args):
    single = train(toy_config(tmp_path / "single", batch_size=4, iterations=3, method__name=method,
                              method__args=args), progress=False)

    cfg = toy_config(tmp_path / "dist", batch_size=2, iterations=3, method__name=method, method__args=args)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]),
           "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", str(tmp_path / "run.py"), str(tmp_path / "cfg.yaml")],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The EMA shadow is kept per process and folds in every step's parameters: equal shadows <=> equal params.
    ckpt = Path(cfg.output_dir) / "checkpoints" / "step_0000003"
    assert json.loads((ckpt / "meta.json").read_text())["world_size"] == 2
    states = [torch.load(ckpt / f"trainer_state_{r}.pt", weights_only=False) for r in (0, 1)]
    for a, b in zip(states[0]["ema"]["shadow"], states[1]["ema"]["shadow"]):
        assert torch.equal(a, b)

    dist, ref = load_file(str(Path(cfg.output_dir) / "final" / "weights.safetensors")), load_file(str(single.weights))
    assert set(dist) == set(ref)
    history = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    if method == "flow_grpo":
        # both ranks' groups are complete: a group of 2 samples of one prompt has a spread, never a lone sample
        assert all(r["zero_std_groups"] < 1 for r in history if "zero_std_groups" in r)
        return
    for name in ref:
        torch.testing.assert_close(dist[name], ref[name], rtol=1e-5, atol=1e-6)

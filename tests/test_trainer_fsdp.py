"""FSDP2 (accelerate, fully_shard) on two CPU processes trains exactly what one process (or DDP) trains.

accelerate selects FSDP only on GPUs; helpers/fsdp_cpu.py forces its real FSDP2 code path onto gloo CPU processes
(written against accelerate 1.15.0, pinned in requirements-lock.txt). Tolerances are the DDP test's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from helpers.fsdp_cpu import fsdp_env
from helpers.toy import ToyAdapter, toy_config

from leapalign.config import to_dict
from leapalign.models import load_trained
from leapalign.trainer import train

pytestmark = pytest.mark.slow  # two training processes launched by torchrun

TESTS = Path(__file__).parent
FSDP_RUNNER = TESTS / "helpers" / "fsdp_cpu.py"
DDP_RUNNER = """
import sys, yaml
from leapalign.config import from_dict
from leapalign.trainer import train
train(from_dict(yaml.safe_load(open(sys.argv[1]))), progress=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg, tmp_path: Path, *, fsdp: bool = True, wrap: str | None = None, name: str = "cfg") -> Path:
    """Run `cfg` on 2 processes (FSDP2 or DDP over gloo); returns its output_dir."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    runner = FSDP_RUNNER
    if not fsdp:
        runner = tmp_path / "ddp_runner.py"
        runner.write_text(DDP_RUNNER)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]),
           "OMP_NUM_THREADS": "1", **(fsdp_env(wrap) if fsdp else {"ACCELERATE_USE_CPU": "1"})}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(runner), str(config)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(cfg.output_dir)


def assert_same(a: dict, b: dict, rtol=1e-5, atol=1e-6) -> None:
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def final(run: Path) -> tuple[dict, dict]:
    return load_file(str(run / "final" / "weights.safetensors")), load_file(str(run / "final" / "ema.safetensors"))


def history(run: Path) -> list[dict]:
    """The training records of metrics.jsonl (evaluation records left out)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


def test_leapalign_with_grad_accum_equals_one_process(tmp_path):
    # 2 processes x batch 1 == 1 process x batch 2, each with 2 micro-batches (a leap pair is drawn per
    # micro-batch); clipping active on every step (the global norm, not per shard); an evaluation with the EMA
    # weights swapped into the shards after every step must leave the next step's weights as they were.
    common = dict(iterations=3, grad_accum=2, optim__max_grad_norm=0.05, eval__prompts="shapes:eval", eval__every=1,
                  eval__num_prompts=2, eval__num_steps=2, eval__geneval=False)
    single = train(toy_config(tmp_path / "single", batch_size=2, **common), progress=False)
    run = launch(toy_config(tmp_path / "fsdp", batch_size=1, **common), tmp_path)

    weights, ema = final(run)
    assert len(list((run / "samples").glob("step_*.png"))) == 3
    trainable = {n for n, p in ToyAdapter().transformer.named_parameters() if p.requires_grad}
    assert set(weights) == set(ema) == trainable  # every trainable tensor, under its plain name
    ref_weights, ref_ema = final(single.output_dir)
    assert_same(weights, ref_weights)
    assert_same(ema, ref_ema)
    assert all(r["grad_norm"] > 0.05 for r in history(run))  # so clipping was active on every step
    assert [r["reward"] for r in history(run)] == pytest.approx([r["reward"] for r in history(single.output_dir)],
                                                               rel=1e-5)


def test_bf16_autocast_equals_ddp(tmp_path):
    # bf16 compute by autocast with fp32 master weights and fp32 gradient reduction, as DDP and one process run it
    # (accelerate autocasts DDP modules but not FSDP2 ones). The reference is DDP on the same layout: bf16 kernels
    # round batch 1 and batch 2 differently (DDP vs one process: 4e-5), FSDP without autocast differed by 3e-4.
    cfgs = [toy_config(tmp_path / name, batch_size=1, iterations=3, mixed_precision="bf16") for name in ("ddp", "fsdp")]
    ddp = launch(cfgs[0], tmp_path, fsdp=False, name="ddp")
    fsdp = launch(cfgs[1], tmp_path, name="fsdp")
    for a, b in zip(final(fsdp), final(ddp)):
        assert_same(a, b)


def test_flow_grpo_kl_equals_ddp(tmp_path):
    # The GRPO family draws SDE noise per process, so the reference run is DDP on the same 2-process layout. The
    # KL term goes through the frozen reference swapped into the shards: it must be non-zero and the same.
    args = {"group_size": 2, "kl_beta": 0.1}
    cfgs = [toy_config(tmp_path / name, batch_size=1, iterations=3, method__name="flow_grpo", method__args=args)
            for name in ("ddp", "fsdp")]
    ddp = launch(cfgs[0], tmp_path, fsdp=False, name="ddp")
    fsdp = launch(cfgs[1], tmp_path, name="fsdp")
    kl_ddp, kl_fsdp = [r["kl"] for r in history(ddp)], [r["kl"] for r in history(fsdp)]
    assert kl_fsdp[0] == 0 and min(kl_fsdp[1:]) > 1e-6  # identical to the reference until the first update
    assert kl_fsdp == pytest.approx(kl_ddp, rel=1e-4)
    for a, b in zip(final(fsdp), final(ddp)):
        assert_same(a, b)


def test_resume_from_sharded_checkpoint_equals_uninterrupted(tmp_path):
    whole = launch(toy_config(tmp_path / "whole", batch_size=2, iterations=4), tmp_path, name="whole")
    parts = toy_config(tmp_path / "parts", batch_size=2, iterations=2)
    launch(parts, tmp_path, name="first")
    ckpt = Path(parts.output_dir) / "checkpoints" / "step_0000002"
    keys = FileSystemReader(str(ckpt / "sharded")).read_metadata().state_dict_metadata
    assert {k.split(".")[0] for k in keys} == {"model", "ema", "optim"}
    # `leapalign eval --weights` reads a sharded checkpoint in one process: the EMA weights of iteration 2
    adapter, _ = load_trained(ckpt, ema=True)
    trained = {n: p.detach() for n, p in adapter.transformer.named_parameters()}
    assert_same(trained, load_file(str(Path(parts.output_dir) / "final" / "ema.safetensors")), rtol=0, atol=0)
    parts.iterations, parts.resume = 4, "auto"
    resumed = launch(parts, tmp_path, name="second")
    for a, b in zip(final(resumed), final(whole)):
        assert_same(a, b, rtol=0, atol=0)
    assert [r["loss"] for r in history(resumed)] == [r["loss"] for r in history(whole)]


def test_lora_on_flux_blocks_equals_one_process_and_exports_full_lora(tmp_path, flux_dir):
    # Per-block sharding of a diffusers Flux transformer with peft LoRA: the frozen base stays out of the
    # checkpoint, the exported LoRA holds full (gathered) tensors, clipping runs over the LoRA weights only.
    # rollout_path=plain: FSDP always rolls out plain, and one process would otherwise take the merged-LoRA path,
    # equal only up to rounding (tests/test_fast_rollout.py), which Adam's first steps amplify.
    model = {"adapter": "flux", "path": str(flux_dir), "height": 32, "width": 32, "num_steps": 2, "lora_rank": 4,
             "lora_alpha": 4.0, "rollout_path": "plain"}
    common = dict(iterations=2, model=model, optim__max_grad_norm=1e-3, save_every=2)
    single = train(toy_config(tmp_path / "single", batch_size=4, **common), progress=False)
    run = launch(toy_config(tmp_path / "fsdp", batch_size=2, **common), tmp_path,
                 wrap="FluxTransformerBlock,FluxSingleTransformerBlock")

    weights, ema = final(run)
    assert weights and all("lora_" in k for k in weights)
    # Adam's first steps are nearly sign(g): float reduction-order noise in near-zero LoRA-B gradients moves a few
    # elements by ~1e-6 at lr 1e-2 (measured 3.9e-6 at most); a shard-local clip or a missing shard moves ~1e-2.
    tol = dict(rtol=1e-5, atol=1e-5)
    assert_same(weights, load_file(str(single.weights)), **tol)
    assert_same(ema, load_file(str(single.ema_weights)), **tol)
    lora = load_file(str(run / "final" / "lora" / "pytorch_lora_weights.safetensors"))
    single_lora = load_file(str(single.output_dir / "final" / "lora" / "pytorch_lora_weights.safetensors"))
    assert_same(lora, single_lora, **tol)
    keys = FileSystemReader(str(run / "checkpoints" / "step_0000002" / "sharded")).read_metadata().state_dict_metadata
    assert {k.removeprefix("model.") for k in keys if k.startswith("model.")} == set(weights)


def test_independent_processes_stop_before_writing(tmp_path):
    # torchrun on a CPU without ACCELERATE_USE_CPU: accelerate gives each process its own single-process run. They
    # used to race on one output_dir; now each stops with one line and nothing is written.
    cfg = toy_config(tmp_path / "race", iterations=2)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "leapalign.cli", "train", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # each child's one line (torchrun then reports the failed children with its own traceback)
    assert proc.stderr.count("leapalign train: error: this process was launched as one of 2") == 2
    assert "leapalign/trainer.py" not in proc.stderr
    assert not Path(cfg.output_dir).exists()


@pytest.mark.parametrize("env,processes,kind,version,message", [
    ({"WORLD_SIZE": "2"}, 1, "NO", None, "single-process run"),
    ({"ACCELERATE_USE_FSDP": "true"}, 2, "MULTI_CPU", None, "would train unsharded"),
    ({}, 2, "FSDP", 1, "set fsdp_version: 2"),
])
def test_launch_mismatch_is_one_line(monkeypatch, env, processes, kind, version, message):
    from leapalign.sharding import check_launch

    for key in ("WORLD_SIZE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        check_launch(processes, kind, version)
    check_launch(2, "FSDP", 2)  # what the FSDP configs set up


def test_shapesworld_dit_blocks_equal_one_process(tmp_path):
    # The ShapesWorld model sharded per DiT block (configs/accelerate/fsdp_shapes.yaml), full fine-tuning with
    # classifier-free guidance and its composition reward: the path gpu_smoke.sh runs on one GPU. Adam's first
    # steps are ~lr * sign(g): float noise from the batch layout in near-zero gradients moves a few hundred of the
    # 1.56 M weights by up to ~0.6 lr, for DDP as much as for FSDP (measured: DDP vs one process 5.6e-5 on 382
    # elements at lr 1e-4; FSDP vs DDP 1.3e-5 on 108). A lost, stale or misplaced shard moves whole tensors.
    lr = 1e-5
    model = {"adapter": "shapes", "height": 32, "width": 32, "num_steps": 4, "guidance_scale": 3.0}
    common = dict(iterations=2, model=model, reward__name="shapes-compose", data__prompts="shapes:train",
                  optim__lr=lr, optim__max_grad_norm=1.0)
    single = train(toy_config(tmp_path / "single", batch_size=2, **common), progress=False)
    run = launch(toy_config(tmp_path / "fsdp", batch_size=1, **common), tmp_path, wrap="DiTBlock")
    for a, b in zip(final(run), final(single.output_dir)):
        assert set(a) == set(b) and len(a) == 84
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < lr
        moved = sum(int((~torch.isclose(a[k], b[k], rtol=1e-5, atol=1e-6)).sum()) for k in a)
        assert moved < 1e-3 * sum(t.numel() for t in a.values())
        assert not torch.equal(a["blocks.0.qkv.weight"], single_initial()["blocks.0.qkv.weight"])  # it trained


def single_initial() -> dict:
    from leapalign.adapters.shapes import ShapesAdapter

    return {n: p.detach() for n, p in ShapesAdapter.from_pretrained().transformer.named_parameters()}

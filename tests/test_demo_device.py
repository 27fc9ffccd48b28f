"""`leapalign demo device=...` and `--paper` on a CPU-only machine: the setting is checked with one line, a GPU
asked for where there is none is refused before anything runs, every job carries the device, training is pinned
to it through accelerate, and the paper preset holds Table 2's budget."""

import os

import pytest
import torch

from leapalign.cli import main
from leapalign.config import parse_overrides
from leapalign.demo.parallel import accelerate_device
from leapalign.demo.run import PAPER, QUICK, Demo, DemoConfig, check_device


@pytest.mark.parametrize("bad, says", [("device=tpu", "device must be cpu, cuda or cuda:N, got 'tpu'"),
                                       ("device=gpu0", "device must be cpu, cuda or cuda:N"),
                                       ("device=cuda", "asked for a GPU but this machine has"),
                                       ("device=cuda:1", "asked for a GPU but this machine has")])
def test_bad_or_absent_device_is_one_line_before_anything_is_written(tmp_path, capsys, bad, says):
    if torch.cuda.is_available() and "cuda" in bad and torch.cuda.device_count() > 1:
        pytest.skip("this machine has the GPU asked for")
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leapalign demo: error:") and says in err and "\n" not in err
    assert not (tmp_path / "d").exists()


def test_device_defaults_to_cpu_and_reaches_every_job(tmp_path):
    cfg = parse_overrides(DemoConfig, [], QUICK)
    assert cfg.device == "cpu" and check_device("cpu") == "cpu"
    assert parse_overrides(DemoConfig, ["device=cpu"]).device == "cpu"
    demo = Demo(cfg, tmp_path, pool=None, ablation=False)
    jobs = [demo.job(e, 0, 1e-5, 2, demo.held, 0) for e in demo.entries] + [demo.job(None, 0, 0.0, 0, demo.val, 0)]
    assert {j.device for j in jobs} == {"cpu"}
    # precision=auto keeps today's CPU rule on the CPU (native bf16 dot products or not)
    assert cfg.resolved_precision() == DemoConfig(precision="auto").resolved_precision()


def test_accelerate_trains_on_the_jobs_device_and_the_environment_is_restored(monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    with accelerate_device("cpu"):
        assert os.environ["ACCELERATE_TORCH_DEVICE"] == "cpu"
        assert Accelerator().device == torch.device("cpu")
        AcceleratorState._reset_state(True)
    assert "ACCELERATE_TORCH_DEVICE" not in os.environ
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cuda:3")
    with accelerate_device("cpu"):
        assert os.environ["ACCELERATE_TORCH_DEVICE"] == "cpu"
    assert os.environ["ACCELERATE_TORCH_DEVICE"] == "cuda:3"


def test_paper_preset_is_table_2s_budget(tmp_path, capsys):
    cfg = parse_overrides(DemoConfig, ["workers=2"], PAPER)
    assert (cfg.iterations, cfg.batch_size, cfg.tune_iterations) == (300, 64, 100)
    assert cfg.iterations * cfg.batch_size == 300 * 64  # rollouts per run, as the paper's 300 x global batch 64
    assert cfg.seeds == [0, 1, 2] and cfg.num_steps == DemoConfig().num_steps  # the rest is the default protocol
    assert main(["demo", "--quick", "--paper", "--out", str(tmp_path / "d")]) == 2
    assert "choose one" in capsys.readouterr().err

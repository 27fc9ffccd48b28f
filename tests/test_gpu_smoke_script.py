"""scripts/gpu_smoke.sh on the CPU: valid bash, one line per documented check, it goes on after a failed check and
exits non-zero; a real check (one training run on the CPU) passes."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"
METHODS = ["leapalign", "refl", "draft", "draft_lv", "drtune", "full", "flow_grpo", "mix_grpo"]
OTHERS = ["eval", "generate", "demo_quick", "flux_tiny", "sd3_tiny", "fsdp_world1", "bench_flux", "eval_fsdp"]
CHECKS = [f"train_{m}_{p}" for m in METHODS for p in ("fp32", "bf16")] + OTHERS


def _smoke(tmp_path, **env):
    full = {**os.environ, "SMOKE_DEVICE": "cpu", "SMOKE_OUT": str(tmp_path / "smoke"), **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=600)


def _lines(stdout: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|FAIL|SKIP) (\S+) \d+\.\d$", stdout, re.M)}


def test_the_script_is_valid_bash_and_documents_every_check():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    for name in ("train_<method>_<fp32|bf16>", *OTHERS):
        assert name in header, name


def test_every_check_prints_one_line(tmp_path):
    res = _smoke(tmp_path, SMOKE_ONLY="^$")  # matches no name: every check is skipped
    assert res.returncode == 0, res.stderr
    assert _lines(res.stdout) == {name: "SKIP" for name in CHECKS}
    assert f"0 passed, 0 failed, {len(CHECKS)} skipped" in res.stdout


@pytest.mark.slow
def test_a_failed_check_does_not_stop_the_run_and_the_exit_code_says_so(tmp_path):
    res = _smoke(tmp_path, SMOKE_ONLY="^train_", SMOKE_METHODS="nosuch leapalign", SMOKE_PRECISIONS="fp32")
    assert res.returncode == 1
    lines = _lines(res.stdout)
    assert lines["train_nosuch_fp32"] == "FAIL" and lines["train_leapalign_fp32"] == "PASS"
    assert "config file not found: configs/shapes_nosuch.yaml" in res.stdout  # the end of the failed check's log
    assert all(lines[name] == "SKIP" for name in OTHERS)
    assert (tmp_path / "smoke" / "train_leapalign_fp32" / "final" / "weights.safetensors").is_file()

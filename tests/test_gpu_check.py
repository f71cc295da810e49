"""benchmarks/gpu_check.py: its --smoke run goes through every part on a CPU and prints and records each one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_every_part_and_records_only_where_told(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    out = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
                        "--threads", "1", "--results", str(out)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = {line.split(":", 1)[0]: line for line in r.stdout.splitlines() if ":" in line}
    assert lines["gpu_check"].startswith("gpu_check: cpu (CPU), torch ")
    assert "TFLOP/s" in lines["ceiling"]
    assert " tok/s, " in lines["pretrain"] and " ms/step, " in lines["pretrain"] and "MFU n/a" in lines["pretrain"]
    assert "tokens/s trained on" in lines["ppo"] and "rollout " in lines["ppo"] and "training " in lines["ppo"]
    assert "s in all (corpus " in lines["quickstart"] and "ppo_rlhf_seed0" in lines["quickstart"]
    assert lines["total"].startswith("total: ") and "FAILED" not in r.stdout
    assert f"recorded in {out}" in r.stdout

    text = out.read_text()
    assert "## gpu_check_smoke" in text and "| pretrain tokens/s |" in text and "| PPO tokens trained on /s |" in text
    assert "| quickstart: pretrain |" in text
    assert (results.read_bytes() if results.exists() else None) == before  # the real results file is untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_a_missing_gpu_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cuda", "--no-record"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "no CUDA GPU is visible; pass --device cpu" in r.stderr

"""Every example script runs end to end as a subprocess with tiny settings (cleanrl style)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_from_script(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "pretrain_from_script.py"), "--out", str(tmp_path),
                        "--docs", "300", "--steps", "30", "--n-layer", "2", "--n-embd", "64"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("[gold sentiment")]
    assert len(lines) == 3 and "The pasta was" in lines[0]
    assert (tmp_path / "base" / "model.safetensors").is_file()


def test_sft_from_script(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(f'{{"prompt": "Say {w}.", "response": "{w}"}}\n' for w in ["yes", "no", "maybe", "ok"] * 10))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "sft_from_script.py"), "--out", str(tmp_path / "run"),
                        "--data", str(data), "--pretrain-steps", "10", "--sft-steps", "10", "--block-size", "32",
                        "--n-layer", "2", "--n-embd", "64"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held-out loss:" in r.stdout and r.stdout.count("PROMPT: Say") == 2
    assert (tmp_path / "run" / "sft" / "config.json").is_file()


def test_train_ppo_from_script(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "train_ppo_from_script.py"), "--tiny", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    figures = {line.split(":")[0]: float(line.split("gold ")[1].split(" ")[0]) for line in r.stdout.splitlines()
               if line.startswith(("before:", "after:"))}
    assert figures["after"] > figures["before"]  # the lowercase-letter reward rises (seeded)
    assert "sample @ " in r.stderr and (tmp_path / "ppo" / "ppo_state.zip").is_file()
    assert json.loads((tmp_path / "ppo" / "config.json").read_text())["stage"] == "ppo"

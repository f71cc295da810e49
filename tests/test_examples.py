"""Every example script runs end to end as a subprocess with tiny settings (cleanrl style)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"


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
    assert "sample @ " in r.stderr and (tmp_path / "ppo" / "ppo_resume.pt").is_file()
    assert json.loads((tmp_path / "ppo" / "config.json").read_text())["stage"] == "ppo"


def _table(stdout: str) -> dict[str, tuple[float, float]]:
    """The before/after rows of ppo_imdb.py's figures table: label -> (before, after)."""
    rows = {}
    for line in stdout.splitlines():
        values = line[32:].split()  # the label takes 32 characters, then two right-aligned numbers
        try:
            rows[line[:32].strip()] = (float(values[0]), float(values[1])) if len(values) == 2 else None
        except ValueError:
            continue
    return {k: v for k, v in rows.items() if v is not None}


def test_ppo_imdb_tiny(tmp_path):
    if not all((IMDB / f"imdb_{split}.jsonl.gz").is_file() for split in ("train", "test")):
        pytest.skip(f"{IMDB}: no IMDB data beside the repo")
    cmd = [sys.executable, str(ROOT / "examples" / "ppo_imdb.py"), "--tiny", "--out", str(tmp_path), "--data-dir",
           str(IMDB)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    table = _table(r.stdout)
    assert set(table) >= {"gold positive rate (P > 0.5)", "mean gold logit", "KL to reference (nats)",
                          "reference perplexity"}
    assert all(0.0 <= v <= 1.0 for v in table["gold positive rate (P > 0.5)"])
    assert abs(table["KL to reference (nats)"][0]) < 1e-3  # before training the policy is its reference
    assert "gold classifier: accuracy" in r.stdout and "stage wall times:" in r.stdout
    # the gold judge learnt from TEST labels (BCE), the reward model from TRAIN pairs
    gold, rm = (json.loads((tmp_path / d / "config.json").read_text())["reward"] for d in ("gold", "rm"))
    assert (gold["kind"], gold["loss"], rm["kind"], rm["loss"]) == ("labels", "bce", "pairs", "bt")
    report = json.loads((tmp_path / "grpo" / "ppo_report.json").read_text())
    assert report["env_id"] == "rlfl/ImdbPositive-v0" and report["timesteps"] >= report["total_timesteps"]

    # a second run reuses every stage and draws the same evaluation completions
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in ("data", "tokenizer", "base", "rm", "gold"):
        assert f"[{stage}] cached" in again.stdout
    assert _table(again.stdout) == table


def test_bench_grpo_arithmetic_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_grpo_arithmetic.py"), "--smoke", "--out",
                        str(tmp_path / "run"), "--threads", "1"], check=False, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SFT policy: exact match" in r.stdout and "after GRPO: exact match" in r.stdout
    assert (tmp_path / "run" / "grpo" / "eval.csv").is_file() and (tmp_path / "run" / "sft" / "config.json").is_file()


def test_bench_lora_smoke_prints_both_modes_and_lora_holds_fewer_parameters():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_lora.py"), "--smoke", "--threads", "1"],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["full"], ["lora"])}
    held = {mode: int(row[2].replace(",", "")) for mode, row in rows.items()}
    assert "llama" in r.stdout and held["lora"] < 0.6 * held["full"]  # no reference copy, frozen base only

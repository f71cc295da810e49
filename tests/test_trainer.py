"""The shared training loop: schedule, optimizer groups, learning, exact SIGKILL resume, DDP, NaN stop."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlfl.model import GPT, GPTConfig
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig, Trainer, lr_at, make_optimizer

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "32", "--batch-size", "4",
        "--sample-tokens", "0", "--no-progress", "--num-threads", "1"]


def _rlfl(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlfl", *args], capture_output=True, text=True, **kw)


def _last(metrics_csv: Path, name: str) -> float:
    with open(metrics_csv) as fh:
        rows = [r for r in csv.DictReader(fh) if r["name"] == name]
    return float(rows[-1]["value"])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def test_no_weight_decay_on_norms_biases_embeddings():
    model = GPT(GPTConfig(vocab_size=262, block_size=16, n_layer=2, n_head=2, n_embd=64))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(names[i].endswith("weight") and "ln" not in names[i] and "wte" not in names[i] and "wpe" not in names[i]
               for i in decayed)
    assert any("c_fc" in names[i] for i in decayed)
    assert len(decayed) + len(opt.param_groups[1]["params"]) == len(list(model.parameters()))


def test_nan_loss_stops_with_message(tmp_path):
    model = GPT(GPTConfig(vocab_size=262, block_size=8, n_layer=1, n_head=2, n_embd=32))
    x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))

    def loss_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten()) * float("nan")

    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=5, log_interval=1, warmup_steps=1, progress=False)
    trainer = Trainer(model, cfg, stage="demo", tokenizer=byte_tokenizer(), batch_fn=lambda s, m: (x[:, :-1], x[:, 1:]),
                      loss_fn=loss_fn, tokens_per_batch=16)
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 1; lower --lr"):
        trainer.fit()


def test_pretrain_learns_and_writes_checkpoint(synthetic_shards, tmp_path):
    out = tmp_path / "base"
    r = _rlfl("pretrain", "--data", str(synthetic_shards), "--out-dir", str(out), "--max-steps", "200",
              "--eval-interval", "200", "--log-interval", "20", "--warmup-steps", "10", "--lr", "2e-3", *TINY,
              "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    with open(out / "metrics.csv") as fh:
        losses = [float(row["value"]) for row in csv.DictReader(fh) if row["name"] == "train/loss"]
    # byte-level: uniform is ln(262) = 5.6 nats; below ~2.7 the model has learned word-level structure
    assert losses[0] > 3.0 and losses[-1] < 2.7, losses
    assert _last(out / "metrics.csv", "val/bpb") < 4.0
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "pretrain" and config["step"] == 200 and config["tokenizer"]["kind"] == "bytes"
    assert {"model.safetensors", "tokenizer.json", "trainer_state.pt"} <= {p.name for p in out.iterdir()}
    sample = _rlfl("sample", str(out), "--prompt", "The food", "--max-new-tokens", "20", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("--- sample 1 ---\nThe food")
    assert len(sample.stdout.split("The food", 1)[1].strip()) > 0  # something was generated


def test_sigkill_resume_matches_uninterrupted_run(synthetic_shards, tmp_path):
    common = ["pretrain", "--data", str(synthetic_shards), "--max-steps", "300", "--checkpoint-interval", "20",
              "--eval-interval", "100", "--log-interval", "10", "--dropout", "0.1", *TINY]
    ref = tmp_path / "ref"
    assert _rlfl(*common, "--out-dir", str(ref)).returncode == 0

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlfl", *common, "--out-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads((run / "config.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 60:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert json.loads((run / "config.json").read_text())["step"] < 300

    resumed = _rlfl(*common, "--out-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed pretrain" in resumed.stderr
    for name in ("train/loss", "val/loss"):
        assert abs(_last(run / "metrics.csv", name) - _last(ref / "metrics.csv", name)) < 1e-5, name
    # the log reads as one run: every step logged once
    with open(run / "metrics.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["name"] == "train/loss"]
    assert steps == list(range(10, 301, 10))


def test_torchrun_two_processes_on_cpu(synthetic_shards, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rlfl",
           "pretrain", "--data", str(synthetic_shards), "--out-dir", str(out), "--max-steps", "40",
           "--eval-interval", "40", "--log-interval", "10", "--warmup-steps", "5", "--lr", "2e-3", *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "metrics.csv") as fh:
        losses = [float(row["value"]) for row in csv.DictReader(fh) if row["name"] == "train/loss"]
    assert losses[-1] < losses[0]
    assert math.isfinite(_last(out / "metrics.csv", "val/loss"))
    # 2 processes x 4 sequences x 32 tokens per step: tokens/s counts both ranks' tokens
    assert json.loads((out / "config.json").read_text())["step"] == 40
    assert r.stderr.count("eval @ step 40") == 1  # only rank 0 logs


@pytest.mark.parametrize("left_behind", [
    "",                                                        # killed before the header reached the disk
    "step,time,name,value\n5,1.0,train/loss,2.5\n7,1.1,trai",  # killed in the middle of a row
])
def test_resume_reads_a_metrics_csv_a_kill_left_behind(synthetic_shards, tmp_path, left_behind):
    common = ["pretrain", "--data", str(synthetic_shards), "--out-dir", str(tmp_path / "run"), "--checkpoint-interval",
              "5", "--log-interval", "1000", "--eval-interval", "0", *TINY]
    assert _rlfl(*common, "--max-steps", "5").returncode == 0
    (tmp_path / "run" / "metrics.csv").write_text(left_behind)  # what a SIGKILL after the checkpoint can leave
    resumed = _rlfl(*common, "--max-steps", "10")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed pretrain" in resumed.stderr
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "time", "name", "value"]
    assert all(len(r) == 4 and int(r[0]) <= 10 for r in rows[1:])  # the half-written row is gone
    # the rows before the checkpoint that survived the kill, then the resumed run's (its last step always logs)
    assert [r[0] for r in rows[1:] if r[2] == "train/loss"] == (["5", "10"] if left_behind else ["10"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 10


def test_max_steps_below_the_checkpoint_is_refused_not_ignored(synthetic_shards, tmp_path):
    common = ["pretrain", "--data", str(synthetic_shards), "--out-dir", str(tmp_path / "run"), "--eval-interval", "0",
              *TINY]
    assert _rlfl(*common, "--max-steps", "10").returncode == 0
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    r = _rlfl(*common, "--max-steps", "5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "holds a checkpoint at step 10, past --max-steps 5; pass --max-steps 10 or more" in r.stderr
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before  # nothing written

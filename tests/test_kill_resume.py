"""A SIGKILL at any moment loses nothing: the same command run again finishes with what an uninterrupted run has.

For each stage (pretrain, sft, reward train, ppo, data prepare, the label server) a reference run goes
uninterrupted; then the same command is started, killed with SIGKILL at a moment drawn from a seeded
generator over the reference's duration (or at a named moment: before the first log line, during a
checkpoint write), and run again to the end. The supervised stages and data prepare are deterministic, so
their outputs must be bit-identical to the reference's; PPO reseeds a resumed run on purpose (a resume does
not replay the samples it already trained on), so there the run must end at the same step with the whole
evaluation history; the label server must hold every label it acknowledged. The default suite runs a few
kill moments per stage; ``-m slow`` runs many.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import printable_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "32", "--batch-size", "4",
        "--sample-tokens", "0", "--no-progress", "--num-threads", "1"]
TRAIN = ["--batch-size", "4", "--eval-interval", "0", "--no-progress", "--num-threads", "1", "--log-interval", "5"]
SEEDS_DEFAULT, SEEDS_SLOW = [0], list(range(1, 9))


def rlfl(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlfl", *args]


def run_to_end(cmd: list[str]) -> float:
    """Run ``cmd`` to completion (it must succeed); returns its wall time."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t


def kill_after(cmd: list[str], seconds: float) -> bool:
    """Start ``cmd``, SIGKILL it after ``seconds``; True if it was still running then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def kill_when(cmd: list[str], ready, timeout: float = 120) -> bool:
    """Start ``cmd``, SIGKILL it the moment ``ready()`` is true (polled every 0.2 ms); True if it was caught."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0002)
    proc.wait()
    return False


def same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), f"{k} differs from the uninterrupted run's"


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, synthetic_shards) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kill")
    sft = root / "sft.jsonl"
    sft.write_text("".join(f'{{"prompt": "Say something about dish {i}.", "response": "Dish {i} was fine."}}\n'
                           for i in range(64)))
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(f'{{"prompt": "Review {i}:", "chosen": " great food {i}", "rejected": " awful {i}"}}\n'
                             for i in range(64)))
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 30
                                  for i in range(6000)))
    return {"root": root, "shards": synthetic_shards, "ckpt": printable_checkpoint(root / "ckpt", block_size=64),
            "sft": sft, "pairs": pairs, "corpus": corpus}


STAGES = {
    "pretrain": lambda i: ["pretrain", "--data", str(i["shards"]), "--max-steps", "60", "--checkpoint-interval", "3",
                           "--eval-interval", "20", "--log-interval", "5", "--dropout", "0.1", *TINY],
    "sft": lambda i: ["sft", "--init-from", str(i["ckpt"]), "--data", str(i["sft"]), "--max-steps", "40",
                      "--checkpoint-interval", "3", *TRAIN],
    "reward": lambda i: ["reward", "train", "--init-from", str(i["ckpt"]), "--data", str(i["pairs"]), "--max-steps",
                         "40", "--checkpoint-interval", "3", "--stats-samples", "16", *TRAIN],
}
REFERENCE: dict[str, tuple[Path, float]] = {}


def reference(stage: str, inputs: dict[str, Path]) -> tuple[Path, float]:
    """The uninterrupted run of ``stage`` (run once per module) and its wall time."""
    if stage not in REFERENCE:
        out = inputs["root"] / f"ref-{stage}"
        REFERENCE[stage] = (out, run_to_end(rlfl(*STAGES[stage](inputs), "--out-dir", str(out))))
    return REFERENCE[stage]


def resumed_equals_reference(stage: str, inputs: dict[str, Path], out: Path) -> None:
    ref, _ = reference(stage, inputs)
    run_to_end(rlfl(*STAGES[stage](inputs), "--out-dir", str(out)))
    same_weights(out, ref)
    assert json.loads((out / "config.json").read_text())["step"] == json.loads((ref / "config.json").read_text())["step"]


# ---------------------------------------------------------------------------------------------- supervised stages
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_killed_before_the_first_log_line(stage, inputs, tmp_path):
    out = tmp_path / "run"
    assert kill_after(rlfl(*STAGES[stage](inputs), "--out-dir", str(out)), 0.3)  # still importing torch
    resumed_equals_reference(stage, inputs, out)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_killed_during_a_checkpoint_write(stage, inputs, tmp_path):
    out = tmp_path / "run"
    caught = kill_when(rlfl(*STAGES[stage](inputs), "--out-dir", str(out)), lambda: (out / ".staging").exists())
    assert caught, "no checkpoint write was caught in flight"
    resumed_equals_reference(stage, inputs, out)


def _killed_at_random(stage: str, seed: int, inputs: dict[str, Path], tmp_path: Path) -> None:
    _, seconds = reference(stage, inputs)
    out = tmp_path / "run"
    kill_after(rlfl(*STAGES[stage](inputs), "--out-dir", str(out)), random.Random(seed).uniform(0.5, seconds))
    resumed_equals_reference(stage, inputs, out)


@pytest.mark.parametrize("seed", SEEDS_DEFAULT)
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_killed_at_a_seeded_moment(stage, seed, inputs, tmp_path):
    _killed_at_random(stage, seed, inputs, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS_SLOW)
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_killed_at_many_seeded_moments(stage, seed, inputs, tmp_path):
    _killed_at_random(stage, seed, inputs, tmp_path)


# ---------------------------------------------------------------------------------------------- data prepare
@pytest.mark.parametrize("seed", [0, *[pytest.param(s, marks=pytest.mark.slow) for s in SEEDS_SLOW]])
def test_data_prepare_killed_then_rerun_writes_the_same_shards(inputs, tmp_path, seed):
    cmd = ["data", "prepare", "--input", str(inputs["corpus"])]
    ref = inputs["root"] / "ref-shards"
    if not ref.exists():
        run_to_end(rlfl(*cmd, "--out", str(ref)))
    out = tmp_path / "shards"
    kill_after(rlfl(*cmd, "--out", str(out)), random.Random(seed).uniform(0.3, 3.0))
    run_to_end(rlfl(*cmd, "--out", str(out)))
    assert tree(out) == tree(ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no temp folder left


# ---------------------------------------------------------------------------------------------- ppo
@pytest.mark.parametrize("seed", [0, *[pytest.param(s, marks=pytest.mark.slow) for s in SEEDS_SLOW[:3]]])
def test_ppo_killed_at_a_seeded_moment_finishes_with_its_whole_history(inputs, tmp_path, seed):
    out = tmp_path / "ppo"
    cmd = rlfl("ppo", "--init-from", str(inputs["ckpt"]), "--out-dir", str(out), "--total-timesteps", "8192",
               "--checkpoint-every", "256", "--eval-every", "1024", "--eval-prompts", "4", "--sample-every", "0",
               "--n-envs", "8", "--n-steps", "8", "--batch-size", "64", "--n-epochs", "1", "--max-new-tokens", "8",
               "--max-prompt-tokens", "16", "--num-threads", "1", "--no-progress")
    assert kill_after(cmd, random.Random(seed).uniform(2.5, 5.0)), "the run ended before the kill"
    run_to_end(cmd)
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["timesteps"] == 8192 and report["start"]["timesteps"] == 0 and report["end"]["timesteps"] == 8192
    rows = [int(line.split(",")[0]) for line in (out / "eval.csv").read_text().splitlines()[1:]]
    assert rows == list(range(0, 8193, 1024))  # every evaluation once, across the kill
    assert json.loads((out / "config.json").read_text())["step"] == 8192
    run_to_end(cmd)  # a finished run run again: nothing to do, and its report stays
    assert json.loads((out / "ppo_report.json").read_text()) == report


# ---------------------------------------------------------------------------------------------- label server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("seed", [0, *[pytest.param(s, marks=pytest.mark.slow) for s in SEEDS_SLOW[:3]]])
def test_label_server_killed_at_a_seeded_moment_keeps_every_acknowledged_label(inputs, tmp_path, seed):
    from rlfl.feedback.store import LabelStore

    items = tmp_path / "items.jsonl"
    items.write_text("".join(f'{{"prompt": "p{i}", "response_a": "a{i}", "response_b": "b{i}"}}\n' for i in range(400)))
    store, port = tmp_path / "labels.db", free_port()
    proc = subprocess.Popen(rlfl("label", "serve", "--store", str(store), "--import-jsonl", str(items), "--port",
                                 str(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    page = None
    while page is None and time.monotonic() < deadline:
        try:
            page = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            time.sleep(0.05)
    assert page is not None
    token = page.split('name="rlfl-token" content="', 1)[1].split('"', 1)[0]

    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-RLFL-Token": token})
        return json.loads(urllib.request.urlopen(req, timeout=5).read())

    acknowledged: list[int] = []
    kill_at = time.monotonic() + random.Random(seed).uniform(0.2, 1.5)
    state = post("/api/next", {"annotator": "ann"})["state"]
    try:
        while state["item"] is not None and time.monotonic() < kill_at:
            answer = post("/api/label", {"annotator": "ann", "item_id": state["item"]["id"], "side": "left"})
            acknowledged.append(answer["label"]["id"])
            state = answer["state"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acknowledged, "no label was acknowledged before the kill"
    with LabelStore(store, create=False) as db:  # reopens cleanly: the WAL is replayed
        kept = {label.id for label in db.labels()}
        assert set(acknowledged) <= kept and len(db.items()) == 400

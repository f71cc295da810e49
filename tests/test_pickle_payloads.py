"""Nothing rlfl reads from disk runs code: every file a resumed run reads is replaced by a pickle payload.

The payload is an object whose unpickling opens (creates) a marker file. Each file of a pretrain checkpoint
and of a PPO run's out-dir is swapped for it (as a raw pickle and as a ``torch.save`` file), the same command
is rerun, and the marker must not exist afterwards. The run may refuse the file (exit 2, one line naming it)
or rebuild it, but it never unpickles it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from rlfl.cli import main

TINY_PRETRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
                 "--eval-interval", "0", "--log-interval", "1", "--sample-tokens", "0", "--num-threads", "1",
                 "--no-progress", "--seed", "0"]
TINY_PPO = ["--n-envs", "4", "--n-steps", "8", "--batch-size", "32", "--n-epochs", "1", "--max-new-tokens", "8",
            "--max-prompt-tokens", "16", "--eval-prompts", "0", "--sample-every", "0", "--num-threads", "1",
            "--no-progress", "--checkpoint-every", "32"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appearing means code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payloads(marker: Path) -> dict[str, bytes]:
    """The same payload as a plain pickle and as a torch.save file."""
    buffer = io.BytesIO()
    torch.save({"step": 1, "x": Payload(marker)}, buffer)
    return {"pickle": pickle.dumps(Payload(marker), protocol=2), "torch": buffer.getvalue()}


def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def rerun_with_each_file_poisoned(out: Path, tmp_path: Path, argv, capsys) -> None:
    """For every file of ``out``, a copy of ``out`` with that file made a payload (both kinds), and the command
    ``argv(run_dir)`` rerun on it: it refuses the file (exit 2, one line naming it) or rebuilds it, and no
    payload runs."""
    marker = tmp_path / "PWNED"
    for name in sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")):
        for kind, data in payloads(marker).items():
            run_dir = tmp_path / f"{name}-{kind}"
            shutil.copytree(out, run_dir)
            (run_dir / name).write_bytes(data)
            code, err = run(argv(run_dir), capsys)
            assert not marker.exists(), f"unpickling {name} ran code"
            assert "Traceback" not in err
            if code:
                last = err.strip().splitlines()[-1]
                assert code == 2 and last.startswith("rlfl: error:") and name in last, (name, err[-600:])


def test_pretrain_resume_reads_no_pickle(synthetic_shards, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(["pretrain", "--data", str(synthetic_shards), "--out-dir", str(out), "--max-steps", "4",
                     "--checkpoint-interval", "2", *TINY_PRETRAIN], capsys)
    assert code == 0, err[-2000:]
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt", "metrics.csv"} <= files
    rerun_with_each_file_poisoned(out, tmp_path, lambda d: [
        "pretrain", "--data", str(synthetic_shards), "--out-dir", str(d), "--max-steps", "6", "--checkpoint-interval",
        "2", *TINY_PRETRAIN], capsys)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny policy and a finished 32-token PPO run on it."""
    from conftest import printable_checkpoint

    root = tmp_path_factory.mktemp("ppo")
    policy = printable_checkpoint(root / "policy", block_size=32)
    out = root / "run"
    assert main(["ppo", "--init-from", str(policy), "--out-dir", str(out), "--total-timesteps", "32",
                 *TINY_PPO]) == 0
    return policy, out


def test_ppo_resume_reads_no_pickle(ppo_run, tmp_path, capsys):
    policy, out = ppo_run
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"ppo_resume.pt", "model.safetensors", "config.json", "ppo_config.json", "ppo_sb3.zip"} <= files
    rerun_with_each_file_poisoned(out, tmp_path, lambda d: [
        "ppo", "--init-from", str(policy), "--out-dir", str(d), "--total-timesteps", "64", *TINY_PPO], capsys)
    # the Python entry point refuses it the same way
    from rlfl.agents import PPO

    marker = tmp_path / "PWNED"

    (tmp_path / "state.pt").write_bytes(payloads(marker)["torch"])
    with pytest.raises(ValueError, match=r"state\.pt: not a readable PPO resume state"):
        PPO.from_resume_state(tmp_path / "state.pt", None)
    assert not marker.exists()


def test_an_sb3_zip_in_the_out_dir_is_never_loaded(ppo_run, tmp_path, capsys):
    """SB3's PPO.load unpickles the zip's ``data`` entries: a run whose out-dir holds one is refused unread."""
    policy, _ = ppo_run
    marker = tmp_path / "PWNED"
    entry = {":type:": "<class 'function'>", ":serialized:": base64.b64encode(pickle.dumps(Payload(marker))).decode()}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with zipfile.ZipFile(run_dir / "ppo_state.zip", "w") as zf:
        zf.writestr("data", json.dumps({"policy_class": entry, "learning_rate": 1e-3, "num_timesteps": 32}))
    code, err = run(["ppo", "--init-from", str(policy), "--out-dir", str(run_dir), "--total-timesteps", "64",
                     *TINY_PPO], capsys)
    assert not marker.exists() and code == 2 and "Traceback" not in err
    assert "ppo_state.zip: runs no longer resume from SB3 zips" in err.strip().splitlines()[-1]
    # what SB3 itself would have done with it: the payload runs (why rlfl never calls PPO.load on a resume)
    from stable_baselines3.common.save_util import load_from_zip_file

    with contextlib.suppress(Exception):  # whether or not it fails afterwards, the payload has run by then
        load_from_zip_file(run_dir / "ppo_state.zip")
    assert marker.exists()

"""rlfl.agents.train and rlfl.agents.callbacks: `rlfl ppo` end to end, gold evaluation by hand, SIGKILL resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rlfl.envs
import torch
import torch.nn.functional as F
from rlfl.agents import PPO
from rlfl.agents.callbacks import GoldEval, SampleLogger, evaluate_policy
from rlfl.agents.train import PPOConfig, split_prompts
from rlfl.agents.vec_env import make_text_vec_env

from conftest import tiny_policy

from rlfl.checkpoint import load_checkpoint
from rlfl.cli import main
from rlfl.generate import SamplingConfig, generate
from rlfl.model import GPT

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The film was", "Dinner was", "I think", "Our hotel room", "My dog", "The service"]
STOPS = list(range(96, 128))  # a quarter of the printable bytes end a completion: lengths vary


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> str:
    return tiny_policy(tmp_path_factory.mktemp("policy"), block_size=64)


# tiny and fast: SyntheticReviews with 8-token completions, 8 rows, one epoch over 64-token rollouts
TINY = ["--max-new-tokens", "8", "--n-prompts", "300", "--n-envs", "8", "--n-steps", "8", "--batch-size", "64",
        "--n-epochs", "1", "--learning-rate", "1e-3", "--no-progress"]


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rlfl: error: "), err
    return err


# ---------------------------------------------------------------------------------------------- config
def test_config_validation_names_the_flag_and_the_fix():
    cases = [({"n_envs": 0}, "n_envs=0.*>= 1.*--n-envs"), ({"kl_estimator": "k2"}, "k1 or k3.*--kl-estimator"),
             ({"gamma": 1.5}, r"gamma=1.5.*\[0, 1\].*--gamma"), ({"log_formats": ["wandb"]}, "'wandb'.*--log-formats"),
             ({"reward_clip": 0.0}, "reward_clip.*--reward-clip"), ({"device": "tpu"}, "--device"),
             ({"lr_schedule": "step"}, "constant, linear, cosine.*--lr-schedule"),
             ({"short_penalty": -1.0}, "short_penalty=-1.0.*set --short-tokens.*--short-penalty"),
             ({"short_tokens": -1}, "short_tokens=-1.*--short-tokens"),
             ({"min_new_tokens": -1}, "min_new_tokens=-1.*--min-new-tokens"),
             ({"adaptive_kl": True, "kl_coef": 0.0}, "kl_coef=0.0.*--adaptive-kl.*--kl-coef")]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            PPOConfig(**kwargs)
        assert "\n" not in str(info.value)
    assert PPOConfig(max_new_tokens=8, chat_template=False).env_kwargs() == {"max_new_tokens": 8, "chat_template": False}
    # fixed-length episodes (--stop-tokens with no ids) and min_new_tokens reach the env
    assert PPOConfig(stop_tokens=[], min_new_tokens=4).env_kwargs() == {"stop_tokens": [], "min_new_tokens": 4}


def test_bad_input_fails_before_anything_is_written(policy_dir, tmp_path, capsys):
    out = tmp_path / "out"
    err = _error(capsys, ["ppo", "--init-from", str(tmp_path / "missing"), "--out-dir", str(out)])
    assert "missing" in err and "--init-from" in err
    err = _error(capsys, ["ppo", "--init-from", policy_dir, "--env-id", "rlfl/SyntheticReview-v0", "--out-dir", str(out)])
    assert "did you mean 'rlfl/SyntheticReviews-v0'" in err
    err = _error(capsys, ["ppo", "--init-from", policy_dir, "--reward", str(tmp_path / "rm"), "--out-dir", str(out)])
    assert "rm" in err and "--reward" in err
    (tmp_path / "run.yaml").write_text("n_env: 4\n")
    err = _error(capsys, ["ppo", "--config", str(tmp_path / "run.yaml"), "--init-from", policy_dir])
    assert "unknown config key 'n_env'" in err and "did you mean 'n_envs'" in err
    assert not out.exists()


def test_two_runs_never_write_one_out_dir(policy_dir, tmp_path):
    import fcntl

    from rlfl.agents.train import train_ppo

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".ppo.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in progress holds it
        with pytest.raises(ValueError, match="another rlfl ppo run is writing this directory"):
            train_ppo(PPOConfig(init_from=policy_dir, out_dir=str(out)))
    assert sorted(p.name for p in out.iterdir()) == [".ppo.lock"]


def test_split_prompts_holds_out_a_seeded_disjoint_set():
    texts = [f"prompt {i}" for i in range(40)]
    train, held = split_prompts(texts, None, 8, seed=3)
    assert len(held) == 8 and len(train) == 32 and set(train) | set(held) == set(texts)
    assert split_prompts(texts, None, 8, seed=3) == (train, held)
    none, few = split_prompts(texts[:10], None, 8, seed=3)  # too few to hold out: evaluate on training prompts
    assert none is None and len(few) == 8 and set(few) <= set(texts[:10])


# ---------------------------------------------------------------------------------------------- end to end
def test_rlfl_ppo_end_to_end_then_sample_the_output(policy_dir, tmp_path, capsys):
    out = tmp_path / "ppo"
    (tmp_path / "run.yaml").write_text(f"init_from: {policy_dir}\ntotal_timesteps: 4096\neval_prompts: 6\n"
                                       "eval_every: 128\ncheckpoint_every: 128\nsample_every: 2\n")
    capsys.readouterr()
    assert main(["ppo", "--config", str(tmp_path / "run.yaml"), "--total-timesteps", "256", "--out-dir", str(out),
                 *TINY]) == 0
    captured = capsys.readouterr()
    assert f"checkpoint: {out}" in captured.out
    assert "sample @ 128: [" in captured.err and "ppo 256/256 tok | score" in captured.err  # samples, metrics line

    saved = load_checkpoint(out)
    assert saved.config["stage"] == "ppo" and saved.step == 256 and saved.config["parent"] == policy_dir
    assert saved.config["ppo"]["config"]["total_timesteps"] == 256 and "value.proj.weight" in saved.heads
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["timesteps"] == 256 and report["resumed_from"] is None and report["evaluations"] == 3
    assert report["start"]["timesteps"] == 0 and abs(report["start"]["kl"]) < 1e-4  # the start IS the reference
    assert report["end"]["timesteps"] == 256 and report["end"]["n"] == 6
    rows = (out / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("timesteps,gold_mean,gold_positive_rate,kl,perplexity") and len(rows) == 4
    header = (out / "logs" / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"rollout/kl", "rollout/score_mean", "train/value_loss", "eval/gold_mean"} <= set(header)
    again = PPO.from_resume_state(out / "ppo_resume.pt", None)
    assert again.num_timesteps == 256 and (out / "ppo_sb3.zip").is_file()  # and SB3's zip as an export
    torch.testing.assert_close(again.policy.gpt.wte.weight, saved.model.wte.weight)

    assert main(["sample", str(out), "--prompt", "The food was", "--max-new-tokens", "5"]) == 0
    assert "--- sample 1 ---\nThe food was" in capsys.readouterr().out
    # the same command again: nothing left to train, the outputs stay
    assert main(["ppo", "--config", str(tmp_path / "run.yaml"), "--total-timesteps", "256", "--out-dir", str(out),
                 *TINY]) == 0
    assert "already trained to 256 timesteps" in capsys.readouterr().err
    assert load_checkpoint(out).step == 256


# ---------------------------------------------------------------------------------------------- gold eval
def length_judge(prompt: str, completion: str) -> float:
    return float(len(completion))


def token_logprobs(gpt: GPT, prompt: list[int], completion: list[int]) -> np.ndarray:
    """Log-probs of the completion's tokens from one plain forward of the unpadded sequence."""
    with torch.no_grad():
        logits = gpt(torch.tensor([prompt + completion]))[0]
    logp = F.log_softmax(logits.double(), -1)
    return np.array([logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)])


def test_gold_eval_figures_match_a_recomputation_by_hand(policy_dir, tmp_path):
    env_id = "test/EvalLength-v0"
    rlfl.envs.register_reward_env(env_id, reward=length_judge, prompts=PROMPTS, max_new_tokens=8,
                                  max_prompt_tokens=16, stop_tokens=STOPS, overwrite=True)
    reference = tiny_policy(tmp_path / "reference", block_size=64, seed=1)  # a different model: the KL is far from 0
    model = PPO(policy_dir, env_id, n_envs=4, n_steps=8, batch_size=32, learning_rate=1e-3, seed=0,
                policy_kwargs={"reference_checkpoint": reference})
    got = evaluate_policy(model, PROMPTS, length_judge, n_samples=3, seed=7, batch_size=5)

    tok = model.tokenizer
    encoded = [tok.encode(p) for p in PROMPTS for _ in range(3)]
    completions, kls, nll, n_tok, scores, stopped = [], [], 0.0, 0, [], []
    for c, start in enumerate(range(0, len(encoded), 5)):  # the same seeded draws, chunk by chunk
        out = generate(model.policy.gpt, encoded[start:start + 5],
                       SamplingConfig(max_new_tokens=8, stop_tokens=tuple(STOPS), seed=7 + c), pad_id=tok.pad_id)
        completions += out.tokens
        stopped += out.finished
    for prompt, completion, done in zip(encoded, completions, stopped):
        pol, ref = token_logprobs(model.policy.gpt, prompt, completion), token_logprobs(model.policy.reference, prompt, completion)
        kls.append(float((pol - ref).sum()))
        nll -= ref.sum()
        n_tok += len(completion)
        scores.append(len(tok.decode(completion[:-1] if done else completion)))
    assert 0 < sum(stopped) < len(stopped) and 0 in scores  # the case covers stops, run-outs and empty texts
    assert got["n"] == 18 and got["gold_mean"] == pytest.approx(np.mean(scores))
    assert got["gold_positive_rate"] == pytest.approx(np.mean(np.array(scores) > 0))
    assert got["length"] == pytest.approx(n_tok / 18) and got["stop_rate"] == pytest.approx(np.mean(stopped))
    assert got["kl"] == pytest.approx(np.mean(kls), abs=1e-4) and abs(got["kl"]) > 0.1
    assert got["perplexity"] == pytest.approx(np.exp(nll / n_tok), rel=1e-5)
    assert got["samples"][0]["prompt"] == PROMPTS[0] and got["samples"][0]["score"] == scores[0]

    # as a callback: before (the same figures: same weights, same seed), every 64 timesteps, and at the end
    csv_path = tmp_path / "eval.csv"
    gold = GoldEval(PROMPTS, length_judge, every_steps=64, n_samples=3, seed=7, batch_size=5, csv_path=csv_path)
    model.learn(128, callback=[gold, SampleLogger(every_rollouts=1, n=2)])
    assert [row["timesteps"] for row in gold.history] == [0, 64, 128]
    assert gold.history[0]["kl"] == pytest.approx(got["kl"], abs=1e-6)
    assert model.logger.name_to_value["eval/gold_mean"] == gold.history[-1]["gold_mean"]

    # a resumed run drops rows written after its checkpoint (here: a made-up row at 192) and redoes them
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + ["192,999.0,1.0,0.0,1.0,8.0,0.0,0,0.5,0.5,18"]) + "\n")
    resumed = GoldEval(PROMPTS, length_judge, every_steps=64, n_samples=3, seed=7, batch_size=5, csv_path=csv_path)
    model.learn(64, callback=resumed, reset_num_timesteps=False)
    assert [row["timesteps"] for row in resumed.history] == [0, 64, 128, 192]
    assert resumed.history[:3] == gold.history  # read back from the CSV exactly
    assert resumed.history[-1]["gold_mean"] != 999.0 and "999.0" not in csv_path.read_text()


def test_gold_eval_samples_under_the_env_s_min_new_tokens(policy_dir):
    env_id = "test/EvalMinNew-v0"
    rlfl.envs.register_reward_env(env_id, reward=length_judge, prompts=PROMPTS, max_new_tokens=8,
                                  max_prompt_tokens=16, stop_tokens=STOPS, overwrite=True)
    model = PPO(policy_dir, env_id, n_envs=2, n_steps=4, seed=0)
    plain = evaluate_policy(model, PROMPTS, length_judge, n_samples=4, seed=0)
    assert 0.3 < plain["stop_rate"] < 1 and abs(plain["kl"]) < 1e-4  # the policy is still its reference
    for n in (4, 8):
        model = PPO(policy_dir, make_text_vec_env(env_id, 2, min_new_tokens=n), n_steps=4, seed=0)
        got = evaluate_policy(model, PROMPTS, length_judge, n_samples=4, seed=0)
        assert got["length"] >= n + got["stop_rate"]  # every completion has n tokens before any stop token
        assert abs(got["kl"]) < 1e-4  # the reference's log-probs get the same ban: no KL before training
    assert got["stop_rate"] == 0 and got["length"] == 8  # min_new_tokens == max_new_tokens: nothing stops


def test_gold_eval_needs_a_judge(policy_dir):
    env_id = "test/NoGold-v0"
    rlfl.envs.register_reward_env(env_id, reward=length_judge, prompts=PROMPTS, max_new_tokens=8,
                                  max_prompt_tokens=16, overwrite=True)
    model = PPO(policy_dir, env_id, n_envs=2, n_steps=4, seed=0)
    with pytest.raises(ValueError, match="no gold judge; pass judge="):
        evaluate_policy(model, PROMPTS)
    with pytest.raises(ValueError, match="no gold judge; pass judge="):
        model.learn(8, callback=GoldEval(PROMPTS))


# ---------------------------------------------------------------------------------------------- SIGKILL
def test_sigkill_then_the_same_command_resumes_and_finishes(policy_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlfl", "ppo", "--init-from", policy_dir, "--out-dir", str(out),
           "--total-timesteps", "1024", "--checkpoint-every", "128", "--eval-prompts", "4", "--eval-every", "0",
           "--sample-every", "0", *TINY, "--lr-schedule", "linear"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not (out / "ppo_resume.pt").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        still_running = first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert still_running, (tmp_path / "first.log").read_text()[-2000:]
    # what the kill left loads: the rlfl checkpoint and the resume state (never newer than the checkpoint)
    killed_at = PPO.from_resume_state(out / "ppo_resume.pt", None).num_timesteps
    assert 0 < killed_at < 1024 and load_checkpoint(out).step >= killed_at

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = [line for line in second.stderr.splitlines() if line.startswith("resumed PPO from")]
    assert len(resumed) == 1 and resumed[0].endswith(f"at timestep {killed_at} of 1024"), second.stderr[-2000:]
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["resumed_from"] == killed_at and report["timesteps"] == 1024
    assert report["start"]["timesteps"] == 0 and report["end"]["timesteps"] == 1024  # history survived the kill
    assert load_checkpoint(out).step == 1024 and PPO.from_resume_state(out / "ppo_resume.pt", None).num_timesteps == 1024
    assert (out / "logs" / f"progress-from-{killed_at}.csv").is_file()  # the first run's log is kept
    # the linear schedule runs over the whole 1,024 timesteps, across the kill: the n-th update (one per
    # 64-token rollout here: one epoch of one minibatch) trains at 1e-3 * (1 - 64 n / 1024), in the first
    # run's log and in the resumed one's, down to 0 for the update after the last rollout
    for name in ("progress.csv", f"progress-from-{killed_at}.csv"):
        rows = [r for r in csv.DictReader(open(out / "logs" / name)) if r["train/learning_rate"]]
        n = np.array([int(r["train/n_updates"]) for r in rows])
        lr = np.array([float(r["train/learning_rate"]) for r in rows])
        assert len(rows) >= 1 and ((n * 64 > killed_at) == (name != "progress.csv")).all(), (name, n)
        np.testing.assert_allclose(lr, 1e-3 * (1 - 64 * n / 1024), rtol=1e-6, atol=1e-12)
    assert n[-1] == 16 and lr[-1] == 0.0


def test_eval_csv_written_before_the_empty_column_still_resumes(tmp_path):
    from rlfl.agents.callbacks import read_eval_csv

    path = tmp_path / "eval.csv"
    path.write_text("timesteps,gold_mean,gold_positive_rate,kl,perplexity,length,stop_rate,n\n"
                    "0,0.5,0.75,0.0,12.5,8.0,1.0,16\n")
    (row,) = read_eval_csv(path)
    assert row["timesteps"] == 0 and row["n"] == 16 and row["gold_positive_rate"] == 0.75
    assert np.isnan(row["empty"])  # not measured then: never a made-up count

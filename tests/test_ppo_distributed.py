"""Data-parallel PPO under torchrun (rlfl.agents.distributed): two CPU processes on gloo, as a user launches them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from rlfl.agents.distributed import all_gather, all_max, all_min, all_sum, average_gradients, mean_count, mean_std, world

from conftest import tiny_policy

from rlfl.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# run by each rank: PPO.learn on its own env rows, then every figure an update depends on, saved per rank
RANK_SCRIPT = """
import sys
import torch, torch.distributed as dist
from rlfl.agents import PPO
from rlfl.agents.distributed import average_gradients, world

dist.init_process_group("gloo")
rank, size = world()
torch.set_num_threads(1)
policy, out = sys.argv[1], sys.argv[2]

# average_gradients: the mean over the ranks, rank r contributing r + 1
p = torch.nn.Parameter(torch.zeros(3))
p.grad = torch.full((3,), float(rank + 1))
average_gradients([p])
mean_grad = p.grad.tolist()

model = PPO(policy, "rlfl/SyntheticReviews-v0", n_envs=4, n_steps=8, batch_size=16, n_epochs=2, learning_rate=1e-3,
            adaptive_kl=True, kl_coef=0.1, kl_target=1.0, normalize_reward=True, seed=rank,
            env_kwargs={"max_new_tokens": 8, "n_prompts": 300, "stop_tokens": list(range(96, 128))})
start = [q.detach().clone() for q in model.policy.parameters()]
model.learn(128)
torch.save({"start": start, "end": [q.detach().clone() for q in model.policy.parameters()],
            "timesteps": model.num_timesteps, "beta": model.kl_ctl.beta, "n_updates": model._n_updates,
            "score_count": model.score_moments.count, "score_mean": model.score_moments.mean,
            "prompts": [c[0] for c in model._store.completions], "mean_grad": mean_grad}, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
"""


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> str:
    return tiny_policy(tmp_path_factory.mktemp("policy"), block_size=64)


def test_one_process_is_the_identity():
    assert world() == (0, 1)
    x = np.array([1.0, -2.0, 4.5])
    assert all_sum(x).tolist() == all_max(x).tolist() == all_min(x).tolist() == all_gather(x).tolist() == x.tolist()
    assert mean_std(x) == (float(x.mean()), float(x.std()))
    assert mean_count([1.0, 2.0, 4.0]) == (float(np.mean([1.0, 2.0, 4.0])), 3)
    assert np.isnan(mean_count([])[0]) and mean_count([])[1] == 0
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0])
    average_gradients([p])
    assert p.grad.tolist() == [1.0, 2.0]


def test_two_ranks_take_identical_updates_on_their_own_rows(policy_dir, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    r = _torchrun(str(script), policy_dir, str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1)]
    assert ranks[0]["mean_grad"] == ranks[1]["mean_grad"] == [1.5, 1.5, 1.5]
    for a, b in zip(ranks[0]["start"], ranks[1]["start"]):
        assert torch.equal(a, b)
    moved = 0
    for a, b, s in zip(ranks[0]["end"], ranks[1]["end"], ranks[0]["start"]):
        assert torch.equal(a, b)  # the same averaged step on both ranks, every minibatch
        moved += int(not torch.equal(a, s))
    assert moved > 0
    # 2 ranks x 4 rows x 8 tokens = 64 timesteps a rollout: two rollouts, counted over both ranks
    assert ranks[0]["timesteps"] == ranks[1]["timesteps"] == 128
    assert ranks[0]["n_updates"] == ranks[1]["n_updates"] > 0
    # the adaptive KL and the reward normalisation read every rank's completions
    assert ranks[0]["beta"] == ranks[1]["beta"] != 0.1
    assert ranks[0]["score_count"] == ranks[1]["score_count"] > 0
    assert ranks[0]["score_mean"] == ranks[1]["score_mean"]
    # each rank steps its own prompts (seed + rank)
    assert ranks[0]["prompts"] != ranks[1]["prompts"]


def test_rlfl_ppo_under_torchrun_writes_once_and_resumes(policy_dir, tmp_path):
    out = tmp_path / "ppo"
    flags = ["-m", "rlfl", "ppo", "--init-from", policy_dir, "--out-dir", str(out), "--max-new-tokens", "8",
             "--n-prompts", "300", "--n-envs", "4", "--n-steps", "8", "--batch-size", "32", "--n-epochs", "1",
             "--learning-rate", "1e-3", "--eval-prompts", "8", "--eval-every", "128", "--checkpoint-every", "128",
             "--no-progress"]
    r = _torchrun(*flags, "--total-timesteps", "256")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["timesteps"] == 256 and report["resumed_from"] is None
    assert r.stderr.count("eval @ 256") == 1  # rank 0 alone evaluates and logs
    evals = (out / "eval.csv").read_text().strip().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in evals] == [0, 128, 256]
    saved = load_checkpoint(out)
    assert saved.config["stage"] == "ppo" and saved.step == 256 and "value" in "".join(saved.heads)

    r = _torchrun(*flags, "--total-timesteps", "384")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("resumed PPO from") == 1
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["timesteps"] == 384 and report["resumed_from"] == 256

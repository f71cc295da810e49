"""GRPO and RLOO: group rollouts (one prompt per G rows, one completion per row), group-relative advantages,
the loss variants, learning, dynamic sampling, errors and resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rlfl.envs
import torch
from rlfl.agents import GRPO, PPO, RLOO
from rlfl.agents.grpo import group_advantages

from conftest import learn_with_frozen_reference, lower_share, one

from rlfl.checkpoint import load_checkpoint

PROMPTS = ["The film was", "Dinner was", "I think", "Our hotel room", "My dog", "A", "Then", "It rained"]





def env_id(name: str, reward=lower_share, **kwargs) -> str:
    full = f"test/grpo-{name}-v0"
    rlfl.envs.register_reward_env(full, reward=reward, overwrite=True,
                                  **{"prompts": PROMPTS, "max_new_tokens": 8, "max_prompt_tokens": 16, **kwargs})
    return full


# ---------------------------------------------------------------------------------------------- advantages
def test_group_advantages_match_their_definitions():
    rng = np.random.default_rng(0)
    rewards, g = rng.normal(size=24), 4
    groups = rewards.reshape(-1, g)
    by_hand = {
        "grpo": [(r - grp.mean()) / (grp.std(ddof=1) + 1e-4) for grp in groups for r in grp],
        "dr_grpo": [r - grp.mean() for grp in groups for r in grp],
        "rloo": [grp[i] - np.delete(grp, i).mean() for grp in groups for i in range(g)],
    }
    for kind, expected in by_hand.items():
        np.testing.assert_allclose(group_advantages(rewards, g, kind), expected, rtol=1e-12, atol=1e-12)
    assert np.allclose(group_advantages(np.ones(8), 4, "grpo"), 0.0)  # equal rewards: no signal, no NaN
    with pytest.raises(ValueError, match="advantage 'ppo' is not one of grpo, dr_grpo, rloo"):
        group_advantages(rewards, g, "ppo")


# ---------------------------------------------------------------------------------------------- rollouts
def test_a_rollout_is_one_completion_per_row_and_each_prompt_goes_to_one_group(policy_dir):
    # half of the vocabulary stops a completion: rows finish at scattered steps, all before the limit
    ragged = env_id("Ragged", stop_tokens=list(range(128)))
    model = GRPO(policy_dir, ragged, n_envs=12, group_size=3, seed=0)
    _, callback = model._setup_learn(1, None)
    assert model.collect_rollouts(model.env, callback, None, model.n_steps)
    store, rows = model._store, 12
    t_end = store.dones.argmax(axis=0)
    assert store.dones[t_end, np.arange(rows)].all()
    assert store.steps == t_end.max() + 1 < model.n_steps == 8  # stops when the last row finishes, not later
    first = np.flatnonzero(store.seg_t0 == 0)
    assert sorted(store.seg_row[first].tolist()) == list(range(rows))  # one completion per row
    prompt_windows = store.seg_tokens[first[np.argsort(store.seg_row[first])], :16].reshape(4, 3, 16)
    assert (prompt_windows == prompt_windows[:, :1]).all()  # a group shares its prompt ...
    assert len({w.tobytes() for w in prompt_windows[:, 0]}) > 1  # ... and groups draw their own
    lengths = store.lengths[t_end, np.arange(rows)]
    assert lengths.min() < lengths.max()
    # a row that finished idles: the episodes the env restarts it with are neither recorded nor logged
    assert store.dones.sum() == rows and len(store.completions) == rows and len(model.ep_info_buffer) == rows


def test_a_groups_completions_share_one_copy_of_their_prompt_and_get_the_logprobs_of_each_alone(policy_dir):
    ragged = env_id("Ragged", stop_tokens=list(range(128)))
    model = GRPO(policy_dir, ragged, n_envs=12, group_size=3, seed=0)
    _, callback = model._setup_learn(1, None)
    model.collect_rollouts(model.env, callback, None, model.n_steps)
    store = model._store
    first = np.flatnonzero(store.seg_t0 == 0)
    b = store.batch(first, torch.device("cpu"))
    assert b.branch_ids is not None and int(b.branch_ids.max()) >= 3  # a group's 3 completions in one unit
    alone = sum(int(store.seg_masks[s].sum()) - (store.seg_n[s] > 0) for s in first)  # each read on its own
    assert int(b.mask.sum()) < 0.6 * alone  # the prompts (most of each sequence) are computed once per group
    with torch.no_grad():
        logp, _, values = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions, **b.layout)
        ref = model.policy.reference_logprobs(b.tokens, b.mask, b.positions, b.actions, **b.layout)
    cells = b.cells.numpy()
    np.testing.assert_allclose(logp.numpy(), store.logp.reshape(-1)[cells], atol=2e-5)  # the KV-cached rollout's
    np.testing.assert_allclose(values.numpy(), store.values.reshape(-1)[cells], atol=2e-5)
    np.testing.assert_allclose(ref.numpy(), logp.numpy(), atol=2e-5)  # the reference: the same weights still
    # one segment per forward (no packing, no sharing) gives the same figures
    for s in first[:4]:
        one_b = store.batch(np.array([s]), torch.device("cpu"))
        assert one_b.segment_ids is None and one_b.branch_ids is None
        with torch.no_grad():
            lp, _, _ = model.policy.sequence_outputs(one_b.tokens, one_b.mask, one_b.positions, one_b.actions,
                                                     **one_b.layout)
        np.testing.assert_allclose(lp.numpy(), logp.numpy()[np.isin(cells, one_b.cells.numpy())], atol=2e-5)


def test_shared_units_stay_within_four_times_the_longest_segment(policy_dir):
    # 24 rows of one prompt: a unit holds the prompt and as many completions as fit in 4x a segment's length
    model = GRPO(policy_dir, env_id("One", prompts=["The film was"]), n_envs=24, group_size=24, seed=0)
    _, callback = model._setup_learn(1, None)
    model.collect_rollouts(model.env, callback, None, model.n_steps)
    store = model._store
    first = np.flatnonzero(store.seg_t0 == 0)
    b = store.batch(first, torch.device("cpu"))
    longest = max(int(store.seg_masks[s].sum()) for s in first)
    assert b.tokens.shape[1] <= 4 * longest and len(b.tokens) >= 2  # the 24 completions needed several units
    assert (b.branch_ids[:, 0] == 0).all()  # every unit starts with its copy of the prompt
    with torch.no_grad():
        logp, _, _ = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions, **b.layout)
    np.testing.assert_allclose(logp.numpy(), store.logp.reshape(-1)[b.cells.numpy()], atol=2e-5)


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("algorithm, settings", [
    (GRPO, {}),
    (GRPO, {"advantage": "dr_grpo", "loss_agg": "dr_grpo"}),
    (GRPO, {"loss_agg": "dapo", "clip_range_high": 0.28, "n_epochs": 2}),
    (RLOO, {}),
])
def test_critic_free_algorithms_raise_the_reward_and_keep_the_reference_frozen(policy_dir, algorithm, settings):
    model = algorithm(policy_dir, env_id("Lower"), n_envs=16, group_size=4, batch_size=64, learning_rate=1e-3,
                      kl_coef=0.01, seed=0, **settings)
    value_before = model.policy.net.value.proj.weight.detach().clone()
    scores = learn_with_frozen_reference(model, 16 * 8 * 25)
    assert np.mean(scores[-4:]) > np.mean(scores[:4]) + 0.2, scores
    assert torch.equal(model.policy.net.value.proj.weight, value_before)  # no critic is trained
    values = model.logger.name_to_value
    assert values["rollout/kl"] > 0 and values["train/skipped_batches"] == 0 and values["train/kept_groups"] == 1.0


def test_rloo_defaults_and_explicit_settings_win(policy_dir):
    env = env_id("Lower")
    assert (RLOO(policy_dir, env, n_envs=8, seed=0).advantage, RLOO(policy_dir, env, n_envs=8, seed=0).kl_penalty) == (
        "rloo", "reward")
    assert RLOO(policy_dir, env, n_envs=8, advantage="grpo", seed=0).advantage == "grpo"


def test_drop_equal_groups_leaves_groups_without_signal_out_of_the_update(policy_dir):
    model = GRPO(policy_dir, env_id("One", reward=one), n_envs=8, group_size=4, drop_equal_groups=True,
                 learning_rate=1e-2, seed=0)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(8 * 8 * 2)
    assert model.logger.name_to_value["train/kept_groups"] == 0.0
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, before[k]), k  # every group scored 1.0: nothing to learn, no step taken


def test_a_negative_ent_coef_is_an_entropy_penalty(policy_dir):
    """With a reward that teaches nothing (every completion scores 1), only the entropy term moves the policy:
    a penalty sharpens it, a bonus flattens it."""
    entropy = {}
    for coef in (-0.5, 0.5):
        model = GRPO(policy_dir, env_id("One", reward=one), n_envs=8, group_size=4, ent_coef=coef,
                     learning_rate=3e-3, kl_coef=0.0, seed=0)
        model.learn(8 * 8 * 6)
        entropy[coef] = model.logger.name_to_value["train/entropy"]
    start = GRPO(policy_dir, env_id("One", reward=one), n_envs=8, group_size=4, ent_coef=0.5, learning_rate=0.0,
                 kl_coef=0.0, seed=0)
    start.learn(8 * 8)
    assert entropy[-0.5] < start.logger.name_to_value["train/entropy"] < entropy[0.5], entropy


# ---------------------------------------------------------------------------------------------- errors, resume
def test_bad_settings_name_the_setting_and_the_fix(policy_dir):
    with pytest.raises(ValueError, match=r"n_envs=10 is not a multiple of group_size=4.*pass n_envs=8"):
        GRPO(policy_dir, env_id("Lower"), n_envs=10, group_size=4)
    with pytest.raises(ValueError, match="group_size=1: must be an integer >= 2"):
        GRPO(policy_dir, env_id("Lower"), n_envs=8, group_size=1)
    with pytest.raises(ValueError, match="loss_agg='mean': use one of grpo, dapo, dr_grpo; fix --loss-agg"):
        GRPO(policy_dir, env_id("Lower"), n_envs=8, loss_agg="mean")
    with pytest.raises(ValueError, match="PPO got an unknown setting 'group_size'"):
        PPO(policy_dir, env_id("Lower"), n_envs=8, group_size=4)


def test_resume_state_round_trips_and_names_its_algorithm(policy_dir, tmp_path):
    model = GRPO(policy_dir, env_id("Lower"), n_envs=8, group_size=4, advantage="dr_grpo", learning_rate=1e-3,
                 adaptive_kl=True, kl_coef=0.05, kl_target=0.5, seed=0)
    model.learn(8 * 8 * 2)
    path = model.save_resume_state(tmp_path / "resume.pt")
    again = GRPO.from_resume_state(path, env_id("Lower"))
    assert again.advantage == "dr_grpo" and again.num_timesteps == model.num_timesteps
    assert again.kl_ctl.beta == model.kl_ctl.beta != 0.05
    for (k, v), (k2, v2) in zip(model.policy.state_dict().items(), again.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    with pytest.raises(ValueError, match="the resume state of a GRPO run, not a PPO one; resume it with rlfl grpo"):
        PPO.from_resume_state(path, env_id("Lower"))
    config = load_checkpoint(model.save_checkpoint(tmp_path / "ckpt")).config
    assert config["stage"] == "ppo" and config["train"]["algorithm"] == "GRPO" and config["train"]["group_size"] == 4


# ---------------------------------------------------------------------------------------------- the commands
@pytest.mark.parametrize("command, algorithm, advantage", [("grpo", "GRPO", "grpo"), ("rloo", "RLOO", "rloo")])
def test_rlfl_grpo_and_rloo_train_evaluate_save_and_finish(policy_dir, tmp_path, capsys, command, algorithm, advantage):
    from rlfl.cli import main

    out = tmp_path / command
    argv = [command, "--init-from", policy_dir, "--out-dir", str(out), "--max-new-tokens", "8", "--max-prompt-tokens", "24",
            "--n-prompts", "300",
            "--n-envs", "8", "--group-size", "4", "--batch-size", "64", "--n-epochs", "1", "--learning-rate", "1e-3",
            "--total-timesteps", "256", "--eval-prompts", "6", "--eval-every", "128", "--no-progress"]
    assert main(argv) == 0
    assert f"checkpoint: {out}" in capsys.readouterr().out
    saved = load_checkpoint(out)
    assert saved.config["train"]["algorithm"] == algorithm and saved.config["train"]["advantage"] == advantage
    assert saved.step == 256
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["evaluations"] == 3 and abs(report["start"]["kl"]) < 1e-4 and report["end"]["n"] == 6
    header = (out / "logs" / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"rollout/kl", "train/kept_groups", "rollout/group_reward_std", "eval/gold_mean"} <= set(header)
    assert "train/value_loss" not in header
    # the same command again: nothing left to train; a PPO command on this out-dir is refused
    assert main(argv) == 0
    assert "already trained to 256 timesteps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ppo", "--init-from", policy_dir, "--out-dir", str(out), "--total-timesteps", "512"])
    assert f"the resume state of a {algorithm} run, not a PPO one" in capsys.readouterr().err


def test_rlfl_grpo_on_arithmetic_takes_env_options_and_evaluates_exact_match(policy_dir, tmp_path, capsys):
    from rlfl.cli import main

    out = tmp_path / "arith"
    assert main(["grpo", "--init-from", policy_dir, "--env-id", "rlfl/Arithmetic-v0", "--env-options", "level=2",
                 "--n-prompts", "200", "--max-new-tokens", "4", "--max-prompt-tokens", "16", "--out-dir", str(out),
                 "--n-envs", "8", "--total-timesteps", "64", "--eval-prompts", "8", "--no-progress"]) == 0
    config = json.loads((out / "ppo_config.json").read_text())
    assert config["env_options"] == ["level=2"]
    rows = list(csv.DictReader((out / "eval.csv").open()))
    # the gold judge is exact match (0 or 1 per completion): its mean over 8 prompts is a multiple of 1/8
    assert len(rows) == 2 and all((8 * float(r["gold_mean"])).is_integer() for r in rows)
    assert all(float(r["gold_mean"]) == float(r["gold_positive_rate"]) for r in rows)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["grpo", "--init-from", policy_dir, "--env-id", "rlfl/Arithmetic-v0", "--env-options", "levle=2",
              "--out-dir", str(tmp_path / "typo")])
    assert "rlfl/Arithmetic-v0" in capsys.readouterr().err and not (tmp_path / "typo").exists()

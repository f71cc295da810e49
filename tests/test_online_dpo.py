"""Online DPO: pairs of each group's best and worst completion, the DPO loss against the reference, learning,
minibatches of whole pairs, errors, resume and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rlfl.envs
import torch
from rlfl.agents import GRPO, OnlineDPO
from rlfl.agents.online_dpo import preference_pairs

from conftest import learn_with_frozen_reference, lower_share, one

from rlfl.checkpoint import load_checkpoint

PROMPTS = ["The film was", "Dinner was", "I think", "Our hotel room", "My dog", "A", "Then", "It rained"]


def env_id(name: str, reward=lower_share) -> str:
    full = f"test/online-dpo-{name}-v0"
    rlfl.envs.register_reward_env(full, reward=reward, prompts=PROMPTS, overwrite=True, max_new_tokens=8,
                                  max_prompt_tokens=16)
    return full


def test_pairs_are_each_groups_best_and_worst_and_ties_say_nothing():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=24)
    rewards[4:8] = 0.5  # a group of ties
    chosen, rejected = preference_pairs(rewards, 4)
    groups = rewards.reshape(-1, 4)
    expected = [g for g in range(6) if g != 1]
    assert (chosen // 4).tolist() == expected and (rejected // 4).tolist() == expected
    assert np.array_equal(rewards[chosen], groups[expected].max(axis=1))
    assert np.array_equal(rewards[rejected], groups[expected].min(axis=1))


def test_the_first_update_starts_at_log_2_and_a_minibatch_holds_whole_pairs(policy_dir):
    """At the start the policy is its reference: every pair's loss is log 2, so the first minibatch's is."""
    losses, pairs_seen = [], []
    model = OnlineDPO(policy_dir, env_id("Lower"), n_envs=16, group_size=4, batch_size=16, learning_rate=1e-3,
                      seed=0)
    optimize = model._optimize

    def spy(store, segments, n_minibatches, old_logp, loss_fn, *, block=1):
        assert block == 2 and n_minibatches > 1
        rows = store.seg_row[segments].reshape(-1, 2)
        assert (rows[:, 0] // 4 == rows[:, 1] // 4).all()  # a pair is two completions of one prompt

        def watched(b, logp, *rest):
            pairs_seen.append(sorted(set((b.cells % store.num_rows).tolist())))
            loss, pieces = loss_fn(b, logp, *rest)
            losses.append(loss.item())
            return loss, pieces
        return optimize(store, segments, n_minibatches, old_logp, watched, block=block)

    model._optimize = spy
    model.learn(16 * 8)
    assert math.isclose(losses[0], math.log(2), rel_tol=1e-5)
    for rows in pairs_seen:  # both completions of every pair in the same minibatch
        assert len(rows) % 2 == 0 and len({r // 4 for r in rows}) == len(rows) // 2


def lower_share_x10(prompt: str, completion: str) -> float:
    """`lower_share` on the scale of a reward model's logits: 0.1 more lowercase is a 2.7:1 preference."""
    return 10.0 * lower_share(prompt, completion)


@pytest.mark.parametrize("soft, reward", [(False, lower_share), (True, lower_share_x10)])
def test_online_dpo_raises_the_reward_and_keeps_the_reference_frozen(policy_dir, soft, reward):
    model = OnlineDPO(policy_dir, env_id(f"Lower{soft}", reward=reward), n_envs=16, group_size=4, batch_size=64,
                      learning_rate=1e-3, beta=0.1, soft_preferences=soft, seed=0)
    value_before = model.policy.net.value.proj.weight.detach().clone()
    scores = np.array(learn_with_frozen_reference(model, 16 * 8 * 25)) / (10.0 if soft else 1.0)
    assert np.mean(scores[-4:]) > np.mean(scores[:4]) + 0.2, scores
    assert torch.equal(model.policy.net.value.proj.weight, value_before)  # no critic is trained
    values = model.logger.name_to_value
    assert values["rollout/kl"] > 0 and values["train/dpo_accuracy"] > 0.5 and values["train/dpo_margin"] > 0


def test_ipo_and_a_kl_term_also_learn(policy_dir):
    model = OnlineDPO(policy_dir, env_id("Lower"), n_envs=16, group_size=2, batch_size=64, learning_rate=1e-3,
                      n_epochs=2, loss_type="ipo", beta=0.5, kl_coef=0.01, kl_penalty="loss",
                      soft_preferences=False, seed=0)
    scores = learn_with_frozen_reference(model, 16 * 8 * 25)
    assert np.mean(scores[-4:]) > np.mean(scores[:4]) + 0.2, scores


def test_soft_preferences_label_each_pair_with_the_rewards_probability(policy_dir):
    """Soft labels p = sigmoid(r_chosen - r_rejected): the loss's gradient at the start is (p - 1/2)-weighted,
    so pairs the reward barely separates move the policy less than with hard labels."""
    grads = {}
    for soft in (False, True):
        model = OnlineDPO(policy_dir, env_id("Lower"), n_envs=16, group_size=4, learning_rate=0.0, seed=0,
                          soft_preferences=soft)
        seen = []
        optimize = model._optimize

        def spy(store, segments, n_minibatches, old_logp, loss_fn, *, block=1):
            def watched(b, logp, *rest):
                loss, pieces = loss_fn(b, logp, *rest)
                seen.append(torch.autograd.grad(loss, logp, retain_graph=True)[0].abs().sum().item())
                return loss, pieces
            return optimize(store, segments, n_minibatches, old_logp, watched, block=block)

        model._optimize = spy
        model.learn(16 * 8)
        grads[soft] = seen[0]
    # lower_share differences are < 1, so p is in (0.5, 0.73): the soft gradient is a fraction of the hard one
    assert 0 < grads[True] < 0.5 * grads[False], grads
    with pytest.raises(ValueError, match="pass --no-soft-preferences with --label-smoothing"):
        OnlineDPO(policy_dir, env_id("Lower"), n_envs=8, label_smoothing=0.1)
    assert OnlineDPO(policy_dir, env_id("Lower"), n_envs=8, label_smoothing=0.1, soft_preferences=False).label_smoothing


def test_groups_that_all_score_the_same_leave_the_policy_as_it_is(policy_dir):
    model = OnlineDPO(policy_dir, env_id("One", reward=one), n_envs=8, learning_rate=1e-2, seed=0)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(8 * 8 * 2)
    assert model.logger.name_to_value["train/kept_groups"] == 0.0
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_defaults_bad_settings_and_resume(policy_dir, tmp_path):
    model = OnlineDPO(policy_dir, env_id("Lower"), n_envs=8, seed=0)
    assert (model.group_size, model.kl_coef, model.beta, model.loss_type, model.soft_preferences) == (
        2, 0.0, 0.1, "sigmoid", True)
    with pytest.raises(ValueError, match=r"beta=0 must be > 0; pass e.g. --beta 0.1"):
        OnlineDPO(policy_dir, env_id("Lower"), n_envs=8, beta=0)
    with pytest.raises(ValueError, match="label_smoothing applies to --loss-type sigmoid only"):
        OnlineDPO(policy_dir, env_id("Lower"), n_envs=8, loss_type="ipo", label_smoothing=0.1, soft_preferences=False)
    with pytest.raises(ValueError, match="GRPO got an unknown setting 'beta'"):
        GRPO(policy_dir, env_id("Lower"), n_envs=8, beta=0.1)
    model = OnlineDPO(policy_dir, env_id("Lower"), n_envs=8, beta=0.2, learning_rate=1e-3, seed=0)
    model.learn(8 * 8 * 2)
    path = model.save_resume_state(tmp_path / "resume.pt")
    again = OnlineDPO.from_resume_state(path, env_id("Lower"))
    assert again.beta == 0.2 and again.num_timesteps == model.num_timesteps
    for (k, v), (k2, v2) in zip(model.policy.state_dict().items(), again.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    with pytest.raises(ValueError, match="the resume state of a OnlineDPO run, not a GRPO one; resume it with "
                                         "rlfl online-dpo"):
        GRPO.from_resume_state(path, env_id("Lower"))


def test_rlfl_online_dpo_trains_evaluates_and_saves(policy_dir, tmp_path, capsys):
    from rlfl.cli import main

    out = tmp_path / "online_dpo"
    assert main(["online-dpo", "--init-from", policy_dir, "--env-id", env_id("Lower"), "--out-dir", str(out),
                 "--n-envs", "8", "--beta", "0.2",
                 "--loss-type", "ipo", "--learning-rate", "1e-3", "--total-timesteps", "256", "--eval-prompts", "6",
                 "--eval-every", "128", "--no-progress"]) == 0
    assert f"checkpoint: {out}" in capsys.readouterr().out
    train = load_checkpoint(out).config["train"]
    assert (train["algorithm"], train["beta"], train["loss_type"], train["group_size"]) == ("OnlineDPO", 0.2, "ipo", 2)
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["evaluations"] == 3 and report["end"]["n"] == 6
    header = (out / "logs" / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"train/dpo_accuracy", "train/dpo_margin", "train/kept_groups", "eval/gold_mean"} <= set(header)

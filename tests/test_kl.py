"""rlfl.agents.kl: KL estimators, the adaptive KL controller's dynamics, running reward statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlfl.agents.kl import KL_HORIZON, AdaptiveKL, kl_per_token
from rlfl.envs.rewards import RunningMoments


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    assert kl_per_token(logp, ref, "k1").tolist() == [1.0, -1.0]
    k3 = kl_per_token(logp, ref, "k3")
    assert (k3 >= 0).all() and abs(k3[1].item() - (np.e - 1 - 1)) < 1e-5
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_per_token(logp, ref, "k2")


def test_running_moments_match_the_whole_sample():
    m = RunningMoments()
    data = np.random.default_rng(0).normal(3.0, 2.0, 1000)
    for part in np.array_split(data, 7):
        m.update(part)
    assert m.mean == pytest.approx(data.mean()) and m.std == pytest.approx(data.std())


def test_beta_rises_above_the_target_falls_below_and_rests_at_it():
    target = 6.0
    for kl, direction in ((60.0, 1), (6.6, 1), (6.0, 0), (5.4, -1), (0.1, -1), (0.0, -1), (-0.3, -1)):
        ctl = AdaptiveKL(beta=0.1, target=target, horizon=100)
        ctl.update(kl=kl, n_episodes=50)
        assert np.sign(round(ctl.beta - 0.1, 12)) == direction, kl
        # one update moves log(beta) by the log error, clipped to +-0.5, times n / horizon
        step = math.log(ctl.beta / 0.1)
        expected = 0.5 * np.clip(math.log(kl / target), -0.5, 0.5) if kl > 0 else -0.25
        assert step == pytest.approx(expected)
    # twice the target and half of it move beta by the same factor, up and down
    up, down = AdaptiveKL(0.1, target, 100), AdaptiveKL(0.1, target, 100)
    up.update(kl=2 * target * 0.7, n_episodes=100)
    down.update(kl=target / (2 * 0.7), n_episodes=100)
    assert up.beta * down.beta == pytest.approx(0.1 ** 2)
    # nothing to learn from: no completions, or a KL that is not a number
    for kl, n in ((float("nan"), 10), (float("inf"), 10), (12.0, 0)):
        ctl = AdaptiveKL(0.1, target, 100)
        ctl.update(kl=kl, n_episodes=n)
        assert ctl.beta == 0.1
    # however large one rollout is against the horizon, beta stays positive (the linear form went negative)
    ctl = AdaptiveKL(0.1, target, 10)
    ctl.update(kl=0.0, n_episodes=1000)
    assert 0 < ctl.beta < 1e-10


def test_default_horizon_moves_beta_several_fold_in_a_few_dozen_rollouts():
    ctl, old = AdaptiveKL(0.05, 6.0), AdaptiveKL(0.05, 6.0, horizon=10_000)
    assert ctl.horizon == KL_HORIZON
    for _ in range(48):  # 48 rollouts of 32 completions, the KL far above the target
        ctl.update(kl=30.0, n_episodes=32)
        old.update(kl=30.0, n_episodes=32)
    assert ctl.beta / 0.05 == pytest.approx(math.exp(1.5))  # x4.5
    assert old.beta / 0.05 < 1.1  # a horizon of 10,000 (Ziegler's, sized for runs of a million) barely moves


def test_beta_converges_where_a_lagged_policy_holds_the_target():
    """A policy whose KL settles at (c / beta)^2 nats, following beta with a lag of a few rollouts, and noisy."""
    rng = np.random.default_rng(0)
    target, c = 6.0, 0.4  # the KL is at the target for beta = c / sqrt(target) = 0.163
    ctl = AdaptiveKL(beta=0.02, target=target)  # 8x too low: the KL starts ~64x too high
    log_kl, history = math.log(target), []
    for _ in range(400):
        log_kl += 0.3 * (2 * math.log(c / ctl.beta) - log_kl)  # the policy moves 30 % of the way per rollout
        kl = math.exp(log_kl) * rng.lognormal(0.0, 0.2)  # a rollout's mean over ~32 completions
        history.append((kl, ctl.beta))
        ctl.update(kl=kl, n_episodes=32)
    kls, betas = np.array(history).T
    assert kls[:10].mean() > 10 * target and (np.diff(betas[:60]) > 0).all()  # far above: beta only rises
    assert betas[:200].max() < 1.5 * c / math.sqrt(target)  # no wild overshoot on the way
    assert abs(np.exp(np.log(kls[-100:]).mean()) / target - 1) < 0.05  # then it holds the target
    assert abs(betas[-1] / (c / math.sqrt(target)) - 1) < 0.1


def test_adaptive_kl_needs_a_positive_start_target_and_horizon():
    with pytest.raises(ValueError, match="kl_coef > 0 .* set kl_coef"):
        AdaptiveKL(beta=0.0, target=6.0)
    with pytest.raises(ValueError, match="kl_target > 0 and kl_horizon > 0"):
        AdaptiveKL(beta=0.1, target=0.0)
    with pytest.raises(ValueError, match="kl_target > 0 and kl_horizon > 0"):
        AdaptiveKL(beta=0.1, target=6.0, horizon=0)

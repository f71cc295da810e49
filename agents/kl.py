"""KL control for RLHF PPO: per-token KL estimators, fixed and adaptive KL coefficients, reward statistics.

The reward PPO maximises is ``score(completion) - beta * KL(policy || reference)``, the KL spread over the
completion's tokens. Per token, with ``log_ratio = logp_policy - logp_reference`` of the sampled token:

- ``k1 = log_ratio``: unbiased for the KL, but single samples can be negative (high variance);
- ``k3 = (r - 1) - log r`` with ``r = exp(-log_ratio)`` (Schulman's estimator): unbiased too, always >= 0,
  lower variance; what you want when the penalty per token should never pay the policy.

``beta`` is fixed (`FixedKL`) or adapted (`AdaptiveKL`: Ziegler et al. 2019's controller, in log space): after
each rollout ``log beta`` moves by ``clip(log(kl / target), -0.5, 0.5) * n_completions / horizon``, so beta
grows while the measured KL per completion is above ``target``, shrinks while it is below, and rests where the
two meet. ``horizon`` counts completions: at the clip, ``2 * horizon`` completions move beta by a factor e.

Example:
    >>> ctl = AdaptiveKL(beta=0.1, target=6.0, horizon=100)
    >>> ctl.update(kl=6.6, n_episodes=50)  # 10 % above the target: beta *= exp(log(1.1) * 50 / 100)
    >>> round(ctl.beta, 4)
    0.1049
    >>> ctl.update(kl=60.0, n_episodes=50)  # 10x the target, clipped to e^0.5: beta *= exp(0.5 * 50 / 100)
    >>> round(ctl.beta, 4)
    0.1347
"""

from __future__ import annotations

import math

import numpy as np
import torch

ESTIMATORS = ("k1", "k3")


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.

    Example:
        >>> round(kl_per_token(torch.tensor([-1.0]), torch.tensor([-2.0]), "k3").item(), 4)  # e^-1 - 1 + 1
        0.3679
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator={estimator!r}; use one of {', '.join(ESTIMATORS)}")


class FixedKL:
    """A constant KL coefficient."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)

    def update(self, kl: float, n_episodes: int) -> None:
        """Nothing to adapt."""


# The adaptive controller's default horizon (completions) and the clip of its log error.
# Ziegler et al. (openai/lm-human-preferences, AdaptiveKLParams) and TRL (PPOConfig.horizon) use 10,000
# episodes with the error clipped at +-0.2, sized for their runs: 1M (Ziegler's sentiment task, 512 episodes
# per update) to 5M (TRL's defaults, 256 x 20,000 steps) episodes, over which beta may move by e^20 or more,
# while one update moves it by at most 1 %. Our runs are a few thousand to tens of thousands of completions at
# 16-64 per rollout: with 10,000, a run of 7,000 completions may move beta by e^0.14 at most, and one that ended
# at 8.7 nats against a 6.0 target kept beta within a few % of where it began. On the tiny task of
# tests/test_ppo.py (32 completions per rollout, target 4 nats, beta starting 3.5x too low), 250 rollouts ended
# at 15.2 nats with horizon 10,000; with 256 and the +-0.2 clip the KL swung +-25 % around the target; with
# 512 and +-0.5 it settled within ~10 % after 100 rollouts in each of four seeds. So: near the target the
# gain per completion is 1/512 (32 completions per rollout: 6 % of the error per rollout, Ziegler's 5 % per
# update), slow beside the policy's own lag, so the loop does not ring; far from it the wider clip lets beta
# move e^0.5 per 1,024 completions (48 rollouts of 32 at the clip: x4.5), fast enough to matter within a run.
KL_HORIZON = 512
ERROR_CLIP = 0.5


class AdaptiveKL:
    """Keep the KL per completion near ``target``: beta grows while the KL is above it and shrinks below.

    Ziegler et al.'s proportional controller, ``beta *= 1 + clip(kl / target - 1, +-0.2) * n / horizon``, taken
    into log space: ``beta *= exp(clip(log(kl / target), +-0.5) * n / horizon)`` for ``n`` completions of mean
    KL ``kl``. Near the target the two are the same to first order. Away from it the log error treats "twice
    the target" and "half of it" alike, the wider clip lets a far-off KL move beta faster (see `KL_HORIZON`),
    and the exponential keeps beta positive for any ``n / horizon`` (the linear form turns it negative once one
    update's ``0.2 * n / horizon`` exceeds 1). A mean KL <= 0 (the k1 estimator around a policy that has not
    moved yet) counts as far below the target.

    Example:
        >>> ctl = AdaptiveKL(beta=0.05, target=6.0)
        >>> for _ in range(30):  # 30 rollouts of 24 completions at 8.7 nats (log error 0.37)
        ...     ctl.update(kl=8.7, n_episodes=24)
        >>> round(ctl.beta / 0.05, 2)
        1.69
    """

    def __init__(self, beta: float, target: float, horizon: int = KL_HORIZON) -> None:
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"adaptive KL moves beta by factors, so it needs kl_coef > 0 (the starting beta), got "
                             f"{beta}; set kl_coef, e.g. 0.05")
        if not (target > 0 and horizon > 0):
            raise ValueError(f"adaptive KL needs kl_target > 0 and kl_horizon > 0, got {target} and {horizon}")
        self.beta, self.target, self.horizon = float(beta), float(target), int(horizon)

    def error(self, kl: float) -> float:
        """The clipped log error ``clip(log(kl / target), -0.5, 0.5)`` of a rollout's mean KL per completion."""
        if kl <= 0:
            return -ERROR_CLIP
        return float(np.clip(math.log(kl / self.target), -ERROR_CLIP, ERROR_CLIP))

    def update(self, kl: float, n_episodes: int) -> None:
        """Move beta after a rollout whose ``n_episodes`` completions had a mean KL of ``kl`` nats."""
        if not math.isfinite(kl) or n_episodes <= 0:
            return
        self.beta *= math.exp(self.error(kl) * n_episodes / self.horizon)


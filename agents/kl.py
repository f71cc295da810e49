"""KL control for RLHF PPO: per-token KL estimators, fixed and adaptive KL coefficients, reward statistics.

The reward PPO maximises is ``score(completion) - beta * KL(policy || reference)``, the KL spread over the
completion's tokens. Per token, with ``log_ratio = logp_policy - logp_reference`` of the sampled token:

- ``k1 = log_ratio``: unbiased for the KL, but single samples can be negative (high variance);
- ``k3 = (r - 1) - log r`` with ``r = exp(-log_ratio)`` (Schulman's estimator): unbiased too, always >= 0,
  lower variance; what you want when the penalty per token should never pay the policy.

``beta`` is fixed (`FixedKL`) or adapted (`AdaptiveKL`, Ziegler et al. 2019): after each rollout it moves
towards the value that keeps the measured KL per completion near ``target``, by at most 20 % of the error
per ``horizon`` completions.

Example:
    >>> ctl = AdaptiveKL(beta=0.1, target=6.0, horizon=1000)
    >>> ctl.update(kl=12.0, n_episodes=500)  # twice the target: beta grows by 0.2 * 500 / 1000 = 10 %
    >>> round(ctl.beta, 4)
    0.11
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


class AdaptiveKL:
    """Ziegler et al.'s proportional controller: beta grows when the KL is above ``target``, shrinks below."""

    def __init__(self, beta: float, target: float, horizon: int = 10_000) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs kl_target > 0 and kl_horizon > 0, got {target} and {horizon}")
        self.beta, self.target, self.horizon = float(beta), float(target), int(horizon)

    def update(self, kl: float, n_episodes: int) -> None:
        """Move beta after a rollout whose completions had a mean KL of ``kl`` nats."""
        if not math.isfinite(kl) or n_episodes <= 0:
            return
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.beta *= 1.0 + error * n_episodes / self.horizon


class RunningMoments:
    """Running mean and standard deviation (Chan et al.'s parallel update) for reward normalisation.

    Example:
        >>> m = RunningMoments(); m.update(np.array([1.0, 3.0])); m.update(np.array([5.0]))
        >>> m.mean, round(m.std, 4)
        (3.0, 1.633)
    """

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0, 0.0, 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return
        n, mean, var = x.size, float(x.mean()), float(x.var())
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

"""The DPO / IPO loss of preference pairs and its settings, shared by offline DPO (`rlfl.dpo`, ``rlfl dpo``) and
online DPO (`rlfl.agents.OnlineDPO`, ``rlfl online-dpo``).

With ``h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))`` the losses are

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * h)`` with log-probs summed over the completion;
  with ``label_smoothing`` e (conservative DPO, for labels that are wrong a share e of the time)
  ``-(1 - e) log sigmoid(beta * h) - e log sigmoid(-beta * h)``;
- ``ipo`` (IPO, Azar et al. 2023): ``(h - 1 / (2 * beta))^2`` with per-token *average* log-probs in ``h``.

``beta * (log pi - log ref)`` of a completion is its *implicit reward*.

Example (at the start the policy is its reference, so every pair's loss is log 2):
    >>> import math
    >>> lp = torch.tensor([-3.0, -5.0])
    >>> loss, metrics = preference_loss(lp[:1], lp[1:], lp[:1], lp[1:], beta=0.1)
    >>> round(float(loss), 6) == round(math.log(2), 6), metrics["accuracy"]
    (True, 0.0)
    >>> PreferenceLossSettings(beta=0.0)
    Traceback (most recent call last):
    ...
    ValueError: beta=0.0 must be > 0; pass e.g. --beta 0.1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class PreferenceLossSettings:
    """Which preference loss, and how strongly it holds the policy to its reference."""

    loss_type: str = field(default="sigmoid", metadata={
        "help": "sigmoid (DPO: -log sigmoid(beta * h)) | ipo (IPO: (h - 1/(2 beta))^2 on per-token mean log-probs)"})
    beta: float = field(default=0.1, metadata={
        "help": "strength of the pull to the reference (DPO: scale of the implicit reward; IPO: target margin "
                "1/(2 beta)); > 0"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "assumed share of flipped labels, in [0, 0.5) (conservative DPO; sigmoid only)"})

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is unknown; pass --loss-type sigmoid or --loss-type ipo")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
            raise ValueError(f"beta={self.beta} must be > 0; pass e.g. --beta 0.1")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 0.5); pass e.g. "
                             "--label-smoothing 0.1, or 0 for plain DPO")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("label_smoothing applies to --loss-type sigmoid only; pass --label-smoothing 0 with ipo")


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, *, beta: float, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0,
                    preferred: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO (``sigmoid``) or IPO (``ipo``) loss of a batch of pairs, with implicit-reward metrics.

    The arguments are (B,) completion log-probs: sums for DPO, per-token means for IPO. ``preferred`` (B,) is
    each pair's probability that its chosen side is the better one (soft labels; default ``1 -
    label_smoothing``): DPO's loss is then the cross-entropy ``-p log sigmoid(beta h) - (1 - p) log
    sigmoid(-beta h)``, whose optimum is ``beta h = logit(p)``, and IPO's target margin ``(p - 1/2) / beta``. Metrics:
    ``accuracy`` (share of pairs whose chosen implicit reward is strictly higher), ``margin`` (mean chosen
    minus rejected implicit reward), ``chosen_reward`` and ``rejected_reward`` (means of
    ``beta * (log pi - log ref)``).

    Example:
        >>> loss, m = preference_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
        ...                           torch.tensor([-2.0]), beta=0.5)
        >>> round(float(loss), 4), m["accuracy"], m["margin"]  # -log sigmoid(0.5 * 2)
        (0.3133, 1.0, 1.0)
    """
    chosen_ratio = policy_chosen.float() - ref_chosen.float()
    rejected_ratio = policy_rejected.float() - ref_rejected.float()
    h = chosen_ratio - rejected_ratio
    p = torch.full_like(h, 1.0 - label_smoothing) if preferred is None else preferred.to(h)
    if loss_type == "sigmoid":
        losses = -p * F.logsigmoid(beta * h) - (1.0 - p) * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - (p - 0.5) / beta) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r} is unknown; pass --loss-type sigmoid or --loss-type ipo")
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {"accuracy": float((chosen_reward > rejected_reward).float().mean()),
               "margin": float((chosen_reward - rejected_reward).mean()),
               "chosen_reward": float(chosen_reward.mean()), "rejected_reward": float(rejected_reward.mean())}
    return losses.mean(), metrics

"""`OnlineDPO`: DPO on preference pairs sampled from the policy as it learns, labelled by the env's reward.

Offline DPO (`rlfl.dpo`) learns from a fixed set of pairs, written by another policy; online DPO (Guo et al.
2024, "Direct Language Model Alignment from Online AI Feedback"; TRL's ``OnlineDPOTrainer``) draws its pairs
from the current policy at every update, so they stay where the policy is. It is `rlfl.agents.GRPO` with the
loss changed, so it keeps the group rollout (the env hands each prompt to ``group_size`` consecutive rows),
the KV-cached actor, the packed batches, rails, callbacks, checkpoints and resume:

- **pairs**: in each group, the completion with the highest reward is *chosen* and the one with the lowest
  *rejected* (with ``group_size=2``, the usual online DPO; larger groups give pairs further apart, as in
  rejection-sampling DPO). The reward is the env's score with PPO's shaping (reward model, AI judge, answer
  checker or callable; no-stop and short penalties), minus ``kl_coef`` x the completion's KL when
  ``kl_penalty="reward"``. Groups whose completions all scored the same say nothing and are left out.
- **labels**: with ``soft_preferences`` (the default) a pair's label is the probability ``sigmoid(r_chosen -
  r_rejected)`` that its chosen side is better, as a Bradley-Terry reward model's scores give it. DPO's loss
  with these labels has the KL-regularised RLHF policy ``ref * exp(r / beta)`` as its optimum, so ``beta``
  holds the policy near the reference the way PPO's KL coefficient does. Hard labels (1: the chosen side
  always wins, ``--no-soft-preferences``, TRL's form) give every pair the same pull however close its
  rewards, and DPO then keeps pushing towards the chosen completions: on the synthetic reviews task the KL
  passed 8 nats within 100k tokens. Soft labels need scores on a log-odds scale (a reward model's; an answer
  checker's 0/1 gives p = 0.73).
- **loss**: `rlfl.preference_loss.preference_loss` of the pairs, the very loss of offline DPO (``loss_type``
  sigmoid or ipo, ``beta``, ``label_smoothing`` for hard labels), with the log-probs of the starting policy
  (or ``--reference``) as the reference; ``kl_penalty="loss"`` adds ``kl_coef`` x the k3 KL per token, as
  GRPO does. A minibatch holds whole pairs.

Logged beside PPO's figures: ``train/dpo_accuracy`` (share of pairs whose chosen completion has the higher
implicit reward ``beta * (log pi - log ref)``), ``train/dpo_margin`` and ``train/kept_groups``.

Example (a group of 4 completions per prompt: its best and worst by reward form the pair; a tied group none):
    >>> preference_pairs(np.array([0.2, 0.9, -0.3, 0.5, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    (array([1]), array([2]))
    >>> from rlfl.agents import OnlineDPO
    >>> model = OnlineDPO("runs/sft", "rlfl/SyntheticReviews-v0", beta=0.12, learning_rate=1e-4)  # doctest: +SKIP
    >>> model.learn(total_timesteps=819_200)  # doctest: +SKIP

``rlfl online-dpo --init-from runs/sft --reward runs/rm --beta 0.12 --learning-rate 1e-4`` runs it against a
reward model with `rlfl.agents.train.train_ppo`'s evaluation, checkpoints and resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rlfl.agents.grpo import GRPO
from rlfl.agents.settings import OnlineDPOSettings

from rlfl.preference_loss import preference_loss


def preference_pairs(rewards: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of each group's best (chosen) and worst (rejected) completion, groups of equal rewards left out.

    Example:
        >>> preference_pairs(np.array([0.1, 0.9, 0.5, 0.5, 0.2, 0.7, 0.3, 0.0]), 4)
        (array([1, 5]), array([0, 7]))
        >>> preference_pairs(np.array([1.0, 1.0, 0.0, 2.0]), 2)
        (array([3]), array([2]))
    """
    groups = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    keep = np.flatnonzero(np.ptp(groups, axis=1) > 1e-9)
    base = keep * group_size
    return base + groups[keep].argmax(axis=1), base + groups[keep].argmin(axis=1)


class OnlineDPO(GRPO):
    """Online DPO for rlfl transformer policies (see the module docstring).

    Takes `PPO`'s arguments; its settings are `rlfl.agents.settings.OnlineDPOSettings` (``group_size``,
    ``loss_type``, ``beta``, ``label_smoothing``, ``soft_preferences`` and PPO's learning rate, epochs,
    minibatch size, KL and reward shaping). ``n_envs`` must be a multiple of ``group_size``.
    """

    settings_class = OnlineDPOSettings
    command = "online-dpo"
    defaults = {"group_size": 2, "kl_coef": 0.0}

    def train(self) -> None:
        """Epochs of the preference loss over each group's chosen and rejected completion."""
        store, _ = self._begin_update()
        rows = store.num_rows
        c = self._completions(store)
        kl_beta = self.kl_ctl.beta
        rewards = c.scores - kl_beta * c.episode_kls if self.kl_penalty == "reward" else c.scores
        chosen, rejected = preference_pairs(rewards, self.group_size)

        device = self.device
        ref_seq = torch.as_tensor(np.where(c.mine, c.ref_logp, 0.0).sum(axis=0), dtype=torch.float32, device=device)
        n_tok = torch.as_tensor(c.mine.sum(axis=0), dtype=torch.float32, device=device).clamp(min=1)
        ref_t = torch.as_tensor(c.ref_logp.reshape(-1), dtype=torch.float32, device=device)
        old_t = torch.as_tensor(c.old_logp.reshape(-1), dtype=torch.float32, device=device)
        chosen_t = torch.as_tensor(chosen, device=device)
        rejected_t = torch.as_tensor(rejected, device=device)
        preferred = None  # hard labels: 1 - label_smoothing
        if self.soft_preferences:  # Bradley-Terry: P(chosen better) = sigmoid of the reward difference
            preferred = torch.sigmoid(torch.as_tensor(rewards[chosen] - rewards[rejected], dtype=torch.float32,
                                                      device=device))
        ipo = self.loss_type == "ipo"

        def dpo_loss(b: Any, logp: torch.Tensor, values: torch.Tensor, log_ratio: torch.Tensor,
                     ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            row = b.cells % rows
            seq = torch.zeros(rows, dtype=logp.dtype, device=device).index_add(0, row, logp)
            ref = ref_seq
            if ipo:  # IPO compares per-token mean log-probs
                seq, ref = seq / n_tok, ref / n_tok
            here = torch.bincount(row, minlength=rows)[chosen_t] > 0  # the pairs of this minibatch
            c_rows, r_rows = chosen_t[here], rejected_t[here]
            loss, m = preference_loss(seq[c_rows], seq[r_rows], ref[c_rows], ref[r_rows], beta=self.beta,
                                      loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                                      preferred=None if preferred is None else preferred[here])
            if self.kl_penalty == "loss" and kl_beta > 0:
                d = ref_t[b.cells] - logp
                loss = loss + kl_beta * (torch.exp(d) - d - 1).mean()  # k3: >= 0, unbiased for KL(policy || ref)
            return loss, {"pg": loss.item(), "dpo_accuracy": m["accuracy"], "dpo_margin": m["margin"]}

        segments = c.segments[np.stack([chosen, rejected], axis=1).reshape(-1)]  # c0, r0, c1, r1, ...
        n_tokens = int((store.seg_n - store.seg_j0)[segments].sum())
        n_minibatches = max(1, min(len(chosen), round(n_tokens / self.batch_size)))
        stats = self._optimize(store, segments, n_minibatches, old_t, dpo_loss, block=2)  # every rank, even with none
        for key in ("dpo_accuracy", "dpo_margin"):
            if stats.get(key):
                self.logger.record(f"train/{key}", float(np.mean(stats[key])))
        kept = np.zeros(rows // self.group_size, dtype=bool)
        kept[chosen // self.group_size] = True
        self._record_groups(store, stats, c, kl_beta, kept)

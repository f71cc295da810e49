"""`GRPO` and `RLOO`: critic-free policy gradients that compare a group of completions of one prompt.

Both are `rlfl.agents.PPO` with two things changed, so they keep its KV-cached rollout, packed training
batches, rails (ratio threshold, NaN stop, ``target_kl``), KL control, callbacks, checkpoints and resume:

- **rollouts**: each rollout resets the vector env with ``options={"group_size": G}``, so every drawn prompt
  goes to G consecutive rows, and steps it until every row has finished ONE completion (rows that finish
  early idle in the batch until the group's longest ends). A rollout is ``n_envs / G`` prompts x G
  completions, every one trained on whole; ``num_timesteps`` counts the rows' steps, as PPO's does. A
  group's prompt is prefilled once into the KV cache, and each training forward computes it once for the
  group's G completions (`rlfl.agents.rollout.Batch`; minibatches hold whole groups): with short answers
  after a longer question (Arithmetic-v0) that is most of the compute of an update.
- **advantages** come from the group instead of a value head: a completion's reward R (the env's score with
  PPO's shaping: normalisation, clip, no-stop and short penalties) against the group's others
  (`group_advantages`): ``grpo`` (R - mean) / std (Shao et al. 2024, DeepSeekMath), ``dr_grpo`` R - mean
  (Liu et al. 2025, "Understanding R1-Zero-Like Training"), ``rloo`` R - the mean of the G - 1 others
  (Ahmadian et al. 2024, "Back to Basics"). Every token of a completion gets its advantage.

The loss per token is PPO's clipped surrogate with an asymmetric clip ``[1 - clip_range, 1 +
clip_range_high]`` (DAPO's clip-higher), plus, with ``kl_penalty="loss"``, ``kl_coef`` times the k3 estimate
of KL(policy || reference) at that token (GRPO's form); with ``kl_penalty="reward"`` the completion's KL
times ``kl_coef`` is subtracted from R before the baseline (RLOO's form). ``loss_agg`` averages the token
losses as GRPO (per completion, then over completions: long completions weigh less per token), DAPO (over
all tokens) or Dr. GRPO (a sum over a constant, completions x max_new_tokens). ``drop_equal_groups`` leaves
groups whose completions all scored the same out of the update (DAPO's dynamic sampling, without the
re-sampling). ``adaptive_kl`` holds the KL per completion near ``kl_target`` as in PPO.

The policy's value head is kept (it is part of the checkpoint format) but never trained. Checkpoints are
stage ``ppo`` checkpoints (an RL-tuned policy) whose ``train`` record names the algorithm.

Example:
    >>> import tempfile, rlfl.envs, rlfl.checkpoint, rlfl.model, rlfl.tokenizer
    >>> tok, d = rlfl.tokenizer.byte_tokenizer(), tempfile.mkdtemp()    # a tiny random policy to start from
    >>> config = rlfl.model.GPTConfig(vocab_size=tok.n_vocab, block_size=96, n_layer=1, n_head=2, n_embd=32)
    >>> rlfl.checkpoint.save_checkpoint(d, rlfl.model.GPT(config), tok, stage="sft")
    >>> model = GRPO(d, "rlfl/SyntheticReviews-v0", n_envs=8, group_size=4, env_kwargs={"max_new_tokens": 8}, seed=0)
    >>> _ = model.learn(total_timesteps=64)
    >>> model.n_steps, model.num_timesteps   # one completion per row: max_new_tokens steps at the most
    (8, 64)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from rlfl.agents.distributed import mean_count
from rlfl.agents.kl import kl_per_token
from rlfl.agents.ppo import PPO
from rlfl.agents.settings import GRPOSettings
from rlfl.agents.vec_env import TextVecEnv


class Completions(NamedTuple):
    """A group rollout's completions, one per row: ``segments`` (the rows' segments in the rollout store, in row
    order), ``(steps, rows)`` grids of the reference's and the rollout policy's log-probs of the sampled tokens,
    ``mine`` (the grid cells of each row's completion) and the per-token KL there, and per row the completion's
    KL, shaped score (the env's score with PPO's shaping) and length."""

    segments: np.ndarray
    ref_logp: np.ndarray
    old_logp: np.ndarray
    mine: np.ndarray
    kl_tok: np.ndarray
    episode_kls: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray


def group_advantages(rewards: np.ndarray, group_size: int, kind: str = "grpo") -> np.ndarray:
    """Each completion's advantage against its group (consecutive runs of ``group_size`` rewards).

    ``grpo``: (r - group mean) / (group std + 1e-4), the std of the G rewards with G - 1 in its denominator;
    ``dr_grpo``: r - group mean; ``rloo``: r - the mean of the group's other G - 1 rewards.

    Example:
        >>> group_advantages(np.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), 3, "rloo").tolist()
        [1.0, -0.5, -0.5, -2.0, 1.0, 1.0]
        >>> group_advantages(np.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), 3, "dr_grpo").round(4).tolist()
        [0.6667, -0.3333, -0.3333, -1.3333, 0.6667, 0.6667]
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    if kind == "grpo":
        adv = centred / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)
    elif kind == "dr_grpo":
        adv = centred
    elif kind == "rloo":
        adv = centred * group_size / (group_size - 1)
    else:
        raise ValueError(f"advantage {kind!r} is not one of grpo, dr_grpo, rloo")
    return adv.reshape(-1)


class GRPO(PPO):
    """Group-relative policy optimisation for rlfl transformer policies (see the module docstring).

    Takes `PPO`'s arguments; its settings are `rlfl.agents.settings.GRPOSettings` (PPO's plus ``group_size``,
    ``advantage``, ``loss_agg``, ``clip_range_high``, ``kl_penalty``, ``drop_equal_groups``). ``n_envs``
    must be a multiple of ``group_size``.
    """

    settings_class = GRPOSettings
    command = "grpo"
    defaults: dict[str, Any] = {}  # a subclass's own defaults for settings the caller leaves unset

    def __init__(self, policy: Any, env: Any, **kwargs: Any) -> None:
        super().__init__(policy, env, **{**self.defaults, **kwargs})

    def _check_env(self, env: TextVecEnv) -> None:
        super()._check_env(env)
        if env.num_envs % self.group_size:
            raise ValueError(f"n_envs={env.num_envs} is not a multiple of group_size={self.group_size}: every prompt "
                             f"goes to group_size rows; pass n_envs={env.num_envs // self.group_size * self.group_size or self.group_size}")
        self.n_steps = env.max_new_tokens  # one completion per row, and none is longer

    def collect_rollouts(self, env: TextVecEnv, callback: Any, rollout_buffer: Any, n_rollout_steps: int) -> bool:
        """Reset the env into groups of ``group_size`` rows per prompt; step until every row has one completion."""
        env.set_options({"group_size": self.group_size})
        self._last_obs = env.reset()
        self._last_episode_starts = np.ones(env.num_envs, dtype=bool)
        self.policy.set_training_mode(False)
        with self._autocast():
            return self._collect(env, callback, env.max_new_tokens, first_episodes=True)

    def _completions(self, store: Any) -> Completions:
        """Every row's completion of the last rollout with its log-probs, KL and shaped score."""
        rows = store.num_rows
        first = np.flatnonzero(store.seg_t0 == 0)  # the segment that began at the reset, in row order
        first = first[np.argsort(store.seg_row[first])]
        assert len(first) == rows and (store.seg_row[first] == np.arange(rows)).all()
        ref_logp, old_logp, _ = self._forward_pass(store, first)
        t_end = store.dones.argmax(axis=0)
        assert store.dones[t_end, np.arange(rows)].all(), "a row's completion did not finish in the rollout"
        mine = np.arange(store.steps)[:, None] <= t_end[None, :]  # the (step, row) cells of those completions
        kl_tok = kl_per_token(torch.from_numpy(old_logp), torch.from_numpy(ref_logp), self.kl_estimator).numpy()
        kl_tok = np.where(mine, kl_tok, 0.0)
        scores = np.where(mine, self._shaped_rewards(store), 0.0).sum(axis=0)
        return Completions(first, ref_logp, old_logp, mine, kl_tok, kl_tok.sum(axis=0), scores,
                           store.lengths[t_end, np.arange(rows)])

    def _record_groups(self, store: Any, stats: dict[str, Any], c: Completions, beta: float, keep: np.ndarray) -> None:
        """Log an update of a group algorithm, and move the adaptive KL coefficient."""
        self.kl_ctl.update(*mean_count(c.episode_kls.tolist()))  # all ranks' completions under torchrun
        self._record(store, stats, clip_range=self.clip_range(self._current_progress_remaining), beta=beta,
                     kl_tok=c.kl_tok[c.mine], episode_kls=c.episode_kls.tolist())
        record = self.logger.record
        record("train/kept_groups", float(keep.mean()))
        record("rollout/group_reward_std", float(c.scores.reshape(-1, self.group_size).std(axis=1, ddof=1).mean()))
        record("rollout/completion_length", float(c.lengths.mean()))

    def train(self) -> None:
        """Epochs of the clipped surrogate over every row's completion, with group-relative advantages."""
        store, low = self._begin_update()
        high = low if self.clip_range_high is None else float(self.clip_range_high)
        rows = store.num_rows
        c = self._completions(store)
        beta = self.kl_ctl.beta
        rewards = c.scores - beta * c.episode_kls if self.kl_penalty == "reward" else c.scores
        advantages = group_advantages(rewards, self.group_size, self.advantage)
        groups = c.scores.reshape(-1, self.group_size)
        keep = np.ones(rows, dtype=bool)
        if self.drop_equal_groups:
            keep = np.repeat(np.ptp(groups, axis=1) > 1e-9, self.group_size)

        device = self.device
        adv_t = torch.as_tensor(advantages, dtype=torch.float32, device=device)
        ref_t = torch.as_tensor(c.ref_logp.reshape(-1), dtype=torch.float32, device=device)
        old_t = torch.as_tensor(c.old_logp.reshape(-1), dtype=torch.float32, device=device)
        max_new = self.n_steps

        def grpo_loss(b: Any, logp: torch.Tensor, values: torch.Tensor, log_ratio: torch.Tensor,
                      ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            row = b.cells % rows
            adv = adv_t[row]
            per_token = torch.max(-adv * ratio, -adv * ratio.clamp(1 - low, 1 + high))
            if self.kl_penalty == "loss":
                d = ref_t[b.cells] - logp
                per_token = per_token + beta * (torch.exp(d) - d - 1)  # k3: >= 0, unbiased for KL(policy || ref)
            counts = torch.bincount(row, minlength=rows)
            present = counts > 0
            if self.loss_agg == "dapo":
                loss = per_token.mean()
            elif self.loss_agg == "dr_grpo":
                loss = per_token.sum() / (int(present.sum()) * max_new)
            else:
                sums = torch.zeros(rows, dtype=per_token.dtype, device=device).index_add(0, row, per_token)
                loss = (sums[present] / counts[present]).mean()
            clipped = ((ratio < 1 - low) | (ratio > 1 + high)).float().mean().item()
            return loss, {"pg": loss.item(), "clip": clipped}

        segments = c.segments[keep]
        n_tokens = int((store.seg_n - store.seg_j0)[segments].sum())
        n_minibatches = max(1, round(n_tokens / self.batch_size))
        # whole groups per minibatch: a group's completions share one forward of their prompt (`RolloutStore.batch`)
        stats = self._optimize(store, segments, n_minibatches, old_t, grpo_loss,
                               block=self.group_size)  # on every rank, even with none
        self._record_groups(store, stats, c, beta, keep.reshape(-1, self.group_size)[:, 0])


class RLOO(GRPO):
    """REINFORCE leave-one-out: `GRPO` whose defaults are RLOO's (leave-one-out baseline, KL in the reward).

    ``RLOO(policy, env, group_size=4)`` is ``GRPO(policy, env, group_size=4, advantage="rloo",
    kl_penalty="reward")``; any setting passed explicitly wins.
    """

    command = "rloo"
    defaults = {"advantage": "rloo", "kl_penalty": "reward"}

"""rlfl.agents: PPO agents and transformer policies on stable-baselines3 (installed as ``rlfl.agents``).

- `TransformerPolicy`: an rlfl GPT checkpoint as an SB3 actor-critic policy (LM head = action logits, plus
  a value head and a frozen reference), usable by ``stable_baselines3.PPO``/``A2C`` as is;
- `PPO`: SB3's on-policy algorithm with batched KV-cache rollouts through the text vector env, one
  forward per sequence in training, a KL penalty to the reference (fixed or adaptive), token-level GAE;
- `GRPO` / `RLOO`: the critic-free variants on the same rollout and training pieces: G completions per
  prompt, group-relative advantages (GRPO, Dr. GRPO, leave-one-out), DAPO's loss options;
- `OnlineDPO`: DPO's loss on each group's best and worst completion, sampled from the policy as it learns;
- `LRSchedule`: constant, linear or cosine learning-rate decay over the run (``learning_rate=``);
- `TextVecEnv` / `make_text_vec_env`: the rlfl text vector env as an SB3 ``VecEnv``.

Import it as ``rlfl.agents``, never as ``agents``.

Example:
    >>> from rlfl.agents import PPO, TransformerPolicy
    >>> PPO.policy_aliases["TransformerPolicy"] is TransformerPolicy
    True
"""

from rlfl.agents.grpo import GRPO, RLOO
from rlfl.agents.kl import AdaptiveKL, FixedKL, kl_per_token
from rlfl.agents.online_dpo import OnlineDPO
from rlfl.agents.policy import TransformerPolicy
from rlfl.agents.ppo import PPO
from rlfl.agents.schedules import LRSchedule
from rlfl.agents.settings import GRPOSettings, OnlineDPOSettings, PPOSettings
from rlfl.agents.vec_env import TextVecEnv, make_text_vec_env

__all__ = ["PPO", "PPOSettings", "GRPO", "RLOO", "GRPOSettings", "OnlineDPO", "OnlineDPOSettings", "AdaptiveKL", "FixedKL",
           "LRSchedule", "TextVecEnv", "TransformerPolicy", "kl_per_token", "make_text_vec_env"]

"""rlfl.envs: Gymnasium environments for text generation (installed as ``rlfl.envs``).

Importing this package registers the built-in ids ``rlfl/SyntheticReviews-v0``, ``rlfl/ImdbPositive-v0``,
``rlfl/Helpful-v0``, and the verifiable-reward ``rlfl/Arithmetic-v0`` and ``rlfl/GSM8K-v0`` with Gymnasium
(nothing is loaded until ``gymnasium.make``). The environment classes and the verifiable problem sets
(`rlfl.envs.verifiable`) are imported on first use, so ``import rlfl.envs`` stays light. Import it as
``rlfl.envs``, never as ``envs``.

Example:
    >>> import gymnasium
    >>> import rlfl.envs
    >>> env = gymnasium.make("rlfl/SyntheticReviews-v0")
    >>> obs, info = env.reset(seed=0)
    >>> env.unwrapped.gold_judge.score(["The food was"], [" great."]).tolist()
    [0.75]
"""

from __future__ import annotations

from typing import Any

from rlfl.envs.prompts import (PromptList, PromptSource, as_prompt_source, hh_prompts, imdb_prompts,
                               synthetic_review_prompts)
from rlfl.envs.registry import BUILTIN_IDS, build_reward_env, register_builtin_envs, register_reward_env
from rlfl.envs.rewards import (CallableReward, Clipped, GoldSentiment, RewardError, RewardSource, RunningMoments,
                               RunningNormalizer, WeightedSum, as_reward_source, check_scores, reward_model_source)

__all__ = [
    "AnswerReward", "ArithmeticProblems", "BUILTIN_IDS", "CallableReward", "Clipped", "GSM8KProblems", "GoldSentiment",
    "PromptList", "PromptSource", "RewardError", "RewardSource", "RunningMoments", "RunningNormalizer",
    "TextGenerationEnv", "TextGenerationVectorEnv", "WeightedSum", "arithmetic_answer", "as_prompt_source",
    "as_reward_source", "build_reward_env", "check_scores", "exact_match", "hh_prompts", "imdb_prompts",
    "register_reward_env", "reward_model_source", "synthetic_review_prompts", "write_arithmetic_sft",
]

register_builtin_envs()

_LAZY = {"TextGenerationEnv": "rlfl.envs.text_env", "TextGenerationVectorEnv": "rlfl.envs.vector_env",
         **{name: "rlfl.envs.verifiable" for name in ("AnswerReward", "ArithmeticProblems", "GSM8KProblems",
                                                      "arithmetic_answer", "exact_match", "write_arithmetic_sft")}}


def __getattr__(name: str) -> Any:
    # PEP 562: the env classes import rlfl.tokenizer / rlfl.chat_template; load them (and the verifiable
    # problem sets, which only the verifiable envs need) when first asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlfl.envs' has no attribute {name!r}")

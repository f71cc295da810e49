"""The rlfl text vector env seen through stable-baselines3's `VecEnv` interface.

SB3 algorithms step a ``stable_baselines3.common.vec_env.VecEnv`` (4-tuple steps, a list of info dicts,
autoreset with ``info["terminal_observation"]``); rlfl's `TextGenerationVectorEnv` is a Gymnasium
``VectorEnv`` (5-tuple steps, one dict of arrays). `TextVecEnv` adapts the one to the other without copying
the batch: one numpy step of N rows stays one step, and the finished rows' rewards stay one reward call.
Both speak SAME_STEP autoreset, so SB3's convention (the returned observation of a finished row is already
the next episode's, the final one is in ``terminal_observation``) holds as is.

Each finished row's info dict carries ``terminal_observation``, ``episode`` (``{"r", "l", "t"}``, what
SB3's ``Monitor`` would write, so ``rollout/ep_rew_mean`` is logged), and rlfl's ``prompt``,
``completion``, ``score`` and ``stopped`` (the policy emitted a stop token; False: it ran into
``max_new_tokens``). ``TimeLimit.truncated`` is deliberately never set: running out of tokens ends a
completion for real (the reward was paid on its last token), so bootstrapping a value past it, which SB3
does for time-limit truncations, would add a reward that does not exist.

Example:
    >>> import gymnasium, rlfl.envs
    >>> venv = gymnasium.make_vec("rlfl/SyntheticReviews-v0", num_envs=4, vectorization_mode="vector_entry_point")
    >>> env = TextVecEnv(venv)
    >>> obs = env.reset()
    >>> obs["input_ids"].shape, env.num_envs
    ((4, 80), 4)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from stable_baselines3.common.vec_env import VecEnv


def _unwrapped(env: Any) -> Any:
    # gymnasium.make_vec may return the env itself or wrap it; the text env is what has the tokenizer
    return getattr(env, "unwrapped", env)


class TextVecEnv(VecEnv):
    """An SB3 ``VecEnv`` over one rlfl ``TextGenerationVectorEnv`` (N rows stepped as one numpy batch).

    ``text_env`` is the Gymnasium vector env (``gymnasium.make_vec(id, num_envs=N,
    vectorization_mode="vector_entry_point")`` or a ``TextGenerationVectorEnv``); ``tokenizer``,
    ``stop_tokens`` and ``gold_judge`` are read from it.
    """

    def __init__(self, text_env: Any) -> None:
        from rlfl.envs.vector_env import TextGenerationVectorEnv

        inner = _unwrapped(text_env)
        if not isinstance(inner, TextGenerationVectorEnv):
            raise ValueError(f"TextVecEnv wraps an rlfl TextGenerationVectorEnv, got {type(inner).__name__}; build "
                             "one with gymnasium.make_vec(id, num_envs=N, vectorization_mode='vector_entry_point')")
        self.text_env = text_env
        self.inner = inner  # set before VecEnv.__init__, which reads render_mode through get_attr
        super().__init__(inner.num_envs, inner.single_observation_space, inner.single_action_space)
        self._actions: np.ndarray | None = None
        self._episode_start = np.full(self.num_envs, time.time())
        self.reset_infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]

    # ------------------------------------------------------------------------------ what agents read
    @property
    def tokenizer(self) -> Any:
        """The env's rlfl Tokenizer (the policy's must equal it)."""
        return self.inner.tokenizer

    @property
    def gold_judge(self) -> Any:
        """The env's gold judge (a reward source) for evaluation, or None."""
        return getattr(self.inner, "gold_judge", None)

    @property
    def stop_tokens(self) -> list[int]:
        """Token ids that end an episode."""
        return self.inner.stop_tokens

    @property
    def max_new_tokens(self) -> int:
        """Tokens a completion may have at most."""
        return self.inner.max_new_tokens

    @property
    def min_new_tokens(self) -> int:
        """Tokens a completion has before a stop token may end it (0: a stop token may come first)."""
        return int(self.inner.min_new_tokens)

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens an observation holds at most (longer prompts are left-truncated)."""
        return self.inner.max_prompt_tokens

    def completion_lengths(self) -> np.ndarray:
        """Tokens generated so far in every row's episode in progress."""
        return self.inner.completion_lengths

    # ------------------------------------------------------------------------------ SB3 VecEnv API
    def reset(self) -> dict[str, np.ndarray]:
        """Start a fresh episode in every row (seeded by ``seed()`` when one was set)."""
        seed = self._seeds[0] if self._seeds else None
        options = self._options[0] if self._options and self._options[0] else None
        obs, info = self.text_env.reset(seed=seed, options=options)
        prompts = info.get("prompts")
        self.reset_infos = [{"prompt": str(prompts[i])} if prompts is not None else {} for i in range(self.num_envs)]
        self._episode_start[:] = time.time()
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(); use env.step(actions)")
        obs, rewards, terminated, truncated, info = self.text_env.step(self._actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        now = time.time()
        for i in np.flatnonzero(dones):
            infos[i] = {
                "terminal_observation": info["final_obs"][i],
                "episode": {"r": float(info["episode_reward"][i]), "l": int(info["episode_length"][i]),
                            "t": round(now - self._episode_start[i], 6)},
                "prompt": str(info["prompts"][i]),
                "completion": str(info["completions"][i]),
                "score": float(info["scores"][i]),
                "stopped": bool(terminated[i]),
            }
            self._episode_start[i] = now
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.text_env.close()

    def _rows(self, indices: Any) -> Sequence[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        value = getattr(self.inner, attr_name)
        return [value for _ in self._rows(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        if len(self._rows(indices)) != self.num_envs:
            raise ValueError("TextVecEnv rows share one env object; set_attr applies to all rows (indices=None)")
        setattr(self.inner, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        result = getattr(self.inner, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._rows(indices)]

    def env_is_wrapped(self, wrapper_class: type[gymnasium.Wrapper], indices: Any = None) -> list[bool]:
        return [False for _ in self._rows(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]


def make_text_vec_env(env_id: str, n_envs: int = 8, **env_kwargs: Any) -> TextVecEnv:
    """A registered text env id (e.g. "rlfl/SyntheticReviews-v0") as an SB3 VecEnv of ``n_envs`` rows.

    Example:
        >>> import rlfl.envs
        >>> make_text_vec_env("rlfl/SyntheticReviews-v0", n_envs=2, max_new_tokens=8).max_new_tokens
        8
    """
    import rlfl.envs  # noqa: F401  (registers the built-in ids)

    if env_id not in gymnasium.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"env id {env_id!r} is not registered{hint}; register it with "
                         "rlfl.envs.register_reward_env or import the module that does")
    if gymnasium.registry[env_id].vector_entry_point is None:
        raise ValueError(f"env id {env_id!r} has no vector entry point; register it with vector=True")
    venv = gymnasium.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **env_kwargs)
    return TextVecEnv(venv)

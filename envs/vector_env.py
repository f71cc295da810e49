"""N text-generation episodes stepped at once with numpy, finished completions scored in ONE reward call.

`TextGenerationVectorEnv` is a native `gymnasium.vector.VectorEnv` (not N copies of the single env behind
a `SyncVectorEnv`): all rows live in one (N, L) int64 token buffer and one mask, a step is a handful of
numpy operations over the whole batch, and Python only loops over the rows that finish in that step (to
decode their text). Every completion that finishes in a step goes to the reward source in a single
``score(prompts, completions)`` call: a reward model is a network, and one batched forward beats N small
ones by a wide margin.

**Autoreset: SAME_STEP** (``metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP``).
When row i finishes in a step, that step returns the row's terminal reward and ``terminated/truncated``,
its final observation in ``info["final_obs"][i]`` (a dict; ``info["_final_obs"][i]`` is True), and in the
returned observation row i already holds the *next* episode's prompt. There is no dead "reset step"
(Gymnasium's NEXT_STEP mode), so every step of every row is a real token: a PPO rollout of T steps holds
exactly N*T tokens, and an agent that keeps a KV cache clears the rows flagged in ``info["reset_rows"]``.

``info`` keys (arrays of length N; entries of rows that did not finish are ""/0/None):
    ``prompts``, ``completions``     text of each finished row's prompt and completion (stop token excluded)
    ``scores``                       the reward source's raw score
    ``episode_reward``, ``episode_length``   the finished episode's return and number of tokens
    ``final_obs``, ``_final_obs``    Gymnasium's SAME_STEP convention (object array of dicts, and its mask)
    ``reset_rows``                   bool: the row started a new episode (all True after ``reset()``)
``reset()``'s info has ``prompts`` (every row's prompt) and ``reset_rows``. ``current_prompts`` and
``completion_lengths`` give the state of every row at any time.

Seeding: ``reset(seed=s)`` reseeds ``self.np_random``; with the same seed and the same actions every
prompt draw (initial and autoreset) repeats. ``reset(options={"prompts": [...]})`` forces one prompt per
row for the first episodes (later autoresets draw from the prompt source); ``reset(options={"group_size": G})``
draws ``num_envs / G`` prompts and hands each to G consecutive rows (rows ``g*G`` to ``g*G + G - 1``), the
groups that critic-free algorithms (GRPO, RLOO) compare completions within.

If the reward source raises (or returns NaN), the error propagates and the batch is mid-step: call
``reset()`` before stepping again.

Example:
    >>> import numpy as np
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> def length(prompt, completion):   # a plain function is a reward source too
    ...     return float(len(completion))
    >>> env = TextGenerationVectorEnv(byte_tokenizer(), ["a", "b"], length, num_envs=3, max_new_tokens=2)
    >>> obs, info = env.reset(seed=0)
    >>> obs["input_ids"].shape
    (3, 34)
    >>> _ = env.step(np.array([120, 120, 256]))   # row 2 emits <|endoftext|>: it finishes with ""
    >>> obs, rewards, terminated, truncated, info = env.step(np.array([121, 121, 120]))
    >>> rewards.tolist(), truncated.tolist(), info["completions"].tolist()
    ([2.0, 2.0, 0.0], [True, True, False], ['xy', 'xy', ''])
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rlfl.envs.text_env import EpisodeBatch, EpisodeFacts, check_render_mode, forced_prompts, write_human
from rlfl.tokenizer import Tokenizer


class TextGenerationVectorEnv(EpisodeFacts, VectorEnv):
    """``num_envs`` text-generation episodes in one numpy batch, SAME_STEP autoreset, batched reward calls.

    Same arguments as `rlfl.envs.text_env.TextGenerationEnv` (its episode options) plus ``num_envs``; the observation of each
    row is the single env's (left-padded ``input_ids`` and ``attention_mask`` of length
    ``max_prompt_tokens + max_new_tokens``), stacked to (num_envs, L). Actions: one token id per row.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompts: Any,
        reward: Any,
        *,
        num_envs: int = 8,
        render_mode: str | None = None,
        **episode_options: Any,
    ) -> None:
        self._batch = EpisodeBatch(tokenizer, prompts, reward, num_rows=num_envs, **episode_options)
        self.tokenizer = tokenizer
        self.reward = self._batch.reward  # the adapted source
        self.num_envs = int(num_envs)
        self.single_observation_space = self._batch.single_observation_space()
        self.single_action_space = spaces.Discrete(self._batch.n_vocab)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = check_render_mode(render_mode)
        self._all_rows = np.arange(self.num_envs)
        self._running = False

    # ------------------------------------------------------------------------------ state for agents
    @property
    def current_prompts(self) -> list[str]:
        """The prompt text of every row's episode in progress."""
        return [str(p) for p in self._batch.prompts]

    @property
    def completion_lengths(self) -> np.ndarray:
        """Tokens generated so far in every row's episode in progress (a copy)."""
        return self._batch.n_new.copy()

    # ------------------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new episode in every row (prompts drawn, or ``options["prompts"]``, one per row)."""
        super().reset(seed=seed)
        forced = forced_prompts(options, "prompts", self.num_envs, also=("group_size",))
        group = (options or {}).get("group_size")
        if group is not None:
            if forced is not None:
                raise ValueError("reset(options=...): pass 'prompts' or 'group_size', not both")
            if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1 or self.num_envs % group:
                raise ValueError(f"reset(options={{'group_size': {group!r}}}): must be a whole number >= 1 that divides "
                                 f"num_envs={self.num_envs}")
            drawn, _, _ = self._batch.pool.draw(self.np_random, self.num_envs // int(group))
            forced = [text for text in drawn for _ in range(int(group))]
        self._batch.start(self._all_rows, self.np_random, forced)
        self._running = True
        info = {"prompts": self._batch.prompts.copy(), "reset_rows": np.ones(self.num_envs, dtype=bool)}
        return self._batch.observation(), info

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Append one token per row; score every row that finished in ONE reward call; restart those rows."""
        if not self._running:
            raise gymnasium.error.ResetNeeded("step() called before reset(); call reset()")
        b = self._batch
        actions = b.check_actions(actions)
        terminated, truncated = b.push(actions)
        try:
            return self._after_push(terminated, truncated)
        except BaseException:  # a raising reward source or shaping: every row stays as it was before the step
            b.unpush()
            raise

    def _after_push(self, terminated: np.ndarray, truncated: np.ndarray
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        b = self._batch
        rewards = b.shaping()
        done = terminated | truncated
        n = self.num_envs
        info: dict[str, Any] = {
            "prompts": np.full(n, "", dtype=object),
            "completions": np.full(n, "", dtype=object),
            "scores": np.zeros(n),
            "episode_reward": np.zeros(n),
            "episode_length": np.zeros(n, dtype=np.int64),
            "final_obs": np.full(n, None, dtype=object),
            "_final_obs": done.copy(),
            "reset_rows": done.copy(),
        }
        rows = np.flatnonzero(done)
        if rows.size:
            completions, scores = b.finish(rows, terminated[rows])
            rewards[rows] += scores
            info["prompts"][rows] = b.prompts[rows]
            info["completions"][rows] = completions
            info["scores"][rows] = scores
            info["episode_reward"][rows] = b.returns[rows] + rewards[rows]
            info["episode_length"][rows] = b.n_new[rows]
            for r in rows:
                info["final_obs"][r] = b.observation(r)
            if self.render_mode == "human":
                for r in rows:
                    write_human(b.render_text(int(r)))
        b.returns += rewards
        if rows.size:
            b.start(rows, self.np_random)
        return b.observation(), rewards, terminated, truncated, info

    def render(self) -> tuple[str, ...] | None:
        """Every row's prompt and completion so far ("ansi": returned; "human": written to stdout)."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'human'")
            return None
        texts = tuple(self._batch.render_text(r) for r in range(self.num_envs))
        if self.render_mode == "ansi":
            return texts
        write_human("\n".join(texts))
        return None

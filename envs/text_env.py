"""Text generation as a Gymnasium environment: one episode is one completion of one prompt.

An episode draws a prompt from a prompt source, the agent emits one token per step (the action is a token
id), and the episode ends when the agent emits a stop token (``terminated``) or has written
``max_new_tokens`` tokens (``truncated``). Two options change when it ends, both remedies for completions
that collapse to nothing under a reward that likes short text: ``min_new_tokens=N`` (a stop token among the
first N tokens does not end the episode: it stays in the completion as an ordinary token; `rlfl.agents.PPO`
goes further and never samples one there, by banning the stop tokens' logits) and ``stop_tokens=[]`` (no
stop token at all: every episode runs exactly ``max_new_tokens``, the fixed-length episodes of the classic
sentiment task). Only then does the reward source score the finished completion
(the decoded text, stop token excluded); every earlier step pays 0, unless a ``reward_shaping`` callable
adds a per-token term.

The observation is ``Dict(input_ids, attention_mask)``, two int64 vectors of fixed length
``L = max_prompt_tokens + max_new_tokens``, **left-padded**: the newest token always sits at index
``L - 1`` and everything before the prompt is ``<|pad|>`` with mask 0. Left padding is what a decoder
wants: the next-token logits are always read at the last position, and a batch of rows with different
prompt lengths needs no per-row gather. Example with L = 8, prompt "hi" (2 tokens) after one step::

    input_ids      = [pad, pad, pad, pad, pad, 'h', 'i', tok1]
    attention_mask = [  0,   0,   0,   0,   0,   1,   1,    1]

Prompts longer than ``max_prompt_tokens`` are **left-truncated**: we keep their *last* tokens (the ones
nearest the completion, which matter most for what comes next) and log a warning (once per prompt text
for sampled prompts; one summary line for a prompt list). With ``chat_template=True`` each prompt is
wrapped as a user turn, ``<|user|>text<|end|><|assistant|>``, before truncation, so the kept tail always
ends with ``<|assistant|>``; a long prompt can lose its ``<|user|>`` opener. An empty prompt becomes the
single token ``<|endoftext|>`` (how GPT-2 starts unconditional text), so a row never has zero real tokens.

`EpisodeBatch` is the engine: N episodes in flight in one (N, L) numpy buffer. `TextGenerationEnv` is it
with N = 1; `rlfl.envs.vector_env.TextGenerationVectorEnv` is it with N rows and autoreset. One engine
means the two envs cannot drift apart (a test replays vector-env episodes in the single env).

Example:
    >>> import numpy as np
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> class Length:
    ...     def score(self, prompts, completions):
    ...         return np.array([len(c) for c in completions], dtype=float)
    >>> env = TextGenerationEnv(byte_tokenizer(), ["Hi"], Length(), max_new_tokens=3, max_prompt_tokens=4)
    >>> obs, info = env.reset(seed=0)
    >>> obs["input_ids"].tolist(), obs["attention_mask"].tolist()
    ([257, 257, 257, 257, 257, 72, 105], [0, 0, 0, 0, 0, 1, 1])
    >>> for t in b"yo!":
    ...     obs, reward, terminated, truncated, info = env.step(t)
    >>> reward, terminated, truncated, info["completion"]
    (3.0, False, True, 'yo!')
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from rlfl.chat_template import chat_prompt, stop_tokens
from rlfl.envs.prompts import PromptList
from rlfl.envs.rewards import as_reward_source, check_scores
from rlfl.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# reward_shaping(prompt_text, completion_ids_so_far) -> float, called after every token of every row.
RewardShaping = Callable[[str, np.ndarray], float]

_TEXT_IN_LOGS = 80  # characters of a prompt quoted in a warning
_CACHE_LIMIT = 100_000  # encoded sampled prompts kept (and warned-about texts); cleared when full
RENDER_MODES = ("ansi", "human")


# ---------------------------------------------------------------------------------------------- helpers
def default_stop_tokens(tokenizer: Tokenizer) -> list[int]:
    """The end-of-text token and, for a tokenizer that can chat, its end-of-turn token (see
    `rlfl.chat_template.stop_tokens`)."""
    return list(stop_tokens(tokenizer))


def _short(text: str) -> str:
    """A text quoted on one line (repr escapes newlines), cut to a readable length."""
    if len(text) > _TEXT_IN_LOGS:
        text = text[: _TEXT_IN_LOGS - 3] + "..."
    return repr(text)


# ----------------------------------------------------------------------------------------- prompt pool
class PromptPool:
    """The prompts of an env, encoded, left-padded to ``max_prompt_tokens`` and drawn with the env's RNG.

    ``prompts`` is either a sequence of strings (encoded once, up front, into one (M, P) array, so a reset
    is a numpy gather: tiktoken would otherwise be the slowest part of stepping), or any object with
    ``sample(np_random) -> str`` (custom distributions, endless generators); sampled texts are encoded on
    first sight and cached. An object with ``sample`` is sampled even if it is also a sequence (its
    distribution may not be uniform), except `rlfl.envs.prompts.PromptList`, which draws uniformly from
    its texts just as a list does and so gets the pre-encoded path.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompts: Any, *, max_prompt_tokens: int, chat_template: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.chat_template = chat_template
        self._cache: dict[str, tuple[np.ndarray, int]] = {}
        self._warned: set[str] = set()
        self.sampler = None  # a prompt source with sample(np_random) -> str, when there is no list
        self.texts: list[str] | None = None
        if type(prompts) is PromptList:
            prompts = prompts.texts
        elif callable(getattr(prompts, "sample", None)):
            self.sampler = prompts
            return
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or not hasattr(prompts, "__getitem__"):
            raise ValueError(
                f"prompts: expected a list of strings or an object with sample(np_random) -> str, got "
                f"{type(prompts).__name__}" + ("; wrap a single prompt in a list" if isinstance(prompts, str) else "")
            )
        texts = list(prompts)
        if not texts:
            raise ValueError("prompts: the list is empty; pass at least one prompt string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"prompts[{i}]: expected a string, got {type(t).__name__}")
        self.texts = texts
        encoded = [self._encode(t) for t in texts] if chat_template else tokenizer.encode_prompts(texts)
        self.ids, self.lengths, cut = self._pad(encoded)
        if cut.size:
            i = int(cut[0])
            logger.warning(
                "%d of %d prompts are longer than max_prompt_tokens=%d and are left-truncated (their last %d "
                "tokens are kept); e.g. prompts[%d] %s has %d tokens. Raise max_prompt_tokens to keep them whole.",
                cut.size, len(texts), max_prompt_tokens, max_prompt_tokens, i, _short(texts[i]), len(encoded[i]),
            )

    def _encode(self, text: str) -> list[int]:
        if self.chat_template:
            return chat_prompt(self.tokenizer, [{"role": "user", "content": text}])
        return self.tokenizer.encode_prompt(text)

    def _pad(self, encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M, P) left-padded ids, (M,) kept lengths, and the indices of prompts that were cut."""
        p = self.max_prompt_tokens
        ids = np.full((len(encoded), p), self.tokenizer.pad_id, dtype=np.int64)
        full = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        for row, e in enumerate(encoded):
            kept = e[-p:]
            ids[row, p - len(kept):] = kept
        return ids, np.minimum(full, p), np.flatnonzero(full > p)

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """One prompt text as a (P,) left-padded row and its kept length (cached; warns once when cut)."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        if not isinstance(text, str):
            raise ValueError(f"prompt: expected a string, got {type(text).__name__}")
        ids = self._encode(text)
        if len(ids) > self.max_prompt_tokens and text not in self._warned:
            if len(self._warned) >= _CACHE_LIMIT:
                self._warned.clear()
            self._warned.add(text)
            logger.warning(
                "prompt %s has %d tokens, more than max_prompt_tokens=%d; it is left-truncated (the last %d "
                "tokens are kept). Raise max_prompt_tokens to keep it whole.",
                _short(text), len(ids), self.max_prompt_tokens, self.max_prompt_tokens,
            )
        row, lengths, _ = self._pad([ids])
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[text] = hit = (row[0], int(lengths[0]))
        return hit

    def draw(self, rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``n`` prompts: their texts, (n, P) left-padded ids and (n,) lengths."""
        if self.texts is not None:
            idx = rng.integers(len(self.texts), size=n)
            return [self.texts[i] for i in idx], self.ids[idx], self.lengths[idx]
        texts = [self.sampler.sample(rng) for _ in range(n)]
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(
                    f"prompt source {type(self.sampler).__name__}.sample() returned {type(t).__name__}; it must return str"
                )
        return self.encode_many(texts)

    def encode_many(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Given texts as (texts, (n, P) ids, (n,) lengths), like `draw` but with the prompts chosen."""
        rows = [self.encode(t) for t in texts]
        ids = np.stack([r for r, _ in rows]) if rows else np.zeros((0, self.max_prompt_tokens), np.int64)
        return list(texts), ids, np.array([k for _, k in rows], dtype=np.int64)


def forced_prompts(options: dict[str, Any] | None, key: str, rows: int, *, also: tuple[str, ...] = ()) -> list[str] | None:
    """The prompts that ``reset(options={key: ...})`` forces (``"prompt"``: one string; ``"prompts"``: one
    string per row), checked; None when the options force none. ``also``: other options the caller reads."""
    if not options:
        return None
    known = (key, *also)
    unknown = set(options) - set(known)
    if unknown:
        allowed = f"the only option is {key!r}" if not also else "the options are " + ", ".join(map(repr, known))
        raise ValueError(f"reset(options=...): unknown option {sorted(unknown)[0]!r}; {allowed}")
    if key not in options:
        return None
    value = options[key]
    if key == "prompt":
        if not isinstance(value, str):
            raise ValueError(f"reset(options={{'prompt': ...}}): expected a string, got {type(value).__name__}")
        return [value]
    if isinstance(value, str) or len(value) != rows or not all(isinstance(p, str) for p in value):
        raise ValueError(f"reset(options={{'prompts': ...}}): expected a list of {rows} strings, one per row")
    return list(value)


# --------------------------------------------------------------------------------------- episode batch
class EpisodeBatch:
    """N text-generation episodes in flight in one left-padded (N, L) token buffer: the engine of both envs.

    It holds the buffers, the prompt pool, the stop-token table and the reward source; it knows nothing of
    Gymnasium. Rows are started with `start`, advanced together with `push` (pure numpy), and the rows that
    finish in a step are scored together with `finish` (one reward-source call). Its keyword arguments
    after ``num_rows`` are the envs' episode options, documented on `TextGenerationEnv`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompts: Any,
        reward: Any,
        *,
        num_rows: int = 1,
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 32,
        stop_tokens: Sequence[int] | None = None,
        min_new_tokens: int = 0,
        chat_template: bool = False,
        reward_shaping: RewardShaping | None = None,
    ) -> None:
        for field, value in (("num_envs", num_rows), ("max_new_tokens", max_new_tokens),
                             ("max_prompt_tokens", max_prompt_tokens)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if (not isinstance(min_new_tokens, (int, np.integer)) or isinstance(min_new_tokens, bool)
                or not 0 <= min_new_tokens <= max_new_tokens):
            raise ValueError(f"min_new_tokens must be an integer in [0, max_new_tokens={max_new_tokens}], got "
                             f"{min_new_tokens!r}")
        if reward_shaping is not None and not callable(reward_shaping):
            raise ValueError("reward_shaping must be a callable fn(prompt, completion_ids) -> float, or None")
        self.tokenizer = tokenizer
        # A source with score() is kept as is; a fn(prompt, completion) -> float or a reward-model path is adapted.
        self.reward = as_reward_source(reward)
        self.reward_shaping = reward_shaping
        self.n_vocab = int(tokenizer.n_vocab)
        self.pad_id = int(tokenizer.pad_id)
        self.num_rows = int(num_rows)
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = int(min_new_tokens)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.length = self.max_prompt_tokens + self.max_new_tokens

        stops = default_stop_tokens(tokenizer) if stop_tokens is None else list(stop_tokens)
        bad = [t for t in stops if not isinstance(t, (int, np.integer)) or not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"stop_tokens: {bad[0]!r} is not a token id in [0, {self.n_vocab}); pass ids of this tokenizer")
        self.stop_tokens = sorted({int(t) for t in stops})
        # A lookup table turns "did this row emit a stop token?" into one fancy-index for all rows.
        self.is_stop = np.zeros(self.n_vocab, dtype=bool)
        self.is_stop[self.stop_tokens] = True

        self.pool = PromptPool(tokenizer, prompts, max_prompt_tokens=self.max_prompt_tokens, chat_template=chat_template)
        n, length = self.num_rows, self.length
        self.tokens = np.full((n, length), self.pad_id, dtype=np.int64)
        self.mask = np.zeros((n, length), dtype=np.int64)
        self.n_new = np.zeros(n, dtype=np.int64)  # tokens generated so far per row
        self.prompt_len = np.zeros(n, dtype=np.int64)
        self.returns = np.zeros(n, dtype=np.float64)  # reward collected so far in each row's episode
        self.prompts = np.full(n, "", dtype=object)
        self._prompt_positions = np.arange(self.max_prompt_tokens)

    def single_observation_space(self) -> spaces.Dict:
        """The observation space of one row."""
        box = spaces.Box(0, self.n_vocab - 1, shape=(self.length,), dtype=np.int64)
        return spaces.Dict({
            "input_ids": box,
            "attention_mask": spaces.Box(0, 1, shape=(self.length,), dtype=np.int64),
        })

    def start(self, rows: np.ndarray, rng: np.random.Generator, texts: Sequence[str] | None = None) -> None:
        """Begin new episodes in ``rows``: draw prompts with ``rng`` (or use ``texts``) and write them in."""
        texts, ids, lengths = self.pool.draw(rng, len(rows)) if texts is None else self.pool.encode_many(texts)
        t = self.max_new_tokens
        self.tokens[rows, :t] = self.pad_id
        self.tokens[rows, t:] = ids
        self.mask[rows, :t] = 0
        self.mask[rows, t:] = self._prompt_positions >= (self.max_prompt_tokens - lengths)[:, None]
        self.prompt_len[rows] = lengths
        self.n_new[rows] = 0
        self.returns[rows] = 0.0
        self.prompts[rows] = texts

    def push(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append one token to every row (shifting left); return (terminated, truncated) bool arrays.

        A stop token terminates a row only once the row already had ``min_new_tokens`` tokens before it.
        """
        self._dropped = (self.tokens[:, 0].copy(), self.mask[:, 0].copy())  # what `unpush` puts back
        # Overlapping slice copies are safe: numpy buffers them when source and destination overlap.
        self.tokens[:, :-1] = self.tokens[:, 1:]
        self.tokens[:, -1] = actions
        self.mask[:, :-1] = self.mask[:, 1:]
        self.mask[:, -1] = 1
        self.n_new += 1
        terminated = self.is_stop[actions] & (self.n_new > self.min_new_tokens)
        truncated = (self.n_new >= self.max_new_tokens) & ~terminated
        return terminated, truncated

    def unpush(self) -> None:
        """Take back the last `push` (a step whose reward source raised leaves the rows as they were)."""
        tokens, mask = self._dropped
        self.tokens[:, 1:] = self.tokens[:, :-1]
        self.tokens[:, 0] = tokens
        self.mask[:, 1:] = self.mask[:, :-1]
        self.mask[:, 0] = mask
        self.n_new -= 1

    def completion_ids(self, row: int, drop_stop: bool = False) -> np.ndarray:
        """The tokens row ``row`` generated so far (without its final stop token if ``drop_stop``)."""
        k = int(self.n_new[row])
        end = self.length - 1 if drop_stop else self.length
        return self.tokens[row, self.length - k:end]

    def completion_text(self, row: int, drop_stop: bool = False) -> str:
        """`completion_ids` decoded."""
        return self.tokenizer.decode(self.completion_ids(row, drop_stop))

    def finish(self, rows: np.ndarray, terminated: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Decode the completions of ``rows`` (stop tokens excluded) and score them in ONE reward call."""
        completions = [self.completion_text(r, bool(s)) for r, s in zip(rows, terminated)]
        prompts = [str(p) for p in self.prompts[rows]]
        scores = check_scores(self.reward.score(prompts, completions), prompts, completions, self.reward)
        return completions, scores

    def shaping(self) -> np.ndarray:
        """The per-token shaping reward of every row for the token just pushed (zeros without shaping)."""
        if self.reward_shaping is None:
            return np.zeros(self.num_rows)
        # A Python call per row per step: shaping is opt-in, and its cost is the user's callable's.
        return np.array([float(self.reward_shaping(str(self.prompts[r]), self.completion_ids(r)))
                         for r in range(self.num_rows)], dtype=np.float64)

    def observation(self, row: int | None = None) -> dict[str, np.ndarray]:
        """A fresh copy of the buffers: all rows, or one row (callers keep observations; we reuse buffers)."""
        if row is None:
            return {"input_ids": self.tokens.copy(), "attention_mask": self.mask.copy()}
        return {"input_ids": self.tokens[row].copy(), "attention_mask": self.mask[row].copy()}

    def check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as an int64 array of shape (num_rows,), or a ValueError saying what is wrong."""
        arr = np.asarray(actions)
        if arr.shape != (self.num_rows,) or arr.dtype.kind not in "iu":
            raise ValueError(
                f"actions: expected {self.num_rows} integer token id(s), got dtype {arr.dtype} shape {arr.shape}"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_vocab):
            bad = arr[(arr < 0) | (arr >= self.n_vocab)][0]
            raise ValueError(f"action {int(bad)} is not a token id in [0, {self.n_vocab}) of this tokenizer")
        return arr.astype(np.int64, copy=False)

    def render_text(self, row: int) -> str:
        """Prompt and completion so far of ``row``, two lines."""
        return f"prompt: {self.prompts[row]}\ncompletion: {self.completion_text(row)}"


def write_human(text: str) -> None:
    """render_mode="human": the user asked the env to write to the terminal, so we do (not a log line)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def check_render_mode(render_mode: str | None) -> str | None:
    """``render_mode`` unchanged, or a ValueError naming the modes we have."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode {render_mode!r} is not supported; use one of {RENDER_MODES} or None")
    return render_mode


# ------------------------------------------------------------------------------------------ the env
class EpisodeFacts:
    """What agents and evaluations read of a text env (single or vector): sizes, stop tokens, prompts, encoding."""

    _batch: EpisodeBatch

    @property
    def stop_tokens(self) -> list[int]:
        """The token ids that end an episode."""
        return list(self._batch.stop_tokens)

    @property
    def min_new_tokens(self) -> int:
        """Tokens a completion has before a stop token may end it (0: a stop token may come first)."""
        return self._batch.min_new_tokens

    @property
    def max_new_tokens(self) -> int:
        """Tokens a completion may have at most."""
        return int(self._batch.max_new_tokens)

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens an observation holds at most (longer prompts are left-truncated)."""
        return int(self._batch.max_prompt_tokens)

    @property
    def prompt_texts(self) -> list[str] | None:
        """The env's prompt list, or None when its prompts come from a source's ``sample(np_random)``."""
        return self._batch.pool.texts

    @property
    def prompt_source(self) -> Any:
        """The object whose ``sample(np_random)`` draws prompts (None when the env has a prompt list)."""
        return self._batch.pool.sampler

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt texts as the env encodes them (chat template, left truncation to max_prompt_tokens), unpadded."""
        _, ids, lengths = self._batch.pool.encode_many(list(texts))
        width = ids.shape[1]
        return [ids[i, width - int(n):].tolist() for i, n in enumerate(lengths)]


class TextGenerationEnv(EpisodeFacts, gymnasium.Env):
    """A Gymnasium env where each step emits one token and each episode is one scored completion.

    Args:
        tokenizer: an `rlfl.tokenizer.Tokenizer`; its ``n_vocab`` sizes the action and observation spaces.
        prompts: a list of prompt strings (drawn uniformly with ``self.np_random``) or an object with
            ``sample(np_random) -> str``.
        reward: a reward source, ``score(prompts: list[str], completions: list[str]) -> np.ndarray``, or
            what `rlfl.envs.rewards.as_reward_source` adapts (``fn(prompt, completion) -> float``, a
            reward-model checkpoint path).
        render_mode: None, "ansi" (``render()`` returns the text) or "human" (writes it to stdout, and
            at the end of each episode).

    Episode options (keywords, validated by `EpisodeBatch`; the vector env takes the same):
        max_new_tokens: the episode is truncated after this many tokens (default 32).
        max_prompt_tokens: longer prompts are left-truncated, with a warning (default 32).
        stop_tokens: token ids that end the episode (default `default_stop_tokens`: ``<|endoftext|>`` and
            ``<|end|>``, or a Hugging Face tokenizer's eos and end-of-turn token); an empty
            list: none, every episode runs exactly ``max_new_tokens`` tokens (fixed-length episodes).
        min_new_tokens: a stop token among the first ``min_new_tokens`` tokens does not end the episode (it
            stays in the completion as an ordinary token), so no completion ends shorter; default 0.
        chat_template: wrap each prompt as a user turn ready for an assistant answer.
        reward_shaping: ``fn(prompt, completion_ids) -> float`` added to the reward after every token
            (``completion_ids`` includes the token just emitted); default: 0 before the end.

    ``info`` always has ``prompt`` and ``completion`` (text so far); the final step adds ``score`` (the
    reward source's raw score). ``reset(options={"prompt": "..."})`` forces the prompt of the episode.
    A NaN/inf or wrongly shaped score raises `rlfl.envs.rewards.RewardError` (a ValueError) naming the
    source and the text.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompts: Any,
        reward: Any,
        *,
        render_mode: str | None = None,
        **episode_options: Any,
    ) -> None:
        self._batch = EpisodeBatch(tokenizer, prompts, reward, num_rows=1, **episode_options)
        self.tokenizer = tokenizer
        self.reward = self._batch.reward  # the adapted source
        self.observation_space = self._batch.single_observation_space()
        self.action_space = spaces.Discrete(self._batch.n_vocab)
        self.render_mode = check_render_mode(render_mode)
        self._row = np.zeros(1, dtype=np.int64)
        self._running = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: draw a prompt (or take ``options["prompt"]``); return its observation and info."""
        super().reset(seed=seed)
        self._batch.start(self._row, self.np_random, forced_prompts(options, "prompt", 1))
        self._running = True
        return self._batch.observation(0), {"prompt": str(self._batch.prompts[0]), "completion": ""}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Emit token ``action``; the reward is the completion's score when the episode ends, else 0."""
        if not self._running:
            raise gymnasium.error.ResetNeeded("step() called before reset() or after the episode ended; call reset()")
        b = self._batch
        actions = b.check_actions(np.asarray(action).reshape(1))
        terminated, truncated = b.push(actions)
        term, trunc = bool(terminated[0]), bool(truncated[0])
        info: dict[str, Any] = {"prompt": str(b.prompts[0])}
        try:
            reward = float(b.shaping()[0])
            if term or trunc:
                completions, scores = b.finish(self._row, terminated)
                reward += float(scores[0])
                info["completion"], info["score"] = completions[0], float(scores[0])
            else:
                info["completion"] = b.completion_text(0)
        except BaseException:  # a raising reward source or shaping: the env stays as it was before the step
            b.unpush()
            raise
        if term or trunc:
            self._running = False
        b.returns[0] += reward
        if self.render_mode == "human" and not self._running:
            self.render()
        return b.observation(0), reward, term, trunc, info

    def render(self) -> str | None:
        """The prompt and the completion so far as text ("ansi"), or write it to stdout ("human")."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'human'")
            return None
        text = self._batch.render_text(0)
        if self.render_mode == "ansi":
            return text
        write_human(text)
        return None

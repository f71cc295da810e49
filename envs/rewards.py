"""Reward sources: the one seam through which every reward (reward model, AI judge, Python callable) enters.

A **reward source** is any object with ``score(prompts: list[str], completions: list[str]) -> np.ndarray``
returning one float per completion (shape ``(n,)``), and optionally a ``name`` used in error messages and
logs. The environments call it once per batch of finished episodes, so a reward model scores a whole batch
in one forward pass. This module defines that protocol, the adapters that build sources out of other
sources (``CallableReward``, ``WeightedSum``, ``RunningNormalizer``, ``Clipped``), ``as_reward_source``
that turns whatever a user passed into a source, and ``check_scores``, the guard that every adapter (and
the environments) run on what a source returned: a reward of the wrong shape, or a NaN that would
silently poison a PPO update, stops the run with a one-line ``RewardError`` naming the source and the
offending text.

Example:
    >>> r = WeightedSum([(lambda p, c: float("great" in c), 1.0), (lambda p, c: -len(c) / 100, 0.5)])
    >>> r.score(["The film was"], [" great"]).round(3).tolist()
    [0.97]
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

# Error messages quote at most this many characters of a prompt / completion.
_QUOTE_CHARS = 60


@runtime_checkable
class RewardSource(Protocol):
    """What the environments call to score finished completions: one float per (prompt, completion).

    Implementations may also carry a ``name`` attribute (a short string for errors and logs); see
    `source_name`. Scores must be finite; `check_scores` enforces the contract.
    """

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Scores of ``completions[i]`` as the answer to ``prompts[i]``, as a float array of shape (n,)."""
        ...


class RewardError(ValueError):
    """A reward source broke the contract: wrong shape, dtype or length, or a NaN / infinite score."""


def source_name(source: Any) -> str:
    """A short name for a reward source in messages: its ``name``, else its function or class name."""
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return name
    fn_name = getattr(source, "__name__", None)
    if isinstance(fn_name, str):
        return fn_name
    return type(source).__name__


def _quote(text: str) -> str:
    text = str(text)
    if len(text) > _QUOTE_CHARS:
        text = text[:_QUOTE_CHARS] + "..."
    return repr(text)  # repr keeps the message on one line (newlines show as \n)


def check_scores(scores: Any, prompts: Sequence[str], completions: Sequence[str], source: Any) -> np.ndarray:
    """Validate what a reward source returned and give it back as a float64 array of shape (n,).

    Raises `RewardError` (a ValueError) with a one-line message naming the source, for a wrong shape,
    length or dtype, and for NaN / inf scores together with the offending prompt and completion.

    Example:
        >>> check_scores([0.5, 1], ["a", "b"], ["x", "y"], "demo").tolist()
        [0.5, 1.0]
        >>> check_scores([[1, 2]] * 3, ["a"] * 3, ["x"] * 3, "my_fn")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rlfl.envs.rewards.RewardError: reward source 'my_fn' returned shape (3, 2) for 3 completions; return one...
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; pass one prompt per "
                         "completion")
    name = source if isinstance(source, str) else source_name(source)
    n = len(completions)
    if hasattr(scores, "detach"):  # a torch tensor: don't import torch just to recognise one
        scores = scores.detach().cpu().numpy()
    try:
        arr = np.asarray(scores)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise RewardError(f"reward source '{name}' returned {type(scores).__name__} that is not an array of "
                          f"numbers ({e}); return one float per completion") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                                   or arr.dtype == np.bool_):
        raise RewardError(f"reward source '{name}' returned dtype {arr.dtype} for {n} completions; return one "
                          "float per completion")
    if arr.ndim != 1:
        raise RewardError(f"reward source '{name}' returned shape {arr.shape} for {n} completions; return one "
                          "float per completion")
    if arr.shape[0] != n:
        raise RewardError(f"reward source '{name}' returned {arr.shape[0]} scores for {n} completions; return "
                          "one float per completion")
    arr = arr.astype(np.float64)  # always a copy: callers may keep the array while the source reuses its own
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise RewardError(f"reward source '{name}' returned {arr[i]} for completion {i} of {n}{more}: prompt "
                          f"{_quote(prompts[i])}, completion {_quote(completions[i])}; scores must be finite")
    return arr


# ------------------------------------------------------------------------------------------ adapters
class CallableReward:
    """A reward source out of a Python function.

    ``fn(prompt, completion) -> float`` is called once per completion; with ``batched=True``,
    ``fn(prompts, completions) -> array`` is called once per batch (use that for anything with a
    per-call cost, such as a network or an HTTP judge).

    Example:
        >>> CallableReward(lambda p, c: float("great" in c)).score(["a", "b"], ["great!", "meh"]).tolist()
        [1.0, 0.0]
    """

    def __init__(self, fn: Callable[..., Any], *, batched: bool = False, name: str | None = None) -> None:
        if not callable(fn):
            raise ValueError(f"CallableReward needs a function, got {type(fn).__name__}; pass "
                             "fn(prompt, completion) -> float")
        self.fn = fn
        self.batched = batched
        self.name = name or source_name(fn)

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """One float per completion, from ``fn``."""
        if self.batched:
            raw = self.fn(list(prompts), list(completions))
        else:
            raw = [self.fn(p, c) for p, c in zip(prompts, completions)]
        return check_scores(raw, prompts, completions, self)

    def __repr__(self) -> str:
        return f"CallableReward({self.name!r}, batched={self.batched})"


class WeightedSum:
    """A reward source that adds up other sources, each times its weight.

    Each entry may be anything `as_reward_source` accepts (a source, a callable, a checkpoint path).

    Example:
        >>> r = WeightedSum([(lambda p, c: 1.0, 0.5), (lambda p, c: len(c), -0.1)])
        >>> r.score(["p"], ["abc"]).round(6).tolist()
        [0.2]
    """

    def __init__(self, terms: Sequence[tuple[Any, float]], *, name: str | None = None) -> None:
        if not terms:
            raise ValueError("WeightedSum needs at least one (source, weight) pair")
        self.terms: list[tuple[Any, float]] = []
        for k, term in enumerate(terms):
            if not (isinstance(term, (tuple, list)) and len(term) == 2):
                raise ValueError(f"WeightedSum entry {k} is {term!r}; pass (source, weight) pairs")
            source, weight = term
            if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"WeightedSum entry {k}: weight {weight!r} is not a finite number")
            self.terms.append((as_reward_source(source), float(weight)))
        self.name = name or " + ".join(f"{w:g}*{source_name(s)}" for s, w in self.terms)

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The weighted sum of every term's (checked) scores."""
        total = np.zeros(len(completions), dtype=np.float64)
        for source, weight in self.terms:
            total += weight * check_scores(source.score(prompts, completions), prompts, completions, source)
        return total

    def __repr__(self) -> str:
        return f"WeightedSum({self.name!r})"


class RunningMoments:
    """Count, mean and variance of every number seen so far, without keeping the numbers.

    Batches are folded in with the parallel form of Welford's algorithm (Chan et al.), so the figures equal
    ``np.mean``/``np.var`` over everything seen. `state_dict` / `load_state_dict` save and restore them as
    plain numbers (JSON- and ``torch.load(weights_only=True)``-safe).

    Example:
        >>> m = RunningMoments(); m.update(np.array([1.0, 3.0])); m.update(np.array([5.0]))
        >>> m.mean, round(m.std, 4)
        (3.0, 1.633)
    """

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # m2: sum of squared deviations from the mean

    @property
    def var(self) -> float:
        """Population variance of everything seen (0.0 before anything)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation of everything seen."""
        return math.sqrt(self.var)

    def update(self, x: np.ndarray) -> None:
        """Fold a batch of numbers into the statistics."""
        x = np.asarray(x, dtype=np.float64)
        n_b = int(x.size)
        if n_b == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    def state_dict(self) -> dict[str, float]:
        """The statistics as plain numbers."""
        return {"count": float(self.count), "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore statistics saved by `state_dict`."""
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"running statistics state lacks {', '.join(sorted(missing))}; pass what state_dict() "
                             "returned")
        count, mean, m2 = float(state["count"]), float(state["mean"]), float(state["m2"])
        if count < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)) or count != int(count):
            raise ValueError(f"running statistics state {state!r} is not valid (count a whole number >= 0, finite "
                             "mean, m2 >= 0)")
        self.count, self.mean, self.m2 = int(count), mean, m2


class RunningNormalizer:
    """A reward source that standardises another one with a running mean and standard deviation.

    The statistics (`RunningMoments`) are updated with every batch before it is normalised, so they equal
    ``np.mean``/``np.var`` over every score seen so far. Set ``training = False`` to freeze them (e.g. for
    evaluation). ``clip`` bounds the normalised value to ``[-clip, clip]``. Save the statistics with the
    policy checkpoint through `state_dict` / `load_state_dict` so that a resumed run scores alike.

    Example:
        >>> norm = RunningNormalizer(lambda p, c: float(len(c)))
        >>> norm.score(["p"] * 3, ["a", "bb", "ccc"]).round(4).tolist()
        [-1.2247, 0.0, 1.2247]
    """

    def __init__(self, source: Any, *, epsilon: float = 1e-8, clip: float | None = None,
                 name: str | None = None) -> None:
        if not epsilon > 0:
            raise ValueError(f"RunningNormalizer epsilon={epsilon}; pass a small positive number such as 1e-8")
        if clip is not None and not clip > 0:
            raise ValueError(f"RunningNormalizer clip={clip}; pass a positive bound or None for no clipping")
        self.source = as_reward_source(source)
        self.epsilon = float(epsilon)
        self.clip = None if clip is None else float(clip)
        self.name = name or f"normalized({source_name(self.source)})"
        self.training = True
        self.moments = RunningMoments()

    count = property(lambda self: self.moments.count, doc="Scores seen.")
    mean = property(lambda self: self.moments.mean, doc="Mean of every score seen.")
    var = property(lambda self: self.moments.var, doc="Population variance of every score seen (0.0 before any).")
    std = property(lambda self: self.moments.std, doc="Population standard deviation of every score seen.")

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The inner source's scores, standardised by the statistics including this batch."""
        raw = check_scores(self.source.score(prompts, completions), prompts, completions, self.source)
        if self.training:
            self.moments.update(raw)
        out = (raw - self.mean) / math.sqrt(self.var + self.epsilon)
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out

    def state_dict(self) -> dict[str, float]:
        """The running statistics as plain numbers (see `RunningMoments.state_dict`)."""
        return self.moments.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore statistics saved by `state_dict`."""
        self.moments.load_state_dict(state)

    def __repr__(self) -> str:
        return f"RunningNormalizer({self.name!r}, count={self.count}, mean={self.mean:.4g}, std={self.std:.4g})"


class Clipped:
    """A reward source that clips another one to ``[low, high]`` (either bound may be None).

    Example:
        >>> Clipped(lambda p, c: float(len(c)), 0.0, 2.0).score(["p", "p"], ["a", "abcd"]).tolist()
        [1.0, 2.0]
    """

    def __init__(self, source: Any, low: float | None, high: float | None, *, name: str | None = None) -> None:
        if low is None and high is None:
            raise ValueError("Clipped needs a low or a high bound (or both)")
        if low is not None and high is not None and not low <= high:
            raise ValueError(f"Clipped bounds low={low} > high={high}; pass low <= high")
        self.source = as_reward_source(source)
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        self.name = name or f"clipped({source_name(self.source)})"

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The inner source's scores, clipped."""
        raw = check_scores(self.source.score(prompts, completions), prompts, completions, self.source)
        return np.clip(raw, self.low, self.high)

    def __repr__(self) -> str:
        return f"Clipped({self.name!r}, low={self.low}, high={self.high})"


class GoldSentiment:
    """The synthetic corpus's gold sentiment judge as a reward source: sentiment of prompt + completion.

    It reads the whole text (a completion that ends "...was not" after "The soup was good" changes its
    meaning), in [-1, 1]; with ``include_prompt=False`` it reads the completion alone. This is the gold
    judge of ``rlfl/SyntheticReviews-v0``: it knows the generator's lexicon and rules, so it is the
    ground truth a learned reward model is measured against.

    Example:
        >>> GoldSentiment().score(["The soup was"], [" great."]).tolist()
        [0.75]
    """

    def __init__(self, *, include_prompt: bool = True) -> None:
        self.include_prompt = include_prompt
        self.name = "gold_sentiment"

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Gold sentiment of each text in [-1, 1] (0.0 when it has no sentiment words)."""
        from rlfl.synthetic import gold_sentiment  # imported here: rlfl.synthetic pulls in torch

        texts = [p + c for p, c in zip(prompts, completions)] if self.include_prompt else list(completions)
        return check_scores([gold_sentiment(t) for t in texts], prompts, completions, self)

    def __repr__(self) -> str:
        return f"GoldSentiment(include_prompt={self.include_prompt})"


def reward_model_source(path: str | os.PathLike, **kwargs: Any) -> RewardSource:
    """A reward source from a reward-model checkpoint directory (`rlfl reward train`).

    A thin wrapper on ``rlfl.reward.load_reward_model(path, device="cpu", normalize=True)``; keyword
    arguments go to it.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such reward-model checkpoint directory; pass a directory written "
                                "by `rlfl reward train` (or a callable reward)")
    try:
        from rlfl.reward import load_reward_model
    except ImportError as e:
        raise ImportError(f"cannot load reward model {path}: rlfl.reward is not available ({e})") from e
    return load_reward_model(path, **kwargs)


def as_reward_source(obj: Any, **kwargs: Any) -> RewardSource:
    """Turn what a user passed as a reward into a reward source.

    Accepted: an object with ``score(prompts, completions)`` (returned as is); a callable
    ``fn(prompt, completion) -> float`` (wrapped in `CallableReward`); a path (str or PathLike) of a
    reward-model checkpoint (loaded by `reward_model_source`, ``kwargs`` passed on).

    Example:
        >>> source = as_reward_source(lambda prompt, completion: float(len(completion)))
        >>> source.name, source.score(["a"], ["xyz"]).tolist()
        ('<lambda>', [3.0])
    """
    if callable(getattr(obj, "score", None)):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return reward_model_source(obj, **kwargs)
    if callable(obj):
        return CallableReward(obj)
    raise ValueError(f"cannot use {obj!r} ({type(obj).__name__}) as a reward: pass a callable(prompt, completion) "
                    "-> float, an object with score(prompts, completions), or a reward-model checkpoint path")

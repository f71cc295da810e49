"""The env registry: custom reward environments in a few lines, and the built-in ``rlfl/...`` ids.

`register_reward_env` is a thin layer over ``gymnasium.register``: it records a reward source, a prompt
source and a tokenizer spec under a Gymnasium id, with both an ``entry_point`` (``gymnasium.make`` gives a
`TextGenerationEnv`) and a ``vector_entry_point`` (``gymnasium.make_vec(id, num_envs=N)`` gives one
`TextGenerationVectorEnv` stepping N rows with numpy, not N envs behind a SyncVectorEnv). Plain values
(ints, strings, a tokenizer spec, a checkpoint path) go in the spec's ``kwargs`` where ``make`` can
override them; objects (a callable, a loaded model, a prompt list) stay in the entry point's closure,
because Gymnasium deep-copies spec kwargs on every ``make`` and a reward model must not be copied per env.
Anything can still be overridden at make time: ``gymnasium.make(id, reward=other, max_new_tokens=8)``.

Built-in ids, registered on ``import rlfl.envs`` (nothing is loaded until ``make``):

- ``rlfl/SyntheticReviews-v0``: prompts are the first words of built-in synthetic reviews; the reward
  is their gold sentiment (positive is good) unless ``reward=`` says otherwise (e.g. a reward-model
  path, to train against a learned reward and measure with the gold judge). Works offline, no data.
- ``rlfl/ImdbPositive-v0``: prompts are the first words of IMDB reviews (``data_path=``, else a
  download); ``reward=`` a reward-model checkpoint (or a callable) is required.
- ``rlfl/Helpful-v0``: HH-RLHF dialogue prompts ending in "\\n\\nAssistant:" (``data_path=`` the
  hh-rlhf folder, required); ``reward=`` an HH reward-model checkpoint (or a callable) is required.
- ``rlfl/Arithmetic-v0``: generated problems "Q: 23+45=? A:" of ``level`` 1, 2 or 3 (``n_prompts`` distinct
  ones, ``seed``); the reward checks the answer read at the start of the completion (" 68"), with
  ``format_weight`` for a number there and ``correct_weight`` for the right one. Works offline, no data.
- ``rlfl/GSM8K-v0``: GSM8K questions as "Question: ...\\nAnswer:" (the bare question under the chat
  template; ``data_path=`` the gsm8k folder or file, required; ``split``, ``n_prompts``); the reward checks
  the number after the completion's last "####" the same way.

Every env built here carries ``env.unwrapped.gold_judge``: a reward source for evaluation (the synthetic
gold sentiment for SyntheticReviews, exact-match correctness for Arithmetic and GSM8K, the ``gold=``
argument otherwise, else None). The verifiable envs are described in `rlfl.envs.verifiable`.

Example:
    >>> import gymnasium
    >>> import rlfl.envs
    >>> register_reward_env("demo/Great-v0", reward=lambda p, c: float("great" in c),
    ...                     prompts=["The film was", "Dinner was"], max_new_tokens=8)
    >>> env = gymnasium.make("demo/Great-v0")
    >>> obs, info = env.reset(seed=0)
    >>> int(env.action_space.n)
    262
"""

from __future__ import annotations

import difflib
import logging
from functools import lru_cache
from typing import Any

import gymnasium
from gymnasium.envs.registration import parse_env_id

from rlfl.envs.prompts import (HH_SUBSETS, PromptList, as_prompt_source, hh_prompts, imdb_prompts,
                               synthetic_review_prompts)
from rlfl.envs.rewards import GoldSentiment, as_reward_source

logger = logging.getLogger(__name__)

SYNTHETIC_REVIEWS = "rlfl/SyntheticReviews-v0"
IMDB_POSITIVE = "rlfl/ImdbPositive-v0"
HELPFUL = "rlfl/Helpful-v0"
ARITHMETIC = "rlfl/Arithmetic-v0"
GSM8K = "rlfl/GSM8K-v0"
BUILTIN_IDS = (SYNTHETIC_REVIEWS, IMDB_POSITIVE, HELPFUL, ARITHMETIC, GSM8K)

# Keyword arguments of TextGenerationEnv besides (tokenizer, prompts, reward). Listed here rather than read
# from its signature so that `import rlfl.envs` does not load the env modules (tiktoken, gymnasium.vector:
# a third of the import time); tests/test_registry.py keeps the list in step with the signatures
# (the env's own render_mode and the episode options of EpisodeBatch).
ENV_OPTIONS = ("max_new_tokens", "max_prompt_tokens", "stop_tokens", "min_new_tokens", "chat_template",
               "reward_shaping", "render_mode")


# ---------------------------------------------------------------------------------------- building
@lru_cache(maxsize=8)
def _load_tokenizer(spec: str) -> Any:
    # Cached: a GPT-2 tokenizer takes a second to build, and a run makes many envs from one spec.
    from rlfl.tokenizer_spec import load_tokenizer

    return load_tokenizer(spec)


def _tokenizer(spec: Any, env_id: str) -> Any:
    from rlfl.tokenizer import Tokenizer

    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, str):
        return _load_tokenizer(spec)
    raise ValueError(f"{env_id}: tokenizer={spec!r}; pass tokenizer='bytes', 'gpt2:PATH', a tokenizer "
                     "directory, or an rlfl Tokenizer")


def _check_options(env_id: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    for key in options:
        if key not in ENV_OPTIONS:
            close = difflib.get_close_matches(key, ENV_OPTIONS + known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{env_id}: unknown keyword {key!r}{hint}; accepted: "
                             f"{', '.join(sorted(set(known + ENV_OPTIONS)))}")


_PARTS = ("reward", "prompts", "tokenizer", "gold")


def _build(env_id: str, num_envs: int | None, known: tuple[str, ...], *, reward: Any, prompts: Any,
           tokenizer: Any = "bytes", gold: Any = None, **options: Any) -> Any:
    _check_options(env_id, options, known + _PARTS)
    tok = _tokenizer(tokenizer, env_id)
    prompt_source = as_prompt_source(prompts)  # the env pre-encodes a PromptList's texts once
    source = as_reward_source(reward)
    judge = None if gold is None else as_reward_source(gold)
    if num_envs is None:
        from rlfl.envs.text_env import TextGenerationEnv

        env = TextGenerationEnv(tok, prompt_source, source, **options)
    else:
        from rlfl.envs.vector_env import TextGenerationVectorEnv

        env = TextGenerationVectorEnv(tok, prompt_source, source, num_envs=num_envs, **options)
    env.gold_judge = judge
    return env


def build_reward_env(*, reward: Any, prompts: Any, tokenizer: Any = "bytes", gold: Any = None,
                     num_envs: int | None = None, env_id: str = "reward env", **options: Any) -> Any:
    """A `TextGenerationEnv` (or, with ``num_envs``, a `TextGenerationVectorEnv`) from user-level parts.

    ``reward`` and ``gold`` are anything `as_reward_source` accepts (callable, source, checkpoint path);
    ``prompts`` a list of strings or a prompt source; ``tokenizer`` a spec for
    `rlfl.tokenizer_spec.load_tokenizer` or a Tokenizer; ``options`` the env's keyword arguments
    (``max_new_tokens``, ``max_prompt_tokens``, ``stop_tokens``, ``min_new_tokens``, ``chat_template``,
    ``reward_shaping``, ``render_mode``). ``env_id`` only names the env in error messages. The env gets a ``gold_judge``
    attribute (a reward source, or None).

    Example:
        >>> env = build_reward_env(reward=lambda p, c: 1.0, prompts=["Hi"], max_new_tokens=4)
        >>> env.observation_space["input_ids"].shape, env.gold_judge
        ((36,), None)
    """
    return _build(env_id, num_envs, ("num_envs", "env_id"), reward=reward, prompts=prompts, tokenizer=tokenizer,
                  gold=gold, **options)


# ---------------------------------------------------------------------------------------- custom ids
def _is_plain(value: Any) -> bool:
    """Values that may sit in a spec's kwargs: cheap to deep-copy and JSON-able."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_is_plain(v) for v in value)


def register_reward_env(id: str, *, reward: Any, prompts: Any, tokenizer: Any = "bytes", max_new_tokens: int = 32,
                        max_prompt_tokens: int = 32, gold: Any = None, vector: bool = True,
                        overwrite: bool = False, **kwargs: Any) -> None:
    """Register a text-generation env with its reward so that ``gymnasium.make(id)`` builds it.

    ``id`` is a Gymnasium id such as "myproject/Polite-v0". ``reward`` is a callable
    ``fn(prompt, completion) -> float``, a reward source, or a reward-model checkpoint path (loaded at
    ``make``, not here); ``prompts`` a list of strings or a prompt source; ``tokenizer`` a spec
    ("bytes", "gpt2:PATH", a checkpoint directory) or a Tokenizer, which must match the policy's;
    ``gold`` an optional reward source exposed as ``env.unwrapped.gold_judge`` for evaluation; ``kwargs``
    more env options (``stop_tokens``, ``min_new_tokens``, ``chat_template``, ``reward_shaping``,
    ``render_mode``). With ``vector=True`` ``gymnasium.make_vec(id, num_envs=N)`` builds one batched
    `TextGenerationVectorEnv`. Registering an id again raises unless ``overwrite=True`` (then it is replaced,
    with a warning).

    Example:
        >>> register_reward_env("demo/Short-v0", reward=lambda p, c: -len(c), prompts=["Hi"])
        >>> gymnasium.make_vec("demo/Short-v0", num_envs=4).num_envs
        4
    """
    try:
        namespace, name, version = parse_env_id(id)
    except gymnasium.error.Error:
        raise ValueError(f"env id {id!r} is not a Gymnasium id; use 'namespace/Name-v0'") from None
    _check_options(id, kwargs, _PARTS + ("vector", "overwrite"))
    # Fail now, not at make time, on a reward or prompts of the wrong kind (a path is only checked at make).
    if not (callable(reward) or callable(getattr(reward, "score", None)) or isinstance(reward, str)
            or hasattr(reward, "__fspath__")):
        raise ValueError(f"{id}: reward={reward!r}; pass a callable(prompt, completion) -> float, an object with "
                         "score(prompts, completions), or a reward-model checkpoint path")
    as_prompt_source(prompts)
    if id in gymnasium.registry:
        if not overwrite:
            nxt = f"{namespace + '/' if namespace else ''}{name}-v{(version or 0) + 1}"
            raise ValueError(f"env id {id!r} is already registered; pass overwrite=True to replace it, or "
                             f"register a new version such as {nxt!r}")
        logger.warning("replacing the registered env %s", id)
        del gymnasium.registry[id]  # so gymnasium does not add its own "Overriding" warning

    given = {"reward": reward, "prompts": prompts, "tokenizer": tokenizer, "gold": gold,
             "max_new_tokens": max_new_tokens, "max_prompt_tokens": max_prompt_tokens, **kwargs}
    spec_kwargs = {k: v for k, v in given.items() if _is_plain(v) and v is not None}
    held = {k: v for k, v in given.items() if k not in spec_kwargs}

    def entry_point(**overrides: Any) -> Any:
        return _build(id, None, (), **{**held, **overrides})

    def vector_entry_point(num_envs: int = 1, **overrides: Any) -> Any:
        return _build(id, num_envs, (), **{**held, **overrides})

    gymnasium.register(id, entry_point=entry_point, vector_entry_point=vector_entry_point if vector else None,
                       kwargs=spec_kwargs)


# ------------------------------------------------------------------------------------- built-in ids
def _require(env_id: str, what: str, value: Any, fix: str) -> None:
    if value is None:
        raise ValueError(f"{env_id} needs {what}: {fix}")


def _synthetic_reviews(num_envs: int | None, *, reward: Any = None, prompts: Any = None, n_prompts: int = 2000,
                       seed: int = 0, words: tuple[int, int] = (2, 6), gold: Any = None, **options: Any) -> Any:
    known = ("n_prompts", "seed", "words")
    _check_options(SYNTHETIC_REVIEWS, {k: v for k, v in options.items() if k not in _PARTS}, known + _PARTS)
    judge = GoldSentiment() if gold is None else gold
    if prompts is None:
        prompts = synthetic_review_prompts(n_prompts, seed, tuple(words))
    return _build(SYNTHETIC_REVIEWS, num_envs, known, prompts=prompts,
                  reward=judge if reward is None else reward, gold=judge, **options)


def _imdb_positive(num_envs: int | None, *, reward: Any = None, prompts: Any = None, data_path: Any = None,
                   split: str = "train", n_prompts: int | None = None, words: tuple[int, int] = (2, 8),
                   seed: int = 0, **options: Any) -> Any:
    known = ("data_path", "split", "n_prompts", "words", "seed")
    _check_options(IMDB_POSITIVE, {k: v for k, v in options.items() if k not in _PARTS}, known + _PARTS)
    _require(IMDB_POSITIVE, "a reward", reward, "pass reward='path/to/reward-model' (a checkpoint from "
             "`rlfl reward train` on IMDB) or reward=fn(prompt, completion) -> float to gymnasium.make")
    if prompts is None:
        prompts = imdb_prompts(data_path, split=split, n=n_prompts, words=tuple(words), seed=seed)
    return _build(IMDB_POSITIVE, num_envs, known, prompts=prompts, reward=reward, **options)


def _helpful(num_envs: int | None, *, reward: Any = None, prompts: Any = None, data_path: Any = None,
             subsets: tuple[str, ...] = ("helpful-base",), split: str = "test", n_prompts: int | None = None,
             seed: int = 0, **options: Any) -> Any:
    known = ("data_path", "subsets", "split", "n_prompts", "seed")
    _check_options(HELPFUL, {k: v for k, v in options.items() if k not in _PARTS}, known + _PARTS)
    _require(HELPFUL, "a reward", reward, "pass reward='path/to/hh-reward-model' (a checkpoint from "
             "`rlfl reward train` on HH-RLHF pairs) or reward=fn(prompt, completion) -> float to gymnasium.make")
    if prompts is None:
        _require(HELPFUL, "HH-RLHF dialogues", data_path, "pass data_path='path/to/hh-rlhf' (the folder with "
                 f"{'/, '.join(HH_SUBSETS)}/ holding test.jsonl.gz, from github.com/anthropics/hh-rlhf)")
        prompts = hh_prompts(data_path, subsets=tuple(subsets), split=split, n=n_prompts, seed=seed)
    return _build(HELPFUL, num_envs, known, prompts=prompts, reward=reward, **options)


def _prefixed(env_id: str, make: Any, *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)``, its ValueErrors (which name an option and its fix) prefixed by the env id."""
    try:
        return make(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{env_id}: {e}") from None


def _arithmetic(num_envs: int | None, *, reward: Any = None, prompts: Any = None, level: int = 1,
                n_prompts: int = 1000, seed: int = 0, format_weight: float = 0.1, correct_weight: float = 0.9,
                gold: Any = None, **options: Any) -> Any:
    # Imported here like the env classes: `import rlfl.envs` registers the id without loading its module.
    from rlfl.envs.verifiable import AnswerReward, ArithmeticProblems, arithmetic_answer, exact_match

    known = ("level", "n_prompts", "seed", "format_weight", "correct_weight")
    _check_options(ARITHMETIC, {k: v for k, v in options.items() if k not in _PARTS}, known + _PARTS)
    if prompts is None:
        problems = _prefixed(ARITHMETIC, ArithmeticProblems, level, n_prompts, seed)
        prompts = PromptList(problems.texts, name=problems.name)  # a plain list: the env pre-encodes it
    if reward is None:
        reward = _prefixed(ARITHMETIC, AnswerReward, arithmetic_answer, format_weight=format_weight,
                           correct_weight=correct_weight)
    judge = exact_match(arithmetic_answer) if gold is None else gold
    return _build(ARITHMETIC, num_envs, known, prompts=prompts, reward=reward, gold=judge, **options)


def _gsm8k(num_envs: int | None, *, reward: Any = None, prompts: Any = None, data_path: Any = None,
           split: str = "train", n_prompts: int | None = None, seed: int = 0, template: str | None = None,
           format_weight: float = 0.1, correct_weight: float = 0.9, gold: Any = None, **options: Any) -> Any:
    from rlfl.envs.verifiable import (GSM8K_CHAT_TEMPLATE, GSM8K_MARKER, GSM8K_TEMPLATE, AnswerReward,
                                      GSM8KProblems, exact_match)

    known = ("data_path", "split", "n_prompts", "seed", "template", "format_weight", "correct_weight")
    _check_options(GSM8K, {k: v for k, v in options.items() if k not in _PARTS}, known + _PARTS)
    _require(GSM8K, "GSM8K problems", data_path, "pass data_path='path/to/gsm8k' (the folder with train.jsonl.gz "
             "and test.jsonl.gz, such as shared/data/sft/gsm8k, or one .jsonl(.gz) file of {question, answer})")
    if template is None:  # under the chat template the user turn is the bare question, as in the SFT records
        template = GSM8K_CHAT_TEMPLATE if options.get("chat_template") else GSM8K_TEMPLATE
    problems = _prefixed(GSM8K, GSM8KProblems, data_path, split=split, n=n_prompts, seed=seed, template=template)
    if reward is None:
        reward = _prefixed(GSM8K, AnswerReward, problems, marker=GSM8K_MARKER, format_weight=format_weight,
                           correct_weight=correct_weight)
    judge = exact_match(problems, marker=GSM8K_MARKER) if gold is None else gold
    if prompts is None:
        prompts = PromptList(problems.texts, name=problems.name)
    return _build(GSM8K, num_envs, known, prompts=prompts, reward=reward, gold=judge, **options)


# String entry points (Gymnasium's convention): the spec stays JSON-able and picklable.
def synthetic_reviews_env(**kwargs: Any) -> Any:
    """Entry point of ``rlfl/SyntheticReviews-v0`` (use ``gymnasium.make``)."""
    return _synthetic_reviews(None, **kwargs)


def synthetic_reviews_vector_env(num_envs: int = 1, **kwargs: Any) -> Any:
    """Vector entry point of ``rlfl/SyntheticReviews-v0`` (use ``gymnasium.make_vec``)."""
    return _synthetic_reviews(num_envs, **kwargs)


def imdb_positive_env(**kwargs: Any) -> Any:
    """Entry point of ``rlfl/ImdbPositive-v0`` (use ``gymnasium.make``)."""
    return _imdb_positive(None, **kwargs)


def imdb_positive_vector_env(num_envs: int = 1, **kwargs: Any) -> Any:
    """Vector entry point of ``rlfl/ImdbPositive-v0`` (use ``gymnasium.make_vec``)."""
    return _imdb_positive(num_envs, **kwargs)


def helpful_env(**kwargs: Any) -> Any:
    """Entry point of ``rlfl/Helpful-v0`` (use ``gymnasium.make``)."""
    return _helpful(None, **kwargs)


def helpful_vector_env(num_envs: int = 1, **kwargs: Any) -> Any:
    """Vector entry point of ``rlfl/Helpful-v0`` (use ``gymnasium.make_vec``)."""
    return _helpful(num_envs, **kwargs)


def arithmetic_env(**kwargs: Any) -> Any:
    """Entry point of ``rlfl/Arithmetic-v0`` (use ``gymnasium.make``)."""
    return _arithmetic(None, **kwargs)


def arithmetic_vector_env(num_envs: int = 1, **kwargs: Any) -> Any:
    """Vector entry point of ``rlfl/Arithmetic-v0`` (use ``gymnasium.make_vec``)."""
    return _arithmetic(num_envs, **kwargs)


def gsm8k_env(**kwargs: Any) -> Any:
    """Entry point of ``rlfl/GSM8K-v0`` (use ``gymnasium.make``)."""
    return _gsm8k(None, **kwargs)


def gsm8k_vector_env(num_envs: int = 1, **kwargs: Any) -> Any:
    """Vector entry point of ``rlfl/GSM8K-v0`` (use ``gymnasium.make_vec``)."""
    return _gsm8k(num_envs, **kwargs)


# Defaults sized for the byte tokenizer: the longest prompts of each pool fit, and prompt + completion
# stays within a small policy's context (HH dialogues are long: their last turns are kept). Arithmetic answers
# are a few characters; GSM8K prompts fit whole 97% of the time and its worked answers run to ~270 bytes.
_BUILTINS = {
    SYNTHETIC_REVIEWS: ("synthetic_reviews", {"tokenizer": "bytes", "max_new_tokens": 32, "max_prompt_tokens": 48}),
    IMDB_POSITIVE: ("imdb_positive", {"tokenizer": "bytes", "max_new_tokens": 48, "max_prompt_tokens": 64}),
    HELPFUL: ("helpful", {"tokenizer": "bytes", "max_new_tokens": 64, "max_prompt_tokens": 192}),
    ARITHMETIC: ("arithmetic", {"tokenizer": "bytes", "max_new_tokens": 8, "max_prompt_tokens": 24}),
    GSM8K: ("gsm8k", {"tokenizer": "bytes", "max_new_tokens": 256, "max_prompt_tokens": 512}),
}


def register_builtin_envs() -> None:
    """Register the built-in ids (idempotent: ``import rlfl.envs`` calls it; a reload re-registers quietly)."""
    for env_id, (stem, kwargs) in _BUILTINS.items():
        gymnasium.registry.pop(env_id, None)
        gymnasium.register(env_id, entry_point=f"{__name__}:{stem}_env",
                           vector_entry_point=f"{__name__}:{stem}_vector_env", kwargs=dict(kwargs))

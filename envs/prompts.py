"""Prompt sources: where an episode's prompt comes from.

A **prompt source** draws one prompt per episode with ``sample(np_random) -> str`` (the env's own seeded
generator, so ``reset(seed=...)`` reproduces the prompt) and is also a read-only sequence (``len`` and
indexing), so that a vector env can tokenize the whole pool once instead of on every reset.
`PromptList` is the one implementation; the readers below build one from the built-in synthetic reviews,
IMDB reviews or HH-RLHF dialogues.

Example:
    >>> import numpy as np
    >>> prompts = synthetic_review_prompts(100, seed=0)
    >>> len(prompts), prompts.sample(np.random.default_rng(0)) in prompts
    (100, True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np

from rlfl.files import iter_jsonl

logger = logging.getLogger(__name__)

_IMDB_HEAD_CHARS = 400  # more than the first `words` words of a review (a cut one just gives fewer)
HH_ASSISTANT = "\n\nAssistant:"
HH_SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")
_IMDB_HELP = ("pass data_path= a folder of imdb_<split>.jsonl.gz files (such as shared/data/imdb), an "
              "aclImdb_v1.tar.gz or an extracted aclImdb/ folder")
_HH_HELP = ("pass data_path= the hh-rlhf folder (subset folders such as helpful-base/ holding "
            "test.jsonl.gz, from github.com/anthropics/hh-rlhf) or one .jsonl.gz file")


@runtime_checkable
class PromptSource(Protocol):
    """A pool of prompts: ``sample`` draws one with the env's generator; ``len`` and ``[i]`` list them."""

    def sample(self, np_random: np.random.Generator) -> str:
        """One prompt, drawn with ``np_random``."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> str: ...


class PromptList(Sequence):
    """A prompt source over a fixed list of strings, drawn uniformly.

    Example:
        >>> import numpy as np
        >>> p = PromptList(["Hello", "The film was"])
        >>> p.sample(np.random.default_rng(0)) in p, len(p), p[1]
        (True, 2, 'The film was')
    """

    def __init__(self, texts: Iterable[str], *, name: str = "prompts") -> None:
        self.texts: list[str] = list(texts)
        self.name = name
        if not self.texts:
            raise ValueError(f"{name}: no prompts; pass at least one prompt string")
        for i, t in enumerate(self.texts):
            if not isinstance(t, str):
                raise ValueError(f"{name}: prompt {i} is {type(t).__name__}, not str; pass prompt strings")

    def sample(self, np_random: np.random.Generator) -> str:
        """A uniformly drawn prompt."""
        return self.texts[int(np_random.integers(len(self.texts)))]

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index):
        return self.texts[index]

    def __repr__(self) -> str:
        return f"PromptList({self.name!r}, {len(self.texts)} prompts)"


def as_prompt_source(obj: Any) -> PromptSource:
    """A prompt source from a source (returned as is) or a list/tuple of strings (wrapped in `PromptList`)."""
    if callable(getattr(obj, "sample", None)) and hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        return obj
    if isinstance(obj, (list, tuple)):
        return PromptList(obj)
    raise ValueError(f"cannot use {type(obj).__name__} as prompts: pass a list of prompt strings or a prompt "
                     "source such as PromptList([...]) or synthetic_review_prompts()")


def _check_words(words: tuple[int, int]) -> tuple[int, int]:
    try:
        lo, hi = (int(w) for w in words)
    except (TypeError, ValueError):
        raise ValueError(f"words={words!r}; pass (min, max) word counts such as (2, 6)") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"words={words!r}; pass (min, max) with 1 <= min <= max")
    return lo, hi


def _first_words(texts: Iterable[str], words: tuple[int, int], seed: int) -> list[str]:
    """The first k words of each text (k uniform in [min, max], seeded), single-spaced; empty texts dropped."""
    lo, hi = _check_words(words)
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        split = text.split()
        if split:
            out.append(" ".join(split[:int(rng.integers(lo, hi + 1))]))
    return out


def _subsample(texts: list[str], n: int | None, seed: int, where: str) -> list[str]:
    if n is None or n >= len(texts):
        if n is not None and n > len(texts):
            logger.warning("%s: asked for %d prompts but only %d exist; using them all", where, n, len(texts))
        return texts
    if n < 1:
        raise ValueError(f"n={n}; pass a positive number of prompts (or None for all)")
    # The files are sorted (IMDB: positive reviews first), so take a seeded random subset, in file order.
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    return [texts[i] for i in keep]


# ------------------------------------------------------------------------------------ synthetic reviews
def synthetic_review_prompts(n: int = 2000, seed: int = 0, words: tuple[int, int] = (2, 6)) -> PromptList:
    """The first few words of ``n`` built-in synthetic reviews (mixed sentiment, 3 domains): offline prompts.

    The number of words is drawn per review from ``words`` (min, max), so prompts range from an opener
    ("I bought") to a half sentence ("The plot was very").

    Example:
        >>> synthetic_review_prompts(3, seed=0)[:]
        ['We picked up these headphones last', 'The sound quality is pretty', 'My daughter truly adored']
    """
    if n < 1:
        raise ValueError(f"n={n}; pass a positive number of prompts")
    return PromptList(_synthetic_prompts(int(n), int(seed), _check_words(words)),
                      name=f"synthetic_review_prompts(n={n}, seed={seed})")


@lru_cache(maxsize=8)
def _synthetic_prompts(n: int, seed: int, words: tuple[int, int]) -> tuple[str, ...]:
    from rlfl.synthetic import generate_reviews  # imported here: rlfl.synthetic pulls in torch

    return tuple(_first_words((r.text for r in generate_reviews(n, seed=seed)), words, seed))


# ----------------------------------------------------------------------------------------------- IMDB
def imdb_prompts(path: str | os.PathLike | None = None, *, split: str = "train", n: int | None = None,
                 words: tuple[int, int] = (2, 8), seed: int = 0) -> PromptList:
    """The first few words of IMDB reviews (cleaned with `rlfl.data.clean_text`) as prompts.

    ``path`` (always preferred; no network) is a folder of ``imdb_<split>.jsonl.gz`` files (the layout of
    shared/data/imdb), one such file, the ``aclImdb_v1.tar.gz`` archive or an extracted ``aclImdb/``
    folder; without it the archive is downloaded once into ``~/.cache/rlfl`` (84 MB). ``split`` is
    "train" or "test"; ``n`` keeps a seeded random subset.

    Example:
        >>> prompts = imdb_prompts("../shared/data/imdb", split="test", n=100)   # doctest: +SKIP
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; pass 'train' or 'test'")
    resolved = None if path is None else str(Path(path).expanduser().resolve())
    texts = list(_imdb_prompts(resolved, split, _check_words(words), int(seed)))
    where = f"imdb ({path or 'download'}, split {split})"
    if not texts:
        raise ValueError(f"{where}: no reviews found; {_IMDB_HELP}")
    return PromptList(_subsample(texts, n, seed, where), name=f"imdb_prompts({split})")


@lru_cache(maxsize=4)
def _imdb_prompts(path: str | None, split: str, words: tuple[int, int], seed: int) -> tuple[str, ...]:
    # Cached: 25k reviews take about half a second to read, and a run makes several envs from one file.
    from rlfl.data import clean_text
    from rlfl.download import DownloadError, dataset_documents

    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder (IMDB data_path); {_IMDB_HELP}, or leave "
                                    "data_path out to download it")
        if p.is_dir() and (p / f"imdb_{split}.jsonl.gz").is_file():
            p = p / f"imdb_{split}.jsonl.gz"
        docs = dataset_documents("imdb", p)
    else:
        try:
            docs = dataset_documents("imdb")
        except DownloadError as e:
            raise DownloadError(f"cannot download IMDB ({e}); {_IMDB_HELP}") from None
    # The archive and the aclImdb tree hold both splits (and unlabelled reviews): keep the one asked for.
    # Only the first words are kept, so clean only the head of each review (cleaning all of it is 5x slower).
    texts = (clean_text(d.text[:_IMDB_HEAD_CHARS]) for d in docs if d.meta.get("split", split) == split)
    return tuple(_first_words(texts, words, seed))


# -------------------------------------------------------------------------------------------- HH-RLHF
def hh_prompts(path: str | os.PathLike, *, subsets: Sequence[str] = ("helpful-base",), split: str = "test",
               n: int | None = None, seed: int = 0) -> PromptList:
    """HH-RLHF dialogue prompts: each ``chosen`` dialogue up to and including its last ``"\\n\\nAssistant:"``.

    ``path`` is the hh-rlhf folder (``<subset>/<split>.jsonl.gz`` inside, as in shared/data/hh-rlhf), one
    subset folder, or one ``.jsonl.gz`` file. The prompt keeps the dialogue format the reward model was
    trained on ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"), so a completion is
    the next Assistant turn. Rows with no Assistant turn are skipped (logged).

    Example:
        >>> prompts = hh_prompts("../shared/data/hh-rlhf", n=100)      # doctest: +SKIP
        >>> prompts[0].endswith("\\n\\nAssistant:")                      # doctest: +SKIP
        True
    """
    subsets = (subsets,) if isinstance(subsets, str) else tuple(subsets)
    files = _hh_files(Path(path).expanduser(), subsets, split)
    texts: list[str] = []
    for f in files:
        texts.extend(_hh_file_prompts(str(f.resolve())))
    return PromptList(_subsample(texts, n, seed, str(path)), name=f"hh_prompts({', '.join(subsets)})")


def _hh_files(path: Path, subsets: tuple[str, ...], split: str) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (HH-RLHF data_path); {_HH_HELP}")
    if path.is_file():
        return [path]
    if (path / f"{split}.jsonl.gz").is_file():  # one subset folder
        return [path / f"{split}.jsonl.gz"]
    if not subsets:
        raise ValueError(f"subsets=(); pass one or more of {', '.join(HH_SUBSETS)}")
    files = [path / s / f"{split}.jsonl.gz" for s in subsets]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file; {_HH_HELP}")
    return files


@lru_cache(maxsize=8)
def _hh_file_prompts(path: str) -> tuple[str, ...]:
    out, skipped = [], 0
    for lineno, row in iter_jsonl(path):
        chosen = row.get("chosen") if isinstance(row, dict) else None
        if not isinstance(chosen, str):
            raise ValueError(f"{path} line {lineno}: no string field 'chosen'; HH-RLHF lines are "
                             "{\"chosen\": dialogue, \"rejected\": dialogue}")
        cut = chosen.rfind(HH_ASSISTANT)
        if cut < 0:
            skipped += 1
            continue
        out.append(chosen[:cut + len(HH_ASSISTANT)])
    if skipped:
        logger.warning("%s: skipped %d dialogues with no '\\n\\nAssistant:' turn", path, skipped)
    if not out:
        raise ValueError(f"{path}: no dialogue with an '\\n\\nAssistant:' turn; {_HH_HELP}")
    return tuple(out)

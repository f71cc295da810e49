"""Reward-model data: preference pairs and labelled texts, read and validated line by line.

Two file formats, JSONL (optionally .gz), one record a line:

    pairs:   {"prompt": str, "chosen": str, "rejected": str,
              "margin": float?, "tie": bool? | "label": "tie"?, "source": str?}
    labels:  {"prompt": str?, "text": str, "label": float | int | bool | "positive" | "negative"}

A pair says "chosen is better than rejected" (by at least ``margin`` in reward units, default 0); a tie
says neither is. ``prompt`` may be "" (IMDB reviews have none) but must be present, so that a file that
lost its prompts by accident does not train quietly on completions alone. Labels become floats:
``"positive"``/``"pos"`` = 1, ``"negative"``/``"neg"`` = 0, booleans 1/0. A label file whose labels are
all 0 or 1 is *binary* (trained with a logistic loss), any other is *scalar* (trained with squared error).

Each bad line (not JSON, not an object, a missing key, an empty text, chosen == rejected, a wrong type, a
non-finite number) is named with its file and line: ``on_bad_line="error"`` raises a one-line ValueError,
``"skip"`` logs the first few and counts them all in ``.skipped``.

Converters for two public data sets (see ../shared/data/README.md):

- **HH-RLHF** (``read_hh``): each row holds two whole dialogues; they share everything up to and including
  the last ``"\\n\\nAssistant:"`` (the prompt) and differ in the final reply. Upstream rows whose prompts
  differ, whose replies are equal, or whose reply is empty are skipped and counted by reason.
- **IMDB** (``read_imdb_labels``, ``imdb_pairs``): reviews with ``label`` 1/0, cleaned with
  ``rlfl.data.clean_text`` (``<br />`` becomes a newline); as class labels, or as pairs of one positive and
  one negative review, paired deterministically by seed, with an empty prompt.

``load_reward_data(spec)`` reads any of them from one string, the ``--data`` of ``rlfl reward train``:
``FILE`` (format detected from the first record), ``hh:FILE[,FILE...]``, ``imdb:FILE[,FILE...]`` (pairs)
or ``imdb-labels:FILE[,FILE...]``.

Example:
    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "pairs.jsonl")
    >>> with open(path, "w") as f:
    ...     _ = f.write(json.dumps({"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}) + "\\n")
    >>> read_pairs(path).pairs[0].chosen
    ' 4'
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

# The line reader (gzip, BOM, UTF-8 and JSON errors as values) and the bad-record type are shared with the
# SFT reader, so both report bad lines the same way.
from rlfl.data import clean_text
from rlfl.sft_data import MAX_WARNINGS as MAX_WARNINGS  # re-exported: one warning cap for every reader
from rlfl.sft_data import _BadRecord, _iter_jsonl, _json_type, _text, collect_records

logger = logging.getLogger(__name__)

SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
PAIR_SHAPE = '{"prompt", "chosen", "rejected"} (+ optional "margin", "tie", "source")'
LABEL_SHAPE = '{"prompt"?, "text", "label"}'
HH_ASSISTANT = "\n\nAssistant:"
POSITIVE = {"positive": 1.0, "pos": 1.0, "negative": 0.0, "neg": 0.0}
CONVERTERS = ("hh", "imdb", "imdb-labels")

T = TypeVar("T")


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``prompt + chosen`` is better than ``prompt + rejected`` (or as good, if ``tie``)."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    tie: bool = False
    source: str = ""


@dataclass(frozen=True)
class LabeledText:
    """One text with a scalar or 0/1 label (``prompt`` may be "")."""

    prompt: str
    text: str
    label: float


@dataclass
class PreferenceData:
    """The pairs of one or more files, with how many records were skipped and why."""

    pairs: list[PreferencePair]
    skipped: int = 0
    source: str = ""
    skip_reasons: dict[str, int] = field(default_factory=dict)

    kind = "pairs"

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class LabelData:
    """The labelled texts of one or more files; ``binary`` when every label is 0 or 1."""

    examples: list[LabeledText]
    skipped: int = 0
    source: str = ""
    skip_reasons: dict[str, int] = field(default_factory=dict)

    kind = "labels"

    @property
    def binary(self) -> bool:
        return all(e.label in (0.0, 1.0) for e in self.examples)

    def __len__(self) -> int:
        return len(self.examples)


# ----------------------------------------------------------------------------------------------
# Field checks
# ----------------------------------------------------------------------------------------------

def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRecord(f"'{name}' is {_json_type(value)}, not a number")
    if not math.isfinite(value):
        raise _BadRecord(f"'{name}' is {value}, not a finite number")
    return float(value)


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, _BadRecord):
        raise value
    if not isinstance(value, dict):
        raise _BadRecord(f"expected a JSON object, got {_json_type(value)}")
    return value


def parse_pair(value: Any) -> PreferencePair:
    """One parsed JSON record -> a PreferencePair; raises ``_BadRecord`` saying what is wrong."""
    obj = _object(value)
    if "prompt" not in obj and ("chosen" in obj or "rejected" in obj):
        raise _BadRecord('no field \'prompt\' (use "prompt": "" for pairs without one)')
    prompt = _text(obj, "prompt", nonempty=False)
    chosen, rejected = _text(obj, "chosen"), _text(obj, "rejected")
    if chosen == rejected:
        raise _BadRecord("'chosen' and 'rejected' are the same text (the pair says nothing)")
    label = obj.get("label")
    if label is not None and label != "tie":
        raise _BadRecord(f"'label' of a pair may only be \"tie\", got {label!r}")
    tie = obj.get("tie", False)
    if not isinstance(tie, bool):
        raise _BadRecord(f"'tie' is {_json_type(tie)}, not true/false")
    tie = tie or label == "tie"
    margin = _number(obj["margin"], "margin") if obj.get("margin") is not None else 0.0
    if tie and margin != 0.0:
        raise _BadRecord("a tie cannot have a 'margin'; drop one of them")
    source = _text(obj, "source", required=False, nonempty=False)
    return PreferencePair(prompt, chosen, rejected, margin, tie, source)


def parse_label(value: Any) -> LabeledText:
    """One parsed JSON record -> a LabeledText; raises ``_BadRecord`` saying what is wrong."""
    obj = _object(value)
    prompt = _text(obj, "prompt", required=False, nonempty=False)
    text = _text(obj, "text")
    if "label" not in obj:
        raise _BadRecord("no field 'label'")
    raw = obj["label"]
    if isinstance(raw, bool):
        label = float(raw)
    elif isinstance(raw, str):
        if raw.strip().lower() not in POSITIVE:
            raise _BadRecord(f"'label' is {raw!r}; use a number or \"positive\"/\"negative\"")
        label = POSITIVE[raw.strip().lower()]
    else:
        label = _number(raw, "label")
    return LabeledText(prompt, text, label)


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------

def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; check the path of the reward data")
    if not p.name.lower().endswith(SUFFIXES):
        raise ValueError(f"{p}: unsupported file type; use JSON Lines ({', '.join(SUFFIXES)}) with one "
                         f"record a line, pairs {PAIR_SHAPE} or labels {LABEL_SHAPE}")
    return p


def _check_on_bad_line(on_bad_line: str) -> None:
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line={on_bad_line!r} must be 'error' or 'skip'; pass --on-bad-line error|skip")


def _read(path: Path, parse: Callable[[Any], T], *, on_bad_line: str, limit: int | None) -> tuple[list[T], int]:
    """Every good record of ``path`` (up to ``limit``), and how many bad ones were skipped."""
    _check_on_bad_line(on_bad_line)
    if limit is not None and limit < 1:
        raise ValueError(f"max_examples={limit} must be >= 1 (or None for all); fix --max-examples")
    return collect_records(path, _iter_jsonl(path), parse, on_bad_line=on_bad_line, limit=limit, unit="line")


def _nonempty(path: Path, items: list, skipped: int, shape: str) -> None:
    if not items:
        why = f"all {skipped} records were bad" if skipped else "it holds no records"
        raise ValueError(f"{path}: no usable records ({why}); pass a JSONL file of {shape}")


def read_pairs(path: str | os.PathLike, *, on_bad_line: str = "error", max_pairs: int | None = None) -> PreferenceData:
    """Read a preference-pairs JSONL(.gz) file (see the module docstring for the record shape).

    Example:
        >>> data = read_pairs("pairs.jsonl", on_bad_line="skip")   # doctest: +SKIP
        >>> data.pairs[0].prompt, data.skipped                      # doctest: +SKIP
        ('Q: 2+2?', 0)
    """
    p = _check_path(path)
    pairs, skipped = _read(p, parse_pair, on_bad_line=on_bad_line, limit=max_pairs)
    _nonempty(p, pairs, skipped, PAIR_SHAPE)
    logger.info("read %d preference pairs from %s", len(pairs), p)
    return PreferenceData(pairs, skipped, str(p), {"bad line": skipped} if skipped else {})


def read_labels(path: str | os.PathLike, *, on_bad_line: str = "error", max_examples: int | None = None) -> LabelData:
    """Read a labelled-texts JSONL(.gz) file ``{"prompt"?, "text", "label"}``."""
    p = _check_path(path)
    examples, skipped = _read(p, parse_label, on_bad_line=on_bad_line, limit=max_examples)
    _nonempty(p, examples, skipped, LABEL_SHAPE)
    logger.info("read %d labelled texts from %s", len(examples), p)
    return LabelData(examples, skipped, str(p), {"bad line": skipped} if skipped else {})


def detect_format(path: str | os.PathLike) -> str:
    """``"pairs"`` or ``"labels"``, from the fields of the first JSON object in the file."""
    p = _check_path(path)
    for lineno, value in _iter_jsonl(p):
        if not isinstance(value, dict):
            continue
        if "chosen" in value or "rejected" in value:
            return "pairs"
        if "text" in value or "label" in value:
            return "labels"
        raise ValueError(f"{p} line {lineno}: neither pairs {PAIR_SHAPE} nor labels {LABEL_SHAPE} (fields: "
                         f"{', '.join(value) or 'none'}); fix the file or pass --format pairs|labels")
    raise ValueError(f"{p}: no JSON object found; pass a JSONL file of pairs {PAIR_SHAPE} or labels {LABEL_SHAPE}")


# ----------------------------------------------------------------------------------------------
# HH-RLHF
# ----------------------------------------------------------------------------------------------

class _Skip(Exception):
    """A known upstream quirk of a row: skipped and counted whatever on_bad_line says."""


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(shared prompt, chosen reply, rejected reply) of one HH-RLHF row.

    The prompt is everything up to and including the last ``"\\n\\nAssistant:"``; each reply is the rest
    (it keeps its leading space, so ``prompt + reply`` is the original dialogue). Raises ValueError when a
    dialogue has no assistant turn, the prompts differ, the replies are equal or a reply is empty.

    Example:
        >>> split_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "\\n\\nHuman: Hi\\n\\nAssistant: Go away.")
        ('\\n\\nHuman: Hi\\n\\nAssistant:', ' Hello!', ' Go away.')
    """
    i, j = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if i < 0 or j < 0:
        raise ValueError(f"no '\\n\\nAssistant:' turn in the {'chosen' if i < 0 else 'rejected'} dialogue")
    cut_c, cut_r = i + len(HH_ASSISTANT), j + len(HH_ASSISTANT)
    prompt, reply_c, reply_r = chosen[:cut_c], chosen[cut_c:], rejected[cut_r:]
    if prompt != rejected[:cut_r]:
        raise _Skip("prompts differ")
    if reply_c == reply_r:
        raise _Skip("equal replies")
    if not reply_c.strip() or not reply_r.strip():
        raise _Skip("empty reply")
    return prompt, reply_c, reply_r


def _hh_pair(source: str) -> Callable[[Any], PreferencePair | _Skip]:
    def parse(value: Any) -> PreferencePair | _Skip:
        obj = _object(value)
        chosen, rejected = _text(obj, "chosen"), _text(obj, "rejected")
        try:
            return PreferencePair(*split_hh_dialogue(chosen, rejected), source=source)
        except _Skip as quirk:
            return quirk
        except ValueError as e:
            raise _BadRecord(str(e)) from None
    return parse


def read_hh(paths: str | os.PathLike | list[str | os.PathLike], *, on_bad_line: str = "error",
            max_pairs: int | None = None) -> PreferenceData:
    """Read HH-RLHF ``{"chosen", "rejected"}`` dialogue files as preference pairs (prompt + two replies).

    ``source`` of each pair is the file's folder name (``helpful-base`` ...). Rows whose prompts differ,
    whose replies are equal or empty are skipped and counted in ``.skip_reasons``; malformed lines follow
    ``on_bad_line``.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    pairs: list[PreferencePair] = []
    reasons: Counter[str] = Counter()
    for path in paths:
        p = _check_path(path)
        rows, bad = _read(p, _hh_pair(p.parent.name), on_bad_line=on_bad_line, limit=None)
        reasons["bad line"] += bad
        for row in rows:
            if isinstance(row, _Skip):
                reasons[str(row)] += 1
            else:
                pairs.append(row)
        _nonempty(p, [r for r in rows if not isinstance(r, _Skip)], bad, '{"chosen", "rejected"} HH dialogues')
    reasons = Counter({k: v for k, v in reasons.items() if v})
    if reasons:
        logger.info("HH-RLHF: skipped %s", ", ".join(f"{v} ({k})" for k, v in sorted(reasons.items())))
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    return PreferenceData(pairs, sum(reasons.values()), ",".join(str(p) for p in paths), dict(reasons))


# ----------------------------------------------------------------------------------------------
# IMDB
# ----------------------------------------------------------------------------------------------

def _imdb_label(value: Any) -> LabeledText:
    ex = parse_label(value)
    if ex.label not in (0.0, 1.0):
        raise _BadRecord(f"'label' is {ex.label:g}; IMDB labels are 1 (positive) or 0 (negative)")
    text = clean_text(ex.text)
    if not text:
        raise _BadRecord("empty 'text' after cleaning")
    return LabeledText("", text, ex.label)


def read_imdb_labels(paths: str | os.PathLike | list[str | os.PathLike], *, on_bad_line: str = "error",
                     max_examples: int | None = None) -> LabelData:
    """Read IMDB-style ``{"text", "label": 1|0}`` reviews (JSONL.gz) as cleaned binary labels."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    examples: list[LabeledText] = []
    skipped = 0
    for path in paths:
        p = _check_path(path)
        got, bad = _read(p, _imdb_label, on_bad_line=on_bad_line, limit=None)
        _nonempty(p, got, bad, '{"text", "label": 1|0} reviews')
        examples += got
        skipped += bad
    if max_examples is not None:
        examples = examples[:max_examples]
    return LabelData(examples, skipped, ",".join(str(p) for p in paths), {"bad line": skipped} if skipped else {})


def pairs_from_labels(data: LabelData, *, seed: int = 0) -> PreferenceData:
    """Pairs of one positive and one negative text (binary labels), paired at random by ``seed``.

    Positives and negatives are each shuffled with ``np.random.default_rng(seed)`` and zipped, so there are
    ``min(#positive, #negative)`` pairs, each text in at most one pair; ``chosen`` is the positive one. The
    prompt is the positive example's (IMDB's is empty).
    """
    if not data.binary:
        raise ValueError(f"{data.source}: labels are not all 0/1; pairs of positive and negative texts need "
                         "binary labels")
    rng = np.random.default_rng(seed)
    pos = [e for e in data.examples if e.label == 1.0]
    neg = [e for e in data.examples if e.label == 0.0]
    pos = [pos[i] for i in rng.permutation(len(pos))]
    neg = [neg[i] for i in rng.permutation(len(neg))]
    pairs = [PreferencePair(p.prompt, p.text, n.text, source="labels") for p, n in zip(pos, neg) if p.text != n.text]
    if not pairs:
        raise ValueError(f"{data.source}: needs both positive and negative texts to make pairs")
    return PreferenceData(pairs, 0, data.source)


def imdb_pairs(paths: str | os.PathLike | list[str | os.PathLike], *, seed: int = 0, on_bad_line: str = "error",
               max_pairs: int | None = None) -> PreferenceData:
    """IMDB reviews as preference pairs: positive review chosen over a negative one, empty prompt."""
    data = pairs_from_labels(read_imdb_labels(paths, on_bad_line=on_bad_line), seed=seed)
    if max_pairs is not None:
        data.pairs = data.pairs[:max_pairs]
    return data


# ----------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------

def _converter(spec: str) -> tuple[str | None, list[str]]:
    head, sep, rest = spec.partition(":")
    if sep and head in CONVERTERS:
        files = [f for f in rest.split(",") if f]
        if not files:
            raise ValueError(f"--data {spec}: no file after '{head}:'; pass {head}:FILE[,FILE...]")
        return head, files
    return None, [spec]


def load_reward_data(spec: str, *, format: str = "auto", on_bad_line: str = "error", max_examples: int | None = None,
                     seed: int = 0) -> PreferenceData | LabelData:
    """Read reward-model data from ``FILE`` (pairs or labels), ``hh:FILES``, ``imdb:FILES`` or ``imdb-labels:FILES``.

    ``FILES`` is a comma-separated list. ``format`` ("auto" | "pairs" | "labels") applies to a plain FILE;
    the converters fix their own. ``seed`` pairs IMDB reviews (``imdb:``).

    Example:
        >>> data = load_reward_data("hh:harmless-base/test.jsonl.gz,helpful-online/test.jsonl.gz")  # doctest: +SKIP
        >>> data.kind, data.skip_reasons                                                           # doctest: +SKIP
        ('pairs', {'empty reply': 7, 'equal replies': 2, 'prompts differ': 5})
    """
    if format not in ("auto", "pairs", "labels"):
        raise ValueError(f"format={format!r}; pass --format auto, pairs or labels")
    kind, files = _converter(spec)
    if kind == "hh":
        return read_hh(files, on_bad_line=on_bad_line, max_pairs=max_examples)
    if kind == "imdb":
        return imdb_pairs(files, seed=seed, on_bad_line=on_bad_line, max_pairs=max_examples)
    if kind == "imdb-labels":
        return read_imdb_labels(files, on_bad_line=on_bad_line, max_examples=max_examples)
    fmt = detect_format(spec) if format == "auto" else format
    if fmt == "pairs":
        return read_pairs(spec, on_bad_line=on_bad_line, max_pairs=max_examples)
    return read_labels(spec, on_bad_line=on_bad_line, max_examples=max_examples)

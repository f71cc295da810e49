"""Simulated annotators: a gold scorer with the noise and biases of people, for labels at scale (AlpacaFarm style).

A human label costs seconds of someone's time; an experiment on RLHF wants thousands. A *simulated
annotator* stands in for a person: it reads the gold score of both responses (any reward source, e.g. the
synthetic corpus's `gold_sentiment`) and then errs the way people do. For each comparison, in this order:

1. **position bias** ``p``: with probability ``p`` it picks whatever is shown first, without reading;
2. **length bias** ``l``: otherwise, with probability ``l`` it picks the longer response (if the lengths
   differ; equal lengths fall through);
3. otherwise it follows the **gold** scores: the higher one wins, a tie when they differ by at most
   ``tie_margin``;
4. **noise** ``e``: finally, with probability ``e`` the choice is flipped to the *other* response (a tie
   becomes a or b at random).

So with no biases and ``noise=0.2``, labels agree with gold on 80 % of the non-tied pairs, i.e. ``noise`` is
the error rate. (AlpacaFarm's "flip to a random label" with rate r would be our ``noise = r / 2``.)
With ``position_bias=p`` the share of first-shown picks rises from about 1/2 to ``p + (1 - p) / 2``.

Everything the annotators write is marked simulated: `label_store` registers them with
``simulated=True``, their labels carry ``simulated=True`` and export as ``"source": "simulated"``.

Example:
    >>> from rlfl.synthetic import gold_sentiment
    >>> judge = SimulatedAnnotator(lambda prompt, text: gold_sentiment(text), name="sim-0", noise=0.0, seed=0)
    >>> judge.label(["", ""], ["A great film.", "An awful film."], ["An awful film.", "A great film."], ["ab", "ba"])
    ['a', 'b']
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from rlfl.envs.rewards import GoldSentiment, as_reward_source, check_scores, source_name
from rlfl.feedback.store import ORDERS, LabelStore, check_annotator, open_label_store

logger = logging.getLogger(__name__)

_A, _B, _TIE = 0, 1, 2
_NAMES = np.array(["a", "b", "tie"])
BATCH = 1000  # labels written per transaction by label_store (one fsync per batch, a bounded rollback)


def _probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")
    return float(value)


class SimulatedAnnotator:
    """A noisy, biased stand-in for a human labeller, built on a gold reward source (see the module docstring).

    ``gold`` is a reward source (``score(prompts, completions)``) or a callable ``fn(prompt, completion) ->
    float``; ``noise`` the probability a decided choice is flipped to the other response; ``position_bias``
    the probability of picking whatever is shown first; ``length_bias`` the probability of picking the
    longer response; ``tie_margin`` the gold-score gap at or below which the gold verdict is a tie.
    ``seed`` (an int or a list of ints, as numpy's ``default_rng`` takes) makes the labels reproducible.
    """

    def __init__(self, gold: Any, *, name: str, noise: float = 0.0, position_bias: float = 0.0,
                 length_bias: float = 0.0, tie_margin: float = 0.0, seed: int | Sequence[int] = 0) -> None:
        self.gold = as_reward_source(gold)
        self.name = check_annotator(name)
        self.noise = _probability(noise, "noise")
        self.position_bias = _probability(position_bias, "position_bias")
        self.length_bias = _probability(length_bias, "length_bias")
        if isinstance(tie_margin, bool) or not isinstance(tie_margin, (int, float)) or not tie_margin >= 0:
            raise ValueError(f"tie_margin={tie_margin!r} must be a number >= 0 (a gold-score gap)")
        self.tie_margin = float(tie_margin)
        self.seed = seed if isinstance(seed, int) else list(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    def settings(self) -> dict[str, Any]:
        """What this annotator is (stored as its meta in the label store)."""
        return {"gold": source_name(self.gold), "noise": self.noise, "position_bias": self.position_bias,
                "length_bias": self.length_bias, "tie_margin": self.tie_margin, "seed": self.seed}

    def _gold(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        n = len(prompts)
        if not len(responses_a) == len(responses_b) == n:
            raise ValueError(f"{self.name}: {n} prompts but {len(responses_a)} responses_a and {len(responses_b)} "
                             "responses_b; pass one of each per comparison")
        both_p, both_c = list(prompts) * 2, list(responses_a) + list(responses_b)
        scores = check_scores(self.gold.score(both_p, both_c), both_p, both_c, self.gold)
        diff = scores[:n] - scores[n:]
        return np.where(np.abs(diff) <= self.tie_margin, _TIE, np.where(diff > 0, _A, _B))

    def gold_choices(self, prompts: Sequence[str], responses_a: Sequence[str],
                     responses_b: Sequence[str]) -> list[str]:
        """The gold verdicts ("a"/"b"/"tie"), without noise or biases: what a perfect annotator would say."""
        return _NAMES[self._gold(prompts, responses_a, responses_b)].tolist()

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
              shown_orders: Sequence[str]) -> list[str]:
        """This annotator's choices ("a"/"b"/"tie") for comparisons shown in ``shown_orders`` ("ab"/"ba")."""
        if len(shown_orders) != len(prompts):
            raise ValueError(f"{self.name}: {len(prompts)} comparisons but {len(shown_orders)} shown_orders")
        for order in shown_orders:
            if order not in ORDERS:
                raise ValueError(f"shown_order {order!r} is not one of {', '.join(ORDERS)}")
        choice = self._gold(prompts, responses_a, responses_b)
        n = len(choice)
        u = self._rng.random((n, 4))  # 4 draws per comparison, so a label depends only on the seed and position
        len_a = np.array([len(r) for r in responses_a])
        len_b = np.array([len(r) for r in responses_b])
        longer = np.where(len_a > len_b, _A, np.where(len_b > len_a, _B, -1))
        use_length = (u[:, 1] < self.length_bias) & (longer >= 0)
        choice = np.where(use_length, longer, choice)
        first = np.where(np.asarray(shown_orders) == "ab", _A, _B)
        choice = np.where(u[:, 0] < self.position_bias, first, choice)  # read first: it overrides the rest
        other = np.where(choice == _A, _B, np.where(choice == _B, _A, np.where(u[:, 3] < 0.5, _A, _B)))
        choice = np.where(u[:, 2] < self.noise, other, choice)
        return _NAMES[choice].tolist()

    def __repr__(self) -> str:
        s = self.settings
        return (f"SimulatedAnnotator({self.name!r}, gold={s['gold']!r}, noise={self.noise}, "
                f"position_bias={self.position_bias}, length_bias={self.length_bias}, tie_margin={self.tie_margin})")


class AnnotatorPool:
    """Several simulated annotators; each item goes to ``per_item`` of them, chosen by seed and item id.

    An item's annotators depend only on ``seed`` and the item's id (not on which other items are in the
    batch), so labelling a store again after new items arrive keeps the earlier assignments.

    Example:
        >>> from rlfl.synthetic import gold_sentiment
        >>> gold = lambda prompt, text: gold_sentiment(text)
        >>> pool = AnnotatorPool([SimulatedAnnotator(gold, name=f"sim-{i}", seed=i) for i in range(3)], seed=0)
        >>> {name: len(ids) for name, ids in pool.assign(range(1, 101), per_item=2).items()}
        {'sim-0': 74, 'sim-1': 64, 'sim-2': 62}
    """

    def __init__(self, annotators: Sequence[SimulatedAnnotator], *, seed: int = 0) -> None:
        self.annotators = list(annotators)
        if not self.annotators:
            raise ValueError("AnnotatorPool needs at least one SimulatedAnnotator")
        names = [a.name for a in self.annotators]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"AnnotatorPool: annotator name(s) {', '.join(map(repr, dupes))} used twice; give "
                             "each annotator its own name")
        self.seed = seed

    def assign(self, item_ids: Sequence[int], *, per_item: int = 1) -> dict[str, list[int]]:
        """Annotator name -> the item ids it labels (each item to ``per_item`` distinct annotators)."""
        if not 1 <= per_item <= len(self.annotators):
            raise ValueError(f"per_item={per_item} must be between 1 and the {len(self.annotators)} annotators "
                             "of the pool")
        out: dict[str, list[int]] = {a.name: [] for a in self.annotators}
        for item_id in item_ids:
            # A string seed is hashed with SHA-512 by random.Random: stable across runs and Python versions.
            picked = random.Random(f"pool:{self.seed}:{item_id}").sample(range(len(self.annotators)), per_item)
            for i in sorted(picked):
                out[self.annotators[i].name].append(item_id)
        return out


def label_store(store: LabelStore, annotators: Sequence[SimulatedAnnotator] | AnnotatorPool, *,
                per_item: int = 1, seed: int = 0) -> dict[str, int]:
    """Have simulated annotators label the items of ``store``; returns the new labels per annotator.

    Annotators are registered with ``simulated=True`` (their settings as meta). Each item goes to
    ``per_item`` annotators of the pool (a list becomes ``AnnotatorPool(list, seed=seed)``); the shown
    order of each (item, annotator) is drawn from ``seed``. Items an annotator already labelled are left
    alone, so calling it again after importing more items labels only the new ones.

    Example:
        >>> label_store(store, [SimulatedAnnotator(gold, name="sim-0", noise=0.2, seed=0)])   # doctest: +SKIP
        {'sim-0': 500}
    """
    pool = annotators if isinstance(annotators, AnnotatorPool) else AnnotatorPool(annotators, seed=seed)
    known, counts = store.annotators(), store.counts()
    for annotator in pool.annotators:
        settings = json.loads(json.dumps(annotator.settings))  # as the store keeps it (lists, not tuples)
        old = known.get(annotator.name)
        if old is not None and old["simulated"] and counts[annotator.name]["total"] and old["meta"] != settings:
            # Adding labels under a name whose earlier labels came from other settings would mix two annotators.
            raise ValueError(f"annotator {annotator.name!r} in {store.path} labelled with settings {old['meta']}, "
                             f"not {settings}; give the new annotators other names")
        store.add_annotator(annotator.name, simulated=True, meta=settings)
    items = {item.id: item for item in store.items()}
    done = {(lab.item_id, lab.annotator) for lab in store.labels()}
    added: dict[str, int] = {}
    for annotator in pool.annotators:
        todo = [items[i] for i in pool.assign(sorted(items), per_item=per_item)[annotator.name]
                if (i, annotator.name) not in done]
        added[annotator.name] = 0
        for start in range(0, len(todo), BATCH):
            batch = todo[start:start + BATCH]
            orders = [random.Random(f"order:{seed}:{annotator.name}:{it.id}").choice(ORDERS) for it in batch]
            choices = annotator.label([it.prompt for it in batch], [it.response_a for it in batch],
                                      [it.response_b for it in batch], orders)
            store.add_labels([{"item_id": it.id, "annotator": annotator.name, "choice": c, "shown_order": o}
                              for it, c, o in zip(batch, choices, orders)])
            added[annotator.name] += len(batch)
    logger.info("%s: simulated annotators added %s labels", store.path,
                ", ".join(f"{n} ({name})" for name, n in added.items()))
    return added


# ------------------------------------------------------------------------------------ command line
@dataclass
class LabelSimulateConfig:
    """`rlfl label simulate`: label a store's items with a pool of simulated annotators (marked simulated)."""

    store: str = field(default="runs/labels.db", metadata={"help": "the SQLite label store (created by --import-jsonl)"})
    import_jsonl: str | None = field(default=None, metadata={
        "help": "JSONL of items {prompt, response_a, response_b, ...} or pairs {prompt, chosen, rejected} to add first"})
    on_bad_line: str = field(default="error", metadata={
        "help": "a bad line of --import-jsonl: error (import nothing, name the line) or skip (log it, import the rest)"})
    gold: str = field(default="gold-sentiment", metadata={
        "help": "the gold scorer: gold-sentiment (the synthetic corpus's judge on prompt + response) or a "
                "reward-model checkpoint directory"})
    annotators: int = field(default=3, metadata={"help": "simulated annotators in the pool"})
    name_prefix: str = field(default="sim", metadata={"help": "annotators are named PREFIX-0, PREFIX-1, ..."})
    noise: float = field(default=0.2, metadata={"help": "probability a label is flipped to the other response (error rate)"})
    position_bias: float = field(default=0.0, metadata={"help": "probability of picking whatever is shown first"})
    length_bias: float = field(default=0.0, metadata={"help": "probability of picking the longer response"})
    tie_margin: float = field(default=0.0, metadata={"help": "gold-score gap at or below which the verdict is a tie"})
    per_item: int = field(default=1, metadata={"help": "annotators per item (2+ gives inter-annotator agreement)"})
    seed: int = field(default=0, metadata={"help": "seed of the assignment, the shown orders and the noise"})
    out: str | None = field(default=None, metadata={"help": "also export all labels to this .jsonl file"})

    def __post_init__(self) -> None:
        if self.annotators < 1:
            raise ValueError(f"annotators={self.annotators} must be >= 1; fix --annotators")
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line={self.on_bad_line!r}; pass --on-bad-line error or skip")
        if not 1 <= self.per_item <= self.annotators:
            raise ValueError(f"per_item={self.per_item} must be between 1 and --annotators ({self.annotators})")
        check_annotator(f"{self.name_prefix}-0")
        for name in ("noise", "position_bias", "length_bias"):
            _probability(getattr(self, name), name)
        if self.tie_margin < 0:
            raise ValueError(f"tie_margin={self.tie_margin} must be >= 0; fix --tie-margin")
        if self.out is not None and not self.out.endswith(".jsonl"):
            raise ValueError(f"out={self.out!r}; pass --out FILE.jsonl")


def _gold_source(spec: str) -> Any:
    if spec == "gold-sentiment":
        return GoldSentiment()
    if Path(spec).is_dir():
        return as_reward_source(spec)
    raise ValueError(f"gold={spec!r} is neither 'gold-sentiment' nor a reward-model checkpoint directory; fix --gold")


def label_simulate(config: LabelSimulateConfig, *, stdout: TextIO | None = None) -> dict[str, int]:
    """Run `label_store` with a pool built from ``config``; returns the new labels per annotator."""
    stdout = sys.stdout if stdout is None else stdout
    gold = _gold_source(config.gold)
    pool = [SimulatedAnnotator(gold, name=f"{config.name_prefix}-{i}", noise=config.noise,
                               position_bias=config.position_bias, length_bias=config.length_bias,
                               tie_margin=config.tie_margin, seed=[config.seed, i]) for i in range(config.annotators)]
    store, new = open_label_store(config.store, import_jsonl=config.import_jsonl, on_bad_line=config.on_bad_line)
    with store:
        if config.import_jsonl is not None:
            stdout.write(f"imported {new} new items from {config.import_jsonl}\n")
        added = label_store(store, pool, per_item=config.per_item, seed=config.seed)
        stdout.write(f"SIMULATED labels added: {sum(added.values())} ("
                     + ", ".join(f"{name}: {n}" for name, n in added.items()) + f") in {config.store}\n")
        if config.out is not None:
            n = store.export_preferences(config.out)
            stdout.write(f"wrote {n} preference records (simulated ones marked) to {config.out}\n")
    return added

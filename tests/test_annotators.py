"""Simulated annotators: noise is the error rate, the biases move what they should, the pool and the store."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rlfl.envs.rewards import GoldSentiment

from rlfl.feedback.annotators import (
    AnnotatorPool,
    LabelSimulateConfig,
    SimulatedAnnotator,
    label_simulate,
    label_store,
)
from rlfl.feedback.store import LabelStore
from rlfl.synthetic import generate_reviews, gold_sentiment

N_PAIRS = 3000


def gold(prompt: str, text: str) -> float:
    return gold_sentiment(text)


@pytest.fixture(scope="module")
def pairs():
    """3000 pairs of seeded synthetic reviews, their gold verdicts and random shown orders."""
    reviews = [r.text for r in generate_reviews(2 * N_PAIRS, seed=0)]
    a, b = reviews[0::2], reviews[1::2]
    prompts = [""] * N_PAIRS
    verdicts = np.array(SimulatedAnnotator(gold, name="perfect").gold_choices(prompts, a, b))
    orders = np.random.default_rng(1).choice(["ab", "ba"], N_PAIRS).tolist()
    return prompts, a, b, verdicts, orders


def _within(observed: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    """|observed - expected| within ``sigmas`` binomial standard errors of a share out of ``n``."""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


def test_noise_free_annotator_is_gold(pairs):
    prompts, a, b, verdicts, orders = pairs
    got = SimulatedAnnotator(gold, name="s", seed=0).label(prompts, a, b, orders)
    assert got == verdicts.tolist()
    assert (verdicts == "tie").sum() < 20  # reviews almost never score exactly the same


def test_noise_02_agrees_with_gold_80_percent(pairs):
    prompts, a, b, verdicts, orders = pairs
    got = np.array(SimulatedAnnotator(gold, name="s", noise=0.2, seed=3).label(prompts, a, b, orders))
    decided = verdicts != "tie"
    agreement = float((got[decided] == verdicts[decided]).mean())
    assert _within(agreement, 0.8, int(decided.sum())), agreement
    assert not (got[decided] == "tie").any()  # a flip goes to the other response, never to a tie


def test_position_bias_raises_first_shown_picks(pairs):
    prompts, a, b, verdicts, orders = pairs
    first = np.where(np.array(orders) == "ab", "a", "b")
    decided = verdicts != "tie"
    n = int(decided.sum())
    rates = {}
    for bias in (0.0, 0.3):
        got = np.array(SimulatedAnnotator(gold, name="s", position_bias=bias, seed=5).label(prompts, a, b, orders))
        rates[bias] = float((got[decided] == first[decided]).mean())
    assert _within(rates[0.0], 0.5, n) and _within(rates[0.3], 0.3 + 0.7 * 0.5, n), rates


def test_length_bias_raises_longer_picks(pairs):
    prompts, a, b, verdicts, orders = pairs
    la, lb = np.array([len(t) for t in a]), np.array([len(t) for t in b])
    longer = np.where(la > lb, "a", "b")
    differ = la != lb
    gold_longer = float((verdicts[differ] == longer[differ]).mean())  # gold's own taste for length
    got = np.array(SimulatedAnnotator(gold, name="s", length_bias=0.4, seed=7).label(prompts, a, b, orders))
    observed = float((got[differ] == longer[differ]).mean())
    expected = 0.4 + 0.6 * gold_longer
    assert observed > gold_longer + 0.15
    assert _within(observed, expected, int(differ.sum())), (observed, expected)


def test_tie_margin_and_reward_source_object():
    judge = SimulatedAnnotator(GoldSentiment(include_prompt=False), name="s", tie_margin=0.1)
    texts_a = ["A great film.", "A good film.", "An awful film.", "A nice film."]
    texts_b = ["An awful film.", "A great film.", "A bad film.", "A good film."]
    scores_a = [gold_sentiment(t) for t in texts_a]
    scores_b = [gold_sentiment(t) for t in texts_b]
    expected = ["tie" if abs(x - y) <= 0.1 else "a" if x > y else "b" for x, y in zip(scores_a, scores_b)]
    assert judge.label([""] * 4, texts_a, texts_b, ["ab", "ba", "ab", "ba"]) == expected == ["a", "b", "b", "tie"]
    assert judge.settings["gold"] == "gold_sentiment"


def test_labels_are_reproducible_by_seed(pairs):
    prompts, a, b, _, orders = pairs
    def run(seed):
        return SimulatedAnnotator(gold, name="s", noise=0.3, position_bias=0.2, seed=seed).label(
            prompts[:200], a[:200], b[:200], orders[:200])
    assert run(11) == run(11) and run(11) != run(12)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"noise=1.5 must be a probability in \[0, 1\]"):
        SimulatedAnnotator(gold, name="s", noise=1.5)
    with pytest.raises(ValueError, match="tie_margin=-1 must be a number >= 0"):
        SimulatedAnnotator(gold, name="s", tie_margin=-1)
    with pytest.raises(ValueError, match="annotator name '' is not usable"):
        SimulatedAnnotator(gold, name="")
    with pytest.raises(ValueError, match="cannot use 3 .* as a reward"):
        SimulatedAnnotator(3, name="s")
    judge = SimulatedAnnotator(gold, name="s")
    with pytest.raises(ValueError, match="shown_order 'left' is not one of ab, ba"):
        judge.label(["", ""], ["x", "y"], ["y", "x"], ["ab", "left"])
    with pytest.raises(ValueError, match="s: 2 prompts but 1 responses_a and 2 responses_b"):
        judge.label(["", ""], ["x"], ["y", "x"], ["ab", "ab"])


# ------------------------------------------------------------------------------------ pool and store
def test_pool_assignment_is_per_item_and_seeded():
    pool = AnnotatorPool([SimulatedAnnotator(gold, name=f"sim-{i}", seed=i) for i in range(3)], seed=4)
    two = pool.assign(range(1, 301), per_item=2)
    per_item = {i: [name for name, ids in two.items() if i in ids] for i in range(1, 301)}
    assert all(len(names) == 2 for names in per_item.values())
    assert all(80 <= len(ids) <= 120 for ids in {k: v for k, v in pool.assign(range(1, 301)).items()}.values())
    later = pool.assign(range(151, 401), per_item=2)  # an item's annotators do not depend on the batch
    assert all(i in later[name] for i in range(151, 301) for name in per_item[i])
    assert two != AnnotatorPool(pool.annotators, seed=5).assign(range(1, 301), per_item=2)
    with pytest.raises(ValueError, match="per_item=4 must be between 1 and the 3 annotators"):
        pool.assign([1], per_item=4)
    with pytest.raises(ValueError, match="annotator name\\(s\\) 'sim-0' used twice"):
        AnnotatorPool([pool.annotators[0], pool.annotators[0]])


def test_label_store_writes_simulated_labels_and_resumes(tmp_path):
    reviews = [r.text for r in generate_reviews(160, seed=2)]
    items = [{"prompt": "", "response_a": reviews[i], "response_b": reviews[i + 80], "source_a": "x",
              "source_b": "y"} for i in range(80)]
    sims = [SimulatedAnnotator(gold, name=f"sim-{i}", noise=0.1, seed=i) for i in range(3)]
    with LabelStore(tmp_path / "labels.db") as store:
        store.add_items(items[:60])
        added = label_store(store, sims, per_item=2, seed=0)
        assert sum(added.values()) == 120
        assert all(lab.simulated for lab in store.labels())
        assert {lab.shown_order for lab in store.labels()} == {"ab", "ba"}
        assert store.annotators()["sim-1"] == {"simulated": True, "meta": {
            "gold": "gold", "noise": 0.1, "position_bias": 0.0, "length_bias": 0.0, "tie_margin": 0.0, "seed": 1}}
        first = [(lab.item_id, lab.annotator, lab.choice, lab.shown_order) for lab in store.labels()]
        agreement = store.agreement()
        assert sum(v["n"] for v in agreement.values()) == 60  # each item's two annotators form one pair
        assert all(0.6 <= v["raw"] <= 1.0 for v in agreement.values())  # two 10 %-noisy copies of gold

        assert label_store(store, sims, per_item=2, seed=0) == {"sim-0": 0, "sim-1": 0, "sim-2": 0}
        store.add_items(items[60:])
        assert sum(label_store(store, sims, per_item=2, seed=0).values()) == 40  # only the new items
        again = [(lab.item_id, lab.annotator, lab.choice, lab.shown_order) for lab in store.labels()]
        assert again[:120] == first

        out = tmp_path / "prefs.jsonl"
        assert store.export_preferences(out) == 160
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(r["simulated"] is True and r["source"] == "simulated" for r in records)

        store.add_label(1, "alice", "a", "ab")  # a human; a simulated annotator may not take the name
        with pytest.raises(ValueError, match="annotator 'alice' is already registered as human"):
            label_store(store, [SimulatedAnnotator(gold, name="alice")])


def test_label_store_refuses_a_name_with_other_settings(tmp_path):
    with LabelStore(tmp_path / "labels.db") as store:
        store.add_items([{"prompt": "", "response_a": "A great film.", "response_b": "An awful film."}])
        label_store(store, [SimulatedAnnotator(gold, name="sim-0", noise=0.1)])
        with pytest.raises(ValueError, match="annotator 'sim-0' in .* labelled with settings .*give the new annotators"):
            label_store(store, [SimulatedAnnotator(gold, name="sim-0", noise=0.3)])
        assert label_store(store, [SimulatedAnnotator(gold, name="sim-0", noise=0.1)]) == {"sim-0": 0}


def test_label_simulate_command(tmp_path):
    reviews = [r.text for r in generate_reviews(100, seed=4)]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": "", "chosen": a, "rejected": b}) + "\n"
                             for a, b in zip(reviews[:50], reviews[50:])))
    config = LabelSimulateConfig(store=str(tmp_path / "labels.db"), import_jsonl=str(items), annotators=2,
                                 per_item=2, noise=0.0, out=str(tmp_path / "prefs.jsonl"))
    out = io.StringIO()
    assert label_simulate(config, stdout=out) == {"sim-0": 50, "sim-1": 50}
    text = out.getvalue()
    assert "imported 50 new items" in text and "SIMULATED labels added: 100" in text
    assert "wrote 100 preference records" in text
    with LabelStore(tmp_path / "labels.db", create=False) as store:
        agreement = store.agreement()[("sim-0", "sim-1")]
        assert agreement["n"] == 50 and agreement["raw"] == 1.0  # two noise-free copies of one gold
        assert store.annotators()["sim-1"]["meta"]["seed"] == [0, 1]
    with pytest.raises(ValueError, match="per_item=3 must be between 1 and --annotators \\(2\\)"):
        LabelSimulateConfig(annotators=2, per_item=3)
    with pytest.raises(ValueError, match="noise=2.0 must be a probability"):
        LabelSimulateConfig(noise=2.0)
    with pytest.raises(ValueError, match="gold='nope' is neither 'gold-sentiment' nor a reward-model checkpoint"):
        label_simulate(LabelSimulateConfig(store=str(tmp_path / "labels.db"), gold="nope"))
    with pytest.raises(FileNotFoundError, match="other.db: no such label store; pass --import-jsonl"):
        label_simulate(LabelSimulateConfig(store=str(tmp_path / "other.db")))

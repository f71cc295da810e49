"""Tests for rlfl.synthetic: the seeded review generator and the gold sentiment judge."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlfl.data import load_shards, prepare_corpus
from rlfl.synthetic import (
    CLOSERS,
    DOMAINS,
    FILL,
    NEUTRAL_BAND,
    Review,
    generate_reviews,
    gold_sentiment,
    sentiment_label,
    synthetic_documents,
)
from rlfl.tokenizer import byte_tokenizer


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text)


def test_deterministic_by_seed():
    a, b = generate_reviews(50, seed=7), generate_reviews(50, seed=7)
    assert a == b and all(isinstance(r, Review) for r in a)
    assert [r.text for r in generate_reviews(50, seed=8)] != [r.text for r in a]
    assert generate_reviews(10, seed=7) == a[:10]


def test_variety():
    reviews = generate_reviews(5000, seed=1)
    distinct = {s for r in reviews for s in sentences(r.text)}
    assert len(distinct) >= 3000
    assert len({r.text for r in reviews}) >= 4900
    assert {r.domain for r in reviews} == {"product", "movie", "restaurant"}
    text = " ".join(r.text for r in reviews[:2000])
    for marker in (", but ", "Although ", " not ", " out of ", " at all", "I would recommend", " very "):
        assert marker in text, marker


def test_labels_and_range():
    for r in generate_reviews(500, seed=2):
        assert -1 <= r.sentiment <= 1 and r.label == sentiment_label(r.sentiment)
    assert sentiment_label(NEUTRAL_BAND) == "positive" and sentiment_label(0.0) == "neutral"


def test_gold_judge_agrees_with_the_generator():
    reviews = generate_reviews(2000, seed=3)
    polar = [r for r in reviews if r.label != "neutral"]
    agree = np.mean([np.sign(gold_sentiment(r.text)) == np.sign(r.sentiment) for r in polar])
    assert len(polar) > 1500 and agree >= 0.95
    gold = np.array([gold_sentiment(r.text) for r in reviews])
    assert np.corrcoef(gold, [r.sentiment for r in reviews])[0, 1] > 0.9


@pytest.mark.parametrize("request_, check", [
    ("positive", lambda g, rs: g.mean() > 0.3 and all(r.label == "positive" for r in rs)),
    ("negative", lambda g, rs: g.mean() < -0.3 and all(r.label == "negative" for r in rs)),
    ("neutral", lambda g, rs: abs(g.mean()) < 0.1 and all(r.label == "neutral" for r in rs)),
    (0.9, lambda g, rs: g.mean() > 0.5),
    (-0.5, lambda g, rs: -0.8 < g.mean() < -0.2),
])
def test_sentiment_control(request_, check):
    reviews = generate_reviews(300, seed=4, sentiment=request_)
    assert check(np.array([gold_sentiment(r.text) for r in reviews]), reviews)


def test_bad_sentiment_requests():
    with pytest.raises(ValueError, match="use 'positive', 'negative', 'neutral'"):
        generate_reviews(1, sentiment="happy")
    with pytest.raises(ValueError, match=r"sentiment=2 must be in \[-1, 1\]"):
        generate_reviews(1, sentiment=2)


@pytest.mark.parametrize("text, expected", [
    ("not bad at all", ">0"), ("Not bad.", ">0"), ("terrible", "<0"), ("The food was terrible!", "<0"),
    ("The meeting is at noon in room 4.", "=0"), ("It looks like a toy.", "=0"), ("", "=0"),
    ("I didn't like it.", "<0"), ("We loved it.", ">0"), ("I would not recommend this place.", "<0"),
    ("The plot was good, but the ending was awful.", "<0"),
    ("Although the ending was awful, I loved the plot.", ">0"),
    ("4 out of 5", ">0"), ("Rating: 2/10.", "<0"), ("Two stars.", "<0"), ("3 out of 5", "=0"),
    ("What a masterpiece.", ">0"), ("It could have been better.", "<0"), ("We won't be back.", "<0"),
    ("The service was not very good.", "<0"), ("No problems at all.", ">0"),
])
def test_gold_sentiment_hand_written(text, expected):
    score = gold_sentiment(text)
    assert -1 <= score <= 1
    assert {">0": score > 0.1, "<0": score < -0.1, "=0": score == 0.0}[expected], score


def test_gold_sentiment_strength():
    good, very, slightly = (gold_sentiment(f"It was {w} good.") for w in ("", "very", "slightly"))
    assert very > good > slightly > 0
    assert gold_sentiment("It was excellent.") > good
    assert gold_sentiment("It was awful.") < gold_sentiment("It was bad.") < 0
    assert gold_sentiment("It wasn't great.") < 0 < gold_sentiment("It wasn't terrible.")


def test_neutral_fragments_carry_no_sentiment():
    # Openers and facts must be sentiment-free, or labels would drift from what the grammar intended.
    for vocab in DOMAINS.values():
        for template in vocab["openers"] + vocab["facts"]:
            for i in range(3):
                filled = re.sub(r"\{(\w+)\}", lambda m: (FILL.get(m.group(1)) or
                                [a for a, _ in vocab["aspects"] if m.group(1) == "aspect"] or
                                [s for s, _ in vocab["subjects"]])[i], template)
                assert gold_sentiment(filled) == 0.0, filled
    # ...and every closer does carry some.
    assert all(abs(gold_sentiment(c)) > 0.1 for cs in CLOSERS.values() for c in cs)


def test_synthetic_documents_feed_the_pipeline(tmp_path):
    docs = synthetic_documents(200, seed=5)
    assert [d.text for d in docs] == [r.text for r in generate_reviews(200, seed=5)]
    assert docs[0].meta.keys() == {"sentiment", "label", "domain"}
    meta = prepare_corpus(docs, byte_tokenizer(), tmp_path / "shards")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] + \
        meta["duplicates_removed"] == 200
    assert len(load_shards(tmp_path / "shards").val) > 0


def test_every_word_the_generator_writes_is_in_the_grammar_vocabulary():
    from rlfl.synthetic import grammar_words, in_vocabulary_rate, words_of

    reviews = generate_reviews(5000, seed=3)
    assert all(in_vocabulary_rate(r.text) == 1.0 for r in reviews)
    used = {w for r in reviews for w in words_of(r.text)}
    assert len(used) > 500 and used <= grammar_words()


@pytest.mark.parametrize("text, expected", [
    (" The soup was tasty.", 1.0),
    (" levilainy.", 0.0),
    (" eisy a tenjoy.", 1 / 3),          # only "a" is a word of the grammar
    (" the torrible. The", 2 / 3),
    ("5 out of 5!", 1.0),                 # numbers and punctuation are not words
    ("", 1.0),
    ("I didn\u2019t enjoy the plot.", 1.0),  # typographic apostrophe
])
def test_in_vocabulary_rate_counts_made_up_words(text, expected):
    from rlfl.synthetic import in_vocabulary_rate

    assert in_vocabulary_rate(text) == pytest.approx(expected)

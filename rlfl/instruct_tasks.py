"""Small synthetic instruction tasks with exact answers: learning checks for SFT, and toy starting policies.

A base model cannot solve them by chance (the answer must follow the instruction exactly), so "exact
match on held-out prompts after SFT" is a sharp test that fine-tuning works end to end.

- ``reverse_words``: "Reverse the words: red fox runs" -> "runs fox red".
- ``review_sentiment``: a built-in synthetic review -> "positive" / "negative" (its gold label).

Example:
    >>> convs = reverse_words(2, seed=0)
    >>> convs[0][0]["role"], convs[0][1]["role"]
    ('user', 'assistant')
    >>> exact_match(["runs fox red"], ["runs fox red "])
    1.0
"""

from __future__ import annotations

import random
from typing import Sequence

WORDS = (
    "red blue green gold fox cat dog owl bird fish tree rock lake hill road ship star moon sun rain "
    "snow wind fire salt milk bread apple lemon stone cloud river field house door lamp book song king "
    "queen horse"
).split()

Conversation = list[dict[str, str]]


def reverse_words(n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 4,
                  exclude: set[str] | None = None) -> list[Conversation]:
    """``n`` distinct "reverse the words" conversations (none of whose prompts is in ``exclude``)."""
    if n < 1 or not 1 <= min_words <= max_words:
        raise ValueError(f"need n >= 1 and 1 <= min_words <= max_words (got {n}, {min_words}, {max_words})")
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Conversation] = []
    while len(out) < n:
        words = rng.sample(WORDS, rng.randint(min_words, max_words))
        prompt = "Reverse the words: " + " ".join(words)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append([{"role": "user", "content": prompt},
                    {"role": "assistant", "content": " ".join(reversed(words))}])
    return out


def review_sentiment(n: int, *, seed: int = 0) -> list[Conversation]:
    """``n`` conversations asking for the sentiment of a synthetic review; the answer is its gold label."""
    from rlfl.synthetic import generate_reviews

    reviews = [r for r in generate_reviews(2 * n, seed=seed) if r.label in ("positive", "negative")][:n]
    return [[{"role": "user", "content": f"Sentiment of this review? {r.text}"},
             {"role": "assistant", "content": r.label}] for r in reviews]


def exact_match(answers: Sequence[str], references: Sequence[str]) -> float:
    """Share of answers equal to their reference after stripping surrounding whitespace."""
    if len(answers) != len(references) or not answers:
        raise ValueError(f"need equally many answers and references (got {len(answers)} and {len(references)})")
    return sum(a.strip() == r.strip() for a, r in zip(answers, references)) / len(answers)

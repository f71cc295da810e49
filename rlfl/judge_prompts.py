"""What a judge is asked: the constitution (principles in a text file) and the judge prompt texts.

A **constitution** file holds principles: ``#`` lines are comments; one principle a line, or paragraphs
separated by blank lines; ``PRINCIPLE || OPPOSITE`` gives a principle its opposite (only
``rlfl.judges.EmbeddingJudge`` reads it, as the contrast). `JudgePrompts` turns a constitution and a pair
(or one completion) into the exact prompt text that ``LMJudge`` runs in-process and ``HTTPJudge`` sends to an
endpoint, so both ask the same question::

    Principles:
    1. The response is positive.
    ...

    Prompt: Dinner was
    Response A:  lovely.
    Response B:  awful.

    Which response is better? Answer A or B:

When an answer word is several tokens (a byte-level tokenizer spells " A" as " " + "A"), the tokens the two
words share end the prompt and the first token where they differ is the one read (`answer_tokens`). A
prompt longer than the model's context (less one token for the answer) is cut to fit: first the pair's
prompt from its left (its end is what the responses answer), then the responses from their left with equal
budgets, so truncation never favours one side.

Example:
    >>> c = parse_constitution("# mine\\nBe kind. || Be rude.\\nBe brief.")
    >>> c.render(), c.principles[0].opposite
    ('1. Be kind.\\n2. Be brief.', 'Be rude.')
    >>> print(JudgePrompts(c).ratings(["Q?"], [" Yes."])[0])
    Principles:
    1. Be kind.
    2. Be brief.
    <BLANKLINE>
    Prompt: Q?
    Response:  Yes.
    <BLANKLINE>
    Does the response follow the principles? Answer Yes or No:
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAIR_WORDS = (" A", " B")
RATE_WORDS = (" Yes", " No")
PAIR_QUESTION = "Which response is better? Answer A or B:"
RATE_QUESTION = "Does the response follow the principles? Answer Yes or No:"

DEFAULT_CONSTITUTION = """\
# rlfl's built-in constitution, for the synthetic reviews task; short, so it fits small contexts.
# One principle a line; the text after "||" is its opposite (EmbeddingJudge contrasts the two).
The response is positive. || The response is negative.
The response stays on topic. || The response is off topic.
The response is fluent English. || The response is garbled.
"""


# ------------------------------------------------------------------------------------ constitution
@dataclass(frozen=True)
class Principle:
    """One principle, and optionally its opposite (written after ``||``; only EmbeddingJudge reads it)."""

    text: str
    opposite: str | None = None


@dataclass(frozen=True)
class Constitution:
    """The principles a judge applies, and where they came from (for messages)."""

    principles: tuple[Principle, ...]
    source: str = "<built-in>"

    def render(self) -> str:
        """The numbered list the judge prompts show."""
        return "\n".join(f"{i}. {p.text}" for i, p in enumerate(self.principles, 1))


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    """Principles from text: ``#`` lines are comments; one principle a line, or paragraphs.

    If any blank line separates two principle lines, principles are paragraphs (their lines joined with
    spaces); otherwise each line is one. ``A || B`` gives principle A the opposite B.

    Example:
        >>> parse_constitution("# mine\\nBe kind. || Be rude.\\nBe brief.").render()
        '1. Be kind.\\n2. Be brief.'
    """
    lines = [ln.strip() for ln in text.splitlines() if not ln.strip().startswith("#")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if "" in lines:
        blocks, cur = [], []
        for ln in lines + [""]:
            if ln:
                cur.append(ln)
            elif cur:
                blocks.append(" ".join(cur))
                cur = []
    else:
        blocks = lines
    principles = []
    for block in blocks:
        main, sep, opposite = block.partition("||")
        if not main.strip() or (sep and not opposite.strip()):
            raise ValueError(f"{source}: principle {block!r} has an empty side of '||'; write 'PRINCIPLE || OPPOSITE'")
        principles.append(Principle(main.strip(), opposite.strip() or None))
    if not principles:
        raise ValueError(f"{source}: no principles (only comments or blank lines); write one principle a line")
    return Constitution(tuple(principles), source)


def load_constitution(path: str | os.PathLike) -> Constitution:
    """Read a constitution file (see `parse_constitution`); clear errors for a missing or empty file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: constitution file not found; pass --constitution FILE (one principle a line)"
                                " or leave it out for the built-in one")
    return parse_constitution(p.read_text(encoding="utf-8"), str(p))


def as_constitution(obj: Constitution | str | os.PathLike | Sequence[str] | None) -> Constitution:
    """A Constitution from itself, None (the built-in default), a file path, or a list of principle texts."""
    if obj is None:
        return parse_constitution(DEFAULT_CONSTITUTION, "<built-in>")
    if isinstance(obj, Constitution):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_constitution(obj)
    return parse_constitution("\n".join(obj), "<list>")


# ------------------------------------------------------------------------------------ judge prompts
@dataclass(frozen=True)
class AnswerTokens:
    """What ends the prompt (``lead``) and the two token texts whose log-probabilities are compared."""

    lead: str
    texts: tuple[str, str]
    ids: tuple[int, int] | None = None


def answer_tokens(tokenizer: Any | None, words: tuple[str, str]) -> AnswerTokens:
    """The first tokens where two answer words differ, after the tokens they share (moved into the prompt)."""
    if tokenizer is None:  # an unknown remote tokenizer: assume each word is one token, like GPT-2's " A"
        return AnswerTokens("", words)
    from rlfl.serve import token_text

    a, b = tokenizer.encode(words[0]), tokenizer.encode(words[1])
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if k >= min(len(a), len(b)):
        raise ValueError(f"answer words {words!r} tokenize so that one is a prefix of the other; pick other words")
    return AnswerTokens(tokenizer.decode(a[:k]), (token_text(tokenizer, a[k]), token_text(tokenizer, b[k])),
                        (a[k], b[k]))


def _allocate(lengths: list[int], budget: int) -> list[int]:
    """Tokens kept of [prompt, *responses]: responses whole if they fit, else equal shares of the budget."""
    resp = lengths[1:]
    if sum(resp) <= budget:
        return [min(lengths[0], budget - sum(resp)), *resp]
    keep, left = [0] * len(resp), budget
    for n, i in enumerate(sorted(range(len(resp)), key=lambda j: resp[j])):
        keep[i] = min(resp[i], left // (len(resp) - n))
        left -= keep[i]
    return [0, *keep]


class JudgePrompts:
    """The judge's prompt texts, shared by LMJudge and HTTPJudge so that both ask exactly the same thing.

    With a ``tokenizer`` the answer tokens follow it (see `answer_tokens`); with a ``context`` too, long
    prompts are cut to ``context - 1`` tokens (one is left for the answer).
    """

    def __init__(self, constitution: Any = None, tokenizer: Any | None = None, context: int | None = None) -> None:
        self.constitution = as_constitution(constitution)
        self.tokenizer = tokenizer
        self.limit = context - 1 if tokenizer is not None and context else None
        self.pair_answer = answer_tokens(tokenizer, PAIR_WORDS)
        self.rate_answer = answer_tokens(tokenizer, RATE_WORDS)
        self.truncated = 0  # prompts cut to fit so far (the judges log the change per call)
        self._head = f"Principles:\n{self.constitution.render()}\n\n"

    def _pair(self, parts: list[str]) -> list[str]:
        prompt, a, b = parts
        body = self._head + f"Prompt: {prompt}\nResponse A: {{}}\nResponse B: {{}}\n\n{PAIR_QUESTION}"
        return [body.format(a, b) + self.pair_answer.lead, body.format(b, a) + self.pair_answer.lead]

    def _rate(self, parts: list[str]) -> list[str]:
        prompt, completion = parts
        return [self._head + f"Prompt: {prompt}\nResponse: {completion}\n\n{RATE_QUESTION}" + self.rate_answer.lead]

    def pairs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[str]:
        """2n texts: every pair in the order (A, B), then every pair swapped."""
        texts = [self._pair(self._fit(self._pair, [p, x, y])) for p, x, y in zip(prompts, a, b)]
        return [t[0] for t in texts] + [t[1] for t in texts]

    def ratings(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        """One rating text per completion."""
        return [self._rate(self._fit(self._rate, [p, c]))[0] for p, c in zip(prompts, completions)]

    def _fit(self, render: Callable[[list[str]], list[str]], parts: list[str]) -> list[str]:
        if self.limit is None:
            return parts
        tok = self.tokenizer

        def longest(ps: list[str]) -> int:
            return max(len(tok.encode(t)) for t in render(ps))

        if longest(parts) <= self.limit:
            return parts
        ids = [tok.encode(p) for p in parts]
        budget = self.limit - longest([""] * len(parts))
        while budget >= 0:
            keep = _allocate([len(x) for x in ids], budget)
            cut = [tok.decode_bytes(x[len(x) - k:]).decode("utf-8", "ignore") if k else "" for x, k in zip(ids, keep)]
            over = longest(cut) - self.limit
            if over <= 0:
                self.truncated += 1
                return cut
            budget -= over
        raise ValueError(f"the judge prompt with constitution {self.constitution.source} does not fit the model's "
                         f"context of {self.limit + 1} tokens even with empty responses; shorten the constitution")

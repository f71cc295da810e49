"""Verifiable rewards: arithmetic and GSM8K problems whose answers a program checks, no reward model needed.

The reward sources below only ever see (prompt, completion) strings, so the true answer must come from the
prompt text: arithmetic prompts carry their expression, which a small hand-written parser evaluates
(integers, ``+``, ``-``, ``*``; nothing is ever passed to ``eval``), and GSM8K prompts are looked up in a
prompt -> answer map built from the data file.

Formats (what a policy has to learn):

- **Arithmetic**: the prompt is ``"Q: 23+45=? A:"`` and the expected completion is the number right away,
  ``" 68"``, then a stop token. The answer is read at the start of the completion; when something else comes
  first (``" it is 68"``), the first number anywhere is read instead, and the format credit is lost.
- **GSM8K**: the prompt is ``"Question: <question>\\nAnswer:"`` (the bare question under the chat template,
  as the SFT records have it) and the expected completion is the reasoning ending in a line
  ``"#### 72"``, as in the dataset's answers. The answer is the number after the last ``####``; with no
  ``####`` the last number of the completion is read instead, without the format credit.

`AnswerReward` scores ``format_weight * formatted + correct_weight * correct`` (defaults 0.1 and 0.9: a right
answer in the right place scores 1.0, a wrong number in the right place 0.1, no number 0.0); numbers
compare as exact fractions after dropping thousands separators ("1,080" == "1080" == "1080.0").
`exact_match` is the same check as a 0/1 gold judge.

A policy learns the format first by SFT: `write_arithmetic_sft` writes ``{prompt, response}`` records for
``rlfl sft --data``, and the GSM8K files are SFT data as they are (``{question, answer}`` records). An SFT
policy answers chat turns, so make its env with ``chat_template=True`` (``rlfl ppo --chat-template``).

Example:
    >>> import numpy as np
    >>> problems = ArithmeticProblems(level=2, n=50, seed=0)
    >>> prompt = problems.sample(np.random.default_rng(0))
    >>> prompt, problems.answer(prompt)
    ('Q: 47-16=? A:', 31)
    >>> AnswerReward(problems).score([prompt] * 4, [" 31", " 30", " it is 31", " no idea"]).tolist()
    [1.0, 0.1, 0.9, 0.0]
    >>> exact_match(problems).score([prompt] * 2, [" 31", " 30"]).tolist()
    [1.0, 0.0]
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rlfl.files import iter_jsonl

from rlfl.envs.prompts import PromptList, _subsample
from rlfl.envs.rewards import check_scores

logger = logging.getLogger(__name__)

ARITHMETIC_PROMPT = "Q: {expression}=? A:"
LEVELS = {
    1: "a+b with one-digit numbers",
    2: "a+b or a-b with two-digit numbers (a >= b, so answers are >= 0)",
    3: "a*b (two-digit times one-digit) or three one-digit numbers joined by +, - and *",
}
GSM8K_TEMPLATE = "Question: {question}\nAnswer:"
GSM8K_CHAT_TEMPLATE = "{question}"
GSM8K_MARKER = "####"
MAX_EXPRESSION_CHARS = 64  # the parser's input limit: generated expressions are far shorter

_GSM8K_HELP = ("pass data_path= the gsm8k folder (train.jsonl.gz and test.jsonl.gz of {question, answer} "
               "records, such as shared/data/sft/gsm8k) or one such .jsonl(.gz) file")


# ------------------------------------------------------------------------------------------ the parser
_TOKEN = re.compile(r"\s*(?:(\d+)|([+\-*]))")


def evaluate_expression(text: str) -> int:
    """The exact value of an integer expression of ``+``, ``-`` and ``*`` (``*`` binds tighter), parsed by hand.

    Only non-negative integer literals, the three operators and spaces are accepted: anything else
    (parentheses, names, ``**``, a sign in front of a number) is a ValueError, and nothing is ever executed.

    Example:
        >>> evaluate_expression("2+3*4-5"), evaluate_expression(" 12 - 30 ")
        (9, -18)
    """
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression {text!r}: expected a string of at most {MAX_EXPRESSION_CHARS} characters")
    tokens: list[int | str] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"expression {text!r}: unexpected {text[pos:].strip()[:1]!r} at character {pos + 1}; "
                             "only integers, +, - and * are allowed")
        tokens.append(int(m.group(1)) if m.group(1) is not None else m.group(2))
        pos = m.end()
    # Grammar: expr := term (('+' | '-') term)* ; term := int ('*' int)* ; numbers and operators alternate.
    if not tokens or len(tokens) % 2 == 0 or any(isinstance(t, str) == (i % 2 == 0) for i, t in enumerate(tokens)):
        raise ValueError(f"expression {text!r}: expected numbers separated by single operators, such as 2+3*4")
    total, term = 0, tokens[0]
    sign = 1
    for op, number in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            term *= number
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), number
    return total + sign * term


_ARITHMETIC_PROMPT_RE = re.compile(r"\s*Q:\s*([^=]*?)\s*=\s*\?\s*A:\s*")


def arithmetic_answer(prompt: str) -> int:
    """The exact answer of an arithmetic prompt in the ``"Q: <expression>=? A:"`` format.

    Example:
        >>> arithmetic_answer("Q: 23+45=? A:")
        68
    """
    m = _ARITHMETIC_PROMPT_RE.fullmatch(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError(f"prompt {prompt!r} is not an arithmetic problem; use the format "
                         f"{ARITHMETIC_PROMPT.format(expression='23+45')!r}")
    return evaluate_expression(m.group(1))


# --------------------------------------------------------------------------------------- the generator
def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, numbers.Integral) or int(level) not in LEVELS:
        choices = "; ".join(f"{k}: {v}" for k, v in LEVELS.items())
        raise ValueError(f"level={level!r}; pass level=1, 2 or 3 ({choices})")
    return int(level)


def arithmetic_problem(level: int, np_random: np.random.Generator) -> tuple[str, int]:
    """One arithmetic problem of ``level`` (see `LEVELS`) drawn with ``np_random``: (prompt, exact answer).

    Example:
        >>> arithmetic_problem(1, np.random.default_rng(0))
        ('Q: 8+6=? A:', 14)
    """
    level = _check_level(level)

    def draw(lo: int, hi: int) -> int:  # inclusive bounds
        return int(np_random.integers(lo, hi + 1))

    if level == 1:
        expression = f"{draw(0, 9)}+{draw(0, 9)}"
    elif level == 2:
        a, b = draw(10, 99), draw(10, 99)
        if np_random.random() < 0.5:
            expression = f"{a}+{b}"
        else:
            expression = f"{max(a, b)}-{min(a, b)}"
    elif np_random.random() < 0.5:
        expression = f"{draw(10, 99)}*{draw(2, 9)}"
    else:
        ops = np_random.choice(["+", "-", "*"], size=2)
        expression = f"{draw(0, 9)}{ops[0]}{draw(0, 9)}{ops[1]}{draw(0, 9)}"
    return ARITHMETIC_PROMPT.format(expression=expression), evaluate_expression(expression)


class ArithmeticProblems(PromptList):
    """A prompt source of ``n`` distinct arithmetic problems of one level, drawn with ``seed``.

    A level with fewer distinct problems than ``n`` (level 1 has 100) gives all it has. ``sample`` draws
    uniformly from the pool; ``answer(prompt)`` parses the exact answer back out of any prompt in the
    ``"Q: <expression>=? A:"`` format, so the pool is not needed to score.

    Example:
        >>> problems = ArithmeticProblems(level=1, n=1000, seed=0)
        >>> len(problems), problems[0], problems.answer(problems[0])
        (100, 'Q: 8+6=? A:', 14)
    """

    def __init__(self, level: int = 1, n: int = 1000, seed: int = 0) -> None:
        self.level = _check_level(level)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n={n!r}; pass a positive number of problems (n_prompts= in the env)")
        rng = np.random.default_rng(seed)
        seen: dict[str, None] = {}  # insertion-ordered set: the pool keeps draw order
        misses = 0
        # Stop when 2,000 draws in a row find nothing new: the level is (all but) exhausted. Level 1's
        # 100 problems are all found (missing the last one that long has odds of 2e-9).
        while len(seen) < n and misses < 2000:
            before = len(seen)
            seen.setdefault(arithmetic_problem(self.level, rng)[0])
            misses = 0 if len(seen) > before else misses + 1
        if len(seen) < n:
            logger.info("arithmetic level %d: %d distinct problems found for n=%d; using them all",
                        self.level, len(seen), n)
        super().__init__(seen, name=f"arithmetic(level={self.level}, n={n}, seed={seed})")

    @staticmethod
    def answer(prompt: str) -> int:
        """The exact answer of an arithmetic prompt (see `arithmetic_answer`)."""
        return arithmetic_answer(prompt)


def write_arithmetic_sft(path: str | os.PathLike, *, level: int = 1, n: int = 1000, seed: int = 0) -> Path:
    """Write ``n`` arithmetic problems of ``level`` as SFT records ``{"prompt", "response"}`` (JSONL, .gz ok).

    Problems are drawn independently (repeats allowed) with ``seed``; the response is the expected
    completion, " <answer>". ``rlfl sft --data FILE`` reads it; use another seed than the env's prompts so
    that evaluation is not on memorised problems. A policy SFT'd this way answers chat turns: make the env
    with ``chat_template=True`` (``rlfl ppo --chat-template``).

    Example:
        >>> out = write_arithmetic_sft("arith.jsonl", level=1, n=2, seed=0)
        >>> print(out.read_text(), end="")
        {"prompt": "Q: 8+6=? A:", "response": " 14"}
        {"prompt": "Q: 5+2=? A:", "response": " 7"}
    """
    level = _check_level(level)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n={n!r}; pass a positive number of SFT examples")
    path = Path(path)
    rng = np.random.default_rng(seed)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for _ in range(int(n)):
            prompt, answer = arithmetic_problem(level, rng)
            f.write(json.dumps({"prompt": prompt, "response": f" {answer}"}) + "\n")
    logger.info("wrote %d arithmetic SFT examples (level %d) to %s", n, level, path)
    return path


# ------------------------------------------------------------------------------------------- GSM8K
def gsm8k_final_answer(answer: str) -> str:
    """The final number of a GSM8K answer (the text after its last ``####``), thousands separators dropped.

    Example:
        >>> gsm8k_final_answer("48/2 = <<48/2=24>>24 in May.\\n#### 1,072")
        '1072'
    """
    head, marker, tail = answer.rpartition(GSM8K_MARKER)
    final = tail.strip().replace(",", "")
    if not marker or _number(final) is None:
        raise ValueError(f"answer {answer[-60:]!r} does not end in '#### <number>'")
    return final


class GSM8KProblems(PromptList):
    """GSM8K questions as prompts, with the final answer of each: a prompt source that ``answer(prompt)`` can check.

    ``path`` is the gsm8k folder (``<split>.jsonl.gz`` inside, as in shared/data/sft/gsm8k) or one
    ``.jsonl(.gz)`` file of ``{"question", "answer"}`` records whose answers end in ``"#### <number>"``.
    ``template`` turns a question into a prompt (it must contain ``{question}``); ``n`` keeps a seeded
    random subset. ``answers`` maps each prompt to its final number as text.

    Example:
        >>> problems = GSM8KProblems("../shared/data/sft/gsm8k", split="test")  # doctest: +SKIP
        >>> problems.answer(problems[0])                                           # doctest: +SKIP
        '18'
    """

    def __init__(self, path: str | os.PathLike, *, split: str = "test", n: int | None = None, seed: int = 0,
                 template: str = GSM8K_TEMPLATE) -> None:
        if not isinstance(template, str) or "{question}" not in template:
            raise ValueError(f"template={template!r}; pass a string containing {{question}}, such as "
                             f"{GSM8K_TEMPLATE!r}")
        file = _gsm8k_file(Path(path).expanduser(), split)
        records = _read_gsm8k(str(file.resolve()))
        self.answers: dict[str, str] = {}
        for question, final in records:
            self.answers.setdefault(template.replace("{question}", question), final)
        texts = _subsample(list(self.answers), n, seed, str(file))
        self.answers = {t: self.answers[t] for t in texts}
        super().__init__(texts, name=f"gsm8k({file.name}, {len(texts)} problems)")

    def answer(self, prompt: str) -> str:
        """The final answer of a prompt of this set (a ValueError for any other prompt)."""
        try:
            return self.answers[prompt]
        except KeyError:
            raise ValueError(f"prompt {prompt[:60]!r} is not one of the {len(self.answers)} GSM8K prompts of "
                             f"{self.name}; score prompts drawn from this set") from None


def _gsm8k_file(path: Path, split: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (GSM8K data_path); {_GSM8K_HELP}")
    if path.is_file():
        return path
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; pass 'train' or 'test'")
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path / (split + '.jsonl.gz')}: no such file; {_GSM8K_HELP}")


@lru_cache(maxsize=4)
def _read_gsm8k(path: str) -> tuple[tuple[str, str], ...]:
    # Cached: a run makes several envs from one file.
    out = []
    for lineno, row in iter_jsonl(path):
        question = row.get("question") if isinstance(row, dict) else None
        answer = row.get("answer") if isinstance(row, dict) else None
        if not (isinstance(question, str) and isinstance(answer, str)):
            raise ValueError(f"{path} line {lineno}: expected string fields 'question' and 'answer'; GSM8K "
                             "lines are {\"question\": ..., \"answer\": \"... #### <number>\"}")
        try:
            out.append((question.strip(), gsm8k_final_answer(answer)))
        except ValueError as e:
            raise ValueError(f"{path} line {lineno}: {e}; fix or remove the line") from None
    if not out:
        raise ValueError(f"{path}: no GSM8K records; {_GSM8K_HELP}")
    return tuple(out)


# ------------------------------------------------------------------------------------- answer checking
_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_LEADING_NUMBER = re.compile(rf"\s*\$?\s*({_NUMBER})")


def _number(text: str) -> Fraction | None:
    """A number's exact value (commas dropped), or None when ``text`` is not one."""
    try:
        return Fraction(str(text).replace(",", "").strip())
    except (ValueError, ZeroDivisionError):  # also Python's limit on the digits of an int
        return None


class ParsedAnswer(NamedTuple):
    """What a completion answers: ``value`` (None when it has no number) and whether it sits in the expected place."""

    value: Fraction | None
    formatted: bool


def parse_answer(completion: str, *, marker: str | None = None) -> ParsedAnswer:
    """Read the answer of a completion.

    Without ``marker`` the expected place is the start of the completion (spaces allowed), else right
    after the last ``marker``. When the expected place holds no number, the fallback is the first number
    of the completion (no marker: the answer comes first) or the last one (with a marker: reasoning
    first), with ``formatted=False``.

    Example:
        >>> parse_answer(" 68"), parse_answer("so 3, then 4\\n#### 7", marker="####").value
        (ParsedAnswer(value=Fraction(68, 1), formatted=True), Fraction(7, 1))
    """
    start = 0
    if marker:
        cut = completion.rfind(marker)
        start = cut + len(marker) if cut >= 0 else -1
    if start >= 0:
        m = _LEADING_NUMBER.match(completion, start)
        if m is not None:
            value = _number(m.group(1))
            if value is not None:
                return ParsedAnswer(value, True)
    found = _NUMBER_RE.findall(completion)
    if not found:
        return ParsedAnswer(None, False)
    return ParsedAnswer(_number(found[-1] if marker else found[0]), False)


class AnswerReward:
    """A reward source that checks answers: ``format_weight * formatted + correct_weight * correct``.

    ``answers`` gives the true answer of a prompt: an object with ``answer(prompt)`` (`ArithmeticProblems`,
    `GSM8KProblems`), a mapping prompt -> answer, or a function; answers may be ints or number strings.
    ``marker`` is where the answer is expected (see `parse_answer`: None for arithmetic, "####" for
    GSM8K). ``formatted`` is 1 when a number sits in the expected place, ``correct`` 1 when the number
    read equals the answer exactly. A prompt with no known answer is a ValueError.

    Example:
        >>> r = AnswerReward({"Q: 2+2=? A:": 4}, format_weight=0.5, correct_weight=1.0)
        >>> r.score(["Q: 2+2=? A:"] * 3, [" 4", " 5", " four"]).tolist()
        [1.5, 0.5, 0.0]
    """

    def __init__(self, answers: Any, *, marker: str | None = None, format_weight: float = 0.1,
                 correct_weight: float = 0.9, name: str | None = None) -> None:
        if not (callable(getattr(answers, "answer", None)) or isinstance(answers, Mapping) or callable(answers)):
            raise ValueError(f"answers={type(answers).__name__}; pass an object with answer(prompt) such as "
                             "ArithmeticProblems, a dict prompt -> answer, or a function prompt -> answer")
        for field, weight in (("format_weight", format_weight), ("correct_weight", correct_weight)):
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"{field}={weight!r}; pass a finite number such as 0.1")
        self.answers = answers
        self.marker = marker or None
        self.format_weight = float(format_weight)
        self.correct_weight = float(correct_weight)
        self.name = name or "answer_reward"

    def answer(self, prompt: str) -> Fraction:
        """The exact true answer of ``prompt``."""
        if callable(getattr(self.answers, "answer", None)):
            raw = self.answers.answer(prompt)
        elif isinstance(self.answers, Mapping):
            if prompt not in self.answers:
                raise ValueError(f"{self.name}: no known answer for prompt {prompt[:60]!r}; add it to the answers")
            raw = self.answers[prompt]
        else:
            raw = self.answers(prompt)
        value = _number(raw) if isinstance(raw, (str, numbers.Rational)) else None
        if value is None:
            raise ValueError(f"{self.name}: the answer of prompt {prompt[:60]!r} is {raw!r}, not a number; "
                             "give answers as ints or number strings")
        return value

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """One float per completion: the format credit plus the correctness credit."""
        out = np.zeros(len(completions), dtype=np.float64)
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            parsed = parse_answer(completion, marker=self.marker)
            correct = parsed.value is not None and parsed.value == self.answer(prompt)
            out[i] = self.format_weight * parsed.formatted + self.correct_weight * correct
        return check_scores(out, prompts, completions, self)

    def __repr__(self) -> str:
        return (f"AnswerReward({self.name!r}, marker={self.marker!r}, format_weight={self.format_weight:g}, "
                f"correct_weight={self.correct_weight:g})")


def exact_match(answers: Any, *, marker: str | None = None) -> AnswerReward:
    """The 0/1 gold judge of verifiable problems: 1.0 when the answer read equals the true one, format aside.

    Example:
        >>> exact_match({"Q: 2+2=? A:": 4}).score(["Q: 2+2=? A:"] * 2, [" 4", "4, I think"]).tolist()
        [1.0, 1.0]
    """
    return AnswerReward(answers, marker=marker, format_weight=0.0, correct_weight=1.0, name="exact_match")

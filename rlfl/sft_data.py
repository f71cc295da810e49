"""Supervised fine-tuning data: read conversations, tokenize them with a loss mask, split, batch.

The path is `JSONL / JSON file -> SFTData (conversations) -> tokenize_conversations -> SFTExample
(ids + loss mask) -> split_examples -> SFTBatcher.batch(step)`. A record may take any of four shapes,
detected record by record, so mixed files work:

    {"prompt": ..., "response": ..., "system": ...?}        -> user, assistant (+ system first)
    {"messages": [{"role": ..., "content": ...}, ...]}        -> as is; must end with the assistant
    {"instruction": ..., "input": ...?, "output": ...}        -> Alpaca: user = instruction + "\\n\\n" + input
    {"question": ..., "answer": ...}                          -> GSM8K

How an example becomes training positions: an example of n tokens is fed as its first n-1 tokens, and
position t predicts token t+1, which counts only where the chat template's loss mask is 1 (assistant
content and its `<|end|>`); everything else gets target -100 (ignored by `F.cross_entropy`). So an
example of up to `block_size + 1` tokens fits a context of `block_size`: tokenize with
`max_len=block_size + 1` to use the whole context.

Example:
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    >>> examples = tokenize_conversations(convs, tok, max_len=64)
    >>> x, y = SFTBatcher(examples, batch_size=1, block_size=63, pad_id=tok.pad_id, seed=0).batch(0)
    >>> tok.decode(x[0]), tok.decode([t for t in y[0].tolist() if t != -100])
    ('<|user|>hi<|end|><|assistant|>yo', 'yo<|end|>')
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rlfl.chat_template import render_chat, validate_messages
from rlfl.data import check_sampler_args
from rlfl.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index
MAX_WARNINGS = 10  # bad-line warnings logged one by one in skip mode; the rest are only counted
SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")
SHAPES = "{prompt, response}, {messages}, {instruction, input, output} or {question, answer}"

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

@dataclass
class SFTData:
    """The conversations of an SFT file: each a list of {"role", "content"} ending with the assistant."""

    conversations: list[list[dict[str, str]]]
    skipped: int = 0
    source: str = ""


class _BadRecord(Exception):
    """What is wrong with one record (the reader adds the file, line and fix)."""


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _text(obj: dict[str, Any], name: str, *, required: bool = True, nonempty: bool = True) -> str:
    if name not in obj:
        if required:
            raise _BadRecord(f"no field '{name}'")
        return ""
    value = obj[name]
    if not isinstance(value, str):
        raise _BadRecord(f"'{name}' is {_json_type(value)}, not a string")
    if nonempty and not value.strip():
        raise _BadRecord(f"empty '{name}'")
    return value


def _conversation(obj: Any) -> list[dict[str, str]]:
    """One record -> one conversation, whatever its shape; raises _BadRecord saying what is wrong."""
    if not isinstance(obj, dict):
        raise _BadRecord(f"expected a JSON object, got {_json_type(obj)}")
    if "messages" in obj:
        try:
            messages = validate_messages(obj["messages"], "'messages'")
        except ValueError as e:
            raise _BadRecord(str(e)) from None
        last = messages[-1]
        if last["role"] != "assistant":
            raise _BadRecord(f"the last message is from the {last['role']}, not the assistant "
                             "(SFT learns the final assistant turn)")
        if not last["content"].strip():
            raise _BadRecord("empty 'content' in the last (assistant) message")
        return messages
    if "prompt" in obj or "response" in obj:
        user, answer = _text(obj, "prompt"), _text(obj, "response")
    elif "instruction" in obj or "output" in obj:
        user, answer = _text(obj, "instruction"), _text(obj, "output")
        extra = _text(obj, "input", required=False, nonempty=False)
        if extra.strip():
            user = f"{user}\n\n{extra}"
    elif "question" in obj or "answer" in obj:
        user, answer = _text(obj, "question"), _text(obj, "answer")
    else:
        fields = ", ".join(obj) or "none"
        raise _BadRecord(f"no known SFT fields (fields here: {fields}); expected {SHAPES}")
    system = _text(obj, "system", required=False, nonempty=False)
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or _BadRecord) for every non-blank line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, _BadRecord(f"byte {exc.start + 1} of the line is 0x{raw[exc.start]:02x}, not UTF-8 "
                                         "(re-save the file as UTF-8)")
                continue
            if lineno == 1:
                line = line.lstrip("\ufeff")  # a byte-order mark some editors write
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, _BadRecord(f"not valid JSON ({e.msg} at column {e.colno})")


_WS = re.compile(r"\s*")


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line where the element starts, element) for each element of a JSON array file.

    json.loads would lose where each element sits; decoding one element at a time with raw_decode
    keeps its line, so an error in record 1,437 of a pretty-printed file points at its line.
    """
    decoder = json.JSONDecoder()
    i = _WS.match(text, text.index("[") + 1).end()
    line, counted = 1, 0

    def lineno(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    if text.startswith("]", i):
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                             "fix the file (it must hold one JSON array)") from None
        yield lineno(i), value
        i = _WS.match(text, end).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
        elif text.startswith("]", i):
            if _WS.match(text, i + 1).end() != len(text):
                raise ValueError(f"{path} line {lineno(i)}: text after the closing ']'; fix the file "
                                 "(it must hold one JSON array)")
            return
        else:
            raise ValueError(f"{path} line {lineno(i)}: expected ',' or ']' after an array element; "
                             "fix the file (it must hold one JSON array)")


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """Every record of a file with its line, from a JSON array (.json) or one object per line."""
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        text = _read_text(path)
        # Many ".json" files are really JSON Lines; only a leading '[' makes it an array.
        if text.lstrip("\ufeff \t\r\n").startswith("["):
            return _iter_json_array(path, text.lstrip("\ufeff"))
    return _iter_jsonl(path)


def _read_text(path: Path) -> str:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None


def collect_records(path: Path, records: Iterable[tuple[int, Any]], parse: Callable[[Any], T], *,
                    on_bad_line: str, limit: int | None, unit: str = "line") -> tuple[list[T], int]:
    """Parse every (line number, value) record; bad ones are fatal or skipped with capped warnings.

    The one bad-line policy of every JSONL reader (SFT data, preference pairs, labels): ``parse`` raises
    ``_BadRecord`` (a value that is already a ``_BadRecord``, e.g. invalid JSON, counts as bad too);
    ``on_bad_line="error"`` turns it into a one-line ValueError naming the file and line, ``"skip"`` logs
    the first MAX_WARNINGS and a summary. Returns the parsed records (at most ``limit``) and the skip count.
    """
    out: list[T] = []
    skipped = 0
    try:
        for lineno, value in records:
            try:
                if isinstance(value, _BadRecord):
                    raise value
                out.append(parse(value))
            except _BadRecord as bad:
                if on_bad_line == "error":
                    raise ValueError(f"{path} line {lineno}: {bad}; fix it or pass --on-bad-line skip") from None
                skipped += 1
                if skipped <= MAX_WARNINGS:
                    logger.warning("%s line %d: %s; skipped", path, lineno, bad)
            if limit is not None and len(out) >= limit:
                break
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e}); re-download or re-compress it") from None
    if skipped:
        more = f" ({skipped - MAX_WARNINGS} not shown above)" if skipped > MAX_WARNINGS else ""
        logger.warning("%s: skipped %d bad %s(s)%s", path, skipped, unit, more)
    return out, skipped


def read_sft(path: str | os.PathLike, *, on_bad_line: str = "error", max_examples: int | None = None) -> SFTData:
    """Read the conversations of an SFT file (.jsonl, .json array, either optionally .gz).

    Each bad record (not JSON, not an object, a missing, empty or non-string field, an unknown
    shape) is named with its file and line: `on_bad_line="error"` raises a one-line ValueError,
    `"skip"` logs a warning (the first MAX_WARNINGS, then a summary) and counts it in `.skipped`.
    `max_examples` stops reading after that many good conversations.

    Example:
        >>> data = read_sft("alpaca_2k_sample.json.gz")   # doctest: +SKIP
        >>> len(data.conversations), data.conversations[0][-1]["role"]   # doctest: +SKIP
        (2000, 'assistant')
    """
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line={on_bad_line!r} must be 'error' or 'skip'; pass --on-bad-line error|skip")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples={max_examples} must be >= 1 (or None for all); fix --max-examples")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; check the path of the SFT data")
    if not path.name.lower().endswith(SUFFIXES):
        raise ValueError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)} "
                         f"holding records like {SHAPES}")
    conversations, skipped = collect_records(path, _records(path), _conversation, on_bad_line=on_bad_line,
                                             limit=max_examples, unit="record")
    if not conversations:
        why = f"all {skipped} records were bad" if skipped else "it holds no records"
        raise ValueError(f"{path}: no SFT examples ({why}); pass a file of records like {SHAPES}")
    logger.info("read %d conversations from %s", len(conversations), path)
    return SFTData(conversations, skipped, str(path))


# ----------------------------------------------------------------------------------------------
# Tokenization and split
# ----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class SFTExample:
    """One tokenized conversation: ids and a 0/1 loss mask (1 on assistant content and its `<|end|>`)."""

    ids: np.ndarray     # int64, (n,)
    mask: np.ndarray    # bool, (n,)
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_supervised(self) -> int:
        """Tokens the loss learns from (position 0 is a role marker, never learned)."""
        return int(self.mask[1:].sum())

    def inputs_targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids[:-1], targets): target t is ids[t+1] where mask[t+1] is 1, else IGNORE_INDEX."""
        return self.ids[:-1], np.where(self.mask[1:], self.ids[1:], IGNORE_INDEX)


class SFTExamples(list):
    """A list of SFTExample that also says how many were truncated and how many dropped."""

    truncated: int = 0
    dropped: int = 0


def tokenize_conversations(conversations: Sequence[Sequence[dict[str, str]]], tokenizer: Tokenizer, *,
                           max_len: int) -> SFTExamples:
    """Render each conversation with the chat template; cut it to `max_len` tokens from the right.

    Cutting keeps the prompt and shortens the response. A conversation with no assistant token left
    (its prompt alone fills `max_len`) is dropped. The result is a plain list of SFTExample with the
    counts in `.truncated` and `.dropped` (both are logged too).
    """
    if max_len < 2:
        raise ValueError(f"max_len={max_len} must be >= 2 (a prompt token and a response token); "
                         "raise --block-size")
    out = SFTExamples()
    for conv in conversations:
        ids, mask = render_chat(tokenizer, conv)
        cut = len(ids) > max_len
        ids_a = np.asarray(ids[:max_len], dtype=np.int64)
        mask_a = np.asarray(mask[:max_len], dtype=bool)
        if not mask_a[1:].any():
            out.dropped += 1
            continue
        out.truncated += cut
        out.append(SFTExample(ids_a, mask_a, cut))
    if out.dropped:
        logger.warning("dropped %d of %d conversations whose prompt alone fills max_len=%d tokens; "
                       "raise --block-size or shorten the prompts", out.dropped, len(conversations), max_len)
    if out.truncated:
        logger.info("cut the responses of %d of %d conversations to fit max_len=%d tokens",
                    out.truncated, len(conversations), max_len)
    return out


def split_examples(examples: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split into (train, val) at random by seed; both keep the input order.

    val gets round(val_fraction * n) items, at least 1 when val_fraction > 0 and n >= 2, and never
    all of them.

    Example:
        >>> split_examples(list(range(10)), 0.2, seed=0)[1]
        [4, 6]
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1); pass e.g. --val-fraction 0.05")
    n = len(examples)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return ([e for e, v in zip(examples, is_val) if not v], [e for e, v in zip(examples, is_val) if v])


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

# Rows kept open while packing. First-fit over a few open rows fills far better than closing each row
# at the first example that does not fit: on GSM8K train (byte tokens, block 1024) 1 open row fills
# 74% of the positions, 8 rows 91%, 16 rows 93%, 64 rows 94%, and 16 still packs 7.5k examples in ~10 ms.
_OPEN_ROWS = 16


def _pack(order: np.ndarray, lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Greedy first-fit of examples (in `order`) into rows of `capacity` positions."""
    done: list[list[int]] = []
    open_rows: list[tuple[int, list[int]]] = []  # (positions used, example indices)
    for i in order.tolist():
        n = int(lengths[i])
        for k, (used, row) in enumerate(open_rows):
            if used + n <= capacity:
                row.append(i)
                open_rows[k] = (used + n, row)
                break
        else:
            if len(open_rows) == _OPEN_ROWS:  # retire the fullest row to make room
                k = max(range(len(open_rows)), key=lambda j: open_rows[j][0])
                done.append(open_rows.pop(k)[1])
            open_rows.append((n, [i]))
    done.extend(row for _, row in open_rows)
    return done


@dataclass
class _Epochs:
    """Rows of the endless training stream, epoch after epoch, found by row index."""

    make: Callable[[int], list[list[int]]]                  # epoch -> its rows
    starts: list[int] = field(default_factory=lambda: [0])  # first stream row of each epoch seen
    cache: dict[int, list[list[int]]] = field(default_factory=dict)

    def rows(self, epoch: int) -> list[list[int]]:
        if epoch not in self.cache:
            if len(self.cache) >= 2:  # a step rarely spans more than two epochs
                self.cache.pop(min(self.cache))
            self.cache[epoch] = self.make(epoch)
        return self.cache[epoch]

    def row(self, q: int) -> list[int]:
        # Row counts of packed epochs differ, so reaching row q means packing every earlier epoch
        # once (cheap: one pass over the lengths each) to know where each epoch starts.
        while self.starts[-1] <= q:
            self.starts.append(self.starts[-1] + len(self.rows(len(self.starts) - 1)))
        epoch = int(np.searchsorted(self.starts, q, side="right")) - 1
        return self.rows(epoch)[q - self.starts[epoch]]


class SFTBatcher:
    """Batches of SFT examples for the shared training loop, reproducible from (seed, step, rank).

    Training reads an endless stream of rows: epoch e is a permutation of the examples drawn from
    `np.random.default_rng([seed, e])`, and each epoch follows the last, so every example is seen once
    per epoch and no remainder is dropped. Step s of rank r takes rows `(s * world_size + r) *
    batch_size` onwards, so ranks never share a row within a step and a resumed run sees exactly the
    batches of an uninterrupted one.

    Unpacked, a row is one example and `batch(step)` is `(input_ids, targets)`, right-padded to the
    longest example of the batch (or to `block_size` with `pad_to_block=True`, for fixed shapes).
    Padding sits after every real token, so causal attention needs no mask.

    Packed, several examples fill each row of `block_size` positions, and `batch(step)` is
    `(input_ids, targets, segment_ids)`: segment ids number the examples of a row 0, 1, ... and the
    padding at the end gets the next number, so the model attends within each example only. Targets
    come from within each example, so none crosses an example boundary.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * i}]
        ...          for i in range(1, 9)]
        >>> batcher = SFTBatcher(tokenize_conversations(convs, tok, max_len=33), 2, 32,
        ...                      pad_id=tok.pad_id, seed=0, pack=True)
        >>> [t.shape for t in batcher.batch(0)]
        [torch.Size([2, 32]), torch.Size([2, 32]), torch.Size([2, 32])]
    """

    def __init__(self, examples: Sequence[SFTExample], batch_size: int, block_size: int, *, pad_id: int,
                 seed: int = 0, pack: bool = False, rank: int = 0, world_size: int = 1,
                 pad_to_block: bool = False) -> None:
        check_sampler_args(batch_size, block_size, seed, rank, world_size)
        if not examples:
            raise ValueError("no SFT examples to batch; check the data file (and --val-fraction for val)")
        self.examples = list(examples)
        # positions each example fills: n tokens are fed as n-1 inputs (the last token predicts nothing)
        self.lengths = np.array([len(e) - 1 for e in self.examples], dtype=np.int64)
        for i, e in enumerate(self.examples):
            if len(e) > block_size + 1:
                raise ValueError(f"SFT example {i} has {len(e)} tokens, more than block_size+1="
                                 f"{block_size + 1}; tokenize with max_len={block_size + 1}")
            if e.n_supervised == 0:
                raise ValueError(f"SFT example {i} has no token to learn (its loss mask is all 0); "
                                 "drop it (tokenize_conversations does)")
        self.batch_size, self.block_size, self.pad_id = batch_size, block_size, pad_id
        self.seed, self.pack, self.pad_to_block = seed, pack, pad_to_block
        self.rank, self.world_size = rank, world_size
        self._train = _Epochs(self.epoch_rows)
        self._eval_rows = (_pack(np.arange(len(self.examples)), self.lengths, block_size) if pack
                           else [[i] for i in range(len(self.examples))])
        rows_per_epoch = len(self._train.rows(0))
        per_step = batch_size * world_size
        #: optimizer steps (of one micro-batch each) to see every example once
        self.steps_per_epoch: float = rows_per_epoch / per_step
        #: `batch_at(i)` for i < this covers every eval example at least once
        self.eval_batches_per_pass: int = -(-len(self._eval_rows) // per_step)
        #: mean real (non-padding) input positions per batch of this rank, for tokens/s and MFU
        self.tokens_per_batch: int = max(1, round(batch_size * int(self.lengths.sum()) / rows_per_epoch))

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """The example indices of each row of an epoch, in stream order (one example per row unpacked)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        if self.pack:
            return _pack(order, self.lengths, self.block_size)
        return [[i] for i in order.tolist()]

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """This rank's training batch of `step`: (input_ids, targets) or, packed, (+ segment_ids)."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        first = (step * self.world_size + self.rank) * self.batch_size
        return self._assemble([self._train.row(q) for q in range(first, first + self.batch_size)])

    def batch_at(self, i: int) -> tuple[torch.Tensor, ...]:
        """Eval batch `i`: rows of the examples in their given order (no shuffle), wrapping around.

        The same i always gives the same batch, so evaluations at different steps compare.
        """
        if i < 0:
            raise ValueError(f"eval batch index {i} must be >= 0")
        first = (i * self.world_size + self.rank) * self.batch_size
        n = len(self._eval_rows)
        return self._assemble([self._eval_rows[q % n] for q in range(first, first + self.batch_size)])

    def _assemble(self, rows: list[list[int]]) -> tuple[torch.Tensor, ...]:
        widths = [int(self.lengths[row].sum()) for row in rows]
        width = self.block_size if self.pack or self.pad_to_block else max(widths)
        x = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        seg = np.empty((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            pos = 0
            for s, i in enumerate(row):
                inputs, targets = self.examples[i].inputs_targets()
                n = len(inputs)
                x[b, pos:pos + n], y[b, pos:pos + n], seg[b, pos:pos + n] = inputs, targets, s
                pos += n
            seg[b, pos:] = len(row)
        out = (torch.from_numpy(x), torch.from_numpy(y))
        return out + (torch.from_numpy(seg),) if self.pack else out

"""Streamed answers of `rlfl serve`: text sent as the batching engine's tokens come, and never more than the
whole answer says.

A streamed request is an ordinary job of the `rlfl.batching.BatchingEngine` (it shares batches, seeds and
counters with every other request) whose ``on_tokens`` callback `stream_rows` supplies. The callback runs on
the engine's worker thread at each step: it pushes the row's token into the row's `ChoiceStream`, which
decides what text may go out now, and queues that `Piece` for the HTTP thread, which writes it to the
client. The worker never waits for a client. When the client has gone (a write failed) the callback returns
False, so that row ends at its next step while the batch goes on for the other requests; a row whose text
reached a stop string ends the same way.

Example:
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> s = ChoiceStream(tok, ["!"], (tok.eot_id,), with_stop_token=False)
    >>> [s.push(t, None)[::2] for t in tok.encode("Hi!")]  # (text, finish_reason) of each piece
    [('H', None), ('i', None), ('', 'stop')]
"""

from __future__ import annotations

import codecs
import queue
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from rlfl.batching import BatchingEngine, Completion
from rlfl.generate import SamplingConfig
from rlfl.serve_logprobs import reported, token_logprobs
from rlfl.serve_requests import finish
from rlfl.tokenizer import Tokenizer

class Piece(NamedTuple):
    """What one chunk of a streamed choice carries: new text, the tokens listed with it, and the finish reason."""

    text: str
    entries: list[Any]
    finish_reason: str | None


class ChoiceStream:
    """One streamed choice: the text that may be sent as its tokens arrive, and how it ends.

    Text is held back for two reasons. Bytes that end inside a UTF-8 character wait in an incremental
    decoder until the character is complete, so no broken text goes out. And text that could be the start
    of a stop string waits until it either completes one (the choice ends there) or no longer can. Sent text
    is therefore always a prefix of the whole answer's text, and the end (`rlfl.serve_requests.finish`, the
    same function the whole answer uses) sends the rest: the deltas join to exactly the non-streamed text,
    finish_reason and usage. A token's logprobs go out with the chunk that completes its text; the rest go
    with the last chunk.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> s = ChoiceStream(tok, ["lo w"], (tok.eot_id,), with_stop_token=False)
        >>> pieces = [s.push(t, None) for t in "héllo w".encode()]  # one token per byte
        >>> [(p.text, p.finish_reason) for p in pieces if p is not None]  # "é" needs 2 bytes; "lo", "lo " wait
        [('h', None), ('é', None), ('l', None), ('', 'stop')]
        >>> s.result  # finish_reason and completion tokens, as the whole answer counts them
        ('stop', 8)
    """

    def __init__(self, tokenizer: Tokenizer, stops: list[str], stop_ids: tuple[int, ...], *,
                 with_stop_token: bool) -> None:
        self.tokenizer, self.stops, self.stop_ids, self.with_stop_token = tokenizer, stops, stop_ids, with_stop_token
        self.tokens: list[int] = []  # generated ids, the stop token excepted
        self.entries: list[Any] = []  # one per generated id, the stop token included (None without logprobs)
        self.text = ""  # the complete characters decoded so far
        self.sent = 0  # characters of text sent
        self.listed = 0  # entries sent
        self.result: tuple[str, int] | None = None  # finish_reason and completion tokens, once ended
        self._ends: list[int] = []  # characters that must be sent before token j counts as sent
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._longest = max(map(len, stops), default=0)

    def push(self, token: int, entry: Any) -> Piece | None:
        """Take the next generated token; return what may be sent now (None: nothing yet)."""
        if token in self.stop_ids:
            self.entries.append(entry)
            return self.end(stopped=True)
        self.tokens.append(token)
        self.entries.append(entry)
        self.text += self._decoder.decode(self.tokenizer.decode_bytes([token]))
        self._ends.append(len(self.text) + bool(self._decoder.getstate()[0]))  # a held byte: the next character
        found = min((i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0), default=None)
        held = self._stop_prefix_start()
        if found is not None and found <= held:  # no stop string can still complete before this one
            return self.end()
        return self._piece(held)

    def end(self, stopped: bool = False) -> Piece:
        """The last piece: the rest of the text (cut at the first stop string), its tokens and finish_reason."""
        c = Completion(self.tokens, stopped)
        text, reason, count = finish(self.tokenizer, c, self.stops)
        assert text.startswith(self.text[: self.sent]), "a streamed choice sent text past its end"
        last = len(reported(c, count, self.with_stop_token))
        piece = Piece(text[self.sent:], self.entries[self.listed: last], reason)
        self.sent, self.listed, self.result = len(text), last, (reason, count)
        return piece

    def _stop_prefix_start(self) -> int:
        """Where the earliest unsent tail of the text that a stop string starts with begins (len(text): none)."""
        n = len(self.text)
        for j in range(max(self.sent, n - self._longest + 1), n):
            tail = self.text[j:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self.stops):
                return j
        return n

    def _piece(self, upto: int) -> Piece | None:
        text, first = self.text[self.sent: upto], self.listed
        self.sent = upto
        while self.listed < len(self._ends) and self._ends[self.listed] <= self.sent:
            self.listed += 1
        return Piece(text, self.entries[first: self.listed], None) if text or self.listed > first else None


def stream_rows(engine: BatchingEngine, prompts: list[list[int]], config: SamplingConfig,
                choices: list[ChoiceStream], top: int | None, emit: Callable[[int, Piece], None]) -> None:
    """Generate ``prompts`` (one per choice) on ``engine`` and call ``emit(choice, piece)`` on this thread as the
    text of each choice may be sent, ending with each choice's last piece.

    ``top``: logprobs entries with that many likeliest tokens, read from the logits each token was picked from
    (None: no logprobs). An exception from ``emit`` (the client has gone) leaves through here after telling
    the engine to end these rows at their next step; a failed generation raises `rlfl.batching.GenerationError`.
    """
    events: queue.Queue[tuple[int, Piece] | Exception | None] = queue.Queue()
    gone = threading.Event()

    def on_tokens(row: int, token: int, logits: torch.Tensor) -> bool:  # on the engine's worker thread
        if gone.is_set():
            return False
        entry = None if top is None else token_logprobs(logits[None].float().log_softmax(-1), [token], top)[0]
        choice = choices[row]
        piece = choice.push(token, entry)
        if piece is not None:
            events.put((row, piece))
        return choice.result is None  # False once a stop string has ended the choice

    def submit() -> None:
        try:
            engine.submit(prompts, config, on_tokens=on_tokens)
            events.put(None)
        except Exception as exc:  # handed to the HTTP thread, which answers it
            events.put(exc)

    threading.Thread(target=submit, name="rlfl-serve-stream", daemon=True).start()
    try:
        while (item := events.get()) is not None:
            if isinstance(item, Exception):
                raise item
            emit(*item)
    finally:
        gone.set()  # left early (the client has gone, or generation failed): these rows end at their next step
    for i, choice in enumerate(choices):
        if choice.result is None:  # ran out of tokens
            emit(i, choice.end())

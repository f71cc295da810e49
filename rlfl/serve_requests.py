"""What an OpenAI-style request asks `rlfl serve` for: body checks, sampling settings, and where a row's text ends.

Every field is checked before anything is generated (or, when streaming, before the first byte goes out), and
a wrong one is answered 400 with OpenAI's error body naming it (`RequestError`). `finish` is the one place
that cuts a generated row at its first stop string and says why it ended; whole and streamed answers both
end through it, so they agree to the character.

Example:
    >>> from rlfl.batching import Completion
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> finish(tok, Completion(tok.encode("Hello, world"), stopped=False), stops=[", "])
    ('Hello', 'stop', 7)
    >>> check_fields({"prompt": "x", "temprature": 1}, "/v1/completions", ("prompt",))
    Traceback (most recent call last):
    ...
    rlfl.serve_requests.RequestError: unknown field 'temprature' for /v1/completions; did you mean 'temperature'?
"""

from __future__ import annotations

import difflib
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlfl.batching import Completion, sampling_config
from rlfl.config import is_int, is_number
from rlfl.generate import SamplingConfig
from rlfl.tokenizer import Tokenizer

MAX_ROWS_PER_REQUEST = 256  # len(prompt list) * n: one request can't monopolise the worker for ever
MAX_STOP_STRINGS = 16


class RequestError(Exception):
    """A client error answered with OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict[str, Any]:
        """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


def _is_finite(x: object) -> bool:
    """A finite JSON number (Python's json reads NaN and Infinity, which no sampling setting can be)."""
    return is_number(x) and math.isfinite(x)


SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n")
STREAM_FIELDS = ("stream", "stream_options")
# Fields OpenAI clients commonly send: accepted, and ignored as long as they ask for nothing we don't do.
_HARMLESS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: v is None or isinstance(v, str),
    "user": lambda v: v is None or isinstance(v, str),
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "logit_bias": lambda v: v in (None, {}),
    "logprobs": lambda v: v in (None, False, 0),
    "top_logprobs": lambda v: v in (None, 0),
    "echo": lambda v: v in (None, False),
    "best_of": lambda v: v in (None, 1),
    "suffix": lambda v: v in (None, ""),
}


def check_fields(body: Any, endpoint: str, own: tuple[str, ...]) -> dict[str, Any]:
    """``body`` if it is a JSON object of known fields (``own``, the sampling and streaming ones, harmless extras)."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    known = set(own) | set(SAMPLING_FIELDS) | set(STREAM_FIELDS) | set(_HARMLESS)
    for key, value in body.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RequestError(f"unknown field '{key}' for {endpoint}{hint}", param=key)
        if key in _HARMLESS and key not in own and not _HARMLESS[key](value):
            raise RequestError(f"'{key}'={json.dumps(value)} is not supported by this server; leave it out",
                               param=key)
    return body


# stream_options keys: include_usage ends the stream with a usage chunk; include_obfuscation asks for padding
# against network side channels, which a server without TLS has no use for: accepted and ignored
STREAM_OPTIONS = ("include_usage", "include_obfuscation")


def stream_args(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether to stream the answer, and whether to end the stream with a usage chunk."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {json.dumps(stream)}", "stream")
    if options is None:
        return bool(stream), False
    if not stream:
        raise RequestError("'stream_options' is only allowed with \"stream\": true", "stream_options")
    if not isinstance(options, dict) or not all(k in STREAM_OPTIONS and isinstance(v, bool)
                                                for k, v in options.items()):
        raise RequestError(f"'stream_options' must be an object of true/false {' and '.join(STREAM_OPTIONS)}, got "
                           f"{json.dumps(options)}", "stream_options")
    return True, options.get("include_usage", False)


def sampling_args(body: dict[str, Any], tokenizer: Tokenizer, default_max: int,
                  limit: int) -> tuple[SamplingConfig, list[str], int]:
    """Validate the shared sampling fields; return the config, the stop strings and n."""
    def get(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    max_tokens = get("max_tokens", default_max)
    if not is_int(max_tokens) or max_tokens < 1:
        raise RequestError(f"'max_tokens' must be an integer >= 1, got {json.dumps(max_tokens)}", "max_tokens")
    temperature = get("temperature", 1.0)
    if not _is_finite(temperature) or temperature < 0:
        raise RequestError(f"'temperature' must be a finite number >= 0 (0 = greedy), got {json.dumps(temperature)}",
                           "temperature")
    top_p = get("top_p", 1.0)
    if not _is_finite(top_p) or not 0 < top_p <= 1:
        raise RequestError(f"'top_p' must be a finite number in (0, 1], got {json.dumps(top_p)}", "top_p")
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise RequestError(f"'top_k' must be an integer >= 1 (or null to disable it), got {json.dumps(top_k)}", "top_k")
    seed = body.get("seed")
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2**62):
        raise RequestError(f"'seed' must be an integer in [0, 2^62), got {json.dumps(seed)}", "seed")
    n = get("n", 1)
    if not is_int(n) or not 1 <= n <= MAX_ROWS_PER_REQUEST:
        raise RequestError(f"'n' must be an integer in [1, {MAX_ROWS_PER_REQUEST}], got {json.dumps(n)}", "n")
    stop = get("stop", [])
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them, "
                           f"got {json.dumps(stop)}", "stop")
    config = sampling_config(tokenizer, max_new_tokens=min(max_tokens, limit), temperature=float(temperature),
                             top_p=float(top_p), top_k=top_k, seed=seed)
    return config, stops, n


def check_room(ids: list[int], block_size: int, param: str) -> None:
    """Refuse a prompt (the field ``param``) that leaves no room in the context for one new token."""
    if len(ids) >= block_size:
        raise RequestError(f"the prompt is {len(ids)} tokens but the model's context is {block_size} tokens "
                           f"(at least one must be left to generate); shorten '{param}'", param)


def finish(tokenizer: Tokenizer, c: Completion, stops: list[str]) -> tuple[str, str, int]:
    """Text, finish_reason and completion-token count of one row, cut at the first stop string."""
    text = tokenizer.decode(c.tokens)
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not cuts:
        return text, "stop" if c.stopped else "length", len(c.tokens) + c.stopped
    # count the tokens up to the one that completed the stop string (binary search on decoded prefixes)
    lo, hi = 1, len(c.tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in tokenizer.decode(c.tokens[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return text[: min(cuts)], "stop", lo


@dataclass
class Request:
    """A validated /v1/completions or /v1/chat/completions request: all that its whole or streamed answer needs."""

    chat: bool
    prompts: list[list[int]]  # the ids of each prompt
    texts: list[str]  # the text of each prompt (echo, text offsets); unused for chat
    config: SamplingConfig
    stops: list[str]
    n: int
    top: int | None  # tokens listed per position in logprobs; None: no logprobs
    echo: bool
    stream: bool
    include_usage: bool

    @property
    def rows(self) -> list[int]:
        """The prompt of each choice (choice = prompt index * n + choice index)."""
        return [i for i in range(len(self.prompts)) for _ in range(self.n)]

    def head(self, *, chunk: bool) -> dict[str, Any]:
        """The fields every answer (or chunk of one) starts with, a fresh id aside."""
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}", "object": obj,
                "created": int(time.time())}

    def usage(self, counts: list[int]) -> dict[str, int]:
        """OpenAI's ``usage`` for choices of ``counts`` completion tokens."""
        prompt_tokens = sum(map(len, self.prompts))
        return {"prompt_tokens": prompt_tokens, "completion_tokens": sum(counts),
                "total_tokens": prompt_tokens + sum(counts)}

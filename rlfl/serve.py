"""An OpenAI-compatible HTTP server over any rlfl checkpoint, batching concurrent requests.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (rendered with
the chat template, stopping at ``<|end|>``) and ``GET /health`` (liveness plus batching counters).
Bodies and errors follow OpenAI's shapes, so the ``openai`` client or plain ``curl`` work as they are.

How a request flows:
1. An HTTP thread (one per connection, ``ThreadingHTTPServer``) parses and validates the JSON body,
   encodes the prompt(s) and puts a job on the engine's queue; a bad request is answered 400 right there.
2. ONE worker thread owns the model. It takes the first job, waits at most ``batch_wait_ms`` for more
   (up to ``max_batch_size`` rows), groups the rows by sampling settings and runs one batched
   ``rlfl.generate.generate`` call per group. Rows of different lengths and ``max_tokens`` share a call:
   the call runs to the longest budget and each row is cut back to its own, which is exact because rows
   of a batch never see each other (left padding is masked).
3. Seeded sampling is the one thing that does not batch: ``generate`` draws a batch's samples from one
   RNG stream, so a seeded row's output would depend on who else was in its batch. Seeded rows therefore
   run alone with the seed ``seed + row index`` (row = prompt index * n + choice index), which makes a
   seeded request reproducible whatever the server load. Greedy rows (temperature 0) batch freely.
4. ``stop`` strings are looked for in the decoded text after generation (the engine knows only stop
   token ids: ``<|endoftext|>`` and ``<|end|>``), so a row keeps decoding past a stop string until its
   budget or a stop token; the text returned is cut at the first stop string.

``max_tokens`` is clamped to ``max_tokens_limit`` and to the room the prompt leaves in the context
(``finish_reason`` then says "length"); a prompt with no room at all is a 400.

Log-probabilities (``/v1/completions`` only, OpenAI's legacy shape): ``"logprobs": k`` (0 to
``max_logprobs``) adds ``choices[i].logprobs = {"tokens", "token_logprobs", "top_logprobs", "text_offset"}``
with the k most likely tokens at each generated position, and ``"echo": true`` puts the prompt in front of
the text (and its tokens in front of the logprobs; the first prompt token has ``null`` log-probs). They are
log-probabilities of the PLAIN softmax at temperature 1, before top-k/top-p and whatever the request's
temperature, so a judge reads the model's own distribution. They come from one teacher-forced forward over
prompt + generated tokens (`rlfl.evaluate.position_logprobs`, the code LMJudge uses in-process), run on the HTTP thread
after generation: the batching engine returns tokens only, and a forward of the finished sequence computes
exactly the distributions the sampler drew from (up to float rounding between batch shapes). A row that
ended on a stop token lists that token last in ``tokens`` although it is not in the text; the engine
reports only *that* a stop token ended the row, so the likelier of ``<|endoftext|>`` and ``<|end|>`` at
that position is named (exact for greedy rows). Token strings are the token's UTF-8 text, or
``bytes:\\xNN...`` for a token that is not valid UTF-8 on its own (OpenAI's convention).

Example:
    >>> cfg = ServeConfig(checkpoint="runs/sft", port=0)                    # doctest: +SKIP
    >>> with start_server(cfg) as srv:                                      # doctest: +SKIP
    ...     print(srv.url)   # POST {srv.url}/v1/chat/completions ...
"""

from __future__ import annotations

import difflib
import ipaddress
import hmac
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from rlfl.batching import (
    BatchingEngine,
    Completion,
    GenerationError,
    sampling_config,
    stop_token_ids,
)
from rlfl.chat_template import chat_prompt
from rlfl.checkpoint import Checkpoint, load_checkpoint
from rlfl.config import is_int, is_number
from rlfl.evaluate import position_logprobs
from rlfl.generate import SamplingConfig
from rlfl.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_ROWS_PER_REQUEST = 256  # len(prompt list) * n: one request can't monopolise the worker for ever
MAX_STOP_STRINGS = 16


READ_TIMEOUT = 30.0  # seconds a client may stay silent in the middle of a request (or idle between requests)


@dataclass
class ServeConfig:
    """`rlfl serve`: where to listen, which checkpoint to serve and how to batch requests."""

    checkpoint: str = field(default="runs/sft", metadata={"help": "checkpoint directory of any stage"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; anything but a loopback address needs --allow-public"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = pick a free one)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | cuda:N"})
    max_batch_size: int = field(default=8, metadata={
        "help": "most completions decoded together in one generate call (and requests gathered per batch)"})
    batch_wait_ms: float = field(default=10.0, metadata={
        "help": "how long the worker waits for more concurrent requests before it starts a batch"})
    read_timeout: float = field(default=READ_TIMEOUT, metadata={
        "help": "seconds a client may stay silent mid-request (or idle on a kept-alive connection) before it is "
                "dropped"})
    max_tokens_limit: int = field(default=512, metadata={
        "help": "cap on max_tokens of any request (larger requests are clamped)"})
    model_name: str | None = field(default=None, metadata={
        "help": "model id reported by /v1/models (default: the checkpoint directory's name)"})
    allow_public: bool = field(default=False, metadata={
        "help": "allow binding a non-loopback address (then set --api-key-env: without it anyone who reaches the "
                "port can use the model)"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "name of an environment variable holding an API key: requests must then send "
                "'Authorization: Bearer KEY' (as the openai package does with api_key=KEY)"})
    max_logprobs: int = field(default=20, metadata={
        "help": "largest 'logprobs' (top tokens per position) a /v1/completions request may ask for"})

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ValueError("ServeConfig.checkpoint is empty; pass a checkpoint directory")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port={self.port!r} must be in [0, 65535]; pass --port 8000 (0 = any free port)")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(f"ServeConfig.max_batch_size={self.max_batch_size!r} must be an integer >= 1")
        if not isinstance(self.batch_wait_ms, (int, float)) or self.batch_wait_ms < 0:
            raise ValueError(f"ServeConfig.batch_wait_ms={self.batch_wait_ms!r} must be >= 0 (0 = never wait)")
        if not isinstance(self.max_tokens_limit, int) or self.max_tokens_limit < 1:
            raise ValueError(f"ServeConfig.max_tokens_limit={self.max_tokens_limit!r} must be an integer >= 1")
        if not isinstance(self.read_timeout, (int, float)) or not self.read_timeout > 0:
            raise ValueError(f"ServeConfig.read_timeout={self.read_timeout!r} must be > 0 seconds; pass "
                             "--read-timeout 30")
        if not isinstance(self.max_logprobs, int) or self.max_logprobs < 0:
            raise ValueError(f"ServeConfig.max_logprobs={self.max_logprobs!r} must be an integer >= 0; pass "
                             "--max-logprobs 20")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"ServeConfig.device={self.device!r} is not a torch device ({exc}); pass --device cpu") from None
        if not self.allow_public and not is_loopback(self.host):
            raise ValueError(
                f"ServeConfig.host={self.host!r} is not a loopback address and the server has no authentication; "
                f"use --host 127.0.0.1, or pass --allow-public to expose it on the network")
        if not self.model_name:
            self.model_name = Path(self.checkpoint).expanduser().resolve().name or "rlfl"
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ValueError(f"ServeConfig.api_key_env={self.api_key_env!r}: that environment variable is unset or "
                             f"empty; export {self.api_key_env}=YOUR_KEY or leave out --api-key-env")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback IP (127.0.0.0/8, ::1); host names are not resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a server bound to ``host``:``port`` accepts: its loopback names with the port (and without
    it on port 80), or None (any) for a server bound to a public address. Refusing other names is the guard
    against DNS rebinding: a web page whose domain resolves to 127.0.0.1 sends its own name as the Host."""
    if not is_loopback(host):
        return None
    names = ("127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host)
    return {f"{h.lower()}:{port}" for h in names} | ({h.lower() for h in names} if port == 80 else set())


def browser_refusal(headers: Any, hosts: set[str] | None, *, write: bool) -> tuple[int, str] | None:
    """Why a request that a web page in a browser could have sent must be refused, as (status, message); None if
    it may go on. Every request: a Host outside ``hosts`` (`loopback_hosts`). Writes (POST and the like), before
    their body is read: another Origin than the server's own, ``Sec-Fetch-Site: cross-site``, and any
    Content-Type but application/json (a page can send text/plain or a form without a CORS preflight).
    Programs (curl, the openai package, urllib) send no Origin and are not affected."""
    if hosts is not None and headers.get("Host", "").lower() not in hosts:
        return 403, (f"unexpected Host header {headers.get('Host')!r}; use a loopback address such as "
                     "http://127.0.0.1:PORT/")
    if not write:
        return None
    origin = headers.get("Origin")
    if origin is not None and origin.lower() != f"http://{headers.get('Host', '')}".lower():
        return 403, f"cross-origin request from {origin!r} refused"
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return 403, "cross-site request refused"
    ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return 415, f"Content-Type must be application/json, got {ctype or 'none'!r}"
    return None


# ------------------------------------------------------------------------------------ request parsing
class RequestError(Exception):
    """A client error answered with OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


def _is_finite(x: object) -> bool:
    """A finite JSON number (Python's json reads NaN and Infinity, which no sampling setting can be)."""
    return is_number(x) and math.isfinite(x)


SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n")
# Fields OpenAI clients commonly send: accepted, and ignored as long as they ask for nothing we don't do.
_HARMLESS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: v is None or isinstance(v, str),
    "user": lambda v: v is None or isinstance(v, str),
    "stream": lambda v: v in (None, False),
    "stream_options": lambda v: v is None,
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "logit_bias": lambda v: v in (None, {}),
    "logprobs": lambda v: v in (None, False, 0),
    "top_logprobs": lambda v: v in (None, 0),
    "echo": lambda v: v in (None, False),
    "best_of": lambda v: v in (None, 1),
    "suffix": lambda v: v in (None, ""),
}


def _check_fields(body: Any, endpoint: str, own: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    known = set(own) | set(SAMPLING_FIELDS) | set(_HARMLESS)
    for key, value in body.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RequestError(f"unknown field '{key}' for {endpoint}{hint}", param=key)
        if key in _HARMLESS and key not in own and not _HARMLESS[key](value):
            what = "streaming is not supported; send \"stream\": false" if key == "stream" else \
                f"'{key}'={json.dumps(value)} is not supported by this server; leave it out"
            raise RequestError(what, param=key)
    return body


def _sampling(body: dict[str, Any], tokenizer: Tokenizer, default_max: int, limit: int) -> tuple[SamplingConfig, list[str], int]:
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


def _check_room(ids: list[int], block_size: int, param: str) -> None:
    if len(ids) >= block_size:
        raise RequestError(f"the prompt is {len(ids)} tokens but the model's context is {block_size} tokens "
                           f"(at least one must be left to generate); shorten '{param}'", param)


def _finish(tokenizer: Tokenizer, c: Completion, stops: list[str]) -> tuple[str, str, int]:
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


# ------------------------------------------------------------------------------------ log-probabilities
def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """How a token is named in ``logprobs``: its UTF-8 text, or ``bytes:\\xNN...`` when it is not valid UTF-8 alone.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> token_text(tok, tok.encode("A")[0]), token_text(tok, 0xE2), token_text(tok, tok.eot_id)
        ('A', 'bytes:\\\\xe2', '<|endoftext|>')
    """
    raw = tokenizer.decode_bytes([token_id])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@torch.no_grad()
def _text_offsets(tokenizer: Tokenizer, ids: list[int], base: int) -> list[int]:
    """Character offset of each token in the decoded text, counted from ``base``."""
    out, acc = [], b""
    for t in ids:
        out.append(base + len(acc.decode("utf-8", errors="replace")))
        acc += tokenizer.decode_bytes([t])
    return out


def _logprobs_arg(body: dict[str, Any], limit: int) -> int | None:
    k = body.get("logprobs")
    if k is None or k is False:
        return None
    if not is_int(k) or not 0 <= k <= limit:
        raise RequestError(f"'logprobs' must be an integer in [0, {limit}] (top tokens listed per position), "
                           f"got {json.dumps(k)}", "logprobs")
    return k


# ------------------------------------------------------------------------------------ HTTP
class _App:
    """What the handlers share: the engine, the tokenizer and the response builders."""

    def __init__(self, checkpoint: Checkpoint, config: ServeConfig) -> None:
        self.tokenizer = checkpoint.tokenizer
        self.block_size = checkpoint.model.config.block_size
        self.model_name = config.model_name or "rlfl"
        self.api_key = os.environ[config.api_key_env] if config.api_key_env else None
        self.hosts: set[str] | None = None  # accepted Host headers (`loopback_hosts`), set once the port is known
        self.limit = config.max_tokens_limit
        self.max_logprobs = config.max_logprobs
        self.model = checkpoint.model
        self.max_batch_size = config.max_batch_size
        self._logprob_lock = threading.Lock()  # one logprob forward at a time bounds the memory they take
        self.created = int(time.time())
        self.engine = BatchingEngine(checkpoint.model, pad_id=self.tokenizer.pad_id,
                                     max_batch_size=config.max_batch_size, batch_wait_ms=config.batch_wait_ms)

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "rlfl"}]}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, "context": self.block_size, **self.engine.stats()}

    def _run(self, prompts: list[list[int]], config: SamplingConfig, n: int) -> list[Completion]:
        rows = [p for p in prompts for _ in range(n)]
        if len(rows) > MAX_ROWS_PER_REQUEST:
            raise RequestError(f"{len(prompts)} prompts x n={n} = {len(rows)} completions; one request may ask for "
                               f"at most {MAX_ROWS_PER_REQUEST}, split it", "n")
        try:
            return self.engine.submit(rows, config)
        except GenerationError as exc:
            raise RequestError(str(exc), status=exc.status, kind="server_error") from exc

    def completions(self, body: Any) -> dict[str, Any]:
        body = _check_fields(body, "/v1/completions", ("prompt", "logprobs", "echo"))
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings", "prompt")
        config, stops, n = _sampling(body, self.tokenizer, 16, self.limit)
        top = _logprobs_arg(body, self.max_logprobs)
        echo = body.get("echo")
        if echo not in (None, False, True):
            raise RequestError(f"'echo' must be true or false, got {json.dumps(echo)}", "echo")
        ids = [self.tokenizer.encode(t) or [self.tokenizer.eot_id] for t in texts]  # "" starts a fresh document
        for p in ids:
            _check_room(p, self.block_size, "prompt")
        results = self._run(ids, config, n)
        choices, counts = self._choices(results, stops, lambda text: {"text": text})
        rows = [i for i in range(len(ids)) for _ in range(n)]  # the prompt of each choice
        if echo:
            for choice, i in zip(choices, rows):
                choice["text"] = texts[i] + choice["text"]
        if top is not None:
            logprobs = self._logprobs([ids[i] for i in rows], [texts[i] for i in rows], results, counts, top, bool(echo))
            for choice, lp in zip(choices, logprobs):
                choice["logprobs"] = lp
        return self._response("cmpl", "text_completion", choices, sum(map(len, ids)), sum(counts))

    def _logprobs(self, prompts: list[list[int]], texts: list[str], results: list[Completion], counts: list[int],
                  top: int, echo: bool) -> list[dict[str, Any]]:
        """OpenAI's legacy logprobs object of each choice (see the module docstring)."""
        tok = self.tokenizer
        # the tokens each choice reports: those its text (and usage) counted, the stop token included
        reported = [(c.tokens + [-1] if c.stopped else c.tokens)[:k] for c, k in zip(results, counts)]
        seqs = [p + r[:-1] for p, r in zip(prompts, reported)]  # the last token is predicted, never fed
        starts = [0 if echo else len(p) - 1 for p in prompts]
        stops = list(stop_token_ids(tok))
        out: list[dict[str, Any]] = [{} for _ in seqs]
        with self._logprob_lock:
            for i, lp in position_logprobs(self.model, seqs, starts, pad_id=tok.pad_id, batch_size=self.max_batch_size):
                lp = lp.cpu()
                targets = (prompts[i][1:] if echo else []) + reported[i]
                if targets[-1] == -1:  # the stop token: the engine says that one ended the row, not which
                    targets[-1] = stops[int(lp[-1, stops].argmax())]
                chosen = lp.gather(1, torch.tensor(targets)[:, None])[:, 0].tolist()
                k = min(top, lp.shape[1])
                values, ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
                tops = [{token_text(tok, t): v for t, v in zip(row_ids, row_vals)}
                        for row_ids, row_vals in zip(ids.tolist(), values.tolist())]
                tokens = (prompts[i][:1] if echo else []) + targets
                base = 0 if echo else len(texts[i])
                out[i] = {"tokens": [token_text(tok, t) for t in tokens],
                          "token_logprobs": ([None] if echo else []) + chosen,
                          "top_logprobs": ([None] if echo else []) + tops,
                          "text_offset": _text_offsets(tok, tokens, base)}
        return out

    def chat(self, body: Any) -> dict[str, Any]:
        body = _check_fields(body, "/v1/chat/completions", ("messages", "max_completion_tokens"))
        if body.get("max_completion_tokens") is not None:  # OpenAI's newer name for max_tokens
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        try:
            ids = chat_prompt(self.tokenizer, body.get("messages"))
        except ValueError as exc:
            raise RequestError(str(exc), "messages") from None
        _check_room(ids, self.block_size, "messages")
        config, stops, n = _sampling(body, self.tokenizer, self.limit, self.limit)
        choices, counts = self._choices(self._run([ids], config, n), stops,
                                        lambda text: {"message": {"role": "assistant", "content": text}})
        return self._response("chatcmpl", "chat.completion", choices, len(ids), sum(counts))

    def _choices(self, results: list[Completion], stops: list[str], shape: Callable[[str], dict]) -> tuple[list, list[int]]:
        """OpenAI's choices (the text placed by ``shape``) and the completion tokens each used."""
        choices, counts = [], []
        for i, c in enumerate(results):
            text, reason, k = _finish(self.tokenizer, c, stops)
            choices.append({"index": i, **shape(text), "logprobs": None, "finish_reason": reason})
            counts.append(k)
        return choices, counts

    def _response(self, prefix: str, obj: str, choices: list, prompt_tokens: int, completion_tokens: int) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections; we always send a length
    server_version = "rlfl-serve"
    app: _App  # set on the per-server subclass

    def _routes(self) -> dict[str, dict[str, Callable[[], dict[str, Any]]]]:
        app = self.app
        return {
            "/v1/models": {"GET": app.models},
            f"/v1/models/{app.model_name}": {"GET": lambda: app.models()["data"][0]},
            "/health": {"GET": app.health},
            "/v1/completions": {"POST": lambda: app.completions(self._json())},
            "/v1/chat/completions": {"POST": lambda: app.chat(self._json())},
        }

    def _json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError("chunked request bodies are not supported; send a Content-Length", status=411)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # we will not read the body, so the connection can't be reused
            raise RequestError(f"bad Content-Length (the limit is {MAX_BODY_BYTES} bytes)", status=413)
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON ({exc}); send a JSON object") from None

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            refusal = browser_refusal(self.headers, self.app.hosts, write=method != "GET")
            if refusal is not None:
                self.close_connection = True  # the body (if any) stays unread
                raise RequestError(refusal[1], status=refusal[0])
            self._check_api_key()
            methods = self._routes().get(path)
            if methods is None:
                self.close_connection = True  # the body (if any) stays unread
                raise RequestError(f"no such endpoint: {path}; see /v1/models, /v1/completions, "
                                   "/v1/chat/completions, /health", status=404)
            if method not in methods:
                self.close_connection = True  # the body (if any) stays unread
                raise RequestError(f"{method} is not allowed on {path}; use {', '.join(methods)}", status=405)
            self._send(200, methods[method]())
        except RequestError as exc:
            if exc.status >= 500:
                log.warning("%s %s -> %d: %s", method, path, exc.status, exc.message)
            self._send(exc.status, exc.body(), allow=", ".join(methods) if exc.status == 405 else None)
        except Exception as exc:  # a bug in our code: answer 500 rather than drop the connection
            log.exception("%s %s failed", method, path)
            self._send(500, RequestError(f"internal error: {exc}", status=500, kind="server_error").body())

    def _check_api_key(self) -> None:
        key = self.app.api_key
        if key is None:
            return
        sent = self.headers.get("Authorization", "")
        scheme, _, token = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8", "replace"),
                                                                 key.encode("utf-8")):
            self.close_connection = True
            raise RequestError("missing or wrong API key; send 'Authorization: Bearer KEY' (openai: api_key=KEY)",
                               status=401, kind="authentication_error")

    def _send(self, status: int, body: dict[str, Any], allow: str | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", allow)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802 - every method is routed, so a wrong one is a 405, not a 501
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    """The HTTP server of `rlfl serve` and `rlfl label serve`: a thread per connection, each with a read timeout.

    Without the timeout a client that sends half a request (or opens a connection and says nothing) holds a
    thread for ever, and a few hundred such connections exhaust the process; with it the connection is closed
    after ``read_timeout`` silent seconds and the thread ends.
    """

    daemon_threads = True
    request_queue_size = 128  # the listen backlog; socketserver's 5 resets a burst of concurrent clients

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.read_timeout = read_timeout
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.settimeout(self.read_timeout)  # the handler's reads raise TimeoutError after that long
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (TimeoutError, ConnectionError)):  # a slow or vanished client, not a bug of ours
            log.info("%s: connection closed (%s)", client_address[0], type(exc).__name__)
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class BackgroundServer:
    """An HTTP server answering on a daemon thread: ``url``, ``port``, ``wait()``, ``shutdown()``, a context manager.

    The base of `RunningServer` and of the labelling page's server; a subclass releases its own resources in
    ``_close`` (called once, after the socket is closed).
    """

    def __init__(self, httpd: ThreadingHTTPServer, host: str, *, name: str, description: str, path: str = "") -> None:
        self._httpd = httpd
        self.description = description  # for the log line: "stopped <description> at <url>"
        self.host = host
        self.port: int = httpd.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}{path}"
        self._stopped = False
        self._thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the server stops (or ``timeout`` seconds pass)."""
        self._thread.join(timeout)

    def _close(self) -> None:
        """Release what the subclass holds beyond the socket."""

    def shutdown(self) -> None:
        """Stop accepting requests, close the socket and what the server holds; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._close()
        log.info("stopped %s at %s", self.description, self.url)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class RunningServer(BackgroundServer):
    """A started model server: ``url``, ``port``, ``stats()``, and ``shutdown()`` (also a context manager)."""

    def __init__(self, httpd: _Server, app: _App, host: str) -> None:
        super().__init__(httpd, host, name="rlfl-serve-http", description=f"serving {app.model_name}")
        self._app = app
        self.model_name = app.model_name

    def stats(self) -> dict[str, Any]:
        """The batching counters (also served at /health)."""
        return self._app.engine.stats()

    def _close(self) -> None:
        self._app.engine.close()


def start_server(config: ServeConfig, *, checkpoint: Checkpoint | None = None) -> RunningServer:
    """Load the checkpoint (unless given), bind, and serve in background threads; returns at once."""
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(config.checkpoint, device=config.device)
    app = _App(ckpt, config)
    handler = type("Handler", (_Handler,), {"app": app})
    server_cls = _Server6 if ":" in config.host else _Server
    try:
        httpd = server_cls((config.host, config.port), handler, read_timeout=config.read_timeout)
    except OSError as exc:
        app.engine.close()
        raise ValueError(f"cannot bind {config.host}:{config.port} ({exc.strerror or exc}); "
                         f"pick another --port (0 = any free port)") from None
    app.hosts = loopback_hosts(config.host, httpd.server_address[1])
    server = RunningServer(httpd, app, config.host)
    log.info("serving %s (context %d tokens) at %s/v1 (batches of up to %d, waiting %g ms)",
             app.model_name, app.block_size, server.url, config.max_batch_size, config.batch_wait_ms)
    return server


def run_until_interrupted(server: Any) -> None:
    """Block until Ctrl-C, then shut ``server`` down (anything with ``wait(timeout)`` and ``shutdown()``)."""
    try:
        while True:
            server.wait(1.0)  # short joins so Ctrl-C reaches the main thread promptly
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        server.shutdown()


def serve(config: ServeConfig) -> None:
    """Run the server in the foreground until Ctrl-C."""
    run_until_interrupted(start_server(config))

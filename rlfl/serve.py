"""An OpenAI-compatible HTTP server over any rlfl checkpoint, batching concurrent requests.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (rendered with
the chat template, stopping at ``<|end|>``) and ``GET /health`` (liveness plus batching counters).
Bodies and errors follow OpenAI's shapes, so the ``openai`` client or plain ``curl`` work as they are.

How a request flows:
1. An HTTP thread (one per connection, ``ThreadingHTTPServer``) parses and validates the JSON body
   (`rlfl.serve_requests`), encodes the prompt(s) and puts a job on the engine's queue; a bad request is
   answered 400 right there.
2. ONE worker thread owns the model (`rlfl.batching.BatchingEngine`). It takes the first job, waits at most
   ``batch_wait_ms`` for more (up to ``max_batch_size`` rows), groups the rows by sampling settings and runs
   one batched ``rlfl.generate.generate`` call per group. Rows of different lengths and ``max_tokens`` share
   a call: the call runs to the longest budget and each row is cut back to its own, which is exact because
   rows of a batch never see each other (left padding is masked).
3. Seeded sampling is the one thing that does not batch: ``generate`` draws a batch's samples from one
   RNG stream, so a seeded row's output would depend on who else was in its batch. Seeded rows therefore
   run alone with the seed ``seed + row index`` (row = prompt index * n + choice index), which makes a
   seeded request reproducible whatever the server load. Greedy rows (temperature 0) batch freely.
4. ``stop`` strings are looked for in the decoded text (the engine knows only stop token ids:
   ``<|endoftext|>`` and ``<|end|>``); the text returned is cut at the first stop string.

``max_tokens`` is clamped to ``max_tokens_limit`` and to the room the prompt leaves in the context
(``finish_reason`` then says "length"); a prompt with no room at all is a 400.

Log-probabilities (``"logprobs"``, ``"top_logprobs"``, ``"echo"``) are those of the plain softmax at
temperature 1, in OpenAI's shapes; `rlfl.serve_logprobs` says how they are computed.

Streaming (``"stream": true``) answers with server-sent events, as OpenAI does: ``data: {chunk}`` lines
(``chat.completion.chunk`` objects whose choices carry a ``delta``, the role first; ``text_completion``
chunks with ``text``), ``finish_reason`` in each choice's last chunk, with ``stream_options.include_usage``
a last chunk with the ``usage`` and no choices, then ``data: [DONE]``. Every check runs before the first
byte, so a bad request is the same 400 as without streaming. A streamed request is a job of the same
batching engine, so it shares batches, seeds and ``/health`` counters with the others, and its deltas join
to exactly the whole answer; the tokens reach the HTTP thread through `generate`'s ``on_step`` hook as
each step happens (`rlfl.serve_stream`). A client that disconnects makes the next write fail, which ends
its rows (the batch goes on for everyone else); it is logged as one line.

The socket plumbing (a thread per connection with a read timeout, the browser guards) is `rlfl.serve_http`,
which the labelling page (`rlfl.feedback.web`) shares.

Example:
    >>> cfg = ServeConfig(checkpoint="runs/sft", port=0)                    # doctest: +SKIP
    >>> with start_server(cfg) as srv:                                      # doctest: +SKIP
    ...     print(srv.url)   # POST {srv.url}/v1/chat/completions ...
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import torch

from rlfl.batching import BatchingEngine, GenerationError, stop_token_ids
from rlfl.chat_template import chat_prompt
from rlfl.checkpoint import Checkpoint, load_checkpoint
from rlfl.serve_http import (
    READ_TIMEOUT,
    BackgroundServer,
    _Server,
    _Server6,
    browser_refusal,
    is_loopback,
    loopback_hosts,
    run_until_interrupted,
)
from rlfl.serve_logprobs import (
    TokenLogprob,
    answer_logprobs,
    chat_logprobs_arg,
    logprobs_arg,
    logprobs_json,
    prompt_logprobs,
    token_text,
)
from rlfl.serve_requests import (
    MAX_ROWS_PER_REQUEST,
    Request,
    RequestError,
    check_fields,
    check_room,
    finish,
    sampling_args,
    stream_args,
)
from rlfl.serve_stream import ChoiceStream, Piece, stream_rows

__all__ = ["RunningServer", "ServeConfig", "run_until_interrupted", "serve", "start_server", "token_text"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024


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


_Producer = Callable[[Callable[[dict[str, Any]], None]], None]  # a streamed answer: send(chunk) per chunk


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

    # -- requests ---------------------------------------------------------------------------------------
    def completions(self, body: Any) -> dict[str, Any] | _Producer:
        body = check_fields(body, "/v1/completions", ("prompt", "logprobs", "echo"))
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings", "prompt")
        config, stops, n = sampling_args(body, self.tokenizer, 16, self.limit)
        top = logprobs_arg(body, self.max_logprobs)
        echo = body.get("echo")
        if echo not in (None, False, True):
            raise RequestError(f"'echo' must be true or false, got {json.dumps(echo)}", "echo")
        ids = self.tokenizer.encode_prompts(texts)  # bos in front where the tokenizer adds one; "" starts a document
        for p in ids:
            check_room(p, self.block_size, "prompt")
        return self._answer(Request(False, ids, texts, config, stops, n, top, bool(echo), *stream_args(body)))

    def chat(self, body: Any) -> dict[str, Any] | _Producer:
        body = check_fields(body, "/v1/chat/completions",
                            ("messages", "max_completion_tokens", "logprobs", "top_logprobs"))
        if body.get("max_completion_tokens") is not None:  # OpenAI's newer name for max_tokens
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        try:
            ids = chat_prompt(self.tokenizer, body.get("messages"))
        except ValueError as exc:
            raise RequestError(str(exc), "messages") from None
        check_room(ids, self.block_size, "messages")
        config, stops, n = sampling_args(body, self.tokenizer, self.limit, self.limit)
        top = chat_logprobs_arg(body, self.max_logprobs)
        return self._answer(Request(True, [ids], [""], config, stops, n, top, False, *stream_args(body)))

    def _answer(self, req: Request) -> dict[str, Any] | _Producer:
        """The whole answer, or (``stream``) the function that streams it; every check has passed by now."""
        rows = len(req.prompts) * req.n
        if rows > MAX_ROWS_PER_REQUEST:
            raise RequestError(f"{len(req.prompts)} prompts x n={req.n} = {rows} completions; one request may ask "
                               f"for at most {MAX_ROWS_PER_REQUEST}, split it", "n")
        if req.stream:
            return lambda send: self._stream(req, send)
        try:
            results = self.engine.submit([req.prompts[i] for i in req.rows], req.config)
        except GenerationError as exc:
            raise RequestError(str(exc), status=exc.status, kind="server_error") from exc
        ends = [finish(self.tokenizer, c, req.stops) for c in results]
        counts = [k for _, _, k in ends]
        logprobs = None
        if req.top is not None:
            with self._logprob_lock:
                logprobs = answer_logprobs(self.model, self.tokenizer, req, results, counts,
                                           batch_size=self.max_batch_size)
        choices = []
        for i, ((text, reason, _), p) in enumerate(zip(ends, req.rows)):
            choice: dict[str, Any] = {"index": i}
            if req.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = req.texts[p] + text if req.echo else text
            choice["logprobs"] = None if logprobs is None else self._logprobs_json(req, logprobs[i], p)
            choices.append({**choice, "finish_reason": reason})
        return {**req.head(chunk=False), "model": self.model_name, "choices": choices, "usage": req.usage(counts)}

    def _logprobs_json(self, req: Request, entries: list[TokenLogprob], prompt: int, before: bytes = b"") -> dict:
        base = 0 if req.echo else len(req.texts[prompt])
        return logprobs_json(self.tokenizer, entries, chat=req.chat, base=base, before=before)

    def _stream(self, req: Request, send: Callable[[dict[str, Any]], None]) -> None:
        """Generate ``req``'s choices and send them as chunks (see "Streaming" in the module docstring)."""
        tok = self.tokenizer
        head = {**req.head(chunk=True), "model": self.model_name, **({"usage": None} if req.include_usage else {})}
        choices = [ChoiceStream(tok, req.stops, stop_token_ids(tok), with_stop_token=not req.chat) for _ in req.rows]
        listed = [b""] * len(choices)  # the bytes of the tokens each choice's logprobs listed so far

        def emit(i: int, piece: Piece) -> None:
            choice: dict[str, Any] = {"index": i}
            if req.chat:
                choice["delta"] = {"content": piece.text} if piece.text or piece.finish_reason is None else {}
            else:
                choice["text"] = piece.text
            choice["logprobs"] = None
            if req.top is not None:
                choice["logprobs"] = self._logprobs_json(req, piece.entries, req.rows[i], before=listed[i])
                listed[i] += tok.decode_bytes([e.token for e in piece.entries])
            send({**head, "choices": [{**choice, "finish_reason": piece.finish_reason}]})

        for i, p in enumerate(req.rows):  # the role first (chat), or the prompt (echo)
            if req.chat:
                send({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]})
            elif req.echo:
                with self._logprob_lock:
                    entries = prompt_logprobs(self.model, tok, req.prompts[p], req.top)
                emit(i, Piece(req.texts[p], entries, None))
        try:
            stream_rows(self.engine, [req.prompts[p] for p in req.rows], req.config, choices, req.top, emit)
        except GenerationError as exc:
            raise RequestError(str(exc), status=exc.status, kind="server_error") from exc
        if req.include_usage:
            send({**head, "choices": [], "usage": req.usage([c.result[1] for c in choices])})  # type: ignore[index]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections; we always send a length
    server_version = "rlfl-serve"
    app: _App  # set on the per-server subclass

    def _routes(self) -> dict[str, dict[str, Callable[[], dict[str, Any] | _Producer]]]:
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
            answer = methods[method]()
        except RequestError as exc:
            if exc.status >= 500:
                log.warning("%s %s -> %d: %s", method, path, exc.status, exc.message)
            self._send(exc.status, exc.body(), allow=", ".join(methods) if exc.status == 405 else None)
            return
        except Exception as exc:  # a bug in our code: answer 500 rather than drop the connection
            log.exception("%s %s failed", method, path)
            self._send(500, RequestError(f"internal error: {exc}", status=500, kind="server_error").body())
            return
        if isinstance(answer, dict):
            self._send(200, answer)
        else:
            self._send_events(answer, path)

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

    def _send_events(self, produce: _Producer, path: str) -> None:
        """Answer 200 with server-sent events: ``data: {chunk}`` per chunk ``produce`` sends, then ``data: [DONE]``.

        The body goes out in HTTP/1.1 chunked encoding, so the connection stays reusable. A client that leaves
        mid-stream makes the next write fail; the error leaves ``produce`` through `stream_rows`, which ends
        the request's rows at their next step, and is logged as one line, not a traceback. A failure after the
        headers went out (generation failed, or a bug of ours) can only be told in the stream: an ``error``
        event (the openai package raises it).
        """
        chunked = self.request_version != "HTTP/1.0"
        self.close_connection = self.close_connection or not chunked
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        self.end_headers()

        def write(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)

        def event(obj: dict[str, Any]) -> None:
            write(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")

        try:
            try:
                produce(event)
                write(b"data: [DONE]\n\n")
            except (ConnectionError, TimeoutError):
                raise
            except RequestError as exc:  # generation failed (already logged by the worker) or the server stops
                log.warning("POST %s -> %d mid-stream: %s", path, exc.status, exc.message)
                self.close_connection = True
                event(exc.body())
            except Exception as exc:  # a bug in our code
                log.exception("POST %s failed mid-stream", path)
                self.close_connection = True
                event(RequestError(f"internal error: {exc}", status=500, kind="server_error").body())
            if chunked:
                write(b"")  # the last chunk
        except (ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            log.info("%s: client left mid-stream (%s); generation stopped", self.address_string(),
                     type(exc).__name__)

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


def serve(config: ServeConfig) -> None:
    """Run the server in the foreground until Ctrl-C."""
    run_until_interrupted(start_server(config))

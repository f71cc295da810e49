"""`rlfl label serve`: a local web page for labelling pairs of responses, over the label store.

An annotator types a name, then sees the prompt and the two responses side by side and answers with
the keyboard (1 = left better, 2 = right better, 3 = tie, space = skip, u / Backspace = undo). The
server, not the page, decides which response goes left: it picks the order at random when it first
shows an item to an annotator, keeps it until that annotator answers, and records it as the label's
``shown_order``; the page only ever says "left" or "right". Items come in the store's order (so that
several annotators overlap, which is what agreement needs).

Endpoints (standard library ``http.server``, one thread per connection):
- ``GET /`` the page (rlfl.feedback.page): no model text in it; it fetches items as JSON.
- ``POST /api/next``  ``{"annotator"}`` -> ``{"state"}`` (registers the annotator in the store).
- ``POST /api/label`` ``{"annotator", "item_id", "side": left|right|tie|skip, "seconds"?, "comment"?}``
  -> ``{"label", "state"}``, sent only after the store committed the label: a 200 means durable.
- ``POST /api/undo``  ``{"annotator"}`` -> ``{"undone": label | null, "state"}``; the undone item is shown next.
  ``state`` is ``{"annotator", "item": {"id", "prompt", "left", "right"} | null, "progress": {"done", "total"}}``.

Security, for a server that anyone's browser can reach on the same machine:
- a random token per server start (``secrets.token_urlsafe``), embedded in the page and required in the
  ``X-RLFL-Token`` header of every POST (``hmac.compare_digest``); without it: 403;
- POSTs must be ``Content-Type: application/json`` (415 otherwise): an HTML form cannot send that, and a
  cross-site ``fetch`` that does needs a CORS preflight, which this server never grants; an ``Origin``
  header, when present, must name this server, and ``Sec-Fetch-Site: cross-site`` is refused;
- on a loopback address, the ``Host`` header must be a loopback name with our port, which defeats DNS
  rebinding (a hostile site's name re-pointed at 127.0.0.1 would otherwise be "same origin");
- a non-loopback bind needs ``allow_remote`` and named ``annotators``: each annotator gets a private link
  (``/?key=KEY``, a random key per name and server start, logged at start and in ``links``); without a
  known key even the page is refused (403), and a key labels only as its own annotator, so a stranger on
  the network can neither read the items nor write labels, nor one annotator label as another. The
  traffic is plain HTTP: use it on a network you trust, or behind a TLS proxy;
- model text reaches the page only as JSON (``<``, ``>``, ``&`` escaped) and is inserted with
  ``textContent``; the page is sent with a Content-Security-Policy whose script and style need this
  response's nonce, plus ``X-Content-Type-Options: nosniff`` and ``frame-ancestors 'none'``.

Example:
    >>> cfg = LabelServeConfig(store="labels.db", import_jsonl="pairs.jsonl", port=0)   # doctest: +SKIP
    >>> with start_label_server(cfg) as srv:                                             # doctest: +SKIP
    ...     print(srv.url)   # open it in a browser
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rlfl.feedback.page import render_page
from rlfl.feedback.store import ORDERS, Label, LabelStore, check_annotator, open_label_store

# The HTTP server classes of `rlfl serve` (threaded, daemon threads, a deep listen backlog, IPv6 aware).
from rlfl.serve_http import (
    BackgroundServer,
    READ_TIMEOUT,
    _Server,
    _Server6,
    browser_refusal,
    is_loopback,
    loopback_hosts,
    run_until_interrupted,
)

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-RLFL-Token"
MAX_BODY_BYTES = 1024 * 1024
MAX_COMMENT_CHARS = 2000
SIDES = ("left", "right", "tie", "skip")


@dataclass
class LabelServeConfig:
    """`rlfl label serve`: which label store to serve, where to listen and who may label."""

    store: str = field(default="labels.db", metadata={"help": "label store (SQLite file); created by --import-jsonl"})
    import_jsonl: str | None = field(default=None, metadata={
        "help": "JSONL of items {prompt, response_a, response_b, source_a?, source_b?, meta?} to add to the "
                "store before serving (items it already holds are not added twice)"})
    on_bad_line: str = field(default="error", metadata={
        "help": "a bad line of --import-jsonl: error (import nothing, name the line) or skip (log it, import the rest)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; anything but a loopback address needs --allow-remote"})
    port: int = field(default=8765, metadata={"help": "TCP port (0 = any free port)"})
    allow_remote: bool = field(default=False, metadata={
        "help": "allow binding a non-loopback address; needs --annotators: each gets a private link, the only way "
                "to open the page or label (plain HTTP: a network you trust)"})
    annotators: list[str] | None = field(default=None, metadata={
        "help": "names allowed to label (default: any name typed on the page)"})
    read_timeout: float = field(default=READ_TIMEOUT, metadata={
        "help": "seconds a browser may stay silent mid-request (or idle on a kept-alive connection) before it is "
                "dropped"})

    def __post_init__(self) -> None:
        if not isinstance(self.store, str) or not self.store:
            raise ValueError("LabelServeConfig.store is empty; pass --store labels.db")
        if self.import_jsonl is not None and (not isinstance(self.import_jsonl, str) or not self.import_jsonl):
            raise ValueError("LabelServeConfig.import_jsonl is empty; pass --import-jsonl items.jsonl or leave it out")
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line={self.on_bad_line!r}; pass --on-bad-line error or skip")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"LabelServeConfig.port={self.port!r} must be in [0, 65535]; pass --port 8765 (0 = any free port)")
        if not isinstance(self.read_timeout, (int, float)) or not self.read_timeout > 0:
            raise ValueError(f"LabelServeConfig.read_timeout={self.read_timeout!r} must be > 0 seconds; pass "
                             "--read-timeout 30")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError("LabelServeConfig.host is empty; pass --host 127.0.0.1")
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(f"LabelServeConfig.host={self.host!r} is not a loopback address; use --host 127.0.0.1, "
                             f"or pass --allow-remote to let other machines reach the labelling page")
        if self.annotators is not None:
            if isinstance(self.annotators, str):
                self.annotators = [self.annotators]
            names = []
            for name in self.annotators:
                try:
                    names.append(check_annotator(name.strip() if isinstance(name, str) else name))
                except ValueError as exc:
                    raise ValueError(f"LabelServeConfig.annotators: {exc}") from None
            if not names:
                raise ValueError("LabelServeConfig.annotators is an empty list; name at least one annotator "
                                 "or leave --annotators out to allow any name")
            self.annotators = list(dict.fromkeys(names))
        if not is_loopback(self.host) and not self.annotators:
            raise ValueError(f"LabelServeConfig.host={self.host!r} serves other machines, so the page needs named "
                             "annotators: pass --annotators alice,bob (each gets a private link; only those links "
                             "open the page and label)")


class HTTPError(Exception):
    """A client error, answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _label_json(label: Label) -> dict[str, Any]:
    return {"id": label.id, "item_id": label.item_id, "annotator": label.annotator, "choice": label.choice,
            "shown_order": label.shown_order, "seconds": label.seconds, "comment": label.comment}


# ------------------------------------------------------------------------------------ the labelling logic
class _LabelApp:
    """What the handlers share: the store, the token, and each annotator's item on screen (with its order)."""

    def __init__(self, store: LabelStore, config: LabelServeConfig, token: str) -> None:
        self.store, self.config, self.token = store, config, token
        self.allowed = set(config.annotators) if config.annotators else None
        # other machines can reach a non-loopback bind: then each annotator has a private key, and a request
        # needs one (the page: ?key=; a write: the key as its token, labelling only as the key's annotator)
        self.keys: dict[str, str] | None = None
        if not is_loopback(config.host):
            self.keys = {name: secrets.token_urlsafe(24) for name in config.annotators or []}
        self.hosts: set[str] | None = None  # accepted Host headers; set once the port is known
        self._rng = random.Random(secrets.randbits(64))
        # annotator -> (item id, shown order) of the item the page shows; one lock makes "is this the item on
        # screen?" and the store write one step, so two tabs of one annotator cannot label an item twice
        self._current: dict[str, tuple[int, str]] = {}
        self._started: set[str] = set()  # annotators who called /api/next on this server (registered as human)
        self._lock = threading.Lock()

    def page_config(self, owner: str | None = None) -> dict[str, Any]:
        if owner is not None:  # a private link: the page is this annotator's alone
            return {"annotators": [owner], "annotator": owner, "store": Path(self.config.store).name}
        return {"annotators": sorted(self.allowed) if self.allowed else [], "store": Path(self.config.store).name}

    def key_owner(self, key: str) -> str | None:
        """The annotator whose private key ``key`` is (compared in constant time), or None."""
        owner = None
        for name, known in (self.keys or {}).items():
            if hmac.compare_digest(key.encode("utf-8", "replace"), known.encode("ascii")):
                owner = name
        return owner

    def annotator(self, body: dict[str, Any]) -> str:
        name = body.get("annotator")
        try:
            name = check_annotator(name.strip() if isinstance(name, str) else name)
        except ValueError as exc:
            raise HTTPError(400, f"'annotator': {exc}") from None
        if self.allowed is not None and name not in self.allowed:
            raise HTTPError(403, f"annotator {name!r} is not on this server's list; use one of: "
                                 f"{', '.join(sorted(self.allowed))}")
        return name

    def _state(self, annotator: str) -> dict[str, Any]:
        """The item to show ``annotator`` now (kept until answered) and their progress; call with the lock held."""
        current = self._current.get(annotator)
        if current is not None:
            item = self.store.item(current[0])
        else:
            item = self.store.next_item(annotator)
            if item is not None:
                current = (item.id, self._rng.choice(ORDERS))
                self._current[annotator] = current
        done, total = self.store.progress(annotator)
        shown = None
        if item is not None and current is not None:
            left, right = (item.response_a, item.response_b) if current[1] == "ab" else (item.response_b, item.response_a)
            shown = {"id": item.id, "prompt": item.prompt, "left": left, "right": right}
        return {"annotator": annotator, "item": shown, "progress": {"done": done, "total": total}}

    def next(self, body: dict[str, Any]) -> dict[str, Any]:
        annotator = self.annotator(body)
        with self._lock:
            self.store.add_annotator(annotator)  # ValueError (-> 400) for a simulated annotator's name
            self._started.add(annotator)
            return {"state": self._state(annotator)}

    def label(self, body: dict[str, Any]) -> dict[str, Any]:
        annotator = self.annotator(body)
        item_id, side = body.get("item_id"), body.get("side")
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            raise HTTPError(400, f"'item_id' must be an integer, got {json.dumps(item_id)}")
        if side not in SIDES:
            raise HTTPError(400, f"'side' must be one of {', '.join(SIDES)}, got {json.dumps(side)}")
        seconds = body.get("seconds")
        if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                                    or not math.isfinite(seconds) or seconds < 0):
            raise HTTPError(400, f"'seconds' must be a number >= 0 or null, got {json.dumps(seconds)}")
        comment = body.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
            raise HTTPError(400, f"'comment' must be a string of at most {MAX_COMMENT_CHARS} characters or null")
        with self._lock:
            current = self._current.get(annotator)
            if current is None or current[0] != item_id:
                raise HTTPError(409, f"item {item_id} is not the one this server is showing {annotator} "
                                     "(a stale page or a restarted server); showing the current item")
            order = current[1]
            # which response the screen side names: left is response_a exactly when the order was "ab"
            choice = {"left": "a" if order == "ab" else "b", "right": "b" if order == "ab" else "a",
                      "tie": "tie", "skip": "skip"}[side]
            try:
                label = self.store.add_label(item_id, annotator, choice, order,
                                             seconds=None if seconds is None else float(seconds),
                                             comment=(comment.strip() or None) if comment else None)
            except ValueError as exc:  # labelled meanwhile elsewhere (e.g. `rlfl label cli` on the same store)
                del self._current[annotator]
                raise HTTPError(409, f"{exc}; showing the next item") from None
            del self._current[annotator]
            log.debug("%s labelled item %d: %s (%s shown %s)", annotator, item_id, side, choice, order)
            return {"label": {**_label_json(label), "side": side}, "state": self._state(annotator)}

    def undo(self, body: dict[str, Any]) -> dict[str, Any]:
        annotator = self.annotator(body)
        with self._lock:
            if annotator not in self._started:  # never undo the labels of a name that /api/next refused
                raise HTTPError(409, f"start labelling as {annotator!r} on this server before undoing")
            undone = self.store.undo_last(annotator)
            if undone is not None:  # show the undone item again, in the order it was shown
                self._current[annotator] = (undone.item_id, undone.shown_order)
            return {"undone": None if undone is None else _label_json(undone), "state": self._state(annotator)}


# ------------------------------------------------------------------------------------ HTTP
def _json_bytes(value: Any) -> bytes:
    # <, > and & escaped even in JSON: a body sniffed or embedded as HTML by mistake still runs nothing
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rlfl-label"
    app: _LabelApp  # set on the per-server subclass
    owner: str | None = None  # on a remote server, the annotator whose key this request carries

    def _check_host(self) -> None:
        refusal = browser_refusal(self.headers, self.app.hosts, write=False)
        if refusal is not None:
            raise HTTPError(*refusal)

    def _check_write(self) -> None:
        """The checks every POST passes before its body is even read (host, origin, type, then the token)."""
        refusal = browser_refusal(self.headers, self.app.hosts, write=True)
        if refusal is not None:
            raise HTTPError(*refusal)
        sent = self.headers.get(TOKEN_HEADER, "")
        if self.app.keys is not None:  # a remote server: the token is an annotator's private key
            self.owner = self.app.key_owner(sent) if sent else None
            if self.owner is None:
                raise HTTPError(403, f"missing or unknown {TOKEN_HEADER} key; open your private link")
            return
        if not sent or not hmac.compare_digest(sent.encode("utf-8", "replace"), self.app.token.encode("ascii")):
            raise HTTPError(403, f"missing or wrong {TOKEN_HEADER} header; reload the page served by this server")

    def _json(self) -> dict[str, Any]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HTTPError(411, "chunked request bodies are not supported; send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            raise HTTPError(413 if length > MAX_BODY_BYTES else 411,
                            f"send a Content-Length of at most {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise HTTPError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        return body

    def _routes(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"/api/next": self.app.next, "/api/label": self.app.label, "/api/undo": self.app.undo}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check_host()
            if path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif path in ("/", "/index.html"):
                token, owner = self.app.token, None
                if self.app.keys is not None:
                    key = parse_qs(urlsplit(self.path).query).get("key", [""])[0]
                    owner = self.app.key_owner(key) if key else None
                    if owner is None:
                        raise HTTPError(403, "this labelling page opens only through an annotator's private link "
                                             "(/?key=...); ask whoever runs it for yours")
                    token = key
                nonce = secrets.token_urlsafe(16)
                page = render_page(nonce=nonce, token=token, config=self.app.page_config(owner))
                self._send(200, page.encode("utf-8"), "text/html; charset=utf-8", nonce=nonce)
            else:
                raise HTTPError(404, f"no such page: {path}; the labelling page is at /")
        except HTTPError as exc:
            self._send_error(exc)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check_host()
            route = self._routes().get(path)
            if route is None:
                raise HTTPError(404, f"no such endpoint: {path}; see /api/next, /api/label, /api/undo")
            self._check_write()
            body = self._json()
            if self.app.keys is not None and body.get("annotator") != self.owner:
                raise HTTPError(403, f"this link labels as {self.owner!r} only")
            self._send(200, _json_bytes(route(body)), "application/json")
        except HTTPError as exc:
            self._send_error(exc)
        except ValueError as exc:  # the store refusing a write (e.g. an item it does not hold)
            self._send_error(HTTPError(400, str(exc)))
        except Exception as exc:  # a bug or a broken store: answer 500 rather than drop the connection
            log.exception("POST %s failed", path)
            self._send_error(HTTPError(500, f"internal error: {exc}"))

    def _method_not_allowed(self) -> None:
        self._send_error(HTTPError(405, f"{self.command} is not allowed; use GET / and POST /api/..."))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _send_error(self, exc: HTTPError) -> None:
        # the body of a refused request may be unread: close rather than parse it as the next request
        self.close_connection = True
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", self.command, self.path, exc.status, exc.message)
        self._send(exc.status, _json_bytes({"error": exc.message}), "application/json")

    def _send(self, status: int, data: bytes, ctype: str, *, nonce: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        script = f"'nonce-{nonce}'" if nonce else "'none'"
        self.send_header("Content-Security-Policy",
                         f"default-src 'none'; script-src {script}; style-src {script}; connect-src 'self'; "
                         "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class RunningLabelServer(BackgroundServer):
    """A started label server: ``url``, ``token``, ``store``, ``shutdown()`` (also a context manager).

    ``links`` maps each annotator to a private link on a remote (non-loopback) server; it is empty on a
    loopback one, where the page opens at ``url`` and any allowed name may label.
    """

    def __init__(self, httpd: _Server, app: _LabelApp, host: str, owns_store: bool) -> None:
        self._app, self._owns_store = app, owns_store
        self.store: LabelStore = app.store
        self.token: str = app.token
        super().__init__(httpd, host, name="rlfl-label-http", description="the labelling page", path="/")
        self.links: dict[str, str] = {name: f"{self.url}?key={key}" for name, key in (app.keys or {}).items()}

    def _close(self) -> None:
        if self._owns_store:  # a store the caller passed in stays open for the caller
            self.store.close()


def _open_store(config: LabelServeConfig) -> LabelStore:
    path = Path(config.store).expanduser()
    store, n = open_label_store(path, import_jsonl=config.import_jsonl, on_bad_line=config.on_bad_line)
    try:
        if config.import_jsonl is not None:
            log.info("added %d items from %s to %s", n, config.import_jsonl, path)
        if len(store) == 0:
            raise ValueError(f"{path}: the label store holds no items; pass --import-jsonl ITEMS.jsonl")
    except BaseException:
        store.close()
        raise
    return store


def start_label_server(config: LabelServeConfig, *, store: LabelStore | None = None) -> RunningLabelServer:
    """Open the store (unless given), bind, and serve the labelling page in background threads.

    A store passed in stays open after ``shutdown()`` (its owner closes it); ``config.store`` and
    ``config.import_jsonl`` are then not used.
    """
    owns = store is None
    if store is None:
        store = _open_store(config)
    elif len(store) == 0:
        raise ValueError("the label store holds no items; add some with store.add_items(...) first")
    app = _LabelApp(store, config, secrets.token_urlsafe(32))
    handler = type("Handler", (_Handler,), {"app": app})
    try:
        httpd = (_Server6 if ":" in config.host else _Server)((config.host, config.port), handler,
                                                              read_timeout=config.read_timeout)
    except OSError as exc:
        if owns:
            store.close()
        raise ValueError(f"cannot bind {config.host}:{config.port} ({exc.strerror or exc}); "
                         f"pick another --port (0 = any free port)") from None
    app.hosts = loopback_hosts(config.host, httpd.server_address[1])  # DNS-rebinding guard
    server = RunningLabelServer(httpd, app, config.host, owns)
    log.info("labelling page for %s (%d items) at %s", Path(config.store).name if owns else "the store",
             len(store), server.url)
    for name, link in server.links.items():  # on the terminal of whoever started it, for them to hand out
        log.info("private link for %s: %s", name, link)
    return server


def label_serve(config: LabelServeConfig) -> None:
    """Serve the labelling page in the foreground until Ctrl-C."""
    run_until_interrupted(start_label_server(config))

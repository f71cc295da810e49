"""HTTP plumbing shared by `rlfl serve` and `rlfl label serve`: the threaded server, its background thread, and the
guards against requests a web page in a browser could send.

Both servers bind 127.0.0.1 unless told otherwise, answer each connection on its own daemon thread with a
read timeout (`_Server`; `_Server6` for IPv6 addresses), run in the background (`BackgroundServer`) and refuse
what a hostile page could make a browser send (`browser_refusal`, with the Host names of `loopback_hosts`).

Example:
    >>> is_loopback("127.0.0.2"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    >>> sorted(loopback_hosts("127.0.0.1", 8000))
    ['127.0.0.1:8000', '[::1]:8000', 'localhost:8000']
    >>> browser_refusal({"Host": "evil.example:8000"}, loopback_hosts("127.0.0.1", 8000), write=False)
    (403, "unexpected Host header 'evil.example:8000'; use a loopback address such as http://127.0.0.1:PORT/")
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

READ_TIMEOUT = 30.0  # seconds a client may stay silent in the middle of a request (or idle between requests)


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

    The base of `rlfl.serve.RunningServer` and of the labelling page's server; a subclass releases its own
    resources in ``_close`` (called once, after the socket is closed).
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


def run_until_interrupted(server: Any) -> None:
    """Block until Ctrl-C, then shut ``server`` down (anything with ``wait(timeout)`` and ``shutdown()``)."""
    try:
        while True:
            server.wait(1.0)  # short joins so Ctrl-C reaches the main thread promptly
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        server.shutdown()

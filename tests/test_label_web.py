"""Tests for rlfl.feedback.web: a real label server on a free loopback port, spoken to with urllib only.

The durability test runs the server in a subprocess, SIGKILLs it while labels are being posted and
checks on restart that every acknowledged label is in the store and the database is intact.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlfl.feedback.store import LabelStore
from rlfl.feedback.web import TOKEN_HEADER, LabelServeConfig, start_label_server

SCRIPT = "<script>alert(1)</script>"
ITEMS = [{"prompt": f"Prompt {i}: which reply is kinder?", "response_a": f"kind reply {i}",
          "response_b": f"rude reply {i}" + (f" {SCRIPT}" if i == 2 else ""), "source_a": "sft", "source_b": "base"}
         for i in range(6)]


@pytest.fixture
def store(tmp_path):
    with LabelStore(tmp_path / "labels.db") as s:
        s.add_items(ITEMS)
        yield s


@pytest.fixture
def server(store):
    with start_label_server(LabelServeConfig(store=str(store.path), port=0), store=store) as srv:
        yield srv


def request(url: str, body=None, *, token: str | None = None, ctype: str | None = "application/json",
            raw: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, parsed JSON or text, headers, raw bytes) of one request; HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = dict(headers or {})
    if ctype is not None and data is not None:
        h["Content-Type"] = ctype
    if token is not None:
        h[TOKEN_HEADER] = token
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, payload, hdrs = err.code, err.read(), err.headers
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload.decode("utf-8")
    return status, parsed, hdrs, payload


def api(srv, path: str, body: dict, **kw):
    kw.setdefault("token", srv.token)
    status, parsed, _, _ = request(srv.url + path.lstrip("/"), body, **kw)
    return status, parsed


def shown_order(item: dict, state_item: dict) -> str:
    """The order the server showed, read back from which text it put on the left."""
    if state_item["left"] == item["response_a"]:
        assert state_item["right"] == item["response_b"]
        return "ab"
    assert (state_item["left"], state_item["right"]) == (item["response_b"], item["response_a"])
    return "ba"


# ------------------------------------------------------------------------------------ the labelling flow
def test_label_flow_maps_screen_sides_to_responses_and_reaches_done(server, store):
    status, out = api(server, "/api/next", {"annotator": "alice"})
    assert status == 200 and out["state"]["progress"] == {"done": 0, "total": 6}
    sides = ["left", "right", "tie", "skip", "left", "right"]
    expected = []
    state = out["state"]
    for n, side in enumerate(sides):
        shown = state["item"]
        item = ITEMS[shown["id"] - 1]
        assert shown["prompt"] == item["prompt"]
        order = shown_order(item, shown)
        status, out = api(server, "/api/label", {"annotator": "alice", "item_id": shown["id"], "side": side,
                                                 "seconds": 2.5, "comment": " nice " if n == 0 else None})
        assert status == 200, out
        picked = {"left": shown["left"], "right": shown["right"]}.get(side)
        choice = {item["response_a"]: "a", item["response_b"]: "b"}.get(picked, side)
        assert out["label"]["choice"] == choice and out["label"]["shown_order"] == order
        assert out["state"]["progress"] == {"done": n + 1, "total": 6}
        expected.append((shown["id"], choice, order))
        state = out["state"]
    assert state["item"] is None  # the done state
    labels = store.labels(annotator="alice")
    assert [(lb.item_id, lb.choice, lb.shown_order) for lb in labels] == expected
    assert labels[0].comment == "nice" and labels[0].seconds == 2.5 and labels[1].comment is None
    assert not any(lb.simulated for lb in labels)


def test_both_orders_are_shown(server):
    """The server randomises left/right per item: over 6 items x 4 annotators both orders appear."""
    orders = set()
    for who in ("a1", "a2", "a3", "a4"):
        state = api(server, "/api/next", {"annotator": who})[1]["state"]
        while state["item"] is not None:
            orders.add(shown_order(ITEMS[state["item"]["id"] - 1], state["item"]))
            state = api(server, "/api/label", {"annotator": who, "item_id": state["item"]["id"], "side": "skip"})[1]["state"]
    assert orders == {"ab", "ba"}


def test_undo_shows_the_same_item_in_the_same_order_again(server, store):
    state = api(server, "/api/next", {"annotator": "bob"})[1]["state"]
    first = state["item"]
    out = api(server, "/api/label", {"annotator": "bob", "item_id": first["id"], "side": "left"})[1]
    before, second = out["label"]["choice"], out["state"]["item"]
    status, out = api(server, "/api/undo", {"annotator": "bob"})
    assert status == 200 and out["undone"]["item_id"] == first["id"]
    assert out["state"]["item"] == first and out["state"]["progress"]["done"] == 0
    assert store.labels(annotator="bob") == []
    # label it again (the other way); the item that was next before the undo still comes afterwards
    out = api(server, "/api/label", {"annotator": "bob", "item_id": first["id"], "side": "right"})[1]
    assert {out["label"]["choice"], before} == {"a", "b"}  # same order on screen, so the other response
    assert out["state"]["item"]["id"] == second["id"]
    assert len(store.labels(annotator="bob")) == 1
    api(server, "/api/undo", {"annotator": "bob"})
    status, out = api(server, "/api/undo", {"annotator": "bob"})
    assert status == 200 and out["undone"] is None and out["state"]["progress"]["done"] == 0


def test_annotators_have_their_own_progress_and_stale_items_are_refused(server, store):
    a = api(server, "/api/next", {"annotator": "ann"})[1]["state"]["item"]
    b = api(server, "/api/next", {"annotator": "ben"})[1]["state"]["item"]
    assert a["id"] == b["id"] == 1  # both start at the store's first item: their labels overlap
    api(server, "/api/label", {"annotator": "ann", "item_id": a["id"], "side": "left"})
    # the same item posted twice (a second tab, a double key press) is refused, not stored twice
    status, out = api(server, "/api/label", {"annotator": "ann", "item_id": a["id"], "side": "left"})
    assert status == 409 and "not the one" in out["error"]
    assert api(server, "/api/next", {"annotator": "ben"})[1]["state"]["progress"]["done"] == 0
    api(server, "/api/label", {"annotator": "ben", "item_id": b["id"], "side": "tie"})
    assert store.counts()["ann"]["total"] == 1 and store.counts()["ben"]["tie"] == 1
    # an item labelled meanwhile through another door (the terminal labeller) is a 409, then the next one
    c = api(server, "/api/next", {"annotator": "ann"})[1]["state"]["item"]
    store.add_label(c["id"], "ann", "a", "ab")
    status, out = api(server, "/api/label", {"annotator": "ann", "item_id": c["id"], "side": "right"})
    assert status == 409 and "already labelled" in out["error"]
    assert api(server, "/api/next", {"annotator": "ann"})[1]["state"]["item"]["id"] not in (a["id"], c["id"])
    assert [lb.choice for lb in store.labels(annotator="ann")][1] == "a"
    # undo before /api/next on this server is refused (it could undo a name the server never vetted)
    status, out = api(server, "/api/undo", {"annotator": "carl"})
    assert status == 409 and "start labelling" in out["error"]


def test_bad_bodies_are_400(server, store):
    api(server, "/api/next", {"annotator": "dan"})
    for body, needle in [({"annotator": ""}, "annotator"), ({"annotator": 7}, "annotator"),
                         ({"annotator": "dan", "item_id": "1", "side": "left"}, "item_id"),
                         ({"annotator": "dan", "item_id": 1, "side": "up"}, "side"),
                         ({"annotator": "dan", "item_id": 1, "side": "left", "seconds": -1}, "seconds"),
                         ({"annotator": "dan", "item_id": 1, "side": "left", "comment": 3}, "comment")]:
        status, out = api(server, "/api/label", body)
        assert status == 400 and needle in out["error"], (body, out)
    status, out = api(server, "/api/next", None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in out["error"]
    status, out = api(server, "/api/next", None, raw=b"[1, 2]")
    assert status == 400 and "JSON object" in out["error"]
    store.add_annotator("robot", simulated=True)
    status, out = api(server, "/api/next", {"annotator": "robot"})
    assert status == 400 and "simulated" in out["error"]
    assert store.labels() == []


def test_annotator_list_is_enforced(store):
    cfg = LabelServeConfig(store=str(store.path), port=0, annotators=["alice", " bob "])
    assert cfg.annotators == ["alice", "bob"]
    with start_label_server(cfg, store=store) as srv:
        assert api(srv, "/api/next", {"annotator": "bob"})[0] == 200
        status, out = api(srv, "/api/next", {"annotator": "mallory"})
        assert status == 403 and "alice, bob" in out["error"]
        status, page, _, _ = request(srv.url)
        config = json.loads(re.search(r'id="rlfl-config">(.*?)</script>', page).group(1))
        assert config["annotators"] == ["alice", "bob"]


# ------------------------------------------------------------------------------------ security
def test_writes_without_or_with_a_wrong_token_are_403(server, store):
    for token in (None, "", "x" * len(server.token), server.token[:-1], server.token + "x"):
        for path, body in [("/api/next", {"annotator": "eve"}), ("/api/label", {"annotator": "eve", "item_id": 1,
                                                                               "side": "left"})]:
            status, out = api(server, path, body, token=token)
            assert status == 403 and TOKEN_HEADER in out["error"], (token, out)
    assert store.labels() == [] and store.counts() == {}  # not even the annotator was registered
    # a second server on the same store has its own token; the first one's is worthless there
    with start_label_server(LabelServeConfig(store=str(store.path), port=0), store=store) as other:
        assert other.token != server.token
        assert api(other, "/api/next", {"annotator": "eve"}, token=server.token)[0] == 403


def test_form_and_cross_site_posts_are_refused(server, store):
    form = b"annotator=eve&item_id=1&side=left"
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", None):
        for token in (None, server.token):  # even a leaked token does not make a form post work
            status, out = api(server, "/api/next", None, raw=form, ctype=ctype, token=token)
            assert status == 415 and "application/json" in out["error"], (ctype, out)
    body = {"annotator": "eve"}
    status, out = api(server, "/api/next", body, headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in out["error"]
    status, _ = api(server, "/api/next", body, headers={"Origin": "null"})
    assert status == 403
    status, out = api(server, "/api/next", body, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in out["error"]
    # DNS rebinding: a hostile name pointed at 127.0.0.1 sends its own Host header
    status, out, _, _ = request(server.url, headers={"Host": f"evil.example:{server.port}"})
    assert status == 403 and "Host" in out["error"]
    status, _ = api(server, "/api/next", body, headers={"Host": f"evil.example:{server.port}",
                                                        "Origin": f"http://evil.example:{server.port}"})
    assert status == 403
    # the page's own origin is fine, under either loopback name
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        status, _ = api(server, "/api/next", body, headers={"Host": host, "Origin": f"http://{host}"})
        assert status == 200
    assert store.labels() == []
    assert request(server.url + "api/next")[0] == 404  # GET on an API path
    assert request(server.url, method="PUT", raw=b"{}")[0] == 405


def test_non_loopback_bind_needs_the_flag():
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(ValueError, match="--allow-remote") as info:
            LabelServeConfig(host=host)
        assert "\n" not in str(info.value)
        assert LabelServeConfig(host=host, allow_remote=True, annotators=["alice"]).allow_remote
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        LabelServeConfig(host=host)


def test_config_errors_name_the_fix(tmp_path):
    for kwargs, needle in [({"port": 70000}, "--port"), ({"port": -1}, "--port"), ({"store": ""}, "--store"),
                           ({"annotators": []}, "--annotators"), ({"annotators": ["ok", ""]}, "annotator name"),
                           ({"import_jsonl": ""}, "--import-jsonl")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            LabelServeConfig(**kwargs)
    with pytest.raises(FileNotFoundError, match="--import-jsonl"):
        start_label_server(LabelServeConfig(store=str(tmp_path / "missing.db"), port=0))
    assert not (tmp_path / "missing.db").exists()
    LabelStore(tmp_path / "empty.db").close()
    with pytest.raises(ValueError, match="no items"):
        start_label_server(LabelServeConfig(store=str(tmp_path / "empty.db"), port=0))


def test_import_on_start_and_restart_does_not_duplicate(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in ITEMS), encoding="utf-8")
    cfg = LabelServeConfig(store=str(tmp_path / "new.db"), import_jsonl=str(items), port=0)
    for _ in range(2):
        with start_label_server(cfg) as srv:
            assert api(srv, "/api/next", {"annotator": "fay"})[1]["state"]["progress"]["total"] == len(ITEMS)


def test_page_holds_no_model_text_and_sends_security_headers(server, store):
    status, page, headers, raw = request(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "alert(1)" not in page and "kind reply" not in page and "Prompt 0" not in page
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert page.count(f'nonce="{nonce}"') == 2  # the inline style and the inline script, nothing else
    assert len(re.findall(r"<script", page)) == 2
    assert f'<meta name="rlfl-token" content="{server.token}">' in page
    assert re.search(r"script-src 'nonce-([^']+)'", request(server.url)[2]["Content-Security-Policy"]).group(1) != nonce
    # the innerHTML family never appears in the page's script: model text goes in with textContent
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", page)
    # model text travels as JSON with < > & escaped, and decodes to exactly the original
    state = api(server, "/api/next", {"annotator": "gus"})[1]["state"]
    while state["item"]["id"] != 3:
        state = api(server, "/api/label", {"annotator": "gus", "item_id": state["item"]["id"], "side": "skip"})[1]["state"]
    status, out, headers, raw = request(server.url + "api/next", {"annotator": "gus"}, token=server.token)
    assert b"<script>" not in raw and b"\\u003cscript\\u003e" in raw
    assert SCRIPT in (out["state"]["item"]["left"] + out["state"]["item"]["right"])
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"


def test_server_side_values_in_the_page_are_escaped(store):
    """The page's config block (annotator names, store name) cannot break out of its JSON <script> block."""
    evil = "</script><script>alert(2)</script>"
    with start_label_server(LabelServeConfig(store=str(store.path), port=0, annotators=[evil, "x&y"]),
                            store=store) as srv:
        page = request(srv.url)[1]
    assert "alert(2)" in page and "<script>alert(2)" not in page and "x&y" not in page
    config = json.loads(re.search(r'id="rlfl-config">(.*?)</script>', page).group(1))
    assert config == {"annotators": [evil, "x&y"], "store": store.path.name}


# ------------------------------------------------------------------------------------ durability
SERVER_SCRIPT = """
import json, sys, time
from rlfl.feedback.web import LabelServeConfig, start_label_server
srv = start_label_server(LabelServeConfig(store=sys.argv[1], port=0))
print(json.dumps({"url": srv.url, "token": srv.token}), flush=True)
while True:
    time.sleep(3600)
"""


def _spawn(store_path: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(store_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # blocks until the server is listening (or the process died)
    if not line:
        proc.wait(10)
        raise AssertionError(f"the label server did not start: {proc.stderr.read()}")
    return proc, json.loads(line)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_acknowledged_labels_survive_sigkill(tmp_path):
    path = tmp_path / "durable.db"
    with LabelStore(path) as s:
        s.add_items([{"prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(400)])
    proc, info = _spawn(path)
    acked: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    class Fake:  # what `api` needs of a server
        url, token = info["url"], info["token"]

    def annotate(name: str) -> None:
        try:
            state = api(Fake, "/api/next", {"annotator": name})[1]["state"]
            while state["item"] is not None:
                status, out = api(Fake, "/api/label", {"annotator": name, "item_id": state["item"]["id"],
                                                       "side": ("left", "right", "tie")[len(acked) % 3]})
                assert status == 200, out
                with lock:
                    acked.append(out["label"])
                state = out["state"]
        except (urllib.error.URLError, ConnectionError, OSError, http.client.HTTPException):
            pass  # the server died under us (even mid-answer): what was acknowledged before must be on disk
        except (AssertionError, KeyError, TypeError) as exc:  # a wrong answer: report it from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: three clients are posting right now
    proc.wait(10)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(acked) >= 40, "the clients stopped before the kill"
    assert len(acked) < 3 * 400  # the kill came mid-way, not after everything was done

    # restart on the same store: it serves, and every acknowledged label is there
    proc, info = _spawn(path)
    try:
        Fake.url, Fake.token = info["url"], info["token"]
        state = api(Fake, "/api/next", {"annotator": "w0"})[1]["state"]
        w0 = sum(1 for lb in acked if lb["annotator"] == "w0")
        assert state["progress"]["done"] in (w0, w0 + 1)  # + the label committed but never answered, if any
        assert api(Fake, "/api/label", {"annotator": "w0", "item_id": state["item"]["id"], "side": "left"})[0] == 200
    finally:
        proc.kill()
        proc.wait(10)
    with LabelStore(path, create=False) as s:
        stored = {lb.id: lb for lb in s.labels()}
    for lb in acked:
        got = stored.get(lb["id"])
        assert got is not None, f"acknowledged label {lb} is missing after SIGKILL"
        assert (got.item_id, got.annotator, got.choice, got.shown_order) == (
            lb["item_id"], lb["annotator"], lb["choice"], lb["shown_order"])
    # at most one label per client can be committed without its answer having arrived, plus the one above
    assert len(acked) + 1 <= len(stored) <= len(acked) + 3 + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_ctrl_c_stops_label_serve_cleanly(tmp_path):
    path = tmp_path / "labels.db"
    with LabelStore(path) as s:
        s.add_items(ITEMS)
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(message)s')\n"
              "from rlfl.feedback.web import LabelServeConfig, label_serve\n"
              "label_serve(LabelServeConfig(store=sys.argv[1], port=0))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lines = []
        while not any("labelling page for" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"label_serve did not start: {''.join(lines)}"
            lines.append(line)
        url = re.search(r"(http://\S+)", lines[-1]).group(1)
        assert request(url)[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert "stopped the labelling page" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(10)


def test_stalled_browsers_are_dropped_after_the_read_timeout(store):
    from conftest import stalled_clients_are_dropped

    with start_label_server(LabelServeConfig(store=str(store.path), port=0, read_timeout=0.5), store=store) as srv:
        head = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n".encode()  # headers never finished
        assert stalled_clients_are_dropped(srv.port, head, 0.5) < 4.0
        status, _, _, _ = request(srv.url)
        assert status == 200
    with pytest.raises(ValueError, match=r"read_timeout=-1 must be > 0 seconds"):
        LabelServeConfig(read_timeout=-1)


# ------------------------------------------------------------------------------------ remote use
def test_a_remote_server_needs_named_annotators():
    with pytest.raises(ValueError, match="pass --annotators alice,bob"):
        LabelServeConfig(host="0.0.0.0", allow_remote=True, port=0)


def test_a_remote_server_opens_only_through_private_links(store):
    cfg = LabelServeConfig(store=str(store.path), host="0.0.0.0", allow_remote=True, port=0,
                           annotators=["alice", "bob"])
    with start_label_server(cfg, store=store) as srv:
        assert set(srv.links) == {"alice", "bob"} and srv.links["alice"] != srv.links["bob"]
        base = f"http://127.0.0.1:{srv.port}/"
        keys = {name: link.split("?key=", 1)[1] for name, link in srv.links.items()}
        # a stranger: no page (so no token), with or without a guessed key
        for url in (base, base + "?key=guess", base + "?key="):
            status, text, _, raw = request(url)
            assert status == 403 and srv.token.encode() not in raw and b"reply" not in raw
            assert keys["alice"].encode() not in raw
        # alice's link: her page, locked to her name, whose token is her key
        status, text, _, _ = request(srv.links["alice"].replace(f"0.0.0.0:{srv.port}", f"127.0.0.1:{srv.port}"))
        assert status == 200 and f'content="{keys["alice"]}"' in text and '"annotator": "alice"' in text
        # writes: only with a known key, and only as that key's annotator
        assert api(srv, "/api/next", {"annotator": "alice"}, token=srv.token)[0] == 403  # the loopback token
        assert api(srv, "/api/next", {"annotator": "alice"}, token=None)[0] == 403
        status, body = api(srv, "/api/next", {"annotator": "bob"}, token=keys["alice"])
        assert status == 403 and "labels as 'alice' only" in body["error"]
        status, body = api(srv, "/api/next", {"annotator": "alice"}, token=keys["alice"])
        assert status == 200 and body["state"]["annotator"] == "alice"
        item = body["state"]["item"]
        status, body = api(srv, "/api/label", {"annotator": "alice", "item_id": item["id"], "side": "left"},
                           token=keys["alice"])
        assert status == 200 and body["label"]["annotator"] == "alice"
    assert [lab.annotator for lab in store.labels()] == ["alice"]

"""Tests for rlfl.download against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import logging
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlfl.download import (
    DATASETS,
    DatasetSpec,
    DownloadError,
    dataset_documents,
    download,
    fetch_dataset,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PAYLOAD = bytes(range(256)) * 40 + b"the end"  # 10,247 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FileServer(ThreadingHTTPServer):
    """Serves `files` by path, honours `Range: bytes=N-`, and can misbehave on request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {"/data.bin": PAYLOAD}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: int | None = None  # send this many body bytes, then cut the connection (once)
        self.ignore_range = False

    def url(self, path: str = "/data.bin") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not srv.ignore_range:
            start, status = int(m.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fast(**kw):
    """download() settings for tests: no progress bar, no sleeping between retries, short timeout."""
    return {"progress": False, "backoff": 0.0, "timeout": 5, "chunk_size": 1000, **kw}


# ---------------------------------------------------------------------------------------- download
def test_full_download_verified(server, tmp_path):
    dest = download(server.url(), tmp_path / "sub" / "data.bin", sha256=SHA, **fast())
    assert dest == tmp_path / "sub" / "data.bin" and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert server.requests == [("/data.bin", None)]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.drop_after = 3000
    with pytest.raises(DownloadError, match=r"connection .* 3000 .*data\.bin\.part \(3000 bytes\) is kept"):
        download(server.url(), dest, sha256=SHA, **fast(retries=0))
    part = tmp_path / "data.bin.part"
    assert part.read_bytes() == PAYLOAD[:3000] and not dest.exists()

    download(server.url(), dest, sha256=SHA, **fast(retries=0))
    assert server.requests[-1] == ("/data.bin", "bytes=3000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_retry_resumes_within_one_call(server, tmp_path):
    server.drop_after = 5000
    dest = download(server.url(), tmp_path / "data.bin", sha256=SHA, **fast(retries=2))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", None), ("/data.bin", "bytes=5000-")]


def test_server_without_range_support_restarts(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(b"x" * 4000)  # not even the right bytes
    server.ignore_range = True
    dest = download(server.url(), tmp_path / "data.bin", sha256=SHA, **fast())
    assert dest.read_bytes() == PAYLOAD and server.requests == [("/data.bin", "bytes=4000-")]


def test_complete_part_is_finished_without_a_body(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    dest = download(server.url(), tmp_path / "data.bin", sha256=SHA, **fast())
    assert dest.read_bytes() == PAYLOAD and server.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_sha_mismatch(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ValueError) as e:
        download(server.url(), tmp_path / "data.bin", sha256=wrong, **fast())
    assert str(e.value) == (f"{server.url()}: sha256 mismatch: expected {wrong}, got {SHA}; the partial file "
                            "was removed, retry (or check that the URL still serves the same file)")
    assert list(tmp_path.iterdir()) == []


def test_unpinned_download_logs_the_hash(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rlfl.download"):
        download(server.url(), tmp_path / "data.bin", **fast())
    assert f"has sha256 {SHA}" in caplog.text


def test_unreachable_server(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"gave up after 2 attempts; check the connection"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", **fast(retries=1))
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404 .*check the URL"):
        download(server.url("/missing.bin"), tmp_path / "x", **fast(retries=3))
    assert len(server.requests) == 1


# --------------------------------------------------------------------------------- known datasets
@pytest.fixture
def local_dataset(server, monkeypatch):
    """Register a dataset served by the local server (the real registry entries point at the internet)."""
    spec = DatasetSpec(name="tiny", url=server.url(), sha256=SHA, filename="data.bin", format="text",
                       description="test payload")
    monkeypatch.setitem(DATASETS, "tiny", spec)
    return spec


def test_local_path_wins(server, local_dataset, tmp_path):
    local = tmp_path / "mine.txt"
    local.write_text("my copy")
    assert fetch_dataset("tiny", tmp_path / "cache", local_path=local) == local
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: no such file or folder .*'tiny'"):
        fetch_dataset("tiny", tmp_path / "cache", local_path=tmp_path / "nope.txt")
    assert server.requests == []


def test_cache_hit_miss_and_corrupt(server, local_dataset, tmp_path):
    cached = tmp_path / "cache" / "tiny" / "data.bin"
    assert fetch_dataset("tiny", tmp_path / "cache", progress=False) == cached  # miss: downloads
    assert cached.read_bytes() == PAYLOAD and len(server.requests) == 1
    assert fetch_dataset("tiny", tmp_path / "cache") == cached  # hit: verified, no request
    assert len(server.requests) == 1
    cached.write_bytes(b"corrupted")
    assert fetch_dataset("tiny", tmp_path / "cache", progress=False) == cached  # bad hash: fetched again
    assert cached.read_bytes() == PAYLOAD and len(server.requests) == 2


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; known: imdb, tinyshakespeare, tinystories"):
        fetch_dataset("nope", tmp_path)


def test_registry_entries_are_pinned():
    assert {"tinyshakespeare", "tinystories", "imdb"} <= set(DATASETS)
    for spec in DATASETS.values():
        assert spec.url.startswith("https://") and re.fullmatch(r"[0-9a-f]{64}", spec.sha256)


# ------------------------------------------------------------------------------ reading documents
def test_imdb_reviews_straight_from_the_tarball(tmp_path):
    path = tmp_path / "aclImdb_v1.tar.gz"
    members = {"aclImdb/README": "readme", "aclImdb/train/pos/0_9.txt": "Loved it.<br />Great.",
               "aclImdb/test/neg/12_2.txt": "Dull.", "aclImdb/train/unsup/5_0.txt": "Unlabelled.",
               "aclImdb/train/urls_pos.txt": "http://example"}
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    docs = list(dataset_documents("imdb", path))
    assert [(d.text, d.meta["label"], d.meta["split"], d.meta["rating"]) for d in docs] == [
        ("Loved it.<br />Great.", 1, "train", 9), ("Dull.", 0, "test", 2), ("Unlabelled.", None, "train", 0)]
    assert docs[0].meta["id"] == "train/pos/0_9" and docs[0].source == str(path)


def test_imdb_jsonl_layout(tmp_path):
    rows = [{"id": "train/pos/0_9", "text": "Great.", "label": 1}, {"id": "x", "text": "Bad.", "label": 0}]
    (tmp_path / "imdb_train.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps(r) + "\n" for r in rows).encode()))
    (tmp_path / "README_aclImdb.txt").write_text("not a review")
    docs = list(dataset_documents("imdb", local_path=tmp_path))
    assert [(d.text, d.meta["label"]) for d in docs] == [("Great.", 1), ("Bad.", 0)]


def test_imdb_from_shared_data():
    if not (SHARED / "imdb").exists():
        pytest.skip("../shared/data not present")
    docs = list(itertools.islice(dataset_documents("imdb", local_path=SHARED / "imdb"), 3))
    assert len(docs) == 3 and all(d.meta["label"] in (0, 1) and len(d.text) > 20 for d in docs)


def test_tinystories_split_on_endoftext(tmp_path):
    path = tmp_path / "TinyStories-valid.txt"
    path.write_text("Once upon a time.\n<|endoftext|>\nThe end came.\n<|endoftext|>\n")
    assert [d.text for d in dataset_documents("tinystories", path)] == ["Once upon a time.", "The end came."]


def test_tinyshakespeare_from_shared_data(tmp_path):
    path = SHARED / "tinyshakespeare" / "input.txt"
    if not path.exists():
        pytest.skip("../shared/data not present")
    assert fetch_dataset("tinyshakespeare", tmp_path, local_path=path) == path
    [doc] = dataset_documents("tinyshakespeare", local_path=path)
    assert doc.text.startswith("First Citizen:") and hashlib.sha256(path.read_bytes()).hexdigest() == \
        DATASETS["tinyshakespeare"].sha256

"""Known public datasets and a resumable, verified downloader.

`fetch_dataset("tinyshakespeare", "~/.cache/rlfl")` returns a local file: a path you pass yourself, or
a verified copy already in the cache, always wins and touches no network; otherwise the file is
downloaded with `download`, which streams to `<dest>.part`, resumes an interrupted transfer with an
HTTP Range request, checks the sha256 and only then moves the file into place.
`dataset_documents(name, path)` reads the documents out of what `fetch_dataset` returned.

Example:
    >>> path = fetch_dataset("tinyshakespeare", "~/.cache/rlfl")          # doctest: +SKIP
    >>> docs = list(dataset_documents("tinyshakespeare", path))           # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from rlfl import __version__
from rlfl.data import Document, iter_documents

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/rlfl/datasets"


class DownloadError(OSError):
    """A download failed for good (after retries, or with an HTTP error that retrying cannot fix)."""


@dataclass(frozen=True)
class DatasetSpec:
    """A public dataset: where to get it, its pinned sha256 and how to read documents out of it."""

    name: str
    url: str
    sha256: str | None
    filename: str
    format: str          # "text" (one document), "eot-text" (<|endoftext|>-separated), "imdb-tar"
    description: str
    size: int | None = None

    def documents(self, path: str | os.PathLike) -> Iterator[Document]:
        """The documents of a local copy of this dataset (see `dataset_documents`)."""
        return dataset_documents(self.name, path)


# sha256 values were cross-checked against several independent public sources (TFDS checksums,
# scikit-learn-style loaders and other projects pinning the same files). None would mean "not
# verified": download() then logs the hash it computed.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec(
            name="tinyshakespeare",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            filename="input.txt", format="text", size=1_115_394,
            description="Tiny Shakespeare (char-rnn): 1.1 MB of plays as one text, split 90/10 at a line end"),
        DatasetSpec(
            name="tinystories",
            # Pinned to a revision so the bytes (and the sha256) cannot drift under us.
            url="https://huggingface.co/datasets/roneneldan/TinyStories/resolve/"
                "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64/TinyStories-valid.txt",
            sha256="94e431816c4cce81ff71e4408ff8d3bda9a42e8d2663986697c3954288cb38b4",
            filename="TinyStories-valid.txt", format="eot-text", size=19_447_282,
            description="TinyStories validation split (Eldan & Li 2023): ~22k short stories, 19 MB"),
        DatasetSpec(
            name="imdb",
            url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
            sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
            filename="aclImdb_v1.tar.gz", format="imdb-tar", size=84_125_825,
            description="IMDB Large Movie Review Dataset v1.0: 50k labelled + 50k unlabelled reviews"),
    )
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))} "
                         "(or pass local files instead)")
    return DATASETS[name]


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx)."""


def _fetch_once(url: str, part: Path, *, progress: bool, timeout: float, chunk_size: int) -> None:
    """One attempt: append to `part` from where it ends (Range), or restart it if the server says 200."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"rlfl/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # Range not satisfiable: the .part is either already whole ("bytes */<have>") or longer
            # than the remote file, i.e. junk from something else.
            if e.headers.get("Content-Range", "") == f"bytes */{have}":
                return
            part.unlink()
            raise _Transient(f"{part.name} ({have} bytes) does not fit the remote file; restarting") \
                from None
        if e.code >= 500 or e.code == 429:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; check the URL, or download the file "
                            "yourself and pass its local path") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Transient(str(getattr(e, "reason", e))) from None

    with response:
        if have and response.status == 200:
            # The server ignored our Range header and sends the whole file: start over.
            logger.info("%s: server does not resume (HTTP 200 to a Range request); restarting", url)
            have = 0
        elif have and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                part.unlink()
                raise _Transient(f"asked for bytes {have}- but got Content-Range {content_range!r}; "
                                 "restarting")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        received = have
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name[:-5], disable=not progress, leave=False) as bar:
            try:
                while True:
                    try:
                        block = response.read(chunk_size)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Transient(f"connection lost after {received} bytes "
                                         f"({type(e).__name__})") from None
                    if not block:
                        break
                    f.write(block)  # a full disk raises OSError here: not transient, not retried
                    received += len(block)
                    bar.update(len(block))
            finally:
                f.flush()
                os.fsync(f.fileno())
        if total is not None and received < total:
            raise _Transient(f"connection closed after {received} of {total} bytes")


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, progress: bool = True,
             timeout: float = 30, chunk_size: int = 1 << 20, retries: int = 3,
             backoff: float = 1.0) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming, retrying and verifying sha256.

    An interrupted download leaves `dest.part`; the next call continues it with an HTTP Range request
    (and starts over if the server answers 200). `dest` only appears once the whole file is there and,
    when `sha256` is given, matches it; on a mismatch the .part is removed and a ValueError raised.
    Transient errors (dropped connections, timeouts, HTTP 5xx) are retried `retries` times with
    exponential backoff starting at `backoff` seconds.

    Example:
        >>> download("https://example.org/input.txt", "cache/input.txt", sha256="86c4…")  # doctest: +SKIP
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        logger.info("resuming %s from byte %d", url, part.stat().st_size)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
            break
        except _Transient as e:
            if attempt == retries:
                kept = (f"{part} ({part.stat().st_size} bytes) is kept and the next call resumes it"
                        if part.exists() else "check the connection, or download the file yourself and "
                        "pass its local path")
                raise DownloadError(f"{url}: {e}; gave up after {retries + 1} attempts; {kept}") from None
            delay = backoff * 2 ** attempt
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", url, e, delay, attempt + 1, retries)
            time.sleep(delay)
    got = sha256_file(part)
    if sha256 is None:
        logger.warning("%s: no sha256 pinned; the downloaded file has sha256 %s (pin it to verify "
                       "future downloads)", url, got)
    elif got != sha256.lower():
        part.unlink()
        raise ValueError(f"{url}: sha256 mismatch: expected {sha256}, got {got}; the partial file was "
                         "removed, retry (or check that the URL still serves the same file)")
    os.replace(part, dest)
    logger.info("downloaded %s -> %s", url, dest)
    return dest


# ----------------------------------------------------------------------------------------------
# Known datasets
# ----------------------------------------------------------------------------------------------

def fetch_dataset(name: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *,
                  local_path: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """A local copy of a known dataset: `local_path`, else a verified cached file, else a download.

    A local path always wins and touches no network. For `imdb` it may also be a folder (or file) of
    `{"text", "label"}` JSONL.gz lines, such as the copy in shared/data/imdb.

    Example:
        >>> fetch_dataset("imdb", "~/.cache/rlfl", local_path="../shared/data/imdb")   # doctest: +SKIP
        PosixPath('../shared/data/imdb')
    """
    spec = _spec(name)
    if local_path is not None:
        path = Path(local_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder (given as the local copy of "
                                    f"'{name}'); check the path or leave it out to download")
        logger.info("using local %s for dataset '%s'", path, name)
        return path
    cached = Path(cache_dir).expanduser() / name / spec.filename
    if cached.exists():
        if spec.sha256 is None or sha256_file(cached) == spec.sha256:
            logger.info("using cached %s", cached)
            return cached
        logger.warning("%s: sha256 does not match the pinned one; downloading it again", cached)
    return download(spec.url, cached, sha256=spec.sha256, progress=progress)


def dataset_documents(name: str, path: str | os.PathLike | None = None, *,
                      cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                      local_path: str | os.PathLike | None = None, progress: bool = True
                      ) -> Iterator[Document]:
    """The documents of a known dataset: read from `path`, or from what `fetch_dataset` returns.

    tinyshakespeare is one document; tinystories stories are separated by `<|endoftext|>` (a file
    without that marker is one document); imdb reviews are read straight out of the tarball (train,
    test and the unlabelled reviews, with `meta` id/split/label/rating), or from JSONL.gz files with a
    `text` field, or from an extracted aclImdb/ tree. The file is fetched before this returns, so
    download errors surface here rather than at the first `next()`.

    Example:
        >>> docs = dataset_documents("imdb", local_path="../shared/data/imdb")   # doctest: +SKIP
        >>> next(docs).meta["label"]                                             # doctest: +SKIP
        1
    """
    spec = _spec(name)
    if path is None:
        path = fetch_dataset(name, cache_dir, local_path=local_path, progress=progress)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; fetch '{name}' first")
    if spec.format == "imdb-tar" and path.is_dir():
        return _imdb_dir_documents(path)
    if spec.format == "imdb-tar" and path.name.endswith((".tar.gz", ".tgz")):
        return _imdb_tar_documents(path)
    if spec.format == "eot-text":
        return _eot_documents(path)
    return iter_documents(path, text_field="text")


def _eot_documents(path: Path) -> Iterator[Document]:
    for doc in iter_documents(path):
        for i, story in enumerate(doc.text.split("<|endoftext|>")):
            if story.strip():
                yield Document(story.strip(), doc.source, None, {"story": i})


# Review files are "<split>/<polarity>/<review#>_<stars>.txt" inside the archive (and once extracted).
_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")


def _imdb_document(text: str, source: str, m: re.Match) -> Document:
    split, polarity, review, rating = m.groups()
    return Document(text, source, None, {"id": f"{split}/{polarity}/{review}_{rating}", "split": split,
                                         "label": {"pos": 1, "neg": 0}.get(polarity),
                                         "rating": int(rating)})


def _imdb_dir_documents(path: Path) -> Iterator[Document]:
    # Either JSONL(.gz) files with a "text" field (shared/data/imdb) or an extracted aclImdb tree;
    # a plain iter_documents(folder) would also swallow README and the URL lists.
    jsonl = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if jsonl:
        yield from iter_documents(jsonl, text_field="text")
        return
    found = False
    for p in sorted(path.rglob("*.txt")):
        m = _IMDB_MEMBER.search(p.relative_to(path.parent).as_posix())
        if m:
            found = True
            yield _imdb_document(p.read_text(encoding="utf-8"), str(p), m)
    if not found:
        raise ValueError(f"{path}: no IMDB reviews here (expected *.jsonl.gz files or an extracted "
                         "aclImdb/ tree); pass the aclImdb_v1.tar.gz file or such a folder")


def _imdb_tar_documents(path: Path) -> Iterator[Document]:
    # Stream the members in archive order ("r:gz" reads sequentially; nothing is extracted to disk).
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                m = _IMDB_MEMBER.search(member.name)
                if m is None or not member.isfile():
                    continue
                f = tar.extractfile(member)
                assert f is not None
                yield _imdb_document(f.read().decode("utf-8"), str(path), m)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: not a readable .tar.gz ({e}); delete it and fetch it again") from None

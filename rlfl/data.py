"""Pretraining data: read a corpus, clean it, dedup it, split it, write token shards, sample batches.

The path is `raw files -> Document stream -> clean + exact dedup -> train/val split -> train.bin/val.bin
(+ meta.json + the tokenizer)`, then `load_shards` memory-maps the .bin files and `BatchSampler` draws
random windows from them. Shards are flat arrays of token ids (uint16 while the vocabulary fits, else
uint32) with the tokenizer's end-of-text id after every document, like nanoGPT's train.bin.

Example:
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> meta = prepare_corpus(["data/corpus.jsonl"], byte_tokenizer(), "data/shards")  # doctest: +SKIP
    >>> shards = load_shards("data/shards")                                          # doctest: +SKIP
    >>> x, y = BatchSampler(shards.train, block_size=64, batch_size=8, seed=0).batch(0)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import html
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlfl.files import read_json

if TYPE_CHECKING:
    from rlfl.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SHARDS_FORMAT = "rlfl-token-shards"
SHARDS_VERSION = 1
# Longest suffix first: "x.jsonl.gz" must not be taken for a plain ".gz".
SUPPORTED_SUFFIXES = (".jsonl.gz", ".txt.gz", ".jsonl", ".txt", ".md")
_ONE_DOC_PER_FILE = (".txt", ".md", ".txt.gz")


@dataclass(frozen=True)
class Document:
    """One text of a corpus, with where it came from (for error messages and meta.json)."""

    text: str
    source: str = "<memory>"
    line: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def where(self) -> str:
        """'file' or 'file line N', the prefix of any error about this document."""
        return self.source if self.line is None else f"{self.source} line {self.line}"


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def _expand(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Turn the user's files and folders into a sorted list of supported files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        if not isinstance(raw, (str, os.PathLike)):
            raise ValueError(f"expected a file or folder path, got {type(raw).__name__}; pass either paths "
                             "or Documents, not a mix")
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder; check the path")
        if path.is_file():
            if _suffix(path) is None:
                raise ValueError(f"{path}: unsupported file type; use one of "
                                 f"{', '.join(SUPPORTED_SUFFIXES)} (or convert it to .txt / .jsonl)")
            files.append(path)
            continue
        found, skipped = [], []
        # sorted() makes the document order, hence the shuffle and the shards, independent of the
        # file system's listing order.
        for p in sorted(path.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
                continue
            (found if _suffix(p) else skipped).append(p)
        if skipped:
            logger.warning("%s: skipping %d file(s) with unsupported types, e.g. %s", path,
                           len(skipped), skipped[0].name)
        if not found:
            raise ValueError(f"{path}: folder has no {', '.join(SUPPORTED_SUFFIXES)} files; "
                             "point at a folder with text files or pass the files themselves")
        files.extend(found)
    return files


def _decode(data: bytes, where: str) -> str:
    # A NUL byte never occurs in real text but almost always in binary files, some of which happen
    # to be valid UTF-8 (e.g. small .npy files), so check it before trying to decode.
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"{where}: a NUL byte at byte {nul} (line {line}): a binary file, not text; remove it or "
                         "pass only text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a whole file: its byte offset and line; one line of a JSONL file (``where`` names it): the column
        line = data.count(b"\n", 0, exc.start) + 1
        at = f"byte {exc.start} (line {line})" if b"\n" in data.rstrip(b"\r\n") else f"byte {exc.start + 1} of the line"
        raise ValueError(f"{where}: {at} is 0x{data[exc.start]:02x}, not UTF-8; re-save the file as UTF-8 or remove "
                         "that byte") from None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e}); re-download or re-compress it") from None


def _iter_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path} line {lineno}"
                line = _decode(raw, where).strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                                     "fix or remove the line (one JSON object per line)") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}; "
                                     "write one {\"" + text_field + "\": ...} object per line")
                if text_field not in obj:
                    fields = ", ".join(obj) or "none"
                    raise ValueError(f"{where}: no field '{text_field}'; pass --text-field NAME "
                                     f"(fields here: {fields})")
                text = obj[text_field]
                if not isinstance(text, str):
                    raise ValueError(f"{where}: field '{text_field}' is {type(text).__name__}, not a "
                                     "string; pass --text-field NAME of a text field")
                meta = {k: v for k, v in obj.items() if k != text_field}
                yield Document(text, str(path), lineno, meta)
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e}); re-download or re-compress it") from None


def iter_documents(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                   text_field: str = "text") -> Iterator[Document]:
    """Yield the documents of local files and folders (folders recursively, in sorted order).

    .txt / .md / .txt.gz files are one document each; .jsonl / .jsonl.gz files hold one JSON object a
    line whose `text_field` is the document (the other fields land in `Document.meta`). Bad input
    raises a one-line ValueError / FileNotFoundError that names the file (and line) and the fix.

    Example:
        >>> docs = list(iter_documents(["texts/", "corpus.jsonl.gz"]))   # doctest: +SKIP
    """
    for path in _expand(paths):
        if _suffix(path) in _ONE_DOC_PER_FILE:
            yield Document(_decode(_read_bytes(path), str(path)), str(path))
        else:
            yield from _iter_jsonl(path, text_field)


# ----------------------------------------------------------------------------------------------
# Cleaning and dedup
# ----------------------------------------------------------------------------------------------

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
# Only things that look like HTML tags: "<" + optional "/" + a letter. "a < b > c", "<3" and
# "<|endoftext|>" are left alone.
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
# Control characters (category Cc) except newline and tab, invisible BOM / zero-width space, and
# unpaired surrogates (JSON "\\ud800" escapes), which are not text and cannot be written as UTF-8.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\u200b\ud800-\udfff]")
# Runs of horizontal whitespace, and single odd spaces (NBSP, thin space...), become one space; a lone
# tab stays a tab.
_SPACES = re.compile(r"[^\S\n]{2,}|[^\S\n\t ]")
_TRAILING = re.compile(r"[ \t]+\n")
_NEWLINES = re.compile(r"\n{3,}")


def clean_text(s: str) -> str:
    """Normalise one document: NFC, HTML remnants, control characters, whitespace.

    Example:
        >>> clean_text("Great film.<br /><br />Loved it &amp; more  \\r\\n\\n\\n\\nEnd. ")
        'Great film.\\n\\nLoved it & more\\n\\nEnd.'
    """
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _BR.sub("\n", s)
    s = _TAG.sub("", s)
    # Unescape after stripping tags so that an escaped "&lt;b&gt;" stays visible text.
    s = html.unescape(s)
    s = _CONTROL.sub("", s)
    s = _SPACES.sub(" ", s)
    s = _TRAILING.sub("\n", s)
    s = _NEWLINES.sub("\n\n", s)
    return s.strip()


def _dedup_key(text: str) -> bytes:
    return hashlib.blake2b(_utf8(text), digest_size=16).digest()


def _clean_and_dedup(docs: Iterable[Document], *, clean: bool, dedup: bool
                     ) -> tuple[list[Document], dict[str, Any]]:
    """Clean, drop empty documents and exact duplicates (first occurrence wins)."""
    kept: list[Document] = []
    seen: set[bytes] = set()
    sources: dict[str, None] = {}  # ordered set
    stats = {"documents_read": 0, "empty_removed": 0, "duplicates_removed": 0}
    for doc in docs:
        stats["documents_read"] += 1
        sources.setdefault(doc.source)
        text = clean_text(doc.text) if clean else doc.text
        if not text.strip():
            stats["empty_removed"] += 1
            continue
        if dedup:
            key = _dedup_key(text)
            if key in seen:
                stats["duplicates_removed"] += 1
                continue
            seen.add(key)
        kept.append(Document(text, doc.source, doc.line, doc.meta))
    names = list(sources)
    stats["sources"] = names[:50] + ([f"... and {len(names) - 50} more"] if len(names) > 50 else [])
    if not kept:
        where = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") or "<no documents>"
        raise ValueError(f"{where}: corpus is empty ({stats['documents_read']} documents, all blank "
                         "after cleaning); pass files that contain text")
    if stats["duplicates_removed"]:
        logger.info("removed %d exact duplicate documents", stats["duplicates_removed"])
    return kept, stats


# ----------------------------------------------------------------------------------------------
# Split and shards
# ----------------------------------------------------------------------------------------------

def _utf8(text: str) -> bytes:
    # "surrogatepass": raw JSON may carry unpaired surrogates ("\\ud800") when clean=False; tiktoken
    # writes each as U+FFFD, 3 bytes, which is what this counts too.
    return text.encode("utf-8", "surrogatepass")


def _nbytes(text: str) -> int:
    return len(_utf8(text))


def _split(docs: list[Document], val_fraction: float, seed: int
           ) -> tuple[list[Document], list[Document], str]:
    """Shuffle by seed; whole documents go to val until ~val_fraction of the bytes."""
    if val_fraction == 0:
        return list(docs), [], "documents"
    if len(docs) == 1:
        # One big text (tinyshakespeare): cut at the (1 - val_fraction) character point, moved to the
        # nearest line end so that no line is split between train and val.
        doc = docs[0]
        text, point = doc.text, round(len(doc.text) * (1 - val_fraction))
        before, after = text.rfind("\n", 0, point), text.find("\n", point)
        cands = [i + 1 for i in (before, after) if 0 <= i < len(text) - 1]
        cut = min(cands, key=lambda i: abs(i - point)) if cands else point
        while 0 < cut < len(text) - 1 and text[cut] == "\n":  # val starts at a line, not a blank one
            cut += 1
        if not 0 < cut < len(text):
            raise ValueError(f"{doc.where}: a single document of {len(text)} characters is too short "
                             f"to split {val_fraction:.0%} off for validation; add data or pass "
                             "--val-fraction 0")
        return ([Document(text[:cut], doc.source, doc.line, doc.meta)],
                [Document(text[cut:], doc.source, doc.line, doc.meta)], "single-document")
    order = np.random.default_rng(seed).permutation(len(docs))
    shuffled = [docs[i] for i in order]
    target = val_fraction * sum(_nbytes(d.text) for d in docs)
    val_bytes, n_val = 0, 0
    # Never give val the last document: train must not be empty.
    while n_val < len(shuffled) - 1 and val_bytes < target:
        val_bytes += _nbytes(shuffled[n_val].text)
        n_val += 1
    return shuffled[n_val:], shuffled[:n_val], "documents"


_PIECE_BREAK = re.compile(r"\n(?=\S)")


def _pieces(text: str, max_chars: int) -> list[str]:
    """Cut a huge text right after newlines that are followed by a non-space character.

    GPT-2-style split patterns always end a pre-token there, so encoding the pieces gives the same
    ids as encoding the whole text, without ever building one list of 10^8 Python ints.
    """
    out, start = [], 0
    while len(text) - start > max_chars:
        m = _PIECE_BREAK.search(text, start + max_chars // 2)
        if m is None:
            break
        out.append(text[start:m.end()])
        start = m.end()
    out.append(text[start:])
    return out


def _encode_chunks(docs: list[Document], tokenizer: Tokenizer, *, max_chars: int = 4 << 20) -> Iterator[list[int]]:
    """Token ids of the documents, each as BOS (where the tokenizer adds one) + text + EOT, a few MB at a time."""
    pieces: list[str] = []
    bounds: list[tuple[bool, bool]] = []  # per piece: (first, last) piece of its document
    bos = tokenizer.bos_prefix
    size = 0

    def flush() -> list[int]:
        ids: list[int] = []
        for piece_ids, (first, last) in zip(tokenizer.encode_batch(pieces), bounds):
            ids.extend(bos + piece_ids if first else piece_ids)
            if last:
                ids.append(tokenizer.eot_id)
        pieces.clear()
        bounds.clear()
        return ids

    for doc in docs:
        parts = _pieces(doc.text, max_chars)
        for i, part in enumerate(parts):
            pieces.append(part)
            bounds.append((i == 0, i == len(parts) - 1))
            size += len(part)
            if size >= max_chars:
                yield flush()
                size = 0
    if pieces:
        yield flush()


def _write_split(docs: list[Document], tokenizer: Tokenizer, path: Path, dtype: np.dtype) -> int:
    n_tokens = 0
    with open(path, "wb") as f:
        for ids in _encode_chunks(docs, tokenizer):
            arr = np.asarray(ids, dtype=dtype)
            f.write(arr.tobytes())
            n_tokens += len(arr)
        f.flush()
        os.fsync(f.fileno())
    return n_tokens


def _shard_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16 if n_vocab <= 1 << 16 else np.uint32)


def prepare_corpus(documents_or_paths: str | os.PathLike | Iterable[Document | str | os.PathLike],
                   tokenizer: Tokenizer, out_dir: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0,
                   clean: bool = True, dedup: bool = True, text_field: str = "text") -> dict[str, Any]:
    """Tokenize a corpus into `out_dir/{train,val}.bin` + `meta.json` + the tokenizer; return the meta.

    `documents_or_paths` is files / folders (read with `iter_documents`) or `Document`s. The cleaned
    texts are held in memory (for dedup and the split), the tokens never are: they are encoded and
    written a few MB at a time. Everything is written to a temporary folder beside `out_dir` and
    swapped in at the end, so a failure leaves a previous `out_dir` as it was.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> meta = prepare_corpus("input.txt", byte_tokenizer(), "data/shakespeare")  # doctest: +SKIP
        >>> meta["splits"]["train"]["tokens"]                                        # doctest: +SKIP
        1003838
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1); pass e.g. --val-fraction 0.1")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0; pass --seed 0 or another non-negative integer")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or
                             (any(out_dir.iterdir()) and not (out_dir / "meta.json").exists())):
        # The final swap replaces out_dir wholesale; never do that to a folder we did not write.
        raise ValueError(f"{out_dir}: exists and is not a shards folder (no meta.json); pass a new or "
                         "empty folder as the output")

    if isinstance(documents_or_paths, (str, os.PathLike)):
        documents_or_paths = [documents_or_paths]
    # Peek at the first item: Documents are streamed (a generator is never copied into a list of raw
    # texts), anything else is a list of paths.
    items = iter(documents_or_paths)
    first = next(items, None)
    path_items: list[Any] = []
    if isinstance(first, Document) or first is None:
        docs_iter = itertools.chain([first] if first else [], _only_documents(items))
    else:
        path_items = [first, *items]
        docs_iter = iter_documents(path_items, text_field=text_field)
    docs, stats = _clean_and_dedup(docs_iter, clean=clean, dedup=dedup)
    train, val, split_mode = _split(docs, val_fraction, seed)

    dtype = _shard_dtype(tokenizer.n_vocab)
    meta: dict[str, Any] = {
        "format": SHARDS_FORMAT, "version": SHARDS_VERSION, "dtype": dtype.name,
        "n_vocab": tokenizer.n_vocab, "eot_id": tokenizer.eot_id,
        "tokenizer": {"kind": tokenizer.kind, "name": tokenizer.name,
                      "fingerprint": tokenizer.fingerprint},
        "splits": {},
        "sources": [str(p) for p in path_items] if path_items else stats["sources"],
        "files": stats["sources"], "text_field": text_field,
        "clean": clean, "dedup": dedup, "documents_read": stats["documents_read"],
        "duplicates_removed": stats["duplicates_removed"], "empty_removed": stats["empty_removed"],
        "seed": seed, "val_fraction": val_fraction, "split_mode": split_mode,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        for name, split_docs in (("train", train), ("val", val)):
            n_tokens = _write_split(split_docs, tokenizer, tmp / f"{name}.bin", dtype)
            meta["splits"][name] = {"file": f"{name}.bin", "tokens": n_tokens, "documents": len(split_docs),
                                    "bytes": sum(_nbytes(d.text) for d in split_docs)}
        tokenizer.save(tmp)
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    s = meta["splits"]
    logger.info("wrote %s: train %d tokens (%d docs), val %d tokens (%d docs), %.2f bytes/token",
                out_dir, s["train"]["tokens"], s["train"]["documents"], s["val"]["tokens"],
                s["val"]["documents"], s["train"]["bytes"] / max(1, s["train"]["tokens"]))
    return meta


def _only_documents(items: Iterator[Any]) -> Iterator[Document]:
    for item in items:
        if not isinstance(item, Document):
            raise ValueError(f"prepare_corpus: got {type(item).__name__} among Documents; pass either "
                             "paths or Documents, not a mix (wrap texts in rlfl.data.Document)")
        yield item


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete the temporary folders that a killed `prepare_corpus` left beside ``out_dir`` (tens of MB each):
    ``.NAME.tmp-PID-*`` of a process that no longer runs, and ``.NAME.old-*`` once ``out_dir`` itself exists."""
    for path in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = path.name[len(f".{out_dir.name}.tmp-"):].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            logger.info("removing %s, left by an interrupted run (process %s)", path, pid)
            shutil.rmtree(path, ignore_errors=True)
    if out_dir.is_dir():
        for path in out_dir.parent.glob(f".{out_dir.name}.old-*"):
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished tmp folder (two renames; the old one is restored on failure)."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Loading shards
# ----------------------------------------------------------------------------------------------

@dataclass
class TokenShards:
    """The token arrays of a prepared corpus (read-only memmaps) and its meta.json."""

    directory: Path
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]

    @property
    def n_vocab(self) -> int:
        return int(self.meta["n_vocab"])

    def bytes_per_token(self, split: str = "val") -> float:
        """UTF-8 bytes per token of a split: bits-per-byte = loss / ln(2) / bytes_per_token."""
        s = self.meta["splits"][split]
        return s["bytes"] / max(1, s["tokens"])

    def check_tokenizer(self, tokenizer: Tokenizer, *, tokenizer_source: str | None = None) -> None:
        """Raise a one-line ValueError unless `tokenizer` tokenizes exactly like the shards' one."""
        have = self.meta["tokenizer"]
        if have["fingerprint"] == tokenizer.fingerprint:
            return
        fix = tokenizer_source or "<the checkpoint or tokenizer you train with>"
        raise ValueError(f"{self.directory / 'meta.json'}: tokenized with '{have['name']}' "
                         f"(fingerprint {have['fingerprint'][:8]}…) but the checkpoint uses "
                         f"'{tokenizer.name}' ({tokenizer.fingerprint[:8]}…); re-run `rlfl data prepare` "
                         f"with --tokenizer {fix}")

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were written with (saved beside them)."""
        from rlfl.tokenizer import Tokenizer
        return Tokenizer.load(self.directory)


def _memmap(path: Path, dtype: np.dtype, expected: int, meta_path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (listed in {meta_path}); re-run `rlfl data prepare`")
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes but {meta_path} says {expected} {dtype.name} tokens; "
                         "the folder is damaged, re-run `rlfl data prepare`")
    if expected == 0:  # mmap cannot map an empty file
        arr = np.empty(0, dtype=dtype)
        arr.flags.writeable = False
        return arr
    return np.memmap(path, dtype=dtype, mode="r")


def load_shards(directory: str | os.PathLike) -> TokenShards:
    """Open a folder written by `prepare_corpus` (train/val as read-only memmaps).

    Example:
        >>> shards = load_shards("data/shards")   # doctest: +SKIP
        >>> shards.train[:10], shards.meta["tokenizer"]["name"]   # doctest: +SKIP
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not found; run `rlfl data prepare --out {directory}` first")
    meta = read_json(meta_path, fix="re-run `rlfl data prepare`")
    if meta.get("format") != SHARDS_FORMAT or meta.get("version") != SHARDS_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                         f"expected {SHARDS_FORMAT!r} version {SHARDS_VERSION}; re-run `rlfl data prepare`")
    dtype = np.dtype(meta["dtype"])
    arrays = {name: _memmap(directory / s["file"], dtype, s["tokens"], meta_path)
              for name, s in meta["splits"].items()}
    return TokenShards(directory, arrays["train"], arrays["val"], meta)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

def check_sampler_args(batch_size: int, block_size: int, seed: int, rank: int, world_size: int) -> None:
    """Validate what every batch sampler takes (pretraining windows, SFT rows), with the flag to fix."""
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size={block_size} and batch_size={batch_size} must be >= 1; "
                         "pass positive --block-size / --batch-size")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0; pass a non-negative --seed")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size}); check the launcher's "
                         "RANK / WORLD_SIZE")


class BatchSampler:
    """Random (x, y) windows from a token array, reproducible from (seed, step, rank) alone.

    No state is carried from one step to the next, so a run resumed at step k draws exactly the
    batches an uninterrupted run would have drawn, and each DDP rank draws its own windows.

    Example:
        >>> data = np.arange(1000, dtype=np.uint16)
        >>> x, y = BatchSampler(data, block_size=8, batch_size=4, seed=0).batch(step=0)
        >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
        (torch.Size([4, 8]), True)
    """

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, *, split: str = "train") -> None:
        check_sampler_args(batch_size, block_size, seed, rank, world_size)
        if len(data) <= block_size:
            raise ValueError(f"{split} split has {len(data)} tokens, fewer than block_size+1="
                             f"{block_size + 1}; lower --block-size or add data")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._offsets = np.arange(block_size + 1)

    def starts(self, step: int) -> np.ndarray:
        """Window start positions of a step (what `batch` gathers)."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        rng = np.random.default_rng([self.seed, self.rank, step])
        return rng.integers(0, len(self.data) - self.block_size, size=self.batch_size)

    def batch(self, step: int, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (batch_size, block_size); y is x shifted left by one token."""
        # One fancy-indexing gather for the whole batch: (B, T+1) positions -> tokens.
        idx = self.starts(step)[:, None] + self._offsets
        windows = torch.from_numpy(np.asarray(self.data[idx], dtype=np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if device is not None and torch.device(device).type == "cuda":
            # Pinned host memory lets the copy overlap with the previous step's compute.
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        elif device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

"""Tokenizers: a thin layer over `tiktoken.Encoding`.

Every tokenizer in rlfl is a `tiktoken.Encoding` underneath, so encoding runs at tiktoken's (Rust) speed
whatever the vocabulary came from. Three kinds exist:

- ``bytes``: the 256 single bytes plus our special tokens (ids 256..261). No training, no files; good for
  tests and for tiny models where a 262-row embedding is a feature.
- ``gpt2``: GPT-2's 50,257-token BPE read from a *local* file (a ``r50k_base.tiktoken`` ranks file, or
  the original ``encoder.json`` + ``vocab.bpe`` pair). ``<|endoftext|>`` keeps id 50256; our other
  special tokens follow at 50257.. .
- ``bpe``: a byte-level BPE trained on your corpus by `train_bpe` (the trainer lives in `rlfl.bpe`).

Special tokens (`SPECIAL_TOKENS`) are only produced by ``encode(text, allow_special=True)``. By default
special-token text inside user text ("<|endoftext|>" typed by a user) is encoded as ordinary text, never
raised on and never turned into a control token: that is how prompt injection of an end-of-text would
otherwise slip into training data.

A tokenizer is saved as ``tokenizer.json`` (description + fingerprint) and, for kinds with learned ranks,
``tokenizer.tiktoken`` (tiktoken's own format: ``base64(token) rank`` per line), so a checkpoint directory
carries the exact tokenization it was trained with.

Example:
    >>> tok = byte_tokenizer()
    >>> tok.encode("hi")
    [104, 105]
    >>> tok.decode(tok.encode("<|endoftext|>", allow_special=True) + [104])
    '<|endoftext|>h'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import tiktoken

from rlfl.bpe import MAX_VOCAB_SIZE, learn_bpe_ranks
from rlfl.files import atomic_write_bytes

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# GPT-2's pre-tokenization pattern, in the possessive form tiktoken uses for r50k_base (equivalent to the
# original r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+" but faster).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

TOKENIZER_JSON = "tokenizer.json"
RANKS_FILE = "tokenizer.tiktoken"
_FORMAT_VERSION = 1
# below this many characters in all, encode_batch loops instead of starting tiktoken's thread pool (measured
# with the GPT-2 BPE: 64 x 200 chars loop 2.7 ms vs threads 5.7 ms; 8 x 2,000 equal; 64 x 2,000 threads 1.5x faster)
_THREADED_CHARS = 16_000
_GPT2_NAMES = ("gpt2", "r50k_base")
_KINDS = ("bytes", "bpe", "gpt2", "tiktoken")
_SPEC_FORMS = (
    "'bytes', 'gpt2:/path/to/r50k_base.tiktoken', 'gpt2:/dir/with/encoder.json+vocab.bpe', "
    "a directory holding tokenizer.json, or a tiktoken encoding name such as 'gpt2'"
)


class Tokenizer:
    """A thin layer over `tiktoken.Encoding` that knows its kind, special tokens and how to save itself.

    Build one with `byte_tokenizer`, `gpt2_tokenizer`, `train_bpe`, `tokenizer_from_name` or
    `load_tokenizer` rather than calling the constructor directly.
    """

    def __init__(
        self, *, kind: str, name: str, pat_str: str, ranks: dict[bytes, int], special_tokens: dict[str, int]
    ) -> None:
        self.kind = kind
        self.name = name
        # tiktoken keeps the ranks privately; we keep our own reference for save() and fingerprint.
        self._ranks = ranks
        self.enc = tiktoken.Encoding(
            name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=dict(special_tokens)
        )
        self._pat_str = pat_str
        self._special = dict(special_tokens)
        self._fingerprint: str | None = None

    # ---------------------------------------------------------------- properties
    @property
    def n_vocab(self) -> int:
        """Number of ids, special tokens included (the model's embedding rows)."""
        return self.enc.n_vocab

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>``."""
        return self._special_id("<|endoftext|>")

    @property
    def pad_id(self) -> int:
        """Id of ``<|pad|>``."""
        return self._special_id("<|pad|>")

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token text -> id (a copy)."""
        return dict(self._special)

    @property
    def pat_str(self) -> str:
        """The pre-tokenization regex."""
        return self._pat_str

    @property
    def fingerprint(self) -> str:
        """sha256 hex of (pattern, ranks, special tokens): equal iff two tokenizers tokenize identically."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps({"pat_str": self._pat_str, "special": sorted(self._special.items())}).encode())
            for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1]):
                # Length-prefix each token so b"ab"+b"c" and b"a"+b"bc" cannot hash alike.
                h.update(b"%d:%d:" % (rank, len(token)) + token)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _special_id(self, text: str) -> int:
        if text not in self._special:
            raise ValueError(
                f"tokenizer {self.name!r} has no special token {text!r}; build it with special_tokens that "
                f"include it (rlfl.tokenizer.SPECIAL_TOKENS does)"
            )
        return self._special[text]

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids. Special-token text is ordinary text unless ``allow_special=True``."""
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], *, num_threads: int = 2) -> list[list[int]]:
        """Many texts -> ids (in parallel threads when there is enough text); special-token text is ordinary.

        tiktoken's batch call starts a thread pool per call (~0.3-1 ms), which only pays off above tens of
        thousands of characters: below ``_THREADED_CHARS`` in all, a plain loop is 2-15x faster (the
        per-step reward calls of a PPO rollout score 1-3 short texts).
        """
        texts = list(texts)
        if num_threads <= 1 or sum(map(len, texts)) < _THREADED_CHARS:
            return [self.enc.encode_ordinary(t) for t in texts]
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode_bytes(self, ids: Sequence[int] | Any) -> bytes:
        """Ids -> the raw bytes they stand for (accepts lists, numpy arrays and torch tensors)."""
        ids = _as_int_list(ids)
        try:
            return self.enc.decode_bytes(ids)
        except (KeyError, ValueError, OverflowError, TypeError) as e:
            bad = [i for i in ids if not 0 <= i < self.n_vocab]
            if bad:
                raise ValueError(
                    f"token id {bad[0]} is outside this tokenizer's vocabulary [0, {self.n_vocab}); "
                    f"was the model trained with a different tokenizer?"
                ) from e
            raise

    def decode(self, ids: Sequence[int] | Any) -> str:
        """Ids -> text; invalid UTF-8 (e.g. half of a multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, name={self.name!r}, n_vocab={self.n_vocab})"

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json (and tokenizer.tiktoken for learned ranks) into ``directory``, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ranks_file = None
        if self.kind != "bytes":
            ranks_file = RANKS_FILE
            lines = [
                base64.b64encode(tok) + b" %d" % rank
                for tok, rank in sorted(self._ranks.items(), key=lambda kv: kv[1])
            ]
            atomic_write_bytes(directory / RANKS_FILE, b"\n".join(lines) + b"\n")
        # tokenizer.json goes last: its presence means the ranks file next to it is complete.
        meta = {
            "format_version": _FORMAT_VERSION,
            "kind": self.kind,
            "name": self.name,
            "pat_str": self._pat_str,
            "special_tokens": self._special,
            "n_vocab": self.n_vocab,
            "fingerprint": self.fingerprint,
            "ranks_file": ranks_file,
        }
        atomic_write_bytes(directory / TOKENIZER_JSON, (json.dumps(meta, indent=2) + "\n").encode())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Rebuild the tokenizer saved in ``directory`` (same ids, same fingerprint)."""
        path = Path(directory) / TOKENIZER_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; save a tokenizer there with Tokenizer.save(dir)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e}); re-save the tokenizer") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: expected a JSON object; re-save the tokenizer")
        for field in ("kind", "name", "pat_str", "special_tokens", "fingerprint"):
            if field not in meta:
                raise ValueError(f"{path}: missing field {field!r}; re-save the tokenizer")
        if meta["kind"] not in _KINDS:
            raise ValueError(f"{path}: unknown kind {meta['kind']!r} (expected one of {', '.join(_KINDS)})")
        if meta["kind"] == "bytes":
            ranks = _byte_ranks()
        else:
            ranks_name = meta.get("ranks_file") or RANKS_FILE
            ranks = read_tiktoken_ranks(Path(directory) / ranks_name)
        try:
            tok = cls(
                kind=meta["kind"],
                name=meta["name"],
                pat_str=meta["pat_str"],
                ranks=ranks,
                special_tokens={str(k): int(v) for k, v in meta["special_tokens"].items()},
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: inconsistent tokenizer description ({e}); re-save the tokenizer") from None
        if tok.fingerprint != meta["fingerprint"]:
            raise ValueError(
                f"{path}: fingerprint does not match the rebuilt tokenizer (ranks file changed or corrupt?); "
                f"re-save the tokenizer"
            )
        return tok


# -------------------------------------------------------------------- constructors
def byte_tokenizer() -> Tokenizer:
    """The 256 single bytes plus `SPECIAL_TOKENS` at ids 256..261 (n_vocab 262); needs no files.

    Example:
        >>> byte_tokenizer().n_vocab
        262
    """
    return Tokenizer(
        kind="bytes", name="bytes", pat_str=GPT2_PAT_STR, ranks=_byte_ranks(), special_tokens=_specials(256)
    )


def gpt2_tokenizer(
    ranks_file: str | os.PathLike | None = None,
    *,
    encoder_json: str | os.PathLike | None = None,
    vocab_bpe: str | os.PathLike | None = None,
) -> Tokenizer:
    """GPT-2's BPE from local files: a ``r50k_base.tiktoken`` ranks file, or ``encoder.json`` + ``vocab.bpe``.

    Nothing is downloaded and nothing is written to a cache. ``<|endoftext|>`` is 50256; the rest of
    `SPECIAL_TOKENS` follow at 50257.. .

    Example:
        >>> tok = gpt2_tokenizer("/path/to/r50k_base.tiktoken")  # doctest: +SKIP
        >>> tok.encode("Hello world")  # doctest: +SKIP
        [15496, 995]
    """
    if ranks_file is not None and (encoder_json is not None or vocab_bpe is not None):
        raise ValueError("gpt2_tokenizer: pass either ranks_file or encoder_json+vocab_bpe, not both")
    if ranks_file is not None:
        ranks = read_tiktoken_ranks(ranks_file)
    elif encoder_json is not None and vocab_bpe is not None:
        ranks = read_gpt2_encoder(encoder_json, vocab_bpe)
    else:
        raise ValueError(
            "gpt2_tokenizer: pass ranks_file=/path/to/r50k_base.tiktoken, or both encoder_json= and vocab_bpe="
        )
    _check_gpt2_ranks(ranks, str(ranks_file if ranks_file is not None else vocab_bpe))
    return Tokenizer(kind="gpt2", name="gpt2", pat_str=GPT2_PAT_STR, ranks=ranks, special_tokens=_specials(len(ranks)))


# GPT-2's BPE: 50,256 mergeable ranks, and the SHA-256 of r50k_base.tiktoken (the ranks written one
# "base64(token) rank" line each, by rank), which encoder.json + vocab.bpe give too.
GPT2_RANKS, GPT2_RANKS_SHA256 = 50_256, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def _check_gpt2_ranks(ranks: dict[bytes, int], where: str) -> None:
    """Refuse ranks that are not GPT-2's: a file cut short, or another BPE's, would otherwise load as "gpt2"."""
    fix = "use GPT-2's r50k_base.tiktoken (or its encoder.json + vocab.bpe), whole"
    if len(ranks) != GPT2_RANKS:
        raise ValueError(f"{where}: {len(ranks)} ranks, but GPT-2's BPE has {GPT2_RANKS}: the file is cut short or "
                         f"not GPT-2's; {fix}")
    lines = b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
    if hashlib.sha256(lines).hexdigest() != GPT2_RANKS_SHA256:
        raise ValueError(f"{where}: {GPT2_RANKS} ranks, but not GPT-2's (their SHA-256 differs); {fix}")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    pat_str: str = GPT2_PAT_STR,
    num_workers: int = 2,
    progress: bool = False,
    chunk_size: int = 1 << 20,
) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` and wrap it as a tiktoken-backed `Tokenizer`.

    ``vocab_size`` counts the special tokens: ``256 + len(special_tokens)`` gives the pure byte vocabulary,
    anything smaller is an error, and the cap is 32,768. Pre-tokenization runs in ``num_workers`` processes
    over chunks of about ``chunk_size`` characters (the result does not depend on ``num_workers``). If the
    corpus runs out of pairs to merge, the vocabulary comes out smaller than asked (a warning is logged).
    The workers are spawned processes: a script calling this with ``num_workers > 1`` needs an
    ``if __name__ == "__main__":`` guard.

    Example:
        >>> tok = train_bpe(["low lower lowest"] * 50, 270, num_workers=1)
        >>> tok.decode(tok.encode("lowest")) == "lowest" and len(tok.encode("lowest")) < 6
        True
    """
    special_tokens = tuple(special_tokens)
    if len(set(special_tokens)) != len(special_tokens) or not all(isinstance(s, str) and s for s in special_tokens):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens!r}")
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: the minimum is {minimum} "
            f"(256 byte tokens + {len(special_tokens)} special tokens); pass --vocab-size {minimum} or more"
        )
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is above the cap of {MAX_VOCAB_SIZE} for our trainer; "
            f"use a smaller one, or --tokenizer gpt2:/path/to/r50k_base.tiktoken"
        )
    ranks = learn_bpe_ranks(
        texts,
        vocab_size - len(special_tokens),
        pat_str=pat_str,
        num_workers=num_workers,
        progress=progress,
        chunk_size=chunk_size,
    )
    specials = {s: len(ranks) + i for i, s in enumerate(special_tokens)}
    return Tokenizer(kind="bpe", name=f"bpe{len(ranks) + len(specials)}", pat_str=pat_str, ranks=ranks,
                     special_tokens=specials)


def tokenizer_from_name(
    name: str, *, get_encoding: Callable[[str], tiktoken.Encoding] | None = None
) -> Tokenizer:
    """A tiktoken encoding by name (``tiktoken.get_encoding``), plus our special tokens after its own.

    This needs tiktoken's download (or its cache); offline it raises a ValueError that says how to pass a
    local ranks file instead. ``get_encoding`` replaces tiktoken's loader (for tests and custom registries).
    """
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise ValueError(f"unknown tokenizer {name!r}; accepted: {_SPEC_FORMS} (tiktoken names: {', '.join(known)})")
    loader = get_encoding if get_encoding is not None else tiktoken.get_encoding
    try:
        enc = loader(name)
    except Exception as e:  # requests' errors, OSError, hash mismatches: all mean "could not fetch"
        logger.debug("tiktoken.get_encoding(%r) failed: %r", name, e)
        hint = (
            "pass a local ranks file: --tokenizer gpt2:/path/to/r50k_base.tiktoken"
            if name in _GPT2_NAMES
            else "run once online so tiktoken caches it (TIKTOKEN_CACHE_DIR), or pass --tokenizer "
            "gpt2:/path/to/r50k_base.tiktoken or a directory holding tokenizer.json"
        )
        why = type(e).__name__
        raise ValueError(f"could not download tiktoken encoding {name!r} (offline? {why}); {hint}") from None
    # tiktoken keeps ranks and specials in private attributes; they have been stable since tiktoken 0.1 and
    # are the only way to rebuild the Encoding with our special tokens added.
    ranks: dict[bytes, int] = enc._mergeable_ranks
    own: dict[str, int] = dict(enc._special_tokens)
    next_id = max([*ranks.values(), *own.values()]) + 1
    for s in SPECIAL_TOKENS:
        if s not in own:
            own[s] = next_id
            next_id += 1
    kind = "gpt2" if name in _GPT2_NAMES else "tiktoken"
    return Tokenizer(kind=kind, name=name, pat_str=enc._pat_str, ranks=ranks, special_tokens=own)


def load_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer from a command-line spec.

    Accepted: ``"bytes"``; ``"gpt2:PATH"`` (PATH = a ranks file, or a directory holding
    ``r50k_base.tiktoken`` or ``encoder.json`` + ``vocab.bpe``); a directory holding ``tokenizer.json``
    (e.g. a checkpoint); a tiktoken encoding name (needs network or tiktoken's cache).
    """
    spec = str(spec)
    if spec == "bytes":
        return byte_tokenizer()
    if spec.startswith("gpt2:"):
        path = Path(spec[len("gpt2:"):]).expanduser()
        if path.is_file():
            return gpt2_tokenizer(path)
        if path.is_dir():
            if (path / "r50k_base.tiktoken").is_file():
                return gpt2_tokenizer(path / "r50k_base.tiktoken")
            if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
                return gpt2_tokenizer(encoder_json=path / "encoder.json", vocab_bpe=path / "vocab.bpe")
            raise FileNotFoundError(f"{path}: holds neither r50k_base.tiktoken nor encoder.json+vocab.bpe")
        raise FileNotFoundError(f"{path}: no such file or directory (from --tokenizer {spec})")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return Tokenizer.load(path)
        raise FileNotFoundError(f"{path / TOKENIZER_JSON}: no such file; accepted tokenizer specs: {_SPEC_FORMS}")
    if spec in tiktoken.list_encoding_names():
        return tokenizer_from_name(spec)
    raise ValueError(f"unknown tokenizer {spec!r}; accepted: {_SPEC_FORMS}")


# -------------------------------------------------------------------- file formats
def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken ranks file (``base64(token) rank`` per line) without tiktoken's download cache."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected a tiktoken ranks file)") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            b64, rank_text = line.split()
            ranks[base64.b64decode(b64, validate=True)] = int(rank_text)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{path} line {lineno}: expected 'base64token rank', got {line[:60]!r}; is this a .tiktoken file?"
            ) from None
    _check_ranks(ranks, path)
    return ranks


def read_gpt2_encoder(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> dict[bytes, int]:
    """Convert GPT-2's original ``encoder.json`` + ``vocab.bpe`` into tiktoken ranks (bytes -> rank).

    GPT-2 stored tokens as printable unicode strings, one character per byte (`_gpt2_byte_decoder`). The
    merges in vocab.bpe must agree with the ids in encoder.json (merge i produces id 256 + i), because
    tiktoken treats a token's rank as its merge priority; we check that rather than trust it.
    """
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    decoder = _gpt2_byte_decoder()

    def to_bytes(s: str, where: str) -> bytes:
        try:
            return bytes(decoder[c] for c in s)
        except KeyError as e:
            raise ValueError(f"{where}: character {e.args[0]!r} is not in GPT-2's byte alphabet") from None

    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{encoder_json}: no such file (expected GPT-2's encoder.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{encoder_json}: not valid JSON ({e})") from None
    if not isinstance(encoder, dict):
        raise ValueError(f"{encoder_json}: expected a JSON object of token -> id")
    ranks = {to_bytes(tok, str(encoder_json)): int(i) for tok, i in encoder.items() if tok != "<|endoftext|>"}
    try:
        merges = vocab_bpe.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"{vocab_bpe}: no such file (expected GPT-2's vocab.bpe)") from None
    n = 0
    for lineno, line in enumerate(merges, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe} line {lineno}: expected two tokens separated by a space, got {line!r}")
        merged = to_bytes(parts[0], f"{vocab_bpe} line {lineno}") + to_bytes(parts[1], f"{vocab_bpe} line {lineno}")
        if ranks.get(merged) != 256 + n:
            raise ValueError(
                f"{vocab_bpe} line {lineno}: merge gives id {ranks.get(merged)} in {encoder_json.name}, "
                f"expected {256 + n}; the two files are not from the same tokenizer"
            )
        n += 1
    if n + 256 != len(ranks):
        raise ValueError(
            f"{vocab_bpe}: {n} merges but {encoder_json.name} has {len(ranks)} tokens (expected {n + 256})"
        )
    _check_ranks(ranks, encoder_json)
    return ranks


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet: char -> byte.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, 0x7f-0xa0, 0xad) are
    shifted to U+0100.. in byte order, so that every byte has a visible, non-space character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _check_ranks(ranks: dict[bytes, int], path: Path) -> None:
    """Catch rank tables tiktoken would choke on (or silently mis-encode with)."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(
            f"{path}: byte 0x{missing[0]:02x} has no token ({len(missing)} bytes missing); not a byte-level BPE"
        )
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: two tokens share a rank; the ranks file is corrupt")


def _byte_ranks() -> dict[bytes, int]:
    return {bytes([i]): i for i in range(256)}


def _specials(first_id: int) -> dict[str, int]:
    return {s: first_id + i for i, s in enumerate(SPECIAL_TOKENS)}


def _as_int_list(ids: Any) -> list[int]:
    """Lists pass through; numpy arrays / torch tensors become lists of Python ints (what tiktoken takes)."""
    if isinstance(ids, list):
        return ids
    if hasattr(ids, "tolist"):
        out = ids.tolist()
        return out if isinstance(out, list) else [out]
    return [int(i) for i in ids]

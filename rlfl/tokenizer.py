"""Tokenizers: a thin layer over `tiktoken.Encoding`.

Every tokenizer in rlfl is a `tiktoken.Encoding` underneath, so encoding runs at tiktoken's (Rust) speed
whatever the vocabulary came from. These kinds exist:

- ``bytes``: the 256 single bytes plus our special tokens (ids 256..261). No training, no files; good for
  tests and for tiny models where a 262-row embedding is a feature.
- ``gpt2``: GPT-2's 50,257-token BPE read from a *local* file (a ``r50k_base.tiktoken`` ranks file, or
  the original ``encoder.json`` + ``vocab.bpe`` pair). ``<|endoftext|>`` keeps id 50256; our other
  special tokens follow at 50257.. .
- ``bpe``: a byte-level BPE trained on your corpus by `train_bpe` (the trainer lives in `rlfl.bpe`).
- ``hf``: a Hugging Face byte-level BPE (``tokenizer.json`` + ``tokenizer_config.json``) read by
  `rlfl.hf_tokenizer.load_hf_tokenizer`. Its `Conventions` carry what differs from ours: its
  end-of-text/pad/begin-of-text tokens, Unicode normalization, added words and Jinja chat template.

A command-line spec (``--tokenizer bytes``, ``gpt2:PATH``, ``hf:DIR``, a folder) becomes a tokenizer through
`rlfl.tokenizer_spec.load_tokenizer`; rank files are read by `rlfl.bpe_files`.

Special tokens (`SPECIAL_TOKENS`) are only produced by ``encode(text, allow_special=True)``. By default
special-token text inside user text ("<|endoftext|>" typed by a user) is encoded as ordinary text, never
raised on and never turned into a control token: that is how prompt injection of an end-of-text would
otherwise slip into training data.

A tokenizer is saved as ``tokenizer.json`` (description + fingerprint) and, for kinds with learned ranks,
``tokenizer.tiktoken`` (tiktoken's own format: ``base64(token) rank`` per line), so a checkpoint directory
carries the exact tokenization it was trained with.

Plain text that starts a sequence (a prompt to continue, a pretraining document) goes through
`Tokenizer.encode_prompt` / `Tokenizer.encode_prompts`: they put the begin-of-text token in front when the
tokenizer's conventions say so (Llama-3), and are plain `encode` for rlfl's own tokenizers.

Example:
    >>> tok = byte_tokenizer()
    >>> tok.encode("hi")
    [104, 105]
    >>> tok.decode(tok.encode("<|endoftext|>", allow_special=True) + [104])
    '<|endoftext|>h'
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import tiktoken

from rlfl.bpe import MAX_VOCAB_SIZE, learn_bpe_ranks
from rlfl.bpe_files import read_gpt2_encoder, read_tiktoken_ranks
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
_KINDS = ("bytes", "bpe", "gpt2", "tiktoken", "hf")
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")


@dataclass(frozen=True)
class Conventions:
    """How a tokenizer marks up text beyond its ranks; the defaults are rlfl's own (every kind but ``hf``).

    Example:
        >>> Conventions(eos_token="<|im_end|>", normalizer="NFC").pad_token
        '<|pad|>'
    """

    eos_token: str = field(default="<|endoftext|>", metadata={
        "help": "special token that ends a document (`Tokenizer.eot_id`)"})
    pad_token: str = field(default="<|pad|>", metadata={"help": "special token that pads batches (`Tokenizer.pad_id`)"})
    bos_token: str | None = field(default=None, metadata={
        "help": "special token that begins a sequence, if the tokenizer has one (`Tokenizer.bos_id`)"})
    add_bos: bool = field(default=False, metadata={
        "help": "whether the source tokenizer puts bos_token in front of every encoded text (HF add_bos_token)"})
    normalizer: str | None = field(default=None, metadata={
        "help": f"Unicode normalization applied before encoding: None or one of {', '.join(NORMALIZERS)}"})
    added_tokens: tuple[str, ...] = field(default=(), metadata={
        "help": "non-special added words, matched in any text (special tokens only with allow_special=True)"})
    chat_template: str | None = field(default=None, metadata={
        "help": "Jinja chat template (a Hugging Face tokenizer's); None renders chats in rlfl's own format"})

    def __post_init__(self) -> None:
        if self.normalizer is not None and self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer {self.normalizer!r} is not supported; use None or one of {', '.join(NORMALIZERS)}")
        object.__setattr__(self, "added_tokens", tuple(self.added_tokens))
        if self.add_bos and self.bos_token is None:
            raise ValueError("add_bos is true but bos_token is None; name the begin-of-text token or set add_bos false")
        for name in ("eos_token", "pad_token"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty special-token string, got {getattr(self, name)!r}")

    @property
    def is_default(self) -> bool:
        """Whether these are rlfl's own conventions (then they are left out of saved files and fingerprints)."""
        return self == Conventions()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`Conventions.from_json` reads it back)."""
        out = asdict(self)
        out["added_tokens"] = list(self.added_tokens)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Conventions":
        """Read `to_json`'s dict; a one-line ValueError names ``where`` and the bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: 'conventions' must be an object; re-save the tokenizer")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown conventions key {unknown[0]!r} (known: {', '.join(sorted(known))}); "
                             f"re-save the tokenizer")
        try:
            return cls(**{**data, "added_tokens": tuple(data.get("added_tokens", ()))})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad 'conventions' ({e}); re-save the tokenizer") from None


class Tokenizer:
    """A thin layer over `tiktoken.Encoding` that knows its kind, special tokens and how to save itself.

    Build one with `byte_tokenizer`, `gpt2_tokenizer`, `train_bpe`, `rlfl.hf_tokenizer.load_hf_tokenizer` or
    `rlfl.tokenizer_spec.load_tokenizer` rather than calling the constructor directly.
    """

    def __init__(
        self,
        *,
        kind: str,
        name: str,
        pat_str: str,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        conventions: Conventions | None = None,
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
        self._conv = conventions if conventions is not None else Conventions()
        for name in ("eos_token", "pad_token", "bos_token"):
            token = getattr(self._conv, name)
            if token is not None and token not in self._special and not self._conv.is_default:
                raise ValueError(f"{name} {token!r} is not one of the tokenizer's special tokens")
        missing = [t for t in self._conv.added_tokens if t not in self._special]
        if missing:
            raise ValueError(f"added token {missing[0]!r} has no id among the special tokens")
        # rlfl's own tokenizers take tiktoken's plain calls (the fast path, unchanged); others normalize
        # and always match their added words.
        self._plain = self._conv.normalizer is None and not self._conv.added_tokens
        self._added = frozenset(self._conv.added_tokens)
        self._fingerprint: str | None = None

    # ---------------------------------------------------------------- properties
    @property
    def n_vocab(self) -> int:
        """Number of ids, special tokens included (the model's embedding rows)."""
        return self.enc.n_vocab

    @property
    def eot_id(self) -> int:
        """Id of the end-of-text token (``<|endoftext|>`` for rlfl's own tokenizers, eos_token for ``hf``)."""
        return self._special_id(self._conv.eos_token)

    @property
    def pad_id(self) -> int:
        """Id of the padding token (``<|pad|>`` for rlfl's own tokenizers; pad_token, else eos, for ``hf``)."""
        return self._special_id(self._conv.pad_token)

    @property
    def bos_id(self) -> int | None:
        """Id of the begin-of-sequence token, or None when the tokenizer has none (rlfl's own never do)."""
        return None if self._conv.bos_token is None else self._special_id(self._conv.bos_token)

    @property
    def bos_prefix(self) -> list[int]:
        """The ids put in front of plain text that starts a sequence: ``[bos_id]`` when the conventions' ``add_bos``
        says so (Llama-3 style tokenizers), else ``[]`` (rlfl's own tokenizers, GPT-2, Qwen2)."""
        return [self._special_id(self._conv.bos_token)] if self._conv.add_bos else []

    @property
    def conventions(self) -> Conventions:
        """End-of-text/pad/begin tokens, normalization, added words and chat template (see `Conventions`)."""
        return self._conv

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token text -> id (a copy)."""
        return dict(self._special)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank (= id) of every mergeable token (a copy; special tokens not included)."""
        return dict(self._ranks)

    @property
    def pat_str(self) -> str:
        """The pre-tokenization regex."""
        return self._pat_str

    @property
    def fingerprint(self) -> str:
        """sha256 hex of (pattern, ranks, special tokens, non-default conventions): equal iff two tokenizers
        tokenize (texts and chats) identically."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            head: dict[str, Any] = {"pat_str": self._pat_str, "special": sorted(self._special.items())}
            if not self._conv.is_default:  # rlfl's own tokenizers keep the fingerprints they always had
                head["conventions"] = self._conv.to_json()
            h.update(json.dumps(head).encode())
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
        if self._plain:
            if allow_special:
                return self.enc.encode(text, allowed_special="all")
            return self.enc.encode_ordinary(text)
        allowed = self.enc.special_tokens_set if allow_special else self._added
        return self.enc.encode(self._normalize(text, allowed), allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: list[str], *, num_threads: int = 2) -> list[list[int]]:
        """Many texts -> ids (in parallel threads when there is enough text); special-token text is ordinary.

        tiktoken's batch call starts a thread pool per call (~0.3-1 ms), which only pays off above tens of
        thousands of characters: below ``_THREADED_CHARS`` in all, a plain loop is 2-15x faster (the
        per-step reward calls of a PPO rollout score 1-3 short texts).
        """
        texts = list(texts)
        threaded = num_threads > 1 and sum(map(len, texts)) >= _THREADED_CHARS
        if self._plain:
            if not threaded:
                return [self.enc.encode_ordinary(t) for t in texts]
            return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)
        texts = [self._normalize(t, self._added) for t in texts]
        if not threaded:
            return [self.enc.encode(t, allowed_special=self._added, disallowed_special=()) for t in texts]
        return self.enc.encode_batch(texts, num_threads=num_threads, allowed_special=self._added, disallowed_special=())

    def encode_prompts(self, texts: Sequence[str], *, num_threads: int = 2) -> list[list[int]]:
        """Plain texts that start a sequence (prompts to continue, sampled text), as the model expects them.

        `bos_prefix` goes in front, and an empty text without it becomes ``[eot_id]`` (GPT-2's document
        separator: the model starts a fresh document). For rlfl's own tokenizers this is `encode_batch` with that
        one rule. Special-token text stays ordinary text. Chat prompts come from `rlfl.chat_template` instead.

        Example:
            >>> byte_tokenizer().encode_prompts(["hi", ""])
            [[104, 105], [256]]
        """
        prefix = self.bos_prefix
        return [(prefix + ids) or [self.eot_id] for ids in self.encode_batch(list(texts), num_threads=num_threads)]

    def encode_prompt(self, text: str) -> list[int]:
        """One plain text that starts a sequence, as `encode_prompts` encodes it.

        Example:
            >>> byte_tokenizer().encode_prompt("hi")
            [104, 105]
        """
        return self.encode_prompts([text], num_threads=1)[0]

    def _normalize(self, text: str, keep: frozenset[str] | set[str]) -> str:
        """Apply the Unicode normalizer to everything but the tokens in ``keep`` (matched first, as HF does)."""
        form = self._conv.normalizer
        if form is None:
            return text
        if not keep:
            return unicodedata.normalize(form, text)
        parts = _token_splitter(frozenset(keep)).split(text)  # odd parts are the kept tokens
        return "".join(p if i % 2 else unicodedata.normalize(form, p) for i, p in enumerate(parts))

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
        if not self._conv.is_default:
            meta["conventions"] = self._conv.to_json()
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
        if "kind" not in meta and "model" in meta:
            raise ValueError(f"{path}: a Hugging Face tokenizer.json, not rlfl's; load it with "
                             f"load_tokenizer('hf:{Path(directory)}')")
        for name in ("kind", "name", "pat_str", "special_tokens", "fingerprint"):
            if name not in meta:
                raise ValueError(f"{path}: missing field {name!r}; re-save the tokenizer")
        if meta["kind"] not in _KINDS:
            raise ValueError(f"{path}: unknown kind {meta['kind']!r} (expected one of {', '.join(_KINDS)})")
        if meta["kind"] == "bytes":
            ranks = _byte_ranks()
        else:
            ranks_name = meta.get("ranks_file") or RANKS_FILE
            ranks = read_tiktoken_ranks(Path(directory) / ranks_name)
        conventions = Conventions.from_json(meta["conventions"], str(path)) if "conventions" in meta else None
        try:
            tok = cls(
                kind=meta["kind"],
                name=meta["name"],
                pat_str=meta["pat_str"],
                ranks=ranks,
                special_tokens={str(k): int(v) for k, v in meta["special_tokens"].items()},
                conventions=conventions,
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


# -------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=32)
def _token_splitter(tokens: frozenset[str]) -> re.Pattern[str]:
    """A regex whose split() keeps ``tokens`` (longest first) as the odd parts."""
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


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

r"""BPE rank files read without tiktoken's download cache: tiktoken's own ``.tiktoken`` format and GPT-2's
original ``encoder.json`` + ``vocab.bpe``, both as tiktoken ranks (token bytes -> rank).

`rlfl.tokenizer` builds tokenizers from these ranks; `gpt2_byte_decoder` is GPT-2's printable alphabet, which
`rlfl.hf_tokenizer` shares (Hugging Face's byte-level BPE writes its tokens in it too).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "bytes.tiktoken"
    >>> _ = path.write_bytes(b"".join(base64.b64encode(bytes([i])) + b" %d\n" % i for i in range(256)))
    >>> ranks = read_tiktoken_ranks(path)
    >>> len(ranks), ranks[b"A"]
    (256, 65)
    >>> gpt2_byte_decoder()["\u0120"]  # GPT-2 writes a space as "Ġ"
    32
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

__all__ = ["check_ranks", "gpt2_byte_decoder", "read_gpt2_encoder", "read_tiktoken_ranks"]


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
    check_ranks(ranks, path)
    return ranks


def read_gpt2_encoder(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> dict[bytes, int]:
    """Convert GPT-2's original ``encoder.json`` + ``vocab.bpe`` into tiktoken ranks (bytes -> rank).

    GPT-2 stored tokens as printable unicode strings, one character per byte (`gpt2_byte_decoder`). The
    merges in vocab.bpe must agree with the ids in encoder.json (merge i produces id 256 + i), because
    tiktoken treats a token's rank as its merge priority; we check that rather than trust it.
    """
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    decoder = gpt2_byte_decoder()

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
    check_ranks(ranks, encoder_json)
    return ranks



def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet: char -> byte (GPT-2's encoder.json and Hugging Face's byte-level BPE
    write tokens in it).

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


def check_ranks(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Refuse rank tables tiktoken would choke on (or silently mis-encode with): a byte without a token, a
    rank given twice."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(
            f"{path}: byte 0x{missing[0]:02x} has no token ({len(missing)} bytes missing); not a byte-level BPE"
        )
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: two tokens share a rank; the ranks file is corrupt")

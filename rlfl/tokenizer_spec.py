"""Tokenizers from a command-line spec: ``--tokenizer bytes``, ``gpt2:PATH``, ``hf:DIR``, a folder, a tiktoken name.

`load_tokenizer` is the one place a spec string becomes a `rlfl.tokenizer.Tokenizer`; it sits above both
`rlfl.tokenizer` (rlfl's own kinds) and `rlfl.hf_tokenizer` (Hugging Face folders), which therefore never
import each other in a circle. `tokenizer_from_name` wraps a named tiktoken encoding (download or cache).

Example:
    >>> load_tokenizer("bytes").encode("hi")
    [104, 105]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import tiktoken

from rlfl.hf_tokenizer import load_hf_tokenizer
from rlfl.tokenizer import SPECIAL_TOKENS, TOKENIZER_JSON, Tokenizer, byte_tokenizer, gpt2_tokenizer

__all__ = ["load_tokenizer", "tokenizer_from_name"]

logger = logging.getLogger(__name__)

_GPT2_NAMES = ("gpt2", "r50k_base")
_SPEC_FORMS = (
    "'bytes', 'gpt2:/path/to/r50k_base.tiktoken', 'gpt2:/dir/with/encoder.json+vocab.bpe', "
    "'hf:/dir/with/Hugging Face tokenizer.json', a directory holding tokenizer.json, "
    "or a tiktoken encoding name such as 'gpt2'"
)


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
    ``r50k_base.tiktoken`` or ``encoder.json`` + ``vocab.bpe``); ``"hf:DIR"`` (a Hugging Face byte-level BPE
    ``tokenizer.json`` + ``tokenizer_config.json``); a directory holding ``tokenizer.json`` (e.g. a checkpoint,
    or a Hugging Face folder); a tiktoken encoding name (needs network or tiktoken's cache).
    """
    spec = str(spec)
    if spec == "bytes":
        return byte_tokenizer()
    if spec.startswith("hf:"):
        return load_hf_tokenizer(Path(spec[len("hf:"):]).expanduser())
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
            if _is_hf_tokenizer_json(path / TOKENIZER_JSON):
                return load_hf_tokenizer(path)
            return Tokenizer.load(path)
        raise FileNotFoundError(f"{path / TOKENIZER_JSON}: no such file; accepted tokenizer specs: {_SPEC_FORMS}")
    if spec in tiktoken.list_encoding_names():
        return tokenizer_from_name(spec)
    raise ValueError(f"unknown tokenizer {spec!r}; accepted: {_SPEC_FORMS}")



def _is_hf_tokenizer_json(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face tokenizer.json (a "model" and no "kind") rather than rlfl's description."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # Tokenizer.load reports it
    return isinstance(meta, dict) and "model" in meta and "kind" not in meta

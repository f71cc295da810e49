"""Hugging Face byte-level BPE tokenizers as rlfl `Tokenizer`s (tiktoken underneath), and back.

`load_hf_tokenizer` reads a folder's ``tokenizer.json`` (+ ``tokenizer_config.json``, + ``chat_template.jinja``)
and builds a ``kind="hf"`` `Tokenizer` that encodes at tiktoken's speed to the ids ``tokenizers`` gives
(``--tokenizer hf:DIR``, through `rlfl.tokenizer_spec.load_tokenizer`, reaches it too):

- ranks: the BPE vocabulary, each token's GPT-2 printable characters mapped back to bytes. tiktoken merges the
  adjacent pair whose joined bytes have the lowest id, so the merges must be listed in rising id order, make
  every vocabulary token, and rebuild each token from its own bytes; all three are checked (GPT-2, Llama-3,
  Qwen2 and tokenizers trained with ``tokenizers`` pass). The last check also makes ``model.ignore_merges``
  moot: tiktoken takes a pre-token that is itself in the vocabulary as one token, which ``ignore_merges=true``
  does and which plain BPE reaches anyway when every token rebuilds itself.
- pre-tokenizer regex: ``ByteLevel(use_regex=true)`` is GPT-2's pattern; ``Split(Regex, Isolated)`` then
  ``ByteLevel(use_regex=false)`` (Llama-3, Qwen2) is that pattern; ``Digits`` then ``ByteLevel(use_regex=true)``
  (SmolLM2, StarCoder) becomes one GPT-2-derived pattern that splits digits the same way. A Split pattern
  must match every character (all of these do): tiktoken drops text its pattern does not match.
- normalizer: none, or one of NFC/NFD/NFKC/NFKD (Qwen2 has NFC), applied in Python before encoding.
- added tokens: all become tiktoken special tokens with their ids; the non-special ones are matched in any
  text (as ``tokenizers`` does), the special ones only with ``encode(..., allow_special=True)``.
- ``tokenizer_config.json``: eos_token (the end-of-text id), pad_token (else eos), bos_token and
  add_bos_token (else read from the post-processor), chat_template (a string, or the ``default`` of a list).
  With add_bos, `Tokenizer.encode_prompts` puts bos_token in front of every prompt and pretraining document.

Anything else (WordPiece, Unigram, sentencepiece-style BPE with byte_fallback, a prefix space, BPE dropout)
is refused with a one-line error naming the field.

`save_hf_tokenizer` writes any rlfl tokenizer as ``tokenizer.json`` + ``tokenizer_config.json`` that
``transformers.AutoTokenizer.from_pretrained`` opens: merges recovered from the ranks (for each token, the
two lower-ranked tokens tiktoken's rank-order BPE joins into it), ``ignore_merges`` set (tiktoken's whole
pre-token rule), the split regex, special tokens as added tokens, and for rlfl's own chat tokens a Jinja
chat template that renders exactly what `rlfl.chat_template.render_chat` encodes.

Example:
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> save_hf_tokenizer(byte_tokenizer(), d)
    >>> tok = load_hf_tokenizer(d)
    >>> tok.kind, tok.encode("hi"), tok.eot_id
    ('hf', [104, 105], 256)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rlfl.bpe_files import gpt2_byte_decoder
from rlfl.files import atomic_write_bytes, read_json
from rlfl.tokenizer import GPT2_PAT_STR, NORMALIZERS, TOKENIZER_JSON, Conventions, Tokenizer

__all__ = ["RLFL_CHAT_TEMPLATE", "load_hf_tokenizer", "recover_merges", "save_hf_tokenizer"]

TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_SUPPORTED = "only byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2, SmolLM2 style) load"

# GPT-2's pattern when a Digits pre-tokenizer has cut out digits first: numbers lose their leading space
# (the space ends the piece before them) and a whitespace run before a digit is a whole piece, as at the end
# of the text. With individual_digits each digit is its own piece.
_GPT2_DIGITS_PAT = {
    True: r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++|\p{N}| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?![^\s\p{N}])|\s""",
    False: r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++|\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?![^\s\p{N}])|\s""",
}

_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# rlfl's own chat format (`rlfl.chat_template.render_chat`) as a Jinja template, for tokenizers with rlfl's
# role tokens: <|role|>content<|end|> per message, and <|assistant|> to prompt an answer.
RLFL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('chat role must be system, user or assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


# ---------------------------------------------------------------------------------------------- loading
def load_hf_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """A Hugging Face byte-level BPE folder (``tokenizer.json`` + ``tokenizer_config.json``) as a `Tokenizer`.

    How each part maps onto tiktoken, and what is refused, is in this module's docstring.

    Example:
        >>> tok = load_hf_tokenizer("/models/Qwen2-0.5B-Instruct")  # doctest: +SKIP
        >>> tok.encode("Hello world"), tok.eot_id  # doctest: +SKIP
        ([9707, 1879], 151645)
    """
    folder = Path(folder)
    path = folder / TOKENIZER_JSON
    if not path.is_file():
        hint = (f"{folder / 'tokenizer.model'} is a sentencepiece model; {_SUPPORTED}"
                if (folder / "tokenizer.model").is_file() else "pass a Hugging Face tokenizer folder")
        raise FileNotFoundError(f"{path}: no such file; {hint}")
    data = read_json(path, fix="pass a Hugging Face tokenizer.json")
    config_path = folder / TOKENIZER_CONFIG
    config = read_json(config_path, fix="fix or remove it") if config_path.is_file() else {}
    where = str(path)
    if "kind" in data and "model" not in data:
        raise ValueError(f"{where}: an rlfl tokenizer description, not a Hugging Face tokenizer.json; "
                         f"load it with load_tokenizer('{folder}')")

    model = _get(data, "model", dict, where)
    _check_model(model, where)
    pat_str = _pre_tokenizer_regex(data.get("pre_tokenizer"), where)
    normalizer = _normalizer(data.get("normalizer"), where)
    _check_decoder(data.get("decoder"), where)
    added, plain = _added_tokens(data.get("added_tokens") or [], where)
    ranks = _ranks_from_bpe(model, added, where)
    taken = set(ranks.values())
    for text, i in added.items():
        if i in taken:
            raise ValueError(f"{where}: added_tokens {text!r} has id {i}, which model.vocab gives to another token")

    config_where = str(config_path)
    eos = _config_token(config, "eos_token", config_where)
    if eos is None:
        if "<|endoftext|>" not in added:
            raise ValueError(f"{config_where}: no eos_token, and no <|endoftext|> added token to fall back on; "
                             f"set eos_token to the special token that ends a text")
        eos = "<|endoftext|>"
    pad = _config_token(config, "pad_token", config_where) or eos
    bos = _config_token(config, "bos_token", config_where)
    for name, token in (("eos_token", eos), ("pad_token", pad), ("bos_token", bos)):
        if token is not None and token not in added:
            raise ValueError(f"{config_where}: {name} {token!r} is not among {where}'s added_tokens; "
                             f"name a special token")
    add_bos = config.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = _post_processor_adds(data.get("post_processor"), bos, where)
    conventions = Conventions(eos_token=eos, pad_token=pad, bos_token=bos, add_bos=add_bos and bos is not None,
                              normalizer=normalizer, added_tokens=tuple(plain),
                              chat_template=_chat_template(folder, config, config_where))
    try:
        return Tokenizer(kind="hf", name=f"hf-{folder.resolve().name}", pat_str=pat_str, ranks=ranks,
                         special_tokens=added, conventions=conventions)
    except ValueError as e:  # tiktoken could not compile the pattern, or the tokens clash
        raise ValueError(f"{where}: cannot build a tiktoken encoding from it ({str(e).splitlines()[0]})") from None


def _get(obj: dict, key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {key!r} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _check_model(model: dict, where: str) -> None:
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise ValueError(f"{where}: model.type is {kind!r}; {_SUPPORTED}")
    if model.get("byte_fallback"):
        raise ValueError(f"{where}: model.byte_fallback is true (a sentencepiece-style BPE such as Llama-2's); "
                         f"{_SUPPORTED}")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"{where}: model.{key} is {model[key]!r}; {_SUPPORTED}")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"{where}: model.dropout is {model['dropout']!r} (random BPE); set it to null")


def _byte_level(step: dict, where: str, field: str, use_regex: bool) -> None:
    if step.get("add_prefix_space"):
        raise ValueError(f"{where}: {field}.add_prefix_space is true; only false is supported (GPT-2 style)")
    if bool(step.get("use_regex", True)) != use_regex:
        raise ValueError(f"{where}: {field}.use_regex must be {str(use_regex).lower()} here; supported pre-tokenizers: "
                         f"ByteLevel(use_regex=true), Split(Regex, Isolated)+ByteLevel(use_regex=false), "
                         f"Digits+ByteLevel(use_regex=true)")


def _pre_tokenizer_regex(pre: Any, where: str) -> str:
    """The one regex tiktoken splits with, equivalent to the pre-tokenizer (see the module docstring)."""
    supported = ("supported: ByteLevel(use_regex=true), Sequence[Split(Regex, behavior=Isolated), "
                 "ByteLevel(use_regex=false)], Sequence[Digits, ByteLevel(use_regex=true)]")
    if not isinstance(pre, dict):
        raise ValueError(f"{where}: pre_tokenizer is {pre!r}, not byte-level; {supported}")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    field = "pre_tokenizer.pretokenizers" if pre.get("type") == "Sequence" else "pre_tokenizer"
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise ValueError(f"{where}: {field} must be a non-empty list of objects; {supported}")
    kinds = [s.get("type") for s in steps]
    last = f"{field}[{len(steps) - 1}]" if field.endswith("pretokenizers") else field
    if kinds == ["ByteLevel"]:
        _byte_level(steps[0], where, last, use_regex=True)
        return GPT2_PAT_STR
    if kinds == ["Split", "ByteLevel"]:
        split = steps[0]
        pattern = split.get("pattern") or {}
        if not isinstance(pattern, dict) or not isinstance(pattern.get("Regex"), str):
            raise ValueError(f"{where}: {field}[0].pattern must be {{\"Regex\": ...}}; {supported}")
        if split.get("behavior") != "Isolated" or split.get("invert"):
            raise ValueError(f"{where}: {field}[0] must have behavior Isolated and invert false, got "
                             f"{split.get('behavior')!r}/{split.get('invert')!r}; {supported}")
        _byte_level(steps[1], where, last, use_regex=False)
        return pattern["Regex"]
    if kinds == ["Digits", "ByteLevel"]:
        _byte_level(steps[1], where, last, use_regex=True)
        return _GPT2_DIGITS_PAT[bool(steps[0].get("individual_digits", False))]
    raise ValueError(f"{where}: {field} is {kinds}; {supported}")


def _normalizer(norm: Any, where: str) -> str | None:
    if norm is None:
        return None
    steps = norm.get("normalizers") if isinstance(norm, dict) and norm.get("type") == "Sequence" else [norm]
    kinds = [s.get("type") if isinstance(s, dict) else s for s in steps or []]
    if len(kinds) == 1 and kinds[0] in NORMALIZERS:
        return kinds[0]
    if not kinds:
        return None
    raise ValueError(f"{where}: normalizer {kinds} is not supported; use null or one of {', '.join(NORMALIZERS)}")


def _check_decoder(decoder: Any, where: str) -> None:
    if decoder is None:
        return
    kinds = ([d.get("type") for d in decoder.get("decoders") or []] if decoder.get("type") == "Sequence"
             else [decoder.get("type")])
    if kinds != ["ByteLevel"]:
        raise ValueError(f"{where}: decoder {kinds} is not supported; a byte-level BPE decodes with ByteLevel")


def _added_tokens(entries: Any, where: str) -> tuple[dict[str, int], list[str]]:
    """(text -> id of every added token, the non-special ones in id order)."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: added_tokens must be a list")
    added: dict[str, int] = {}
    plain: list[str] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("content"), str) or not isinstance(e.get("id"), int):
            raise ValueError(f"{where}: added_tokens[{i}] needs a string 'content' and an integer 'id'")
        for flag in ("lstrip", "rstrip", "single_word"):
            if e.get(flag):
                raise ValueError(f"{where}: added_tokens[{i}].{flag} is true ({e['content']!r}); only false is supported")
        if e["content"] in added or e["id"] in added.values():
            raise ValueError(f"{where}: added_tokens[{i}] ({e['content']!r}, id {e['id']}) repeats a token or id")
        added[e["content"]] = e["id"]
        if not e.get("special", False):
            plain.append(e["content"])
    return added, plain


def _ranks_from_bpe(model: dict, added: dict[str, int], where: str) -> dict[bytes, int]:
    """tiktoken ranks from a byte-level BPE's vocab, after checking its merges agree with them."""
    vocab = _get(model, "vocab", dict, where)
    merges = model.get("merges") or []
    decoder = gpt2_byte_decoder()
    # An added token that is also in the vocab (GPT-2's <|endoftext|>) is a special token, not a mergeable one.
    tokens = {t: i for t, i in vocab.items() if added.get(t) != i}
    ranks: dict[bytes, int] = {}
    for t, i in tokens.items():
        try:
            ranks[bytes(decoder[c] for c in t)] = int(i)
        except KeyError:
            raise ValueError(f"{where}: model.vocab token {t!r} (id {i}) is not in the byte-level alphabet; "
                             f"{_SUPPORTED}") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{where}: model.vocab has no token for byte 0x{missing[0]:02x} ({len(missing)} bytes "
                         f"missing); train with initial_alphabet=pre_tokenizers.ByteLevel.alphabet()")
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{where}: model.vocab gives one id to two tokens")

    pair_rank: dict[tuple[str, str], int] = {}
    made: set[str] = set()
    last = -1
    for n, m in enumerate(merges):
        pair = m.split(" ") if isinstance(m, str) else m
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"{where}: model.merges[{n}] is {m!r}; expected 'a b' or [a, b]")
        a, b = pair
        if a not in tokens or b not in tokens or a + b not in tokens:
            raise ValueError(f"{where}: model.merges[{n}] ({a!r}, {b!r}) joins or makes a token missing from "
                             f"model.vocab")
        rank = tokens[a + b]
        if rank < last:
            raise ValueError(f"{where}: model.merges[{n}] makes id {rank} after a merge made id {last}; tiktoken "
                             f"merges by id, so merges must make rising ids")
        last = rank
        pair_rank.setdefault((a, b), n)
        made.add(a + b)
    for t, i in tokens.items():
        if len(t) > 1:
            if t not in made:
                raise ValueError(f"{where}: model.vocab token {t!r} (id {i}) is made by no entry of model.merges; "
                                 f"tiktoken could produce it where this tokenizer cannot")
            parts = _merge_bpe(t, pair_rank)
            if parts != [t]:
                raise ValueError(f"{where}: model.merges turn token {t!r} (id {i}) into {parts}, not itself; "
                                 f"tiktoken's rank-order BPE would differ")
    return ranks


def _merge_bpe(word: str, pair_rank: dict[tuple[str, str], int]) -> list[str]:
    """BPE as ``tokenizers`` runs it: join the listed pair with the lowest merge index, leftmost first."""
    parts = list(word)
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = pair_rank.get((parts[i], parts[i + 1]))
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def _config_token(config: dict, key: str, where: str) -> str | None:
    """A special token named in tokenizer_config.json, written as a string or as an AddedToken object."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string or {{\"content\": ...}}, got {type(value).__name__}")
    return value


def _post_processor_adds(post: Any, bos: str | None, where: str) -> bool:
    """Whether the post-processor puts ``bos`` in front of a single text (a TemplateProcessing [bos, $A])."""
    if post is None or bos is None:
        return False
    steps = (post.get("processors") or []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            first = single[0].get("SpecialToken", {}).get("id") if single and isinstance(single[0], dict) else None
            return first == bos
    return False


def _chat_template(folder: Path, config: dict, where: str) -> str | None:
    """The chat template: chat_template.jinja if present (newer transformers save it so), else the config's."""
    jinja_file = folder / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"{where}: chat_template lists templates {sorted(map(str, named))} but none is "
                             f"named 'default'; rlfl uses the default one")
        value = named["default"]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: chat_template must be a Jinja string, got {type(value).__name__}")
    return value



# ---------------------------------------------------------------------------------------------- saving
def save_hf_tokenizer(tokenizer: Tokenizer, folder: str | os.PathLike) -> None:
    """Write ``tokenizer`` as a Hugging Face ``tokenizer.json`` + ``tokenizer_config.json`` in ``folder``.

    Each file is written atomically. ``transformers.AutoTokenizer.from_pretrained(folder)`` then encodes text
    to the ids ``tokenizer.encode`` gives and renders chats as `rlfl.chat_template.render_chat` does.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> import tempfile
        >>> save_hf_tokenizer(byte_tokenizer(), tempfile.mkdtemp())
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conv = tokenizer.conventions
    specials = tokenizer.special_tokens
    encode = {b: c for c, b in gpt2_byte_decoder().items()}
    ranks = tokenizer.mergeable_ranks

    def text(token: bytes) -> str:
        return "".join(encode[b] for b in token)

    vocab = {text(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab.update(specials)  # as ``tokenizers`` saves them; transformers renumbers added tokens missing from it
    merges = [[text(a), text(b)] for a, b in recover_merges(ranks)]
    if tokenizer.pat_str == GPT2_PAT_STR:
        pre: dict[str, Any] = _byte_level_json(use_regex=True)
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pat_str}, "behavior": "Isolated", "invert": False},
            _byte_level_json(use_regex=False)]}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": t not in conv.added_tokens} for t, i in sorted(specials.items(), key=lambda kv: kv[1])]
    bos = conv.bos_token
    post = None
    if conv.add_bos and bos is not None:
        bos_id = specials[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None if conv.normalizer is None else {"type": conv.normalizer},
        "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    template = conv.chat_template
    if template is None and all(t in specials for t in _ROLE_TOKENS):
        template = RLFL_CHAT_TEMPLATE
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "eos_token": _present(conv.eos_token, specials),
        "pad_token": _present(conv.pad_token, specials),
        "bos_token": bos,
        "add_bos_token": conv.add_bos,
        "added_tokens_decoder": {str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in added},
    }
    if template is not None:
        config["chat_template"] = template
    atomic_write_bytes(folder / TOKENIZER_JSON, (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode())
    atomic_write_bytes(folder / TOKENIZER_CONFIG, (json.dumps(config, ensure_ascii=False, indent=2) + "\n").encode())
    stale = folder / CHAT_TEMPLATE_FILE  # transformers prefers it to the config's template: keep the two equal
    if stale.is_file():
        if template is None:
            stale.unlink()
        else:
            atomic_write_bytes(stale, template.encode())


def _present(token: str, specials: dict[str, int]) -> str | None:
    return token if token in specials else None


def _byte_level_json(*, use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges behind tiktoken ranks, in rank order: for each multi-byte token, the two tokens of lower
    rank that tiktoken's rank-order BPE joins into it (as in tiktoken's educational code).

    Example:
        >>> ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257}
        >>> recover_merges(ranks)
        [(b'a', b'b'), (b'ab', b'c')]
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not two lower-ranked tokens joined; "
                             f"its ranks cannot be written as BPE merges")
        merges.append((parts[0], parts[1]))
    return merges

"""Tests for rlfl.tokenizer and the BPE trainer in rlfl.bpe (no network, a few seconds on 2 cores)."""

from __future__ import annotations

import functools
import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
import tiktoken
import tiktoken.load
import tiktoken.registry
from hypothesis import given, settings
from hypothesis import strategies as st

from rlfl.bpe import count_pretokens, merge_pretokens
from rlfl.tokenizer import (
    GPT2_PAT_STR,
    RANKS_FILE,
    SPECIAL_TOKENS,
    TOKENIZER_JSON,
    Tokenizer,
    byte_tokenizer,
    gpt2_tokenizer,
    train_bpe,
)
from rlfl.tokenizer_spec import load_tokenizer, tokenizer_from_name

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2_DIR = DATA / "tokenizers" / "gpt2"

# A small made-up language with English-like statistics (a Zipf-ish word list, punctuation, newlines and a
# few multi-byte words), so a BPE trained on a few KB has real structure to learn and held-out text of the
# same kind to compress.
_WORDS = (
    "the a of and to in is it that was movie film this with for but on not you his he are as one "
    "all at by an be have they from like so just story good bad acting plot really great about "
    "café naïve über 東京 😀 don't it's I've we're"
).split()


def synthetic_text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(_WORDS))]
    out = []
    for i in range(n_words):
        out.append(rng.choices(_WORDS, weights)[0])
        r = rng.random()
        if r < 0.08:
            out.append(rng.choice([".", ",", "!", "?"]) + rng.choice([" ", "\n", "\n\n"]))
        else:
            out.append(" ")
    return "".join(out)


@functools.lru_cache(maxsize=None)
def small_bpe() -> Tokenizer:
    """One tiny BPE (vocab 350) shared by the tests; hypothesis dislikes function-scoped fixtures."""
    texts = [synthetic_text(seed, 300) for seed in range(6)]  # ~10 KB
    return train_bpe(texts, 350, num_workers=1)


def need_gpt2_files() -> Path:
    if not (GPT2_DIR / "r50k_base.tiktoken").is_file():
        pytest.skip(f"{GPT2_DIR} is absent (needs ../shared/data beside the repo)")
    return GPT2_DIR


# ---------------------------------------------------------------- byte tokenizer
def test_byte_tokenizer_layout_and_round_trip():
    tok = byte_tokenizer()
    assert tok.kind == "bytes" and tok.n_vocab == 262
    assert tok.special_tokens == {s: 256 + i for i, s in enumerate(SPECIAL_TOKENS)}
    assert (tok.eot_id, tok.pad_id) == (256, 257)
    text = "héllo 東京 😀\n"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes([0xE6, 0x9D]) == b"\xe6\x9d"
    assert tok.decode([0xE6, 0x9D]) == "\ufffd"  # half a character decodes with replacement, no raise


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(text):
    for tok in (byte_tokenizer(), small_bpe()):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.n_vocab for i in ids)


# ---------------------------------------------------------------- special tokens
def test_special_tokens_are_ordinary_text_unless_allowed():
    for tok in (byte_tokenizer(), small_bpe()):
        text = "a<|endoftext|>b<|user|>"
        plain = tok.encode(text)  # must not raise on user text holding special-token text
        assert tok.eot_id not in plain and tok.special_tokens["<|user|>"] not in plain
        assert tok.decode(plain) == text
        special = tok.encode(text, allow_special=True)
        assert special == tok.encode("a") + [tok.eot_id] + tok.encode("b") + [tok.special_tokens["<|user|>"]]
        assert tok.decode(special) == text
        assert tok.encode_batch([text, "b"]) == [plain, tok.encode("b")]


def test_encode_batch_loops_or_threads_by_size_with_the_same_ids():
    from rlfl import tokenizer as tokenizer_module

    tok = small_bpe()
    short = ["The pasta was <|end|> lovely.", "", "x" * 37]
    long = [f"review {i}: " + "the plot twists and the acting shines " * 60 for i in range(12)]
    assert sum(map(len, short)) < tokenizer_module._THREADED_CHARS < sum(map(len, long))  # one of each path
    for texts in (short, long):
        expected = [tok.encode(t) for t in texts]
        assert tok.encode_batch(texts) == expected and tok.encode_batch(texts, num_threads=1) == expected


def test_decode_accepts_arrays_and_rejects_unknown_ids():
    tok = byte_tokenizer()
    assert tok.decode(np.array([104, 105], dtype=np.int64)) == "hi"
    with pytest.raises(ValueError, match=r"token id 300 is outside this tokenizer's vocabulary \[0, 262\)"):
        tok.decode([104, 300])


def test_missing_special_token_error():
    tok = train_bpe(["abc abc"], 256, special_tokens=(), num_workers=1)
    with pytest.raises(ValueError, match="no special token '<\\|endoftext\\|>'"):
        tok.eot_id


# ---------------------------------------------------------------- BPE training
def test_trained_bpe_compresses_held_out_text():
    tok = small_bpe()
    assert tok.kind == "bpe" and tok.n_vocab == 350
    assert tok.special_tokens == {s: 344 + i for i, s in enumerate(SPECIAL_TOKENS)}
    held_out = synthetic_text(seed=99, n_words=400)
    n_tokens = len(tok.encode(held_out))
    n_bytes = len(held_out.encode("utf-8"))
    assert n_tokens < 0.5 * n_bytes, (n_tokens, n_bytes)
    assert tok.decode(tok.encode(held_out)) == held_out
    assert len(tok.encode(" movie")) == 1  # a frequent word (with its leading space) became one token


def test_ranks_are_contiguous_and_unique():
    ranks = small_bpe().enc._mergeable_ranks
    assert sorted(ranks.values()) == list(range(344))
    assert all(ranks[bytes([b])] == b for b in range(256))


def test_training_is_deterministic_and_independent_of_workers():
    texts = [synthetic_text(seed, 200) for seed in range(4)]
    a = train_bpe(texts, 300, num_workers=1)
    b = train_bpe(texts, 300, num_workers=1)
    # Many small chunks through a 2-process pool must give exactly the same ranks as one process.
    c = train_bpe(texts, 300, num_workers=2, chunk_size=500)
    assert a.enc._mergeable_ranks == b.enc._mergeable_ranks == c.enc._mergeable_ranks
    assert a.fingerprint == b.fingerprint == c.fingerprint


def test_long_texts_are_cut_without_changing_pretokens():
    text = synthetic_text(seed=5, n_words=3000) + "\n\n  tail\n"
    whole = Counter(regex.findall(GPT2_PAT_STR, text))
    for chunk_size in (7, 100, 1000):
        assert count_pretokens([text], GPT2_PAT_STR, num_workers=1, chunk_size=chunk_size) == whole


def _reference_bpe(counts: dict[str, int], n_ranks: int) -> dict[bytes, int]:
    """The textbook loop: recount every pair after every merge; same tie-break (smallest ids)."""
    vocab = [bytes([i]) for i in range(256)]
    rank = {t: i for i, t in enumerate(vocab)}
    words = Counter({tuple(w.encode()): c for w, c in counts.items()})
    while len(vocab) < n_ranks:
        pairs: Counter = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merged = vocab[a] + vocab[b]
        if merged not in rank:
            rank[merged] = len(vocab)
            vocab.append(merged)
        t = rank[merged]
        new_words: Counter = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(t)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += c
        words = new_words
    return rank


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(alphabet="abcé", min_size=1, max_size=8), st.integers(1, 20), min_size=1, max_size=15),
    st.integers(256, 290),
)
def test_incremental_merges_match_reference(counts, n_ranks):
    assert merge_pretokens(counts, n_ranks) == _reference_bpe(counts, n_ranks)


def test_vocab_size_limits():
    with pytest.raises(ValueError, match=r"vocab_size 261 is too small: the minimum is 262 \(256 byte tokens \+ 6"):
        train_bpe(["abc"], 261)
    with pytest.raises(ValueError, match="above the cap of 32768"):
        train_bpe(["abc"], 32_769)
    # The minimum gives the pure byte vocabulary: the same tokenization as byte_tokenizer().
    assert train_bpe(["abc abc"], 262, num_workers=1).fingerprint == byte_tokenizer().fingerprint


def test_small_corpus_stops_early_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rlfl.bpe"):
        tok = train_bpe(["abab"], 1000, num_workers=1)
    assert tok.n_vocab == 256 + 2 + len(SPECIAL_TOKENS)  # b"ab", b"abab"
    assert "ran out of pairs" in caplog.text


def test_non_string_texts_rejected():
    with pytest.raises(ValueError, match="texts item 1: expected str, got bytes"):
        train_bpe(["ok", b"bytes"], 300, num_workers=1)


# ---------------------------------------------------------------- GPT-2 from local files
def test_gpt2_hello_world_from_both_file_forms():
    d = need_gpt2_files()
    a = gpt2_tokenizer(d / "r50k_base.tiktoken")
    b = gpt2_tokenizer(encoder_json=d / "encoder.json", vocab_bpe=d / "vocab.bpe")
    for tok in (a, b, load_tokenizer(f"gpt2:{d}"), load_tokenizer(f"gpt2:{d / 'r50k_base.tiktoken'}")):
        assert tok.kind == "gpt2"
        assert tok.encode("Hello world") == [15496, 995]
        assert tok.eot_id == 50256 and tok.pad_id == 50257 and tok.n_vocab == 50262
        assert tok.encode("<|endoftext|>", allow_special=True) == [50256]
    assert a.fingerprint == b.fingerprint


def test_gpt2_needs_a_file():
    with pytest.raises(ValueError, match="pass ranks_file="):
        gpt2_tokenizer()


def test_bad_ranks_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-a-valid-line\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken line 2: expected 'base64token rank'"):
        gpt2_tokenizer(bad)
    bad.write_text("IQ== 0\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken: byte 0x00 has no token \(255 bytes missing\)"):
        gpt2_tokenizer(bad)


# ---------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    tokenizers = [byte_tokenizer(), small_bpe()]
    if (GPT2_DIR / "r50k_base.tiktoken").is_file():
        tokenizers.append(gpt2_tokenizer(GPT2_DIR / "r50k_base.tiktoken"))
    text = "Hello world, 東京 <|endoftext|> movie"
    for tok in tokenizers:
        d = tmp_path / tok.name
        tok.save(d)
        assert (d / RANKS_FILE).exists() == (tok.kind != "bytes")
        meta = json.loads((d / TOKENIZER_JSON).read_text())
        assert meta["fingerprint"] == tok.fingerprint and meta["n_vocab"] == tok.n_vocab
        for back in (Tokenizer.load(d), load_tokenizer(str(d))):
            assert (back.kind, back.name, back.n_vocab) == (tok.kind, tok.name, tok.n_vocab)
            assert back.fingerprint == tok.fingerprint
            assert back.special_tokens == tok.special_tokens
            assert back.encode(text) == tok.encode(text)
            assert back.encode(text, allow_special=True) == tok.encode(text, allow_special=True)
        assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files


def test_fingerprints_differ_between_tokenizers():
    texts = [synthetic_text(seed, 200) for seed in range(4)]
    prints = {
        byte_tokenizer().fingerprint,
        small_bpe().fingerprint,
        train_bpe(texts, 300, num_workers=1).fingerprint,
        train_bpe(texts, 300, special_tokens=SPECIAL_TOKENS[:2], num_workers=1).fingerprint,
    }
    assert len(prints) == 4


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json: no such file"):
        Tokenizer.load(tmp_path)
    (tmp_path / TOKENIZER_JSON).write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not valid JSON"):
        Tokenizer.load(tmp_path)
    small_bpe().save(tmp_path)
    (tmp_path / RANKS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.tiktoken: no such file"):
        Tokenizer.load(tmp_path)
    # A ranks file that parses but differs from what was saved is caught by the fingerprint.
    small_bpe().save(tmp_path)
    lines = (tmp_path / RANKS_FILE).read_text().splitlines()
    (tok_a, rank_a), (tok_b, rank_b) = lines[-2].split(), lines[-1].split()
    lines[-2:] = [f"{tok_a} {rank_b}", f"{tok_b} {rank_a}"]  # swap the priority of the last two merges
    (tmp_path / RANKS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="fingerprint does not match"):
        Tokenizer.load(tmp_path)


# ---------------------------------------------------------------- specs and names
def test_load_tokenizer_specs(tmp_path):
    assert load_tokenizer("bytes").fingerprint == byte_tokenizer().fingerprint
    with pytest.raises(ValueError, match=r"unknown tokenizer 'nope'; accepted: 'bytes', 'gpt2:/path"):
        load_tokenizer("nope")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_tokenizer(f"gpt2:{tmp_path / 'missing.tiktoken'}")
    with pytest.raises(FileNotFoundError, match="holds neither r50k_base.tiktoken nor encoder.json"):
        load_tokenizer(f"gpt2:{tmp_path}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json: no such file"):
        load_tokenizer(str(tmp_path))


def test_offline_error_message(tmp_path, monkeypatch):
    # The real tiktoken.get_encoding path with an empty cache and a network fetch that fails at once.
    def no_network(blobpath):
        raise ConnectionError(f"network disabled in tests: {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(ValueError) as info:
        tokenizer_from_name("gpt2")
    msg = str(info.value)
    assert "\n" not in msg
    assert "could not download tiktoken encoding 'gpt2' (offline?" in msg
    assert "--tokenizer gpt2:/path/to/r50k_base.tiktoken" in msg
    with pytest.raises(ValueError, match="could not download tiktoken encoding 'gpt2'"):
        load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'"):
        tokenizer_from_name("gpt5")


def test_named_encoding_gets_our_special_tokens():
    # An injected loader stands in for tiktoken's download: a tiny encoding with its own special token.
    def fake_get_encoding(name):
        return tiktoken.Encoding(
            name, pat_str=GPT2_PAT_STR, mergeable_ranks={bytes([i]): i for i in range(256)},
            special_tokens={"<|endoftext|>": 300, "<|fim|>": 301},
        )

    tok = tokenizer_from_name("cl100k_base", get_encoding=fake_get_encoding)
    assert tok.kind == "tiktoken" and tok.eot_id == 300 and tok.special_tokens["<|fim|>"] == 301
    assert [tok.special_tokens[s] for s in SPECIAL_TOKENS[1:]] == [302, 303, 304, 305, 306]


def test_a_gpt2_ranks_file_cut_short_or_altered_is_refused(tmp_path):
    src = GPT2_DIR / "r50k_base.tiktoken"
    if not src.is_file():
        pytest.skip(f"{src}: no GPT-2 ranks file beside the repo")
    lines = src.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.tiktoken"
    cut.write_bytes(b"".join(lines[:10_000]))  # cut at a line boundary: every line still parses
    with pytest.raises(ValueError, match=r"cut\.tiktoken: 10000 ranks, but GPT-2's BPE has 50256: the file is cut "
                                         r"short or not GPT-2's"):
        gpt2_tokenizer(cut)
    swapped = tmp_path / "swapped.tiktoken"  # two ranks exchanged: same size, other merges
    a, b = lines[300].split(b" ")[0], lines[301].split(b" ")[0]
    lines[300], lines[301] = a + b" 301\n", b + b" 300\n"
    lines[300], lines[301] = lines[301], lines[300]
    swapped.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=r"swapped\.tiktoken: 50256 ranks, but not GPT-2's \(their SHA-256 differs\)"):
        gpt2_tokenizer(swapped)
    with pytest.raises(ValueError, match="cut short"):
        load_tokenizer(f"gpt2:{cut}")

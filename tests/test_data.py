"""Tests for rlfl.data: sources, cleaning, dedup, split, shards and the batch sampler."""

from __future__ import annotations

import gzip
import json
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rlfl.data import (
    BatchSampler,
    Document,
    _encode_chunks,
    _shard_dtype,
    clean_text,
    iter_documents,
    load_shards,
    prepare_corpus,
)
from rlfl.tokenizer import byte_tokenizer, train_bpe

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    text = "the cat sat on the mat. the dog ate the bone.\nthe bird sang a song. " * 20
    return train_bpe([text], 300, num_workers=1)


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def split_docs(tokenizer, ids) -> list[str]:
    """Decode a shard back into its documents (each ends with EOT)."""
    text = tokenizer.decode(np.asarray(ids).tolist())
    assert text.endswith(EOT) or not text
    return text.split(EOT)[:-1]


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ------------------------------------------------------------------------------------------ sources
def test_every_source_type(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.md").write_text("# Title\n\nmarkdown")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "one", "id": 1}, "", {"text": "two", "id": 2}])
    write_jsonl(tmp_path / "d.jsonl.gz", [{"text": "zipped", "label": 0}], gz=True)
    (tmp_path / "e.txt.gz").write_bytes(gzip.compress("gzipped text".encode()))
    (tmp_path / "sub" / "f.txt").write_text("nested")
    (tmp_path / ".hidden.txt").write_text("skipped")
    (tmp_path / "notes.csv").write_text("skipped too")

    # A folder: recursive, sorted, hidden and unsupported files skipped.
    docs = list(iter_documents(tmp_path))
    assert [d.text for d in docs] == ["plain text", "# Title\n\nmarkdown", "one", "two", "zipped",
                                      "gzipped text", "nested"]
    assert [Path(d.source).name for d in docs] == ["a.txt", "b.md", "c.jsonl", "c.jsonl", "d.jsonl.gz",
                                                   "e.txt.gz", "f.txt"]
    assert [d.line for d in docs] == [None, None, 1, 3, 1, None, None]
    assert docs[2].meta == {"id": 1} and docs[2].where == f"{tmp_path / 'c.jsonl'} line 1"
    assert docs[4].meta == {"label": 0}
    # Single files, in the order given.
    assert [d.text for d in iter_documents([tmp_path / "e.txt.gz", str(tmp_path / "a.txt")])] == \
        ["gzipped text", "plain text"]


def test_text_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [{"body": "zipped", "label": 0}], gz=True)
    assert [(d.text, d.meta) for d in iter_documents(path, text_field="body")] == [("zipped", {"label": 0})]


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: no such file or folder; check the path"):
        list(iter_documents(tmp_path / "nope.txt"))


def test_folder_without_supported_files(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError) as e:
        list(iter_documents(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: folder has no .jsonl.gz") and "pass the files" in msg
    assert "\n" not in msg


def test_unsupported_extension(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match=r"x\.bin: unsupported file type; use one of .*\.txt"):
        list(iter_documents(path))


@pytest.mark.parametrize("payload, where", [
    (b"abc\x00def", "a NUL byte at byte 3 (line 1): a binary file, not text; remove it or pass only text files"),
    (b"first line\ncaf\xe9 latin-1\n", "byte 14 (line 2) is 0xe9, not UTF-8; re-save the file as UTF-8 or remove "
                                       "that byte"),
])
def test_binary_file_or_stray_byte_is_located(tmp_path, payload, where):
    path = tmp_path / "x.txt"
    path.write_bytes(payload)
    with pytest.raises(ValueError) as e:
        list(iter_documents(path))
    assert str(e.value) == f"{path}: {where}"


def test_binary_line_in_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl line 2: byte 11 of the line is 0xff, not UTF-8"):
        list(iter_documents(path))


def test_jsonl_missing_field_names_line_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": f"doc {i}"} for i in range(6)] +
                       [{"id": 7, "body": "no text here"}])
    with pytest.raises(ValueError) as e:
        list(iter_documents(path))
    assert str(e.value) == f"{path} line 7: no field 'text'; pass --text-field NAME (fields here: id, body)"


@pytest.mark.parametrize("line, expected", [
    ('{"text": "a"', r"line 2: not valid JSON \(.*column 13\); fix or remove the line"),
    ('["a list"]', r"line 2: expected a JSON object, got list"),
    ('{"text": 5}', r"line 2: field 'text' is int, not a string; pass --text-field NAME"),
])
def test_jsonl_bad_lines(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [{"text": "fine"}, line], gz=True)
    with pytest.raises(ValueError, match=r"c\.jsonl\.gz " + expected):
        list(iter_documents(path))


def test_empty_corpus(tmp_path, tok):
    (tmp_path / "a.txt").write_text("   \n\n")
    (tmp_path / "b.txt").write_text("<br /><br />&nbsp;")
    with pytest.raises(ValueError) as e:
        prepare_corpus(tmp_path, tok, tmp_path / "out")
    assert "a.txt" in str(e.value) and "corpus is empty (2 documents, all blank after cleaning)" in str(e.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- cleaning
def test_clean_text():
    raw = ("Great film!<br /><br />Loved it &amp; the cast &quot;shone&quot;.<BR>"
           "<i>Bold</i> <a href='x'>link</a>  \t spaces   here \r\n\r\n\r\n\r\nEnd.\x07\ufeff ")
    assert clean_text(raw) == ('Great film!\n\nLoved it & the cast "shone".\nBold link spaces here\n\nEnd.')
    assert clean_text("cafe\u0301") == "caf\u00e9"                      # NFC
    assert clean_text("if a < b > c then <3") == "if a < b > c then <3"  # not tags
    assert clean_text(f"one{EOT}two") == f"one{EOT}two"
    assert clean_text("&lt;b&gt; stays visible") == "<b> stays visible"
    assert clean_text("keep\ttabs\nand\n\nparagraphs") == "keep\ttabs\nand\n\nparagraphs"


def test_clean_false_keeps_raw_text(tmp_path, tok):
    docs = [Document("Raw <br /> text  &amp;  \n\n\n\nmore")]
    meta = prepare_corpus(docs, tok, tmp_path / "out", val_fraction=0, clean=False)
    assert split_docs(tok, load_shards(tmp_path / "out").train) == [docs[0].text]
    assert meta["clean"] is False


def test_dedup_counts_exact_duplicates_after_cleaning(tmp_path, tok):
    texts = ["Hello world", "Hello  world ", "Hello world", "Something else", "Hello&nbsp;world"]
    docs = [Document(t) for t in texts]
    meta = prepare_corpus(docs, tok, tmp_path / "a", val_fraction=0)
    assert meta["duplicates_removed"] == 3
    assert sorted(split_docs(tok, load_shards(tmp_path / "a").train)) == ["Hello world", "Something else"]
    meta = prepare_corpus(docs, tok, tmp_path / "b", val_fraction=0, dedup=False)
    assert meta["duplicates_removed"] == 0 and meta["splits"]["train"]["documents"] == 5


# ----------------------------------------------------------------------------------- split + shards
def corpus(n: int = 200, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [Document(f"doc {i}: " + " ".join(rng.choice(words, rng.integers(5, 60))), "mem", i + 1)
            for i in range(n)]


def test_split_sizes_and_round_trip(tmp_path, tok):
    docs = corpus()
    meta = prepare_corpus(docs, tok, tmp_path / "out", val_fraction=0.1, seed=3)
    shards = load_shards(tmp_path / "out")
    train, val = split_docs(tok, shards.train), split_docs(tok, shards.val)
    # Whole documents, nothing lost or repeated, ~10% of the bytes in val.
    assert Counter(train + val) == Counter(d.text for d in docs)
    total = sum(len(d.text) for d in docs)
    val_bytes = sum(len(t) for t in val)
    assert 0.1 * total <= val_bytes < 0.1 * total + max(len(d.text) for d in docs)
    s = meta["splits"]
    assert s["val"] == {"file": "val.bin", "tokens": len(shards.val), "documents": len(val), "bytes": val_bytes}
    assert s["train"]["tokens"] == len(shards.train) == sum(len(t) for t in train) + len(train)
    assert shards.meta == meta and shards.train.dtype == np.uint16 and not shards.train.flags.writeable
    assert shards.bytes_per_token("train") == pytest.approx(s["train"]["bytes"] / s["train"]["tokens"])
    assert meta["tokenizer"] == {"kind": "bytes", "name": "bytes", "fingerprint": tok.fingerprint}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "tokenizer.json",
                                                                    "train.bin", "val.bin"]
    assert shards.load_tokenizer().fingerprint == tok.fingerprint
    # The seed decides the split, and nothing else does.
    prepare_corpus(docs, tok, tmp_path / "same", seed=3)
    prepare_corpus(docs, tok, tmp_path / "other", seed=4)
    assert files_of(tmp_path / "same") == files_of(tmp_path / "out")
    assert split_docs(tok, load_shards(tmp_path / "other").val) != val


def test_bpe_round_trip_and_chunked_encoding(tmp_path, bpe):
    docs = [Document("the cat sat on the mat.\nthe dog ate the bone.\n" * 30), Document("the bird sang.")]
    prepare_corpus(docs, bpe, tmp_path / "out", val_fraction=0)
    assert Counter(split_docs(bpe, load_shards(tmp_path / "out").train)) == Counter(clean_text(d.text)
                                                                                   for d in docs)
    # Cutting a long document into pieces at line starts gives the very same ids.
    chunked = [i for ids in _encode_chunks(docs, bpe, max_chars=50) for i in ids]
    whole = bpe.encode(docs[0].text) + [bpe.eot_id] + bpe.encode(docs[1].text) + [bpe.eot_id]
    assert chunked == whole


def test_shard_dtype_widens_for_big_vocabularies():
    assert _shard_dtype(65536) == np.uint16 and _shard_dtype(65537) == np.uint32


def test_paths_and_documents_give_the_same_shards(tmp_path, tok):
    write_jsonl(tmp_path / "c.jsonl", [{"text": d.text} for d in corpus(30)])
    meta = prepare_corpus(tmp_path / "c.jsonl", tok, tmp_path / "a")
    prepare_corpus(list(iter_documents(tmp_path / "c.jsonl")), tok, tmp_path / "b")
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    assert meta["sources"] == [str(tmp_path / "c.jsonl")]


def test_documents_can_be_a_generator_but_not_mixed_with_paths(tmp_path, tok):
    meta = prepare_corpus((d for d in corpus(30)), tok, tmp_path / "gen")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 30
    with pytest.raises(ValueError, match="got str among Documents; pass either paths or Documents"):
        prepare_corpus([Document("x"), "a.txt"], tok, tmp_path / "mixed")
    assert hash(Document("x", meta={"a": 1})) == hash(Document("x"))


def test_failed_prepare_leaves_out_dir_untouched(tmp_path, tok):
    out = tmp_path / "out"
    prepare_corpus(corpus(20), tok, out)
    before = files_of(out)
    # Bad input: fails while reading.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"body": "x"}])
    with pytest.raises(ValueError, match="line 2"):
        prepare_corpus(bad, tok, out)
    assert files_of(out) == before
    # A full disk: fails while writing train.bin (RLIMIT_FSIZE makes write() fail with EFBIG).
    resource = pytest.importorskip("resource")
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ,
                                                                                       signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old_limit[1]))
        with pytest.raises(OSError):
            prepare_corpus(corpus(300), tok, out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert files_of(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out"]  # no temp folders left


def test_prepare_refuses_to_replace_a_folder_it_did_not_write(tmp_path, tok):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"data: exists and is not a shards folder \(no meta.json\)"):
        prepare_corpus([Document("x" * 100)], tok, tmp_path / "data")
    assert (tmp_path / "data" / "mine.txt").read_text() == "precious"


def test_load_shards_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match=r"meta\.json: not found; run `rlfl data prepare"):
        load_shards(tmp_path)
    prepare_corpus(corpus(20), tok, tmp_path / "out")
    train = tmp_path / "out" / "train.bin"
    train.write_bytes(train.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"train\.bin: \d+ bytes but .*meta\.json says \d+ uint16 tokens"):
        load_shards(tmp_path / "out")


def test_fingerprint_mismatch(tmp_path, tok, bpe):
    prepare_corpus(corpus(20), tok, tmp_path / "shards")
    shards = load_shards(tmp_path / "shards")
    shards.check_tokenizer(byte_tokenizer())  # same tokenization: fine
    with pytest.raises(ValueError) as e:
        shards.check_tokenizer(bpe, tokenizer_source="ckpt/base")
    msg = str(e.value)
    assert msg == (f"{tmp_path / 'shards' / 'meta.json'}: tokenized with 'bytes' (fingerprint "
                   f"{tok.fingerprint[:8]}…) but the checkpoint uses '{bpe.name}' ({bpe.fingerprint[:8]}…); "
                   "re-run `rlfl data prepare` with --tokenizer ckpt/base")


def test_single_document_split_snaps_to_a_line(tmp_path, tok):
    text = "".join(f"line {i:03d}\n" for i in range(100))
    meta = prepare_corpus([Document(text)], tok, tmp_path / "out", val_fraction=0.25)
    shards = load_shards(tmp_path / "out")
    [train], [val] = split_docs(tok, shards.train), split_docs(tok, shards.val)
    assert train + val == clean_text(text) and train.endswith("\n") and val == clean_text(text)[len(train):]
    assert abs(len(train) - 0.75 * len(clean_text(text))) <= 9 and meta["split_mode"] == "single-document"


def test_tinyshakespeare_90_10(tmp_path, tok):
    path = SHARED / "tinyshakespeare" / "input.txt"
    if not path.exists():
        pytest.skip("../shared/data not present")
    meta = prepare_corpus(path, tok, tmp_path / "shk")
    shards = load_shards(tmp_path / "shk")
    [train], [val] = split_docs(tok, shards.train), split_docs(tok, shards.val)
    full = clean_text(path.read_text())
    assert train + val == full and train.endswith("\n") and not val.startswith("\n")
    assert abs(len(train) / len(full) - 0.9) < 1e-3
    assert meta["splits"]["train"]["tokens"] == len(train) + 1 and meta["splits"]["val"]["bytes"] == len(val)


# ---------------------------------------------------------------------------------------- sampler
def test_sampler_shapes_shift_and_determinism():
    data = np.arange(10_000, dtype=np.uint16)
    s = BatchSampler(data, block_size=16, batch_size=8, seed=5)
    x, y = s.batch(3)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x[:, 0] + 15, x[:, -1])  # contiguous windows of the data
    # Resuming at step 3 with a fresh sampler draws exactly the same batch as an uninterrupted run.
    again = BatchSampler(data, block_size=16, batch_size=8, seed=5)
    x2, y2 = again.batch(3)
    assert torch.equal(x2, x) and torch.equal(y2, y)
    assert not torch.equal(s.batch(4)[0], x)
    assert not torch.equal(BatchSampler(data, 16, 8, seed=6).batch(3)[0], x)
    ranks = [BatchSampler(data, 16, 8, seed=5, rank=r, world_size=2).batch(3)[0] for r in (0, 1)]
    assert torch.equal(ranks[0], x) and not torch.equal(ranks[0], ranks[1])


def test_sampler_covers_the_last_token():
    data = np.arange(11, dtype=np.uint32)
    s = BatchSampler(data, block_size=10, batch_size=4, seed=0)
    x, y = s.batch(0)
    assert torch.equal(x[0], torch.arange(10)) and torch.equal(y[0], torch.arange(1, 11))


def test_sampler_errors():
    with pytest.raises(ValueError) as e:
        BatchSampler(np.zeros(40, np.uint16), block_size=64, batch_size=2, split="val")
    assert str(e.value) == "val split has 40 tokens, fewer than block_size+1=65; lower --block-size or add data"
    with pytest.raises(ValueError, match="rank=2 must be in"):
        BatchSampler(np.zeros(400, np.uint16), 8, 2, rank=2, world_size=2)


def test_sampler_on_memmapped_shards(tmp_path, tok):
    prepare_corpus(corpus(50), tok, tmp_path / "out")
    shards = load_shards(tmp_path / "out")
    x, y = BatchSampler(shards.train, 32, 4, seed=0).batch(0)
    starts = BatchSampler(shards.train, 32, 4, seed=0).starts(0)
    assert torch.equal(x[1], torch.from_numpy(shards.train[starts[1]:starts[1] + 32].astype(np.int64)))
    assert int(x.max()) < tok.n_vocab


def test_a_killed_prepare_leaves_no_temp_folder_behind_the_next_run(tmp_path):
    import subprocess
    import sys
    import time

    text = tmp_path / "big.txt"
    text.write_text("\n\n".join(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 40
                                for i in range(20000)))
    cmd = [sys.executable, "-m", "rlfl", "data", "prepare", "--input", str(text), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.tmp-*/train.bin")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(".out.tmp-*"))
    assert left and not (tmp_path / "out").exists(), "the run finished before it could be killed mid-write"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "out"]  # the killed run's folder is gone
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["splits"]["train"]["tokens"] > 0

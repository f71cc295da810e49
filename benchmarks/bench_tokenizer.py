"""Benchmark our BPE trainer and the tiktoken-backed tokenizers on real text (IMDB reviews).

Prints: training wall-clock for a 4,096-token vocabulary on ~10 MB of text (target: <= 60 s on 2 cores),
the compression (UTF-8 bytes per token) on held-out reviews for the trained BPE, GPT-2 and raw bytes, and
tiktoken's encode throughput (MB/s) for each.

    python benchmarks/bench_tokenizer.py                 # 10 MB, vocab 4096, 2 workers
    python benchmarks/bench_tokenizer.py --mb 2 --vocab-size 1024 --num-workers 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import time
from pathlib import Path

from rlfl.tokenizer import Tokenizer, byte_tokenizer, gpt2_tokenizer, train_bpe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMDB_TRAIN = DATA / "imdb" / "imdb_train.jsonl.gz"
IMDB_TEST = DATA / "imdb" / "imdb_test.jsonl.gz"
GPT2_RANKS = DATA / "tokenizers" / "gpt2" / "r50k_base.tiktoken"


def read_reviews(path: Path, n_bytes: int) -> list[str]:
    """The first reviews of an IMDB jsonl.gz file, up to about ``n_bytes`` of UTF-8 text.

    The file is sorted positive-then-negative, so we take every review in file order until the budget is
    spent, interleaving the two halves to get both sentiments' vocabulary.
    """
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line)["text"] for line in f]
    half = len(rows) // 2
    interleaved = [r for pair in zip(rows[:half], rows[half:]) for r in pair]
    out, total = [], 0
    for text in interleaved:
        if total >= n_bytes:
            break
        out.append(text)
        total += len(text.encode("utf-8"))
    return out


def measure(tok: Tokenizer, texts: list[str], repeats: int = 3) -> tuple[float, float]:
    """(bytes per token, encode MB/s with 2 threads; best of ``repeats``) on ``texts``."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = tok.encode_batch(texts, num_threads=2)
        best = min(best, time.perf_counter() - t0)
    n_tokens = sum(len(x) for x in ids)
    return n_bytes / n_tokens, n_bytes / best / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=10.0, help="MB of training text")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size, special tokens included")
    p.add_argument("--num-workers", type=int, default=2, help="pre-tokenization processes")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not IMDB_TRAIN.is_file():
        print(f"skipped: {IMDB_TRAIN} is absent (the benchmark needs ../shared/data beside the repo)")
        return 0

    train = read_reviews(IMDB_TRAIN, int(args.mb * 1e6))
    held_out = read_reviews(IMDB_TEST, int(2e6)) if IMDB_TEST.is_file() else train[-500:]
    n_train = sum(len(t.encode("utf-8")) for t in train)
    print(f"training text: {len(train)} IMDB reviews, {n_train / 1e6:.1f} MB")

    t0 = time.perf_counter()
    bpe = train_bpe(train, args.vocab_size, num_workers=args.num_workers)
    seconds = time.perf_counter() - t0
    print(f"train_bpe vocab {bpe.n_vocab} on {n_train / 1e6:.1f} MB with {args.num_workers} workers: {seconds:.1f} s")

    tokenizers = [("bpe", bpe), ("bytes", byte_tokenizer())]
    if GPT2_RANKS.is_file():
        tokenizers.append(("gpt2", gpt2_tokenizer(GPT2_RANKS)))
    n_held = sum(len(t.encode("utf-8")) for t in held_out)
    print(f"held-out text: {len(held_out)} reviews, {n_held / 1e6:.1f} MB")
    for label, tok in tokenizers:
        bpt, mbs = measure(tok, held_out)
        print(f"{label:6s} n_vocab {tok.n_vocab:6d}  {bpt:5.2f} bytes/token  encode {mbs:6.1f} MB/s (2 threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

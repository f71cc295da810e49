"""Our byte-level BPE trainer: learns tiktoken-style ranks (token bytes -> rank) from raw text.

Use it through `rlfl.tokenizer.train_bpe`, which validates the vocabulary size, appends the special tokens
and wraps the ranks as a `tiktoken.Encoding`; this module only learns the ranks.

Two phases:

1. Pre-tokenize with the regex (GPT-2's by default) and count unique pre-tokens. BPE never merges across
   pre-token boundaries, so a 10 MB corpus shrinks to ~100k distinct words with counts, and the merge
   phase works on those. The regex is the slow part of this phase, so it runs in a process pool over
   chunks of about `chunk_size` characters. Chunk boundaries depend only on the text (never on the number
   of workers), and a long text is cut only after a newline with non-space on both sides, where the GPT-2
   pattern would split anyway; so the counts equal those of pre-tokenizing every text whole.
2. Merge. The classic loop recounts all pairs after every merge, O(corpus) per merge; we keep
   pair -> count and pair -> set of words containing it, and after a merge touch only the words that held
   the merged pair. The most frequent pair comes from a heap with lazy invalidation: every pair's heap
   entry is >= its true count (counts of old pairs only fall; pairs that grow are the ones holding the new
   token, and those get a fresh entry), so a popped entry whose count is stale is re-pushed with the true
   count, and a popped entry whose count is current is the true maximum. Ties go to the smallest
   (left id, right id), which makes training deterministic.

A merge whose bytes already exist as a token (b"ab"+b"c" after b"a"+b"bc") reuses that token's rank
instead of adding a duplicate: tiktoken keys ranks by bytes, so a duplicate could not even be stored.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import multiprocessing
import time
from collections import Counter
from typing import Iterable, Iterator

import regex

logger = logging.getLogger(__name__)

MAX_VOCAB_SIZE = 32_768

# A safe place to cut a long text: just after "\n" with non-whitespace on both sides. No GPT-2 pre-token
# spans it (only whitespace runs can contain "\n", and this one is a run of length one either way).
_SAFE_CUT = regex.compile(r"(?<=\S\n)(?=\S)")


def learn_bpe_ranks(
    texts: Iterable[str],
    n_ranks: int,
    *,
    pat_str: str,
    num_workers: int = 2,
    progress: bool = False,
    chunk_size: int = 1 << 20,
) -> dict[bytes, int]:
    """Learn up to ``n_ranks`` mergeable ranks (256 single bytes first, then merges in order) from ``texts``.

    Example:
        >>> ranks = learn_bpe_ranks(["aaab aaab"], 258, pat_str=r"\\S+|\\s", num_workers=1)
        >>> sorted(ranks.items(), key=lambda kv: kv[1])[256:]
        [(b'aa', 256), (b'ab', 257)]
    """
    if n_ranks < 256:
        raise ValueError(f"n_ranks {n_ranks} is below 256; a byte-level BPE needs all 256 byte tokens")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t0 = time.perf_counter()
    counts = count_pretokens(texts, pat_str, num_workers=num_workers, chunk_size=chunk_size)
    t1 = time.perf_counter()
    logger.info("pre-tokenized into %d distinct pre-tokens in %.1fs", len(counts), t1 - t0)
    ranks = merge_pretokens(counts, n_ranks, progress=progress)
    logger.info("learned %d merges in %.1fs", len(ranks) - 256, time.perf_counter() - t1)
    return ranks


# -------------------------------------------------------------------- phase 1: pre-token counts
def count_pretokens(
    texts: Iterable[str], pat_str: str, *, num_workers: int = 2, chunk_size: int = 1 << 20
) -> Counter[str]:
    """Count the distinct pre-tokens (regex matches) of ``texts``, in ``num_workers`` processes."""
    try:
        regex.compile(pat_str)
    except regex.error as e:
        raise ValueError(f"pat_str is not a valid regex ({e}); pass a pattern the 'regex' package accepts") from None
    chunks = _chunks(texts, chunk_size)
    first = next(chunks, [])
    second = next(chunks, None)
    total: Counter[str] = Counter()
    if num_workers <= 1 or second is None:  # a pool costs ~0.5 s to start: not worth it for one chunk
        for chunk in itertools.chain([first], [] if second is None else [second], chunks):
            total.update(_count_chunk((pat_str, chunk)))
        return total
    jobs = ((pat_str, chunk) for chunk in itertools.chain([first, second], chunks))
    # spawn, not fork: the caller may have torch's thread pools running, and forking a multi-threaded
    # process can deadlock. Spawned workers import this module and re-import the caller's main script, so a
    # script calling this with num_workers > 1 needs the usual `if __name__ == "__main__":` guard.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        for counts in pool.imap(_count_chunk, jobs):
            total.update(counts)
    return total


@functools.lru_cache(maxsize=4)
def _compiled(pat_str: str) -> regex.Pattern:
    return regex.compile(pat_str)


def _count_chunk(job: tuple[str, list[str]]) -> Counter[str]:
    pat_str, pieces = job
    findall = _compiled(pat_str).findall
    counts: Counter[str] = Counter()
    for piece in pieces:
        counts.update(findall(piece))
    return counts


def _chunks(texts: Iterable[str], chunk_size: int) -> Iterator[list[str]]:
    """Group texts into lists of about ``chunk_size`` characters, cutting long texts at safe newlines."""
    buf: list[str] = []
    size = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts item {i}: expected str, got {type(text).__name__}; pass an iterable of strings")
        for piece in _split_long(text, chunk_size):
            buf.append(piece)
            size += len(piece)
            if size >= chunk_size:
                yield buf
                buf, size = [], 0
    if buf:
        yield buf


def _split_long(text: str, chunk_size: int) -> Iterator[str]:
    start = 0
    while len(text) - start > chunk_size:
        m = _SAFE_CUT.search(text, start + chunk_size)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    yield text[start:]


# -------------------------------------------------------------------- phase 2: merges
def merge_pretokens(counts: dict[str, int], n_ranks: int, *, progress: bool = False) -> dict[bytes, int]:
    """Run BPE merges over pre-token counts until there are ``n_ranks`` tokens (or no pair is left)."""
    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    rank_of: dict[bytes, int] = {tok: i for i, tok in enumerate(vocab)}

    # Words as tuples of token ids; single-byte pre-tokens can never merge, so they are dropped.
    words: list[tuple[int, ...]] = []
    freqs: list[int] = []
    for text, n in counts.items():
        b = text.encode("utf-8")
        if len(b) > 1:
            words.append(tuple(b))
            freqs.append(n)

    pair_count: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], set[int]] = {}
    for wi, w in enumerate(words):
        f = freqs[wi]
        for pair in zip(w, w[1:]):
            pair_count[pair] = pair_count.get(pair, 0) + f
            s = pair_words.get(pair)
            if s is None:
                pair_words[pair] = {wi}
            else:
                s.add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_ranks - 256, desc="bpe merges", unit="merge")
    while len(vocab) < n_ranks and heap:
        neg, a, b = heapq.heappop(heap)
        best = (a, b)
        c = pair_count.get(best, 0)
        if c != -neg:  # stale entry: re-queue with the true count (if the pair still exists)
            if c > 0:
                heapq.heappush(heap, (-c, a, b))
            continue
        merged = vocab[a] + vocab[b]
        new_id = rank_of.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            rank_of[merged] = new_id
            if bar is not None:
                bar.update(1)
        grown = _apply_merge(best, new_id, words, freqs, pair_count, pair_words)
        for pair in grown:
            c = pair_count.get(pair, 0)
            if c > 0:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
    if bar is not None:
        bar.close()
    if len(vocab) < n_ranks:
        logger.warning(
            "bpe: the corpus ran out of pairs to merge at %d tokens (asked for %d); use more text", len(vocab), n_ranks
        )
    return {tok: i for i, tok in enumerate(vocab)}


def _apply_merge(
    best: tuple[int, int],
    new_id: int,
    words: list[tuple[int, ...]],
    freqs: list[int],
    pair_count: dict[tuple[int, int], int],
    pair_words: dict[tuple[int, int], set[int]],
) -> set[tuple[int, int]]:
    """Replace ``best`` by ``new_id`` in every word holding it, updating the pair tables in place.

    Returns the pairs whose counts may have grown (those holding ``new_id``), for the caller to re-queue.
    """
    a, b = best
    grown: set[tuple[int, int]] = set()
    for wi in pair_words.pop(best):
        w = words[wi]
        f = freqs[wi]
        out: list[int] = []
        i, n = 0, len(w)
        while i < n:
            if i + 1 < n and w[i] == a and w[i + 1] == b:
                out.append(new_id)
                i += 2
            else:
                out.append(w[i])
                i += 1
        new = tuple(out)
        words[wi] = new
        old_pairs = list(zip(w, w[1:]))
        new_pairs = list(zip(new, new[1:]))
        for pair in old_pairs:
            pair_count[pair] -= f
        for pair in new_pairs:
            pair_count[pair] = pair_count.get(pair, 0) + f
        old_set, new_set = set(old_pairs), set(new_pairs)
        for pair in old_set - new_set:
            if pair != best:
                pair_words[pair].discard(wi)
            if pair_count[pair] == 0:
                del pair_count[pair]
                pair_words.pop(pair, None)
        for pair in new_set - old_set:
            s = pair_words.get(pair)
            if s is None:
                pair_words[pair] = {wi}
            else:
                s.add(wi)
            grown.add(pair)
    pair_count.pop(best, None)
    return grown

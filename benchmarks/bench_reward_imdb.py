"""Reward model on IMDB: pretrain a small trunk on the train reviews, train it on review pairs, test on held-out pairs.

The whole pipeline, timed end to end (CPU time of this process and its children, and wall-clock):

1. read the 25k IMDB train reviews (``<br />`` cleaned), train a 4,096-token BPE on them;
2. pretrain a small GPT on their text (``rlfl.pretrain``);
3. train the reward model on pairs of one positive and one negative train review (``imdb:`` data, Bradley-
   Terry loss) through ``rlfl.reward.train_reward_model``; reviews longer than ``--block`` tokens keep
   their last ``--block`` tokens (the model's documented left truncation: the end of a review is where its
   verdict usually sits);
4. open the checkpoint with ``load_reward_model`` and report the pair accuracy on pairs of held-out *test*
   reviews (one positive, one negative; chance = 0.5). Target: >= 0.85 within 15 minutes of CPU in all.

Defaults (4 layers x 128 dims, 400 pretraining steps of 16 x 128 tokens, 800 reward steps of 16 pairs, i.e.
about one pass over the 12,250 training pairs) measured on this 2-core machine shared with other jobs: test
pair accuracy 0.9115 on all 12,500 test pairs, 10.6 CPU-minutes (pretrain 2.9, reward model 5.8, scoring
1.9). One torch thread is the default because, with other jobs on the cores, two threads ran a training
step up to 5x slower in both wall and CPU time (the threads wait on each other).

    python benchmarks/bench_reward_imdb.py [--data-dir ../shared/data/imdb] [--threads 1] [--test-pairs 12500]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlfl.data import Document, prepare_corpus
from rlfl.preference_data import imdb_pairs, read_imdb_labels
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.reward import RewardTrainConfig, load_reward_model, train_reward_model
from rlfl.tokenizer import train_bpe
from rlfl.trainer import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"


class Clock:
    """CPU seconds (this process + finished children) and wall seconds, per phase and in total."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = self.cpu(), time.perf_counter()
        self.last = (self.cpu0, self.wall0)

    @staticmethod
    def cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def lap(self, name: str) -> None:
        cpu, wall = self.cpu(), time.perf_counter()
        print(f"  [{name}] cpu {cpu - self.last[0]:.0f}s, wall {wall - self.last[1]:.0f}s "
              f"(total cpu {cpu - self.cpu0:.0f}s, wall {wall - self.wall0:.0f}s)", flush=True)
        self.last = (cpu, wall)

    def total(self) -> tuple[float, float]:
        return self.cpu() - self.cpu0, time.perf_counter() - self.wall0


def pretrain_trunk(texts: list[str], run: Path, args: argparse.Namespace, *, source: str) -> Path:
    """Train a BPE of ``args.vocab`` tokens on ``texts``, shard them and pretrain a small GPT; its checkpoint dir."""
    tok = train_bpe(texts, args.vocab, num_workers=1)  # in-process, so this process's CPU time counts it
    prepare_corpus((Document(t, source) for t in texts), tok, run / "shards", val_fraction=0.01, clean=False, seed=0)
    pretrain(PretrainConfig(
        data=str(run / "shards"), n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
        block_size=args.block, sample_tokens=0,
        train=TrainConfig(out_dir=str(run / "base"), max_steps=args.pretrain_steps, batch_size=args.pretrain_batch,
                          lr=2e-3, min_lr=2e-4, warmup_steps=30, eval_interval=0, eval_steps=5,
                          checkpoint_interval=0, **common_train(args))))
    return run / "base"


def common_train(args: argparse.Namespace) -> dict:
    return {"num_threads": args.threads, "progress": False, "resume": False, "log_interval": 50, "seed": 0}


def add_model_args(ap: argparse.ArgumentParser, *, block: int, pretrain_steps: int, rm_steps: int,
                   rm_lr: float) -> None:
    """The trunk, pretraining and reward-training knobs both reward benchmarks share."""
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size (incl. special tokens)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block", type=int, default=block, help="context = tokens kept per text (its last ones)")
    ap.add_argument("--pretrain-steps", type=int, default=pretrain_steps)
    ap.add_argument("--pretrain-batch", type=int, default=16)
    ap.add_argument("--rm-steps", type=int, default=rm_steps)
    ap.add_argument("--rm-batch", type=int, default=16, help="pairs per step")
    ap.add_argument("--rm-lr", type=float, default=rm_lr, help="peak learning rate of the reward model")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is the most CPU-efficient on a shared machine)")
    ap.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")


def reward_config(args: argparse.Namespace, run: Path, base: Path, data: str, **kw) -> RewardTrainConfig:
    return RewardTrainConfig(
        init_from=str(base), data=data, block_size=args.block, stats_samples=512, **kw,
        train=TrainConfig(out_dir=str(run / "rm"), max_steps=args.rm_steps, batch_size=args.rm_batch, lr=args.rm_lr,
                          min_lr=args.rm_lr / 10, warmup_steps=30, weight_decay=0.1, eval_interval=0, eval_steps=8,
                          checkpoint_interval=0, **common_train(args)))


def held_out_pair_accuracy(rm: Path, pairs: list) -> tuple[float, float]:
    """Pair accuracy of the saved reward model (through ``load_reward_model``) and its 95% half-interval."""
    scorer = load_reward_model(rm)
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs])
    rejected = scorer.score(prompts, [p.rejected for p in pairs])
    acc = float(np.mean(chosen > rejected))
    return acc, 1.96 * math.sqrt(acc * (1 - acc) / len(pairs))


def val_accuracy(rm: Path) -> float:
    """The pair accuracy on the training run's own validation split, as recorded in config.json."""
    return json.loads((rm / "config.json").read_text())["reward"].get("val_accuracy", float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder with imdb_train/test.jsonl.gz")
    add_model_args(ap, block=128, pretrain_steps=400, rm_steps=800, rm_lr=1e-3)
    ap.add_argument("--test-pairs", type=int, default=12500, help="held-out test pairs scored (12,500 = all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir = Path(args.data_dir)
    train_file, test_file = data_dir / "imdb_train.jsonl.gz", data_dir / "imdb_test.jsonl.gz"
    for f in (train_file, test_file):
        if not f.exists():
            raise SystemExit(f"{f}: not found; pass --data-dir path/to/shared/data/imdb")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores visible, "
          f"load average {os.getloadavg()[0]:.1f} (other jobs share this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out or tmp)
        clock = Clock()
        texts = [e.text for e in read_imdb_labels(train_file).examples]
        base = pretrain_trunk(texts, run, args, source=str(train_file))
        clock.lap(f"read 25k train reviews, BPE {args.vocab}, shards, pretrain {args.pretrain_steps} steps x "
                  f"{args.pretrain_batch} x {args.block} tokens")
        rm = train_reward_model(reward_config(args, run, base, f"imdb:{train_file}", val_fraction=0.02))
        clock.lap(f"reward model: {args.rm_steps} steps x {args.rm_batch} pairs")
        pairs = imdb_pairs(test_file, seed=0).pairs[: args.test_pairs]
        acc, half_ci = held_out_pair_accuracy(rm, pairs)
        clock.lap(f"score {len(pairs)} test pairs")
        cpu, wall = clock.total()
        print(f"IMDB reward model: test pair accuracy {acc:.4f} +- {half_ci:.4f} (95% CI) on {len(pairs)} held-out "
              f"pairs (chance 0.5; target >= 0.85) | CPU {cpu / 60:.1f} min (target <= 15) | wall {wall / 60:.1f} min")
        print(f"  trunk {args.n_layer} layers x {args.n_embd} dims, BPE {args.vocab}, the last {args.block} tokens "
              f"of each review; val pair accuracy (2% of train pairs) {val_accuracy(rm):.4f}")


if __name__ == "__main__":
    main()

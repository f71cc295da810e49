"""Best-of-n with the reward model on the synthetic task: the gold-vs-KL frontier PPO is measured against.

Best-of-n (sample n completions from the SFT policy, keep the one the reward model scores highest) is the
simplest way to spend KL on a reward model, and its KL to the policy is known without sampling: at most
``log n - (n - 1) / n`` nats per completion. This script prints, for n = 1, 2, 4, ... up to ``--n``:

- the gold positive rate and mean gold score of the reward model's pick (what PPO's
  ``benchmarks/bench_ppo_learning.py`` reports, on the same held-out prompts with the same split);
- the gold judge's own pick (an oracle: how much the samples allow at that n).

Where PPO lands well below this frontier at the same KL, the PPO run (not the reward model) is what
wastes KL; where both stall at the same gold rate, the reward model's precision on its top scores is the
limit.

    python benchmarks/bench_best_of_n.py [--task-dir runs/synthetic_task] [--n 64] [--prompts 256]

Measured (2 cores, the default task: reward model on 12k pairs, held-out accuracy 0.915; 256 prompts, 64
samples each, 36 s): n=4 (KL <= 0.64 nats) 0.620, n=16 (1.84) 0.811, n=32 (2.50) 0.867, n=64 (3.17)
0.898, from 0.340 at n=1; the oracle reaches 0.992 at n=64. PPO on the same reward model needed ~6 nats
for 0.896 (bench_ppo_learning.py), so PPO spends about twice best-of-n's KL for the same gold rate.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import torch
from rlfl.agents.train import split_prompts
from rlfl.agents.vec_env import make_text_vec_env
from rlfl.envs.rewards import GoldSentiment, as_reward_source

from rlfl.checkpoint import load_checkpoint
from rlfl.synthetic_task import SyntheticTaskConfig, _sample, prepare_synthetic_task


def sample_completions(sft: str, prompts: list[str], n: int, seed: int, max_new_tokens: int) -> list[str]:
    """``n`` plain-softmax chat completions per prompt (prompt-major), stopped at ``<|end|>`` as the env does:
    the sampler that draws the reward model's preference pairs."""
    policy = load_checkpoint(sft)
    return _sample(policy, [p for p in prompts for _ in range(n)], seed=seed, max_new_tokens=max_new_tokens,
                   temperature=1.0, chat=True, batch_size=512).completions


def frontier(proxy: np.ndarray, gold: np.ndarray) -> list[dict[str, float]]:
    """Best-of-n figures for n = 1, 2, 4, ... from (prompts, samples) score grids; each n uses every
    disjoint group of n samples of a prompt, so small n average over many draws."""
    rows, total = proxy.shape
    out, n = [], 1
    while n <= total:
        groups = total // n
        p = proxy[:, : groups * n].reshape(rows, groups, n)
        g = gold[:, : groups * n].reshape(rows, groups, n)
        pick = np.take_along_axis(g, p.argmax(-1)[..., None], -1)[..., 0]
        out.append({"n": n, "kl_bound": math.log(n) - (n - 1) / n, "gold_positive_rate": float(np.mean(pick > 0)),
                    "gold_mean": float(pick.mean()), "oracle_positive_rate": float(np.mean(g.max(-1) > 0))})
        n *= 2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task-dir", default="runs/synthetic_task", help="where the SFT policy and reward model live")
    ap.add_argument("--n", type=int, default=64, help="samples per prompt (the largest n)")
    ap.add_argument("--prompts", type=int, default=256, help="held-out prompts (the first of PPO's evaluation split)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.n < 1 or args.prompts < 1:
        raise SystemExit("--n and --prompts must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    task = prepare_synthetic_task(args.task_dir, SyntheticTaskConfig(seed=args.seed, num_threads=args.threads,
                                                                     progress=False))
    pool = make_text_vec_env("rlfl/SyntheticReviews-v0", 1, tokenizer=str(task.sft)).inner._batch.pool
    # bench_ppo_learning.py holds out 512 prompts with this split; its first --prompts are used here
    _, held = split_prompts(pool.texts, pool._sampler, max(512, args.prompts), args.seed)
    prompts = held[: args.prompts]
    t0 = time.perf_counter()
    texts = sample_completions(str(task.sft), prompts, args.n, args.seed, SyntheticTaskConfig().max_new_tokens)
    repeated = [p for p in prompts for _ in range(args.n)]
    proxy = np.asarray(as_reward_source(str(task.reward_model)).score(repeated, texts)).reshape(len(prompts), args.n)
    gold = np.asarray(GoldSentiment().score(repeated, texts)).reshape(len(prompts), args.n)
    print(f"{len(texts)} completions sampled and scored in {time.perf_counter() - t0:.0f}s "
          f"({len(prompts)} prompts x {args.n}); reward model held-out accuracy {task.figures['rm_val_accuracy']:.3f}")
    print(f"{'n':>4} {'KL<=':>6} {'gold+ (RM pick)':>16} {'gold mean':>10} {'gold+ (oracle)':>15}")
    for row in frontier(proxy, gold):
        print(f"{row['n']:>4} {row['kl_bound']:>6.2f} {row['gold_positive_rate']:>16.3f} {row['gold_mean']:>10.3f} "
              f"{row['oracle_positive_rate']:>15.3f}")


if __name__ == "__main__":
    main()

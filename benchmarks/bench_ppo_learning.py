"""PPO/GRPO/RLOO/online DPO/DPO learning check: raise the GOLD positive rate of a small SFT policy to >= 0.9 at KL <= 6 nats.

The learning target, end to end on the built-in task `rlfl/SyntheticReviews-v0`:

1. `rlfl.synthetic_task.prepare_synthetic_task` builds (or reuses, in ``--task-dir``) the starting point:
   a byte-level base pretrained on synthetic reviews, a chat SFT policy that continues a review's first
   words and stops with ``<|end|>``, preference pairs of that policy's samples labelled by the gold judge,
   and a reward model trained on them. Its time is printed but is not part of the PPO budget.
2. PPO (`rlfl.agents.train.train_ppo`, what ``rlfl ppo`` runs), or with ``--algorithm grpo|rloo`` GRPO or
   RLOO (``rlfl grpo``/``rlfl rloo``: groups of ``--group-size`` completions per prompt, no critic), or with
   ``--algorithm online_dpo`` online DPO (``rlfl online-dpo``: DPO's loss on each group's best and worst
   completion, ``--soft-preferences`` for labels sigmoid(reward difference)), trains the SFT policy against
   the **reward model** (the learned proxy), never the gold judge. With
   ``--algorithm dpo``, DPO (`rlfl.dpo`, what ``rlfl dpo`` runs) trains it on the task's preference pairs
   (the ones the reward model learnt from) instead, with no reward model and no sampling.
3. The gold judge (`GoldSentiment`, the generator's own lexicon and rules) scores samples on held-out
   prompts before and after, with the KL to the reference: the figures of the acceptance point.

    python benchmarks/bench_ppo_learning.py [--task-dir runs/synthetic_task] [--out runs/ppo_learning]
                                            [--timesteps 409600] [--lr 1.5e-4] [--lr-schedule linear]
                                            [--kl-coef 0.14] [--kl-target 5.5] [--threads 2]
                                            [--algorithm grpo --group-size 4 --loss-agg dapo ...]
                                            [--algorithm online_dpo --dpo-beta 0.1 --soft-preferences ...]
                                            [--algorithm dpo --dpo-beta 0.1 --dpo-steps 600 --dpo-lr 1e-4]
    torchrun --standalone --nproc_per_node=N benchmarks/bench_ppo_learning.py --threads 1 ...  # data-parallel

Prints the task preparation time, PPO's time and tokens/s, the gold positive rate and mean before -> after,
the final KL, reference perplexity and length, and every gold evaluation of the run (eval.csv); the
``bench_ppo_learning`` section of benchmarks/RESULTS.md (``bench_ppo_learning_grpo``, ``..._rloo``,
``..._online_dpo`` for the others) gets the gold rate @ KL at each quarter with the machine it ran on.

Why the defaults: the learning rate decays linearly to 0 (with a constant rate the KL that update noise
adds never drains, and the gold rate levels off lower at a higher KL); the value head learns at 100x the
policy's rate (a zero-initialised linear head at the policy's rate explains ~0 % of the returns for dozens
of rollouts); adaptive KL starts at beta 0.14, high enough that the early updates do not overshoot the
target. benchmarks/bench_best_of_n.py puts the result in context: best-of-n sampling with the same reward
model reaches a similar gold rate at about half the KL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rlfl.agents.callbacks import read_eval_csv
from rlfl.agents.train import GRPOConfig, OnlineDPOConfig, PPOConfig, RLOOConfig, train_ppo
from rlfl.compare_report import ALGORITHM_NAMES
from rlfl.synthetic_task import SyntheticTaskConfig, prepare_synthetic_task
from results import record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task-dir", default="runs/synthetic_task", help="where the SFT policy and reward model live")
    ap.add_argument("--algorithm", choices=("ppo", "grpo", "rloo", "online_dpo", "dpo"), default="ppo", help="what trains the policy")
    ap.add_argument("--dpo-beta", type=float, default=0.1, help="DPO, online DPO: beta of the loss")
    ap.add_argument("--dpo-loss", default="sigmoid", help="DPO, online DPO: sigmoid | ipo")
    ap.add_argument("--soft-preferences", action=argparse.BooleanOptionalAction, default=True,
                    help="online DPO: label pairs with sigmoid(reward difference) (--no-soft-preferences: 1)")
    ap.add_argument("--dpo-steps", type=int, default=600, help="DPO: optimizer steps")
    ap.add_argument("--dpo-batch-size", type=int, default=32, help="DPO: pairs per step")
    ap.add_argument("--dpo-lr", type=float, default=1e-4, help="DPO: peak learning rate (cosine to a tenth)")
    ap.add_argument("--group-size", type=int, default=None,
                    help="GRPO/RLOO/online DPO: completions per prompt (default: 4; online DPO's 2)")
    ap.add_argument("--advantage", default=None, help="GRPO/RLOO: grpo | dr_grpo | rloo (default: the algorithm's)")
    ap.add_argument("--loss-agg", default="grpo", help="GRPO/RLOO: grpo | dapo | dr_grpo")
    ap.add_argument("--clip-range-high", type=float, default=None, help="GRPO/RLOO: upper ratio clip (clip-higher)")
    ap.add_argument("--kl-penalty", default=None, help="GRPO/RLOO: loss | reward (default: the algorithm's)")
    ap.add_argument("--out", default="runs/ppo_learning", help="PPO output directory (a fresh run each time)")
    ap.add_argument("--timesteps", type=int, default=409600, help="PPO tokens to train on")
    ap.add_argument("--kl-coef", type=float, default=0.14, help="beta (the adaptive controller's starting value)")
    ap.add_argument("--lr", type=float, default=1.5e-4, help="the policy's learning rate (the start of the schedule)")
    ap.add_argument("--lr-schedule", default="linear", help="constant | linear | cosine (decay to 0 at the end)")
    ap.add_argument("--vf-coef", type=float, default=0.1, help="weight of the value loss")
    ap.add_argument("--value-lr-scale", type=float, default=100.0, help="value head learning rate / policy's")
    ap.add_argument("--ent-coef", type=float, default=0.0, help="entropy bonus weight")
    ap.add_argument("--gae-lambda", type=float, default=0.95, help="GAE lambda")
    ap.add_argument("--clip-range-vf", type=lambda s: None if s.lower() == "none" else float(s), default=0.2,
                    help="value clip around the rollout's values ('none': unclipped value loss)")
    ap.add_argument("--n-envs", type=int, default=32, help="parallel episodes (rows) per rollout")
    ap.add_argument("--n-steps", type=int, default=32, help="tokens per row per rollout")
    ap.add_argument("--batch-size", type=int, default=512, help="tokens per PPO minibatch")
    ap.add_argument("--epochs", type=int, default=4, help="PPO epochs per rollout")
    ap.add_argument("--adaptive-kl", action=argparse.BooleanOptionalAction, default=True,
                    help="adapt beta to keep the KL near --kl-target (--no-adaptive-kl: fixed beta)")
    ap.add_argument("--kl-target", type=float, default=5.5, help="nats per completion (adaptive KL)")
    ap.add_argument("--kl-horizon", type=int, default=3000,
                    help="adaptive KL: completions over which a clipped log error moves log(beta) by itself")
    ap.add_argument("--reward-clip", type=float, default=None,
                    help="clip the reward model's (normalised) scores to [-x, x] (default: no clip)")
    ap.add_argument("--logsigmoid-reward", type=float, default=None,
                    help="centre c of the log-sigmoid reward transform log(sigmoid(score - c)) (default: none)")
    ap.add_argument("--precision", default="float32", help="float32 | bfloat16 | auto")
    ap.add_argument("--eval-prompts", type=int, default=512, help="held-out prompts for the gold evaluation")
    ap.add_argument("--eval-samples", type=int, default=2, help="completions per evaluation prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the task (its --task-dir records it) and of PPO")
    ap.add_argument("--ppo-seed", type=int, default=None,
                    help="PPO's own seed (default: --seed): replicate PPO runs on one prepared task")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("rlfl.envs.text_env", "rlfl.checkpoint"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    # under torchrun: --n-envs and --batch-size are the totals, split over the processes (the same rollout and
    # minibatches as one process), and rank 0 prepares the task while the others wait
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if ranks > 1:
        if args.n_envs % ranks or args.batch_size % ranks:
            raise SystemExit(f"--n-envs {args.n_envs} and --batch-size {args.batch_size} must divide by the {ranks} "
                             "processes")
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    t0 = time.perf_counter()
    task_cfg = SyntheticTaskConfig(seed=args.seed, num_threads=args.threads, progress=False)
    if rank == 0:
        task = prepare_synthetic_task(args.task_dir, task_cfg)
    prep_s = time.perf_counter() - t0
    if ranks > 1:
        dist.barrier()
        if rank:
            task = prepare_synthetic_task(args.task_dir, task_cfg)  # reuses rank 0's
    out = Path(args.out)
    if args.algorithm == "dpo":
        dpo_and_report(args, task, out, prep_s)
        return
    out = Path(args.out)
    if (out / "ppo_resume.pt").exists():
        raise SystemExit(f"{out}: holds an earlier run; pass a new --out (this benchmark times a fresh run)")
    config, extra = PPOConfig, {}
    if args.algorithm == "online_dpo":
        config = OnlineDPOConfig
        extra = dict(beta=args.dpo_beta, loss_type=args.dpo_loss, soft_preferences=args.soft_preferences)
    elif args.algorithm != "ppo":
        config = GRPOConfig if args.algorithm == "grpo" else RLOOConfig
        extra = dict(loss_agg=args.loss_agg, clip_range_high=args.clip_range_high)
        extra |= {"advantage": args.advantage} if args.advantage is not None else {}
    if args.algorithm != "ppo":  # unset: the algorithm's own default
        extra |= {k: v for k, v in (("group_size", args.group_size), ("kl_penalty", args.kl_penalty)) if v is not None}
    cfg = config(init_from=str(task.sft), reward=str(task.reward_model), chat_template=True, out_dir=str(out),
                    total_timesteps=args.timesteps, n_envs=args.n_envs // ranks, n_steps=args.n_steps,
                    batch_size=args.batch_size // ranks, n_epochs=args.epochs,
                    learning_rate=args.lr, lr_schedule=args.lr_schedule, kl_coef=args.kl_coef, vf_coef=args.vf_coef, ent_coef=args.ent_coef,
                    value_lr_scale=args.value_lr_scale,
                    gae_lambda=args.gae_lambda, clip_range_vf=args.clip_range_vf, adaptive_kl=args.adaptive_kl,
                    kl_target=args.kl_target, kl_horizon=args.kl_horizon, reward_clip=args.reward_clip,
                    logsigmoid_reward=args.logsigmoid_reward, eval_prompts=args.eval_prompts,
                    eval_samples=args.eval_samples,
                    eval_every=args.timesteps // 4, checkpoint_every=0,
                    seed=args.seed if args.ppo_seed is None else args.ppo_seed, num_threads=args.threads,
                    precision=args.precision, progress=False, **extra)
    t1 = time.perf_counter()
    train_ppo(cfg)
    ppo_s = time.perf_counter() - t1
    if ranks > 1:
        dist.destroy_process_group()
        if rank:
            return
    report = json.loads((out / "ppo_report.json").read_text())
    start, end = report["start"], report["end"]
    print(f"task preparation: {prep_s:.0f}s (reused when --task-dir already holds it); figures: "
          f"{json.dumps(task.figures, default=str)}")
    name = ALGORITHM_NAMES[args.algorithm]
    print(f"{name}: {report['timesteps']} tokens in {ppo_s:.0f}s ({ppo_s / 60:.1f} min, {report['tokens_per_s']:.0f} "
          "tokens/s)")
    print(f"gold positive rate on {args.eval_prompts} held-out prompts: {start['gold_positive_rate']:.3f} -> "
          f"{end['gold_positive_rate']:.3f}; mean gold {start['gold_mean']:.3f} -> {end['gold_mean']:.3f}")
    print(f"KL to the reference (nats per completion): {end['kl']:.2f}; reference perplexity "
          f"{start['perplexity']:.2f} -> {end['perplexity']:.2f}; length {start['length']:.1f} -> {end['length']:.1f}")
    print("gold evaluations during training (eval.csv):")
    print((out / "eval.csv").read_text().strip())
    rows = [[str(int(r["timesteps"])), f"{r['gold_positive_rate']:.3f}", f"{r['gold_mean']:.3f}", f"{r['kl']:.2f}",
             f"{r['perplexity']:.2f}", f"{r['length']:.1f}"] for r in read_eval_csv(out / "eval.csv")]
    notes = (f"{name} {report['timesteps']} tokens in {ppo_s:.0f} s ({report['tokens_per_s']:.0f} tokens/s); "
             f"{args.eval_prompts} held-out prompts x {args.eval_samples}; task prepared in {prep_s:.0f} s")
    cmd = ("python benchmarks/bench_ppo_learning.py " + " ".join(sys.argv[1:])).strip()
    header = ["timesteps", "gold positive rate", "gold mean", "KL (nats)", "ref perplexity", "length"]
    seed = args.seed if args.ppo_seed is None else args.ppo_seed
    section = ("bench_ppo_learning" + ("" if args.algorithm == "ppo" else f"_{args.algorithm}")
               + (f"_seed{seed}" if seed else ""))  # each replicate keeps its own table
    print(f"written to {record(section, cmd, header, rows, threads=args.threads, notes=notes)}")


def dpo_and_report(args: argparse.Namespace, task: Any, out: Path, prep_s: float) -> None:
    """DPO on the task's pairs, then the same gold evaluation as the RL runs (same held-out prompts and seed)."""
    from rlfl.agents import PPO
    from rlfl.agents.callbacks import evaluate_policy
    from rlfl.agents.train import split_prompts
    from rlfl.agents.vec_env import make_text_vec_env
    from rlfl.dpo import DPOConfig, dpo
    from rlfl.trainer import TrainConfig

    if (out / "config.json").exists():
        raise SystemExit(f"{out}: holds an earlier run; pass a new --out (this benchmark times a fresh run)")
    seed = args.seed if args.ppo_seed is None else args.ppo_seed
    t1 = time.perf_counter()
    dpo(DPOConfig(init_from=str(task.sft), data=str(task.pairs), beta=args.dpo_beta, loss_type=args.dpo_loss,
                  num_samples=0, train=TrainConfig(out_dir=str(out), max_steps=args.dpo_steps,
                                                   batch_size=args.dpo_batch_size, lr=args.dpo_lr,
                                                   min_lr=args.dpo_lr / 10, warmup_steps=args.dpo_steps // 20,
                                                   eval_interval=0, checkpoint_interval=0, seed=seed,
                                                   num_threads=args.threads, progress=False)))
    train_s = time.perf_counter() - t1
    # the prompts and sampling of the RL runs' GoldEval: the env's prompts split with the run's seed
    env = make_text_vec_env("rlfl/SyntheticReviews-v0", 1, tokenizer=str(task.sft), chat_template=True)
    _, prompts = split_prompts(env.inner.prompt_texts, env.inner.prompt_source, args.eval_prompts, seed)
    figures = {}
    for name, policy in (("start", task.sft), ("end", out)):
        model = PPO(str(policy), env, n_envs=1, seed=seed, policy_kwargs={"reference_checkpoint": str(task.sft)})
        figures[name] = evaluate_policy(model, prompts, n_samples=args.eval_samples, seed=seed)
    start, end = figures["start"], figures["end"]
    pairs = sum(1 for _ in task.pairs.open())
    print(f"task preparation: {prep_s:.0f}s (reused when --task-dir already holds it); {pairs} pairs")
    print(f"DPO: {args.dpo_steps} steps x {args.dpo_batch_size} pairs in {train_s:.0f}s ({train_s / 60:.1f} min)")
    print(f"gold positive rate on {len(prompts)} held-out prompts x {args.eval_samples}: "
          f"{start['gold_positive_rate']:.3f} -> {end['gold_positive_rate']:.3f}; mean gold {start['gold_mean']:.3f} "
          f"-> {end['gold_mean']:.3f}")
    print(f"KL to the reference (nats per completion): {end['kl']:.2f}; reference perplexity "
          f"{start['perplexity']:.2f} -> {end['perplexity']:.2f}; length {start['length']:.1f} -> {end['length']:.1f}")
    for sample in end["samples"]:
        print(f"  after: {sample['prompt']!r} -> {sample['completion']!r} (gold {sample['score']:+.2f})")
    rows = [[name, f"{r['gold_positive_rate']:.3f}", f"{r['gold_mean']:.3f}", f"{r['kl']:.2f}",
             f"{r['perplexity']:.2f}", f"{r['length']:.1f}"] for name, r in (("SFT", start), ("DPO", end))]
    notes = (f"DPO ({args.dpo_loss}, beta {args.dpo_beta}) {args.dpo_steps} steps x {args.dpo_batch_size} of {pairs} "
             f"pairs in {train_s:.0f} s; {len(prompts)} held-out prompts x {args.eval_samples}")
    cmd = ("python benchmarks/bench_ppo_learning.py " + " ".join(sys.argv[1:])).strip()
    header = ["policy", "gold positive rate", "gold mean", "KL (nats)", "ref perplexity", "length"]
    print(f"written to {record('bench_ppo_learning_dpo', cmd, header, rows, threads=args.threads, notes=notes)}")


if __name__ == "__main__":
    main()

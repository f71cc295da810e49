"""PPO learning check: raise the GOLD positive rate of a small SFT policy to >= 0.9 with KL <= 6 nats.

Issue 5's learning target, end to end on the built-in task `rlfl/SyntheticReviews-v0`:

1. `rlfl.synthetic_task.prepare_synthetic_task` builds (or reuses, in ``--task-dir``) the starting point:
   a byte-level base pretrained on synthetic reviews, a chat SFT policy that continues a review's first
   words and stops with ``<|end|>``, preference pairs of that policy's samples labelled by the gold judge,
   and a reward model trained on them. Its time is printed but is not part of the PPO budget.
2. PPO (`rlfl.agents.train.train_ppo`, what ``rlfl ppo`` runs) trains the SFT policy against the
   **reward model** (the learned proxy), never the gold judge.
3. The gold judge (`GoldSentiment`, the generator's own lexicon and rules) scores samples on held-out
   prompts before and after, with the KL to the reference: the figures of the acceptance point.

    python benchmarks/bench_ppo_learning.py [--task-dir runs/synthetic_task] [--out runs/ppo_learning]
                                            [--timesteps 409600] [--lr 1.5e-4] [--lr-schedule linear]
                                            [--kl-coef 0.14] [--kl-target 5.5] [--threads 2]
    torchrun --standalone --nproc_per_node=N benchmarks/bench_ppo_learning.py --threads 1 ...  # data-parallel

This script's defaults (session 8): the policy's learning rate decays linearly from 1.5e-4 to 0 over the
run (--lr-schedule linear), the value head learns at 100x that (--value-lr-scale), and adaptive KL starts
at beta 0.14 and steers towards 5.5 nats per completion (horizon 3,000 completions); 409,600 tokens,
evaluated on 512 held-out prompts x 2 completions. Measured on an AMD EPYC (Zen 3, 2 cores, float32; the
task prepared in 463 s, not part of the PPO budget; reward model held-out accuracy 0.915), gold positive
rate @ KL (nats) at each quarter:

  as is (--ppo-seed 0):    0.339 -> 0.826 @ 5.15, 0.892 @ 5.23, 0.887 @ 4.82, 0.909 @ 4.82 (597 s of PPO)
  --ppo-seed 1 --threads 1: 0.358 -> 0.789 @ 5.27, 0.875 @ 5.01, 0.913 @ 5.10, 0.933 @ 4.83
  --ppo-seed 2 --threads 1: 0.354 -> 0.806 @ 5.11, 0.852 @ 5.43, 0.896 @ 4.90, 0.922 @ 4.72
  --ppo-seed 3 --threads 1: 0.359 -> 0.825 @ 5.06, 0.884 @ 5.05, 0.898 @ 4.87, 0.930 @ 4.76

All four end above 0.9 (mean 0.924) with at most 5.43 nats at any evaluation (mean 4.78 at the end). The
1-thread runs shared the machine two at a time (~14.5 min each), so only the first one times the budget:
597 s, at 690 tokens/s (the same settings ran 714 tokens/s earlier that day; the machine drifts). With 10 %
fewer tokens the budget has room and the target still holds: --timesteps 368640, 0.813 @ 5.54, 0.852 @
4.92, 0.869 @ 4.67, 0.902 @ 4.75 (543 s).

Session 9, the same machine in a faster stretch: the defaults as is gave exactly the figures above (0.909 @
4.82; the run is deterministic) in 507 s, and in 379 s an hour later. Data-parallel over two processes of one
thread (``torchrun --standalone --nproc_per_node=2 benchmarks/bench_ppo_learning.py --threads 1``: 16 rows
and 256-token minibatches per process, so the same 1,024-token rollouts and 512-token updates): 0.339 ->
0.807 @ 5.12, 0.855 @ 4.95, 0.909 @ 5.23, 0.904 @ 4.81 in 425 s, against 379 s for one process run right
after it. On 2 cores the byte-level model's rollout is per-step overhead, which two half-size envs pay twice;
torchrun is for more cores and GPUs.

Why the schedule: with a constant rate the KL that update noise adds never drains, so the runs sat at
0.88-0.91 with 5.2-5.9 nats (session 7, below). Decaying the rate lets the policy settle: the KL falls in
the second half while the gold rate keeps rising. Measured on --ppo-seed 1 (1 thread, except linear 1e-4:
2): constant 1e-4 (the session-7 defaults), 0.859 @ 5.20 -> 0.885 @ 5.51; linear 1e-4, 0.786 @ 4.81, 0.887 @
4.91, 0.890 @ 4.43, 0.880 @ 4.12 (KL to spare); linear 1.5e-4, 0.846 @ 5.75, 0.861 @ 5.30, 0.895 @ 5.08,
0.918 @ 4.82; linear 1e-4 from beta 0.06, 0.866 @ 6.47, 0.912 @ 7.16, 0.929 @ 6.00, 0.925 @ 5.53 (too much
KL mid-run). Linear 1.5e-4 at beta 0.1 (adaptive towards 5.6, horizon 10,000), 2 threads: seed 0 0.845 @
6.01, 0.885 @ 5.79, 0.902 @ 5.02, 0.919 @ 4.69 (576 s); seed 2 0.824 @ 5.49, 0.891 @ 5.22, 0.911 @ 4.81,
0.918 @ 4.38 (583 s); seed 3 (1 thread) reached 6.61 nats at the first quarter. The early rate is what
overshoots, so the controller now starts higher (beta 0.14) and moves faster (horizon 3,000): seed 3, 0.825
@ 5.06, 0.884 @ 5.05, 0.898 @ 4.87, 0.930 @ 4.76, beta 0.14 -> ~0.10. A fixed-ish beta 0.13 (horizon 10,000)
also held the KL down (seed 3: 0.832 @ 4.89 ... 0.911 @ 4.13) but used less of it.

Session 7 defaults (constant lr 1e-4, value head at 100x, adaptive KL from beta 0.1 towards 5.6 nats,
horizon 10,000; same machine and task):

  --ppo-seed 0: 0.339 -> 0.852 @ 4.89, 0.871 @ 5.58, 0.912 @ 5.35, 0.906 @ 5.39 (543 s of PPO)
  --ppo-seed 1: 0.358 -> 0.859 @ 5.20, 0.880 @ 5.72, 0.899 @ 5.38, 0.885 @ 5.51 (513 s)
  --ppo-seed 2: 0.354 -> 0.792 @ 5.09, 0.885 @ 5.41, 0.901 @ 5.83, 0.907 @ 5.82 (540 s)
  --ppo-seed 3: 0.359 -> 0.865 @ 5.57, 0.880 @ 5.95, 0.896 @ 5.19, 0.899 @ 5.22 (467 s)

Two of four met the target then; mean 0.899 at 5.49 nats.

Earlier defaults (fixed kl 0.1, 327,680 tokens, value head at the policy's rate; 2 cores, quiet; reward
model from the SFT policy, 600 steps, held-out pair accuracy 0.915): gold positive rate 0.379 -> 0.902 at
a KL of 6.12 nats in 6.5 minutes of PPO (task preparation 293 s). Along the way: 0.805 at 4.78 nats, 0.867
at 5.78, 0.859 at 6.23. A 1-thread run of the same settings ended at 0.906 at 5.89 nats.
Later runs with 512 evaluation prompts: the earlier defaults again, 0.896 at 6.16 nats (437 s); a reward model on
twice the pairs and steps (held-out accuracy 0.940), 0.881 at 6.17; kl 0.12 for 409,600 tokens, 0.873 at
5.54; --reward-clip 1.0, 0.738 at 3.86 after half the run. All lie on one gold-vs-KL line.
More runs on the default task (512 evaluation prompts; flags of this script, earlier defaults): --n-envs 64 --batch-size 1024,
0.812 at 4.95 nats (386 s); --vf-coef 0.5, 0.820 at 5.72 after 3/4 of the run; --kl-coef 0.11 for 393,216
tokens, 0.861 at 6.06 and 0.859 at 6.11 (1/2 and 3/4 of the run). Also tried and dropped: an exact
full-vocabulary KL term in the loss in place of most of the reward's KL penalty (0.754 at 4.71, half run),
and a reward model with half its pairs sampled at temperature 1.4 to cover misspelt text (0.832 at 6.20,
3/4 run). All on the same line again. benchmarks/bench_best_of_n.py puts the line in context: best-of-64
with the same reward model reaches 0.898 at <= 3.17 nats, so PPO spends about twice its KL.
Session 6 (another machine: AMD EPYC, 2 cores; 512 evaluation prompts; gold rate @ KL at the end):
--gae-lambda 1.0, 0.787 at 5.74 after a quarter (stopped: below the line); --logsigmoid-reward 1.0 (the
bounded reward log sigmoid(score - 1)), 0.777 at 3.71 (KL flat near 3.7 from mid-run on; the line says
0.69 there); the same with --kl-coef 0.05, 0.873 at 7.07 at mid-run (stopped); with adaptive KL
(--kl-coef 0.07 --adaptive-kl) --kl-target 5.5: 0.908 at 6.01 nats (405 s; beta 0.070 -> 0.051 -> 0.059),
--kl-target 5.0: 0.820 at 4.89 (384 s), --kl-target 5.3: 0.795 at 4.82 (382 s); the 5.5 run again with
--ppo-seed 1 (other PPO seed and evaluation prompts, same task): 0.885 at 5.69 (356 s). Defaults with
--vf-coef 0.02 (less value gradient through the shared trunk): 0.865 at 6.44, below the line. The
evaluation's KL lands within ~0.5 nats of the controller's target. Apart from the low-KL point of the fixed-beta run, all of these
lie on the same line (gold ~ 0.36 + 0.09 KL, +-0.02): the bounded reward does not move it on this task.
Session 7 (AMD EPYC Zen 3, 2 cores, AVX2 only, so float32; the same prepared task, rebuilt here: reward
model held-out accuracy 0.915 again). The value head had explained ~0 % of the returns for the first 40
rollouts in every run so far (train/explained_variance): a zero-initialised linear head at the policy's
learning rate barely moves. With --value-lr-scale (the head at 30x or 100x the policy's rate) it reaches
0.2-0.5, and the points move above the old line, by +0.02 to +0.08 (gold rate @ KL, 512 prompts; "x2":
2 completions each):
  --value-lr-scale 30 (defaults otherwise): 0.795 @ 4.38, 0.855 @ 5.11, 0.869 @ 4.79, 0.902 @ 6.35 (689 s,
      beside other work);
  --value-lr-scale 30 --kl-coef 0.12 --timesteps 294912, x2: 0.754 @ 4.05, 0.811 @ 4.77, 0.842 @ 4.84,
      0.849 @ 5.01 (422 s);
  --value-lr-scale 100, x2: 0.788 @ 4.34, 0.840 @ 5.15, 0.874 @ 5.38, 0.887 @ 5.28 (439 s);
  --value-lr-scale 100 --timesteps 409600, x2: 0.828 @ 5.09, 0.878 @ 5.39, 0.885 @ 5.73, 0.878 @ 4.98 (522 s).
The old line gives 0.81 at 5.0 and 0.85 at 5.5 nats; with the faster critic the KL settles near 5-5.5 at
beta 0.1 while gold keeps rising to ~0.88 and then levels off there. Without the value scale, the same
settings had the KL climbing through 6 instead. PPO time also fell by ~20 % (segments are packed for the
training forwards: rlfl.agents.rollout.RolloutStore.batch). Adaptive KL from 0.1 towards 5.6 nats, slowly
(horizon 10,000; beta ended near 0.09), gave the runs at the top of this docstring. Where the last 12 %
fail (the 409,600-token fixed-beta run's final policy, 1,024 held-out prompts, throwaway script): neutral
completions the reward model already scores low (" the plot.", negations such as "My neighbor didn't" ->
" enjoyed the story.") 6.2 %, negative prompts that a short "What a gem." does not outweigh 2.9 % (half
of the 5.9 % such prompts), misspelt praise the reward model scores high ("tenjoyable", "atreat") 2.2 %,
completions that never stop 0.6 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rlfl.agents.train import PPOConfig, train_ppo
from rlfl.synthetic_task import SyntheticTaskConfig, prepare_synthetic_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task-dir", default="runs/synthetic_task", help="where the SFT policy and reward model live")
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
    ap.add_argument("--kl-horizon", type=int, default=3000, help="completions per 20%% beta move (adaptive KL)")
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
    if (out / "ppo_resume.pt").exists():
        raise SystemExit(f"{out}: holds an earlier run; pass a new --out (this benchmark times a fresh run)")
    cfg = PPOConfig(init_from=str(task.sft), reward=str(task.reward_model), chat_template=True, out_dir=str(out),
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
                    precision=args.precision, progress=False)
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
    print(f"PPO: {report['timesteps']} tokens in {ppo_s:.0f}s ({ppo_s / 60:.1f} min, {report['tokens_per_s']:.0f} tokens/s)")
    print(f"gold positive rate on {args.eval_prompts} held-out prompts: {start['gold_positive_rate']:.3f} -> "
          f"{end['gold_positive_rate']:.3f}; mean gold {start['gold_mean']:.3f} -> {end['gold_mean']:.3f}")
    print(f"KL to the reference (nats per completion): {end['kl']:.2f}; reference perplexity "
          f"{start['perplexity']:.2f} -> {end['perplexity']:.2f}; length {start['length']:.1f} -> {end['length']:.1f}")
    print("gold evaluations during training (eval.csv):")
    print((out / "eval.csv").read_text().strip())


if __name__ == "__main__":
    main()

"""PPO and GRPO speed: rlfl's batched KV-cache PPO and GRPO against stable-baselines3's PPO (same policy, env, model).

A 4-layer, 128-dim GPT with a 4,096-token BPE vocabulary (trained here on the built-in synthetic corpus),
16-token prompts, 32 new tokens, 32 parallel episodes, 32 tokens per row per rollout (1,024 tokens), 4
epochs. GRPO runs the same config in groups of 4 completions per prompt (8 prompts a rollout; no critic). The
reward is the synthetic corpus's gold sentiment (a cheap callable, so the figures are about the agent, not
the reward model).

    python benchmarks/bench_ppo.py [--rollouts 8] [--sb3-rollouts 1] [--threads 2] [--device cpu]
                                   [--precision float32,auto] [--algorithms ppo,grpo]

Prints, for each algorithm and precision, seconds per 1,024 generated tokens trained on (rollout + training;
median, min and max over the timed rollouts; a GRPO rollout trains on its completions' tokens, which a stop
token can make fewer than 1,024) and the peak resident memory; SB3's seconds and the speed-up of the
fastest rlfl setting; and the floor the float32 run's matrix products set on this CPU (their GFLOP per
1,024 tokens from torch.profiler, against a 2048^3 matmul's GFLOP/s). The figures go to the
``bench_ppo`` section of benchmarks/RESULTS.md with the machine they ran on. The machine's speed drifts
(by ~30 % over an hour on shared 2-core hosts), so compare figures of one run.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rlfl.envs
import torch
from rlfl.agents import GRPO, PPO, TransformerPolicy, make_text_vec_env
from rlfl.agents.ppo import resolve_precision

from rlfl.checkpoint import save_checkpoint
from rlfl.model import GPT, GPTConfig
from rlfl.synthetic import synthetic_documents
from rlfl.tokenizer import train_bpe
from results import record

PROMPT_TOKENS, NEW_TOKENS, ENVS, EPOCHS = 16, 32, 32, 4
TOKENS_PER_ROLLOUT = ENVS * NEW_TOKENS  # 1,024


IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "imdb_train.jsonl.gz"


def corpus() -> list[str]:
    """Review texts: IMDB (../shared/data) when present, for a BPE that really reaches 4,096 tokens; else the
    built-in synthetic reviews (whose small lexicon stops BPE short of 4,096: the script says so)."""
    if IMDB.exists():
        from rlfl.data import iter_documents

        return [d.text for d, _ in zip(iter_documents([str(IMDB)], text_field="text"), range(4000))]
    return [d.text for d in synthetic_documents(6000, seed=0)]


def build(tmp: Path, vocab: int, layers: int, dims: int) -> Path:
    """A BPE tokenizer, a randomly initialised policy checkpoint, and an env whose prompts are 16 tokens."""
    docs = corpus()
    tok = train_bpe(docs, vocab)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=PROMPT_TOKENS + NEW_TOKENS, n_layer=layers, n_head=4,
                        n_embd=dims))
    save_checkpoint(tmp / "policy", gpt, tok, stage="sft")
    prompts = [tok.decode(ids[:PROMPT_TOKENS]) for ids in tok.encode_batch(docs[:2000])]
    rlfl.envs.register_reward_env("bench/Sentiment-v0", reward=rlfl.envs.GoldSentiment(), prompts=prompts,
                                  tokenizer=str(tmp / "policy"), max_new_tokens=NEW_TOKENS,
                                  max_prompt_tokens=PROMPT_TOKENS, overwrite=True)
    return tmp / "policy"


def trained_tokens(model: PPO) -> int:
    """Generated tokens the last update trained on: every cell of a PPO rollout, every row's completion of GRPO's."""
    store = model._store
    segments = store.seg_t0 == 0 if isinstance(model, GRPO) else slice(None)
    return int((store.seg_n - store.seg_j0)[segments].sum())


def time_rlfl(policy: Path, rollouts: int, device: str, precision: str, algorithm: str) -> tuple[list[float], PPO]:
    """Seconds per 1,024 generated tokens trained on, one figure per timed rollout (after one warm-up)."""
    env = make_text_vec_env("bench/Sentiment-v0", n_envs=ENVS)
    common = dict(batch_size=512, n_epochs=EPOCHS, learning_rate=1e-5, seed=0, device=device, precision=precision)
    model = (GRPO(str(policy), env, group_size=4, **common) if algorithm == "grpo"
             else PPO(str(policy), env, n_steps=NEW_TOKENS, **common))
    model.learn(TOKENS_PER_ROLLOUT)  # warm-up rollout (allocations, first-call costs)
    times = []
    for _ in range(rollouts):
        t0 = time.perf_counter()
        model.learn(TOKENS_PER_ROLLOUT, reset_num_timesteps=False)
        times.append((time.perf_counter() - t0) * 1024 / trained_tokens(model))
    return times, model


MATMULS = ("aten::addmm", "aten::mm", "aten::bmm")


def matmul_floor(model: PPO) -> tuple[float, float, float]:
    """The matrix products of one more rollout of ``model`` (CPU): (GFLOP, seconds in them, GFLOP/s of a large
    float32 matmul on this machine). Their seconds are what a rollout would cost with no other work at all."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        model.learn(TOKENS_PER_ROLLOUT, reset_num_timesteps=False)
    events = [e for e in prof.key_averages() if e.key in MATMULS]
    gflop = sum(e.flops for e in events) / 1e9
    seconds = sum(e.self_cpu_time_total for e in events) / 1e6
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 1.0:
        a @ b
        n += 1
    return gflop, seconds, 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def time_sb3(policy: Path, rollouts: int, device: str) -> list[float]:
    from stable_baselines3 import PPO as SB3PPO

    env = make_text_vec_env("bench/Sentiment-v0", n_envs=ENVS)
    model = SB3PPO(TransformerPolicy, env, n_steps=NEW_TOKENS, batch_size=512, n_epochs=EPOCHS, learning_rate=1e-5,
                   policy_kwargs={"checkpoint": str(policy)}, seed=0, device=device)
    times = []
    for i in range(rollouts):
        t0 = time.perf_counter()
        model.learn(TOKENS_PER_ROLLOUT, reset_num_timesteps=i == 0)
        times.append(time.perf_counter() - t0)
    return times


def policy_vocab(policy: Path) -> int:
    from rlfl.checkpoint import read_config

    return int(read_config(policy)["model"]["vocab_size"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=8, help="timed rlfl rollouts of 1,024 tokens (after 1 warm-up)")
    ap.add_argument("--sb3-rollouts", type=int, default=1, help="timed SB3 rollouts (0: skip SB3)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32,auto",
                    help="comma-separated rlfl PPO precisions to time (float32, bfloat16, auto)")
    ap.add_argument("--algorithms", default="ppo,grpo", help="comma-separated rlfl algorithms to time (ppo, grpo)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        policy = build(Path(tmp), args.vocab, args.layers, args.dims)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
              f"{args.layers} layers x {args.dims} dims, vocab {args.vocab}, {ENVS} envs, {PROMPT_TOKENS}-token prompts, "
              f"{NEW_TOKENS} new tokens, {EPOCHS} epochs, minibatches of 512 tokens; BPE vocab {policy_vocab(policy)}",
              flush=True)
        best, float32_model, rows = float("inf"), None, []
        for precision in args.precision.split(","):
            for algorithm in args.algorithms.split(","):
                ours, model = time_rlfl(policy, args.rollouts, args.device, precision, algorithm)
                peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                med = float(np.median(ours))
                best = min(best, med)
                dtype = resolve_precision(precision, torch.device(args.device))
                name = f"rlfl {algorithm.upper()}, {precision} ({'bfloat16' if dtype else 'float32'})"
                print(f"{name}: {med:.3f} s per 1,024 tokens (median of {len(ours)}; min {min(ours):.3f}, max "
                      f"{max(ours):.3f}); peak RSS so far {peak_mb:.0f} MB", flush=True)
                rows.append([name, f"{med:.3f}", f"{min(ours):.3f}-{max(ours):.3f}", f"{peak_mb:.0f}"])
                if args.device == "cpu" and dtype is None and float32_model is None and algorithm == "ppo":
                    float32_model = model  # profiled after every timing (the profiler's memory is not the run's)
                del model
        med = best
        if args.sb3_rollouts > 0:
            theirs = time_sb3(policy, args.sb3_rollouts, args.device)
            sb3 = float(np.median(theirs))
            print(f"stable_baselines3.PPO(TransformerPolicy): {sb3:.2f} s per 1,024 tokens (median of {len(theirs)})")
            print(f"speed-up of the fastest rlfl setting: {sb3 / med:.1f}x", flush=True)
            rows.append(["stable_baselines3.PPO(TransformerPolicy)", f"{sb3:.2f}",
                         f"{min(theirs):.2f}-{max(theirs):.2f}", ""])
            rows.append(["speed-up of the fastest rlfl setting", f"{sb3 / med:.1f}x", "", ""])
        if float32_model is not None:
            gflop, seconds, peak = matmul_floor(float32_model)
            print(f"float32 rlfl PPO's matrix products (one more rollout, profiled): {gflop:.1f} GFLOP per 1,024 "
                  f"tokens, {seconds:.3f} s in them ({gflop / seconds:.0f} GFLOP/s); a 2048^3 float32 matmul runs at "
                  f"{peak:.0f} GFLOP/s here, so they alone need >= {gflop / peak:.3f} s per 1,024 tokens on this CPU")
            rows.append([f"floor of the float32 matrix products ({gflop:.1f} GFLOP at {peak:.0f} GFLOP/s)",
                         f"{gflop / peak:.3f}", "", ""])
        cmd = "python benchmarks/bench_ppo.py " + " ".join(sys.argv[1:])
        header = ["what", "s per 1,024 tokens", "range", "peak RSS MB"]
        print(f"written to {record('bench_ppo', cmd.strip(), header, rows, threads=args.threads)}")


if __name__ == "__main__":
    main()

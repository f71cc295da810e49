"""Benchmark the text-generation envs: how many tokens per second the env itself can step.

Runs `TextGenerationVectorEnv` with 64 rows, 16-token prompts (heads of built-in synthetic reviews), 32 new
tokens and random actions, with a cheap Python reward, and prints env steps/s, tokens/s (one token per row
per step; target >= 50k tokens/s on 2 cores, so that env overhead never dominates PPO) and the share of the
time spent inside the reward call. Then the single `TextGenerationEnv` on the same setup, for comparison.
Repeated with the GPT-2 tokenizer when ../shared/data/tokenizers/gpt2/r50k_base.tiktoken exists (its
50k-token vocabulary makes random actions almost never hit a stop token, so every episode runs to 32).

    python benchmarks/bench_env.py                            # length reward, 64 rows, 2000 vector steps
    python benchmarks/bench_env.py --reward sentiment --steps 500
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from rlfl.envs.prompts import synthetic_review_prompts
from rlfl.envs.rewards import CallableReward, GoldSentiment
from rlfl.envs.text_env import TextGenerationEnv
from rlfl.envs.vector_env import TextGenerationVectorEnv
from rlfl.tokenizer import Tokenizer, byte_tokenizer, gpt2_tokenizer

GPT2_RANKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "gpt2" / "r50k_base.tiktoken"


class TimedReward:
    """Wraps a reward source and adds up the seconds spent in its score() calls (and how many calls)."""

    def __init__(self, source) -> None:
        self.source = source
        self.name = getattr(source, "name", type(source).__name__)
        self.seconds = 0.0
        self.calls = 0
        self.scored = 0

    def score(self, prompts, completions):
        t0 = time.perf_counter()
        out = self.source.score(prompts, completions)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.scored += len(completions)
        return out


def prompt_heads(tok: Tokenizer, n_tokens: int, n: int = 2000) -> list[str]:
    """``n`` prompts of (about) ``n_tokens`` tokens: the first tokens of synthetic reviews, decoded."""
    texts = synthetic_review_prompts(n, seed=0, words=(30, 40))[:]
    return [tok.decode(ids[:n_tokens]) for ids in tok.encode_batch(texts)]


def make_reward(kind: str):
    if kind == "length":
        return TimedReward(CallableReward(lambda prompt, completion: float(len(completion)), name="length"))
    return TimedReward(GoldSentiment(include_prompt=False))


def bench_vector(tok: Tokenizer, prompts: list[str], args: argparse.Namespace) -> None:
    reward = make_reward(args.reward)
    env = TextGenerationVectorEnv(tok, prompts, reward, num_envs=args.num_envs, max_new_tokens=args.new_tokens,
                                  max_prompt_tokens=args.prompt_tokens)
    actions = np.random.default_rng(0).integers(tok.n_vocab, size=(args.steps, args.num_envs))
    env.reset(seed=0)
    for a in actions[:50]:  # warm-up: first allocations, first reward calls
        env.step(a)
    reward.seconds, reward.calls, reward.scored = 0.0, 0, 0
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    dt = time.perf_counter() - t0
    tokens = args.steps * args.num_envs
    print(f"  vector env ({args.num_envs} rows): {args.steps / dt:,.0f} steps/s, {tokens / dt:,.0f} tokens/s, "
          f"{reward.scored} episodes in {reward.calls} reward calls "
          f"({reward.scored / max(reward.calls, 1):.1f} per call), reward share {reward.seconds / dt:.1%}")


def bench_single(tok: Tokenizer, prompts: list[str], args: argparse.Namespace) -> None:
    reward = make_reward(args.reward)
    env = TextGenerationEnv(tok, prompts, reward, max_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens)
    n_steps = args.single_steps
    actions = np.random.default_rng(0).integers(tok.n_vocab, size=n_steps).tolist()
    env.reset(seed=0)
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    dt = time.perf_counter() - t0
    print(f"  single env:          {n_steps / dt:,.0f} steps/s = tokens/s, {reward.calls} episodes, "
          f"reward share {reward.seconds / dt:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2000, help="vector-env steps (each is num_envs tokens)")
    parser.add_argument("--single-steps", type=int, default=20000, help="single-env steps")
    parser.add_argument("--reward", choices=("length", "sentiment"), default="length",
                        help="length: len(completion) through CallableReward; sentiment: rlfl.synthetic's gold judge")
    args = parser.parse_args()
    # Prompt heads are cut by tokens, decoded and re-encoded: a few GPT-2 ones come back a token longer and
    # are left-truncated. That is expected here, so keep the env's truncation warning out of the figures.
    logging.getLogger("rlfl.envs.text_env").setLevel(logging.ERROR)

    tokenizers = [("bytes", byte_tokenizer())]
    if GPT2_RANKS.exists():
        tokenizers.append(("gpt2", gpt2_tokenizer(GPT2_RANKS)))
    else:
        print(f"(no {GPT2_RANKS}: GPT-2 tokenizer skipped)")
    for name, tok in tokenizers:
        prompts = prompt_heads(tok, args.prompt_tokens)
        print(f"{name} tokenizer (n_vocab {tok.n_vocab}), {len(prompts)} prompts of <= {args.prompt_tokens} tokens, "
              f"{args.new_tokens} new tokens, {args.reward} reward, random actions:")
        bench_vector(tok, prompts, args)
        bench_single(tok, prompts, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

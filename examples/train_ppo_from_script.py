"""PPO from a Python script: a policy, a reward written as a function, gold evaluation before and after.

The library path without the command line: register an env whose reward is a plain Python function, train
`rlfl.agents.PPO` on it with SB3 callbacks (sample logging, atomic checkpoints), and measure the policy
on prompts from another seed before and after (gold score, KL to the reference, the reference's
perplexity of the text). The output is an ordinary rlfl checkpoint: `rlfl sample OUT/ppo` opens it.

    python examples/train_ppo_from_script.py --tiny                 # seconds: a tiny random policy learns
    python examples/train_ppo_from_script.py --policy runs/sft --env rlfl/SyntheticReviews-v0 --timesteps 65536

`rlfl ppo` (rlfl.agents.train.train_ppo) runs the same thing from a config file and adds resume after a
crash, held-out prompt splits and a JSON report.
"""

from __future__ import annotations

import argparse
import logging
import string
from pathlib import Path

import rlfl.envs
import torch
from rlfl.agents import PPO
from rlfl.agents.callbacks import CheckpointEvery, SampleLogger, evaluate_policy
from rlfl.envs import synthetic_review_prompts

from rlfl.checkpoint import save_checkpoint
from rlfl.model import GPT, GPTConfig
from rlfl.tokenizer import byte_tokenizer


def lowercase_share(prompt: str, completion: str) -> float:
    """The reward: share of the completion's characters that are lowercase letters (a tiny policy can learn it).

    Watch the samples: the policy soon finds that special tokens such as <|system|> decode to lowercase
    letters. That is reward hacking in miniature, and a gold judge that is the reward itself cannot see it.
    """
    return sum(c in string.ascii_lowercase for c in completion) / max(1, len(completion))


def tiny_policy(directory: Path, seed: int = 0) -> str:
    """A randomly initialised 2-layer byte-level GPT, saved as a checkpoint (stand-in for an SFT policy)."""
    tok = byte_tokenizer()
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=64))
    save_checkpoint(directory, gpt, tok, stage="sft")
    return str(directory)


def show(name: str, figures: dict) -> None:
    print(f"{name}: gold {figures['gold_mean']:.4f} | positive {figures['gold_positive_rate']:.3f} | "
          f"kl {figures['kl']:.3f} nats | perplexity {figures['perplexity']:.1f} | length {figures['length']:.1f}")
    for s in figures["samples"][:2]:
        print(f"    {s['prompt']!r} -> {s['completion']!r} (gold {s['score']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/ppo_example", help="working directory")
    ap.add_argument("--policy", default=None, help="policy checkpoint (default: a tiny random one)")
    ap.add_argument("--env", default=None, help="a registered env id (default: the lowercase-letters env below)")
    ap.add_argument("--timesteps", type=int, default=8192, help="generated tokens to train on")
    ap.add_argument("--n-envs", type=int, default=32, help="parallel episodes")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="tokens per completion")
    ap.add_argument("--lr", type=float, default=1e-5, help="learning rate")
    ap.add_argument("--kl-coef", type=float, default=0.05, help="weight of the KL penalty")
    ap.add_argument("--tiny", action="store_true", help="seconds-long settings (tests and a first look)")
    args = ap.parse_args()
    if args.tiny:
        args.timesteps, args.n_envs, args.max_new_tokens, args.lr, args.kl_coef = 16 * 8 * 20, 16, 8, 2e-3, 0.01
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    policy = args.policy or tiny_policy(out / "init")

    # ---- the env: any registered id, or one made here with a reward that is a plain function
    env_id = args.env
    if env_id is None:
        env_id = "example/Lowercase-v0"
        rlfl.envs.register_reward_env(env_id, reward=lowercase_share, gold=lowercase_share, overwrite=True,
                                      prompts=synthetic_review_prompts(300, seed=0), max_prompt_tokens=40)
    env_kwargs = {"tokenizer": policy, "max_new_tokens": args.max_new_tokens}  # the policy's tokenizer
    eval_prompts = synthetic_review_prompts(16, seed=1)[:]  # another seed: not the training draws

    # ---- PPO: the starting policy is also the frozen KL reference
    model = PPO(policy, env_id, n_envs=args.n_envs, n_steps=8, batch_size=128, n_epochs=4, learning_rate=args.lr,
                kl_coef=args.kl_coef, env_kwargs=env_kwargs, seed=0)
    before = evaluate_policy(model, eval_prompts, seed=0)  # judge: the env's gold_judge
    rollout = model.n_steps * model.n_envs
    model.learn(args.timesteps, callback=[SampleLogger(every_rollouts=5, n=2),
                                          CheckpointEvery(out / "ppo", every_steps=10 * rollout)])
    after = evaluate_policy(model, eval_prompts, seed=0)

    show("before", before)
    show("after", after)
    # CheckpointEvery wrote the final policy and its resume state; by hand: model.save_checkpoint(directory)
    # and model.save_resume_state(path)
    print(f"saved: {out / 'ppo'} (rlfl sample {out / 'ppo'}; "
          f"PPO.from_resume_state('{out / 'ppo' / 'ppo_resume.pt'}', env=...))")


if __name__ == "__main__":
    main()

"""Register your own reward environments and run a random policy in them.

Two envs are registered with `rlfl.envs.register_reward_env`:

1. ``custom/Enthusiastic-v0``: the reward is a plain Python function (1 for a completion that says
   "great", minus a small length penalty); the prompts are a list of strings.
2. ``custom/RewardModel-v0``: the reward is a reward-model checkpoint. Pass ``--reward-model PATH`` (a
   directory written by ``rlfl reward train``); without it a tiny *untrained* reward model is written to a
   temporary folder so that the example runs anywhere (its scores are meaningless, the plumbing is real).

Each is built with ``gymnasium.make`` and played by a random policy (uniform over printable ASCII, so the
text is readable noise) for a few episodes; prompts, completions and rewards are printed. The last part
steps ``gymnasium.make_vec`` (one batched vector env) to show one reward call per step.

Run:
    python examples/custom_reward_env.py --episodes 3
    python examples/custom_reward_env.py --reward-model runs/rm
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gymnasium
import numpy as np

import rlfl.envs  # noqa: F401  (registers the built-in ids; register_reward_env comes from here too)
from rlfl.envs import register_reward_env, reward_model_source

PROMPTS = ["The movie was", "My dinner tonight was", "This laptop is", "The concert last night", "Our hotel was"]
PRINTABLE = np.arange(32, 127)  # byte tokens of printable ASCII


def enthusiasm(prompt: str, completion: str) -> float:
    """1 for a completion that says "great", minus 0.01 per character: short and enthusiastic wins."""
    return float("great" in completion.lower()) - 0.01 * len(completion)


def tiny_reward_model(directory: Path) -> Path:
    """Write a 2-layer, 64-dim byte-level reward model with an untrained head (a stand-in checkpoint)."""
    import torch

    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.reward import RewardModel
    from rlfl.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    model = RewardModel(GPT(GPTConfig(vocab_size=262, block_size=64, n_layer=2, n_head=2, n_embd=64)))
    save_checkpoint(directory, model, byte_tokenizer(), stage="reward")
    return directory


def play(env_id: str, episodes: int, seed: int) -> None:
    """Random-policy episodes in ``env_id``: print each prompt, completion and reward."""
    env = gymnasium.make(env_id)
    rng = np.random.default_rng(seed)
    print(f"== {env_id}: reward source {env.unwrapped.reward!r}")
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            # A random policy; stop with <|endoftext|> now and then so that some episodes terminate early.
            action = env.unwrapped.tokenizer.eot_id if rng.random() < 0.04 else int(rng.choice(PRINTABLE))
            _, reward, terminated, truncated, info = env.step(action)
            total += reward
            done = terminated or truncated
        end = "stop token" if terminated else "max_new_tokens"
        print(f"  prompt {info['prompt']!r} -> completion {info['completion']!r} ({end}); reward {total:+.3f}")
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes per env")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens per completion at most")
    parser.add_argument("--reward-model", default=None, help="a reward-model checkpoint directory "
                        "(`rlfl reward train`); default: a tiny untrained one in a temp folder")
    parser.add_argument("--num-envs", type=int, default=8, help="rows of the vector env in the last part")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts and the random policy")
    args = parser.parse_args()

    # 1. A callable reward: register in one call, then it is a Gymnasium id like any other.
    register_reward_env("custom/Enthusiastic-v0", reward=enthusiasm, prompts=PROMPTS,
                        max_new_tokens=args.max_new_tokens, max_prompt_tokens=32, overwrite=True)
    play("custom/Enthusiastic-v0", args.episodes, args.seed)

    # 2. A reward model: a checkpoint path is loaded when the env is made, with its recorded score
    #    normalisation. The stand-in model has no recorded statistics, so it is opened un-normalised.
    with tempfile.TemporaryDirectory() as tmp:
        if args.reward_model:
            reward = args.reward_model
        else:
            try:
                import rlfl.reward  # noqa: F401
            except ImportError as e:
                print(f"== skipping the reward-model env: rlfl.reward is not available ({e})")
                reward = None
            else:
                path = tiny_reward_model(Path(tmp) / "tiny-rm")
                print(f"== wrote an untrained stand-in reward model to {path} "
                      "(pass --reward-model PATH for a real one)")
                reward = reward_model_source(path, normalize=False)
        if reward is not None:
            register_reward_env("custom/RewardModel-v0", reward=reward, prompts=PROMPTS,
                                max_new_tokens=args.max_new_tokens, max_prompt_tokens=32, overwrite=True)
            play("custom/RewardModel-v0", args.episodes, args.seed)

    # 3. The same id as a vector env: every completion that finishes in a step is scored in one call.
    calls = []

    def counted(prompts: list[str], completions: list[str]) -> np.ndarray:
        calls.append(len(completions))
        return np.array([enthusiasm(p, c) for p, c in zip(prompts, completions)])

    register_reward_env("custom/EnthusiasticBatched-v0", reward=rlfl.envs.CallableReward(counted, batched=True),
                        prompts=PROMPTS, max_new_tokens=args.max_new_tokens, overwrite=True)
    venv = gymnasium.make_vec("custom/EnthusiasticBatched-v0", num_envs=args.num_envs)
    venv.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    for _ in range(args.max_new_tokens):
        venv.step(rng.choice(PRINTABLE, size=args.num_envs))
    print(f"== vector env, {args.num_envs} rows x {args.max_new_tokens} steps: {len(calls)} reward call(s) "
          f"scoring {sum(calls)} completions")


if __name__ == "__main__":
    main()

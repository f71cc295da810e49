"""PPO with LoRA against full fine-tuning: peak memory and tokens/s at the same settings on the same model.

A byte-level GPT of the Llama family's shape (``--arch llama``: rotary positions, RMSNorm, SwiGLU, grouped-query
attention with 2 key/value heads, no biases, untied head; or ``--arch gpt2``), default 4 layers x 384 dims,
randomly initialised, runs rlfl's
PPO on a cheap callable reward (the share of lowercase letters in a completion, so the figures are about the
agent, not a reward model): 32 parallel episodes, 16-token prompts from the built-in synthetic reviews, 32 new
tokens, 4 epochs, minibatches of 512 tokens, float32. The two modes differ only in LoRA:

- ``full``: every weight trains; PPO keeps a frozen copy of the starting weights as its KL reference, and AdamW
  keeps two moments per weight;
- ``lora``: rank-``--rank`` adapters on every attention and MLP projection; the GPT is frozen, so the
  reference is the same network with its adapters switched off (no copy) and AdamW holds moments for the
  adapters and the value head only.

Each mode runs in a process of its own, so its peak memory is its own: the peak resident set
(``getrusage``), also minus the resident set after the imports (what the run itself added), and on CUDA
``torch.cuda.max_memory_allocated``. Tokens/s are generated tokens trained on (rollout + training) per second,
the median over the timed rollouts after one warm-up rollout.

    python benchmarks/bench_lora.py [--arch llama] [--layers 4] [--dims 384] [--rank 8] [--rollouts 3]
                                    [--threads 2] [--device cpu]
    python benchmarks/bench_lora.py --smoke   # tiny sizes, seconds: a check that it runs (nothing recorded)

Prints one row per mode; a full run replaces the ``bench_lora`` section of benchmarks/RESULTS.md with the
table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPT_TOKENS, NEW_TOKENS, ENVS, EPOCHS, BATCH = 16, 32, 32, 4, 512
ENV_ID = "bench/LoRALowercase-v0"


def lowercase_share(prompt: str, completion: str) -> float:
    """Share of the completion's characters that are lowercase letters (a reward with no model to run)."""
    return sum(c in string.ascii_lowercase for c in completion) / max(1, len(completion))


def _rss_mb() -> float:
    """Peak resident set of this process so far, in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- one mode
def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Train PPO in this process as ``args.mode`` says; the figures of the run."""
    import rlfl.envs
    from rlfl.agents import PPO
    from rlfl.synthetic import synthetic_documents

    torch.set_num_threads(args.threads)
    after_imports = _rss_mb()
    prompts = [d.text[:80] for d in synthetic_documents(500, seed=0)]
    rlfl.envs.register_reward_env(ENV_ID, reward=lowercase_share, prompts=prompts, tokenizer=args.policy,
                                  max_new_tokens=args.new_tokens, max_prompt_tokens=PROMPT_TOKENS, overwrite=True)
    lora = {"lora_rank": args.rank, "lora_target_modules": ["attn", "mlp"]} if args.mode == "lora" else {}
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = PPO(args.policy, ENV_ID, n_envs=args.envs, n_steps=args.new_tokens, batch_size=BATCH, n_epochs=EPOCHS,
                learning_rate=1e-5, seed=0, device=args.device, **lora)
    rollout = args.envs * args.new_tokens
    model.learn(rollout)  # warm-up: allocations, first-call costs, the optimizer's moments
    times = []
    for _ in range(args.rollouts):
        t0 = time.perf_counter()
        model.learn(rollout, reset_num_timesteps=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    policy = model.policy
    held = {id(p): p for p in policy.parameters()}  # the reference copy of a full run is among them
    trainable = sum(p.numel() for p in held.values() if p.requires_grad)
    moments = sum(t.numel() * t.element_size() for s in policy.optimizer.state.values() for t in s.values()
                  if isinstance(t, torch.Tensor) and t.dim() > 0)
    figures = {"mode": args.mode, "trainable": trainable, "held": sum(p.numel() for p in held.values()),
               "optimizer_mb": moments / 2**20, "peak_rss_mb": _rss_mb(), "after_imports_mb": after_imports,
               "seconds": times, "tokens_per_rollout": rollout}
    if device.type == "cuda":
        figures["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return figures


def spawn(mode: str, policy: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``run_mode`` in a fresh Python process (its peak memory is then its own); its figures."""
    cmd = [sys.executable, __file__, "--worker", mode, "--policy", str(policy), "--rank", str(args.rank),
           "--rollouts", str(args.rollouts), "--threads", str(args.threads), "--device", args.device,
           "--envs", str(args.envs), "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


ARCHS = {"gpt2": {}, "llama": dict(position_embedding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False,
                                    tie_embeddings=False)}


def build_policy(directory: Path, layers: int, dims: int, heads: int, arch: str) -> tuple[Path, int]:
    """A randomly initialised byte-level GPT of ``arch`` saved as an SFT checkpoint; its path and parameter count."""
    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=PROMPT_TOKENS + NEW_TOKENS, n_layer=layers,
                        n_head=heads, n_embd=dims, **ARCHS[arch]))
    save_checkpoint(directory, gpt, tok, stage="sft")
    return directory, sum(p.numel() for p in gpt.parameters())


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama", help="model family's shape")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the lora mode")
    ap.add_argument("--rollouts", type=int, default=3, help="timed rollouts per mode (after one warm-up)")
    ap.add_argument("--envs", type=int, default=ENVS, help="parallel episodes")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="tokens per completion (= n_steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds): a check that it runs; nothing recorded")
    ap.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        args.mode = args.worker
        print(json.dumps(run_mode(args)))
        return
    if args.smoke:
        args.layers, args.dims, args.heads, args.rollouts, args.envs, args.new_tokens = 2, 128, 4, 1, 8, 16
    with tempfile.TemporaryDirectory() as tmp:
        policy, n_params = build_policy(Path(tmp) / "policy", args.layers, args.dims, args.heads, args.arch)
        print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; {args.layers} layers x "
              f"{args.dims} dims, {args.arch} ({n_params / 1e6:.2f}M parameters, byte-level), {args.envs} envs, {PROMPT_TOKENS}-token "
              f"prompts, {args.new_tokens} new tokens, {EPOCHS} epochs; LoRA rank {args.rank} on attn + mlp",
              flush=True)
        results = [spawn(mode, policy, args) for mode in ("full", "lora")]
    cuda = args.device.startswith("cuda")
    header = ["mode", "trainable params", "params held", "optimizer state MB", "peak RSS MB", "RSS over imports MB",
              *(["CUDA peak MB"] if cuda else []), "tokens/s", "s per rollout"]
    rows = []
    for r in results:
        med = float(np.median(r["seconds"]))
        rows.append([r["mode"], f"{r['trainable']:,}", f"{r['held']:,}", f"{r['optimizer_mb']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['after_imports_mb']:.0f}",
                     *([f"{r['cuda_peak_mb']:.0f}"] if cuda else []), f"{r['tokens_per_rollout'] / med:.0f}",
                     f"{med:.2f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    full, lora = results
    saved = (full["peak_rss_mb"] - full["after_imports_mb"]) - (lora["peak_rss_mb"] - lora["after_imports_mb"])
    speed = float(np.median(full["seconds"])) / float(np.median(lora["seconds"]))
    notes = (f"{args.layers} layers x {args.dims} dims, {args.arch} shape ({n_params / 1e6:.2f}M parameters, byte-level vocabulary), "
             f"{args.envs} envs x {args.new_tokens} new tokens per rollout, {EPOCHS} epochs, minibatches of {BATCH} "
             f"tokens, float32; LoRA rank {args.rank} on every attention and MLP projection. LoRA saves "
             f"{saved:.0f} MB of the run's memory and runs {speed:.2f}x the full run's speed; 'params held' counts "
             "the full run's reference copy, which LoRA does not need.")
    print(notes)
    if not args.smoke:
        from results import record

        cmd = ("python benchmarks/bench_lora.py " + " ".join(sys.argv[1:])).strip()
        print(f"written to {record('bench_lora', cmd, header, rows, threads=args.threads, notes=notes)}")


if __name__ == "__main__":
    main()

"""Benchmark the generation engine: KV-cached decoding vs recomputing the whole prefix every step.

Prints the wall-clock of each path (cached: best of 3), generated tokens/s, and the speedup (target: cached
>= 5x faster). Both runs are greedy on the same random model and prompts, and the script checks they produce
the same tokens, so the comparison is of two ways to compute one thing.

    python benchmarks/bench_generate.py                       # 4 layers, 256 dims, batch 8, 256 new tokens
    python benchmarks/bench_generate.py --new-tokens 64 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from rlfl.generate import SamplingConfig, generate
from rlfl.model import GPT, GPTConfig


def timed(model: GPT, prompts: list[list[int]], cfg: SamplingConfig, use_cache: bool) -> tuple[float, list[list[int]]]:
    """Seconds for one generate() call (synchronising the GPU if there is one) and its tokens."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, prompts, cfg, pad_id=0, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out.tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads (default: all cores; on a busy shared machine 1 can be faster)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(args.device)
    # Prompts of different lengths (8..32 tokens) so the padded-batch path is what gets measured.
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, args.vocab_size, (8 + 24 * i // max(args.batch - 1, 1),), generator=g).tolist()
               for i in range(args.batch)]
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, greedy=True)
    n_tokens = args.batch * args.new_tokens
    print(f"model: {config.n_layer} layers, {config.n_embd} dims, vocab {config.vocab_size}, "
          f"{model.num_params() / 1e6:.1f}M params; batch {args.batch}, prompts 8-32 tokens, "
          f"{args.new_tokens} new tokens; {torch.get_num_threads()} threads, {args.device}")

    timed(model, prompts, SamplingConfig(max_new_tokens=4, greedy=True), use_cache=True)  # warm-up
    # The cached run is short, so take the best of 3 to damp the noise of a shared machine; the
    # recompute run is long enough (and slow enough) that once is representative.
    t_cache, cached = min(timed(model, prompts, cfg, use_cache=True) for _ in range(3))
    t_full, full = timed(model, prompts, cfg, use_cache=False)
    print(f"KV cache      : {t_cache:7.2f} s  {n_tokens / t_cache:8.0f} tokens/s")
    print(f"recompute     : {t_full:7.2f} s  {n_tokens / t_full:8.0f} tokens/s")
    print(f"speedup       : {t_full / t_cache:.1f}x (target >= 5x)")
    if cached != full:
        print("WARNING: cached and recomputed greedy outputs differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pretraining benchmark against nanoGPT's documented CPU baseline on tinyshakespeare.

nanoGPT's CPU recipe (4 layers, 4 heads, 128 dims, block 64, batch 12, 2,000 steps, dropout 0, char-level)
reaches 2.72 val bits per character at ~16.5k tokens/s on this machine. This script runs the same recipe
through rlfl (byte-level vocab; tinyshakespeare is ASCII, so bytes = characters) and prints the val
bits-per-byte over the WHOLE val split, the training throughput and the wall-clock; then the same run with a
1,024-token BPE trained on the train split.

    python benchmarks/bench_pretrain.py [--data ../shared/data/tinyshakespeare/input.txt] [--steps 2000]
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlfl.checkpoint import load_checkpoint
from rlfl.data import iter_documents, load_shards, prepare_corpus
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.tokenizer import Tokenizer, byte_tokenizer, train_bpe
from rlfl.trainer import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


@torch.no_grad()
def full_val_bpb(ckpt_dir: Path, shards_dir: Path, block: int) -> float:
    """Bits per byte over every token of the val split (non-overlapping windows), not a sampled estimate."""
    model = load_checkpoint(ckpt_dir).model
    shards = load_shards(shards_dir)
    val = torch.from_numpy(np.asarray(shards.val, dtype=np.int64))
    n = (len(val) - 1) // block * block
    x, y = val[:n].view(-1, block), val[1 : n + 1].view(-1, block)
    nats = 0.0
    for i in range(0, len(x), 64):
        logits = model(x[i : i + 64])
        nats += F.cross_entropy(logits.flatten(0, 1), y[i : i + 64].flatten(), reduction="sum").item()
    meta = shards.meta["splits"]["val"]
    covered_bytes = meta["bytes"] * n / meta["tokens"]
    return nats / math.log(2) / covered_bytes


def bare_loop_tokens_per_s(steps: int = 150) -> float:
    """Calibration: the same model and optimizer in a bare loop (no trainer), measured right now.

    This 2-vCPU machine's speed drifts by +-15% over minutes, so each run is printed beside what the
    machine gives a bare PyTorch loop at that moment.
    """
    from rlfl.model import GPT, GPTConfig
    from rlfl.trainer import make_optimizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=262, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False))
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x, y = torch.randint(0, 256, (12, 64)), torch.randint(0, 256, (12, 64))
    for i in range(steps + 20):
        if i == 20:
            t0 = time.perf_counter()
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * 768 / (time.perf_counter() - t0)


def run(name: str, shards: Path, out: Path, steps: int, compile_: bool) -> dict[str, float]:
    # nanoGPT's CPU recipe, bias=False included (its train.py default)
    cfg = PretrainConfig(data=str(shards), n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                         bias=False, sample_tokens=0,
                         train=TrainConfig(out_dir=str(out), max_steps=steps, batch_size=12, lr=1e-3, min_lr=1e-4,
                                           warmup_steps=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                                           eval_interval=0, checkpoint_interval=0, log_interval=50,
                                           compile=compile_, resume=False, progress=False, seed=1337))
    print(f"{name}: calibration, bare fwd/bwd/AdamW loop of the byte-level model: "
          f"{bare_loop_tokens_per_s() / 1000:.1f}k tokens/s", flush=True)
    t0 = time.perf_counter()
    pretrain(cfg)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    # steady-state throughput over 50-step windows (the first includes warm-up); this 2-vCPU machine's
    # speed drifts by +-15% minute to minute, so the spread is printed too
    windows = [float(r["value"]) for r in rows if r["name"] == "train/tokens_per_s"][1:]
    tok_s = float(np.median(windows))
    bpb = full_val_bpb(out, shards, 64)
    print(f"{name}: val bpb (full val split) {bpb:.4f} | train {tok_s / 1000:.1f}k tokens/s median "
          f"(10th-90th pct {np.percentile(windows, 10) / 1000:.1f}k-{np.percentile(windows, 90) / 1000:.1f}k) | "
          f"wall-clock {wall:.0f}s for {steps} steps ({steps * 768 / wall / 1000:.1f}k tokens/s incl. eval/ckpt)",
          flush=True)
    return {"bpb": bpb, "tokens_per_s": tok_s, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare input.txt")
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--skip-bpe", action="store_true", help="only the byte-level run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data}: not found; pass --data path/to/tinyshakespeare/input.txt")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # raw text, as nanoGPT uses it (no cleaning, one document split 90/10)
        prepare_corpus([args.data], byte_tokenizer(), tmp / "bytes", clean=False, dedup=False)
        run("bytes (vocab 256 + specials)", tmp / "bytes", tmp / "ckpt_bytes", args.steps, args.compile)
        if args.skip_bpe:
            return
        text = next(iter_documents([args.data])).text
        train_text = text[: int(len(text) * 0.9)]
        t0 = time.perf_counter()
        bpe: Tokenizer = train_bpe([train_text], 1024)
        print(f"trained a {bpe.n_vocab}-token BPE in {time.perf_counter() - t0:.1f}s")
        prepare_corpus([args.data], bpe, tmp / "bpe", clean=False, dedup=False)
        meta = load_shards(tmp / "bpe").meta["splits"]["val"]
        print(f"bpe-1024: {meta['bytes'] / meta['tokens']:.2f} bytes/token on val")
        run("bpe-1024", tmp / "bpe", tmp / "ckpt_bpe", args.steps, args.compile)


if __name__ == "__main__":
    main()

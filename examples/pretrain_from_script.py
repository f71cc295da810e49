"""Pretrain a small GPT on the built-in synthetic reviews and sample from it, all from Python.

The same path as the README's main job (`rlfl data prepare` -> `rlfl pretrain` -> `rlfl sample`), through
the library API, so that a script can change any step.

    python examples/pretrain_from_script.py --out runs/example --steps 600
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rlfl.checkpoint import load_checkpoint
from rlfl.data import prepare_corpus
from rlfl.generate import SamplingConfig, generate
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.synthetic import gold_sentiment, synthetic_documents
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/example", help="working directory")
    ap.add_argument("--docs", type=int, default=20000, help="synthetic reviews in the corpus")
    ap.add_argument("--steps", type=int, default=600, help="pretraining steps")
    ap.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    ap.add_argument("--n-embd", type=int, default=128, help="embedding width")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)

    # 1. data: seeded synthetic reviews -> cleaned, deduplicated, split, byte-level token shards
    prepare_corpus(synthetic_documents(args.docs, seed=0), byte_tokenizer(), out / "data")

    # 2. pretraining through the shared training loop (checkpoint written to out/base)
    cfg = PretrainConfig(data=str(out / "data"), n_layer=args.n_layer, n_head=4, n_embd=args.n_embd, block_size=128,
                         train=TrainConfig(out_dir=str(out / "base"), max_steps=args.steps, batch_size=16, lr=2e-3,
                                           warmup_steps=min(100, args.steps // 10), eval_interval=max(1, args.steps // 3),
                                           checkpoint_interval=0, progress=False))
    pretrain(cfg)

    # 3. sampling with the generation engine, and the synthetic corpus' own gold judge on the results
    ckpt = load_checkpoint(out / "base")
    tok = ckpt.tokenizer
    prompts = ["The pasta was", "I bought this blender", "The acting"]
    gen = generate(ckpt.model, [tok.encode(p) for p in prompts],
                   SamplingConfig(max_new_tokens=80, temperature=0.8, top_k=40, seed=0, stop_tokens=(tok.eot_id,)),
                   pad_id=tok.pad_id)
    for prompt, completion in zip(prompts, gen.tokens):
        text = prompt + tok.decode([t for t in completion if t != tok.eot_id])
        print(f"[gold sentiment {gold_sentiment(text):+.2f}] {text}")


if __name__ == "__main__":
    main()

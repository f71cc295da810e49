"""Instruct-tune a small pretrained GPT from Python: pretrain a base, SFT it, compare before and after.

The whole path through the library API: a base model (pretrained here on a text corpus, or any checkpoint
you pass with --init-from), supervised fine-tuning on an instruction file (Alpaca, GSM8K, chat or
prompt/response JSONL), then the held-out loss before/after and a few greedy answers side by side.

    python examples/sft_from_script.py                                   # Alpaca sample + TinyStories base
    python examples/sft_from_script.py --data ../shared/data/sft/gsm8k/train.jsonl.gz --block-size 512
    python examples/sft_from_script.py --init-from runs/base --data my_chats.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rlfl.data import prepare_corpus
from rlfl.download import dataset_documents
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.sft import SFTConfig, sft
from rlfl.synthetic import synthetic_documents
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sft_example", help="working directory")
    ap.add_argument("--data", default=str(SHARED / "sft" / "alpaca" / "alpaca_2k_sample.json.gz"), help="SFT file")
    ap.add_argument("--init-from", default=None, help="start from this checkpoint instead of pretraining a base")
    ap.add_argument("--pretrain-steps", type=int, default=800, help="steps of the base model's pretraining")
    ap.add_argument("--sft-steps", type=int, default=300, help="SFT steps")
    ap.add_argument("--block-size", type=int, default=256, help="context length (bytes: the tokenizer is byte-level)")
    ap.add_argument("--n-layer", type=int, default=4, help="transformer blocks of the base")
    ap.add_argument("--n-embd", type=int, default=128, help="embedding width of the base")
    ap.add_argument("--pack", action="store_true", help="pack several SFT examples per row")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data}: not found; pass --data with an SFT file (see the docstring)")

    base = args.init_from
    if base is None:
        # 1. a base model: TinyStories (real English) when ../shared is there, else the synthetic reviews
        stories = SHARED / "tinystories" / "tinystories_validation_head.txt.gz"
        docs = dataset_documents("tinystories", stories) if stories.exists() else synthetic_documents(20000)
        prepare_corpus(docs, byte_tokenizer(), out / "corpus")
        pretrain(PretrainConfig(data=str(out / "corpus"), n_layer=args.n_layer, n_head=4, n_embd=args.n_embd,
                                block_size=args.block_size, sample_tokens=0,
                                train=TrainConfig(out_dir=str(out / "base"), max_steps=args.pretrain_steps,
                                                  batch_size=16, lr=2e-3, warmup_steps=50,
                                                  eval_interval=args.pretrain_steps, progress=False)))
        base = str(out / "base")

    # 2. supervised fine-tuning: loss on the responses only, eval loss before and after
    sft(SFTConfig(init_from=base, data=args.data, block_size=args.block_size, pack=args.pack, num_samples=2,
                  sample_tokens=80,
                  train=TrainConfig(out_dir=str(out / "sft"), max_steps=args.sft_steps, batch_size=16, lr=1e-3,
                                    min_lr=1e-4, warmup_steps=20, eval_interval=max(1, args.sft_steps // 3),
                                    progress=False)))

    # 3. what changed
    report = json.loads((out / "sft" / "sft_report.json").read_text())
    print(f"held-out loss: {report['val_loss_before']:.4f} before SFT -> {report['val_loss_after']:.4f} after")
    for s in report["samples"]:
        print(f"\nPROMPT: {s['prompt'][:300]}\nBEFORE: {s['before'][:300]}\nAFTER:  {s['answer'][:300]}")


if __name__ == "__main__":
    main()

"""`rlfl quickstart` from Python: RLHF vs RLAIF on the built-in synthetic reviews, from raw text to a report.

What ``rlfl quickstart --out DIR`` runs, as a script you can edit: a BPE tokenizer trained on synthetic
reviews and a small GPT pretrained on them, a chat SFT policy, pairs of its samples labelled twice (SIMULATED
human annotators over the gold sentiment judge with 20 % noise; the all-MiniLM-L6-v2 sentence encoder as a
zero-shot AI judge, from the ``embed`` extra), a reward model per side, PPO against each with 3 seeds, and the
gold evaluation with 95 % bootstrap intervals. See `rlfl.quickstart` for the stages and `rlfl.compare` for the
experiment; DIR ends up holding report.md, its plots and results.json. ``--tiny`` uses the rule-based
``lexicon`` judge, so the smoke run needs no extra.

    python examples/quickstart.py                        # about 10 minutes on 2 CPU cores
    python examples/quickstart.py --device cuda          # the same on a GPU
    python examples/quickstart.py --tiny --out /tmp/qs   # a smoke run (tiny model, a few steps): under a minute

Run it again with the same ``--out`` and every finished stage is reused (after Ctrl-C, it goes on from there).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

from rlfl.quickstart import QuickstartConfig, format_summary, quickstart

# Only checks that the pipeline runs: 2 layers x 64 dims, a few dozen steps, 2 seeds, a 16-prompt evaluation.
TINY = {"corpus_docs": 300, "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 96, "pretrain_steps": 30,
        "pretrain_batch_size": 8, "sft_reviews": 600, "sft_steps": 30, "sft_batch_size": 16, "n_pairs": 64,
        "rm_steps": 10, "rm_batch_size": 16,
        "ai_judge": "lexicon", "ppo_timesteps": 1024, "eval_prompts": 16, "seeds": [0, 1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default: runs/quickstart, or runs/quickstart_tiny)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes (the figures mean nothing)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = one per core; 1 on a busy machine)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("rlfl.trainer", "rlfl.checkpoint", "rlfl.envs.text_env", "rlfl.agents", "rlfl.reward",
                  "rlfl.preference_data", "rlfl.data", "rlfl.sft", "rlfl.pretrain", "rlfl.feedback"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # keep the stage lines readable

    config = QuickstartConfig(out=args.out or ("runs/quickstart_tiny" if args.tiny else "runs/quickstart"),
                              device=args.device, num_threads=args.threads, progress=not args.tiny)
    if args.tiny:
        config = dataclasses.replace(config, **TINY)
    t0 = time.perf_counter()
    results = quickstart(config)

    print("\n" + format_summary(results))
    print(f"report: {config.out}/report.md ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

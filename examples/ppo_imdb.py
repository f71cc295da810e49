"""RL on IMDB: teach a review generator to write positive reviews, judged by a classifier it never met.

The classic sentiment-RLHF experiment, end to end on the IMDB data in ../shared/data/imdb:

1. **base LM / starting policy**: a 4,096-token BPE and a small GPT (4 layers x 128 dims) pretrained on the
   25k TRAIN reviews. Given a review's first words it writes the rest, positive or negative as it comes.
2. **reward model** (what RL optimises): the base plus a scalar head trained on pairs of one positive and
   one negative TRAIN review (``imdb:`` data, Bradley-Terry loss), as in benchmarks/bench_reward_imdb.py.
3. **gold classifier** (what we measure with): the base plus a head trained with BCE on the labels of the
   25k TEST reviews (``imdb-labels:``), a split the reward model never saw. It shares the unsupervised
   base (pretrained on train text, no labels), but no label it learnt from is one the reward model learnt
   from, so reward hacking of the RM shows up as a gap between the two. Sanity check: its accuracy on TRAIN
   reviews it was not trained on.
4. **RL** (`rlfl.agents.train.train_ppo`, what ``rlfl grpo`` runs; ``--algorithm ppo`` or ``rloo`` for the
   others) on ``rlfl/ImdbPositive-v0``: prompts are the first 2-8 words of TRAIN reviews, the reward is the
   RM, the KL reference is the base. GRPO by default: PPO's clipped objective, but each prompt's 4
   completions are compared with each other instead of with a critic's values; the KL to the base is a
   per-token reward term whose weight adapts to hold 5 nats per completion; and a small entropy penalty
   (``ent_coef`` -0.005).
5. **before / after** on prompts held out of RL: the gold positive rate (share of completions the
   classifier calls positive, P > 0.5), the mean gold logit, the KL to the reference (nats per completion)
   and the reference's perplexity of the completions (how much fluency the reward cost). The classifier is
   read as a raw logit here: loaded as a reward source it is normalised by the mean/std of its training
   scores, which moves "positive" from P > 0.5 to "above that mean" (train_ppo's own eval.csv reads it so).

Everything is cached under ``--out``: a stage whose checkpoint is complete is skipped, so a second run
(or one after a crash) goes straight to where it stopped. ``settings.json`` there records the settings of
those stages, and a run with other ones is refused. RL writes ``OUT/<--run>`` (default: the algorithm's
name) and resumes from its last checkpoint there, with the settings it started with (`train_ppo` warns when
they changed): to try other RL settings on the same base, reward model and classifier, pass a new ``--run``.

    python examples/ppo_imdb.py                      # the real experiment: about 23 minutes on 2 cores
    python examples/ppo_imdb.py --tiny               # a smoke run (small subsets, tiny model): under a minute
    python examples/ppo_imdb.py --algorithm ppo --run ppo --ent-coef 0   # PPO with a critic, on the same stages
    python examples/ppo_imdb.py --data-dir path/to/imdb --out runs/ppo_imdb --threads 1

Measured with the defaults on a quiet 2-core AMD EPYC (2 threads; 1,414 s = 23.6 minutes in all: tokenizer
13 s, base 815 s, reward model 99 s, gold classifier 71 s, GRPO 402 s, the rest checks and evaluation): the
base's validation loss 4.50 nats per token; reward model val pair accuracy 0.904; gold classifier accuracy
0.816 on 2,000 TRAIN reviews it never saw. On 256 held-out prompts the gold positive rate went 0.398 -> 0.914
and the mean gold logit -0.578 -> +2.301, at a KL of 5.15 nats per 48-token completion; the reference's
perplexity of the completions went 91.6 -> 81.9 (the text got no less likely under the base), distinct-2
0.847 -> 0.804, no empty completion. The same run held to 5.5 nats ended at 0.930 with 6.20 nats and
perplexity 84.8.

Why GRPO with an entropy penalty. The reference's perplexity of the policy's text is exp((H + KL) / tokens),
with H the policy's entropy: a policy that spends its KL tilting the reference towards positive words keeps
the perplexity where it was only if its entropy falls by as much. On the same base, reward model and
classifier (1 thread, KL held near 5.5 nats; gold positive rate / perplexity; the base: 0.398 / 91.6): PPO
with a critic reached 0.86-0.93 with perplexity 102-105 in every setting tried (learning rates 1e-4 to 2e-5,
reward normalisation, larger batches); GRPO without the penalty 0.906 / 92.7 (393k tokens), 0.918 / 89.3 and
0.945 / 95.5 (590k, two seeds); with ``ent_coef`` -0.005 0.891 / 83.7 (393k) and 0.926 / 88.3 (590k); with -0.01
0.910 / 76.7 (393k) and 0.887 / 74.9 (590k); -0.03 sharpens too much (0.84, perplexity 60, distinct-2 0.73).
Runs of this size move by a few points with the seed and the thread count.

The policy ends up in OUT/grpo as an ordinary rlfl checkpoint: ``rlfl sample OUT/grpo`` opens it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rlfl.agents import PPO, make_text_vec_env
from rlfl.agents.callbacks import evaluate_policy
from rlfl.agents.ppo import RESUME_FILE
from rlfl.agents.train import GRPOConfig, PPOConfig, RLOOConfig, split_prompts, train_ppo
from rlfl.envs import imdb_prompts
from rlfl.envs.registry import IMDB_POSITIVE

from rlfl import checkpoint as ckpt
from rlfl.data import Document, prepare_corpus
from rlfl.preference_data import read_imdb_labels
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.reward import RewardTrainConfig, load_reward_model, train_reward_model
from rlfl.stage_cache import check_settings, checkpoint_done
from rlfl.tokenizer import train_bpe
from rlfl.trainer import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
KL_TARGET = 5.0  # nats per completion the adaptive KL controller holds RL near (the figure to stay under is 6)


@dataclass(frozen=True)
class Settings:
    """Sizes of every stage. `FULL` is the experiment; `TINY` only checks that the pipeline runs."""

    reviews: int | None  # reviews kept per split (a balanced seeded subset; None = all 25k)
    head_words: int  # the base is pretrained on the first this-many words of every train review
    vocab: int
    n_layer: int
    n_head: int
    n_embd: int
    block: int  # context; reward data keep the last `block` tokens of a review (where its verdict sits)
    pretrain_steps: int
    pretrain_batch: int
    rm_steps: int
    rm_batch: int  # pairs per step
    gold_steps: int
    gold_batch: int  # labelled reviews per step
    stats_samples: int  # texts scored for a reward model's recorded mean/std
    gold_check: int  # held-out TRAIN reviews for the gold classifier's accuracy
    max_prompt_tokens: int
    max_new_tokens: int
    algorithm: str  # grpo | rloo | ppo: what trains the policy (rlfl grpo / rloo / ppo)
    group_size: int  # grpo/rloo: completions per prompt, compared with each other instead of a critic's values
    n_envs: int
    timesteps: int  # generated tokens PPO trains on
    n_epochs: int
    batch_size: int  # tokens per PPO minibatch
    lr: float
    kl_coef: float
    ent_coef: float  # < 0: an entropy penalty (sharper text, so the KL spent on the reward keeps it fluent)
    eval_prompts: int  # held out of PPO for the before/after figures


# settings of the PPO run only (the other ones decide what is cached in --out)
PPO_FIELDS = ("max_prompt_tokens", "max_new_tokens", "algorithm", "group_size", "n_envs", "timesteps", "n_epochs",
              "batch_size", "lr", "kl_coef", "ent_coef", "eval_prompts")
CONFIGS = {"grpo": GRPOConfig, "rloo": RLOOConfig, "ppo": PPOConfig}


# Sized for about 23 minutes on 2 cores. The base gets the most: 2,100 steps x 32 x 128 tokens, about four passes
# over the first 64 words of all 25k train reviews (the prompt and the 48 tokens the policy writes lie there).
# The reward model (400 steps x 16 pairs) and the gold classifier (300 steps x 32 reviews) read the last 128
# tokens of whole reviews, where the verdict sits. RL: 32 rows (8 prompts x 4) x 48 tokens a rollout, 384
# rollouts, fixed-length episodes (every completion is 48 tokens, the classic sentiment setup: a reward that
# pays for stopping early cannot shrink them), the learning rate 2e-5 decaying linearly, the value head (PPO
# only) at 30x, the KL coefficient starting at 0.2 (from 0.1 the KL passed 8 nats before the controller caught
# up) and an entropy penalty of 0.005 (see the module docstring).
FULL = Settings(reviews=None, head_words=64, vocab=4096, n_layer=4, n_head=4, n_embd=128, block=128,
                pretrain_steps=2100, pretrain_batch=32, rm_steps=400, rm_batch=16, gold_steps=300, gold_batch=32,
                stats_samples=512, gold_check=2000, max_prompt_tokens=24, max_new_tokens=48, algorithm="grpo",
                group_size=4, n_envs=32, timesteps=32 * 48 * 384, n_epochs=4, batch_size=512, lr=2e-5, kl_coef=0.2,
                ent_coef=-0.005, eval_prompts=256)
TINY = Settings(reviews=600, head_words=64, vocab=512, n_layer=2, n_head=2, n_embd=64, block=64,
                pretrain_steps=40, pretrain_batch=8, rm_steps=30, rm_batch=8, gold_steps=30, gold_batch=16,
                stats_samples=64, gold_check=100, max_prompt_tokens=32, max_new_tokens=16, algorithm="grpo",
                group_size=4, n_envs=8, timesteps=8 * 16 * 3, n_epochs=2, batch_size=64, lr=1e-4, kl_coef=0.05,
                ent_coef=-0.01, eval_prompts=16)


# ---------------------------------------------------------------------------------------------- helpers
class Stages:
    """Runs the pipeline's stages, skipping cached ones, and prints each one's wall time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, what: str, cached: bool, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``cached``; ``name`` keys the timing, ``what`` says what the stage does."""
        if cached:
            print(f"[{name}] cached: {what}", flush=True)
            self.seconds[name] = 0.0
            return None
        t = time.perf_counter()
        result = fn()
        self.seconds[name] = time.perf_counter() - t
        print(f"[{name}] {self.seconds[name]:.1f} s: {what} (total {time.perf_counter() - self.t0:.1f} s)",
              flush=True)
        return result


def balanced_subset(src: Path, dst: Path, n: int, seed: int) -> None:
    """Copy a seeded subset of ``n`` reviews, half positive and half negative, in the same JSONL.gz format.

    Only for --tiny: the files are sorted positives first, so "the first n reviews" would all be positive.
    """
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in (1, 0):
        idx = [i for i, r in enumerate(records) if r["label"] == label]
        keep += rng.choice(idx, size=min(n // 2, len(idx)), replace=False).tolist()
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for i in sorted(keep):
            fh.write(json.dumps(records[i]) + "\n")
    os.replace(tmp, dst)


def train_config(out_dir: Path, *, steps: int, batch: int, lr: float, threads: int) -> TrainConfig:
    """The loop settings every supervised stage shares (no mid-run evals; a checkpoint every 100 steps)."""
    return TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(30, max(1, steps // 10)), weight_decay=0.1, eval_interval=0, eval_steps=8,
                       checkpoint_interval=100, log_interval=max(1, min(100, steps // 4)), num_threads=threads,
                       progress=False, seed=0)


# ---------------------------------------------------------------------------------------------- stages
def build_base(s: Settings, train_file: Path, shards: Path, base: Path, threads: int, stages: Stages) -> None:
    """BPE on the TRAIN reviews, token shards of them, and a GPT pretrained on those shards."""
    def tokenize() -> None:
        texts = [e.text for e in read_imdb_labels(train_file).examples]  # <br /> and the like cleaned
        tok = train_bpe(texts, s.vocab, num_workers=1)
        # The policy only ever writes a review's first words (prompt + max_new_tokens), so the pretraining
        # budget goes to the openings of every review, seen several times, not to one pass over whole reviews.
        heads = (" ".join(t.split()[:s.head_words]) for t in texts)
        prepare_corpus((Document(t, str(train_file)) for t in heads), tok, shards, val_fraction=0.01, clean=False,
                       seed=0)

    stages.run("tokenizer", f"BPE {s.vocab} on the train reviews + shards of their first {s.head_words} words",
               (shards / "meta.json").is_file(), tokenize)
    stages.run("base", f"pretrain {s.n_layer} layers x {s.n_embd} dims, {s.pretrain_steps} steps x "
               f"{s.pretrain_batch} x {s.block} tokens", checkpoint_done(base, s.pretrain_steps),
               lambda: pretrain(PretrainConfig(
                   data=str(shards), n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, block_size=s.block,
                   sample_tokens=0, train=train_config(base, steps=s.pretrain_steps, batch=s.pretrain_batch, lr=2e-3,
                                                       threads=threads))))


def train_head(s: Settings, base: Path, data: str, out_dir: Path, *, steps: int, batch: int, threads: int,
               stages: Stages, name: str, what: str) -> None:
    """A reward model (pairs) or classifier (labels, BCE) on ``data``, from the base."""
    stages.run(name, what, checkpoint_done(out_dir, steps, need="reward"), lambda: train_reward_model(RewardTrainConfig(
        init_from=str(base), data=data, block_size=s.block, val_fraction=0.02, stats_samples=s.stats_samples,
        train=train_config(out_dir, steps=steps, batch=batch, lr=1e-3, threads=threads))))


def gold_accuracy(gold: Path, train_file: Path, n: int, seed: int) -> float:
    """The gold classifier's accuracy (P(positive) > 0.5 vs the label) on ``n`` TRAIN reviews (balanced)."""
    examples = read_imdb_labels(train_file).examples
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for label in (1.0, 0.0):
        idx = [i for i, e in enumerate(examples) if e.label == label]
        picks += rng.choice(idx, size=min(n // 2, len(idx)), replace=False).tolist()
    judge = load_reward_model(gold, normalize=False)  # raw logits: > 0 iff P(positive) > 0.5
    logits = judge.score([examples[i].prompt for i in picks], [examples[i].text for i in picks])
    labels = np.array([examples[i].label for i in picks])
    return float(np.mean((logits > 0) == (labels == 1.0)))


def evaluate(s: Settings, seed: int, data_dir: Path, base: Path, rm: Path, gold: Path, ppo_dir: Path
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gold figures of the base and of the PPO policy on the prompts `train_ppo` held out of training.

    The split is recomputed exactly as train_ppo makes it (same prompt list, `split_prompts`, same seed), and
    the sampling seed is the same, so the completions are the ones its own evaluations drew. The judge is the
    gold classifier's RAW logit: load_reward_model normalises by the mean/std of its training scores by
    default, which would move "positive" from P > 0.5 to raw logit > that mean.
    """
    judge = load_reward_model(gold, normalize=False)
    held = split_prompts(list(imdb_prompts(data_dir, split="train")), None, s.eval_prompts, seed)[1]
    rows = 1 if s.algorithm == "ppo" else s.group_size  # the critic-free algorithms need whole groups of rows
    env = make_text_vec_env(IMDB_POSITIVE, rows, tokenizer=str(base), data_path=str(data_dir), reward=str(rm),
                            max_prompt_tokens=s.max_prompt_tokens, max_new_tokens=s.max_new_tokens, stop_tokens=[])
    before = evaluate_policy(PPO(str(base), env, seed=seed), held, judge, seed=seed)
    trained = CONFIGS[s.algorithm].algorithm.from_resume_state(ppo_dir / RESUME_FILE, env)
    after = evaluate_policy(trained, held, judge, seed=seed)
    return before, after


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder with imdb_train/test.jsonl.gz")
    ap.add_argument("--out", default=None, help="working directory, every stage cached here "
                                                "(default: runs/ppo_imdb, or runs/ppo_imdb_tiny with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes: small subsets, a tiny model, few steps")
    ap.add_argument("--algorithm", choices=sorted(CONFIGS), default=None,
                    help="what trains the policy (default: the preset's, grpo)")
    ap.add_argument("--timesteps", type=int, default=None, help="tokens to train on (default: the preset's)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    ap.add_argument("--ent-coef", type=float, default=None, help="entropy bonus (> 0) or penalty (< 0) "
                    "(default: the preset's)")
    ap.add_argument("--kl-coef", type=float, default=None, help="initial weight of the KL penalty, adapted towards "
                    f"{KL_TARGET:g} nats (default: the preset's)")
    ap.add_argument("--run", default=None, help="RL folder inside --out (default: the algorithm's name): a new "
                    "name starts a fresh run on the same base, reward model and gold classifier")
    ap.add_argument("--seed", type=int, default=0, help="seed of PPO, its prompt split and the evaluations")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    s = TINY if args.tiny else FULL
    overrides = {"algorithm": args.algorithm, "timesteps": args.timesteps, "lr": args.lr, "kl_coef": args.kl_coef,
                 "ent_coef": args.ent_coef}
    s = dataclasses.replace(s, **{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rlfl.agents").setLevel(logging.INFO)  # PPO's metrics, evaluations and samples
    torch.set_num_threads(args.threads)

    src = Path(args.data_dir)
    for split in ("train", "test"):
        if not (src / f"imdb_{split}.jsonl.gz").is_file():
            raise SystemExit(f"{src / f'imdb_{split}.jsonl.gz'}: not found; pass --data-dir path/to/shared/data/imdb")
    out = Path(args.out or ("runs/ppo_imdb_tiny" if args.tiny else "runs/ppo_imdb"))
    out.mkdir(parents=True, exist_ok=True)
    # the manifest covers the cached stages; PPO runs live in their own folder (--run), see the module doc
    prepared = {k: v for k, v in dataclasses.asdict(s).items() if k not in PPO_FIELDS}
    try:
        check_settings(out / "settings.json", {**prepared, "data_dir": str(src.resolve())})
    except ValueError as exc:  # a script says it in one line, without a traceback
        raise SystemExit(str(exc)) from None
    shards, base, rm, gold, ppo_dir = out / "shards", out / "base", out / "rm", out / "gold", out / (args.run or s.algorithm)
    stages = Stages()
    print(f"torch {torch.__version__}, {args.threads} thread(s); working directory {out}", flush=True)

    # ---- data: the real files, or (--tiny) balanced subsets of them in the same format
    data_dir = src
    if s.reviews is not None:
        data_dir = out / "data"
        data_dir.mkdir(exist_ok=True)
        files = [data_dir / f"imdb_{split}.jsonl.gz" for split in ("train", "test")]
        stages.run("data", f"subsets of {s.reviews} reviews per split", all(f.is_file() for f in files),
                   lambda: [balanced_subset(src / f.name, f, s.reviews, seed=0) for f in files])
    train_file, test_file = data_dir / "imdb_train.jsonl.gz", data_dir / "imdb_test.jsonl.gz"

    # ---- the base LM (= the starting policy and the KL reference), the reward model, the gold classifier
    build_base(s, train_file, shards, base, args.threads, stages)
    train_head(s, base, f"imdb:{train_file}", rm, steps=s.rm_steps, batch=s.rm_batch, threads=args.threads,
               stages=stages, name="rm",
               what=f"reward model on TRAIN pos/neg pairs ({s.rm_steps} steps x {s.rm_batch} pairs)")
    train_head(s, base, f"imdb-labels:{test_file}", gold, steps=s.gold_steps, batch=s.gold_batch,
               threads=args.threads, stages=stages, name="gold",
               what=f"gold classifier on TEST labels ({s.gold_steps} steps x {s.gold_batch} reviews, BCE)")
    rm_stats, gold_stats = ckpt.read_config(rm)["reward"], ckpt.read_config(gold)["reward"]
    accuracy = stages.run("gold_check", f"gold accuracy on {s.gold_check} held-out train reviews", False,
                          lambda: gold_accuracy(gold, train_file, s.gold_check, seed=1))
    print(f"reward model: val pair accuracy {rm_stats.get('val_accuracy', float('nan')):.4f} "
          f"({rm_stats.get('val_items')} held-out train pairs)")
    print(f"gold classifier: accuracy {accuracy:.4f} on {s.gold_check} TRAIN reviews it never saw (chance 0.5); "
          f"mean logit on its training texts {gold_stats['mean']:+.3f}")

    # ---- RL against the reward model; train_ppo's own evaluations use the gold classifier too. The KL
    # coefficient adapts towards KL_TARGET nats per completion: in a 3-update trial (lr 1e-4, an under-trained
    # base) a fixed 0.05 let the KL pass 8 nats, and far from the base the text stops being English. GRPO and
    # RLOO take the KL as a per-token reward term (as PPO does), not as GRPO's k3 loss term.
    group = {} if s.algorithm == "ppo" else {"group_size": s.group_size, "kl_penalty": "reward"}
    cfg = CONFIGS[s.algorithm](
        init_from=str(base), env_id=IMDB_POSITIVE, reward=str(rm), gold=str(gold), data_path=str(data_dir),
        max_prompt_tokens=s.max_prompt_tokens, max_new_tokens=s.max_new_tokens, n_envs=s.n_envs,
        n_steps=s.max_new_tokens, total_timesteps=s.timesteps, batch_size=s.batch_size, n_epochs=s.n_epochs,
        learning_rate=s.lr, lr_schedule="linear", value_lr_scale=30, stop_tokens=[], kl_coef=s.kl_coef,
        adaptive_kl=True, kl_target=KL_TARGET, ent_coef=s.ent_coef, **group,
        eval_prompts=s.eval_prompts, eval_every=max(1, s.timesteps // 4),
        checkpoint_every=max(1, s.timesteps // 8), sample_every=4, seed=args.seed, num_threads=args.threads,
        out_dir=str(ppo_dir), progress=False)
    stages.run(s.algorithm, f"{s.algorithm.upper()}, {s.timesteps} tokens ({s.n_envs} rows x {s.max_new_tokens} "
               "new tokens a rollout)", False, lambda: train_ppo(cfg))
    before, after = stages.run("eval", f"gold evaluation on {s.eval_prompts} held-out prompts, before and after",
                               False, lambda: evaluate(s, args.seed, data_dir, base, rm, gold, ppo_dir))

    # ---- figures
    rows = [("gold positive rate (P > 0.5)", "gold_positive_rate", "{:.3f}"),
            ("mean gold logit", "gold_mean", "{:+.3f}"),
            ("KL to reference (nats)", "kl", "{:.3f}"),
            ("reference perplexity", "perplexity", "{:.2f}"),
            ("completion length (tokens)", "length", "{:.1f}"),
            ("empty completions", "empty", "{:d}")]
    print(f"\n{'':32}{'before':>10}{'after':>10}   ({before['n']} completions of held-out prompts)")
    for label, key, fmt in rows:
        print(f"{label:32}{fmt.format(before[key]):>10}{fmt.format(after[key]):>10}")
    for name, figures in (("before", before), ("after", after)):
        for sample in figures["samples"][:2]:
            print(f"  {name}: {sample['prompt']!r} -> {sample['completion']!r} (gold logit {sample['score']:+.2f})")
    report = json.loads((ppo_dir / "ppo_report.json").read_text(encoding="utf-8"))
    print(f"{s.algorithm.upper()}: {report['timesteps']} tokens in {report['wall_time_s']:.0f} s this run, final KL coefficient "
          f"{report['kl_coef']:.3g}; per-evaluation figures in {ppo_dir / 'eval.csv'} (gold normalised by its "
          f"training mean/std there, so its 'positive' means P > {1 / (1 + math.exp(-gold_stats['mean'])):.2f})")
    print("stage wall times: " + ", ".join(f"{k} {v:.0f}s" for k, v in stages.seconds.items())
          + f"; total {time.perf_counter() - stages.t0:.0f} s")


if __name__ == "__main__":
    main()

"""Everything PPO on ``rlfl/SyntheticReviews-v0`` needs before it starts: corpus, base, SFT policy, pairs, RM.

The task: a prompt is the first 2-6 words of a built-in synthetic review, the policy writes the rest as
a chat answer (at most the env's 32 new tokens, ending with ``<|end|>``), and the gold judge
(`rlfl.envs.GoldSentiment`) reads the sentiment of prompt + completion. `prepare_synthetic_task` builds,
in ``out_dir``:

1. ``data/``: byte-level token shards of the built-in synthetic reviews (what ``rlfl data prepare
   --dataset synthetic`` writes);
2. ``base/``: a small GPT pretrained on them (3 layers, 96 dims by default: about 75 s on 2 cores;
   at this budget it gets further than 4 x 128, which makes fewer steps in the same time);
3. ``sft.jsonl`` + ``sft/``: the base fine-tuned as a **chat** policy on `review_sft_records` (the
   non-neutral ones by default, see ``sentiment_only``), so that it answers a review opener with a
   continuation and **stops** with ``<|end|>`` (PPO runs the env with ``chat_template=True``, which wraps
   each prompt as a user turn and stops at ``<|end|>``);
4. ``pairs.jsonl``: two samples of the SFT policy per prompt, the gold judge's preferred one as
   ``chosen`` (`sample_pairs`, `label_pairs`), keeping pairs whose gold scores differ by more than
   ``pair_min_margin`` (0.3): near-ties are coin flips to a small reward model, and dropping them
   lifted its held-out accuracy on *all* decisive pairs from about 0.70 to 0.79-0.85 in our runs;
5. ``rm/``: a reward model trained on those pairs (`rlfl.reward.train_reward_model`).

Every stage whose output is complete is skipped, so a second call returns at once; ``task.json`` records
the settings and a call with different ones is refused (it would mix stages of two runs).

**Seeds and held-out prompts.** Stage data are drawn with seed ``seed + 1000`` (corpus), ``+ 2000``
(SFT reviews) and ``+ 3000`` (pair prompts), so none of them is the review pool the env draws its
prompts from by default (``synthetic_review_prompts(2000, seed=0)``): evaluate on that pool (or any seed
below 1000). Short openers ("I bought") recur in every pool; only the reviews are disjoint.

Example:
    >>> task = prepare_synthetic_task("runs/synthetic")                       # doctest: +SKIP
    >>> gold_positive_rate(task.sft, synthetic_review_prompts(256), n=256, seed=0).positive_rate  # doctest: +SKIP
    0.48
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlfl import checkpoint as ckpt
from rlfl.chat_template import chat_prompt
from rlfl.config import to_dict
from rlfl.envs.prompts import _first_words, synthetic_review_prompts
from rlfl.envs.rewards import GoldSentiment, source_name
from rlfl.envs.text_env import default_stop_tokens
from rlfl.generate import SamplingConfig, generate
from rlfl.stage_cache import check_settings, checkpoint_done, write_jsonl
from rlfl.trainer import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_NEW_TOKENS = 32  # rlfl/SyntheticReviews-v0's max_new_tokens
CORPUS_SEED, SFT_SEED, PAIRS_SEED = 1000, 2000, 3000  # offsets added to the task seed (see the module doc)
_SENTENCE_END = re.compile(r"[.!?]$")


def cut_response(continuation: str, max_len: int, length: Callable[[str], int] | None = None) -> str:
    """The longest head of ``continuation`` of at most ``max_len`` units that ends a sentence, else the
    longest that ends a word ("" when not even the first word fits). ``length`` measures a text (default:
    its UTF-8 bytes, the byte tokenizer's tokens; pass ``lambda s: len(tok.encode(s))`` for a BPE).

    Example:
        >>> cut_response(" good. The battery lasted all day long.", 20)
        ' good.'
        >>> cut_response(" was fine but the battery died", 20)
        ' was fine but the'
        >>> cut_response(" was fine but the battery died", 3, length=lambda s: len(s.split()))
        ' was fine but'
    """
    length = length or (lambda s: len(s.encode()))
    if length(continuation) <= max_len:
        return continuation
    words = re.findall(r"\s*\S+", continuation)
    best_word = best_sentence = head = ""
    for w in words:
        head += w
        if length(head) > max_len:
            break
        best_word = head
        if _SENTENCE_END.search(head):
            best_sentence = head
    return best_sentence or best_word


def review_sft_records(n: int, *, seed: int, words: tuple[int, int] = (2, 6),
                       max_response_bytes: int = DEFAULT_NEW_TOKENS - 1,
                       sentiment_only: bool = False, tokenizer: Any = None) -> list[dict[str, str]]:
    """SFT records ``{"prompt", "response"}`` from ``n`` synthetic reviews (mixed sentiment).

    The prompt is the review's first 2-6 words, drawn exactly as `synthetic_review_prompts` draws them
    (same ``seed`` and ``words`` give the same prompts); the response is the rest of the review, with its
    leading space, cut by `cut_response` to ``max_response_bytes`` tokens of ``tokenizer`` (default: the byte
    tokenizer, whose tokens are the UTF-8 bytes), so that response + ``<|end|>`` fits the env's new tokens
    when it is their number minus one. Reviews with nothing after the prompt are left out, so a few fewer
    than ``n`` records can come back.

    ``sentiment_only`` keeps only records whose prompt + response the gold judge reads as non-neutral
    (about 40 %, half of them positive). Why: 60 % of reviews open with a neutral sentence ("We picked
    up this tent last week."), and 31 bytes after a 2-6 word prompt rarely get past it, so a policy
    that imitates every review writes sentiment-free text most of the time (gold positive rate ~0.2).

    Example:
        >>> review_sft_records(1, seed=0)[0]["prompt"] == synthetic_review_prompts(1, seed=0)[0]
        True
    """
    from rlfl.synthetic import generate_reviews, gold_sentiment  # the env's prompts come from this generator

    if n < 1:
        raise ValueError(f"n={n}; pass a positive number of SFT records")
    if max_response_bytes < 1:
        raise ValueError(f"max_response_bytes={max_response_bytes}; pass at least 1 (the env's max_new_tokens - 1)")
    # single-spaced, as _first_words joins the prompt words, so the prompt is a prefix of the text
    texts = [" ".join(r.text.split()) for r in generate_reviews(n, seed=seed)]
    prompts = _first_words(texts, words, seed)
    assert len(prompts) == len(texts) and all(t.startswith(p) for p, t in zip(prompts, texts))
    length = None if tokenizer is None else (lambda t: len(tokenizer.encode(t)))
    records, empty, neutral = [], 0, 0
    for prompt, text in zip(prompts, texts):
        response = cut_response(text[len(prompt):], max_response_bytes, length)
        if not response.strip():
            empty += 1
        elif sentiment_only and gold_sentiment(prompt + response) == 0:
            neutral += 1
        else:
            records.append({"prompt": prompt, "response": response})
    log.info("review_sft_records: %d records from %d reviews (left out: %d with no continuation, %d neutral)",
             len(records), n, empty, neutral)
    return records


# ------------------------------------------------------------------------------------------ sampling
def _open(policy: str | os.PathLike | ckpt.Checkpoint, device: str) -> ckpt.Checkpoint:
    if isinstance(policy, ckpt.Checkpoint):
        return policy
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ckpt.load_checkpoint(policy, device=device)


@dataclass
class _Samples:
    completions: list[str]
    finished: list[bool]
    lengths: list[int]  # tokens, stop token excluded


def _sample(policy: ckpt.Checkpoint, prompts: Sequence[str], *, seed: int, max_new_tokens: int,
            temperature: float, chat: bool, batch_size: int) -> _Samples:
    """One plain-softmax completion per prompt, batched; stop at ``<|endoftext|>`` / ``<|end|>`` like the env."""
    tok, model = policy.tokenizer, policy.model
    stops = tuple(default_stop_tokens(tok))
    encoded = ([chat_prompt(tok, [{"role": "user", "content": p}]) for p in prompts] if chat
               else tok.encode_prompts(prompts))
    out = _Samples([], [], [])
    for k, start in enumerate(range(0, len(encoded), batch_size)):
        # one seed per chunk: the same (seed, batch_size) gives the same samples
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=stops,
                             seed=seed * 100_003 + k)
        gen = generate(model, encoded[start:start + batch_size], cfg, pad_id=tok.pad_id)
        for ids, done in zip(gen.tokens, gen.finished):
            ids = ids[:-1] if done else ids
            out.completions.append(tok.decode(ids))
            out.finished.append(bool(done))
            out.lengths.append(len(ids))
    return out


def sample_pairs(policy_ckpt: str | os.PathLike | ckpt.Checkpoint, prompts: Sequence[str], *, n_pairs: int,
                 seed: int, max_new_tokens: int = DEFAULT_NEW_TOKENS, temperature: float = 1.0,
                 batch_size: int = 256, device: str = "auto") -> list[tuple[str, str, str]]:
    """Two sampled chat completions per prompt from a policy checkpoint: ``[(prompt, a, b), ...]``.

    Prompt i of the ``n_pairs`` is ``prompts[i % len(prompts)]``; each is wrapped as a user turn
    (`rlfl.chat_template.chat_prompt`) and answered twice with the batched KV-cache engine, stopping at
    ``<|end|>`` (which is not in the text). The same seed (and batch_size) gives the same pairs.

    Example:
        >>> pairs = sample_pairs("runs/synthetic/sft", ["The soup was"], n_pairs=2, seed=0)  # doctest: +SKIP
        >>> [p for p, a, b in pairs]                                                        # doctest: +SKIP
        ['The soup was', 'The soup was']
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("sample_pairs: no prompts; pass at least one prompt string")
    if n_pairs < 1:
        raise ValueError(f"sample_pairs: n_pairs={n_pairs}; pass a positive number of pairs")
    policy = _open(policy_ckpt, device)
    picked = [prompts[i % len(prompts)] for i in range(n_pairs)]
    doubled = [p for p in picked for _ in range(2)]
    s = _sample(policy, doubled, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, chat=True,
                batch_size=batch_size)
    return [(p, s.completions[2 * i], s.completions[2 * i + 1]) for i, p in enumerate(picked)]


def label_pairs(pairs: Iterable[tuple[str, str, str]], judge: Any, *, min_margin: float = 0.0
                ) -> list[dict[str, str]]:
    """Preference records ``{"prompt", "chosen", "rejected", "source"}``: the judge's higher score wins.

    ``judge`` is any reward source (``score(prompts, completions) -> np.ndarray``), e.g.
    `rlfl.envs.GoldSentiment`. Pairs whose scores differ by ``min_margin`` or less are ties and are
    dropped (the default drops exact ties only, identical completions among them); so are pairs with an
    empty (or blank) side, which the pairs format cannot hold. Write the result with `write_jsonl`.

    Example:
        >>> recs = label_pairs([("The soup was", " great.", " awful.")], GoldSentiment())
        >>> recs[0]["chosen"], recs[0]["rejected"]
        (' great.', ' awful.')
    """
    pairs = list(pairs)
    if min_margin < 0:
        raise ValueError(f"label_pairs: min_margin={min_margin}; pass 0 (drop exact ties) or more")
    usable = [(p, a, b) for p, a, b in pairs if a.strip() and b.strip()]
    if not usable:
        log.warning("label_pairs: none of %d pairs has two non-empty completions", len(pairs))
        return []
    prompts = [p for p, _, _ in usable]
    scores_a = np.asarray(judge.score(prompts, [a for _, a, _ in usable]), dtype=np.float64)
    scores_b = np.asarray(judge.score(prompts, [b for _, _, b in usable]), dtype=np.float64)
    name = source_name(judge)
    records = []
    for (p, a, b), sa, sb in zip(usable, scores_a, scores_b):
        if abs(sa - sb) <= min_margin:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        records.append({"prompt": p, "chosen": chosen, "rejected": rejected, "source": name})
    log.info("label_pairs: %d of %d pairs labelled by %s (dropped: %d with an empty side, %d with scores within "
             "%g)", len(records), len(pairs), name, len(pairs) - len(usable), len(usable) - len(records), min_margin)
    return records


@dataclass(frozen=True)
class GoldRate:
    """What `gold_positive_rate` measures on sampled completions."""

    positive_rate: float  # share with gold sentiment (prompt + completion) > 0
    stop_rate: float  # share that ended with a stop token (<|end|>) within max_new_tokens
    mean_tokens: float  # mean completion length in tokens, stop token excluded
    mean_gold: float  # mean gold sentiment
    n: int


def gold_positive_rate(ckpt_dir: str | os.PathLike | ckpt.Checkpoint, prompts: Sequence[str], *, n: int, seed: int,
                       chat: bool = True, max_new_tokens: int = DEFAULT_NEW_TOKENS, batch_size: int = 256,
                       device: str = "auto") -> GoldRate:
    """The share of a policy's sampled completions the gold judge reads as positive: the metric PPO raises.

    ``n`` completions, one per prompt ``prompts[i % len(prompts)]``, sampled from the plain softmax
    (temperature 1, no top-k/top-p: the distribution PPO optimises), as chat answers when ``chat`` (the
    env's ``chat_template=True``). Also reports the stop rate and the mean length.

    Example:
        >>> r = gold_positive_rate("runs/synthetic/sft", synthetic_review_prompts(256), n=256, seed=0)  # doctest: +SKIP
        >>> r.positive_rate, r.stop_rate                                                                # doctest: +SKIP
        (0.48, 0.93)
    """
    prompts = list(prompts)
    if not prompts or n < 1:
        raise ValueError(f"gold_positive_rate: got {len(prompts)} prompts and n={n}; pass prompts and n >= 1")
    picked = [prompts[i % len(prompts)] for i in range(n)]
    s = _sample(_open(ckpt_dir, device), picked, seed=seed, max_new_tokens=max_new_tokens, temperature=1.0,
                chat=chat, batch_size=batch_size)
    gold = GoldSentiment().score(picked, s.completions)
    return GoldRate(positive_rate=float((gold > 0).mean()), stop_rate=float(np.mean(s.finished)),
                    mean_tokens=float(np.mean(s.lengths)), mean_gold=float(gold.mean()), n=n)


# ------------------------------------------------------------------------------------------ the stages
@dataclass
class SyntheticTaskConfig:
    """Sizes of every preparation stage; the defaults take about 3.5 minutes on 2 CPU cores."""

    seed: int = field(default=0, metadata={"help": "seed of every stage (data, init, order, sampling)"})
    corpus_docs: int = field(default=20000, metadata={"help": "synthetic reviews in the pretraining corpus"})
    n_layer: int = field(default=3, metadata={"help": "transformer blocks of the base model"})
    n_head: int = field(default=4, metadata={"help": "attention heads of the base model"})
    n_embd: int = field(default=96, metadata={"help": "embedding width of the base model"})
    block_size: int = field(default=128, metadata={"help": "context of the base model (prompt + completion must fit)"})
    pretrain_steps: int = field(default=1000, metadata={"help": "pretraining steps"})
    pretrain_batch_size: int = field(default=16, metadata={"help": "windows of block_size tokens per pretraining step"})
    pretrain_lr: float = field(default=6e-3, metadata={"help": "peak learning rate of pretraining"})
    sft_reviews: int = field(default=24000, metadata={"help": "reviews drawn for SFT records (see sft_sentiment_only)"})
    sft_sentiment_only: bool = field(default=True, metadata={
        "help": "SFT only on records the gold judge reads as non-neutral (2 in 5), so the policy writes sentiment"})
    sft_steps: int = field(default=400, metadata={"help": "SFT steps"})
    sft_batch_size: int = field(default=32, metadata={"help": "SFT examples per step"})
    sft_lr: float = field(default=3e-3, metadata={"help": "peak learning rate of SFT"})
    n_pairs: int = field(default=12000, metadata={"help": "pairs sampled from the SFT policy (about half are kept)"})
    pair_min_margin: float = field(default=0.3, metadata={
        "help": "pairs whose gold scores differ by this or less are dropped as ties"})
    rm_init: str = field(default="sft", metadata={
        "help": "base | sft: the checkpoint the reward model starts from (sft reads the policy's answers better)"})
    rm_steps: int = field(default=600, metadata={"help": "reward-model training steps"})
    rm_batch_size: int = field(default=64, metadata={"help": "pairs per reward-model step"})
    rm_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of reward-model training"})
    max_new_tokens: int = field(default=DEFAULT_NEW_TOKENS, metadata={
        "help": "completion budget in tokens (the env's max_new_tokens); SFT responses fit it with <|end|>"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar per training stage"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = all cores)"})

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0; pass --seed 0 or another non-negative integer")
        for name in ("corpus_docs", "n_layer", "n_head", "n_embd", "block_size", "pretrain_steps",
                     "pretrain_batch_size", "sft_reviews", "sft_steps", "sft_batch_size", "n_pairs", "rm_steps",
                     "rm_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1; pass --{flag} 1 or more")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}; change one of them")
        if self.rm_init not in ("base", "sft"):
            raise ValueError(f"rm_init={self.rm_init!r}; pass --rm-init base or --rm-init sft")
        if self.num_threads < 0:
            raise ValueError(f"num_threads={self.num_threads} must be >= 0 (0 = all cores)")
        if self.pair_min_margin < 0:
            raise ValueError(f"pair_min_margin={self.pair_min_margin} must be >= 0")
        if self.block_size < self.max_new_tokens + 16:
            raise ValueError(f"block_size={self.block_size} leaves too little room for a prompt before "
                             f"{self.max_new_tokens} new tokens; pass --block-size {self.max_new_tokens + 64} or more")


# settings that do not change what a stage produces: a second call may differ in them
_RUNTIME_FIELDS = ("device", "progress", "num_threads")


@dataclass
class SyntheticTask:
    """The paths `prepare_synthetic_task` wrote, and its figures (stage seconds, counts, RM accuracy).

    ``figures["rm_val_accuracy"]`` is measured on the held-out tenth of the *training* pairs, so only on
    pairs whose gold margin exceeds ``pair_min_margin``: it overstates the accuracy on all decisive pairs
    (benchmarks/bench_synthetic_task.py measures that one).
    """

    out_dir: Path
    data: Path  # token shards
    base: Path  # pretrained checkpoint
    sft_data: Path  # SFT records (JSONL)
    sft: Path  # SFT policy checkpoint
    pairs: Path  # gold-labelled preference pairs (JSONL)
    reward_model: Path  # reward-model checkpoint
    figures: dict[str, Any] = field(default_factory=dict)


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _check_manifest(path: Path, cfg: SyntheticTaskConfig) -> None:
    """Record the settings in task.json, or refuse settings that differ from the recorded ones."""
    check_settings(path, {k: v for k, v in to_dict(cfg).items() if k not in _RUNTIME_FIELDS})


def _train_config(cfg: SyntheticTaskConfig, out_dir: Path, *, steps: int, batch_size: int, lr: float,
                  seed: int) -> TrainConfig:
    return TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(30, max(1, steps // 10)), eval_interval=0, eval_steps=10,
                       log_interval=max(1, min(50, steps // 5)), checkpoint_interval=100, seed=seed,
                       device=cfg.device, progress=cfg.progress, num_threads=cfg.num_threads)


def prepare_synthetic_task(out_dir: str | os.PathLike, config: SyntheticTaskConfig | None = None,
                           **overrides: Any) -> SyntheticTask:
    """Build (or finish) everything up to PPO on ``rlfl/SyntheticReviews-v0`` in ``out_dir``; see the module doc.

    Settings come from ``config`` (default `SyntheticTaskConfig()`), with keyword ``overrides`` on top
    (``prepare_synthetic_task(d, seed=1, rm_steps=100)``). Finished stages are skipped (logged as
    "skipped"); each stage's wall time is logged and returned in ``figures["seconds"]``.

    Example:
        >>> task = prepare_synthetic_task("runs/synthetic", progress=False)   # doctest: +SKIP
        >>> task.figures["rm_val_accuracy"]                                   # doctest: +SKIP
        0.88
    """
    from rlfl.data import prepare_corpus
    from rlfl.pretrain import PretrainConfig, pretrain
    from rlfl.reward import RewardTrainConfig, train_reward_model
    from rlfl.sft import SFTConfig, sft
    from rlfl.synthetic import synthetic_documents
    from rlfl.tokenizer import byte_tokenizer

    known = {f.name for f in dataclasses.fields(SyntheticTaskConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"prepare_synthetic_task: unknown setting {unknown[0]!r}; pass fields of "
                         f"SyntheticTaskConfig ({', '.join(sorted(known))})")
    cfg = dataclasses.replace(config or SyntheticTaskConfig(), **overrides)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _check_manifest(root / "task.json", cfg)
    task = SyntheticTask(out_dir=root, data=root / "data", base=root / "base", sft_data=root / "sft.jsonl",
                         sft=root / "sft", pairs=root / "pairs.jsonl", reward_model=root / "rm")
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    figures: dict[str, Any] = {"seconds": seconds, "skipped": skipped}

    def stage(name: str, done: bool, output: Path, run) -> None:
        if done:
            skipped.append(name)
            seconds[name] = 0.0
            log.info("stage %s: skipped (%s is complete)", name, output)
            return
        t0 = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - t0
        log.info("stage %s: %.1f s -> %s", name, seconds[name], output)

    s = cfg.seed
    stage("corpus", (task.data / "meta.json").is_file(), task.data, lambda: prepare_corpus(
        synthetic_documents(cfg.corpus_docs, seed=s + CORPUS_SEED), byte_tokenizer(), task.data, seed=s + CORPUS_SEED))

    stage("pretrain", checkpoint_done(task.base, cfg.pretrain_steps), task.base, lambda: pretrain(PretrainConfig(
        data=str(task.data), n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
        train=_train_config(cfg, task.base, steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch_size,
                            lr=cfg.pretrain_lr, seed=s))))

    def sft_records() -> None:
        records = review_sft_records(cfg.sft_reviews, seed=s + SFT_SEED, max_response_bytes=cfg.max_new_tokens - 1,
                                     sentiment_only=cfg.sft_sentiment_only)
        write_jsonl(task.sft_data, records)
    stage("sft_data", task.sft_data.is_file(), task.sft_data, sft_records)

    stage("sft", checkpoint_done(task.sft, cfg.sft_steps), task.sft, lambda: sft(SFTConfig(
        init_from=str(task.base), data=str(task.sft_data), num_samples=2, sample_tokens=cfg.max_new_tokens,
        train=_train_config(cfg, task.sft, steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr,
                            seed=s))))

    def pairs() -> None:
        prompts = synthetic_review_prompts(cfg.n_pairs, seed=s + PAIRS_SEED)
        sampled = sample_pairs(task.sft, prompts, n_pairs=cfg.n_pairs, seed=s + PAIRS_SEED,
                               max_new_tokens=cfg.max_new_tokens, device=cfg.device)
        records = label_pairs(sampled, GoldSentiment(), min_margin=cfg.pair_min_margin)
        if not records:
            raise ValueError(f"{task.sft}: no usable pair among {len(sampled)} samples (all ties or empty); "
                             "train the SFT policy longer (--sft-steps) or sample more pairs (--n-pairs)")
        write_jsonl(task.pairs, records)
    stage("pairs", task.pairs.is_file(), task.pairs, pairs)

    stage("reward_model", checkpoint_done(task.reward_model, cfg.rm_steps, need="reward"), task.reward_model,
          lambda: train_reward_model(RewardTrainConfig(
              init_from=str(task.base if cfg.rm_init == "base" else task.sft), data=str(task.pairs),
              val_fraction=0.1, stats_samples=1024,
              train=_train_config(cfg, task.reward_model, steps=cfg.rm_steps, batch_size=cfg.rm_batch_size,
                                  lr=cfg.rm_lr, seed=s))))

    figures["sft_records"] = _count_lines(task.sft_data)
    figures["pairs_kept"] = _count_lines(task.pairs)
    reward = ckpt.read_config(task.reward_model).get("reward", {})
    figures["rm_val_accuracy"] = reward.get("val_accuracy")
    figures["rm_val_pairs"] = reward.get("val_items")
    figures["total_seconds"] = sum(seconds.values())
    task.figures = figures
    log.info("synthetic task ready in %s (%.1f s; skipped: %s)", root, figures["total_seconds"],
             ", ".join(skipped) or "none")
    return task

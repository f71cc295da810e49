"""Supervised fine-tuning (instruct-tuning) of any checkpoint on conversations, through the shared ``Trainer``.

The stage supplies only what is specific to SFT: conversations rendered with the chat template, a
cross-entropy loss on **assistant tokens only** (prompt and padding targets are -100), optional packing
of several examples per block (attention kept inside each example), held-out eval loss and a few
before/after samples on held-out prompts. The result is a checkpoint of the same format, with its parent
recorded, that any later stage (PPO, serve, sample) opens. With ``--lora-rank 8`` (`rlfl.lora`) only LoRA
adapters on the ``--lora-target-modules`` layers train; the checkpoint stores them beside the frozen weights.

Example:
    >>> from rlfl.sft import SFTConfig, sft
    >>> from rlfl.trainer import TrainConfig
    >>> sft(SFTConfig(init_from="runs/base", data="../shared/data/sft/alpaca/alpaca_2k_sample.json.gz",
    ...               train=TrainConfig(out_dir="runs/sft", max_steps=300)))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlfl import checkpoint as ckpt
from rlfl.chat_template import chat_prompt
from rlfl.config import to_dict
from rlfl.files import atomic_write_text
from rlfl.evaluate import greedy_answers
from rlfl.lora import LoRASettings, apply_lora, merge_lora
from rlfl.sft_data import SFTBatcher, read_sft, split_examples, tokenize_conversations
from rlfl.tokenizer import Tokenizer
from rlfl.trainer import TrainConfig, Trainer, finetune_defaults, setup_runtime

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """What to fine-tune, on which conversations; the optimisation lives in ``train``."""

    init_from: str = field(default="runs/base", metadata={
        "help": "checkpoint directory to start from (any stage), or hf:DIR (a local Hugging Face folder)"})
    data: str = field(default="", metadata={
        "help": "SFT file: JSONL(.gz) of {prompt, response} | {messages} | {instruction, input, output} | "
                "{question, answer}, or a JSON array (.json/.json.gz)"})
    val_data: str | None = field(default=None, metadata={"help": "held-out file (default: split off --val-fraction)"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of examples held out when --val-data is unset"})
    on_bad_line: str = field(default="error", metadata={"help": "error | skip: what to do with a malformed line"})
    max_examples: int | None = field(default=None, metadata={"help": "read at most this many examples"})
    block_size: int = field(default=0, metadata={"help": "tokens per example/row (0 = the model's context)"})
    pack: bool = field(default=False, metadata={"help": "pack several examples per row (attention stays per example)"})
    num_samples: int = field(default=2, metadata={"help": "held-out prompts sampled before and after training"})
    sample_tokens: int = field(default=64, metadata={"help": "max new tokens of each before/after sample"})
    lora: LoRASettings = field(default_factory=LoRASettings, metadata={"help": "LoRA adapters (off by default)"})
    train: TrainConfig = field(default_factory=lambda: finetune_defaults("runs/sft"),
                               metadata={"help": "training loop settings"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no SFT data given; pass --data FILE (JSONL of prompt/response, messages or Alpaca)")
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line={self.on_bad_line!r}; pass --on-bad-line error or --on-bad-line skip")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.block_size < 0 or self.num_samples < 0 or self.sample_tokens < 1:
            raise ValueError("block_size and num_samples must be >= 0 and sample_tokens >= 1")


def sft_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised targets (-100 targets, i.e. prompt and padding, ignored)."""
    if len(batch) == 3:  # packed rows: attention stays inside each example
        x, y, segments = batch
        logits = model(x, segment_ids=segments)
    else:
        x, y = batch
        logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


def sample_answers(model: nn.Module, tokenizer: Tokenizer, conversations: list[list[dict]], *,
                   max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy answers of ``model`` to the prompts of held-out conversations (everything before the last turn)."""
    prompts = [chat_prompt(tokenizer, conv[:-1]) for conv in conversations]
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return [{"prompt": conv[-2]["content"] if len(conv) > 1 else "", "reference": conv[-1]["content"],
             "answer": answer} for conv, answer in zip(conversations, answers)]


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def sft(cfg: SFTConfig) -> Path:
    """Fine-tune ``cfg.init_from`` on ``cfg.data``; returns the new checkpoint directory."""
    tc = cfg.train
    runtime = setup_runtime(tc)
    source, block = ckpt.load_for_finetuning(cfg.init_from, cfg.block_size)
    # a LoRA checkpoint starts as its merged weights; this stage's own adapters (if any) go on top
    model, tokenizer = apply_lora(merge_lora(source.model), cfg.lora, seed=tc.seed), source.tokenizer
    data = read_sft(cfg.data, on_bad_line=cfg.on_bad_line, max_examples=cfg.max_examples)
    if cfg.val_data:
        train_convs = data.conversations
        val_convs = read_sft(cfg.val_data, on_bad_line=cfg.on_bad_line).conversations
    else:
        train_convs, val_convs = split_examples(data.conversations, cfg.val_fraction, tc.seed)
    # an example of n tokens feeds n - 1 inputs (its last token predicts nothing), so block + 1 fit
    train_ex = tokenize_conversations(train_convs, tokenizer, max_len=block + 1)
    val_ex = tokenize_conversations(val_convs, tokenizer, max_len=block + 1)
    if runtime.is_main:
        log.info("sft: %d train / %d val examples from %s (%d bad lines skipped)", len(train_ex), len(val_ex),
                 cfg.data, data.skipped)
    batcher = SFTBatcher(train_ex, tc.batch_size, block, pad_id=tokenizer.pad_id, seed=tc.seed, pack=cfg.pack,
                         rank=runtime.rank, world_size=runtime.world_size)
    val_batcher = (SFTBatcher(val_ex, tc.batch_size, block, pad_id=tokenizer.pad_id, seed=tc.seed + 1,
                              pack=cfg.pack) if val_ex else None)
    picked = val_convs[: cfg.num_samples]
    if val_batcher is not None and tc.eval_steps > val_batcher.eval_batches_per_pass:
        tc = dataclasses.replace(tc, eval_steps=val_batcher.eval_batches_per_pass)  # one pass over val is enough

    trainer = Trainer(
        model, tc, stage="sft", tokenizer=tokenizer,
        batch_fn=lambda step, micro: batcher.batch(step * tc.grad_accum + micro),
        loss_fn=sft_loss, tokens_per_batch=batcher.tokens_per_batch,
        eval_batch_fn=val_batcher.batch_at if val_batcher else None,
        parent=ckpt.parent_spec(cfg.init_from),
        extra_config={"sft": {k: v for k, v in to_dict(cfg).items() if k != "train"},
                      "data": {"train_examples": len(train_ex), "val_examples": len(val_ex), "skipped": data.skipped}},
        runtime=runtime,
    )
    resumed = trainer.step > 0
    before = {} if resumed else trainer.evaluate()
    before_samples = [] if resumed else sample_answers(model, tokenizer, picked, max_new_tokens=cfg.sample_tokens)
    summary = trainer.fit()
    if runtime.is_main:
        after_samples = sample_answers(model, tokenizer, picked, max_new_tokens=cfg.sample_tokens)
        report = {"val_loss_before": before.get("val/loss"), "val_loss_after": summary.get("val/loss"),
                  "samples": [{**a, "before": b["answer"]} if b else a
                              for a, b in zip(after_samples, before_samples or [None] * len(after_samples))]}
        _write_json(Path(tc.out_dir) / "sft_report.json", report)
        if before:
            log.info("sft: val loss %.4f -> %.4f", before["val/loss"], summary.get("val/loss", float("nan")))
        for s in report["samples"]:
            log.info("prompt: %r\n  before: %r\n  after:  %r", s["prompt"][:200], s.get("before", "")[:200],
                     s["answer"][:200])
    return Path(tc.out_dir)

"""Direct Preference Optimisation (DPO, and IPO) of a policy on preference pairs, through the shared ``Trainer``.

DPO learns from (prompt, chosen, rejected) pairs without a reward model or sampling: it raises the policy's
log-prob of the chosen completion relative to a frozen reference and lowers that of the rejected one, with the
loss of `rlfl.preference_loss` (``sigmoid``: DPO, with optional ``label_smoothing``; ``ipo``: IPO), whose
settings (``loss_type``, ``beta``, ``label_smoothing``) it shares with online DPO (`rlfl.agents.OnlineDPO`).

``beta * (log pi - log ref)`` of a completion is its *implicit reward*; every evaluation on the held-out pairs
reports its mean for chosen and rejected completions, their margin and the accuracy (share of pairs whose
chosen side has the higher implicit reward) beside the loss, and ``dpo_report.json`` in the output directory
holds them before and after training with a few greedy answers to held-out prompts.

**Data** is what ``rlfl reward train`` reads (``rlfl.preference_data.load_reward_data``): a pairs JSONL,
``hh:FILE`` or ``imdb:FILE``. Ties say nothing about which side to prefer and are dropped; margins are not
used. **Sequences** are the prompt encoded as the text envs encode it for the policy (a chat user turn when
``chat_template``, which follows the starting checkpoint by default, else plain text), then the completion's
tokens and the stop token the policy would end it with (``<|end|>`` in chat, else ``<|endoftext|>``). A pair
too long for ``block_size`` loses the start of its prompt (the same tokens on both sides) and, if the
completions alone do not fit, their ends. Only completion tokens count in the loss.

**LoRA** (``--lora-rank 8``, `rlfl.lora`): only the adapters train, and unless ``--reference`` names another
checkpoint the reference is the frozen base itself with the adapters switched off (one copy of the weights).

Example:
    >>> from rlfl.dpo import DPOConfig, dpo
    >>> from rlfl.trainer import TrainConfig
    >>> dpo(DPOConfig(init_from="runs/sft", data="pairs.jsonl",
    ...               train=TrainConfig(out_dir="runs/dpo", max_steps=200, lr=1e-5)))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlfl import checkpoint as ckpt
from rlfl.chat_template import end_token, is_chat_checkpoint
from rlfl.config import to_dict
from rlfl.evaluate import encode_prompt, greedy_answers
from rlfl.files import atomic_write_text
from rlfl.lora import FrozenBase, LoRASettings, apply_lora, merge_lora
from rlfl.model import GPT
from rlfl.preference_data import PreferencePair, load_reward_data
from rlfl.preference_loss import PreferenceLossSettings, preference_loss
from rlfl.reward import RewardBatcher, RewardExamples
from rlfl.sft_data import split_examples
from rlfl.tokenizer import Tokenizer
from rlfl.trainer import TrainConfig, Trainer, finetune_defaults, setup_runtime

log = logging.getLogger(__name__)

PAIRS_FORMS = "a pairs JSONL {prompt, chosen, rejected}, hh:FILE or imdb:FILE"


@dataclass
class DPOConfig(PreferenceLossSettings):
    """What policy to tune with DPO/IPO, on which pairs; the optimisation lives in ``train``."""

    init_from: str = field(default="runs/sft", metadata={
        "help": "checkpoint directory of the starting policy (any stage), or hf:DIR (a local Hugging Face folder)"})
    reference: str | None = field(default=None, metadata={
        "help": "checkpoint directory of the frozen reference (default: the starting policy's weights)"})
    data: str = field(default="", metadata={
        "help": "preference pairs: a pairs JSONL {prompt, chosen, rejected} (.gz ok), hh:FILE[,FILE...] (HH-RLHF) "
                "or imdb:FILE[,...] (positive over negative reviews); ties are dropped"})
    val_data: str | None = field(default=None, metadata={"help": "held-out pairs, same forms as --data "
                                                                 "(default: split off --val-fraction)"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of the pairs held out when --val-data is unset"})
    on_bad_line: str = field(default="error", metadata={"help": "error | skip: what to do with a malformed line"})
    max_examples: int | None = field(default=None, metadata={"help": "read at most this many pairs"})
    chat_template: bool | None = field(default=None, metadata={
        "help": "encode prompts as a chat user turn (default: when the starting checkpoint is a chat checkpoint)"})
    append_stop: bool = field(default=True, metadata={
        "help": "end each completion with the policy's stop token (<|end|> in chat, else <|endoftext|>)"})
    block_size: int = field(default=0, metadata={
        "help": "max tokens of prompt + completion (0 = the model's context); longer prompts keep their end"})
    disable_dropout: bool = field(default=True, metadata={
        "help": "train with dropout off, so log-ratios measure the weights rather than dropout noise"})
    num_samples: int = field(default=2, metadata={"help": "held-out prompts answered (greedy) before and after"})
    sample_tokens: int = field(default=64, metadata={"help": "max new tokens of each before/after answer"})
    lora: LoRASettings = field(default_factory=LoRASettings, metadata={"help": "LoRA adapters (off by default)"})
    train: TrainConfig = field(default_factory=lambda: finetune_defaults("runs/dpo"),
                               metadata={"help": "training loop settings"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError(f"no preference data given; pass --data with {PAIRS_FORMS}")
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line={self.on_bad_line!r}; pass --on-bad-line error or --on-bad-line skip")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1); pass e.g. --val-fraction 0.05")
        if self.block_size < 0 or self.block_size == 1:
            raise ValueError(f"block_size={self.block_size}; pass 0 (the model's context) or 2 or more")
        if self.num_samples < 0 or self.sample_tokens < 1:
            raise ValueError("num_samples must be >= 0 and sample_tokens >= 1; fix --num-samples/--sample-tokens")
        if self.disable_dropout and self.lora.lora_dropout:
            raise ValueError(f"lora_dropout={self.lora.lora_dropout} has no effect with --disable-dropout (the "
                             "default); pass --no-disable-dropout to train with it, or drop --lora-dropout")


# ---------------------------------------------------------------------------------------------- loss
def completion_logps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (R,) of each row's completion tokens, and how many there are (R,).

    ``x`` (R, W) are right-padded rows; ``labels`` (R, W) holds at column t the completion token that
    position t predicts, -100 elsewhere (prompt and padding). Right padding needs no attention mask: under
    causal attention a position never sees the padding after it. The model is *called* (not its
    ``hidden_states``), so a DDP-wrapped policy synchronises its gradients as usual.
    """
    logits = model(x)
    picked = labels != -100
    logp = torch.log_softmax(logits[picked].float(), dim=-1).gather(1, labels[picked][:, None])[:, 0]
    rows = picked.nonzero()[:, 0]  # boolean indexing is row-major, the order nonzero lists the positions in
    sums = torch.zeros(x.shape[0], dtype=logp.dtype, device=x.device).index_add(0, rows, logp)
    return sums, picked.sum(1)


class DPOLoss:
    """The ``loss_fn`` of the DPO stage: ``(policy, (x, labels)) -> (loss, metrics)`` against a frozen reference.

    A batch holds B chosen rows and then the B rejected rows of the same pairs, so one forward of the policy
    covers both sides. The reference's log-probs are computed per batch under ``no_grad`` rather than once up
    front: the reference runs the very function the policy runs on the very same tensors (and under the same
    autocast), so while the two have the same weights they agree bit for bit (the loss is exactly log 2 at
    step 0 on a deterministic device); nothing has to be kept per example or recomputed on resume; and the
    cost is one forward without backward, about a quarter of a step. With LoRA the default reference is
    `rlfl.lora.FrozenBase` of the policy: the same weights with the adapters switched off, not a copy.
    """

    def __init__(self, reference: nn.Module, *, beta: float, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0) -> None:
        self.reference = reference.eval().requires_grad_(False)
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing

    def __call__(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, labels = batch
        with torch.no_grad():
            ref, _ = completion_logps(self.reference, x, labels)
        policy, n = completion_logps(model, x, labels)
        if self.loss_type == "ipo":  # IPO compares per-token mean log-probs
            n = n.clamp(min=1)
            policy, ref = policy / n, ref / n
        half = x.shape[0] // 2
        return preference_loss(policy[:half], policy[half:], ref[:half], ref[half:], beta=self.beta,
                               loss_type=self.loss_type, label_smoothing=self.label_smoothing)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class PairExamples:
    """Tokenized pairs: ``seqs`` = [chosen0, rejected0, chosen1, ...] (prompt + completion ids), ``starts`` =
    where each sequence's completion begins, and how many prompts/completions were truncated."""

    seqs: list[np.ndarray]
    starts: np.ndarray
    cut_prompts: int = 0
    cut_completions: int = 0

    def __len__(self) -> int:
        return len(self.seqs) // 2


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer: Tokenizer, *, chat: bool, max_len: int,
                 append_stop: bool = True) -> PairExamples:
    """Prompt ids (as the env encodes them for the policy) + completion ids (+ the stop token) of both sides.

    Both sides keep the same prompt tokens: the last ``max_len - longest completion`` of them (at least one).
    A completion longer than ``max_len - 1`` tokens keeps its first ``max_len - 1``.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> ex = encode_pairs([PreferencePair("Say:", " yes", " no")], tok, chat=False, max_len=6)
        >>> tok.decode(ex.seqs[0]), tok.decode(ex.seqs[1][ex.starts[1]:]), ex.cut_prompts
        (': yes<|endoftext|>', ' no<|endoftext|>', 1)
    """
    if max_len < 2:
        raise ValueError(f"max_len={max_len} must be >= 2 (a prompt token and a completion token); raise --block-size")
    stop = [end_token(tokenizer) if chat else tokenizer.eot_id] if append_stop else []
    texts = tokenizer.encode_batch([t for p in pairs for t in (p.chosen, p.rejected)])
    seqs, starts = [], []
    cut_prompts = cut_completions = 0
    for i, pair in enumerate(pairs):
        sides = [texts[2 * i] + stop, texts[2 * i + 1] + stop]
        if max(len(s) for s in sides) > max_len - 1:
            sides, cut_completions = [s[: max_len - 1] for s in sides], cut_completions + 1
        full = encode_prompt(tokenizer, pair.prompt, chat=chat, max_prompt_tokens=max_len)
        prompt = full[-(max_len - max(len(s) for s in sides)):]  # at least one token: a completion is < max_len
        cut_prompts += len(prompt) < len(full)
        for side in sides:
            seqs.append(np.asarray(prompt + side, dtype=np.int64))
            starts.append(len(prompt))
    return PairExamples(seqs, np.asarray(starts, dtype=np.int64), cut_prompts, cut_completions)


class DPOBatcher(RewardBatcher):
    """Batches ``(x, labels)`` of pairs for the shared loop: rows 0..B-1 the chosen sides, B..2B-1 the rejected.

    The order of pairs is reward training's (`rlfl.reward.RewardBatcher`: reproducible from seed, step and
    rank, so a resumed run sees the batches of an uninterrupted one). Rows are right-padded to the batch's
    longest; ``labels`` holds the completion tokens at the positions that predict them, -100 elsewhere.
    """

    def __init__(self, data: PairExamples, batch_size: int, *, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        n = len(data)
        order = RewardExamples("pairs", data.seqs, np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.float32))
        super().__init__(order, batch_size, pad_id=pad_id, seed=seed, rank=rank, world_size=world_size)
        self.starts = data.starts

    def assemble(self, items: list[int]) -> tuple[torch.Tensor, ...]:
        rows = [2 * i for i in items] + [2 * i + 1 for i in items]
        seqs = [self.data.seqs[r] for r in rows]
        width = max(len(s) for s in seqs)
        x = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), -100, dtype=np.int64)
        for j, (r, s) in enumerate(zip(rows, seqs)):
            x[j, : len(s)] = s
            start = int(self.starts[r])
            labels[j, start - 1: len(s) - 1] = s[start:]  # position t predicts token t + 1
        return torch.from_numpy(x), torch.from_numpy(labels)


def load_pairs(spec: str, *, flag: str, on_bad_line: str, seed: int,
               max_examples: int | None = None) -> tuple[list[PreferencePair], dict[str, Any]]:
    """The decisive pairs of ``spec`` (ties dropped) and counts for the record; labels get a one-line error."""
    data = load_reward_data(spec, on_bad_line=on_bad_line, max_examples=max_examples, seed=seed)
    if data.kind != "pairs":
        raise ValueError(f"{flag} {spec} holds labelled texts, not preference pairs; DPO learns from pairs: pass "
                         f"{PAIRS_FORMS}")
    pairs = [p for p in data.pairs if not p.tie]
    if not pairs:
        raise ValueError(f"{flag} {spec}: all {len(data.pairs)} pairs are ties, which DPO cannot learn from; pass "
                         "pairs with a preferred side")
    if any(p.margin for p in pairs):
        log.info("dpo: %s has pair margins; DPO does not use them", spec)
    ties = len(data.pairs) - len(pairs)
    return pairs, {"skipped": data.skipped, "skip_reasons": data.skip_reasons, "ties_dropped": ties}


# ---------------------------------------------------------------------------------------------- stage
def dpo(cfg: DPOConfig) -> Path:
    """Tune ``cfg.init_from`` with DPO/IPO on ``cfg.data``; returns the new checkpoint directory (stage "dpo")."""
    tc = cfg.train
    runtime = setup_runtime(tc)
    source, block = ckpt.load_for_finetuning(cfg.init_from, cfg.block_size)
    # a LoRA checkpoint starts as its merged weights; this stage's own adapters (if any) go on top
    model, tokenizer = apply_lora(merge_lora(source.model), cfg.lora, seed=tc.seed), source.tokenizer
    chat = is_chat_checkpoint(source.config) if cfg.chat_template is None else cfg.chat_template

    read = {"on_bad_line": cfg.on_bad_line, "seed": tc.seed}
    pairs, counts = load_pairs(cfg.data, flag="--data", max_examples=cfg.max_examples, **read)
    if cfg.val_data:
        train_pairs, (val_pairs, _) = pairs, load_pairs(cfg.val_data, flag="--val-data", **read)
    else:
        train_pairs, val_pairs = split_examples(pairs, cfg.val_fraction, tc.seed)
    train_ex = encode_pairs(train_pairs, tokenizer, chat=chat, max_len=block, append_stop=cfg.append_stop)
    val_ex = encode_pairs(val_pairs, tokenizer, chat=chat, max_len=block, append_stop=cfg.append_stop)
    cut = (train_ex.cut_prompts + val_ex.cut_prompts, train_ex.cut_completions + val_ex.cut_completions)
    if runtime.is_main:
        log.info("dpo: %d train / %d val pairs from %s (%s prompts, %d ties dropped, %d bad lines skipped)",
                 len(train_ex), len(val_ex), cfg.data, "chat" if chat else "plain-text", counts["ties_dropped"],
                 counts["skipped"])
        if any(cut):
            log.warning("dpo: %d pair(s) lost the start of their prompt and %d the end of their completions to fit "
                        "%d tokens; raise --block-size or shorten the texts", cut[0], cut[1], block)

    reference = ckpt.load_checkpoint(cfg.reference, device=runtime.device) if cfg.reference else None
    if reference is not None and reference.tokenizer.fingerprint != tokenizer.fingerprint:
        raise ValueError(f"--reference {cfg.reference}: its tokenizer differs from --init-from {cfg.init_from}'s; "
                         "pass a reference trained with the same tokenizer")
    if reference is not None and reference.model.config.block_size < block:
        raise ValueError(f"--reference {cfg.reference}: context {reference.model.config.block_size} is shorter than "
                         f"--block-size {block}; pass --block-size {reference.model.config.block_size} or less")
    # the default reference is the starting weights: with LoRA the frozen base itself (the adapters switched off,
    # no copy), else a copy made before the Trainer (which may resume) touches them
    if reference is not None:
        ref_model: nn.Module = reference.model
    elif cfg.lora.lora_rank:
        ref_model = FrozenBase(model)
    else:
        ref_model = _frozen_copy(model).to(runtime.device)
    if cfg.disable_dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0

    batcher = DPOBatcher(train_ex, tc.batch_size, pad_id=tokenizer.pad_id, seed=tc.seed, rank=runtime.rank,
                         world_size=runtime.world_size)
    val_batcher = DPOBatcher(val_ex, tc.batch_size, pad_id=tokenizer.pad_id) if len(val_ex) else None
    if val_batcher is not None and tc.eval_steps > val_batcher.eval_batches_per_pass:
        tc = dataclasses.replace(tc, eval_steps=val_batcher.eval_batches_per_pass)  # one pass is enough
    settings = {k: v for k, v in to_dict(cfg).items() if k != "train"}
    trainer = Trainer(
        model, tc, stage="dpo", tokenizer=tokenizer,
        batch_fn=lambda step, micro: batcher.batch(step * tc.grad_accum + micro),
        loss_fn=DPOLoss(ref_model, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing),
        tokens_per_batch=batcher.tokens_per_batch,
        eval_batch_fn=val_batcher.batch_at if val_batcher else None,
        parent=ckpt.parent_spec(cfg.init_from),
        extra_config={"dpo": {**settings, "chat_template": chat},  # as resolved: `is_chat_checkpoint` reads it
                      "data": {"train": len(train_ex), "val": len(val_ex), **counts, "cut_prompts": cut[0],
                               "cut_completions": cut[1]}},
        runtime=runtime,
    )
    picked = [val_ex.seqs[2 * i][: val_ex.starts[2 * i]].tolist() for i in range(min(cfg.num_samples, len(val_ex)))]
    resumed = trainer.step > 0
    before = {} if resumed else trainer.evaluate()
    answers_before = [] if resumed else greedy_answers(model, tokenizer, picked, max_new_tokens=cfg.sample_tokens)
    summary = trainer.fit()
    if runtime.is_main:
        after = {k: v for k, v in summary.items() if k.startswith("val/")}
        answers = greedy_answers(model, tokenizer, picked, max_new_tokens=cfg.sample_tokens)
        report = {"loss_type": cfg.loss_type, "beta": cfg.beta, "chat_template": chat,
                  "val_before": before or None, "val_after": after or None,
                  "samples": [{"prompt": tokenizer.decode(p), "answer": a,
                               **({"before": answers_before[i]} if answers_before else {})}
                              for i, (p, a) in enumerate(zip(picked, answers))]}
        atomic_write_text(Path(tc.out_dir) / "dpo_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if before and after:
            log.info("dpo: val loss %.4f -> %.4f, accuracy %.3f -> %.3f, margin %.4f -> %.4f", before["val/loss"],
                     after["val/loss"], before["val/accuracy"], after["val/accuracy"], before["val/margin"],
                     after["val/margin"])
    return Path(tc.out_dir)


def _frozen_copy(model: GPT) -> GPT:
    """A separate copy of ``model`` (weights, tied head and all), in eval mode and without gradients."""
    return copy.deepcopy(model).eval().requires_grad_(False)

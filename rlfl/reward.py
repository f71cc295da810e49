"""Reward models: a GPT trunk from any rlfl checkpoint plus a scalar head, trained with the shared ``Trainer``.

**Input format.** A (prompt, completion) pair is scored as the token sequence

    tokenizer.encode(prompt + completion) + [<|endoftext|>]

(the two strings are joined *before* encoding, so the tokens are those of the whole text; special-token text
inside them is encoded as ordinary text). The score is the head applied to the final hidden state of the
last real token, the ``<|endoftext|>``: under causal attention it is the one position that has read the whole
text. Batches are right-padded, so padding never reaches a real position and needs no attention mask.

**Too long.** A sequence longer than the context (``block_size``) is **left-truncated**: its *last*
``block_size`` tokens are kept, so the end of the completion and the ``<|endoftext|>`` the score is read at
stay, and the start of the prompt goes. A warning says how many were cut (at most once a minute while
scoring, so an environment scoring thousands of completions does not flood the log).

**Training** (``train_reward_model``, ``rlfl reward train``) runs through the one training loop with stage
``"reward"``. Preference pairs use the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected - margin)``;
a tie is a 0.5/0.5 target on ``r_chosen - r_rejected``. Binary labels use the logistic loss on the score,
scalar labels squared error. Eval reports the loss and the pair accuracy. At the end the score mean/std
over a sample of the training texts, the exact pair accuracy on the whole validation set and the input
format are recorded under ``"reward"`` in the checkpoint's ``config.json``; ``load_reward_model`` uses the
mean/std to normalise scores, which makes it a ready reward source for ``rlfl.envs``. With ``--lora-rank 8``
(`rlfl.lora`) the trunk's weights stay frozen and only its LoRA adapters and the scalar head train.

Example:
    >>> from rlfl.reward import RewardTrainConfig, load_reward_model, train_reward_model
    >>> from rlfl.trainer import TrainConfig
    >>> out = train_reward_model(RewardTrainConfig(init_from="runs/base", data="pairs.jsonl",
    ...                                            train=TrainConfig(out_dir="runs/rm")))  # doctest: +SKIP
    >>> load_reward_model(out).score(["Q: 2+2?"], [" 4"])                                  # doctest: +SKIP
    array([0.73])
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlfl import checkpoint as ckpt
from rlfl.config import to_dict
from rlfl.lora import LoRASettings, apply_lora, merge_lora
from rlfl.model import GPT
from rlfl.preference_data import LabelData, PreferenceData, load_reward_data
from rlfl.sft_data import split_examples
from rlfl.tokenizer import Tokenizer
from rlfl.trainer import TrainConfig, Trainer, finetune_defaults, setup_runtime

log = logging.getLogger(__name__)

INPUT_FORMAT = "encode(prompt + completion) + [<|endoftext|>], score at the last token, left-truncated"
WARN_EVERY_S = 60.0  # truncation warnings while scoring: at most one per this many seconds


# ---------------------------------------------------------------------------------------------- model
class RewardModel(nn.Module):
    """A GPT trunk (``.gpt``) and a linear scalar head (``.head``): token ids -> one score per sequence."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, 1)
        # a small head starts every score near 0, so the first Bradley-Terry steps see p = 0.5 everywhere
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of right-padded ids (B, T) whose real lengths are ``lengths`` (B,)."""
        h = self.gpt.hidden_states(idx)
        last = h[torch.arange(idx.shape[0], device=idx.device), lengths - 1]
        return self.head(last).squeeze(-1)


class _TruncationLog:
    """Counts left-truncated sequences and warns about them at most once per ``WARN_EVERY_S``."""

    def __init__(self) -> None:
        self.pending, self.last = 0, -float("inf")

    def note(self, n_cut: int, n_total: int, max_len: int) -> None:
        self.pending += n_cut
        if self.pending and time.monotonic() - self.last >= WARN_EVERY_S:
            log.warning("left-truncated %d sequence(s) longer than %d tokens to their last %d since the last "
                        "warning (%d of %d in this call): the start of the prompt is lost; raise --block-size or "
                        "shorten the prompts", self.pending, max_len, max_len, n_cut, n_total)
            self.pending, self.last = 0, time.monotonic()


_truncations = _TruncationLog()


def encode_for_reward(tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str], max_len: int
                      ) -> tuple[list[np.ndarray], int]:
    """Token ids of each ``prompt + completion`` plus ``<|endoftext|>``, left-truncated to ``max_len`` (after a
    BOS for a tokenizer that adds one).

    Returns the id arrays and how many were truncated (a warning is logged, rate-limited).

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> ids, cut = encode_for_reward(tok, ["ab"], ["cdef"], max_len=4)
        >>> tok.decode(ids[0][:-1]), int(ids[0][-1]) == tok.eot_id, cut
        ('def', True, 1)
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one of each per text")
    if max_len < 2:
        raise ValueError(f"max_len={max_len} must be >= 2 (a token and <|endoftext|>); raise --block-size")
    texts = [p + c for p, c in zip(prompts, completions)]
    out, cut = [], 0
    bos = tokenizer.bos_prefix  # [] unless the tokenizer's model expects a BOS first (Llama 3)
    for ids in tokenizer.encode_batch(texts):
        ids = [*bos, *ids, tokenizer.eot_id]
        if len(ids) > max_len:
            ids, cut = ids[-max_len:], cut + 1
        out.append(np.asarray(ids, dtype=np.int64))
    _truncations.note(cut, len(texts), max_len)
    return out, cut


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       target: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Bradley-Terry loss: ``-log sigmoid(chosen - rejected - margin)``; ``target`` 0.5 marks a tie.

    In general the loss is the cross-entropy of ``sigmoid(chosen - rejected - margin)`` against ``target``
    (1 = chosen is better, the default; 0.5 = a tie, whose margin should be 0).

    Example:
        >>> round(float(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))), 4)  # -log sigmoid(1)
        0.3133
    """
    d = chosen.float() - rejected.float()
    if margin is not None:
        d = d - margin.float()
    if target is None:
        return -F.logsigmoid(d).mean()
    return F.binary_cross_entropy_with_logits(d, target.float())


def _pair_accuracy(diff: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Share of decisive (non-tie) pairs whose chosen side scored higher; 0.5 (chance) if none is decisive."""
    decisive = target > 0.75
    n = int(decisive.sum())
    return float((diff[decisive] > 0).sum()) / n if n else 0.5


def _ordered_pairs_accuracy(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Over all (i, j) with label_i > label_j: the share with score_i > score_j (0.5 if there is none)."""
    higher = labels[:, None] > labels[None, :]
    n = int(higher.sum())
    return float(((scores[:, None] > scores[None, :]) & higher).sum()) / n if n else 0.5


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RewardExamples:
    """Tokenized reward data. Pairs: ``seqs`` = [chosen0, rejected0, chosen1, ...], ``values`` = target
    (1 = chosen better, 0.5 = tie). Labels: one sequence per example, ``values`` = its label."""

    kind: str  # "pairs" | "labels"
    seqs: list[np.ndarray]
    values: np.ndarray
    margin: np.ndarray
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.values)


def encode_reward_data(data: PreferenceData | LabelData, tokenizer: Tokenizer, max_len: int) -> RewardExamples:
    """Tokenize pairs or labelled texts (see ``encode_for_reward``) for ``RewardBatcher``."""
    if isinstance(data, PreferenceData):
        prompts = [p.prompt for p in data.pairs for _ in range(2)]
        texts = [t for p in data.pairs for t in (p.chosen, p.rejected)]
        values = np.array([0.5 if p.tie else 1.0 for p in data.pairs], dtype=np.float32)
        margin = np.array([p.margin for p in data.pairs], dtype=np.float32)
    else:
        prompts, texts = [e.prompt for e in data.examples], [e.text for e in data.examples]
        values = np.array([e.label for e in data.examples], dtype=np.float32)
        margin = np.zeros(len(values), dtype=np.float32)
    seqs, cut = encode_for_reward(tokenizer, prompts, texts, max_len)
    return RewardExamples(data.kind, seqs, values, margin, cut)


def _pad(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return torch.from_numpy(x), torch.from_numpy(lengths)


class RewardBatcher:
    """Batches of pairs or labelled texts for the shared loop, reproducible from (seed, step, rank).

    Epoch e visits the items in the order ``np.random.default_rng([seed, e]).permutation(n)``, epochs follow
    each other, and step s of rank r takes items ``(s * world_size + r) * batch_size`` onwards of that stream,
    so a resumed run sees exactly the batches of an uninterrupted one. A pairs batch is ``(ids, lengths,
    margin, target)`` with the chosen sequences in the first half of the rows and the rejected ones in the
    second; a labels batch is ``(ids, lengths, label)``. Rows are right-padded to the batch's longest.
    """

    def __init__(self, data: RewardExamples, batch_size: int, *, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1; pass a positive --batch-size")
        if not len(data):
            raise ValueError("no reward examples to batch; check the data file (and --val-fraction for val)")
        self.data, self.batch_size, self.pad_id = data, batch_size, pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._orders: dict[int, np.ndarray] = {}
        n = len(data)
        #: `batch_at(i)` for i < this covers every eval item at least once
        self.eval_batches_per_pass: int = -(-n // (batch_size * world_size))
        mean_len = sum(len(s) for s in data.seqs) / n  # per item: both sides of a pair
        #: mean real tokens per batch of this rank, for the loop's tokens/s
        self.tokens_per_batch: int = max(1, round(batch_size * mean_len))

    def _item(self, q: int) -> int:
        n = len(self.data)
        epoch = q // n
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a step spans at most two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(self._orders[epoch][q % n])

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """This rank's training batch of ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        return self.assemble([self._item(q) for q in range(first, first + self.batch_size)])

    def batch_at(self, i: int) -> tuple[torch.Tensor, ...]:
        """Eval batch ``i``: items in their given order (wrapping around), the same at every evaluation."""
        first = (i * self.world_size + self.rank) * self.batch_size
        return self.assemble([q % len(self.data) for q in range(first, first + self.batch_size)])

    def assemble(self, items: list[int]) -> tuple[torch.Tensor, ...]:
        d = self.data
        idx = torch.as_tensor(items)
        if d.kind == "pairs":
            x, lengths = _pad([d.seqs[2 * i] for i in items] + [d.seqs[2 * i + 1] for i in items], self.pad_id)
            return x, lengths, torch.from_numpy(d.margin)[idx], torch.from_numpy(d.values)[idx]
        x, lengths = _pad([d.seqs[i] for i in items], self.pad_id)
        return x, lengths, torch.from_numpy(d.values)[idx]


def pair_loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss of a pairs batch, with its pair accuracy (ties left out) and mean reward gap."""
    x, lengths, margin, target = batch
    scores = model(x, lengths).float()
    chosen, rejected = scores.chunk(2)
    d = (chosen - rejected).detach()
    return (bradley_terry_loss(chosen, rejected, margin, target),
            {"accuracy": _pair_accuracy(d, target), "reward_gap": float(d.mean())})


MAX_LABEL = 1e6  # beyond this a squared error overflows float32 long before the model could fit it


def _check_label_values(path: str, labels: list[float]) -> None:
    """Refuse labels too large to train on; warn when they are all the same (there is nothing to learn)."""
    big = max((abs(v) for v in labels), default=0.0)
    if big > MAX_LABEL:
        raise ValueError(f"{path}: a label of magnitude {big:g} (the limit is {MAX_LABEL:g}); a reward model's scores "
                         "live near 0: rescale the labels (e.g. to [-1, 1] or standard scores)")
    if labels and len(set(labels)) == 1:
        log.warning("%s: every one of the %d labels is %g: a reward model can only learn a constant from that; "
                    "add examples with other labels", path, len(labels), labels[0])


def label_loss(kind: str):
    """The loss of a labels batch: ``"bce"`` (0/1 labels, logistic) or ``"mse"`` (scalar labels)."""
    def loss_fn(model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, lengths, y = batch
        scores = model(x, lengths).float()
        s = scores.detach()
        metrics = {"pair_accuracy": _ordered_pairs_accuracy(s, y)}
        if kind == "bce":
            metrics["accuracy"] = float(((s > 0) == (y > 0.5)).float().mean())
            return F.binary_cross_entropy_with_logits(scores, y.float()), metrics
        return F.mse_loss(scores, y.float()), metrics
    return loss_fn


# ---------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_sequences(model: RewardModel, seqs: Sequence[np.ndarray], *, pad_id: int, batch_size: int = 32,
                    device: str | torch.device | None = None) -> np.ndarray:
    """Raw scores (float64) of token sequences, batched longest-first to waste little on padding."""
    device = device or next(model.parameters()).device
    was_training = model.training
    if was_training:  # (.eval() walks every module: ~1 ms, too much for the per-step calls of a rollout)
        model.eval()
    out = np.empty(len(seqs), dtype=np.float64)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            x, lengths = _pad([seqs[i] for i in chunk], pad_id)
            out[chunk] = model(x.to(device), lengths.to(device)).double().cpu().numpy()
    finally:
        if was_training:
            model.train()
    return out


class RewardModelScorer:
    """A reward-model checkpoint as a reward source: ``score(prompts, completions) -> np.ndarray`` (float64)."""

    def __init__(self, model: RewardModel, tokenizer: Tokenizer, *, mean: float = 0.0, std: float = 1.0,
                 normalize: bool = True, batch_size: int = 32, max_len: int | None = None, name: str = "reward-model"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.mean, self.std, self.normalize = float(mean), float(std), normalize
        self.batch_size, self.name = batch_size, name
        self.max_len = max_len or model.gpt.config.block_size
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        return f"RewardModelScorer({self.name!r}, normalize={self.normalize})"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """One score per (prompt, completion): ``(raw - mean) / std`` when normalising, else the raw score."""
        for what, texts in (("prompts", prompts), ("completions", completions)):
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise ValueError(f"{self.name}: {what}[{bad}] is {type(texts[bad]).__name__}, not str")
        if not len(prompts) and not len(completions):
            return np.zeros(0, dtype=np.float64)
        seqs, _ = encode_for_reward(self.tokenizer, prompts, completions, self.max_len)
        scores = score_sequences(self.model, seqs, pad_id=self.tokenizer.pad_id, batch_size=self.batch_size,
                                 device=self.device)
        return (scores - self.mean) / self.std if self.normalize else scores


def load_reward_model(path: str | Path, *, device: str = "cpu", normalize: bool = True,
                      batch_size: int = 32) -> RewardModelScorer:
    """Open a reward-model checkpoint (written by ``train_reward_model``) as a reward source.

    With ``normalize=True`` scores are standardised with the mean/std recorded at the end of training, so
    about 68% of the training texts score within [-1, 1].
    """
    c = ckpt.load_checkpoint(path, device=device)
    if "head.weight" not in c.heads:
        raise ValueError(f"{path}: a '{c.config.get('stage')}' checkpoint with no reward head; pass a directory "
                         "written by `rlfl reward train`")
    model = RewardModel(c.model)
    ckpt.load_into(model, c)
    model.to(device)
    stats = c.config.get("reward") or {}
    if normalize and not {"mean", "std"} <= set(stats):
        raise ValueError(f"{path}: config.json has no reward mean/std (did training finish?); re-run "
                         "`rlfl reward train` to completion, or pass normalize=False for raw scores")
    return RewardModelScorer(model, c.tokenizer, mean=stats.get("mean", 0.0), std=stats.get("std", 1.0),
                             normalize=normalize, batch_size=batch_size, max_len=stats.get("max_len"),
                             name=str(path))


# ---------------------------------------------------------------------------------------------- stage
@dataclass
class RewardTrainConfig:
    """What reward model to train, on which data; the optimisation lives in ``train``."""

    init_from: str = field(default="runs/base", metadata={
        "help": "checkpoint directory of the trunk (any stage), or hf:DIR (a local Hugging Face folder)"})
    data: str = field(default="", metadata={
        "help": "pairs JSONL {prompt, chosen, rejected} or labels JSONL {prompt?, text, label} (.gz ok), or "
                "hh:FILE[,FILE...] (HH-RLHF dialogues), imdb:FILE[,...] (pos/neg review pairs), imdb-labels:FILE"})
    val_data: str | None = field(default=None, metadata={"help": "held-out data, same forms as --data "
                                                                 "(default: split off --val-fraction)"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of the data held out when --val-data is unset"})
    format: str = field(default="auto", metadata={"help": "auto | pairs | labels: the format of a plain data file"})
    label_loss: str = field(default="auto", metadata={
        "help": "auto | bce | mse: loss for labels (auto: bce when all labels are 0/1, else mse)"})
    on_bad_line: str = field(default="error", metadata={"help": "error | skip: what to do with a malformed line"})
    max_examples: int | None = field(default=None, metadata={"help": "read at most this many pairs/examples"})
    block_size: int = field(default=0, metadata={
        "help": "max tokens per text (0 = the model's context); longer ones keep their last tokens"})
    freeze_trunk: bool = field(default=False, metadata={"help": "train the head only (the trunk stays as loaded)"})
    stats_samples: int = field(default=4096, metadata={"help": "training texts scored for the recorded mean/std"})
    lora: LoRASettings = field(default_factory=LoRASettings, metadata={"help": "LoRA adapters (off by default)"})
    train: TrainConfig = field(default_factory=lambda: finetune_defaults("runs/rm"),
                               metadata={"help": "training loop settings"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no reward data given; pass --data FILE (pairs or labels JSONL), hh:FILE or imdb:FILE")
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line={self.on_bad_line!r}; pass --on-bad-line error or --on-bad-line skip")
        if self.format not in ("auto", "pairs", "labels"):
            raise ValueError(f"format={self.format!r}; pass --format auto, pairs or labels")
        if self.label_loss not in ("auto", "bce", "mse"):
            raise ValueError(f"label_loss={self.label_loss!r}; pass --label-loss auto, bce or mse")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1); pass e.g. --val-fraction 0.05")
        if self.block_size < 0 or self.block_size == 1:
            raise ValueError(f"block_size={self.block_size}; pass 0 (the model's context) or 2 or more")
        if self.stats_samples < 2:
            raise ValueError(f"stats_samples={self.stats_samples} must be >= 2; pass e.g. --stats-samples 4096")
        if self.freeze_trunk and self.lora.lora_rank:
            raise ValueError("--freeze-trunk trains the head alone and --lora-rank trains adapters in the trunk too; "
                             "pass one of them")


def _split(data: PreferenceData | LabelData, fraction: float, seed: int):
    items = data.pairs if isinstance(data, PreferenceData) else data.examples
    train, val = split_examples(items, fraction, seed)
    if isinstance(data, PreferenceData):
        return PreferenceData(train, data.skipped, data.source, data.skip_reasons), PreferenceData(val, 0, data.source)
    return LabelData(train, data.skipped, data.source, data.skip_reasons), LabelData(val, 0, data.source)


def exact_accuracy(model: RewardModel, examples: RewardExamples, *, pad_id: int, batch_size: int = 64,
                   seed: int = 0, max_label_pairs: int = 200_000) -> float:
    """Pair accuracy over a whole data set: every decisive pair, or for labels up to ``max_label_pairs``
    random (i, j) with different labels (their share with the higher-labelled text scoring higher)."""
    scores = score_sequences(model, examples.seqs, pad_id=pad_id, batch_size=batch_size)
    if examples.kind == "pairs":
        return _pair_accuracy(scores[0::2] - scores[1::2], examples.values)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(scores), (2, max_label_pairs))
    y = examples.values
    keep = y[i] != y[j]
    hi, lo = np.where(y[i] > y[j], i, j)[keep], np.where(y[i] > y[j], j, i)[keep]
    return float((scores[hi] > scores[lo]).mean()) if keep.any() else 0.5


def train_reward_model(cfg: RewardTrainConfig) -> Path:
    """Train a reward model from ``cfg.init_from`` on ``cfg.data``; returns the checkpoint directory."""
    tc = cfg.train
    runtime = setup_runtime(tc)
    source = ckpt.load_checkpoint(cfg.init_from)
    tokenizer = source.tokenizer
    torch.manual_seed(tc.seed)  # the head's init: the same on every rank and every run
    model = RewardModel(merge_lora(source.model))  # a LoRA checkpoint starts as its merged weights
    if "head.weight" in source.heads:  # continuing from a reward model: keep its head
        ckpt.load_into(model, source)
    if cfg.freeze_trunk:
        model.gpt.requires_grad_(False)
    apply_lora(model, cfg.lora, seed=tc.seed)  # LoRA: adapters and the head train, the trunk's weights do not
    block = cfg.block_size or model.gpt.config.block_size
    if block > model.gpt.config.block_size:
        raise ValueError(f"block_size={block} exceeds the model's maximum context {model.gpt.config.block_size}; "
                         f"pass --block-size {model.gpt.config.block_size} or less")

    read = {"format": cfg.format, "on_bad_line": cfg.on_bad_line, "seed": tc.seed}
    data = load_reward_data(cfg.data, max_examples=cfg.max_examples, **read)
    if cfg.val_data:
        train_data, val_data = data, load_reward_data(cfg.val_data, **read)
        if val_data.kind != data.kind:
            raise ValueError(f"--val-data {cfg.val_data} holds {val_data.kind} but --data {cfg.data} holds "
                             f"{data.kind}; pass held-out data of the same kind")
    else:
        train_data, val_data = _split(data, cfg.val_fraction, tc.seed)
    loss_name = "bt"
    if isinstance(train_data, LabelData):
        loss_name = cfg.label_loss if cfg.label_loss != "auto" else ("bce" if train_data.binary else "mse")
        if loss_name == "bce" and not all(0.0 <= e.label <= 1.0 for e in train_data.examples):
            raise ValueError(f"--label-loss bce needs labels in [0, 1], but {cfg.data} has others; "
                             "pass --label-loss mse")
        _check_label_values(cfg.data, [e.label for e in data.examples])
    train_ex = encode_reward_data(train_data, tokenizer, block)
    val_ex = encode_reward_data(val_data, tokenizer, block) if len(val_data) else None
    if runtime.is_main:
        log.info("reward: %d train / %d val %s from %s (%d skipped: %s), %d + %d truncated to %d tokens",
                 len(train_ex), len(val_ex or []), data.kind, cfg.data, data.skipped,
                 data.skip_reasons or "-", train_ex.truncated, val_ex.truncated if val_ex else 0,
                 block)

    batcher = RewardBatcher(train_ex, tc.batch_size, pad_id=tokenizer.pad_id, seed=tc.seed, rank=runtime.rank,
                            world_size=runtime.world_size)
    val_batcher = RewardBatcher(val_ex, tc.batch_size, pad_id=tokenizer.pad_id) if val_ex else None
    if val_batcher is not None and tc.eval_steps > val_batcher.eval_batches_per_pass:
        tc = dataclasses.replace(tc, eval_steps=val_batcher.eval_batches_per_pass)  # one pass is enough
    loss_fn = pair_loss if loss_name == "bt" else label_loss(loss_name)

    trainer = Trainer(
        model, tc, stage="reward", tokenizer=tokenizer,
        batch_fn=lambda step, micro: batcher.batch(step * tc.grad_accum + micro),
        loss_fn=loss_fn, tokens_per_batch=batcher.tokens_per_batch,
        eval_batch_fn=val_batcher.batch_at if val_batcher else None,
        parent=ckpt.parent_spec(cfg.init_from),
        extra_config={"reward_train": {k: v for k, v in to_dict(cfg).items() if k != "train"},
                      "data": {"kind": data.kind, "train": len(train_ex), "val": len(val_ex or []),
                               "skipped": data.skipped, "skip_reasons": data.skip_reasons,
                               "truncated": train_ex.truncated}},
        runtime=runtime,
    )
    out = Path(tc.out_dir)
    # resuming a run that already finished (and recorded its statistics) changes nothing
    finished = trainer.step >= tc.max_steps and "reward" in ckpt.read_config(out)
    trainer.fit()
    if runtime.is_main and not finished:
        # score statistics for normalisation: both sides of sampled pairs, or sampled labelled texts
        rng = np.random.default_rng(tc.seed)
        pick = rng.choice(len(train_ex.seqs), size=min(cfg.stats_samples, len(train_ex.seqs)), replace=False)
        scores = score_sequences(model, [train_ex.seqs[i] for i in pick], pad_id=tokenizer.pad_id,
                                 batch_size=2 * tc.batch_size)
        stats = {"mean": float(scores.mean()), "std": max(float(scores.std()), 1e-6), "n_stats": len(pick),
                 "kind": data.kind, "loss": loss_name, "max_len": block, "input_format": INPUT_FORMAT}
        if val_ex is not None:
            stats["val_accuracy"] = exact_accuracy(model, val_ex, pad_id=tokenizer.pad_id,
                                                   batch_size=2 * tc.batch_size, seed=tc.seed)
            stats["val_items"] = len(val_ex)
            log.info("reward: pair accuracy on all %d val %s: %.4f", len(val_ex), data.kind, stats["val_accuracy"])
        ckpt.update_config(out, reward=stats)
    return out

"""Pretraining (and continued pretraining) of a GPT on token shards, through the shared ``Trainer``.

This stage only supplies what is specific to language modelling: random windows of the token stream
as batches, next-token cross-entropy as the loss, bits-per-byte as the eval metric and a short text
sample at each eval. ``init_from`` continues from any rlfl checkpoint (domain adaptation) or from
GPT-2 weights in a Hugging Face style directory; the shards must then be tokenized with the same
tokenizer, which is checked by fingerprint.

Example (the README's main job, from Python):
    >>> from rlfl.pretrain import PretrainConfig, pretrain
    >>> from rlfl.trainer import TrainConfig
    >>> cfg = PretrainConfig(data="runs/data", n_layer=2, n_embd=64, n_head=2,
    ...                      train=TrainConfig(out_dir="runs/base", max_steps=200))
    >>> pretrain(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlfl import checkpoint as ckpt
from rlfl.config import to_dict
from rlfl.data import BatchSampler, load_shards
from rlfl.generate import SamplingConfig, generate
from rlfl.gpt2_weights import load_gpt2
from rlfl.model import GPT, GPTConfig
from rlfl.tokenizer import Tokenizer
from rlfl.trainer import TrainConfig, Trainer, setup_runtime

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """What to pretrain on and the shape of a new model; the optimisation lives in ``train``."""

    data: str = field(default="runs/data", metadata={"help": "token shards directory written by `rlfl data prepare`"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this rlfl checkpoint dir (continued pretraining) or gpt2:DIR (HF-style GPT-2 weights); "
                "unset = a new model"})
    n_layer: int = field(default=4, metadata={"help": "transformer blocks of a new model"})
    n_head: int = field(default=4, metadata={"help": "attention heads of a new model"})
    n_embd: int = field(default=128, metadata={"help": "embedding width of a new model"})
    block_size: int = field(default=64, metadata={"help": "training context length (<= the model's maximum)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout of a new model"})
    bias: bool = field(default=True, metadata={"help": "biases in linear layers and LayerNorms of a new model"})
    n_experts: int = field(default=0, metadata={"help": "mixture-of-experts MLPs with this many experts (0 = dense)"})
    moe_top_k: int = field(default=2, metadata={"help": "experts each token is routed to (MoE only)"})
    aux_loss_weight: float = field(default=0.01, metadata={"help": "weight of the MoE load-balancing loss"})
    sample_tokens: int = field(default=64, metadata={"help": "tokens of the text sample logged at each eval (0 = none)"})
    sample_prompt: str = field(default="\n", metadata={"help": "prompt of the eval-time sample"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop settings"})

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size={self.block_size} must be >= 1; pass --block-size 64 or similar")
        if self.sample_tokens < 0:
            raise ValueError(f"sample_tokens={self.sample_tokens} must be >= 0")


def _grow_vocab(model: GPT, n_vocab: int) -> None:
    """Give new token ids (our extra special tokens on top of GPT-2's 50,257) fresh embedding rows."""
    old = model.wte.weight
    if n_vocab <= old.shape[0]:
        return
    new = nn.Embedding(n_vocab, old.shape[1]).to(old.device, old.dtype)
    with torch.no_grad():
        new.weight.normal_(0.0, 0.02)
        new.weight[: old.shape[0]] = old
    model.wte = new
    model.lm_head.weight = new.weight
    model.config.vocab_size = n_vocab


def build_model(cfg: PretrainConfig, tokenizer: Tokenizer) -> tuple[GPT, str | None]:
    """The model to train and its parent checkpoint: new, from an rlfl checkpoint, or from GPT-2 weights."""
    init = cfg.init_from
    if init is None:
        torch.manual_seed(cfg.train.seed)  # the same init on every rank and every run
        config = GPTConfig(vocab_size=tokenizer.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                           n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                           n_experts=cfg.n_experts, moe_top_k=cfg.moe_top_k, aux_loss_weight=cfg.aux_loss_weight)
        return GPT(config), None
    if init.startswith("gpt2:"):
        if tokenizer.kind != "gpt2":
            raise ValueError(f"--init-from {init}: GPT-2 weights need shards tokenized with the GPT-2 BPE, but "
                             f"{cfg.data} uses '{tokenizer.name}'; re-run `rlfl data prepare --tokenizer gpt2:FILE`")
        model = load_gpt2(init[len("gpt2:"):])
        _grow_vocab(model, tokenizer.n_vocab)
        parent = init
    else:
        source = ckpt.load_checkpoint(init)
        if source.tokenizer.fingerprint != tokenizer.fingerprint:
            raise ValueError(f"--init-from {init}: the checkpoint's tokenizer ('{source.tokenizer.name}', "
                             f"{source.tokenizer.fingerprint[:12]}) differs from the one {cfg.data} was tokenized with "
                             f"('{tokenizer.name}', {tokenizer.fingerprint[:12]}); re-run `rlfl data prepare "
                             f"--tokenizer {init}` so the corpus uses the checkpoint's tokenizer")
        model, parent = source.model, str(Path(init).resolve())
    if cfg.dropout != model.config.dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = cfg.dropout
        model.config.dropout = cfg.dropout
    return model, parent


def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain (or continue pretraining) and return the checkpoint directory (``cfg.train.out_dir``)."""
    runtime = setup_runtime(cfg.train)
    shards = load_shards(cfg.data)
    tokenizer = Tokenizer.load(cfg.data)
    shards.check_tokenizer(tokenizer)
    model, parent = build_model(cfg, tokenizer)
    if cfg.block_size > model.config.block_size:
        raise ValueError(f"block_size={cfg.block_size} exceeds the model's maximum context "
                         f"{model.config.block_size}; pass --block-size {model.config.block_size} or less")
    tc = cfg.train
    train_sampler = BatchSampler(shards.train, cfg.block_size, tc.batch_size, seed=tc.seed,
                                 rank=runtime.rank, world_size=runtime.world_size)
    # eval windows are the same at every eval (seed fixed, indexed by eval batch), so evals compare. Shards made
    # with --val-fraction 0 have no val split: pretraining then runs without evaluation, and says so.
    val_sampler = None
    if len(shards.val):
        val_sampler = BatchSampler(shards.val, cfg.block_size, tc.batch_size, seed=tc.seed + 1,
                                   rank=runtime.rank, world_size=runtime.world_size, split="val")
    elif runtime.is_main:
        log.warning("%s: no val split (prepared with --val-fraction 0): pretraining without evaluation, so no "
                    "val/loss or val/bpb; prepare the data with --val-fraction 0.01 or more to get them", cfg.data)
    val = shards.meta["splits"]["val"]
    bytes_per_token = val["bytes"] / max(1, val["tokens"])

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = m(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def eval_metrics(ev: dict[str, float]) -> dict[str, float]:
        # nats/token -> bits/byte: divide by ln 2 and by the bytes each token covers on average
        return {"val/bpb": ev["val/loss"] / math.log(2) / bytes_per_token}

    def sample_fn(m: nn.Module) -> list[str]:
        prompt = tokenizer.encode(cfg.sample_prompt) or [tokenizer.eot_id]
        out = generate(m, [prompt], SamplingConfig(max_new_tokens=min(cfg.sample_tokens, m.config.block_size - len(prompt)),
                                                    temperature=0.8, top_k=50, seed=tc.seed,
                                                    stop_tokens=(tokenizer.eot_id,)), pad_id=tokenizer.pad_id)
        return [tokenizer.decode(out.tokens[0])]

    trainer = Trainer(
        model, tc, stage="pretrain", tokenizer=tokenizer,
        batch_fn=lambda step, micro: train_sampler.batch(step * tc.grad_accum + micro),
        loss_fn=loss_fn, tokens_per_batch=tc.batch_size * cfg.block_size,
        eval_batch_fn=None if val_sampler is None else val_sampler.batch, eval_metrics_fn=eval_metrics,
        sample_fn=sample_fn if cfg.sample_tokens > 0 else None, parent=parent,
        extra_config={"pretrain": {k: v for k, v in to_dict(cfg).items() if k != "train"},
                      "data": {"path": str(Path(cfg.data).resolve()), "fingerprint": tokenizer.fingerprint}},
        runtime=runtime,
    )
    summary = trainer.fit()
    if runtime.is_main:
        log.info("pretrain done: %s", " | ".join(f"{k} {v:.4g}" for k, v in sorted(summary.items())))
    return Path(tc.out_dir)

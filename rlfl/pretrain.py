"""Pretraining (and continued pretraining) of a GPT on token shards, through the shared ``Trainer``.

This stage only supplies what is specific to language modelling: random windows of the token stream
as batches, next-token cross-entropy as the loss, bits-per-byte as the eval metric and a short text
sample at each eval. ``init_from`` continues from any rlfl checkpoint (domain adaptation), from GPT-2
weights in a Hugging Face style directory (``gpt2:DIR``) or from a local Hugging Face folder (``hf:DIR``);
the shards must then be tokenized with the same tokenizer, which is checked by fingerprint.

A new model is GPT-2-style by default. The architecture fields are GPTConfig's own (same names, help and
defaults), so ``--position-embedding rope --norm rmsnorm --mlp swiglu --n-kv-head 2`` pretrains a
Llama-style model, which `rlfl export` writes as a Hugging Face llama folder.

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
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

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


# Metadata key of the PretrainConfig fields that are GPTConfig fields of the same name.
_GPT_CONFIG_FIELD = "gpt_config"


def _model_option(name: str, default: Any = MISSING, *, new_model_only: bool = True) -> Any:
    """A field for `GPTConfig.<name>`: GPTConfig's help and (unless ``default`` is given) default, defined there once.

    ``new_model_only`` notes in the help that the option shapes a new model and is ignored with --init-from.
    `new_model_config` passes every such field to GPTConfig.
    """
    source = GPTConfig.__dataclass_fields__[name]
    help_text = source.metadata["help"] + (" New model only." if new_model_only else "")
    return field(default=source.default if default is MISSING else default,
                 metadata={"help": help_text, _GPT_CONFIG_FIELD: True})


@dataclass
class PretrainConfig:
    """What to pretrain on and the shape of a new model; the optimisation lives in ``train``."""

    data: str = field(default="runs/data", metadata={"help": "token shards directory written by `rlfl data prepare`"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this rlfl checkpoint dir (continued pretraining), gpt2:DIR (HF-style GPT-2 weights) or "
                "hf:DIR (a local Hugging Face folder: GPT-2, Llama / SmolLM2, Qwen2 / 2.5 / 3); unset = a new model"})
    n_layer: int = _model_option("n_layer", 4)
    n_head: int = _model_option("n_head", 4)
    n_embd: int = _model_option("n_embd", 128)
    block_size: int = field(default=64, metadata={"help": "training context length (<= the model's maximum)"})
    dropout: float = _model_option("dropout", new_model_only=False)
    bias: bool = _model_option("bias")
    layer_norm_eps: float = _model_option("layer_norm_eps")
    n_experts: int = _model_option("n_experts")
    moe_top_k: int = _model_option("moe_top_k")
    aux_loss_weight: float = _model_option("aux_loss_weight")
    position_embedding: str = _model_option("position_embedding")
    rope_theta: float = _model_option("rope_theta")
    norm: str = _model_option("norm")
    mlp: str = _model_option("mlp")
    intermediate_size: int | None = _model_option("intermediate_size")
    n_kv_head: int | None = _model_option("n_kv_head")
    head_size: int | None = _model_option("head_size")
    qkv_bias: bool | None = _model_option("qkv_bias")
    attn_proj_bias: bool | None = _model_option("attn_proj_bias")
    mlp_bias: bool | None = _model_option("mlp_bias")
    qk_norm: bool = _model_option("qk_norm")
    tie_embeddings: bool = _model_option("tie_embeddings")
    # (GPTConfig.rope_scaling is no setting here: it stretches an existing model's positions, which an hf:DIR
    # folder's config sets; a new model is trained at its own --block-size.)
    sample_tokens: int = field(default=64, metadata={"help": "tokens of the text sample logged at each eval (0 = none)"})
    sample_prompt: str = field(default="\n", metadata={"help": "prompt of the eval-time sample"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop settings"})

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size={self.block_size} must be >= 1; pass --block-size 64 or similar")
        if self.sample_tokens < 0:
            raise ValueError(f"sample_tokens={self.sample_tokens} must be >= 0")
        if self.init_from is None:
            new_model_config(self, vocab_size=1)  # a bad architecture option fails here, before any data is read


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


def new_model_config(cfg: PretrainConfig, vocab_size: int) -> GPTConfig:
    """The GPTConfig of a new model: the architecture fields of ``cfg``, at context ``cfg.block_size``.

    Example:
        >>> new_model_config(PretrainConfig(n_layer=2, norm="rmsnorm", mlp="swiglu", n_kv_head=2), 300).kv_heads
        2
    """
    options = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata.get(_GPT_CONFIG_FIELD)}
    return GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, **options)


def build_model(cfg: PretrainConfig, tokenizer: Tokenizer) -> tuple[GPT, str | None]:
    """The model to train and its parent checkpoint: new, from an rlfl checkpoint, GPT-2 weights or an hf:DIR folder."""
    init = cfg.init_from
    if init is None:
        torch.manual_seed(cfg.train.seed)  # the same init on every rank and every run
        return GPT(new_model_config(cfg, tokenizer.n_vocab)), None
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
        # an hf:DIR spec is recorded as given (resolving it as a path would make it /cwd/hf:DIR)
        model, parent = source.model, ckpt.parent_spec(init)
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
        prompt = tokenizer.encode_prompt(cfg.sample_prompt)
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

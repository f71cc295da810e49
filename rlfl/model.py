"""A decoder-only transformer (GPT-2 by default; Llama / Qwen by options) with an optional preallocated KV cache.

The default layout is GPT-2's (learned token + position embeddings, pre-LayerNorm blocks, tanh-GELU MLP,
final LayerNorm, LM head tied to the token embedding). Options in `GPTConfig` turn the same class into the
Llama / Qwen2 / Qwen3 / SmolLM2 architectures: rotary position embeddings (with "linear" or "llama3"
frequency scaling), RMSNorm, a SwiGLU MLP of its own width, grouped-query attention, per-head q/k RMSNorm,
a head width other than n_embd / n_head, biases per projection and an untied LM head. Every option
defaults to GPT-2, so a config.json written before the options existed loads to the same model.
`rlfl.hf_models` maps Hugging Face folders of these families to and from this class. Parameter names
mirror Hugging Face's GPT-2 names (`wte`, `h.0.attn.c_attn`, ...); q, k and v are one fused `c_attn`
projection (and SwiGLU's gate and up one fused `c_fc`) in every architecture, so each layer does one
matmul where Llama does three.

The parts live in their own modules: `rlfl.model_config` (GPTConfig), `rlfl.rotary` (rotary embeddings
and their scaling), `rlfl.norms` (LayerNorm / RMSNorm), `rlfl.attention` (attention, the KV cache and the
padding / packing masks: see its docstring for the four attention cases), `rlfl.mlp` (GELU / SwiGLU) and
`rlfl.moe`. This module assembles them; import `GPT`, `GPTConfig` and `KVCache` from here.

Mixture of experts: with `n_experts >= 2` every block's MLP is an rlfl.moe.MoE of GPT-2 MLPs with a
top-k router. A training-mode forward leaves the weighted load-balancing loss in `model.aux_loss` (the
shared Trainer adds it to every stage's loss) and the routing counts behind `model.expert_load()`.

Example:
    >>> import torch
    >>> cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=64)
    >>> model = GPT(cfg)
    >>> model(torch.zeros(1, 5, dtype=torch.long)).shape
    torch.Size([1, 5, 300])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rlfl.attention import CausalSelfAttention, KVCache, padded_causal_mask, segment_mask
from rlfl.mlp import MLP
from rlfl.model_config import GPTConfig
from rlfl.moe import MoE
from rlfl.norms import make_norm
from rlfl.rotary import Rotary

__all__ = ["GPT", "GPTConfig", "KVCache", "trunk", "unwrap"]


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        if config.n_experts:
            self.mlp: MLP | MoE = MoE(config.n_embd, config.n_experts, config.moe_top_k, lambda: MLP(config))
        else:
            self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, *attention_inputs: Any) -> torch.Tensor:
        """Pre-norm residual block; ``attention_inputs`` are (mask, kv, past, rope) as the attention takes them."""
        x = x + self.attn(self.ln_1(x), *attention_inputs)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only language model (GPT-2, Llama, Qwen by config): token ids (B, T) -> logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        learned = config.position_embedding == "learned"
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if learned else None
        self.rotary = None if learned else Rotary(config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        self.apply(self._init_weights)
        # GPT-2's residual scaling: each block adds two projections to the residual stream, so shrink
        # their init by 1/sqrt(2 * n_layer) to keep the stream's variance from growing with depth.
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            for mlp in block.mlp.experts if isinstance(block.mlp, MoE) else (block.mlp,):
                nn.init.normal_(mlp.c_proj.weight, mean=0.0, std=residual_std)
        # The weighted load-balancing loss of the last forward in training mode with autograd on (sum
        # over the MoE layers); None for a dense model, in eval mode and under torch.no_grad(). The
        # shared Trainer adds it to the stage's loss.
        self.aux_loss: torch.Tensor | None = None

    def tie_weights(self) -> None:
        """Make the LM head the token embedding when config.tie_embeddings (GPT-2 does this; it saves V*C
        parameters). Call it again after replacing either module or its weight."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def _embed(self, idx: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Token (+ learned position) embeddings after dropout, and the rotary (cos, sin) or None."""
        if self.wpe is not None:
            return self.drop(self.wte(idx) + self.wpe(position_ids)), None
        return self.drop(self.wte(idx)), self.rotary(position_ids)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- forward ------------------------------------------------------------------------------------

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
        branch_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm output (B, T, n_embd): what the LM head, a value head or a reward head reads.

        attention_mask: (B, cached + T), 1/True for real tokens, 0/False for (left) padding; it covers
            the cached positions plus the new ones.
        position_ids: (B, T); by default derived from segment_ids (positions restart at 0 at each
            segment start), else from attention_mask as cumsum - 1 (so each row's first real token is
            position 0), else cached + arange(T).
        cache: a KVCache; the new keys/values are written at [cache.length, cache.length + T) and
            cache.length advances by T.
        segment_ids: (B, T) integers for packed sequences (several examples in one row): a segment is a
            maximal run of equal ids, and a token attends only to earlier tokens of its own segment, so
            each example computes exactly what it would alone. Give padding its own id. Not with a cache.
        branch_ids: (B, T), with segment_ids: segments that hold a shared prefix (branch 0) followed by
            several continuations of it (branches 1, 2, ...), each attending to the prefix and itself only,
            at the positions it would have after the prefix alone (`rlfl.attention.segment_mask`).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, seq_len), got {tuple(idx.shape)}")
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        total = past + T
        if total > self.config.block_size and branch_ids is None:  # with branches, the positions are checked below
            what = f"{total} tokens" if past == 0 else f"{total} tokens ({past} cached + {T} new)"
            raise ValueError(
                f"sequence of {what} exceeds block_size {self.config.block_size}; "
                f"truncate the input to the last {self.config.block_size} tokens or use a larger block_size"
            )
        if cache is not None:
            if cache.batch_size != B:
                raise ValueError(f"KV cache holds {cache.batch_size} rows but the input has {B}; use KVCache.select")
            if total > cache.max_len:
                raise ValueError(
                    f"KV cache is full: {past} cached + {T} new > max_len {cache.max_len}; allocate a larger KVCache"
                )

        mask = keep = None
        if attention_mask is not None:
            if attention_mask.shape != (B, total):
                raise ValueError(
                    f"attention_mask must have shape (batch, cached + new) = {(B, total)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            keep = attention_mask.bool()
            if segment_ids is None:
                if position_ids is None:
                    position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
                mask = padded_causal_mask(keep, past, T)
        if branch_ids is not None and segment_ids is None:
            raise ValueError("branch_ids needs segment_ids: pass the segment of every token as well")
        if segment_ids is not None:
            if cache is not None:
                raise ValueError(
                    "segment_ids (packed sequences) cannot be combined with a KV cache; "
                    "run packed rows without a cache, or generate from each sequence separately"
                )
            if segment_ids.shape != (B, T):
                raise ValueError(
                    f"segment_ids must have shape (batch, seq_len) = {(B, T)}, got {tuple(segment_ids.shape)}"
                )
            if branch_ids is not None and branch_ids.shape != (B, T):
                raise ValueError(f"branch_ids must have shape (batch, seq_len) = {(B, T)}, got {tuple(branch_ids.shape)}")
            mask, segment_positions = segment_mask(segment_ids, keep, branch_ids)
            if position_ids is None:
                position_ids = segment_positions
            if branch_ids is not None and int(position_ids.max()) >= self.config.block_size:
                raise ValueError(f"a packed sequence reaches position {int(position_ids.max())}, past block_size "
                                 f"{self.config.block_size}; shorten the sequences")
        elif cache is not None and past > 0 and T > 1:
            # Several new tokens after a cached prefix: SDPA's is_causal would align the triangle to the
            # top-left of the (T, total) score matrix, which is wrong here, so spell the mask out.
            q_pos = torch.arange(past, total, device=idx.device)
            mask = torch.arange(total, device=idx.device)[None, :] <= q_pos[:, None]
        if position_ids is None:
            position_ids = torch.arange(past, total, device=idx.device).unsqueeze(0)
        elif position_ids.shape[-1] != T:
            raise ValueError(f"position_ids must have shape (batch, {T}), got {tuple(position_ids.shape)}")

        if self.config.n_experts:
            self.aux_loss = None  # drop the previous step's graph before this forward allocates its own
        x, rope = self._embed(idx, position_ids)
        for i, block in enumerate(self.h):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x = block(x, mask, kv, past, rope)
        if cache is not None:
            cache.length = total
        if self.config.n_experts:
            self._collect_aux_loss()
        return self.ln_f(x)

    def decode_ragged(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        *,
        columns: torch.Tensor,
        position_ids: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step where every row is at its own length: final-norm output (B, n_embd).

        `hidden_states` with a cache assumes every row has the same number of cached positions. An agent
        that steps many episodes which start and stop at different times (the PPO rollout) keeps each
        row's positions at its own place in the buffer instead: row b writes its new token's key/value at
        cache column ``columns[b]``, embeds it at position ``position_ids[b]``, and attends to the columns
        where ``key_mask[b]`` is True, which must include ``columns[b]`` itself. ``cache.length`` is not
        used or changed: the caller owns the layout.

        Example:
            >>> cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
            >>> model, cache = GPT(cfg).eval(), KVCache(cfg, batch_size=2, max_len=8)
            >>> mask = torch.zeros(2, 8, dtype=torch.bool); mask[0, 0] = mask[1, 3] = True
            >>> h = model.decode_ragged(torch.tensor([5, 7]), cache, columns=torch.tensor([0, 3]),
            ...                         position_ids=torch.tensor([0, 0]), key_mask=mask)
            >>> torch.allclose(h[1], model.hidden_states(torch.tensor([[7]]))[0, 0], atol=1e-6)
            True
        """
        B = tokens.shape[0]
        if tokens.shape != (B,) or columns.shape != (B,) or position_ids.shape != (B,):
            raise ValueError("decode_ragged: tokens, columns and position_ids must all have shape (batch,)")
        if key_mask.shape != (B, cache.max_len) or cache.batch_size != B:
            raise ValueError(f"decode_ragged: key_mask must have shape (batch, cache.max_len) = {(B, cache.max_len)} "
                             f"and the cache {B} rows, got {tuple(key_mask.shape)} and {cache.batch_size}")
        if self.config.n_experts:
            self.aux_loss = None
        x, rope = self._embed(tokens[:, None], position_ids[:, None])
        mask = key_mask.bool()[:, None, None, :]
        for i, block in enumerate(self.h):
            x = block(x, mask, (cache.k[i], cache.v[i]), columns, rope)
        if self.config.n_experts:
            self._collect_aux_loss()
        return self.ln_f(x)[:, 0]

    def _collect_aux_loss(self) -> None:
        """Move the MoE layers' balancing losses into self.aux_loss (summed and weighted).

        The layers' references are cleared so that the model holds exactly one graph reference, which
        the next forward drops before it starts.
        """
        total = None
        for block in self.h:
            moe = block.mlp
            assert isinstance(moe, MoE)
            if moe.aux_loss is not None:
                total = moe.aux_loss if total is None else total + moe.aux_loss
                moe.aux_loss = None
        if total is not None and self.config.aux_loss_weight > 0:
            self.aux_loss = self.config.aux_loss_weight * total

    def forward(self, idx: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """Next-token logits (B, T, vocab_size); the keyword arguments are those of `hidden_states`."""
        h = self.hidden_states(idx, **inputs)
        return self.lm_head(h)

    # ---- mixture of experts ---------------------------------------------------------------------------

    # Above this many (layer, expert) pairs expert_load() reports per-layer extremes only, so a big MoE
    # does not write hundreds of metrics per log step.
    _PER_EXPERT_KEYS_MAX = 32

    def expert_load(self) -> dict[str, float]:
        """Share of token-slots each expert received in the most recent training-mode forward.

        Shares are per layer and sum to 1 over the experts (uniform routing = 1 / n_experts; with top-k
        routing no expert can exceed 1 / k, since a token picks each expert at most once). Keys:
        "moe/max_load" and "moe/min_load" (extremes over all layers and experts), "moe/layer{i}/max_load"
        and "moe/layer{i}/min_load", and, while n_layer * n_experts <= 32, "moe/layer{i}/expert{e}".
        {} for a dense model or before the first training forward.
        """
        if not self.config.n_experts:
            return {}
        loads = [block.mlp.load for block in self.h]
        if any(load is None for load in loads):
            return {}
        counts = torch.stack(loads).double()
        shares = (counts / counts.sum(-1, keepdim=True).clamp(min=1)).tolist()  # one host sync
        out = {"moe/max_load": max(max(row) for row in shares), "moe/min_load": min(min(row) for row in shares)}
        per_expert = self.config.n_layer * self.config.n_experts <= self._PER_EXPERT_KEYS_MAX
        for i, row in enumerate(shares):
            out[f"moe/layer{i}/max_load"] = max(row)
            out[f"moe/layer{i}/min_load"] = min(row)
            if per_expert:
                out.update({f"moe/layer{i}/expert{e}": share for e, share in enumerate(row)})
        return out

    # ---- accounting -----------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = True, *, active: bool = False) -> int:
        """Number of parameters; with non_embedding=True the embedding lookups are left out.

        Left out are the learned position embeddings and, when the LM head is untied, the token
        embedding. A tied token embedding stays in the count: it is the LM head, so those weights do a
        real matmul per token, which is what the count is used for (FLOPs, scaling laws).

        active=True counts the parameters one token actually uses: in a mixture-of-experts model, the
        router plus moe_top_k of the n_experts expert MLPs per layer (the other experts are stored but
        idle for that token). For a dense model it changes nothing.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied weight once
        if non_embedding:
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        cfg = self.config
        if active and cfg.n_experts:
            per_expert = sum(p.numel() for p in self.h[0].mlp.experts[0].parameters())
            n -= cfg.n_layer * (cfg.n_experts - cfg.moe_top_k) * per_expert
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6*N + 12*n_layer*n_head*head_dim*seq_len.

        This is the nanoGPT / PaLM-paper convention. 6N: each parameter does one multiply-add (2 FLOPs)
        per token in the forward pass and twice that in the backward pass; N = num_params(non_embedding=
        True, active=True), so a mixture-of-experts model counts the router and the moe_top_k experts a
        token runs through, not the idle ones. 12*L*C*T (C = n_head * head_dim, n_embd by default): the
        attention scores q@k^T and the weighted sum p@v are 2*T*C FLOPs each per token per layer forward,
        times 3 for forward + backward. Norms, softmax, activations, rotary embeddings and the MoE
        gather/scatter are ignored. Inference (forward only) costs about a third of this. seq_len
        defaults to block_size.
        """
        T = self.config.block_size if seq_len is None else seq_len
        cfg = self.config
        attention_width = cfg.n_head * cfg.head_dim
        return 6.0 * self.num_params(non_embedding=True, active=True) + 12.0 * cfg.n_layer * attention_width * T


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def trunk(model: nn.Module) -> GPT:
    """The GPT inside ``model``: the model itself, or the ``.gpt`` of a GPT-plus-heads module.

    Stages whose network is a GPT with extra heads (a reward model's scalar head, PPO's value head) wrap
    it as a module with a ``gpt`` attribute; every other parameter of that module is a "head" and is stored
    in the same ``model.safetensors`` under ``heads.``, so there is still one checkpoint format.
    """
    core = unwrap(model)
    if isinstance(core, GPT):
        return core
    gpt = getattr(core, "gpt", None)
    if not isinstance(gpt, GPT):
        raise TypeError(f"{type(core).__name__} is neither a GPT nor a module with a .gpt trunk")
    return gpt

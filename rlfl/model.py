"""A GPT-2 compatible decoder-only transformer with an optional preallocated KV cache.

The layout follows GPT-2 closely (learned token + position embeddings, pre-LayerNorm blocks, tanh-GELU
MLP, final LayerNorm, LM head tied to the token embedding) so that GPT-2 weights load from local files
(`rlfl.gpt2_weights.load_gpt2`). Parameter names mirror Hugging Face's GPT-2 names (`wte`, `h.0.attn.c_attn`,
...) which keeps the weight mapping a plain rename plus a transpose.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`. Four cases:
- no padding mask and no cache (training): `is_causal=True`, so PyTorch picks its flash / efficient
  kernels and never materialises a (T, T) mask;
- a padding mask (batched prompts of different lengths, left-padded): an explicit boolean mask that is
  causal AND key-is-real, OR key-is-the-query-itself. The last term matters: a pad query whose keys are
  all pads would otherwise softmax over nothing and produce NaN, which then leaks through later layers;
- a KV cache: new keys/values are written into the preallocated buffers at [length, length + T) and the
  queries attend over [0, length + T);
- packed sequences (`segment_ids`, several SFT examples in one row): a block-diagonal causal mask, so
  each example attends only within itself, and positions restart at 0 at each example.
The dense training path (no mask, no segments, n_experts=0) does no work beyond what it always did.
On a CPU, a masked attention (the last three cases) runs as plain float32 matmuls instead of SDPA, whose
CPU kernel with an explicit mask is ~1.7x slower forward + backward at these short lengths.

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

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlfl.config import is_int, is_number
from rlfl.moe import MoE



@dataclass
class GPTConfig:
    """Shape and regularisation of a GPT model; `to_dict()`/`from_dict()` round-trip through JSON."""

    vocab_size: int = field(metadata={"help": "Number of token ids (the tokenizer's n_vocab)."})
    block_size: int = field(metadata={"help": "Maximum sequence length (number of position embeddings)."})
    n_layer: int = field(metadata={"help": "Number of transformer blocks."})
    n_head: int = field(metadata={"help": "Attention heads per block; must divide n_embd."})
    n_embd: int = field(metadata={"help": "Width of the residual stream."})
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on embeddings, attention weights and residual branches."}
    )
    bias: bool = field(default=True, metadata={"help": "Use biases in Linear and LayerNorm layers (GPT-2: true)."})
    layer_norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon (GPT-2: 1e-5)."})
    n_experts: int = field(
        default=0,
        metadata={"help": "Experts per MoE layer: 0 = the dense GPT-2 MLP; >= 2 = a mixture-of-experts MLP per block."},
    )
    moe_top_k: int = field(
        default=2, metadata={"help": "Experts each token is routed to (1 <= moe_top_k <= n_experts; MoE only)."}
    )
    aux_loss_weight: float = field(
        default=0.01,
        metadata={"help": "Weight of the router load-balancing loss added to the training loss (MoE only; 0 = off)."},
    )

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}; set {name} >= 1")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_embd a multiple of n_head (e.g. {self.n_head * max(1, self.n_embd // self.n_head)})"
            )
        if not is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout={self.dropout!r} must be in [0, 1); use 0.0 to disable dropout")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias={self.bias!r} must be true or false")
        if not is_number(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ValueError(f"GPTConfig.layer_norm_eps={self.layer_norm_eps!r} must be > 0; GPT-2 uses 1e-5")
        if not is_int(self.n_experts) or self.n_experts < 0 or self.n_experts == 1:
            raise ValueError(
                f"GPTConfig.n_experts={self.n_experts!r} must be 0 (dense MLP) or an integer >= 2 (mixture of experts)"
            )
        if not is_int(self.moe_top_k) or self.moe_top_k < 1:
            raise ValueError(f"GPTConfig.moe_top_k={self.moe_top_k!r} must be an integer >= 1; 2 is the usual choice")
        if self.n_experts and self.moe_top_k > self.n_experts:
            raise ValueError(
                f"GPTConfig.moe_top_k={self.moe_top_k} exceeds n_experts={self.n_experts}; "
                f"set moe_top_k <= {self.n_experts} (or add experts)"
            )
        if not is_number(self.aux_loss_weight) or not 0.0 <= self.aux_loss_weight < math.inf:
            raise ValueError(
                f"GPTConfig.aux_loss_weight={self.aux_loss_weight!r} must be a finite number >= 0; 0.01 is typical"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        """Build a config from a dict, rejecting unknown keys (a typo must not silently become a default)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"GPTConfig: unknown key(s) {', '.join(repr(k) for k in unknown)}; valid keys are {', '.join(names)}"
            )
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"GPTConfig: missing key(s) {', '.join(repr(k) for k in missing)}; add them to the config")
        return cls(**data)


class KVCache:
    """Preallocated per-layer key/value buffers for incremental decoding.

    K and V for all layers live in two tensors of shape (n_layer, B, n_head, max_len, head_dim), allocated
    once; `GPT.forward(..., cache=cache)` writes new entries at [length, length + T) and advances `length`.
    The cache does not hold the padding mask: the caller passes `attention_mask` covering cache + new
    tokens on every call (rlfl.generate builds it once and slices it).

    Example:
        >>> cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=64)
        >>> cache = KVCache(cfg, batch_size=3, max_len=16)
        >>> cache.k.shape, cache.length
        (torch.Size([2, 3, 2, 16, 32]), 0)
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"KVCache batch_size must be >= 1, got {batch_size}")
        if not 1 <= max_len <= config.block_size:
            raise ValueError(
                f"KVCache max_len={max_len} must be in [1, block_size={config.block_size}]; "
                "positions beyond block_size have no embedding"
            )
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch_size(self) -> int:
        """Number of rows (sequences) held."""
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        """Number of positions the buffers can hold."""
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget all cached positions (the buffers are reused, not reallocated)."""
        self.length = 0


def _masked_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v in float32 with plain matmuls: SDPA with a mask on a CPU.

    For the short masked sequences of batched decoding and PPO (tens of positions) this is ~1.7x faster
    forward + backward than SDPA's CPU flash kernel with an explicit mask (torch 2.13), and it computes in
    float32 under bfloat16 autocast too (SDPA's bf16 CPU backward is slower still). Every mask row built
    in this module keeps the query's own key, so no softmax row is empty.
    """
    dtype = q.dtype
    with torch.autocast("cpu", enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        scores = scores.masked_fill(~mask, float("-inf"))
        return (torch.softmax(scores, dim=-1) @ v).to(dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through SDPA, optionally reading/writing a KV cache layer."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        # A module rather than a float so that code adjusting every nn.Dropout's p (e.g. when fine-tuning
        # with a different dropout) also reaches the attention dropout that SDPA applies.
        self.attn_dropout = nn.Dropout(config.dropout)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        past: int | torch.Tensor,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if kv is not None and isinstance(past, torch.Tensor):
            # ragged decode: one new token per row, written at that row's own column; the caller's mask
            # says which columns each row sees, so every column of the buffer is a key
            k_buf, v_buf = kv
            rows = torch.arange(B, device=x.device)
            k_buf[rows, :, past] = k[:, :, 0].to(k_buf.dtype)
            v_buf[rows, :, past] = v[:, :, 0].to(v_buf.dtype)
            k, v = k_buf, v_buf
        elif kv is not None:
            k_buf, v_buf = kv
            k_buf[:, :, past : past + T] = k
            v_buf[:, :, past : past + T] = v
            k, v = k_buf[:, :, : past + T], v_buf[:, :, : past + T]
        if kv is not None and q.device.type == "cuda" and k.dtype != q.dtype:
            # a float32 cache read by bfloat16 queries (generating under autocast): SDPA's GPU kernels take
            # one dtype, so the keys and values are cast to the queries' as autocast would
            k, v = k.to(q.dtype), v.to(q.dtype)
        # With no mask and nothing cached before this call, keys == queries and SDPA's top-left aligned
        # causal mask is right. With a cache and T == 1 (the decode step) the query may see every key.
        is_causal = mask is None and isinstance(past, int) and past == 0 and T > 1
        dropout_p = self.attn_dropout.p if self.training else 0.0
        if q.device.type == "cpu" and mask is not None and dropout_p == 0.0:
            y = _masked_attention_cpu(q, k, v, mask)
        elif q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # bfloat16 autocast on a CPU: the matmuls gain 2-3x from bf16, but SDPA's CPU flash-attention
            # backward runs ~6x slower in bf16 than in fp32 (torch 2.13), so attention itself stays fp32
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                   dropout_p=dropout_p, is_causal=is_causal).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The 4x-wide feed-forward layer with GPT-2's tanh-approximated GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        if config.n_experts:
            self.mlp: MLP | MoE = MoE(config.n_embd, config.n_experts, config.moe_top_k, lambda: MLP(config))
        else:
            self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, *attention_inputs: Any) -> torch.Tensor:
        """Pre-LayerNorm residual block; ``attention_inputs`` are (mask, kv, past) as the attention takes them."""
        x = x + self.attn(self.ln_1(x), *attention_inputs)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 style language model: token ids (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Tied: the output projection IS the token embedding (GPT-2 does this; it saves V*C parameters).
        self.lm_head.weight = self.wte.weight
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
    ) -> torch.Tensor:
        """The final-LayerNorm output (B, T, n_embd): what the LM head, a value head or a reward head reads.

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
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, seq_len), got {tuple(idx.shape)}")
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        total = past + T
        if total > self.config.block_size:
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
                mask = self._padded_causal_mask(keep, past, T)
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
            mask, segment_positions = self._segment_mask(segment_ids, keep)
            if position_ids is None:
                position_ids = segment_positions
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
        x = self.drop(self.wte(idx) + self.wpe(position_ids))
        for i, block in enumerate(self.h):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x = block(x, mask, kv, past)
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
        """One decode step where every row is at its own length: final-LayerNorm output (B, n_embd).

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
        x = self.drop(self.wte(tokens[:, None]) + self.wpe(position_ids[:, None]))
        mask = key_mask.bool()[:, None, None, :]
        for i, block in enumerate(self.h):
            x = block(x, mask, (cache.k[i], cache.v[i]), columns)
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

    @staticmethod
    def _segment_mask(segment_ids: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-diagonal causal mask (B, 1, T, T) of packed segments, and positions restarting per segment.

        A segment starts wherever the id differs from the previous token's, so [3, 3, 3, 3] is one segment
        and [1, 1, 2, 2, 1] three. With a padding mask (keep), pad keys are hidden too, and every query
        still sees itself so no row of the softmax is empty.
        """
        B, T = segment_ids.shape
        arange = torch.arange(T, device=segment_ids.device)
        starts = torch.ones(B, T, dtype=torch.bool, device=segment_ids.device)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        run = starts.long().cumsum(-1)  # segment number of each token
        first = torch.where(starts, arange, 0).cummax(-1).values  # index where each token's segment starts
        mask = (run[:, :, None] == run[:, None, :]) & (arange[None, :] <= arange[:, None])
        if keep is not None:
            mask = (mask & keep[:, None, :]) | torch.eye(T, dtype=torch.bool, device=keep.device)
        return mask[:, None], arange - first

    @staticmethod
    def _padded_causal_mask(keep: torch.Tensor, past: int, T: int) -> torch.Tensor:
        """Boolean (B, 1, T, past + T) mask: causal AND key is real, OR key is the query itself."""
        total = past + T
        q_pos = torch.arange(past, total, device=keep.device)[:, None]
        k_pos = torch.arange(total, device=keep.device)[None, :]
        if T == 1:  # the decode step: every earlier key is causal-visible; only padding matters
            return (keep | (k_pos == q_pos))[:, None, None, :]
        return (((k_pos <= q_pos) & keep[:, None, :]) | (k_pos == q_pos))[:, None, :, :]

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
        """Number of parameters; with non_embedding=True the position embeddings are left out.

        The token embedding stays in the count even then: it is tied to the LM head, so those weights
        do a real matmul per token, which is what the count is used for (FLOPs, scaling laws).

        active=True counts the parameters one token actually uses: in a mixture-of-experts model, the
        router plus moe_top_k of the n_experts expert MLPs per layer (the other experts are stored but
        idle for that token). For a dense model it changes nothing.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied weight once
        if non_embedding:
            n -= self.wpe.weight.numel()
        cfg = self.config
        if active and cfg.n_experts:
            per_expert = sum(p.numel() for p in self.h[0].mlp.experts[0].parameters())
            n -= cfg.n_layer * (cfg.n_experts - cfg.moe_top_k) * per_expert
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6*N + 12*n_layer*n_embd*seq_len.

        This is the nanoGPT / PaLM-paper convention. 6N: each parameter does one multiply-add (2 FLOPs)
        per token in the forward pass and twice that in the backward pass; N = num_params(non_embedding=
        True, active=True), so a mixture-of-experts model counts the router and the moe_top_k experts a
        token runs through, not the idle ones. 12*L*C*T: the attention scores q@k^T and the weighted sum
        p@v are 2*T*C FLOPs each per token per layer forward, times 3 for forward + backward. LayerNorms,
        softmax, GELU and the MoE gather/scatter are ignored. Inference (forward only) costs about a
        third of this. seq_len defaults to block_size.
        """
        T = self.config.block_size if seq_len is None else seq_len
        cfg = self.config
        return 6.0 * self.num_params(non_embedding=True, active=True) + 12.0 * cfg.n_layer * cfg.n_embd * T

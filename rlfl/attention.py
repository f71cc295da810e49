"""Causal self-attention with grouped-query heads, its preallocated KV cache and the masks it reads.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`. Four cases:
- no padding mask and no cache (training): `is_causal=True`, so PyTorch picks its flash / efficient
  kernels and never materialises a (T, T) mask;
- a padding mask (batched prompts of different lengths, left-padded): an explicit boolean mask that is
  causal AND key-is-real, OR key-is-the-query-itself (`padded_causal_mask`). The last term matters: a pad
  query whose keys are all pads would otherwise softmax over nothing and produce NaN, which then leaks
  through later layers;
- a KV cache: new keys/values are written into the preallocated buffers at [length, length + T) and the
  queries attend over [0, length + T);
- packed sequences (`segment_ids`, several SFT examples in one row): a block-diagonal causal mask
  (`segment_mask`), so each example attends only within itself, and positions restart at 0 at each example;
  with `branch_ids`, one segment holds a prefix and several continuations of it, each seeing the prefix and
  itself (a GRPO group: one prompt, G completions).
The dense training path (no mask, no segments, n_experts=0) does no work beyond what it always did.
On a CPU, a masked attention (the last three cases) runs as plain float32 matmuls instead of SDPA, whose
CPU kernel with an explicit mask is ~1.7x slower forward + backward at these short lengths.

Example:
    >>> import torch
    >>> from rlfl.model import GPTConfig
    >>> cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=4, n_embd=64, n_kv_head=2)
    >>> attn = CausalSelfAttention(cfg)
    >>> attn(torch.zeros(1, 5, 64), None, None, 0).shape
    torch.Size([1, 5, 64])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlfl.model_config import GPTConfig
from rlfl.norms import RMSNorm
from rlfl.rotary import apply_rope


class KVCache:
    """Preallocated per-layer key/value buffers for incremental decoding.

    K and V for all layers live in two tensors of shape (n_layer, B, kv_heads, max_len, head_dim), allocated
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
        shape = (config.n_layer, batch_size, config.kv_heads, max_len, config.head_dim)
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


def segment_mask(segment_ids: torch.Tensor, keep: torch.Tensor | None,
                 branch_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal causal mask (B, 1, T, T) of packed segments, and positions restarting per segment.

    A segment starts wherever the id differs from the previous token's, so [3, 3, 3, 3] is one segment
    and [1, 1, 2, 2, 1] three. With a padding mask (keep), pad keys are hidden too, and every query
    still sees itself so no row of the softmax is empty.

    ``branch_ids`` (B, T) packs several continuations of one shared prefix into a segment (G completions of
    one prompt): within a segment, branch-0 tokens are the prefix and come first, and a token of branch b > 0
    sees the prefix and the earlier tokens of its own branch only, at the positions it would have after the
    prefix alone. So each continuation computes what [prefix | continuation] would alone, and the prefix is
    computed once.

    Example:
        >>> mask, pos = segment_mask(torch.tensor([[1, 1, 1, 1, 1]]), None, torch.tensor([[0, 0, 1, 1, 2]]))
        >>> pos.tolist(), mask[0, 0, 4].tolist()   # branch 2's token sees the prefix and itself
        ([[0, 1, 2, 3, 2]], [True, True, False, False, True])
    """
    B, T = segment_ids.shape
    arange = torch.arange(T, device=segment_ids.device)
    starts = torch.ones(B, T, dtype=torch.bool, device=segment_ids.device)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    run = starts.long().cumsum(-1)  # segment number of each token
    mask = (run[:, :, None] == run[:, None, :]) & (arange[None, :] <= arange[:, None])
    if branch_ids is None:
        first = torch.where(starts, arange, 0).cummax(-1).values  # index where each token's segment starts
        positions = arange - first
    else:
        mask &= (branch_ids[:, None, :] == 0) | (branch_ids[:, None, :] == branch_ids[:, :, None])
        positions = mask.sum(-1) - 1  # the earlier tokens a token sees are the ones before it in its sequence
        if keep is not None:
            positions = positions * keep  # padding (a row's tail, wider than any one sequence) sits at 0
    if keep is not None:
        mask = (mask & keep[:, None, :]) | torch.eye(T, dtype=torch.bool, device=keep.device)
    return mask[:, None], positions


def padded_causal_mask(keep: torch.Tensor, past: int, T: int) -> torch.Tensor:
    """Boolean (B, 1, T, past + T) mask: causal AND key is real, OR key is the query itself."""
    total = past + T
    q_pos = torch.arange(past, total, device=keep.device)[:, None]
    k_pos = torch.arange(total, device=keep.device)[None, :]
    if T == 1:  # the decode step: every earlier key is causal-visible; only padding matters
        return (keep | (k_pos == q_pos))[:, None, None, :]
    return (((k_pos <= q_pos) & keep[:, None, :]) | (k_pos == q_pos))[:, None, :, :]


def _masked_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v in float32 with plain matmuls: SDPA with a mask on a CPU.

    For the short masked sequences of batched decoding and PPO (tens of positions) this is ~1.7x faster
    forward + backward than SDPA's CPU flash kernel with an explicit mask (torch 2.13), and it computes in
    float32 under bfloat16 autocast too (SDPA's bf16 CPU backward is slower still). Every mask rlfl builds
    keeps the query's own key, so no softmax row is empty.
    """
    dtype = q.dtype
    with torch.autocast("cpu", enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        scores = scores.masked_fill(~mask, float("-inf"))
        return (torch.softmax(scores, dim=-1) @ v).to(dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through SDPA, optionally reading/writing a KV cache layer.

    q, k and v come from one fused projection `c_attn` of n_head + 2 * kv_heads heads. With grouped-query
    attention (kv_heads < n_head) the cache holds kv_heads heads and each is shared by n_head / kv_heads
    consecutive query heads. Rotary embeddings (and Qwen3's per-head q/k RMSNorm before them) are applied
    before the keys are cached, so a cached key is final.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        # A module rather than a float so that code adjusting every nn.Dropout's p (e.g. when fine-tuning
        # with a different dropout) also reaches the attention dropout that SDPA applies.
        self.attn_dropout = nn.Dropout(config.dropout)
        inner = config.n_head * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, inner + 2 * self.n_kv_head * self.head_dim,
                                bias=config.bias_of("qkv_bias"))
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias_of("attn_proj_bias"))
        self.resid_dropout = nn.Dropout(config.dropout)
        self.q_norm = RMSNorm(self.head_dim, config.layer_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.layer_norm_eps) if config.qk_norm else None

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, n_head, T, D) and k, v (B, kv_heads, T, D) of x (B, T, C)."""
        B, T, _ = x.shape
        if self.n_kv_head == self.n_head:
            q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            qkv = self.c_attn(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
            q, k, v = qkv.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        past: int | torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
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
        if self.n_kv_head != self.n_head:  # grouped-query attention: query head j reads kv head j // group
            group = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
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
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

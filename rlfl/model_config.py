"""`GPTConfig`: the shape and architecture options of rlfl's one model class, `rlfl.model.GPT`.

Every option defaults to GPT-2, so a config.json written before an option existed loads to the same model;
the Llama / Qwen options (rotary positions, RMSNorm, SwiGLU, grouped-query attention, ...) are documented
per field. Import it from `rlfl.model` alongside `GPT`.

Example:
    >>> cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=64, n_kv_head=2)
    >>> cfg.head_dim, cfg.kv_heads, cfg.mlp_width
    (16, 2, 256)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rlfl.config import is_int, is_number
from rlfl.rotary import rope_inv_freq


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
    bias: bool = field(default=True, metadata={
        "help": "Use biases in Linear and LayerNorm layers (GPT-2: true); qkv_bias, attn_proj_bias and mlp_bias "
                "override it per projection."})
    layer_norm_eps: float = field(default=1e-5, metadata={
        "help": "Epsilon of every LayerNorm / RMSNorm (GPT-2: 1e-5; Llama and Qwen: their rms_norm_eps)."})
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
    position_embedding: str = field(default="learned", metadata={
        "help": "'learned' (GPT-2: a table of block_size positions) or 'rope' (rotary, Llama / Qwen)."})
    rope_theta: float = field(default=10000.0, metadata={
        "help": "Base wavelength of the rotary embedding (rope only)."})
    rope_scaling: dict[str, Any] | None = field(default=None, metadata={
        "help": "Rotary frequency scaling: null (none), {'rope_type': 'linear', 'factor': F} or {'rope_type': "
                "'llama3', 'factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'}."})
    norm: str = field(default="layernorm", metadata={"help": "'layernorm' (GPT-2) or 'rmsnorm' (Llama / Qwen)."})
    mlp: str = field(default="gelu", metadata={
        "help": "'gelu' (GPT-2: up, tanh-GELU, down) or 'swiglu' (Llama / Qwen: down(silu(gate) * up))."})
    intermediate_size: int | None = field(default=None, metadata={
        "help": "Hidden width of the MLP; null = 4 * n_embd (GPT-2)."})
    n_kv_head: int | None = field(default=None, metadata={
        "help": "Key/value heads (grouped-query attention; must divide n_head); null = n_head."})
    head_size: int | None = field(default=None, metadata={
        "help": "Width of one attention head; null = n_embd / n_head (Qwen3 sets it, e.g. 128)."})
    qkv_bias: bool | None = field(default=None, metadata={
        "help": "Biases on the q, k, v projections; null = follow bias (Qwen2: true with bias false)."})
    attn_proj_bias: bool | None = field(default=None, metadata={
        "help": "Bias on the attention output projection; null = follow bias."})
    mlp_bias: bool | None = field(default=None, metadata={"help": "Biases in the MLP projections; null = follow bias."})
    qk_norm: bool = field(default=False, metadata={"help": "RMSNorm each query and key head before attention (Qwen3)."})
    tie_embeddings: bool = field(default=True, metadata={
        "help": "The LM head is the token embedding (GPT-2, small Llama / Qwen); false = a separate LM head matrix."})

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}; set {name} >= 1")
        if self.head_size is None and self.n_embd % self.n_head != 0:
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
        self._check_architecture()

    def _check_architecture(self) -> None:
        """Validate the architecture options (positions, norm, MLP, heads, biases)."""
        for name, allowed in (("position_embedding", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                              ("mlp", ("gelu", "swiglu"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not one of "
                                 f"{', '.join(repr(a) for a in allowed)}; pick one of them")
        for name in ("intermediate_size", "n_kv_head", "head_size"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value <= 0):
                raise ValueError(f"GPTConfig.{name}={value!r} must be a positive integer, or null for the default")
        if self.n_head % self.kv_heads:
            raise ValueError(f"GPTConfig.n_kv_head={self.n_kv_head} must divide n_head={self.n_head}; pick a divisor "
                             f"such as {self.n_head} (plain multi-head attention) or 1 (multi-query)")
        for name in ("qkv_bias", "attn_proj_bias", "mlp_bias"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} must be true, false or null (follow bias)")
        for name in ("qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} must be true or false")
        if not is_number(self.rope_theta) or not 0 < self.rope_theta < math.inf:
            raise ValueError(f"GPTConfig.rope_theta={self.rope_theta!r} must be a finite number > 0; Llama 2 uses "
                             "10000")
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: rotary embeddings need an even head width, got {self.head_dim}; "
                             "change n_embd / n_head or head_size")
        if self.rope_scaling is not None and self.position_embedding != "rope":
            raise ValueError("GPTConfig.rope_scaling applies to rotary embeddings only; set position_embedding='rope' "
                             "or rope_scaling=null")
        if self.position_embedding == "rope":
            rope_inv_freq(self)  # validates rope_scaling

    @property
    def head_dim(self) -> int:
        """Width of one attention head: head_size, or n_embd // n_head."""
        return self.head_size if self.head_size is not None else self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads: n_kv_head, or n_head."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def mlp_width(self) -> int:
        """Hidden width of the MLP: intermediate_size, or 4 * n_embd."""
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.n_embd

    def bias_of(self, name: str) -> bool:
        """Whether projection ``name`` ('qkv_bias', 'attn_proj_bias' or 'mlp_bias') has a bias."""
        value = getattr(self, name)
        return self.bias if value is None else value

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

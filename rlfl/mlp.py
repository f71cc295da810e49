"""The transformer's feed-forward layer: GPT-2's tanh-GELU MLP or Llama / Qwen's SwiGLU, by `GPTConfig.mlp`.

Example:
    >>> import torch
    >>> from rlfl.model import GPTConfig
    >>> cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, mlp="swiglu", intermediate_size=12)
    >>> mlp = MLP(cfg)
    >>> mlp.c_fc.weight.shape, mlp(torch.zeros(1, 3, 8)).shape
    (torch.Size([24, 8]), torch.Size([1, 3, 8]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlfl.model_config import GPTConfig


class MLP(nn.Module):
    """The feed-forward layer: GPT-2's up / tanh-GELU / down, or SwiGLU's down(silu(gate) * up).

    SwiGLU's gate and up projections are one fused `c_fc` of width 2 * mlp_width (gate first), so the
    layer does one input matmul either way.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        width, bias = config.mlp_width, config.bias_of("mlp_bias")
        self.c_fc = nn.Linear(config.n_embd, 2 * width if self.swiglu else width, bias=bias)
        self.c_proj = nn.Linear(width, config.n_embd, bias=bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.dropout(self.c_proj(F.silu(gate) * up))
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))

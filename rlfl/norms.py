"""Normalisation layers: GPT-2's LayerNorm or Llama / Qwen's RMSNorm, picked by `GPTConfig.norm`.

Example:
    >>> import torch
    >>> norm = RMSNorm(4, eps=1e-6)
    >>> norm(torch.tensor([[2.0, -2.0, 2.0, -2.0]]))
    tensor([[ 1.0000, -1.0000,  1.0000, -1.0000]], grad_fn=<MulBackward0>)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlfl.model_config import GPTConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32 (Llama / Qwen)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """The normalisation layer the config asks for, over the last ``dim`` features."""
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.bias)

"""Rotary position embeddings (Llama / Qwen) and their frequency scaling ("linear", "llama3").

`rope_inv_freq` computes the per-pair inverse frequencies as Hugging Face does, `Rotary` turns position ids
into the (cos, sin) angles of one forward, and `apply_rope` rotates queries and keys by them. The angles
are computed from the positions each call passes in, so a KV cache, left padding and packed segments
(positions restarting per example) rotate by exactly their own positions.

Example:
    >>> import torch
    >>> from rlfl.model import GPTConfig
    >>> cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=4, position_embedding="rope")
    >>> cos, sin = Rotary(cfg)(torch.tensor([[0, 1, 2]]))
    >>> cos.shape, apply_rope(torch.ones(1, 1, 3, 4), cos, sin)[0, 0, 0].tolist()
    (torch.Size([1, 1, 3, 4]), [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from rlfl.config import is_number

if TYPE_CHECKING:  # rlfl.model_config imports this module to validate rope_scaling
    from rlfl.model_config import GPTConfig


# The keys each rope_scaling type needs besides "rope_type" (Hugging Face's names).
_ROPE_SCALING_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def rope_inv_freq(config: GPTConfig) -> torch.Tensor:
    """The rotary embedding's inverse frequencies (head_dim // 2,) in float32, with rope_scaling applied.

    Computed as Hugging Face computes them, so that positions rotate by the same angles: theta^(-2i/d);
    "linear" divides every frequency by ``factor`` (positions stretched); "llama3" (Llama 3.1) divides only
    the low frequencies (wavelengths above original_max_position_embeddings / low_freq_factor) by ``factor``,
    keeps the high ones and interpolates smoothly in between. Raises ValueError for a malformed rope_scaling.

    Example:
        >>> from rlfl.model import GPTConfig
        >>> cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=4, position_embedding="rope")
        >>> rope_inv_freq(cfg)
        tensor([1.0000, 0.0100])
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
    if kind not in _ROPE_SCALING_KEYS:
        raise ValueError(f"GPTConfig.rope_scaling={scaling!r}: rope_type must be one of "
                         f"{', '.join(repr(k) for k in _ROPE_SCALING_KEYS)}; other RoPE variants are not supported")
    need = _ROPE_SCALING_KEYS[kind]
    extra = sorted(set(scaling) - {"rope_type", *need})
    missing = [k for k in need if k not in scaling]
    if extra or missing:
        raise ValueError(f"GPTConfig.rope_scaling for rope_type {kind!r} takes exactly the keys "
                         f"{', '.join(need) or '(none)'}; " + (f"missing {', '.join(missing)}" if missing else
                                                               f"unknown {', '.join(extra)}"))
    bad = [k for k in need if not is_number(scaling[k]) or not 0 < scaling[k] < math.inf]
    if bad:
        raise ValueError(f"GPTConfig.rope_scaling {bad[0]}={scaling[bad[0]]!r} must be a finite number > 0")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        if high <= low:
            raise ValueError(f"GPTConfig.rope_scaling: high_freq_factor={high} must exceed low_freq_factor={low}")
        old_context = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class Rotary(nn.Module):
    """Rotary position embedding: position ids -> the (cos, sin) that `apply_rope` rotates queries and keys by.

    The inverse frequencies are a non-persistent buffer (derived from the config, never stored in a
    checkpoint); the angles are computed per forward in float32 for the positions asked for, so a KV
    cache, left padding and packed segments get exactly the positions they pass in.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def reset(self) -> None:
        """Recompute the buffer in place (after `nn.Module.to_empty`, which leaves it uninitialised)."""
        with torch.no_grad():
            self.inv_freq.copy_(rope_inv_freq(self.config).to(self.inv_freq.device))

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin of shape (B, 1, T, head_dim), float32."""
        with torch.autocast(position_ids.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.float()
            angles = torch.cat((freqs, freqs), dim=-1)[:, None]
            return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles in cos / sin (Hugging Face's "rotate half" layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)

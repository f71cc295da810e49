"""A mixture-of-experts feed-forward layer: a softmax top-k router over GPT-2 MLP experts.

Each token's hidden vector goes to the `top_k` experts its router scores highest; the layer's output
is the gate-weighted sum of those experts' outputs. Only the chosen experts run on a token, so a model
with E experts holds about E times the MLP parameters of a dense model but spends only k/E of them
per token (see GPT.num_params(active=True)).

How the dispatch runs (written for CPU, where every FLOP counts and kernel launches are cheap):
1. the router scores all N tokens at once: logits (N, E) -> softmax -> top-k -> gate weights;
2. the N*k (token, expert) slots are sorted by expert (one argsort) and counted (one bincount, one
   host sync), so each expert's tokens are one contiguous slice of the sorted token index;
3. a Python loop over the experts gathers each expert's tokens with index_select, runs the expert on
   just those rows and index_adds the gate-weighted result back into the output.
No expert ever computes on tokens it was not given, and there is no capacity limit: no token is ever
dropped, so a token's output does not depend on what else is in the batch. That is what makes the KV
cache, left padding and packed sequences give the same logits as running each sequence alone.

Load balancing (Switch Transformer, Fedus et al. 2021): with f_e the fraction of token-slots routed to
expert e and P_e the mean router probability of e over the tokens, the auxiliary loss is
E * sum_e f_e * P_e. It equals 1 when routing is uniform and grows as tokens pile onto a few experts;
f_e is a count (no gradient), so the gradient reaches the router through P_e and pushes probability
away from the overloaded experts.

Example:
    >>> import torch
    >>> from torch import nn
    >>> moe = MoE(16, n_experts=4, top_k=2, make_expert=lambda: nn.Linear(16, 16))
    >>> y = moe(torch.randn(2, 5, 16))
    >>> y.shape, moe.aux_loss is not None, int(moe.load.sum())
    (torch.Size([2, 5, 16]), True, 20)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class Router(nn.Module):
    """Scores each token against every expert and picks its top-k experts with their gate weights."""

    def __init__(self, n_embd: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"Router: top_k={top_k} must be in [1, n_experts={n_experts}]")
        self.top_k = top_k
        # No bias: a bias would let the router prefer an expert regardless of the token, which is
        # exactly the imbalance the auxiliary loss fights.
        self.gate = nn.Linear(n_embd, n_experts, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) -> (gate weights (N, k) float32, expert ids (N, k), router probabilities (N, E) float32).

        With k >= 2 the chosen probabilities are renormalised to sum to 1 (Mixtral-style). With k == 1
        the raw probability is kept (Switch-style): renormalising would make every gate exactly 1, and
        the language-model loss would then send no gradient to the router at all.
        """
        # float32 softmax even under bf16 autocast: near-ties between experts are common at init
        probs = F.softmax(self.gate(x).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, experts, probs


class MoE(nn.Module):
    """Routes each token to `top_k` of `n_experts` expert modules and mixes their outputs.

    After a forward in training mode, `load` holds the number of token-slots each expert received
    (a detached (E,) tensor), and `aux_loss` the unweighted load-balancing loss when autograd is
    recording (else None). The owner (rlfl.model.GPT) reads and clears `aux_loss` after each forward,
    so no layer keeps a graph alive between steps.
    """

    def __init__(self, n_embd: int, n_experts: int, top_k: int, make_expert: Callable[[], nn.Module]) -> None:
        super().__init__()
        if n_experts < 2:
            raise ValueError(f"MoE: n_experts={n_experts} must be >= 2; use a dense MLP for one expert")
        self.n_experts = n_experts
        self.router = Router(n_embd, n_experts, top_k)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.aux_loss: torch.Tensor | None = None
        self.load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts, probs = self.router(x)
        k = weights.shape[1]
        flat = experts.reshape(-1)  # slot s = token s // k, its (s % k)-th choice
        order = flat.argsort(stable=True)  # stable: tokens keep their order within an expert
        counts = torch.bincount(flat, minlength=self.n_experts)
        token = order // k
        gate = weights.reshape(-1)[order].unsqueeze(-1)
        out = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, torch.float32))
        start = 0
        for e, n in enumerate(counts.tolist()):  # the one host sync of the layer
            idx = token[start : start + n]
            # An expert with no tokens still runs on zero rows: it costs nothing, and its parameters
            # get zero gradients instead of none, which DistributedDataParallel requires (it would
            # otherwise wait forever for gradients of "unused" parameters).
            y = self.experts[e](x.index_select(0, idx))
            out.index_add_(0, idx, y.to(out.dtype) * gate[start : start + n])
            start += n
        if self.training:
            self.load = counts.detach()
            if torch.is_grad_enabled():
                self.aux_loss = balance_loss(counts, probs)
        return out.to(x.dtype).reshape(shape)


def balance_loss(counts: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load-balancing loss E * sum_e f_e * P_e (1.0 when routing is uniform).

    counts: (E,) token-slots routed to each expert; probs: (N, E) router probabilities.
    """
    n_experts = probs.shape[-1]
    fraction = counts.to(probs.dtype) / counts.sum().clamp(min=1)
    return n_experts * torch.sum(fraction * probs.mean(dim=0))

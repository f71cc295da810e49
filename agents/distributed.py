"""Data-parallel PPO across torchrun processes: every rank steps its own env rows, all ranks take one update.

Under ``torchrun --nproc_per_node=N`` each process runs `rlfl.agents.PPO` on its own vector env (its own
prompts and samples: seed + rank) and its own rollout, and the ranks agree on everything an update
depends on, so their weights stay identical without ever being sent again:

- the starting weights (the value head is randomly initialised) are broadcast from rank 0 once;
- every minibatch's gradients are averaged over the ranks before clipping and the optimizer step;
- advantage whitening, reward normalisation and the adaptive KL controller use statistics of all ranks;
- the decisions of a minibatch (NaN/inf stops, exploding-ratio skips, the target_kl early stop) and the
  number of minibatches are taken from all ranks' figures, so no rank leaves a collective call alone;
- ``num_timesteps`` counts the tokens of all ranks, so schedules, checkpoints and evaluations fire at the
  same step everywhere.

Outside torchrun (no process group) every function here is the identity, at no cost.

Example (one process: the world is just this rank):
    >>> world()
    (0, 1)
    >>> all_sum(np.array([1.0, 2.0])).tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    """Where the backend's collectives take tensors: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(values: np.ndarray, op: dist.ReduceOp) -> np.ndarray:
    if world()[1] == 1:
        return np.asarray(values, dtype=np.float64)
    t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=_device())
    dist.all_reduce(t, op=op)
    return t.cpu().numpy()


def all_sum(values: np.ndarray | list[float]) -> np.ndarray:
    """Element-wise sum over the ranks (float64)."""
    return _reduce(np.asarray(values), dist.ReduceOp.SUM)


def all_max(values: np.ndarray | list[float]) -> np.ndarray:
    """Element-wise maximum over the ranks (float64)."""
    return _reduce(np.asarray(values), dist.ReduceOp.MAX)


def all_min(values: np.ndarray | list[float]) -> np.ndarray:
    """Element-wise minimum over the ranks (float64)."""
    return _reduce(np.asarray(values), dist.ReduceOp.MIN)


def all_gather(values: np.ndarray) -> np.ndarray:
    """Every rank's 1-D array, concatenated in rank order (lengths may differ)."""
    if world()[1] == 1:
        return np.asarray(values)
    out: list[np.ndarray | None] = [None] * world()[1]
    dist.all_gather_object(out, np.asarray(values))
    return np.concatenate([np.asarray(x) for x in out])


def mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation of all ranks' values together (numpy's own on one rank)."""
    if world()[1] == 1:
        return float(x.mean()), float(x.std())
    total, total_sq, n = all_sum([x.sum(), np.square(x).sum(), x.size])
    mean = total / n
    return mean, math.sqrt(max(total_sq / n - mean**2, 0.0))


def mean_count(values: list[float]) -> tuple[float, int]:
    """Mean (nan when empty) and number of all ranks' values together."""
    if world()[1] == 1:
        return (float(np.mean(values)) if values else float("nan")), len(values)
    total, n = all_sum([sum(values), len(values)])
    return (total / n if n else float("nan")), int(n)


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (in place)."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks: one all-reduce of all of them, flattened (a rank that
    did not use a parameter another rank used contributes zeros)."""
    size = world()[1]
    if size == 1:
        return
    params = [p for p in params if p.requires_grad]
    # a parameter no rank used (e.g. an expert nobody routed to) keeps no gradient, as in one process
    used = all_max([float(p.grad is not None) for p in params])
    params = [p for p, u in zip(params, used) if u]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(g).to(g.dtype)
        offset += n

"""The one place a ``--device`` value becomes a torch device, checked.

Example:
    >>> pick_device("cpu")
    device(type='cpu')
    >>> pick_device("cdua")
    Traceback (most recent call last):
    ...
    ValueError: --device 'cdua' is not a device; pass auto, cpu, cuda or cuda:N
"""

from __future__ import annotations

import os

import torch


def pick_device(want: str | torch.device) -> torch.device:
    """The torch device a ``--device`` value names, checked: ``auto`` is a visible CUDA GPU, else the CPU;
    ``cuda`` is always returned with its index: this process's GPU under torchrun (LOCAL_RANK), else the
    current one (``cuda:0`` unless CUDA_VISIBLE_DEVICES or torch.cuda.set_device say otherwise). A misspelt
    name or a GPU that is not there is a one-line `ValueError` saying what to pass."""
    if isinstance(want, torch.device):
        if want.type != "cuda" or want.index is not None:
            return want
        want = "cuda"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(want)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {want!r} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {want!r}: rlfl runs on cpu or cuda; pass auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {want}: no CUDA GPU is visible; pass --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {want}: this machine has {torch.cuda.device_count()} GPU(s); pass cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
        if device.index is None:
            # a plain "cuda" becomes a numbered GPU: torch.cuda.set_device, the RNG state calls and device
            # comparisons (param.device is always numbered) all need the index
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            else:
                device = torch.device("cuda", torch.cuda.current_device())
    return device

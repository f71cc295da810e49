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
    under torchrun ``cuda`` is this process's GPU (LOCAL_RANK). A misspelt name or a GPU that is not there
    is a one-line `ValueError` saying what to pass."""
    if isinstance(want, torch.device):
        return want
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
        if device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return device

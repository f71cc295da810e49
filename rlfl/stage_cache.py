"""Pipelines that skip finished stages: atomic text/JSONL writes, a settings record, "is this checkpoint done?".

A multi-stage run (the synthetic task, the IMDB example, later `rlfl quickstart`) keeps every stage's output
in one folder and, run again, skips the stages whose output is complete. Two things make that safe: every
file is written atomically (a temp file in the same folder, then ``os.replace``), and the settings the
folder was built with are recorded, so a later call with other settings is refused instead of silently
mixing stages built two ways.

Example:
    >>> import tempfile; from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> check_settings(d / "settings.json", {"steps": 10})
    >>> check_settings(d / "settings.json", {"steps": 20})
    Traceback (most recent call last):
    ...
    ValueError: ...settings.json: ... was built with steps=10, not 20; pass a new output folder (or delete ...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlfl import checkpoint as ckpt
from rlfl.files import atomic_write_text, read_json


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` one JSON object a line, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def check_settings(path: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Record ``settings`` in ``path`` (JSON), or raise if the folder was built with different ones."""
    path = Path(path)
    if path.is_file():
        recorded = read_json(path, fix=f"delete {path.parent} (or pass a new output folder) to build it again")
        fix = f"pass a new output folder (or delete {path.parent})"
        for key in sorted(set(settings) | set(recorded)):
            if key not in recorded:
                raise ValueError(f"{path}: {path.parent} was built without the setting {key} (an older version), "
                                 f"so {key}={settings[key]!r} cannot be added to it; {fix}")
            if settings.get(key) != recorded.get(key):
                raise ValueError(f"{path}: {path.parent} was built with {key}={recorded.get(key)!r}, not "
                                 f"{settings.get(key)!r}; {fix}")
        return
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def checkpoint_done(directory: str | os.PathLike, steps: int, *, need: str | None = None) -> bool:
    """True when ``directory`` holds a checkpoint trained to ``steps`` (and, if given, with config field ``need``)."""
    if not ckpt.is_checkpoint(directory):
        return False
    config = ckpt.read_config(directory)
    return int(config.get("step", 0)) >= steps and (need is None or need in config)

"""Files on disk: written atomically (never half a file), and JSON read back with one-line errors.

Example:
    >>> import tempfile; from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "meta.json"
    >>> _ = p.write_bytes(b"\\x80\\x03garbage")
    >>> read_json(p, fix="rerun rlfl data prepare")
    Traceback (most recent call last):
    ...
    ValueError: .../meta.json: not a JSON file (invalid UTF-8 at byte 0); rerun rlfl data prepare
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike, *, fix: str, expect: type = dict) -> Any:
    """The JSON value in ``path``, which must be an ``expect`` (a dict by default).

    A missing file raises `FileNotFoundError`; a file that is not UTF-8 JSON of that type raises `ValueError`
    naming the file, where it breaks (byte offset or line and column) and ``fix``, what the user should do.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; {fix}") from None
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a JSON file (invalid UTF-8 at byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {fix}") from None
    if not isinstance(value, expect):
        raise ValueError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, got "
                         f"{type(value).__name__}; {fix}")
    return value


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSONL file (.gz read as gzip); a line that is not JSON
    raises a ValueError naming the file and the line.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n\\n[2]\\n')
    >>> list(iter_jsonl(p))
    [(1, {'a': 1}), (3, [2])]
    """
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: not valid JSON ({e.msg}); fix or remove the line") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync and a rename (never half a file).

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: see `atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))

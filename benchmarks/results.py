"""Write a benchmark's figures into benchmarks/RESULTS.md: one section per benchmark, with the machine it ran on.

Each benchmark script calls `record` at the end of a run; the section of that benchmark (``## name``) is
replaced, every other section is kept. The section says where the figures come from: the command, the CPU
model, the ISA flags that decide the speed of our kernels (AVX2, AVX-512, bf16 in hardware), the torch
threads and the date. The file is written to a temporary file and renamed, so a crash never leaves half of it.

Example:
    >>> from benchmarks.results import record                                         # doctest: +SKIP
    >>> record("bench_quickstart", "python benchmarks/bench_quickstart.py", ["policy", "gold"],
    ...        [["rlhf", "0.96"]], threads=2)                                          # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

from rlfl.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
HEADER = ("# Benchmark results\n\nWritten by the scripts in this folder (`benchmarks/results.py`): one section per "
          "benchmark, replaced by its latest run. Compare figures within one section (one machine, one run).\n")


def machine() -> str:
    """The CPU model and the ISA flags among `ISA_FLAGS` it has, from /proc/cpuinfo (or the platform)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    have = set(flags.group(1).split()) if flags else set()
    isa = [f for f in ISA_FLAGS if f in have]
    return f"{model.group(1).strip() if model else platform.machine()} ({', '.join(isa) or 'no AVX2'})"


def record(name: str, command: str, header: list[str], rows: list[list[str]], *, threads: int,
           notes: str = "", path: Path = RESULTS) -> Path:
    """Replace the ``## name`` section of RESULTS.md with this run's table; returns the file's path."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {name}", "", f"`{command}`", "",
             f"CPU: {machine()}; {os.cpu_count()} logical cores; torch threads: {threads}; {when}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        lines += ["", notes]
    section = "\n".join(lines) + "\n"
    text = path.read_text(encoding="utf-8") if path.is_file() else HEADER
    parts = re.split(r"(?m)^(?=## )", text)
    kept = [p for p in parts[1:] if not p.startswith(f"## {name}\n")]
    body = parts[0].rstrip("\n") + "\n\n" + "\n".join(p.rstrip("\n") + "\n" for p in sorted(kept + [section]))
    return atomic_write_text(path, body)

"""benchmarks/results.py: each benchmark's section of RESULTS.md is replaced by its latest run, the rest kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results_module():
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_replaces_its_own_section_and_keeps_the_others(tmp_path):
    results = _results_module()
    path = tmp_path / "RESULTS.md"
    results.record("bench_b", "python b.py", ["x", "y"], [["1", "2"]], threads=2, path=path)
    results.record("bench_a", "python a.py", ["z"], [["old"]], threads=1, path=path)
    results.record("bench_a", "python a.py", ["z"], [["new"]], threads=1, notes="a note", path=path)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("## bench_a") == 1 and text.count("## bench_b") == 1
    assert text.index("## bench_a") < text.index("## bench_b")  # sections sorted by name
    assert "| new |" in text and "| old |" not in text and "a note" in text
    assert "| 1 | 2 |" in text and "`python b.py`" in text
    assert "torch threads: 1" in text and "CPU: " in text
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed

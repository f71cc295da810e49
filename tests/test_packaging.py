"""Packaging: the wheel holds only the top-level package `rlfl` (envs/ and agents/ as rlfl.envs, rlfl.agents)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_only_the_rlfl_package(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("rlfl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"rlfl"}, top
    assert "rlfl/envs/__init__.py" in names and "rlfl/agents/__init__.py" in names
    # every subpackage of the source tree ships (a package missing from pyproject's list would be silently dropped)
    for init in (ROOT / "rlfl").rglob("__init__.py"):
        assert f"rlfl/{init.relative_to(ROOT / 'rlfl').as_posix()}" in names, init
    assert "rlfl/cli.py" in names and not any(n.startswith(("tests/", "envs/", "agents/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert re.search(r"^rlfl = rlfl\.cli:main$", zipfile.ZipFile(wheel).read(entry).decode(), re.M)


def test_no_bare_envs_or_agents_imports():
    pattern = re.compile(r"^\s*(from|import)\s+(envs|agents)\b", re.M)
    offenders = [str(p) for d in ("rlfl", "envs", "agents", "tests", "examples", "benchmarks")
                 for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    test_cmd = blocks[1].strip().splitlines()[-1]
    assert "pytest" in test_cmd and test_cmd in ci
    # the last command CI runs is the README's: its pytest summary is the run's verdict
    commands = [ln for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[-1].strip() == test_cmd
    assert "torch==2.13.0" in test_cmd.split("pip install -e")[0]  # torch pinned before the project

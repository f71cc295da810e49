"""Every example in the library's docstrings runs and prints what it says (one test per module)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import gymnasium
import pytest

import rlfl
import rlfl.agents
import rlfl.envs

# ids that the registry's examples register (a second registration of an id would warn)
DEMO_IDS = ("demo/Great-v0", "demo/Short-v0")


def library_modules() -> list[str]:
    names = ["rlfl", "rlfl.agents", "rlfl.envs"]
    for package in (rlfl, rlfl.agents, rlfl.envs):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(n for n in set(names) if not n.endswith("__main__"))


MODULES = library_modules()


def test_every_package_is_walked():
    assert {"rlfl.model", "rlfl.evaluate", "rlfl.feedback.web", "rlfl.agents.ppo", "rlfl.envs.text_env"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a relative path writes here
    for demo in DEMO_IDS:
        gymnasium.registry.pop(demo, None)
    try:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=True)
    finally:
        for demo in DEMO_IDS:
            gymnasium.registry.pop(demo, None)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"

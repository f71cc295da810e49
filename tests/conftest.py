"""Shared test fixtures: the location of ../shared/data and a small prepared corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test when a fresh clone doesn't have it."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent in a fresh clone)")
    return path


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """Byte-level shards of 600 built-in synthetic reviews (no download, seconds to build)."""
    from rlfl.data import prepare_corpus
    from rlfl.synthetic import synthetic_documents
    from rlfl.tokenizer import byte_tokenizer

    out = tmp_path_factory.mktemp("shards")
    prepare_corpus(synthetic_documents(600, seed=0), byte_tokenizer(), out, val_fraction=0.1, seed=0)
    return out

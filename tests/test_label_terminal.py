"""`rlfl label cli` driven through StringIO and a real pipe; export and stats; terminal-safe model text."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlfl.feedback.store import LabelStore
from rlfl.feedback.terminal import (
    LabelCliConfig,
    LabelExportConfig,
    LabelStatsConfig,
    label_cli,
    label_export,
    label_stats,
    safe_text,
)
from rlfl.preference_data import read_pairs

ROOT = Path(__file__).resolve().parents[1]
SIDE_TO_CHOICE = {("left", "ab"): "a", ("left", "ba"): "b", ("right", "ab"): "b", ("right", "ba"): "a"}


@pytest.fixture
def items_file(tmp_path) -> Path:
    path = tmp_path / "items.jsonl"
    rows = [{"prompt": f"Question {i}?", "response_a": f"answer A{i}", "response_b": f"answer B{i}",
             "source_a": "sft", "source_b": "ppo"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(tmp_path, keys: str, **overrides) -> tuple[int, str]:
    config = LabelCliConfig(**{"store": str(tmp_path / "labels.db"), "annotator": "alice", "seed": 1, **overrides})
    out = io.StringIO()
    added = label_cli(config, stdin=io.StringIO(keys), stdout=out)
    return added, out.getvalue()


def shown(output: str) -> list[tuple[int, str]]:
    """(item id, left text) of every item the session showed, in order."""
    return [(int(m[0]), m[1]) for m in re.findall(r"item (\d+)\nPROMPT:\n.*\n\[1\] LEFT:\n(.*)\n", output)]


def labels(tmp_path):
    with LabelStore(tmp_path / "labels.db", create=False) as store:
        return store.labels()


def test_keys_become_choices_through_the_shown_order(tmp_path, items_file):
    added, out = run(tmp_path, "1\n2\n3\n \n2\n", import_jsonl=str(items_file))
    assert added == 5 and "imported 5 new items" in out and "all 5 items are labelled by alice" in out
    got = labels(tmp_path)
    orders = [lab.shown_order for lab in got]
    assert set(orders) == {"ab", "ba"}  # seed 1 shows both orders
    sides = ["left", "right", "tie", "skip", "right"]
    expected = [SIDE_TO_CHOICE.get((side, order), side) for side, order in zip(sides, orders)]
    assert [lab.choice for lab in got] == expected
    # what was on the left really was the response the recorded order says
    for (item_id, left), lab in zip(shown(out), got):
        assert item_id == lab.item_id
        assert left == f"answer {'A' if lab.shown_order == 'ab' else 'B'}{item_id - 1}"
    assert all(lab.seconds is not None and lab.seconds >= 0 for lab in got)
    assert re.findall(r"\[(\d)/5\]", out) == ["0", "1", "2", "3", "4"]  # progress before each item


def test_undo_shows_the_item_again_and_relabels_it(tmp_path, items_file):
    added, out = run(tmp_path, "1\nu\n2\nq\n", import_jsonl=str(items_file))
    views = shown(out)  # labelled the first; undid it while the second was on screen
    assert views[2] == views[0] and views[3] == views[1]  # the undone item comes back, same sides, then the second
    assert f"undid your label of item {views[0][0]} (left)" in out
    [only] = labels(tmp_path)
    assert added == 1 and only.item_id == views[0][0]
    assert only.choice == SIDE_TO_CHOICE[("right", only.shown_order)]
    assert only.id == 2  # the undone label 1 is gone for good
    added, out = run(tmp_path, "u\nu\nq\n")  # a later session can undo the last label too; then nothing is left
    assert "undid your label of item" in out and "nothing to undo" in out and labels(tmp_path) == []


def test_quit_midway_and_resume_with_a_limit(tmp_path, items_file):
    added, out = run(tmp_path, "1\n1\n1\n", import_jsonl=str(items_file), limit=2)
    assert added == 2 and "stopping after 2 labels (--limit 2)" in out
    first = {lab.item_id for lab in labels(tmp_path)}
    added, out = run(tmp_path, "2\nq\n2\n", import_jsonl=str(items_file), seed=7)  # re-import adds nothing
    assert added == 1 and "imported 0 new items" in out and "[2/5]" in out
    assert "alice: 3/5 items labelled" in out
    added, out = run(tmp_path, "3\n3\n3\n", seed=1)
    got = labels(tmp_path)
    assert added == 2 and len(got) == 5 and {lab.item_id for lab in got} == {1, 2, 3, 4, 5}
    assert first <= {lab.item_id for lab in got}
    assert [lab.choice for lab in got][-2:] == ["tie", "tie"]


def test_unknown_keys_and_bare_enter_ask_again(tmp_path, items_file):
    added, out = run(tmp_path, "x\n\nleft\nq\n", import_jsonl=str(items_file))
    assert added == 0 and labels(tmp_path) == []
    assert "unknown key 'x'" in out and "unknown key 'left'" in out
    assert len(shown(out)) == 1  # still the first item when q came
    added, out = run(tmp_path, "")  # end of input quits cleanly
    assert added == 0 and "0 labels this session" in out


def test_model_text_cannot_drive_the_terminal(tmp_path):
    evil = "fine\x1b[2J\x1b]0;owned\x07\rFAKE\u202eevil\x9b31m"
    with LabelStore(tmp_path / "labels.db") as store:
        store.add_items([{"prompt": "p\x1b[1A", "response_a": evil, "response_b": "plain"}])
    _, out = run(tmp_path, "q\n")
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", out)
    assert "fine\\x1b[2J\\x1b]0;owned\\x07\\x0dFAKE\\u202eevil\\x9b31m" in out and "p\\x1b[1A" in out
    assert safe_text("line one\r\nline two\ttab") == "line one\nline two\ttab"


def test_config_and_store_errors(tmp_path, items_file):
    with pytest.raises(ValueError, match="no annotator name; pass --annotator NAME"):
        LabelCliConfig(store="x.db")
    with pytest.raises(ValueError, match="annotator name 'a b ' is not usable"):
        LabelCliConfig(annotator="a b ")
    with pytest.raises(ValueError, match="limit=-1 must be >= 0"):
        LabelCliConfig(annotator="a", limit=-1)
    with pytest.raises(ValueError, match="on_bad_line='ignore'; pass --on-bad-line error or skip"):
        LabelCliConfig(annotator="a", on_bad_line="ignore")
    with pytest.raises(FileNotFoundError, match="labels.db: no such label store; pass --import-jsonl"):
        run(tmp_path, "1\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response_a": "x", "response_b": "y"}\n{"prompt": "p"}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2: no field 'response_a'"):
        run(tmp_path, "1\n", import_jsonl=str(bad))
    added, _ = run(tmp_path, "1\n", import_jsonl=str(bad), on_bad_line="skip")
    assert added == 1
    with pytest.raises(ValueError, match="pass --out FILE.jsonl"):
        LabelExportConfig(out="prefs.csv")


def test_label_cli_through_a_real_pipe(tmp_path, items_file):
    code = ("from rlfl.feedback.terminal import LabelCliConfig, label_cli\n"
            f"label_cli(LabelCliConfig(store={str(tmp_path / 'labels.db')!r}, annotator='bob', "
            f"import_jsonl={str(items_file)!r}, seed=3))\n")
    proc = subprocess.run([sys.executable, "-c", code], input="2\n1\nu\n3\nq\n", capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = labels(tmp_path)
    assert [lab.annotator for lab in got] == ["bob", "bob"]
    assert got[0].choice == SIDE_TO_CHOICE[("right", got[0].shown_order)] and got[1].choice == "tie"
    assert "2 labels this session; bob: 2/5 items labelled" in proc.stdout


def test_export_and_stats(tmp_path, items_file):
    run(tmp_path, "1\n2\n3\ns\n1\n", import_jsonl=str(items_file))
    run(tmp_path, "1\n1\n1\n1\n1\n", annotator="carol", seed=5)
    out = io.StringIO()
    prefs = tmp_path / "prefs.jsonl"
    n = label_export(LabelExportConfig(store=str(tmp_path / "labels.db"), out=str(prefs)), stdout=out)
    assert n == 9 and f"wrote 9 preference records to {prefs}" in out.getvalue()  # 10 labels less alice's skip
    data = read_pairs(prefs)
    assert sum(p.tie for p in data.pairs) == 1 and {p.source for p in data.pairs} == {"human"}
    assert label_export(LabelExportConfig(store=str(tmp_path / "labels.db"), out=str(prefs), annotator="alice",
                                          include_ties=False), stdout=io.StringIO()) == 3
    out = io.StringIO()
    label_stats(LabelStatsConfig(store=str(tmp_path / "labels.db")), stdout=out)
    text = out.getvalue()
    assert "5 items, 2 annotators" in text
    assert re.search(r"alice\s+human\s+\d+\s+\d+\s+1\s+1\s+5", text)
    assert re.search(r"alice / carol\s+4\s+0\.\d{3}\s+(-|-?\d\.\d{3})", text)
    with pytest.raises(FileNotFoundError, match="nope.db: no such label store"):
        label_stats(LabelStatsConfig(store=str(tmp_path / "nope.db")))

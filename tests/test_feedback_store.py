"""The SQLite label store: schema, items, labels, undo, agreement, export round trip, threads, SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlfl.feedback.store import SCHEMA_VERSION, LabelStore, cohen_kappa
from rlfl.preference_data import read_pairs

ROOT = Path(__file__).resolve().parents[1]


def _items(n: int) -> list[dict]:
    return [{"prompt": f"Q{i}:", "response_a": f" yes {i}", "response_b": f" no {i}", "source_a": "sft",
             "source_b": "ppo", "meta": {"i": i}} for i in range(n)]


@pytest.fixture
def store(tmp_path):
    with LabelStore(tmp_path / "labels.db") as s:
        yield s


# ------------------------------------------------------------------------------------ opening
def test_new_store_is_wal_with_foreign_keys_full_sync_and_a_schema_version(tmp_path):
    path = tmp_path / "sub" / "labels.db"
    with LabelStore(path) as s:
        conn = s._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys really are enforced
            conn.execute("INSERT INTO labels (item_id, annotator, choice, shown_order, created) "
                         "VALUES (99, 'nobody', 'a', 'ab', 0)")
    with LabelStore(path, create=False) as s:  # reopening keeps everything
        assert len(s) == 0


def test_open_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.db: no such label store"):
        LabelStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all, just some text that is long enough " * 20)
    with pytest.raises(ValueError, match="junk.db: not an SQLite label store"):
        LabelStore(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match=r"other.db: an SQLite file but not an rlfl label store \(tables: t\)"):
        LabelStore(other)
    with pytest.raises(ValueError, match="is a folder"):
        LabelStore(tmp_path)
    newer = tmp_path / "newer.db"
    LabelStore(newer).close()
    conn = sqlite3.connect(newer)
    with conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION + 1}, this rlfl reads {SCHEMA_VERSION}"):
        LabelStore(newer)


# ------------------------------------------------------------------------------------ items
def test_items_round_trip_and_are_deduplicated(store):
    ids = store.add_items(_items(3))
    assert ids == [1, 2, 3]
    assert store.item(2).prompt == "Q1:" and store.item(2).meta == {"i": 1}
    assert (store.item(2).source_a, store.item(2).source_b) == ("sft", "ppo")
    # the same comparison again (even with other sources) is not stored twice; a new one is
    again = store.add_items([{"prompt": "Q1:", "response_a": " yes 1", "response_b": " no 1"},
                             {"prompt": "", "response_a": "x", "response_b": "y"}])
    assert again == [2, 4] and len(store) == 4
    assert [i.id for i in store.items()] == [1, 2, 3, 4]
    assert store.item(4).meta == {} and store.item(4).source_a == ""
    with pytest.raises(ValueError, match="no item 9 in .*labels.db; use an id from add_items"):
        store.item(9)


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "p", "response_a": "x"}, "no field 'response_b'"),
    ({"prompt": "p", "response_a": "x", "response_b": "x"}, "the two responses are the same text"),
    ({"prompt": "p", "response_a": " ", "response_b": "x"}, "empty 'response_a'"),
    ({"prompt": 3, "response_a": "x", "response_b": "y"}, "'prompt' is a number, not a string"),
    ({"prompt": "p", "response_a": "x", "response_b": "y", "id": 7}, "unknown field\\(s\\) 'id'; put extra fields under"),
    ({"prompt": "p", "response_a": "x", "response_b": "y", "meta": [1]}, "'meta' is an array, not an object"),
])
def test_bad_items_are_refused_whole(store, bad, message):
    with pytest.raises(ValueError, match=f"add_items: item 1: {message}"):
        store.add_items([_items(1)[0], bad])
    assert len(store) == 0  # nothing of the batch was added


def test_import_jsonl_items_and_pairs_and_bad_lines(store, tmp_path):
    good = tmp_path / "items.jsonl"
    lines = [json.dumps(r) for r in _items(2)]
    lines.insert(1, "")  # blank lines are fine
    lines.append(json.dumps({"prompt": "P", "chosen": " good", "rejected": " bad", "source": "hh", "margin": 1.0}))
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert store.import_jsonl(good) == 3
    pair = store.item(3)
    assert (pair.response_a, pair.response_b, pair.source_a, pair.source_b) == (" good", " bad", "chosen", "rejected")
    assert pair.meta == {"source": "hh", "margin": 1.0}
    assert store.import_jsonl(good) == 0 and len(store) == 3  # resuming with the same file adds nothing

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_items(5)[4]) + "\n" + json.dumps({"prompt": "p", "response_a": "x"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: no field 'response_b'; fix it or pass --on-bad-line skip"):
        store.import_jsonl(bad)
    assert len(store) == 3  # the good first line was not imported either
    assert store.import_jsonl(bad, on_bad_line="skip") == 1 and len(store) == 4
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        store.import_jsonl(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------ labels
def test_label_undo_relabel_and_errors(store):
    store.add_items(_items(3))
    first = store.add_label(1, "alice", "b", "ba", seconds=2.5, comment="close call")
    assert (first.id, first.item_id, first.annotator, first.choice, first.shown_order) == (1, 1, "alice", "b", "ba")
    assert (first.seconds, first.comment, first.simulated) == (2.5, "close call", False)
    assert abs(first.created - time.time()) < 60
    assert store.labels() == [first]  # what add_label returned is what is stored
    with pytest.raises(ValueError, match=r"item 1 is already labelled by 'alice' \(label 1: 'b'\); undo that label"):
        store.add_label(1, "alice", "a", "ab")
    store.add_label(2, "alice", "skip", "ab")
    assert store.undo_last("alice").choice == "skip"
    assert store.undo_last("alice") == first
    assert store.undo_last("alice") is None and store.labels() == []
    again = store.add_label(1, "alice", "a", "ab")
    assert again.id == 3  # ids are never reused after an undo
    with pytest.raises(ValueError, match=r"choice 'left' is not one of a, b, tie, skip"):
        store.add_label(2, "alice", "left", "ab")
    with pytest.raises(ValueError, match=r"shown_order 'AB' is not one of ab, ba"):
        store.add_label(2, "alice", "a", "AB")
    with pytest.raises(ValueError, match=r"item_id '2' must be an integer item id"):
        store.add_label("2", "alice", "a", "ab")
    with pytest.raises(ValueError, match=r"no item 42 in"):
        store.add_label(42, "alice", "a", "ab")
    with pytest.raises(ValueError, match=r"annotator name ' bob' is not usable"):
        store.add_label(2, " bob", "a", "ab")
    with pytest.raises(ValueError, match=r"seconds=-1 must be a finite number >= 0"):
        store.add_label(2, "alice", "a", "ab", seconds=-1)
    assert [lab.id for lab in store.labels()] == [3]  # none of the refused labels was written


def test_next_item_by_id_or_seeded_random(store):
    store.add_items(_items(5))
    assert store.next_item("alice").id == 1
    store.add_label(1, "alice", "a", "ab")
    store.add_label(3, "alice", "skip", "ab")  # a skip counts as done for that annotator
    assert store.next_item("alice").id == 2 and store.next_item("bob").id == 1
    picks = [store.next_item("alice", rng=random.Random(s)).id for s in range(20)]
    assert set(picks) == {2, 4, 5}
    assert picks == [store.next_item("alice", rng=random.Random(s)).id for s in range(20)]  # seeded
    for i in (2, 4, 5):
        store.add_label(i, "alice", "tie", "ba")
    assert store.next_item("alice") is None and store.next_item("alice", rng=random.Random(0)) is None
    assert store.progress("alice") == (5, 5) and store.progress("bob") == (0, 5)


def test_annotators_simulated_flag_follows_labels(store):
    store.add_items(_items(2))
    store.add_annotator("sim-1", simulated=True, meta={"noise": 0.2})
    store.add_annotator("sim-1", simulated=True)  # idempotent, keeps meta
    store.add_label(1, "sim-1", "a", "ab")
    store.add_label(1, "carol", "b", "ab")  # an unknown name is registered as a human
    assert store.annotators() == {"carol": {"simulated": False, "meta": {}},
                                  "sim-1": {"simulated": True, "meta": {"noise": 0.2}}}
    assert [lab.simulated for lab in store.labels()] == [True, False]
    with pytest.raises(ValueError, match="annotator 'carol' is already registered as human .* use another name"):
        store.add_annotator("carol", simulated=True)


def test_bulk_labels_are_all_or_nothing(store):
    store.add_items(_items(3))
    got = store.add_labels([{"item_id": 1, "annotator": "x", "choice": "a", "shown_order": "ab"},
                            {"item_id": 2, "annotator": "x", "choice": "b", "shown_order": "ba", "seconds": 1}])
    assert [(lab.item_id, lab.choice) for lab in got] == [(1, "a"), (2, "b")]
    with pytest.raises(ValueError, match="item 1 is already labelled by 'x'"):
        store.add_labels([{"item_id": 3, "annotator": "x", "choice": "a", "shown_order": "ab"},
                          {"item_id": 1, "annotator": "x", "choice": "a", "shown_order": "ab"}])
    assert len(store.labels()) == 2  # item 3's label rolled back with the bad one
    with pytest.raises(ValueError, match="a label with keys annotator, choice, item_id; give item_id"):
        store.add_labels([{"item_id": 3, "annotator": "x", "choice": "a"}])
    with pytest.raises(ValueError, match="a label with keys annotator, choice, item, shown_order; give"):
        store.add_labels([{"item": 3, "annotator": "x", "choice": "a", "shown_order": "ab"}])


# ------------------------------------------------------------------------------------ reports
def _label_all(store, annotator, choices):
    for item_id, choice in choices.items():
        store.add_label(item_id, annotator, choice, "ab" if item_id % 2 else "ba")


def test_counts_and_agreement_exact(store):
    store.add_items(_items(6))
    _label_all(store, "alice", {1: "a", 2: "a", 3: "b", 4: "tie", 5: "a", 6: "skip"})
    _label_all(store, "bob", {1: "a", 2: "b", 3: "b", 4: "tie", 5: "a", 6: "a"})
    _label_all(store, "carol", {1: "b", 6: "a"})
    store.add_annotator("dave")  # registered, no labels
    assert store.counts() == {
        "alice": {"a": 3, "b": 1, "tie": 1, "skip": 1, "total": 6},
        "bob": {"a": 3, "b": 2, "tie": 1, "skip": 0, "total": 6},
        "carol": {"a": 1, "b": 1, "tie": 0, "skip": 0, "total": 2},
        "dave": {"a": 0, "b": 0, "tie": 0, "skip": 0, "total": 0}}
    agree = store.agreement()
    assert list(agree) == [("alice", "bob"), ("alice", "carol"), ("bob", "carol")]
    # alice/bob on items 1-5: 4 of 5 equal; chance (3*2 + 1*2 + 1*1)/25 = 0.36; kappa 0.44/0.64
    assert agree[("alice", "bob")]["n"] == 5 and agree[("alice", "bob")]["raw"] == pytest.approx(0.8)
    assert agree[("alice", "bob")]["kappa"] == pytest.approx(0.6875)
    assert agree[("alice", "carol")] == {"n": 1, "raw": 0.0, "kappa": 0.0}  # item 6 is alice's skip
    assert agree[("bob", "carol")] == {"n": 2, "raw": 0.5, "kappa": 0.0}


def test_cohen_kappa_edge_cases():
    assert cohen_kappa({("a", "a"): 5}) is None  # both always said "a": chance agreement is 1
    assert cohen_kappa({}) is None
    assert cohen_kappa({("a", "a"): 3, ("b", "b"): 3}) == pytest.approx(1.0)
    assert cohen_kappa({("a", "b"): 3, ("b", "a"): 3}) == pytest.approx(-1.0)


def test_export_round_trips_through_read_pairs(store, tmp_path):
    store.add_items(_items(4))
    store.add_annotator("sim", simulated=True)
    store.add_label(1, "alice", "a", "ba")
    store.add_label(2, "alice", "b", "ab")
    store.add_label(3, "alice", "tie", "ab")
    store.add_label(4, "alice", "skip", "ba")
    store.add_label(1, "sim", "b", "ab")
    out = tmp_path / "out" / "prefs.jsonl"
    assert store.export_preferences(out) == 4
    data = read_pairs(out)
    assert [(p.chosen, p.rejected, p.tie, p.source) for p in data.pairs] == [
        (" yes 0", " no 0", False, "human"), (" no 1", " yes 1", False, "human"),
        (" yes 2", " no 2", True, "human"), (" no 0", " yes 0", False, "simulated")]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0] == {"prompt": "Q0:", "chosen": " yes 0", "rejected": " no 0", "source": "human",
                          "annotator": "alice", "shown_order": "ba", "simulated": False, "item_id": 1,
                          "label_id": 1, "source_chosen": "sft", "source_rejected": "ppo"}
    assert records[1]["source_chosen"] == "ppo" and records[3]["simulated"] is True
    assert store.export_preferences(out, annotator="alice", include_ties=False) == 2
    assert [p.chosen for p in read_pairs(out).pairs] == [" yes 0", " no 1"]
    assert sorted(os.listdir(out.parent)) == ["prefs.jsonl"]  # atomic: no temp files left behind
    with pytest.raises(ValueError, match="prefs.csv: export to a .jsonl file"):
        store.export_preferences(tmp_path / "prefs.csv")


# ------------------------------------------------------------------------------------ concurrency
def test_threads_share_one_store(store):
    store.add_items(_items(40))
    errors = []

    def work(name):
        try:
            while (item := store.next_item(name)) is not None:
                store.add_label(item.id, name, "a", "ab")
        except (ValueError, sqlite3.Error) as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {name: c["total"] for name, c in store.counts().items()} == {f"t{i}": 40 for i in range(4)}


def test_two_connections_on_one_file(tmp_path):
    path = tmp_path / "labels.db"
    with LabelStore(path) as one, LabelStore(path) as two:
        one.add_items(_items(2))
        assert len(two) == 2  # a committed write is visible to the other connection at once
        two.add_label(1, "bob", "a", "ab")
        assert one.labels()[0].annotator == "bob"
        with pytest.raises(ValueError, match="already labelled"):
            one.add_label(1, "bob", "b", "ab")


WRITER = """
import sys
from rlfl.feedback.store import LabelStore
store = LabelStore(sys.argv[1], create=False)
for i in range(1, 1001):
    label = store.add_label(i, "writer", "a" if i % 3 else "b", "ab")
    print(label.id, flush=True)
"""


def test_acknowledged_labels_survive_sigkill(tmp_path):
    path = tmp_path / "labels.db"
    with LabelStore(path) as s:
        s.add_items(_items(1000))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    acknowledged = []
    for line in proc.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) == 40:
            proc.send_signal(signal.SIGKILL)  # mid-way: the writer is inside its next transaction or print
            break
    acknowledged += [int(line) for line in proc.stdout]  # ids printed before the kill landed
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and 40 <= len(acknowledged) < 1000
    with LabelStore(path, create=False) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {lab.id for lab in s.labels()}
        assert set(acknowledged) <= stored
        assert len(stored) - len(acknowledged) <= 1  # at most the one committed but not yet printed
        s.add_label(1000, "writer", "a", "ab")  # and the store is writable again

"""The label store: comparison items, annotators and their preference labels in one SQLite file.

An **item** is one comparison: a prompt and two responses (``response_a``, ``response_b``) with where each
came from (``source_a``/``source_b``, e.g. two checkpoints). A **label** is one annotator's verdict on one
item: ``choice`` is ``"a"``, ``"b"``, ``"tie"`` or ``"skip"`` and names the item's response, never a screen
side; ``shown_order`` records which response was shown first/left (``"ab"``: response_a first, ``"ba"``:
swapped), so position bias can be measured afterwards. An annotator is a name, flagged ``simulated``
when a program (`rlfl.feedback.annotators`) rather than a person gives the labels; that flag follows every
label into exports and reports.

How it is kept, and why:

- **One SQLite file in WAL mode.** Readers never block the writer and a crash never leaves half a write:
  every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction (IMMEDIATE takes the write lock up
  front, so two processes on one file — a web server and a terminal labeller — wait for each other via
  the busy timeout instead of failing half-way through a deferred transaction).
- **Durable on return.** ``synchronous=FULL``: every COMMIT fsyncs the WAL before `add_label` returns, so
  an acknowledged label survives SIGKILL of the process (the WAL is already written to the OS) and a
  power cut too (it is on disk). A person's label costs seconds of their time; an fsync costs
  milliseconds, so we pay it. Bulk writers (`add_labels`, `add_items`) pay it once per batch.
- **Thread-safe by one lock.** One connection per store, opened with ``check_same_thread=False`` and
  guarded by a re-entrant lock around every statement, so a ``ThreadingHTTPServer`` can share one
  `LabelStore` between its request threads. Labelling is a few writes a second; serialising them costs
  nothing measurable and keeps transactions simple.
- **One label per (item, annotator).** Labelling an item twice is refused (a ValueError); `undo_last`
  removes the newest label so it can be given again. Label ids are never reused (AUTOINCREMENT), so an id
  once acknowledged to a client names that label forever.
- **Items are deduplicated** on their three texts, so importing the same JSONL again (resuming a session)
  adds nothing; `add_items` returns the existing id for a comparison it already holds.
- **A schema version table**, so a file written by a newer rlfl is refused instead of misread.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.db")
    >>> with LabelStore(path) as store:
    ...     ids = store.add_items([{"prompt": "2+2=", "response_a": " 4", "response_b": " 5"}])
    ...     store.add_label(ids[0], "alice", "a", "ba").shown_order
    ...     store.progress("alice"), store.next_item("alice")
    'ba'
    ((1, 1), None)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlfl.sft_data import _BadRecord, _iter_jsonl, _json_type, _text, collect_records
from rlfl.stage_cache import write_jsonl

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

CHOICES = ("a", "b", "tie", "skip")  # "a"/"b" name the item's response_a / response_b, NOT a screen side
ORDERS = ("ab", "ba")  # shown order: "ab" = response_a on the left/first, "ba" = swapped
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's write lock before giving up
ITEM_FIELDS = ("prompt", "response_a", "response_b", "source_a", "source_b", "meta")
# fields of the items `rlfl compare` writes (items.jsonl): accepted on import and kept in the item's meta
CARRIED_FIELDS = ("item", "store_id", "source")
ITEM_SHAPE = '{"prompt", "response_a", "response_b", "source_a"?, "source_b"?, "meta"?} or {"prompt", "chosen", "rejected"}'

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,  -- sha256 of the three texts: the same comparison is stored once
    prompt TEXT NOT NULL, response_a TEXT NOT NULL, response_b TEXT NOT NULL,
    source_a TEXT NOT NULL DEFAULT '', source_b TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL  -- meta: a JSON object
);
CREATE TABLE annotators (
    name TEXT PRIMARY KEY, simulated INTEGER NOT NULL CHECK (simulated IN (0, 1)),
    meta TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL
);
CREATE TABLE labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after an undo
    item_id INTEGER NOT NULL REFERENCES items(id), annotator TEXT NOT NULL REFERENCES annotators(name),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    shown_order TEXT NOT NULL CHECK (shown_order IN ('ab', 'ba')),
    created REAL NOT NULL, seconds REAL, comment TEXT,
    UNIQUE (item_id, annotator)
);
CREATE INDEX labels_by_annotator ON labels (annotator, id);
"""

_LABEL_KEYS = ("item_id", "annotator", "choice", "shown_order", "seconds", "comment")
_LABEL_SELECT = ("SELECT l.id, l.item_id, l.annotator, l.choice, l.shown_order, l.created, l.seconds, l.comment, "
                 "a.simulated FROM labels l JOIN annotators a ON a.name = l.annotator")


@dataclass(frozen=True)
class Item:
    """One comparison: a prompt and two responses, with where each response came from."""

    id: int
    prompt: str
    response_a: str
    response_b: str
    source_a: str
    source_b: str
    meta: dict


@dataclass(frozen=True)
class Label:
    """One annotator's verdict on one item (``choice`` names the item's response, not a screen side)."""

    id: int
    item_id: int
    annotator: str
    choice: str
    shown_order: str
    created: float
    seconds: float | None
    comment: str | None
    simulated: bool


# ------------------------------------------------------------------------------------ validation
def check_choice(choice: Any) -> str:
    """``choice`` if it is one of CHOICES, else a ValueError naming it and the allowed ones."""
    if choice not in CHOICES:
        raise ValueError(f"choice {choice!r} is not one of {', '.join(CHOICES)} (a/b name response_a/response_b)")
    return choice


def check_order(order: Any) -> str:
    """``order`` if it is one of ORDERS, else a ValueError naming it and the allowed ones."""
    if order not in ORDERS:
        raise ValueError(f"shown_order {order!r} is not one of {', '.join(ORDERS)} "
                         "('ab': response_a shown first/left, 'ba': response_b first)")
    return order


def check_annotator(name: Any) -> str:
    """``name`` if it is a usable annotator name (1-100 printable characters, no outer spaces)."""
    if (not isinstance(name, str) or not name or name != name.strip() or len(name) > 100
            or not name.isprintable()):
        raise ValueError(f"annotator name {name!r} is not usable; pass 1-100 printable characters without "
                         "leading/trailing spaces, e.g. 'alice'")
    return name


def _meta_json(meta: Any, where: str) -> str:
    if not isinstance(meta, dict):
        raise _BadRecord(f"{where} is {_json_type(meta)}, not an object")
    try:
        return json.dumps(meta, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _BadRecord(f"{where} is not JSON-serialisable ({e})") from None


def parse_item(value: Any) -> tuple[str, str, str, str, str, str]:
    """One item record -> (prompt, response_a, response_b, source_a, source_b, meta JSON); ``_BadRecord`` if bad.

    A preference pair ``{"prompt", "chosen", "rejected", ...}`` is accepted too: chosen becomes response_a
    (source "chosen"), rejected response_b (source "rejected"), and its other fields go into meta, so the
    pair's original verdict can be compared with the new labels.
    """
    if not isinstance(value, dict):
        raise _BadRecord(f"expected a JSON object, got {_json_type(value)}")
    if "response_a" not in value and "chosen" in value:
        prompt = _text(value, "prompt", nonempty=False)
        a, b = _text(value, "chosen"), _text(value, "rejected")
        extra = {k: v for k, v in value.items() if k not in ("prompt", "chosen", "rejected")}
        source_a, source_b, meta = "chosen", "rejected", _meta_json(extra, "the pair's other fields")
    else:
        unknown = sorted(set(value) - set(ITEM_FIELDS) - set(CARRIED_FIELDS))
        if unknown:
            raise _BadRecord(f"unknown field(s) {', '.join(map(repr, unknown))}; put extra fields under \"meta\"")
        prompt = _text(value, "prompt", nonempty=False)
        a, b = _text(value, "response_a"), _text(value, "response_b")
        source_a = _text(value, "source_a", required=False, nonempty=False)
        source_b = _text(value, "source_b", required=False, nonempty=False)
        meta_value = value.get("meta", {})
        carried = {k: value[k] for k in CARRIED_FIELDS if k in value}
        if carried and isinstance(meta_value, dict):
            meta_value = {**carried, **meta_value}
        meta = _meta_json(meta_value, "'meta'")
    if a == b:
        raise _BadRecord("the two responses are the same text (a comparison needs two different ones)")
    return prompt, a, b, source_a, source_b, meta


def _item_key(prompt: str, a: str, b: str) -> str:
    return hashlib.sha256(json.dumps([prompt, a, b], ensure_ascii=False).encode("utf-8")).hexdigest()


def _label(row: tuple) -> Label:
    return Label(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], bool(row[8]))


def _item(row: tuple) -> Item:
    return Item(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))


def cohen_kappa(pairs: dict[tuple[str, str], int]) -> float | None:
    """Cohen's kappa from counts of (choice of rater 1, choice of rater 2); None when it is undefined.

    Kappa = (p_o - p_e) / (1 - p_e): observed agreement corrected by the agreement two raters with the
    same marginals would reach by chance. It is undefined (None) when chance agreement is 1, i.e. both
    raters gave one and the same answer every time.

    Example:
        >>> round(cohen_kappa({("a", "a"): 40, ("b", "b"): 40, ("a", "b"): 10, ("b", "a"): 10}), 6)
        0.6
    """
    n = sum(pairs.values())
    if n == 0:
        return None
    cats = {c for pair in pairs for c in pair}
    observed = sum(v for (x, y), v in pairs.items() if x == y) / n
    chance = sum((sum(v for (x, _), v in pairs.items() if x == c) / n)
                 * (sum(v for (_, y), v in pairs.items() if y == c) / n) for c in cats)
    if 1.0 - chance < 1e-12:
        return None
    return (observed - chance) / (1.0 - chance)


# ------------------------------------------------------------------------------------ the store
def read_items(path: str | os.PathLike, *, on_bad_line: str = "error") -> list[tuple[str, str, str, str, str, str]]:
    """The items of a JSONL(.gz) file as `parse_item` rows (see `LabelStore.import_jsonl`), read before any
    store is touched: a bad file changes nothing."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; pass a JSONL file of items {ITEM_SHAPE}")
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line={on_bad_line!r} must be 'error' or 'skip'; pass --on-bad-line error|skip")
    rows, skipped = collect_records(p, _iter_jsonl(p), parse_item, on_bad_line=on_bad_line, limit=None)
    if not rows:
        raise ValueError(f"{p}: no usable items ({skipped} bad lines); pass a JSONL file of {ITEM_SHAPE}")
    return rows


def open_label_store(path: str | os.PathLike, *, import_jsonl: str | os.PathLike | None = None,
                     on_bad_line: str = "error") -> tuple[LabelStore, int]:
    """Open the store at ``path`` for a command, first adding the items of ``import_jsonl`` if given.

    Without ``import_jsonl`` the store must exist. With it, the file is read and checked before the store is
    opened, and a store this call created is removed again if the import fails, so a bad items file leaves
    no empty store behind. Returns the open store and the number of new items.
    """
    path = Path(path).expanduser()
    if import_jsonl is None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such label store; pass --import-jsonl ITEMS.jsonl to create it, or "
                                    "fix --store")
        return LabelStore(path, create=False), 0
    rows = read_items(import_jsonl, on_bad_line=on_bad_line)
    existed = path.exists()
    store = LabelStore(path)
    try:
        return store, store._import_rows(Path(import_jsonl), rows)
    except BaseException:
        store.close()
        if not existed:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
        raise


class LabelStore:
    """Comparison items and preference labels in one SQLite file (WAL, one transaction a write, thread-safe).

    ``path`` is created (with its folder) unless ``create=False``, which raises FileNotFoundError for a
    missing file. Use it as a context manager or call `close`. See the module docstring for an example.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; pass a file path for the label store, e.g. {self.path}/labels.db")
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"{self.path}: no such label store; check the path (or create it by "
                                        "importing items first)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        conn = self._conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not an SQLite label store ({e}); pass a store written by rlfl or a "
                             "new file name") from None
        if mode != "wal":
            raise ValueError(f"{self.path}: SQLite cannot use WAL mode here (got {mode!r}); put the store on a "
                             "local disk")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: see the module docstring
        with self._write() as cur:
            tables = {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "schema_version" not in tables:
                if tables - {"sqlite_sequence"}:
                    raise ValueError(f"{self.path}: an SQLite file but not an rlfl label store (tables: "
                                     f"{', '.join(sorted(tables))}); pass another file name")
                for statement in _SCHEMA.split(";"):  # executescript would COMMIT our transaction
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, time.time()))
                logger.info("created label store %s", self.path)
                return
            version = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if version is None or version > SCHEMA_VERSION:
                raise ValueError(f"{self.path}: label store schema version {version}, this rlfl reads "
                                 f"{SCHEMA_VERSION}; upgrade rlfl")

    # -------------------------------------------------------------------------------- plumbing
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: all of it commits (durably) or none of it does."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """One read transaction: a consistent snapshot while several queries run."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (the last one to close folds the WAL back into the main file)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    # -------------------------------------------------------------------------------- items
    def _insert_items(self, cur: sqlite3.Cursor, rows: list[tuple[str, str, str, str, str, str]]) -> tuple[list[int], int]:
        ids, new = [], 0
        now = time.time()
        for prompt, a, b, source_a, source_b, meta in rows:
            key = _item_key(prompt, a, b)
            cur.execute("INSERT OR IGNORE INTO items (key, prompt, response_a, response_b, source_a, source_b, meta, "
                        "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (key, prompt, a, b, source_a, source_b, meta, now))
            new += cur.rowcount
            ids.append(cur.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()[0])
        return ids, new

    def add_items(self, items: Iterable[dict]) -> list[int]:
        """Add comparison items (dicts of ITEM_FIELDS, or pairs); their ids, in order, in one transaction.

        A comparison already in the store (same prompt and responses) is not added again: its existing id
        is returned. A bad item raises ValueError naming its position, and nothing is added.
        """
        rows = []
        for i, item in enumerate(items):
            try:
                rows.append(parse_item(item))
            except _BadRecord as bad:
                raise ValueError(f"add_items: item {i}: {bad}; pass dicts {ITEM_SHAPE}") from None
        with self._write() as cur:
            ids, new = self._insert_items(cur, rows)
        logger.info("%s: added %d items (%d already there)", self.path, new, len(rows) - new)
        return ids

    def import_jsonl(self, path: str | os.PathLike, *, on_bad_line: str = "error") -> int:
        """Import items from a JSONL(.gz) file, one item a line; returns how many were new.

        Lines are ``{"prompt", "response_a", "response_b", "source_a"?, "source_b"?, "meta"?}``, preference
        pairs ``{"prompt", "chosen", "rejected"}`` or the items ``rlfl compare`` writes (``items.jsonl``,
        whose ``item`` and ``store_id`` go into meta). A bad line raises ValueError naming ``file line N``
        and nothing is imported (``on_bad_line="skip"`` logs and skips bad lines instead). Importing a
        file twice adds nothing the second time.
        """
        return self._import_rows(Path(path), read_items(path, on_bad_line=on_bad_line))

    def _import_rows(self, source: Path, rows: list[tuple[str, str, str, str, str, str]]) -> int:
        with self._write() as cur:
            _, new = self._insert_items(cur, rows)
        logger.info("%s: imported %d new items from %s (%d already there)", self.path, new, source, len(rows) - new)
        return new

    def item(self, item_id: int) -> Item:
        """The item with this id (ValueError if there is none)."""
        with self._lock:
            row = self._conn.execute("SELECT id, prompt, response_a, response_b, source_a, source_b, meta FROM items "
                                     "WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise ValueError(f"no item {item_id!r} in {self.path}; use an id from add_items or next_item")
        return _item(row)

    def items(self) -> list[Item]:
        """Every item, by id."""
        with self._lock:
            rows = self._conn.execute("SELECT id, prompt, response_a, response_b, source_a, source_b, meta FROM items "
                                      "ORDER BY id").fetchall()
        return [_item(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    # -------------------------------------------------------------------------------- annotators
    def add_annotator(self, name: str, *, simulated: bool = False, meta: dict | None = None) -> None:
        """Register an annotator (idempotent); a simulated one's labels are marked simulated everywhere.

        Registering an existing name with the other ``simulated`` flag is refused (it would relabel its past
        labels); a given ``meta`` replaces the stored one.
        """
        check_annotator(name)
        try:
            meta_json = _meta_json(meta if meta is not None else {}, "meta")
        except _BadRecord as bad:
            raise ValueError(f"add_annotator({name!r}): {bad}; pass a dict of JSON values") from None
        with self._write() as cur:
            row = cur.execute("SELECT simulated FROM annotators WHERE name = ?", (name,)).fetchone()
            if row is None:
                cur.execute("INSERT INTO annotators (name, simulated, meta, created) VALUES (?, ?, ?, ?)",
                            (name, int(simulated), meta_json, time.time()))
            elif bool(row[0]) != bool(simulated):
                was = "simulated" if row[0] else "human"
                raise ValueError(f"annotator {name!r} is already registered as {was} in {self.path}; "
                                 "use another name")
            elif meta is not None:
                cur.execute("UPDATE annotators SET meta = ? WHERE name = ?", (meta_json, name))

    def annotators(self) -> dict[str, dict[str, Any]]:
        """Every annotator: name -> {"simulated": bool, "meta": dict}, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT name, simulated, meta FROM annotators ORDER BY name").fetchall()
        return {name: {"simulated": bool(sim), "meta": json.loads(meta)} for name, sim, meta in rows}

    # -------------------------------------------------------------------------------- labels
    def next_item(self, annotator: str, *, rng: random.Random | None = None) -> Item | None:
        """An item ``annotator`` has not labelled yet (a random one with ``rng``, else the lowest id); None when done."""
        check_annotator(annotator)
        todo = "FROM items WHERE id NOT IN (SELECT item_id FROM labels WHERE annotator = ?)"
        with self._lock:
            if rng is None:
                row = self._conn.execute(f"SELECT id {todo} ORDER BY id LIMIT 1", (annotator,)).fetchone()
                item_id = None if row is None else row[0]
            else:
                ids = [r[0] for r in self._conn.execute(f"SELECT id {todo} ORDER BY id", (annotator,))]
                item_id = rng.choice(ids) if ids else None
            return None if item_id is None else self.item(item_id)

    def add_labels(self, labels: Iterable[dict[str, Any]]) -> list[Label]:
        """Add many labels in one transaction (all or none); each a dict of `add_label`'s arguments.

        Annotators not registered yet are registered as human (``simulated=False``); register simulated
        ones with `add_annotator` first.
        """
        rows = []
        for spec in labels:
            keys = set(spec)
            if not {"item_id", "annotator", "choice", "shown_order"} <= keys or keys - set(_LABEL_KEYS):
                raise ValueError(f"add_labels: a label with keys {', '.join(sorted(keys))}; give item_id, annotator, "
                                 "choice, shown_order and optionally seconds, comment")
            if isinstance(spec["item_id"], bool) or not isinstance(spec["item_id"], numbers.Integral):
                # ValueError, not TypeError: it is bad user input (an id from a form), and callers catch ValueError
                raise ValueError(  # noqa: TRY004
                    f"item_id {spec['item_id']!r} must be an integer item id (from add_items or next_item)")
            seconds, comment = spec.get("seconds"), spec.get("comment")
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                        or not math.isfinite(seconds) or seconds < 0):
                raise ValueError(f"seconds={seconds!r} must be a finite number >= 0 or None")
            if comment is not None and not isinstance(comment, str):
                raise ValueError(f"comment={comment!r} must be a string or None")
            rows.append((int(spec["item_id"]), check_annotator(spec["annotator"]), check_choice(spec["choice"]),
                         check_order(spec["shown_order"]), None if seconds is None else float(seconds),
                         comment or None))
        out = []
        with self._write() as cur:
            for item_id, annotator, choice, order, seconds, comment in rows:
                if cur.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                    raise ValueError(f"no item {item_id!r} in {self.path}; use an id from add_items or next_item")
                old = cur.execute("SELECT id, choice FROM labels WHERE item_id = ? AND annotator = ?",
                                  (item_id, annotator)).fetchone()
                if old is not None:
                    raise ValueError(f"item {item_id} is already labelled by {annotator!r} (label {old[0]}: "
                                     f"{old[1]!r}); undo that label first to label it again")
                cur.execute("INSERT OR IGNORE INTO annotators (name, simulated, meta, created) VALUES (?, 0, '{}', ?)",
                            (annotator, time.time()))
                created = time.time()
                cur.execute("INSERT INTO labels (item_id, annotator, choice, shown_order, created, seconds, comment) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (item_id, annotator, choice, order, created, seconds, comment))
                simulated = cur.execute("SELECT simulated FROM annotators WHERE name = ?", (annotator,)).fetchone()[0]
                out.append(Label(cur.lastrowid, item_id, annotator, choice, order, created, seconds, comment,
                                 bool(simulated)))
        return out

    def add_label(self, item_id: int, annotator: str, choice: str, shown_order: str, *,
                  seconds: float | None = None, comment: str | None = None) -> Label:
        """Record ``annotator``'s ``choice`` on an item; on return the label is on disk (survives a crash).

        ``choice`` is one of CHOICES ("a"/"b" name response_a/response_b); ``shown_order`` one of ORDERS;
        ``seconds`` how long the annotator looked. A second label for the same (item, annotator) is refused
        with a ValueError: `undo_last` first.
        """
        return self.add_labels([{"item_id": item_id, "annotator": annotator, "choice": choice,
                                 "shown_order": shown_order, "seconds": seconds, "comment": comment}])[0]

    def undo_last(self, annotator: str) -> Label | None:
        """Delete and return ``annotator``'s newest label (None if they have none)."""
        check_annotator(annotator)
        with self._write() as cur:
            row = cur.execute(f"{_LABEL_SELECT} WHERE l.annotator = ? ORDER BY l.id DESC LIMIT 1",
                              (annotator,)).fetchone()
            if row is None:
                return None
            cur.execute("DELETE FROM labels WHERE id = ?", (row[0],))
        return _label(row)

    def labels(self, *, annotator: str | None = None, include_skips: bool = True) -> list[Label]:
        """Labels by id (oldest first), of one annotator or all, with or without skips."""
        where, args = [], []
        if annotator is not None:
            where.append("l.annotator = ?")
            args.append(check_annotator(annotator))
        if not include_skips:
            where.append("l.choice != 'skip'")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._conn.execute(f"{_LABEL_SELECT}{clause} ORDER BY l.id", args).fetchall()
        return [_label(r) for r in rows]

    # -------------------------------------------------------------------------------- reports
    def progress(self, annotator: str) -> tuple[int, int]:
        """(items ``annotator`` has labelled, skips included; items in the store)."""
        check_annotator(annotator)
        with self._read() as cur:
            done = cur.execute("SELECT COUNT(*) FROM labels WHERE annotator = ?", (annotator,)).fetchone()[0]
            total = cur.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return done, total

    def counts(self) -> dict[str, dict[str, int]]:
        """Per annotator (every registered one, by name): labels of each choice and in total."""
        with self._read() as cur:
            names = [r[0] for r in cur.execute("SELECT name FROM annotators ORDER BY name")]
            rows = cur.execute("SELECT annotator, choice, COUNT(*) FROM labels GROUP BY annotator, choice").fetchall()
        out = {name: {**dict.fromkeys(CHOICES, 0), "total": 0} for name in names}
        for name, choice, n in rows:
            out[name][choice] = n
            out[name]["total"] += n
        return out

    def agreement(self) -> dict[tuple[str, str], dict]:
        """Inter-annotator agreement for every pair of annotators that labelled common items.

        Keys are (name1, name2) with name1 < name2; values ``{"n": items both labelled, skips of either
        excluded; "raw": share of those with the same choice; "kappa": Cohen's kappa over a/b/tie, None
        when undefined}``. Pairs without overlap are absent.
        """
        with self._read() as cur:
            rows = cur.execute(
                "SELECT l1.annotator, l2.annotator, l1.choice, l2.choice, COUNT(*) FROM labels l1 JOIN labels l2 "
                "ON l1.item_id = l2.item_id AND l1.annotator < l2.annotator "
                "WHERE l1.choice != 'skip' AND l2.choice != 'skip' GROUP BY 1, 2, 3, 4").fetchall()
        tables: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        for n1, n2, c1, c2, n in rows:
            tables.setdefault((n1, n2), {})[(c1, c2)] = n
        out = {}
        for pair, table in sorted(tables.items()):
            n = sum(table.values())
            raw = sum(v for (x, y), v in table.items() if x == y) / n
            out[pair] = {"n": n, "raw": raw, "kappa": cohen_kappa(table)}
        return out

    # -------------------------------------------------------------------------------- export
    def export_preferences(self, path: str | os.PathLike, *, annotator: str | None = None,
                           include_ties: bool = True) -> int:
        """Write the labels as preference pairs JSONL (atomically) for `rlfl reward train`; returns the count.

        One record per a/b label: ``{"prompt", "chosen", "rejected", "source", "annotator", "shown_order",
        "simulated", "item_id", "label_id", "source_chosen", "source_rejected"}``; ``source`` is
        "simulated" or "human". A tie is ``{"tie": true, ...}`` with chosen = response_a. Skips are not
        exported. An item labelled by several annotators gives one record per label.
        """
        p = Path(path)
        if not p.name.endswith(".jsonl"):
            raise ValueError(f"{p}: export to a .jsonl file (rlfl.preference_data.read_pairs reads JSON Lines)")
        kept = ("a", "b", "tie") if include_ties else ("a", "b")
        where, args = [f"l.choice IN ({', '.join('?' * len(kept))})"], list(kept)
        if annotator is not None:
            where.append("l.annotator = ?")
            args.append(check_annotator(annotator))
        with self._lock:
            rows = self._conn.execute(
                "SELECT l.id, l.item_id, l.annotator, l.choice, l.shown_order, a.simulated, i.prompt, i.response_a, "
                "i.response_b, i.source_a, i.source_b FROM labels l JOIN annotators a ON a.name = l.annotator "
                f"JOIN items i ON i.id = l.item_id WHERE {' AND '.join(where)} ORDER BY l.id", args).fetchall()
        records = []
        for label_id, item_id, name, choice, order, simulated, prompt, ra, rb, sa, sb in rows:
            flip = choice == "b"
            record = {"prompt": prompt, "chosen": rb if flip else ra, "rejected": ra if flip else rb,
                      "source": "simulated" if simulated else "human", "annotator": name, "shown_order": order,
                      "simulated": bool(simulated), "item_id": item_id, "label_id": label_id,
                      "source_chosen": sb if flip else sa, "source_rejected": sa if flip else sb}
            if choice == "tie":
                record["tie"] = True
            records.append(record)
        write_jsonl(p, records)
        if not records:
            logger.warning("%s: no labels to export%s; wrote an empty file", p,
                           f" for annotator {annotator!r}" if annotator else "")
        logger.info("exported %d preference records to %s", len(records), p)
        return len(records)

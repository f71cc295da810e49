"""`rlfl label cli`: label comparisons in a terminal, plus `rlfl label export` / `rlfl label stats` for the store.

The terminal labeller shows a prompt and two responses, left and right in a random order (the order is
recorded with the label as ``shown_order``, so position bias can be measured), and reads one line per
decision, so it works the same typed at a terminal or fed through a pipe:

    1  left is better        2  right is better        3  tie
    s  (or a space) skip     u  undo the last label    q  quit (labels are saved as you go)

Every label is in the SQLite store (durably) as soon as the next item shows, so quitting, Ctrl-C, or a
closed terminal loses nothing; running it again resumes with the items this annotator has not labelled.

Model text is untrusted: a response could hold escape sequences that clear the screen, retitle the window
or move the cursor to forge the other response. `safe_text` shows every control character (and the
invisible Unicode direction overrides) as a visible escape such as ``\\x1b`` instead of sending it.

Example:
    rlfl label cli --store runs/labels.db --annotator alice --import-jsonl runs/to_label.jsonl
    rlfl label stats --store runs/labels.db
    rlfl label export --store runs/labels.db --out runs/prefs.jsonl
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from rlfl.feedback.store import ORDERS, Item, LabelStore, check_annotator, open_label_store

logger = logging.getLogger(__name__)

HELP = "1 = left better, 2 = right better, 3 = tie, s/space = skip, u = undo last, q = quit"
KEYS = {"1": "left", "2": "right", "3": "tie", "s": "skip", "skip": "skip", "u": "undo", "undo": "undo",
        "q": "quit", "quit": "quit"}
RULE = "-" * 72

# C0 and C1 controls except newline and tab (ESC starts every ANSI sequence; CR can overwrite a line),
# zero-width characters, and the bidirectional overrides/isolates that can reorder what a reader sees.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def safe_text(text: str) -> str:
    """``text`` with every terminal control character shown as a visible escape (``\\x1b``, ``\\u202e``).

    Example:
        >>> safe_text("ok\\x1b[2J\\r\\n\\tdone")
        'ok\\\\x1b[2J\\n\\tdone'
    """
    text = text.replace("\r\n", "\n")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text)


@dataclass
class LabelCliConfig:
    """`rlfl label cli`: label comparisons in the terminal (1/2 pick left/right, 3 tie, s skip, u undo, q quit)."""

    store: str = field(default="runs/labels.db", metadata={"help": "the SQLite label store (created by --import-jsonl)"})
    annotator: str = field(default="", metadata={"help": "your name: the labels are stored under it (required)"})
    import_jsonl: str | None = field(default=None, metadata={
        "help": "JSONL of items {prompt, response_a, response_b, source_a?, source_b?} or pairs {prompt, chosen, "
                "rejected} to add to the store first (importing a file again adds nothing)"})
    limit: int = field(default=0, metadata={"help": "stop after this many labels this session (0 = until all are done)"})
    seed: int | None = field(default=None, metadata={
        "help": "seed of the item order and the left/right order (default: a fresh random one each session)"})
    on_bad_line: str = field(default="error", metadata={"help": "a bad line of --import-jsonl: error | skip"})

    def __post_init__(self) -> None:
        if not self.annotator:
            raise ValueError("no annotator name; pass --annotator NAME (your labels are stored under it)")
        check_annotator(self.annotator)
        if self.limit < 0:
            raise ValueError(f"limit={self.limit} must be >= 0; pass --limit N (0 = no limit)")
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line={self.on_bad_line!r}; pass --on-bad-line error or skip")


def _side(choice: str, order: str) -> str:
    """How a stored choice looked on screen: 'left', 'right', 'tie' or 'skip'."""
    if choice in ("tie", "skip"):
        return choice
    return "left" if (choice == "a") == (order == "ab") else "right"


class _Session:
    """One sitting of one annotator: what is shown, what was typed, what went into the store."""

    def __init__(self, store: LabelStore, config: LabelCliConfig, stdin: TextIO, stdout: TextIO) -> None:
        self.store, self.config, self.stdin, self.stdout = store, config, stdin, stdout
        self.name = config.annotator
        self.rng = random.Random(config.seed)
        self.added = 0
        self.queue: list[tuple[Item, str]] = []  # items to show before asking the store (after an undo)
        isatty = getattr(stdin, "isatty", None)
        self.interactive = bool(isatty and isatty())

    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def show(self, item: Item, order: str) -> None:
        done, total = self.store.progress(self.name)
        left, right = (item.response_a, item.response_b) if order == "ab" else (item.response_b, item.response_a)
        self.say(RULE)
        self.say(f"[{done}/{total}] item {item.id}")
        self.say("PROMPT:")
        self.say(safe_text(item.prompt) if item.prompt else "(no prompt)")
        self.say("[1] LEFT:")
        self.say(safe_text(left))
        self.say("[2] RIGHT:")
        self.say(safe_text(right))
        self.say(HELP)

    def read_key(self) -> str | None:
        """The next command: a KEYS value, "" for a line to ask again, None at the end of input."""
        self.stdout.write("> ")
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            return None
        if not self.interactive:  # echo piped input, so a transcript reads like the session it was
            self.stdout.write(safe_text(line.rstrip("\r\n")) + "\n")
        raw = line.rstrip("\r\n")
        if raw and not raw.strip():
            return "skip"  # a space (then Enter) skips; a bare Enter asks again, so it never skips by accident
        key = raw.strip().lower()
        if key in KEYS:
            return KEYS[key]
        self.say(f"unknown key {safe_text(key)!r}; {HELP}" if key else HELP)
        return ""

    def next(self) -> tuple[Item, str] | None:
        if self.queue:
            return self.queue.pop(0)
        item = self.store.next_item(self.name, rng=self.rng)
        return None if item is None else (item, self.rng.choice(ORDERS))

    def run(self) -> None:
        while True:
            if self.config.limit and self.added >= self.config.limit:
                self.say(f"stopping after {self.added} labels (--limit {self.config.limit})")
                return
            shown = self.next()
            if shown is None:
                self.say(f"all {len(self.store)} items are labelled by {self.name}")
                return
            item, order = shown
            self.show(item, order)
            started = time.monotonic()
            while True:
                key = self.read_key()
                if key is None or key == "quit":
                    return
                if key == "undo":
                    undone = self.store.undo_last(self.name)
                    if undone is None:
                        self.say("nothing to undo")
                        continue
                    self.added = max(0, self.added - 1)
                    self.say(f"undid your label of item {undone.item_id} "
                             f"({_side(undone.choice, undone.shown_order)}); it comes again now")
                    # show the undone item again as it was, then the one on screen
                    self.queue[:0] = [(self.store.item(undone.item_id), undone.shown_order), (item, order)]
                    break
                if key:
                    choice = {"left": "a", "right": "b"}.get(key, key)
                    if order == "ba" and choice in ("a", "b"):
                        choice = "b" if choice == "a" else "a"
                    try:
                        self.store.add_label(item.id, self.name, choice, order, seconds=time.monotonic() - started)
                    except ValueError as e:  # labelled meanwhile from another window under the same name
                        self.say(f"not saved: {e}")
                        break
                    self.added += 1
                    break


def label_cli(config: LabelCliConfig, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Label the store's items in the terminal (or through a pipe) as ``config.annotator``; returns labels added.

    ``stdin``/``stdout`` default to the process's; tests pass ``io.StringIO`` objects. Labels are saved as
    they are given; the count returned is net of undos.
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    store, new = open_label_store(config.store, import_jsonl=config.import_jsonl, on_bad_line=config.on_bad_line)
    with store:
        if config.import_jsonl is not None:
            stdout.write(f"imported {new} new items from {config.import_jsonl}\n")
        session = _Session(store, config, stdin, stdout)
        session.run()
        done, total = store.progress(config.annotator)
        session.say(f"{session.added} labels this session; {config.annotator}: {done}/{total} items labelled "
                    f"in {config.store}")
        return session.added


# ------------------------------------------------------------------------------------ export and stats
@dataclass
class LabelExportConfig:
    """`rlfl label export`: write the store's labels as preference pairs JSONL for `rlfl reward train`."""

    store: str = field(default="runs/labels.db", metadata={"help": "the SQLite label store"})
    out: str = field(default="runs/preferences.jsonl", metadata={"help": "the .jsonl file to write (atomically)"})
    annotator: str | None = field(default=None, metadata={"help": "export only this annotator's labels (default: all)"})
    include_ties: bool = field(default=True, metadata={"help": "export ties as {\"tie\": true} records"})

    def __post_init__(self) -> None:
        if not self.out.endswith(".jsonl"):
            raise ValueError(f"out={self.out!r}; pass --out FILE.jsonl (rlfl reward train reads JSON Lines)")
        if self.annotator is not None:
            check_annotator(self.annotator)


def label_export(config: LabelExportConfig, *, stdout: TextIO | None = None) -> int:
    """Export the labels of ``config.store`` to ``config.out``; returns the records written."""
    stdout = sys.stdout if stdout is None else stdout
    with open_label_store(config.store)[0] as store:
        n = store.export_preferences(config.out, annotator=config.annotator, include_ties=config.include_ties)
    stdout.write(f"wrote {n} preference records to {config.out}\n")
    return n


@dataclass
class LabelStatsConfig:
    """`rlfl label stats`: labels per annotator and inter-annotator agreement (Cohen's kappa)."""

    store: str = field(default="runs/labels.db", metadata={"help": "the SQLite label store"})


def label_stats(config: LabelStatsConfig, *, stdout: TextIO | None = None) -> None:
    """Print the store's counts per annotator (simulated ones marked) and the agreement of overlapping pairs."""
    stdout = sys.stdout if stdout is None else stdout
    with open_label_store(config.store)[0] as store:
        counts, who, agreement, total = store.counts(), store.annotators(), store.agreement(), len(store)
    lines = [f"{config.store}: {total} items, {len(counts)} annotators",
             f"{'annotator':<24} {'kind':<9} {'a':>6} {'b':>6} {'tie':>6} {'skip':>6} {'total':>6}"]
    for name, c in counts.items():
        kind = "simulated" if who[name]["simulated"] else "human"
        lines.append(f"{safe_text(name):<24} {kind:<9} {c['a']:>6} {c['b']:>6} {c['tie']:>6} {c['skip']:>6} "
                     f"{c['total']:>6}")
    if agreement:
        lines.append(f"{'pair':<40} {'n':>6} {'raw':>6} {'kappa':>6}")
        for (x, y), v in agreement.items():
            kappa = "-" if v["kappa"] is None else f"{v['kappa']:.3f}"
            lines.append(f"{safe_text(x + ' / ' + y):<40} {v['n']:>6} {v['raw']:>6.3f} {kappa:>6}")
    else:
        lines.append("no two annotators labelled the same item yet (no agreement to report)")
    stdout.write("\n".join(lines) + "\n")

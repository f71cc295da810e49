"""Sources of preference labels: the SQLite label store, simulated annotators, the labelling front ends.

Every source writes into one `LabelStore` (an SQLite file) and leaves it through one door,
`LabelStore.export_preferences`, whose JSONL `rlfl reward train` reads:

- `rlfl.feedback.store` — the store: comparison items, annotators, labels, agreement, export;
- `rlfl.feedback.annotators` — simulated annotators (a gold scorer plus noise and biases), marked simulated;
- `rlfl.feedback.terminal` — `rlfl label cli`, labelling in a terminal;
- `rlfl.feedback.web` — `rlfl label serve`, the labelling web page.

Example:
    >>> import tempfile, os
    >>> from rlfl.feedback import LabelStore
    >>> with LabelStore(os.path.join(tempfile.mkdtemp(), "labels.db")) as store:
    ...     [item_id] = store.add_items([{"prompt": "Q:", "response_a": " yes", "response_b": " no"}])
    ...     store.add_label(item_id, "ann", "a", "ba").choice
    'a'
"""

from rlfl.feedback.store import CHOICES, ORDERS, Item, Label, LabelStore

__all__ = ["CHOICES", "ORDERS", "Item", "Label", "LabelStore"]

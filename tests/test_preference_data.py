"""Reward-model data readers: pairs, labels, every bad-line kind, HH-RLHF splitting, IMDB pairing."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from rlfl.preference_data import (MAX_WARNINGS, LabelData, PreferenceData, PreferencePair, detect_format,
                                  imdb_pairs, load_reward_data, read_hh, read_imdb_labels, read_labels, read_pairs,
                                  split_hh_dialogue)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent in a fresh clone)")
    return path


def _write(path, lines) -> str:
    """Write records (dicts are JSON-encoded, strings written as is) one per line; .gz paths are gzipped."""
    text = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


GOOD = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}


def test_pairs_with_margin_ties_and_source_from_gzip(tmp_path):
    path = _write(tmp_path / "p.jsonl.gz", [
        GOOD,
        {**GOOD, "margin": 1.5, "source": "human"},
        {**GOOD, "tie": True},
        {**GOOD, "label": "tie"},
        {"prompt": "", "chosen": "a", "rejected": "b", "margin": None},
    ])
    data = read_pairs(path)
    assert isinstance(data, PreferenceData) and data.kind == "pairs" and data.skipped == 0
    assert data.pairs == [
        PreferencePair("Q?", " yes", " no"),
        PreferencePair("Q?", " yes", " no", margin=1.5, source="human"),
        PreferencePair("Q?", " yes", " no", tie=True),
        PreferencePair("Q?", " yes", " no", tie=True),
        PreferencePair("", "a", "b"),
    ]
    assert detect_format(path) == "pairs" and load_reward_data(path).pairs == data.pairs


BAD_PAIRS = [
    ("not json", "not valid JSON"),
    ('["a", "b"]', "expected a JSON object, got an array"),
    ({"chosen": "a", "rejected": "b"}, "no field 'prompt'"),
    ({"prompt": "", "rejected": "b"}, "no field 'chosen'"),
    ({"prompt": "", "chosen": "a"}, "no field 'rejected'"),
    ({"prompt": "", "chosen": "  ", "rejected": "b"}, "empty 'chosen'"),
    ({"prompt": "", "chosen": "same", "rejected": "same"}, "are the same text"),
    ({"prompt": "", "chosen": 3, "rejected": "b"}, "'chosen' is a number, not a string"),
    ({"prompt": ["x"], "chosen": "a", "rejected": "b"}, "'prompt' is an array, not a string"),
    ({**GOOD, "margin": "big"}, "'margin' is a string, not a number"),
    ('{"prompt": "", "chosen": "a", "rejected": "b", "margin": NaN}', "not a finite number"),
    ({**GOOD, "tie": "yes"}, "'tie' is a string, not true/false"),
    ({**GOOD, "tie": True, "margin": 1.0}, "a tie cannot have a 'margin'"),
    ({**GOOD, "label": "chosen"}, "may only be \"tie\""),
]


@pytest.mark.parametrize("bad,message", BAD_PAIRS)
def test_each_bad_pair_line_is_named_with_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "p.jsonl", [GOOD, "", bad, GOOD])  # the blank line 2 is ignored, bad is line 3
    with pytest.raises(ValueError) as e:
        read_pairs(path)
    text = str(e.value)
    assert text.startswith(f"{path} line 3: ") and message in text and "--on-bad-line skip" in text
    assert "\n" not in text
    data = read_pairs(path, on_bad_line="skip")
    assert len(data.pairs) == 2 and data.skipped == 1 and data.skip_reasons == {"bad line": 1}


def test_skip_mode_caps_warnings_and_counts_everything(tmp_path, caplog):
    path = _write(tmp_path / "p.jsonl", [GOOD] + ["{oops"] * (MAX_WARNINGS + 5))
    with caplog.at_level(logging.WARNING, logger="rlfl.preference_data"):
        data = read_pairs(path, on_bad_line="skip")
    assert data.skipped == MAX_WARNINGS + 5 and len(data.pairs) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == MAX_WARNINGS + 1
    assert lines[0].startswith(f"{path} line 2: not valid JSON")
    assert lines[-1] == f"{path}: skipped {MAX_WARNINGS + 5} bad line(s) (5 not shown above)"


def test_all_bad_wrong_suffix_missing_file_and_bad_option(tmp_path):
    path = _write(tmp_path / "p.jsonl", ["{oops"])
    with pytest.raises(ValueError, match=r"no usable records \(all 1 records were bad\)"):
        read_pairs(path, on_bad_line="skip")
    (tmp_path / "p.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_pairs(tmp_path / "p.csv")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_pairs(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="--on-bad-line error|skip"):
        read_pairs(path, on_bad_line="ignore")


def test_labels_float_int_bool_and_words(tmp_path):
    path = _write(tmp_path / "l.jsonl", [
        {"text": "great", "label": "positive"}, {"text": "awful", "label": "NEG"},
        {"prompt": "Rate:", "text": "ok", "label": True}, {"text": "meh", "label": 0},
    ])
    data = read_labels(path)
    assert isinstance(data, LabelData) and data.binary and data.kind == "labels"
    assert [(e.prompt, e.text, e.label) for e in data.examples] == [
        ("", "great", 1.0), ("", "awful", 0.0), ("Rate:", "ok", 1.0), ("", "meh", 0.0)]
    scalar = read_labels(_write(tmp_path / "s.jsonl", [{"text": "x", "label": 0.25}, {"text": "y", "label": 3}]))
    assert not scalar.binary and [e.label for e in scalar.examples] == [0.25, 3.0]
    assert detect_format(path) == "labels" and load_reward_data(path).kind == "labels"


@pytest.mark.parametrize("bad,message", [
    ({"text": "x"}, "no field 'label'"),
    ({"label": 1}, "no field 'text'"),
    ({"text": "", "label": 1}, "empty 'text'"),
    ({"text": "x", "label": "great"}, "'label' is 'great'; use a number or \"positive\"/\"negative\""),
    ({"text": "x", "label": [1]}, "'label' is an array, not a number"),
    ({"text": "x", "label": 1, "prompt": 5}, "'prompt' is a number, not a string"),
])
def test_each_bad_label_line_is_named(tmp_path, bad, message):
    path = _write(tmp_path / "l.jsonl", [{"text": "ok", "label": 1}, bad])
    with pytest.raises(ValueError, match="line 2: ") as e:
        read_labels(path)
    assert message in str(e.value)
    assert read_labels(path, on_bad_line="skip").skipped == 1


def test_format_detection_and_forcing(tmp_path):
    odd = _write(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match="odd.jsonl line 1: neither pairs .* nor labels .* --format pairs|labels"):
        load_reward_data(odd)
    pairs_file = _write(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(ValueError, match="line 1: no field 'text'"):
        load_reward_data(pairs_file, format="labels")
    with pytest.raises(ValueError, match="no file after 'hh:'"):
        load_reward_data("hh:")


# ---------------------------------------------------------------------------------------------- HH-RLHF
def test_split_hh_dialogue_keeps_the_shared_prompt_and_the_two_replies():
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: A joke please\n\nAssistant:"
    assert split_hh_dialogue(prompt + " Why did the chicken...", prompt + " No.") == (
        prompt, " Why did the chicken...", " No.")
    with pytest.raises(ValueError, match="no '\\\\n\\\\nAssistant:' turn in the rejected dialogue"):
        split_hh_dialogue(prompt + " x", "\n\nHuman: hi")


def test_read_hh_skips_and_counts_upstream_quirks(tmp_path, caplog):
    p = "\n\nHuman: Hi\n\nAssistant:"
    (tmp_path / "helpful-x").mkdir()
    path = _write(tmp_path / "helpful-x" / "test.jsonl.gz", [
        {"chosen": p + " Hello!", "rejected": p + " Go away."},
        {"chosen": p + " Same", "rejected": p + " Same"},                                  # equal replies
        {"chosen": p + " A", "rejected": "\n\nHuman: Other\n\nAssistant: B"},              # prompts differ
        {"chosen": p + " ", "rejected": p + " B"},                                          # empty reply
        {"chosen": p + " C", "rejected": p + " D"},
    ])
    with caplog.at_level(logging.INFO, logger="rlfl.preference_data"):
        data = read_hh(path)
    assert [(x.prompt, x.chosen, x.rejected, x.source) for x in data.pairs] == [
        (p, " Hello!", " Go away.", "helpful-x"), (p, " C", " D", "helpful-x")]
    assert data.skip_reasons == {"equal replies": 1, "prompts differ": 1, "empty reply": 1} and data.skipped == 3
    assert "HH-RLHF: skipped 1 (empty reply), 1 (equal replies), 1 (prompts differ)" in caplog.text
    # a malformed line follows on_bad_line (HH files have no prompt field: only chosen/rejected matter)
    bad = _write(tmp_path / "bad.jsonl", [{"chosen": p + " A", "rejected": p + " B"}, {"chosen": p + " A"}])
    with pytest.raises(ValueError, match="bad.jsonl line 2: no field 'rejected'"):
        read_hh(bad)
    assert load_reward_data(f"hh:{path},{bad}", on_bad_line="skip").skip_reasons["bad line"] == 1


def test_real_hh_rlhf_counts():
    paths = [shared_file(f"hh-rlhf/{name}/test.jsonl.gz") for name in ("helpful-base", "harmless-base")]
    base = read_hh(paths[0])
    # README: 2,354 rows, 9 with differing prompts, 2 with chosen == rejected
    assert len(base.pairs) + base.skipped == 2354
    assert base.skip_reasons["prompts differ"] == 9 and base.skip_reasons["equal replies"] == 2
    both = load_reward_data(f"hh:{paths[0]},{paths[1]}")
    assert len(both) + both.skipped == 2354 + 2312
    first = base.pairs[0]
    assert first.prompt.endswith("\n\nAssistant:") and first.prompt.startswith("\n\nHuman: ")
    assert first.chosen.startswith(" ") and first.source == "helpful-base"


# ---------------------------------------------------------------------------------------------- IMDB
def test_imdb_reviews_are_cleaned_and_paired_deterministically(tmp_path):
    rows = [{"id": f"train/pos/{i}_9", "text": f"Loved it<br /><br />part {i}", "label": 1} for i in range(5)]
    rows += [{"id": f"train/neg/{i}_1", "text": f"Hated it {i}", "label": 0} for i in range(3)]
    path = _write(tmp_path / "imdb.jsonl.gz", rows)
    labels = read_imdb_labels(path)
    assert labels.binary and labels.examples[0].text == "Loved it\n\npart 0" and labels.examples[0].prompt == ""
    a, b, c = imdb_pairs(path, seed=0), imdb_pairs(path, seed=0), imdb_pairs(path, seed=1)
    assert a.pairs == b.pairs and len(a.pairs) == 3
    assert a.pairs != c.pairs  # another seed pairs differently
    assert all(p.chosen.startswith("Loved") and p.rejected.startswith("Hated") and p.prompt == "" for p in a.pairs)
    assert len({p.rejected for p in a.pairs}) == 3  # each review in at most one pair
    assert load_reward_data(f"imdb:{path}", seed=0).pairs == a.pairs
    assert load_reward_data(f"imdb-labels:{path}").examples == labels.examples
    bad = _write(tmp_path / "bad.jsonl", [{"text": "x", "label": 7}])
    with pytest.raises(ValueError, match="line 1: 'label' is 7; IMDB labels are 1"):
        read_imdb_labels(bad)


def test_real_imdb():
    path = shared_file("imdb/imdb_test.jsonl.gz")
    data = imdb_pairs(path, seed=0)
    assert len(data.pairs) == 12500
    assert not any("<br" in p.chosen or "<br" in p.rejected for p in data.pairs[:2000])

"""SFT data: every record shape, bad-record reports, exact loss masks, packing, deterministic batches."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rlfl.sft_data import (
    IGNORE_INDEX,
    MAX_WARNINGS,
    SFTBatcher,
    SFTExample,
    read_sft,
    split_examples,
    tokenize_conversations,
)
from rlfl.tokenizer import byte_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOK = byte_tokenizer()
END = "<|end|>"


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent in a fresh clone)")
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    """Objects become JSON lines; strings are written as they are (to plant bad lines)."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def chat(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    """chat("q", "a", "q2", "a2") -> alternating user / assistant messages."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """n conversations with distinct texts and varied lengths (some multi-turn, some with a system)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q, a = f"question {i}: " + "x" * int(rng.integers(0, 20)), f"answer {i} " + "y" * int(rng.integers(1, 30))
        if i % 3 == 0:
            out.append(chat(q, a, f"follow-up {i}", f"second answer {i}", system=f"sys {i}"))
        else:
            out.append(chat(q, a))
    return out


def supervised_text(conv: list[dict[str, str]]) -> str:
    """What SFT must learn from a conversation: every assistant content followed by <|end|>."""
    return "".join(m["content"] + END for m in conv if m["role"] == "assistant")


# ---------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("name", ["sft.jsonl", "sft.jsonl.gz"])
def test_prompt_response_lines(tmp_path, name):
    path = write_jsonl(tmp_path / name, [{"prompt": "2+2?", "response": "4"},
                                         {"prompt": "Hi", "response": "Hello.", "system": "Be terse."}])
    data = read_sft(path)
    assert data.conversations == [chat("2+2?", "4"), chat("Hi", "Hello.", system="Be terse.")]
    assert data.skipped == 0 and data.source == str(path)


def test_chat_messages_alpaca_and_gsm8k_shapes_mix_in_one_file(tmp_path):
    messages = chat("a", "b", "c", "d", system="s")
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": messages},
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
        {"instruction": "Translate.", "input": "chat", "output": "cat"},
        {"instruction": "No input field.", "output": "Fine."},
        "",  # blank lines are no records
        {"question": "1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"},
    ])
    assert read_sft(path).conversations == [
        messages, chat("Name a colour.", "Red."), chat("Translate.\n\nchat", "cat"),
        chat("No input field.", "Fine."), chat("1+1?", "1+1 = <<1+1=2>>2\n#### 2")]


@pytest.mark.parametrize("name", ["alpaca.json", "alpaca.json.gz"])
def test_json_array_file(tmp_path, name):
    records = [{"instruction": "Say hi.", "input": "", "output": "Hi!"},
               {"prompt": "p", "response": "r"}]
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        json.dump(records, f, indent=4)
    assert read_sft(path).conversations == [chat("Say hi.", "Hi!"), chat("p", "r")]


def test_json_array_errors_point_at_the_record_line(tmp_path):
    records = [{"instruction": "a", "input": "", "output": "b"}] * 3 + [{"instruction": "c", "output": ""}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, indent=4))
    # indent=4 puts each record on 5 lines after the opening "[": the 4th starts at line 17
    with pytest.raises(ValueError, match=r"^\S*a\.json line 17: empty 'output'; fix it or pass --on-bad-line skip$"):
        read_sft(path)
    data = read_sft(path, on_bad_line="skip")
    assert (len(data.conversations), data.skipped) == (3, 1)
    path.write_text('[\n{"prompt": "p", "response": "r"}\n{"prompt": "q", "response": "s"}\n]')
    with pytest.raises(ValueError, match=r"a\.json line 3: expected ',' or ']'"):
        read_sft(path, on_bad_line="skip")  # a broken array cannot be skipped line by line
    path.write_text('[{"prompt": "p", "response": "r"}, {"prompt": "q",\n "response": }]')
    with pytest.raises(ValueError, match=r"a\.json line 2: not valid JSON"):
        read_sft(path)


def test_a_json_file_holding_json_lines_is_read_as_lines(tmp_path):
    path = write_jsonl(tmp_path / "really_lines.json", [{"prompt": "p", "response": "r"}] * 2)
    assert len(read_sft(path).conversations) == 2


BAD_LINES = [
    ('{"prompt": "p", "response": ', "not valid JSON"),
    ('["prompt", "response"]', "expected a JSON object, got an array"),
    ('"just text"', "expected a JSON object, got a string"),
    ({"prompt": "p"}, "no field 'response'"),
    ({"response": "r"}, "no field 'prompt'"),
    ({"prompt": "p", "response": "  \n"}, "empty 'response'"),
    ({"prompt": "p", "response": 4}, "'response' is a number, not a string"),
    ({"prompt": "p", "response": "r", "system": ["x"]}, "'system' is an array, not a string"),
    ({"instruction": "i", "input": None, "output": "o"}, "'input' is null, not a string"),
    ({"instruction": "i", "input": ""}, "no field 'output'"),
    ({"question": "q", "answer": ""}, "empty 'answer'"),
    ({"text": "t", "label": 1}, "no known SFT fields (fields here: text, label)"),
    ({"messages": []}, "'messages': expected a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "'messages'[0]: role 'bot' is not one of"),
    ({"messages": chat("q", "a", "q2")}, "the last message is from the user, not the assistant"),
    ({"messages": chat("q", "")}, "empty 'content' in the last (assistant) message"),
]


@pytest.mark.parametrize("bad,expected", BAD_LINES, ids=[b[1][:30] for b in BAD_LINES])
def test_each_bad_line_is_named_with_its_line(tmp_path, bad, expected):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "r"}, "", bad,
                                                {"prompt": "p2", "response": "r2"}])
    with pytest.raises(ValueError) as err:
        read_sft(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} line 3: ") and expected in msg, msg
    assert msg.endswith("; fix it or pass --on-bad-line skip") and "\n" not in msg
    data = read_sft(path, on_bad_line="skip")
    assert data.conversations == [chat("p", "r"), chat("p2", "r2")] and data.skipped == 1


def test_non_utf8_line_is_a_bad_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(b'{"prompt": "p", "response": "r"}\n{"prompt": "\xff", "response": "r"}\n')
    with pytest.raises(ValueError, match=r"sft\.jsonl line 2: byte 13 of the line is 0xff, not UTF-8"):
        read_sft(path)
    assert read_sft(path, on_bad_line="skip").skipped == 1


def test_skip_mode_counts_every_bad_line_but_caps_the_warnings(tmp_path, caplog):
    bad = [{"prompt": "p", "response": ""}] * (MAX_WARNINGS + 5)
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "r"}] + bad + [{"prompt": "q", "response": "s"}])
    with caplog.at_level(logging.WARNING, logger="rlfl.sft_data"):
        data = read_sft(path, on_bad_line="skip")
    assert len(data.conversations) == 2 and data.skipped == MAX_WARNINGS + 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[0] == f"{path} line 2: empty 'response'; skipped"
    assert warnings[-1] == f"{path}: skipped {MAX_WARNINGS + 5} bad record(s) (5 not shown above)"


def test_empty_results_and_file_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no SFT examples \(it holds no records\)"):
        read_sft(empty)
    all_bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p"}] * 3)
    with pytest.raises(ValueError, match=r"bad\.jsonl: no SFT examples \(all 3 records were bad\)"):
        read_sft(all_bad, on_bad_line="skip")
    empty_array = tmp_path / "empty.json"
    empty_array.write_text(" [ ] ")
    with pytest.raises(ValueError, match=r"empty\.json: no SFT examples"):
        read_sft(empty_array)
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        read_sft(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"data\.csv: unsupported file type; use one of \.jsonl\.gz"):
        read_sft(tmp_path / "data.csv")
    (tmp_path / "x.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"x\.jsonl\.gz: not a valid gzip file"):
        read_sft(tmp_path / "x.jsonl.gz")
    with pytest.raises(ValueError, match="on_bad_line='ignore' must be 'error' or 'skip'"):
        read_sft(all_bad, on_bad_line="ignore")


def test_max_examples_stops_early(tmp_path):
    lines = [{"prompt": f"p{i}", "response": "r"} for i in range(5)] + ["not json"]
    data = read_sft(write_jsonl(tmp_path / "sft.jsonl", lines), max_examples=3)
    assert [c[0]["content"] for c in data.conversations] == ["p0", "p1", "p2"]  # the bad line is never reached


def test_real_alpaca_sample_and_gsm8k_train():
    alpaca_path = shared("sft/alpaca/alpaca_2k_sample.json.gz")
    gsm8k_path = shared("sft/gsm8k/train.jsonl.gz")
    alpaca = read_sft(alpaca_path)
    with gzip.open(alpaca_path, "rt", encoding="utf-8") as f:
        raw = json.load(f)
    assert len(alpaca.conversations) == 2000 and alpaca.skipped == 0
    for conv, rec in zip(alpaca.conversations, raw):
        want_user = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"].strip() else "")
        assert conv == chat(want_user, rec["output"])
    assert sum("\n\n" in c[0]["content"] for c in alpaca.conversations) >= 455  # the rows with an input
    gsm8k = read_sft(gsm8k_path)
    assert len(gsm8k.conversations) == 7473 and gsm8k.skipped == 0
    with gzip.open(gsm8k_path, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert gsm8k.conversations[0] == chat(first["question"], first["answer"])
    assert all(c[-1]["content"].rsplit("\n", 1)[-1].startswith("#### ") for c in gsm8k.conversations)


# ---------------------------------------------------------------------------------------------- tokenizing
def learned(targets: torch.Tensor) -> str:
    """The text a row (or a segment) of targets teaches: its tokens that are not IGNORE_INDEX."""
    return TOK.decode([t for t in targets.tolist() if t != IGNORE_INDEX])


def segments(batch: tuple[torch.Tensor, ...], examples) -> list[tuple[int, torch.Tensor]]:
    """(example index, its targets) for every example in a batch, recognised by its input ids."""
    by_inputs = {tuple(e.ids[:-1].tolist()): i for i, e in enumerate(examples)}
    x, y = batch[:2]
    seg = batch[2] if len(batch) == 3 else (x == TOK.pad_id).long()  # unpacked: example 0, then padding 1
    out = []
    for b in range(x.shape[0]):
        for s in range(int(seg[b].max()) + 1):
            at = seg[b] == s
            key = tuple(x[b][at].tolist())
            if key in by_inputs:  # else padding
                out.append((by_inputs[key], y[b][at]))
    return out


def test_loss_mask_is_exactly_the_assistant_content_and_its_end():
    convs = conversations(12) + [chat("Ünïcödé? ✓", "Ja — sehr gut. 😀", system="sys")]
    examples = tokenize_conversations(convs, TOK, max_len=256)
    assert len(examples) == len(convs) and examples.truncated == examples.dropped == 0
    batcher = SFTBatcher(examples, batch_size=len(convs), block_size=255, pad_id=TOK.pad_id, seed=0)
    x, y = batcher.batch_at(0)  # eval batches keep the input order: row i is example i
    for i, conv in enumerate(convs):
        ids, n = examples[i].ids, len(examples[i]) - 1
        assert x[i, :n].tolist() == ids[:-1].tolist()
        assert TOK.decode(x[i, :n]).startswith("<|system|>" if conv[0]["role"] == "system" else "<|user|>")
        kept = y[i] != IGNORE_INDEX
        # a supervised target is always the next token, and the learned text is exactly the answers
        assert y[i, :n][kept[:n]].tolist() == ids[1:][kept[:n].numpy()].tolist()
        assert learned(y[i]) == supervised_text(conv)
        assert not kept[n:].any() and (x[i, n:] == TOK.pad_id).all()


def test_loss_mask_on_real_gsm8k():
    data = read_sft(shared("sft/gsm8k/train.jsonl.gz"), max_examples=64)
    examples = tokenize_conversations(data.conversations, TOK, max_len=2048)
    assert examples.truncated == 0
    x, y = SFTBatcher(examples, 64, 2047, pad_id=TOK.pad_id, seed=0).batch_at(0)
    for i, conv in enumerate(data.conversations):
        assert learned(y[i]) == conv[-1]["content"] + END


def test_truncation_keeps_the_prompt_and_cuts_the_response():
    long = chat("short prompt", "r" * 100)
    examples = tokenize_conversations([long, chat("q", "a")], TOK, max_len=40)
    assert (examples.truncated, examples.dropped) == (1, 0)
    cut, whole = examples
    assert cut.truncated and not whole.truncated and len(cut) == 40
    assert TOK.decode(cut.ids) == "<|user|>short prompt<|end|><|assistant|>" + "r" * 25
    assert cut.n_supervised == 25  # the r's that survived; the <|end|> was cut
    # a prompt that fills max_len leaves nothing to learn: dropped and counted
    examples = tokenize_conversations([chat("p" * 50, "answer"), chat("q", "a")], TOK, max_len=40)
    assert (len(examples), examples.dropped, examples.truncated) == (1, 1, 0)
    # exactly one answer token surviving is enough to keep the example
    prompt_len = len(TOK.encode("p" * 10)) + 3  # <|user|> ... <|end|><|assistant|>
    kept = tokenize_conversations([chat("p" * 10, "answer")], TOK, max_len=prompt_len + 1)
    assert len(kept) == 1 and kept[0].n_supervised == 1
    with pytest.raises(ValueError, match="max_len=1 must be >= 2"):
        tokenize_conversations([long], TOK, max_len=1)


def test_batcher_rejects_examples_longer_than_its_context():
    examples = tokenize_conversations([chat("q", "a" * 30)], TOK, max_len=64)
    with pytest.raises(ValueError, match=r"SFT example 0 has 35 tokens, more than block_size\+1=21; "
                                         r"tokenize with max_len=21"):
        SFTBatcher(examples, 1, 20, pad_id=TOK.pad_id)
    no_loss = SFTExample(np.array([1, 2, 3]), np.array([0, 0, 0], dtype=bool))
    with pytest.raises(ValueError, match="SFT example 0 has no token to learn"):
        SFTBatcher([no_loss], 1, 20, pad_id=TOK.pad_id)
    with pytest.raises(ValueError, match="no SFT examples to batch"):
        SFTBatcher([], 1, 20, pad_id=TOK.pad_id)
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, world_size=2\)"):
        SFTBatcher(examples, 1, 64, pad_id=TOK.pad_id, rank=2, world_size=2)


# ---------------------------------------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_keeps_order():
    items = list(range(100))
    train, val = split_examples(items, 0.1, seed=3)
    assert (train, val) == split_examples(items, 0.1, seed=3)
    assert len(val) == 10 and sorted(train + val) == items
    assert train == sorted(train) and val == sorted(val)
    assert split_examples(items, 0.1, seed=4)[1] != val
    assert len(split_examples(items[:2], 0.01, seed=0)[1]) == 1  # at least one val example
    assert split_examples(items[:2], 0.99, seed=0)[0] != []      # never all of them
    assert split_examples(items[:1], 0.5, seed=0) == ([0], [])
    assert split_examples(items, 0.0, seed=0) == (items, [])
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \[0, 1\)"):
        split_examples(items, 1.0, seed=0)


# ---------------------------------------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def examples():
    return tokenize_conversations(conversations(40), TOK, max_len=97)


def test_unpacked_batches_pad_to_the_longest_or_to_the_block(examples):
    batcher = SFTBatcher(examples, 4, 96, pad_id=TOK.pad_id, seed=0)
    x, y = batcher.batch(0)
    rows = batcher.epoch_rows(0)[:4]
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == y.shape == (4, max(len(examples[r[0]]) - 1 for r in rows))
    x, y = SFTBatcher(examples, 4, 96, pad_id=TOK.pad_id, seed=0, pad_to_block=True).batch(0)
    assert x.shape == (4, 96)
    assert batcher.num_examples == 40 and batcher.steps_per_epoch == 10 and batcher.eval_batches_per_pass == 10
    assert batcher.tokens_per_batch == round(4 * np.mean([len(e) - 1 for e in examples]))


@pytest.mark.parametrize("pack", [False, True])
def test_batches_depend_only_on_seed_and_step(examples, pack):
    def make(seed):
        return SFTBatcher(examples, 3, 96, pad_id=TOK.pad_id, seed=seed, pack=pack)

    a, b = make(0), make(0)
    late = int(3 * a.steps_per_epoch) + 1  # in the 4th epoch
    first = [a.batch(s) for s in range(late + 1)]
    # a fresh batcher (a resumed run) jumping straight to a late step draws the same batch
    for s in (late, 5, 0):
        assert all(torch.equal(u, v) for u, v in zip(b.batch(s), first[s]))
    assert not torch.equal(make(1).batch(0)[0], first[0][0])
    assert all(torch.equal(u, v) for u, v in zip(a.batch_at(2), b.batch_at(2)))


@pytest.mark.parametrize("pack", [False, True])
def test_ranks_take_disjoint_examples(examples, pack):
    ranks = [SFTBatcher(examples, 2, 96, pad_id=TOK.pad_id, seed=0, pack=pack, rank=r, world_size=2) for r in (0, 1)]
    steps = int(ranks[0].steps_per_epoch)  # the whole steps of epoch 0
    assert steps >= 3
    seen = [[i for s in range(steps) for i, _ in segments(r.batch(s), examples)] for r in ranks]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1]))  # nothing twice within the epoch


def test_packing_holds_each_example_once_per_epoch_without_crossing_boundaries(examples):
    block = 200
    batcher = SFTBatcher(examples, 1, block, pad_id=TOK.pad_id, seed=0, pack=True)
    rows = batcher.epoch_rows(0)
    assert sorted(i for row in rows for i in row) == list(range(len(examples)))
    assert max(len(row) for row in rows) >= 3
    assert batcher.tokens_per_batch == round(sum(len(e) - 1 for e in examples) / len(rows))
    seen = Counter()
    for step, row in enumerate(rows):  # batch_size 1: step s is row s of epoch 0
        x, y, seg = (t[0] for t in batcher.batch(step))
        assert x.shape == (block,)
        assert (seg[1:] >= seg[:-1]).all() and (seg[1:] - seg[:-1] <= 1).all()
        assert int(seg[-1]) == len(row) or int(seg.max()) == len(row) - 1  # padding gets the next id
        for s, i in enumerate(row):
            inputs, targets = examples[i].inputs_targets()
            at = seg == s
            # segment s is exactly example i: its inputs, and targets taken from within it only
            assert x[at].tolist() == inputs.tolist() and y[at].tolist() == targets.tolist()
            assert TOK.decode([t for t in y[at].tolist() if t != IGNORE_INDEX]) == \
                TOK.decode(examples[i].ids[examples[i].mask])
            seen[i] += 1
        pad = seg == len(row)
        assert (x[pad] == TOK.pad_id).all() and (y[pad] == IGNORE_INDEX).all()
        # the last input of each example predicts its own last token, never the next example's first
        for e in torch.nonzero(seg[1:] != seg[:-1]).flatten().tolist():
            ex = examples[row[int(seg[e])]]
            assert int(y[e]) == (int(ex.ids[-1]) if ex.mask[-1] else IGNORE_INDEX)
            if not ex.truncated:
                assert int(y[e]) == TOK.special_tokens[END]
    assert seen == Counter(range(len(examples)))
    # the epoch after starts right where this one ended, with a new packing order
    assert batcher.epoch_rows(1) != rows


def test_eval_batches_cover_the_examples_in_order(examples):
    convs = conversations(40)
    for pack in (False, True):
        batcher = SFTBatcher(examples, 4, 96, pad_id=TOK.pad_id, seed=0, pack=pack)
        seen = [seg for i in range(batcher.eval_batches_per_pass) for seg in segments(batcher.batch_at(i), examples)]
        order = [i for i, _ in seen]
        if pack:  # first-fit packing reorders, but every example is in the pass
            assert set(order) == set(range(len(examples)))
        else:  # in order, then wrapping around
            assert order == list(range(len(examples)))
        assert all(torch.equal(u, v) for u, v in zip(batcher.batch_at(1), batcher.batch_at(1)))
        for i, targets in seen:
            assert learned(targets) == TOK.decode(examples[i].ids[examples[i].mask])
            if not examples[i].truncated:
                assert learned(targets) == supervised_text(convs[i])

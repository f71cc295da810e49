"""The `rlfl` command: every bad input ends in a one-line error that names the problem and the fix."""

from __future__ import annotations

import gzip
import json

import pytest

from rlfl.cli import main


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()  # drop what earlier commands printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlfl: error: ") and "\n" not in err, err
    return err


def _prepare(tmp_path, name: str, *extra: str) -> str:
    out = tmp_path / name
    main(["data", "prepare", "--dataset", "synthetic", "--synthetic-docs", "300", "--out", str(out), *extra])
    return str(out)


def test_missing_corpus(tmp_path, capsys):
    err = _error(capsys, ["data", "prepare", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")])
    assert "nope.txt" in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("   \n\n")
    err = _error(capsys, ["data", "prepare", "--input", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")])
    assert "empty" in err.lower()
    assert not (tmp_path / "o").exists()


def test_binary_file(tmp_path, capsys):
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 4)
    err = _error(capsys, ["data", "prepare", "--input", str(tmp_path / "blob.txt"), "--out", str(tmp_path / "o")])
    assert "blob.txt" in err and "binary" in err


def test_jsonl_line_without_text_field(tmp_path, capsys):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "oops"}) + "\n")
    err = _error(capsys, ["data", "prepare", "--input", str(path), "--out", str(tmp_path / "o")])
    assert "line 2" in err and "'text'" in err and "--text-field" in err


def test_existing_shards_survive_a_failed_prepare(tmp_path, capsys):
    out = _prepare(tmp_path, "shards")
    before = (tmp_path / "shards" / "train.bin").read_bytes()
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    _error(capsys, ["data", "prepare", "--input", str(tmp_path / "bad.jsonl"), "--out", out])
    assert (tmp_path / "shards" / "train.bin").read_bytes() == before


def test_vocab_size_too_small(tmp_path, capsys):
    err = _error(capsys, ["tokenizer", "train", "--dataset", "synthetic", "--synthetic-docs", "50",
                          "--vocab-size", "200", "--out", str(tmp_path / "tok")])
    assert "200" in err and "262" in err
    assert not (tmp_path / "tok").exists()


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("n_layer: 2\nlearning_rate: 0.1\n")
    err = _error(capsys, ["pretrain", "--config", str(cfg)])
    assert "learning_rate" in err and str(cfg) in err


def test_block_size_beyond_model_and_foreign_tokenizer(tmp_path, capsys):
    data = _prepare(tmp_path, "shards")
    base = tmp_path / "base"
    main(["pretrain", "--data", data, "--out-dir", str(base), "--max-steps", "2", "--n-layer", "1", "--n-head", "2",
          "--n-embd", "32", "--block-size", "32", "--batch-size", "2", "--sample-tokens", "0", "--no-progress"])
    err = _error(capsys, ["pretrain", "--data", data, "--init-from", str(base), "--out-dir", str(tmp_path / "cont"),
                          "--block-size", "64", "--max-steps", "2", "--no-progress"])
    assert "block_size=64" in err and "maximum context 32" in err and "--block-size 32" in err
    # shards tokenized with a trained BPE can't continue a byte-level checkpoint
    main(["tokenizer", "train", "--dataset", "synthetic", "--synthetic-docs", "300", "--vocab-size", "300",
          "--out", str(tmp_path / "bpe")])
    other = _prepare(tmp_path, "bpe_shards", "--tokenizer", str(tmp_path / "bpe"))
    err = _error(capsys, ["pretrain", "--data", other, "--init-from", str(base), "--out-dir", str(tmp_path / "cont"),
                          "--block-size", "32", "--max-steps", "2", "--no-progress"])
    assert "tokenizer" in err and "rlfl data prepare" in err and str(base) in err
    assert not (tmp_path / "cont").exists()


def test_corpus_source_must_be_one(tmp_path, capsys):
    err = _error(capsys, ["data", "prepare", "--out", str(tmp_path / "o")])
    assert "--input" in err and "--dataset" in err


def test_rlfl_serve_command_answers_over_http(tmp_path):
    """`rlfl serve CKPT --port 0` binds 127.0.0.1, logs its URL, and answers a chat completion."""
    import re
    import subprocess
    import sys
    import urllib.request

    import torch

    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=262, block_size=64, n_layer=1, n_head=2, n_embd=32)),
                    byte_tokenizer(), stage="pretrain")
    proc = subprocess.Popen([sys.executable, "-m", "rlfl", "serve", str(tmp_path / "ckpt"), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if m:
                url = m.group(1)
                break
        assert url is not None
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0})
        req = urllib.request.Request(url + "/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] <= 5
        assert reply["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.kill()
        proc.wait()


def test_rlfl_sft_bad_lines_fatal_or_skipped(tmp_path, capsys):
    import torch

    from rlfl.checkpoint import load_checkpoint, save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", GPT(GPTConfig(vocab_size=262, block_size=64, n_layer=1, n_head=2, n_embd=32)),
                    byte_tokenizer(), stage="pretrain")
    data = tmp_path / "sft.jsonl"
    good = [json.dumps({"prompt": f"Say {i}", "response": str(i)}) for i in range(20)]
    data.write_text("\n".join(good[:5] + ['{"prompt": "x", "response": ""}'] + good[5:]) + "\n")
    flags = ["sft", "--init-from", str(tmp_path / "base"), "--data", str(data), "--max-steps", "3", "--batch-size",
             "4", "--no-progress", "--eval-interval", "3", "--num-samples", "1"]
    err = _error(capsys, [*flags, "--out-dir", str(tmp_path / "a")])
    assert "sft.jsonl line 6" in err and "--on-bad-line skip" in err
    assert not (tmp_path / "a").exists()
    main([*flags, "--out-dir", str(tmp_path / "b"), "--on-bad-line", "skip"])
    done = load_checkpoint(tmp_path / "b")
    assert done.config["stage"] == "sft" and done.config["data"]["skipped"] == 1 and done.step == 3


def test_rlfl_compare_config_positional_fails_before_training(tmp_path, capsys):
    # `rlfl compare CONFIG`: the file is the positional argument; a wrong key or a missing policy is named
    cfg = tmp_path / "cmp.yaml"
    cfg.write_text("policy: nowhere/sft\nseedz: [0, 1, 2]\n")
    err = _error(capsys, ["compare", str(cfg)])
    assert "unknown config key 'seedz'" in err and str(cfg) in err
    cfg.write_text(f"policy: {tmp_path / 'nowhere'}\nout_dir: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(cfg)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the stage line "[preflight] ..." comes first
    assert exit_info.value.code == 2 and last.startswith("rlfl: error: ")
    assert "nowhere: not an rlfl checkpoint directory (policy)" in last
    assert not (tmp_path / "out" / "rm_rlhf").exists() and not (tmp_path / "out" / "results.json").exists()

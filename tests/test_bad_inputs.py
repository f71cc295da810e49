"""Every bad input a user can give any `rlfl` command ends in one line that names the file or flag.

A table of bad inputs across the commands (files, flags, config files, checkpoints, datasets, labels, label
stores). Each row runs the command in-process and asserts: exit code 2, the last line of stderr is one
``rlfl: error:`` line naming what is wrong (the file or the flag), no traceback anywhere, and the output
folder the command was given is byte-identical afterwards (absent if it was absent, unchanged if it held
something). The HTTP bodies of `rlfl serve` and `rlfl label serve` are covered by tests/test_serve.py and
tests/test_label_web.py (status 400 with the field named).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import printable_checkpoint
from rlfl.cli import main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-interval", "0", "--sample-tokens", "0", "--num-threads", "1", "--no-progress", "--max-steps", "2"]
TINY_TRAIN = ["--batch-size", "2", "--max-steps", "2", "--eval-interval", "0", "--num-threads", "1", "--no-progress"]
TINY_PPO = ["--n-envs", "2", "--n-steps", "4", "--batch-size", "8", "--n-epochs", "1", "--max-new-tokens", "4",
            "--max-prompt-tokens", "8", "--eval-prompts", "0", "--sample-every", "0", "--num-threads", "1",
            "--no-progress", "--total-timesteps", "8"]


@dataclass
class Files:
    """The good and damaged inputs every row draws from (built once per module)."""

    root: Path
    ckpt: Path  # a tiny byte-level chat checkpoint (block 64)
    shards: Path  # prepared synthetic shards
    pairs: Path  # preference pairs JSONL
    sft: Path  # SFT JSONL
    corpus: Path  # a plain text corpus
    store: Path  # a label store with items

    def damaged(self, name: str, base: Path, edit: Callable[[Path], None]) -> Path:
        """A copy of ``base`` (file or folder) under ``name``, changed by ``edit``."""
        target = self.root / name
        if not target.exists():
            (shutil.copytree if base.is_dir() else shutil.copy)(base, target)
            edit(target)
        return target

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        if not path.exists():
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    from rlfl.feedback.store import LabelStore

    root = tmp_path_factory.mktemp("bad_inputs")
    ckpt = printable_checkpoint(root / "ckpt", block_size=64)
    assert main(["data", "prepare", "--dataset", "synthetic", "--synthetic-docs", "300", "--out",
                 str(root / "shards")]) == 0
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(f'{{"prompt": "Review {i}:", "chosen": " great food {i}", "rejected": " awful {i}"}}\n'
                             for i in range(16)))
    sft = root / "sft.jsonl"
    sft.write_text("".join(f'{{"prompt": "Say {i}", "response": "ok {i}"}}\n' for i in range(16)))
    corpus = root / "corpus.txt"
    corpus.write_text("The food was great. The service was slow.\n" * 200)
    with LabelStore(root / "labels.db") as store:
        store.add_items([{"prompt": "p", "response_a": "a", "response_b": "b"}])
    return Files(root, ckpt, root / "shards", pairs, sft, corpus, root / "labels.db")


# ---------------------------------------------------------------------------------------------- damage
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def in_ckpt(name: str, edit: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda d: edit(d / name)


def nan_weights(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    key = next(k for k in state if k.endswith("weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(d / "model.safetensors"))


def garbage(path: Path) -> None:
    path.write_bytes(b"\x80\x04garbage, not what this file should hold")


def bad_ckpt(f: Files, kind: str) -> Path:
    edits = {"truncated": in_ckpt("model.safetensors", truncate), "nan": nan_weights,
             "config": in_ckpt("config.json", lambda p: p.write_text("{not json")),
             "tokenizer": in_ckpt("tokenizer.json", garbage),
             "no-weights": in_ckpt("model.safetensors", lambda p: p.unlink()),
             "config-model": in_ckpt("config.json", lambda p: p.write_text('{"stage": "sft", "step": 0}'))}
    return f.damaged(f"ckpt-{kind}", f.ckpt, edits[kind])


def bad_shards(f: Files, kind: str) -> Path:
    edits = {"meta": in_ckpt("meta.json", garbage), "bin": in_ckpt("train.bin", truncate),
             "no-meta": in_ckpt("meta.json", lambda p: p.unlink())}
    return f.damaged(f"shards-{kind}", f.shards, edits[kind])


def a_file(f: Files) -> Path:
    return f.write("a-file", "I am a file, not a folder\n")


def pretrain_run(f: Files, kind: str) -> Path:
    """A tiny finished pretrain run (2 steps) whose trainer_state.pt is damaged."""
    base = f.root / "pretrain-run"
    if not base.exists():
        assert main(["pretrain", "--data", str(f.shards), "--out-dir", str(base), "--checkpoint-interval", "1",
                     *TINY]) == 0
    edit = {"truncated": truncate, "garbage": garbage}[kind]
    return f.damaged(f"pretrain-run-{kind}", base, in_ckpt("trainer_state.pt", edit))


def ppo_run(f: Files, kind: str) -> Path:
    base = f.root / "ppo-run"
    if not base.exists():
        assert main(["ppo", "--init-from", str(f.ckpt), "--out-dir", str(base), *TINY_PPO]) == 0
    edit = {"truncated": truncate, "garbage": garbage}[kind]
    return f.damaged(f"ppo-run-{kind}", base, in_ckpt("ppo_resume.pt", edit))


def new(f: Files, name: str) -> Path:
    """An output path that does not exist (and must still not exist after the failed command)."""
    return f.root / "out" / name


# ---------------------------------------------------------------------------------------------- the table
# (id, argv(f) -> (argv, output path), what the error line must contain)
Row = tuple[str, Callable[[Files], tuple[list[str], Path | None]], Callable[[Files], str] | str]


ROWS: list[Row] = []


def add(name: str, cmd: list[str], extra: Callable[[Files], list[str]], names, *, out_flag: str = "--out-dir",
        out: Callable[[Files], Path] | None = None) -> None:
    """A row: ``rlfl CMD extra(f) OUT_FLAG <fresh path>`` (or ``out``'s path, which exists)."""
    def argv(f: Files) -> list[str]:
        target = out(f) if out is not None else new(f, name)
        return [*cmd, *extra(f), *([out_flag, str(target)] if out_flag else [])]

    ROWS.append((name, lambda f: (argv(f), out(f) if out is not None else new(f, name)), names))


# ---- pretrain
add("pretrain-missing-data", ["pretrain"], lambda f: ["--data", str(f.root / "nope"), *TINY], "nope")
add("pretrain-data-is-file", ["pretrain"], lambda f: ["--data", str(f.corpus), *TINY], "corpus.txt")
add("pretrain-meta-garbage", ["pretrain"], lambda f: ["--data", str(bad_shards(f, "meta")), *TINY], "meta.json")
add("pretrain-meta-missing", ["pretrain"], lambda f: ["--data", str(bad_shards(f, "no-meta")), *TINY], "meta.json")
add("pretrain-bin-truncated", ["pretrain"], lambda f: ["--data", str(bad_shards(f, "bin")), *TINY], "train.bin")
add("pretrain-out-is-file", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY], "a-file", out=a_file)
add("pretrain-device", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY, "--device", "cdua"], "--device")
add("pretrain-init-missing", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from", str(f.root / "nockpt"),
                                                     *TINY], "nockpt")
add("pretrain-init-truncated", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from",
                                                       str(bad_ckpt(f, "truncated")), *TINY], "model.safetensors")
add("pretrain-init-nan", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from", str(bad_ckpt(f, "nan")),
                                                 *TINY], "NaN")
add("pretrain-init-config", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from",
                                                    str(bad_ckpt(f, "config")), *TINY], "config.json")
add("pretrain-init-tokenizer", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from",
                                                       str(bad_ckpt(f, "tokenizer")), *TINY], "tokenizer.json")
add("pretrain-init-no-weights", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from",
                                                        str(bad_ckpt(f, "no-weights")), *TINY], "model.safetensors")
add("pretrain-init-config-model", ["pretrain"], lambda f: ["--data", str(f.shards), "--init-from",
                                                          str(bad_ckpt(f, "config-model")), *TINY], "config.json")
add("pretrain-lr-negative", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY, "--lr", "-1"], "lr")
add("pretrain-lr-nan", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY, "--lr", "nan"], "lr")
add("pretrain-batch-zero", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY, "--batch-size", "0"], "batch")
add("pretrain-heads", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY, "--n-head", "3"], "n_head")
add("pretrain-dtype", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY, "--dtype", "float8"], "dtype")
add("pretrain-config-missing", ["pretrain"], lambda f: ["--config", str(f.root / "nope.yaml")], "nope.yaml")
add("pretrain-config-unknown-key", ["pretrain"],
    lambda f: ["--config", str(f.write("unknown.yaml", "data: x\nn_layerz: 2\n"))], "n_layerz")
add("pretrain-config-bad-type", ["pretrain"],
    lambda f: ["--config", str(f.write("badtype.yaml", f"data: {f.shards}\nn_layer: many\n"))], "n_layer")
add("pretrain-config-not-yaml", ["pretrain"],
    lambda f: ["--config", str(f.write("broken.yaml", "data: [unclosed\n"))], "broken.yaml")
add("pretrain-config-binary", ["pretrain"], lambda f: ["--config", str(f.write("bin.yaml", b"\xff\xfe\x00"))],
    "bin.yaml")
add("pretrain-resume-state-truncated", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY[:-2],
                                                               "--max-steps", "4"],
    "trainer_state.pt", out=lambda f: pretrain_run(f, "truncated"))
add("pretrain-resume-state-garbage", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY[:-2], "--max-steps", "4"],
    "trainer_state.pt", out=lambda f: pretrain_run(f, "garbage"))
add("pretrain-resume-other-arch", ["pretrain"], lambda f: ["--data", str(f.shards), *TINY[:-2], "--max-steps", "4",
                                                          "--n-embd", "64"],
    "n_embd", out=lambda f: f.root / "pretrain-run")

# ---- sft
add("sft-missing-data", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.root / "nope.jsonl"),
                                            *TINY_TRAIN], "nope.jsonl")
add("sft-data-garbage", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data",
                                            str(f.write("sft-garbage.jsonl", "this is not json\n")), *TINY_TRAIN],
    "sft-garbage.jsonl")
add("sft-data-missing-field", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data",
                                                  str(f.write("sft-nofield.jsonl", '{"prompt": "p"}\n')), *TINY_TRAIN],
    "sft-nofield.jsonl")
add("sft-data-0xff", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data",
                                         str(f.write("sft-ff.jsonl", b'{"prompt": "p\xff", "response": "r"}\n')),
                                         *TINY_TRAIN], "sft-ff.jsonl")
add("sft-data-empty", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.write("empty.jsonl", "")),
                                          *TINY_TRAIN], "empty.jsonl")
add("sft-init-missing", ["sft"], lambda f: ["--init-from", str(f.root / "nockpt"), "--data", str(f.sft),
                                            *TINY_TRAIN], "nockpt")
add("sft-init-truncated", ["sft"], lambda f: ["--init-from", str(bad_ckpt(f, "truncated")), "--data", str(f.sft),
                                              *TINY_TRAIN], "model.safetensors")
add("sft-init-nan", ["sft"], lambda f: ["--init-from", str(bad_ckpt(f, "nan")), "--data", str(f.sft), *TINY_TRAIN],
    "NaN")
add("sft-out-is-file", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.sft), *TINY_TRAIN], "a-file",
    out=a_file)
add("sft-device", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.sft), *TINY_TRAIN, "--device",
                                      "cdua"], "--device")
add("sft-on-bad-line", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.sft), *TINY_TRAIN,
                                           "--on-bad-line", "ignore"], "--on-bad-line")
add("sft-val-fraction", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.sft), *TINY_TRAIN,
                                            "--val-fraction", "1.5"], "val_fraction")
add("sft-block-too-big", ["sft"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.sft), *TINY_TRAIN,
                                             "--block-size", "4096"], "block")

# ---- reward train
add("reward-missing-data", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data",
                                                          str(f.root / "nope.jsonl"), *TINY_TRAIN], "nope.jsonl")
add("reward-pairs-missing-field", ["reward", "train"],
    lambda f: ["--init-from", str(f.ckpt), "--data",
               str(f.write("pairs-nofield.jsonl", '{"prompt": "p", "chosen": "a"}\n')), *TINY_TRAIN],
    "pairs-nofield.jsonl")
add("reward-label-not-number", ["reward", "train"],
    lambda f: ["--init-from", str(f.ckpt), "--data",
               str(f.write("labels-str.jsonl", '{"prompt": "p", "text": "a", "label": "good"}\n')), *TINY_TRAIN],
    "labels-str.jsonl")
add("reward-label-huge", ["reward", "train"],
    lambda f: ["--init-from", str(f.ckpt), "--data",
               str(f.write("labels-huge.jsonl", "".join(f'{{"prompt": "p", "text": "a{i}", "label": 1e30}}\n'
                                                        for i in range(8)))), *TINY_TRAIN], "labels-huge.jsonl")
add("reward-data-0xff", ["reward", "train"],
    lambda f: ["--init-from", str(f.ckpt), "--data",
               str(f.write("pairs-ff.jsonl", b'{"prompt": "p", "chosen": "a\xff", "rejected": "b"}\n')), *TINY_TRAIN],
    "pairs-ff.jsonl")
add("reward-hh-no-file", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data", "hh:", *TINY_TRAIN],
    "hh:")
add("reward-imdb-missing", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data",
                                                          f"imdb:{f.root / 'noimdb.jsonl.gz'}", *TINY_TRAIN],
    "noimdb.jsonl.gz")
add("reward-imdb-not-gzip", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data",
                                                           f"imdb:{f.write('fake.jsonl.gz', 'plain text')}",
                                                           *TINY_TRAIN], "fake.jsonl.gz")
add("reward-format", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.pairs),
                                                    "--format", "csv", *TINY_TRAIN], "format")
add("reward-init-truncated", ["reward", "train"], lambda f: ["--init-from", str(bad_ckpt(f, "truncated")), "--data",
                                                            str(f.pairs), *TINY_TRAIN], "model.safetensors")
add("reward-init-config", ["reward", "train"], lambda f: ["--init-from", str(bad_ckpt(f, "config")), "--data",
                                                         str(f.pairs), *TINY_TRAIN], "config.json")
add("reward-out-is-file", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.pairs),
                                                         *TINY_TRAIN], "a-file", out=a_file)
add("reward-device", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.pairs),
                                                    *TINY_TRAIN, "--device", "cdua"], "--device")
add("reward-label-loss", ["reward", "train"], lambda f: ["--init-from", str(f.ckpt), "--data", str(f.pairs),
                                                        *TINY_TRAIN, "--label-loss", "hinge"], "label")

# ---- ppo
add("ppo-init-missing", ["ppo"], lambda f: ["--init-from", str(f.root / "nockpt"), *TINY_PPO], "nockpt")
add("ppo-init-truncated", ["ppo"], lambda f: ["--init-from", str(bad_ckpt(f, "truncated")), *TINY_PPO],
    "model.safetensors")
add("ppo-init-nan", ["ppo"], lambda f: ["--init-from", str(bad_ckpt(f, "nan")), *TINY_PPO], "NaN")
add("ppo-init-tokenizer", ["ppo"], lambda f: ["--init-from", str(bad_ckpt(f, "tokenizer")), *TINY_PPO],
    "tokenizer.json")
add("ppo-env-unknown", ["ppo"], lambda f: ["--init-from", str(f.ckpt), "--env-id", "rlfl/Nope-v0", *TINY_PPO],
    "rlfl/Nope-v0")
add("ppo-reward-missing", ["ppo"], lambda f: ["--init-from", str(f.ckpt), "--reward", str(f.root / "norm"),
                                              *TINY_PPO], "norm")
add("ppo-reward-not-reward-model", ["ppo"], lambda f: ["--init-from", str(f.ckpt), "--reward", str(f.ckpt),
                                                       *TINY_PPO], "ckpt")
add("ppo-gold-missing", ["ppo"], lambda f: ["--init-from", str(f.ckpt), "--gold", str(f.root / "nogold"),
                                            *TINY_PPO], "nogold")
add("ppo-out-is-file", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO], "a-file", out=a_file)
add("ppo-device", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--device", "cdua"], "--device")
add("ppo-kl-estimator", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--kl-estimator", "k9"],
    "kl_estimator")
add("ppo-lr-schedule", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--lr-schedule", "step"],
    "schedule")
add("ppo-log-formats", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--log-formats", "xml"], "xml")
add("ppo-too-long", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--max-new-tokens", "60",
                                        "--max-prompt-tokens", "30"], "block_size")
add("ppo-precision", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--precision", "fp4"], "precision")
add("ppo-resume-truncated", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO[:-1], "16"], "ppo_resume.pt",
    out=lambda f: ppo_run(f, "truncated"))
add("ppo-resume-garbage", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO[:-1], "16"], "ppo_resume.pt",
    out=lambda f: ppo_run(f, "garbage"))
add("ppo-n-envs-zero", ["ppo"], lambda f: ["--init-from", str(f.ckpt), *TINY_PPO, "--n-envs", "0"], "n_envs")

# ---- sample / chat / serve (no output folder)
add("sample-missing", ["sample", "nockpt"], lambda f: [], "nockpt", out_flag="")
add("sample-truncated", ["sample"], lambda f: [str(bad_ckpt(f, "truncated"))], "model.safetensors", out_flag="")
add("sample-nan", ["sample"], lambda f: [str(bad_ckpt(f, "nan"))], "NaN", out_flag="")
add("sample-config", ["sample"], lambda f: [str(bad_ckpt(f, "config"))], "config.json", out_flag="")
add("sample-tokenizer", ["sample"], lambda f: [str(bad_ckpt(f, "tokenizer"))], "tokenizer.json", out_flag="")
add("sample-device", ["sample"], lambda f: [str(f.ckpt), "--device", "cdua"], "--device", out_flag="")
add("sample-temperature", ["sample"], lambda f: [str(f.ckpt), "--temperature", "-1"], "temperature", out_flag="")
add("sample-temperature-nan", ["sample"], lambda f: [str(f.ckpt), "--temperature", "nan"], "temperature",
    out_flag="")
add("sample-top-p", ["sample"], lambda f: [str(f.ckpt), "--top-p", "2"], "top_p", out_flag="")
add("sample-max-new-tokens", ["sample"], lambda f: [str(f.ckpt), "--max-new-tokens", "-3"], "max_new_tokens",
    out_flag="")
add("sample-dir-is-file", ["sample"], lambda f: [str(f.corpus)], "corpus.txt", out_flag="")
add("serve-missing", ["serve"], lambda f: [str(f.root / "nockpt")], "nockpt", out_flag="")
add("serve-truncated", ["serve"], lambda f: [str(bad_ckpt(f, "truncated")), "--port", "0"], "model.safetensors",
    out_flag="")
add("serve-port", ["serve"], lambda f: [str(f.ckpt), "--port", "70000"], "--port", out_flag="")
add("serve-device", ["serve"], lambda f: [str(f.ckpt), "--device", "cdua", "--port", "0"], "--device", out_flag="")
add("serve-public-host", ["serve"], lambda f: [str(f.ckpt), "--host", "0.0.0.0", "--port", "0"], "--allow-public",
    out_flag="")
add("serve-api-key-env", ["serve"], lambda f: [str(f.ckpt), "--api-key-env", "RLFL_NO_SUCH_VAR", "--port", "0"],
    "RLFL_NO_SUCH_VAR", out_flag="")
add("chat-missing", ["chat"], lambda f: [str(f.root / "nockpt")], "nockpt", out_flag="")
add("chat-nan", ["chat"], lambda f: [str(bad_ckpt(f, "nan"))], "NaN", out_flag="")

# ---- judge
add("judge-spec", ["judge"], lambda f: ["--pairs", str(f.pairs), "--judge", "oracle:x"], "oracle:x", out_flag="--out",
    out=lambda f: new(f, "judge-spec.jsonl"))
add("judge-pairs-missing", ["judge"], lambda f: ["--pairs", str(f.root / "nopairs.jsonl"), "--judge", f"lm:{f.ckpt}"],
    "nopairs.jsonl", out_flag="--out", out=lambda f: new(f, "judge-pairs.jsonl"))
add("judge-lm-missing", ["judge"], lambda f: ["--pairs", str(f.pairs), "--judge", f"lm:{f.root / 'nolm'}"], "nolm",
    out_flag="--out", out=lambda f: new(f, "judge-lm.jsonl"))
add("judge-python-missing", ["judge"], lambda f: ["--pairs", str(f.pairs), "--judge", "python:no_such_mod:fn"],
    "no_such_mod", out_flag="--out", out=lambda f: new(f, "judge-py.jsonl"))
add("judge-lm-truncated", ["judge"], lambda f: ["--pairs", str(f.pairs), "--judge",
                                                f"lm:{bad_ckpt(f, 'truncated')}"], "model.safetensors",
    out_flag="--out", out=lambda f: new(f, "judge-lmt.jsonl"))
add("judge-pairs-0xff", ["judge"], lambda f: ["--pairs", str(f.write("judge-ff.jsonl",
                                                                     b'{"prompt": "\xff", "chosen": "a", '
                                                                     b'"rejected": "b"}\n')), "--judge", f"lm:{f.ckpt}"],
    "judge-ff.jsonl", out_flag="--out", out=lambda f: new(f, "judge-ff-out.jsonl"))

# ---- label
add("label-serve-import-missing", ["label", "serve"], lambda f: ["--import-jsonl", str(f.root / "noitems.jsonl"),
                                                                 "--port", "0"],
    "noitems.jsonl", out_flag="--store", out=lambda f: new(f, "serve.db"))
add("label-serve-import-garbage", ["label", "serve"], lambda f: ["--import-jsonl",
                                                                 str(f.write("items-bad.jsonl", "nope\n")),
                                                                 "--port", "0"],
    "items-bad.jsonl", out_flag="--store", out=lambda f: new(f, "serve2.db"))
add("label-serve-store-missing", ["label", "serve"], lambda f: ["--port", "0"], "nostore.db", out_flag="--store",
    out=lambda f: new(f, "nostore.db"))
add("label-serve-store-garbage", ["label", "serve"], lambda f: ["--port", "0"], "store-garbage.db", out_flag="--store",
    out=lambda f: f.write("store-garbage.db", b"SQLite? no, garbage " * 50))
add("label-serve-remote", ["label", "serve"], lambda f: ["--host", "0.0.0.0", "--allow-remote", "--port", "0"],
    "--annotators", out_flag="--store", out=lambda f: f.store)
add("label-export-store-missing", ["label", "export", "--store"], lambda f: [str(f.root / "nostore2.db")],
    "nostore2.db", out_flag="--out", out=lambda f: new(f, "export.jsonl"))
add("label-export-store-garbage", ["label", "export", "--store"], lambda f: [str(f.write("g2.db", b"x" * 500))],
    "g2.db", out_flag="--out", out=lambda f: new(f, "export2.jsonl"))
add("label-export-out", ["label", "export", "--store"], lambda f: [str(f.store)], "--out", out_flag="--out",
    out=lambda f: new(f, "export.csv"))
add("label-stats-garbage", ["label", "stats"], lambda f: [], "g3.db", out_flag="--store",
    out=lambda f: f.write("g3.db", b"y" * 500))
add("label-simulate-gold", ["label", "simulate"], lambda f: ["--gold", "oracle"], "--gold", out_flag="--store",
    out=lambda f: f.store)
add("label-simulate-import-0xff", ["label", "simulate"],
    lambda f: ["--import-jsonl", str(f.write("items-ff.jsonl", b'{"prompt": "\xff", "response_a": "a", '
                                                                b'"response_b": "b"}\n'))],
    "items-ff.jsonl", out_flag="--store", out=lambda f: new(f, "sim.db"))
add("label-cli-annotator", ["label", "cli"], lambda f: ["--annotator", "bad\tname"], "annotator", out_flag="--store",
    out=lambda f: f.store)

# ---- data prepare / tokenizer train
add("data-input-missing", ["data", "prepare"], lambda f: ["--input", str(f.root / "nocorpus.txt")], "nocorpus.txt",
    out_flag="--out")
add("data-dataset-unknown", ["data", "prepare"], lambda f: ["--dataset", "wikipedia"], "wikipedia", out_flag="--out")
add("data-out-is-file", ["data", "prepare"], lambda f: ["--input", str(f.corpus)], "a-file", out_flag="--out",
    out=a_file)
add("data-val-fraction", ["data", "prepare"], lambda f: ["--input", str(f.corpus), "--val-fraction", "2"],
    "val_fraction", out_flag="--out")
add("data-input-0xff", ["data", "prepare"], lambda f: ["--input", str(f.write("ff.txt", b"good text\nbad \xff\n"))],
    "ff.txt", out_flag="--out")
add("data-tokenizer-missing", ["data", "prepare"], lambda f: ["--input", str(f.corpus), "--tokenizer",
                                                              f"gpt2:{f.root / 'nogpt2'}"], "nogpt2",
    out_flag="--out")
add("data-tokenizer-garbage", ["data", "prepare"], lambda f: ["--input", str(f.corpus), "--tokenizer",
                                                              str(bad_ckpt(f, "tokenizer"))], "tokenizer.json",
    out_flag="--out")
add("data-offline-download", ["data", "prepare"], lambda f: ["--dataset", "tinyshakespeare", "--cache-dir",
                                                             str(f.root / "cache")], "127.0.0.1", out_flag="--out")
add("tokenizer-input-missing", ["tokenizer", "train"], lambda f: ["--input", str(f.root / "nocorpus.txt")],
    "nocorpus.txt", out_flag="--out")
add("tokenizer-vocab-small", ["tokenizer", "train"], lambda f: ["--input", str(f.corpus), "--vocab-size", "10"],
    "vocab", out_flag="--out")
add("tokenizer-out-is-file", ["tokenizer", "train"], lambda f: ["--input", str(f.corpus), "--vocab-size", "300"],
    "a-file", out_flag="--out", out=a_file)
add("tokenizer-input-0xff", ["tokenizer", "train"], lambda f: ["--input", str(f.write("ff2.txt", b"ok\n\xffno\n")),
                                                               "--vocab-size", "300"], "ff2.txt", out_flag="--out")

# ---- quickstart / compare
add("quickstart-out-is-file", ["quickstart"], lambda f: ["--ai-judge", "lexicon"], "a-file", out_flag="--out",
    out=a_file)
add("quickstart-ai-judge", ["quickstart"], lambda f: ["--ai-judge", "oracle"], "ai_judge", out_flag="--out")
add("quickstart-device", ["quickstart"], lambda f: ["--ai-judge", "lexicon", "--device", "cdua"], "--device",
    out_flag="--out")
add("compare-config-missing", ["compare"], lambda f: [str(f.root / "nocompare.yaml")], "nocompare.yaml",
    out_flag="--out-dir")
add("compare-config-unknown", ["compare"], lambda f: [str(f.write("cmp-unknown.yaml", "policyy: x\n"))], "policyy",
    out_flag="--out-dir")
add("compare-policy-missing", ["compare"], lambda f: ["--policy", str(f.root / "nopolicy")], "nopolicy",
    out_flag="--out-dir")
add("compare-policy-truncated", ["compare"], lambda f: ["--policy", str(bad_ckpt(f, "truncated")),
                                                        "--ai-judge", "lexicon", "--max-prompt-tokens", "16",
                                                        "--max-new-tokens", "16"], "model.safetensors",
    out_flag="--out-dir")
add("compare-device", ["compare"], lambda f: ["--policy", str(f.ckpt), "--ai-judge", "lexicon", "--device", "cdua"],
    "--device", out_flag="--out-dir")


def snapshot(path: Path | None) -> dict[str, str] | None:
    """Every file under ``path`` with its sha256 (None when ``path`` does not exist)."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def test_the_table_is_broad():
    commands = {name.split("-")[0] for name, _, _ in ROWS}
    assert len(ROWS) >= 80 and len({name for name, _, _ in ROWS}) == len(ROWS)
    assert {"pretrain", "sft", "reward", "ppo", "sample", "serve", "chat", "judge", "label", "data", "tokenizer",
            "quickstart", "compare"} <= commands


@pytest.mark.parametrize("name, build, names", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gives_one_line_naming_it(files, name, build, names, capsys, monkeypatch):
    if name == "data-offline-download":  # a closed port on this machine stands in for a network that is down
        from rlfl import download

        spec = download.DATASETS["tinyshakespeare"]
        monkeypatch.setitem(download.DATASETS, "tinyshakespeare",
                            type(spec)(**{**spec.__dict__, "url": "http://127.0.0.1:9/input.txt"}))
        monkeypatch.setattr(download, "download", _no_backoff(download.download))
    argv, out = build(files)
    before = snapshot(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert exc.value.code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlfl: error:") or ": error:" in last, err[-2000:]
    assert names in last, last
    assert snapshot(out) == before, f"{out} changed"


def _no_backoff(fn):
    def call(*args, **kwargs):
        return fn(*args, **{**kwargs, "backoff": 0.0, "retries": 1})
    return call


def test_verbose_adds_the_traceback_to_the_one_line(files, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-v", "sample", str(bad_ckpt(files, "truncated"))])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("rlfl: error:") and "model.safetensors" in err.splitlines()[-1]

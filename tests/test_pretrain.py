"""Continued pretraining (domain adaptation): same tokenizer kept, parent recorded, new-domain loss falls."""

from __future__ import annotations

import json

from rlfl.checkpoint import load_checkpoint
from rlfl.cli import main
from rlfl.instruct_tasks import reverse_words


def _flags(out, steps: int) -> list[str]:
    return ["--out-dir", str(out), "--max-steps", str(steps), "--n-layer", "2", "--n-head", "2", "--n-embd", "64",
            "--block-size", "32", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "5", "--eval-interval",
            str(steps), "--sample-tokens", "0", "--no-progress", "--num-threads", "1"]


def test_continued_pretraining_adapts_to_a_new_domain(synthetic_shards, tmp_path):
    base = tmp_path / "base"
    main(["pretrain", "--data", str(synthetic_shards), *_flags(base, 60)])
    # a new domain, tokenized with the base checkpoint's own tokenizer (`--tokenizer CKPT`)
    domain = tmp_path / "domain.txt"
    domain.write_text("\n".join(c[0]["content"] + " -> " + c[1]["content"] for c in reverse_words(800, seed=3)))
    shards = tmp_path / "domain_shards"
    main(["data", "prepare", "--input", str(domain), "--tokenizer", str(base), "--out", str(shards)])

    cont = tmp_path / "cont"
    main(["pretrain", "--data", str(shards), "--init-from", str(base), *_flags(cont, 60)])
    config = json.loads((cont / "config.json").read_text())
    assert config["parent"] == str(base.resolve())
    assert config["tokenizer"]["fingerprint"] == json.loads((base / "config.json").read_text())["tokenizer"]["fingerprint"]

    def domain_loss(ckpt_dir) -> float:
        import torch
        import torch.nn.functional as F

        from rlfl.data import BatchSampler, load_shards

        model = load_checkpoint(ckpt_dir).model
        x, y = BatchSampler(load_shards(shards).val, 32, 32, seed=9).batch(0)
        with torch.no_grad():
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()

    before, after = domain_loss(base), domain_loss(cont)
    assert after < before - 0.5, (before, after)



def test_shards_without_a_val_split_pretrain_without_evaluation(tmp_path, capfd):
    import csv

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(c[0]["content"] + " -> " + c[1]["content"] for c in reverse_words(600, seed=1)))
    shards = tmp_path / "shards"
    main(["data", "prepare", "--input", str(corpus), "--val-fraction", "0", "--out", str(shards)])
    assert json.loads((shards / "meta.json").read_text())["splits"]["val"]["tokens"] == 0
    out = tmp_path / "base"
    capfd.readouterr()
    assert main(["pretrain", "--data", str(shards), *_flags(out, 20)]) in (0, None)
    assert "no val split (prepared with --val-fraction 0): pretraining without evaluation" in capfd.readouterr().err
    assert json.loads((out / "config.json").read_text())["step"] == 20
    with open(out / "metrics.csv", newline="") as fh:
        names = {row["name"] for row in csv.DictReader(fh)}
    assert "train/loss" in names and not any(n.startswith("val/") for n in names)

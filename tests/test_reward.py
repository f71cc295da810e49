"""Reward models: input format, left truncation, the losses, learning a toy preference, checkpoint round trip."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlfl import checkpoint as ckpt
from rlfl import reward
from rlfl.model import GPT, GPTConfig
from rlfl.preference_data import read_pairs
from rlfl.reward import (RewardBatcher, RewardModel, RewardTrainConfig, bradley_terry_loss, encode_for_reward,
                         encode_reward_data, load_reward_model, score_sequences, train_reward_model)
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig

WORDS = "the movie was very quite rather really plot acting film story".split()


def _filler(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))


def _toy_pairs(path, n: int, seed: int = 0):
    """Pairs that differ in one word: completions with "good" are preferred over the same with "bad"."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = _filler(rng), _filler(rng)
            f.write(json.dumps({"prompt": "Review:", "chosen": f" {a} good {b}", "rejected": f" {a} bad {b}"}) + "\n")
    return path


def _toy_labels(path, n: int, *, scalar: bool, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            word, label = [("good", 1), ("bad", 0), ("fine", 0.5)][i % (3 if scalar else 2)]
            f.write(json.dumps({"text": f"{_filler(rng)} {word} {_filler(rng)}", "label": label}) + "\n")
    return path


def _train_cfg(out, steps: int = 40, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=steps, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, seed=0,
                       weight_decay=0.0, eval_interval=0, checkpoint_interval=0, progress=False, num_threads=1, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An untrained 2-layer, 64-dim byte-level trunk saved as a pretrain checkpoint."""
    tmp = tmp_path_factory.mktemp("reward")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    ckpt.save_checkpoint(tmp / "base", GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=2,
                                                     n_embd=64)), tok, stage="pretrain")
    return tmp


@pytest.fixture(scope="module")
def toy_run(base):
    """A reward model trained on the toy preference through the real Trainer (a few seconds)."""
    data = _toy_pairs(base / "pairs.jsonl", 600)
    cfg = RewardTrainConfig(init_from=str(base / "base"), data=str(data), val_fraction=0.1, stats_samples=100_000,
                            train=_train_cfg(base / "rm"))
    return cfg, train_reward_model(cfg)


# ---------------------------------------------------------------------------------------------- format
def test_input_format_and_left_truncation_keep_the_end(caplog, monkeypatch):
    tok = byte_tokenizer()
    monkeypatch.setattr(reward, "_truncations", reward._TruncationLog())  # a fresh rate limiter
    ids, cut = encode_for_reward(tok, ["Q: hi", ""], [" there", "x"], max_len=64)
    assert [i.tolist() for i in ids] == [tok.encode("Q: hi there") + [tok.eot_id], tok.encode("x") + [tok.eot_id]]
    assert cut == 0 and ids[0].dtype == np.int64
    with caplog.at_level(logging.WARNING, logger="rlfl.reward"):
        ids, cut = encode_for_reward(tok, ["a long prompt that will not fit", "ok"], [" END", "!"], max_len=8)
        assert cut == 1 and tok.decode(ids[0]) == "fit END<|endoftext|>" and len(ids[0]) == 8
        assert "left-truncated 1 sequence(s) longer than 8 tokens to their last 8" in caplog.text
        caplog.clear()
        encode_for_reward(tok, ["another prompt too long"], [" again"], max_len=8)  # within a minute: quiet
        assert caplog.text == ""
        monkeypatch.setattr(reward._truncations, "last", -math.inf)  # a minute later: says 2 since the last
        encode_for_reward(tok, ["a third prompt too long"], [" yes"], max_len=8)
        assert "left-truncated 2 sequence(s)" in caplog.text


def test_bradley_terry_loss_matches_a_hand_computation():
    chosen, rejected = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, 1.5, 2.5])
    sig = lambda z: 1 / (1 + math.exp(-z))
    plain = -(math.log(sig(1.0)) + math.log(sig(-1.0)) + math.log(sig(-0.5))) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(plain, abs=1e-6)
    margin = torch.tensor([0.5, 0.0, 0.0])
    with_margin = -(math.log(sig(0.5)) + math.log(sig(-1.0)) + math.log(sig(-0.5))) / 3
    assert float(bradley_terry_loss(chosen, rejected, margin)) == pytest.approx(with_margin, abs=1e-6)
    # the third pair a tie: 0.5/0.5 cross-entropy on the difference
    target = torch.tensor([1.0, 1.0, 0.5])
    tie = -(0.5 * math.log(sig(-0.5)) + 0.5 * math.log(sig(0.5)))
    mixed = (-math.log(sig(0.5)) - math.log(sig(-1.0)) + tie) / 3
    assert float(bradley_terry_loss(chosen, rejected, margin, target)) == pytest.approx(mixed, abs=1e-6)


def test_score_is_independent_of_padding_and_batch_order():
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = RewardModel(GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=64)))
    seqs, _ = encode_for_reward(tok, ["a", "a much longer prompt here"], ["b", " and a completion"], max_len=64)
    together = score_sequences(model, seqs, pad_id=tok.pad_id)
    alone = [score_sequences(model, [s], pad_id=tok.pad_id)[0] for s in seqs]
    assert together.dtype == np.float64 and together.shape == (2,)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_batches_are_reproducible_and_ranks_disjoint(tmp_path):
    tok = byte_tokenizer()
    ex = encode_reward_data(read_pairs(_toy_pairs(tmp_path / "p.jsonl", 40)), tok, 64)
    a = RewardBatcher(ex, 4, pad_id=tok.pad_id, seed=3)
    b = RewardBatcher(ex, 4, pad_id=tok.pad_id, seed=3)
    for step in (0, 7, 25):  # 25 crosses into a later epoch
        assert all(torch.equal(x, y) for x, y in zip(a.batch(step), b.batch(step)))
    x, lengths, margin, target = a.batch(0)
    assert x.shape[0] == 8 and lengths.shape == (8,) and margin.shape == target.shape == (4,)
    assert tok.decode(x[0, : lengths[0]]).endswith("<|endoftext|>") and (x[:, -1] != tok.pad_id).any()
    r0, r1 = (RewardBatcher(ex, 4, pad_id=tok.pad_id, seed=3, rank=r, world_size=2) for r in (0, 1))
    rows = lambda t: {tuple(row.tolist()) for row in t[0]}
    assert not rows(r0.batch(1)) & rows(r1.batch(1))


# ---------------------------------------------------------------------------------------------- training
def test_a_tiny_reward_model_learns_a_toy_preference(toy_run):
    cfg, out = toy_run
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "reward" and config["parent"] == str(Path(cfg.init_from).resolve())
    stats = config["reward"]
    assert stats["kind"] == "pairs" and stats["loss"] == "bt" and stats["max_len"] == 64
    assert stats["val_accuracy"] >= 0.9 and stats["val_items"] == 60
    assert stats["std"] > 0 and config["data"]["train"] == 540
    scorer = load_reward_model(out, normalize=False)
    fresh = [" the film good", " rather bad plot", " acting was good really", " very bad"]
    s = scorer.score(["Review:"] * 4, fresh)
    assert s[0] > s[1] and s[2] > s[3]  # it generalises to unseen word orders


def test_checkpoint_round_trip_and_normalisation(toy_run):
    cfg, out = toy_run
    stats = json.loads((out / "config.json").read_text())["reward"]
    c = ckpt.load_checkpoint(out)
    in_memory = RewardModel(c.model)
    ckpt.load_into(in_memory, c)
    pairs = read_pairs(cfg.data).pairs[:50]
    prompts, texts = [p.prompt for p in pairs], [p.chosen for p in pairs]
    seqs, _ = encode_for_reward(c.tokenizer, prompts, texts, 64)
    raw = score_sequences(in_memory, seqs, pad_id=c.tokenizer.pad_id)
    # the same batches give the same numbers exactly; other batch sizes pad differently (float rounding only)
    np.testing.assert_array_equal(load_reward_model(out, normalize=False).score(prompts, texts), raw)
    np.testing.assert_allclose(load_reward_model(out, normalize=False, batch_size=7).score(prompts, texts), raw,
                               rtol=1e-5)
    normed = load_reward_model(out).score(prompts, texts)
    assert normed.dtype == np.float64
    np.testing.assert_allclose(normed, (raw - stats["mean"]) / stats["std"], rtol=1e-12)
    # stats_samples covered every training text, so those texts score mean 0, std 1 once normalised
    from rlfl.sft_data import split_examples

    train_pairs, _ = split_examples(read_pairs(cfg.data).pairs, cfg.val_fraction, cfg.train.seed)
    assert stats["n_stats"] == 2 * len(train_pairs)
    everything = load_reward_model(out).score([p.prompt for p in train_pairs for _ in range(2)],
                                              [t for p in train_pairs for t in (p.chosen, p.rejected)])
    assert abs(everything.mean()) < 1e-4 and everything.std() == pytest.approx(1.0, abs=1e-4)


def test_resuming_a_finished_run_is_a_no_op(toy_run):
    cfg, out = toy_run
    before = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json", "metrics.csv")}
    train_reward_model(cfg)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_scorer_input_errors_and_non_reward_checkpoints(base, toy_run):
    _, out = toy_run
    scorer = load_reward_model(out)
    with pytest.raises(ValueError, match="got 2 prompts but 1 completions"):
        scorer.score(["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"completions\[1\] is int, not str"):
        scorer.score(["a", "b"], ["c", 3])
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="'pretrain' checkpoint with no reward head"):
        load_reward_model(base / "base")
    # a reward checkpoint without recorded statistics (e.g. training stopped early)
    c = ckpt.load_checkpoint(out)
    model = RewardModel(c.model)
    ckpt.save_checkpoint(base / "nostats", model, c.tokenizer, stage="reward")
    with pytest.raises(ValueError, match="no reward mean/std .* normalize=False"):
        load_reward_model(base / "nostats")
    assert load_reward_model(base / "nostats", normalize=False).score(["a"], ["b"]).shape == (1,)


@pytest.mark.parametrize("scalar", [False, True])
def test_labels_train_with_bce_or_mse(base, scalar):
    data = _toy_labels(base / f"labels{scalar}.jsonl", 600, scalar=scalar)
    out = train_reward_model(RewardTrainConfig(init_from=str(base / "base"), data=str(data), val_fraction=0.1,
                                               train=_train_cfg(base / f"rm-labels{scalar}")))
    stats = json.loads((out / "config.json").read_text())["reward"]
    assert stats["kind"] == "labels" and stats["loss"] == ("mse" if scalar else "bce")
    assert stats["val_accuracy"] >= 0.9
    rng = random.Random(99)  # fresh texts of each kind
    scorer = load_reward_model(out, normalize=False)
    means = {w: scorer.score([""] * 30, [f"{_filler(rng)} {w} {_filler(rng)}" for _ in range(30)]).mean()
             for w in ("good", "fine", "bad")}
    if scalar:  # squared error fits the labels themselves: 1, 0.5, 0
        assert means["good"] > means["fine"] > means["bad"], means
        assert means == pytest.approx({"good": 1.0, "fine": 0.5, "bad": 0.0}, abs=0.2)
    else:  # logistic: positive logits for 1, negative for 0
        assert means["good"] > 1.0 and means["bad"] < -1.0, means


def test_frozen_trunk_trains_only_the_head(base):
    data = _toy_pairs(base / "pairs-frozen.jsonl", 100)
    out = train_reward_model(RewardTrainConfig(init_from=str(base / "base"), data=str(data), freeze_trunk=True,
                                               val_fraction=0.0, train=_train_cfg(base / "rm-frozen", steps=5)))
    before, after = ckpt.load_checkpoint(base / "base"), ckpt.load_checkpoint(out)
    assert all(torch.equal(v, after.model.state_dict()[k]) for k, v in before.model.state_dict().items())
    torch.manual_seed(0)  # the seed of _train_cfg: the head's initial weights
    initial = RewardModel(before.model).head.weight.detach()
    assert not torch.allclose(after.heads["head.weight"], initial)
    assert "val_accuracy" not in json.loads((out / "config.json").read_text())["reward"]


def test_config_errors_say_the_fix(base):
    with pytest.raises(ValueError, match="pass --data FILE"):
        RewardTrainConfig()
    with pytest.raises(ValueError, match="--label-loss auto, bce or mse"):
        RewardTrainConfig(data="x.jsonl", label_loss="hinge")
    with pytest.raises(ValueError, match="--format auto, pairs or labels"):
        RewardTrainConfig(data="x.jsonl", format="csv")
    data = _toy_pairs(base / "pairs-err.jsonl", 20)
    with pytest.raises(ValueError, match="block_size=65 exceeds the model's maximum context 64; pass --block-size 64"):
        train_reward_model(RewardTrainConfig(init_from=str(base / "base"), data=str(data), block_size=65,
                                             train=_train_cfg(base / "rm-err")))
    labels = _toy_labels(base / "labels-err.jsonl", 20, scalar=False)
    with pytest.raises(ValueError, match="holds labels but --data .* holds pairs"):
        train_reward_model(RewardTrainConfig(init_from=str(base / "base"), data=str(data), val_data=str(labels),
                                             train=_train_cfg(base / "rm-err")))


def test_huge_labels_are_refused_and_constant_labels_warned_about(base, caplog):
    huge = base / "huge.jsonl"
    huge.write_text("".join(json.dumps({"text": f"text {i}", "label": 1e30 if i == 3 else 0.5}) + "\n"
                            for i in range(20)))
    with pytest.raises(ValueError, match=r"huge.jsonl: a label of magnitude 1e\+30 .* rescale the labels"):
        train_reward_model(RewardTrainConfig(init_from=str(base / "base"), data=str(huge), val_fraction=0.1,
                                             train=_train_cfg(base / "rm-huge", steps=2)))
    assert not (base / "rm-huge" / "model.safetensors").exists()  # refused before anything was written
    ones = base / "ones.jsonl"
    ones.write_text("".join(json.dumps({"text": f"text {i}", "label": 1}) + "\n" for i in range(20)))
    with caplog.at_level("WARNING", logger="rlfl.reward"):
        train_reward_model(RewardTrainConfig(init_from=str(base / "base"), data=str(ones), val_fraction=0.1,
                                             train=_train_cfg(base / "rm-ones", steps=2)))
    assert "every one of the 20 labels is 1: a reward model can only learn a constant" in caplog.text

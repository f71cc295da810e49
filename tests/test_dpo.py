"""DPO/IPO: the loss by hand, log 2 at the start, learning a toy preference, `rlfl dpo`, bad inputs."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from rlfl import checkpoint as ckpt
from rlfl.chat_template import is_chat_checkpoint
from rlfl.cli import main
from rlfl.dpo import DPOBatcher, DPOConfig, DPOLoss, completion_logps, dpo, encode_pairs
from rlfl.evaluate import Sample, completion_logprobs
from rlfl.model import GPT, GPTConfig
from rlfl.preference_data import PreferencePair
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig

WORDS = "the movie was very quite rather really plot acting film story".split()


def _tiny(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=byte_tokenizer().n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=64))


def _toy_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Pairs that differ in one word: the completion with "good" is preferred over the same with "bad"."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(2))
        out.append(PreferencePair("Review:", f" {a} good {b}", f" {a} bad {b}"))
    return out


def _write(path, pairs: list[PreferencePair]):
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs))
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """An untrained byte-level GPT saved twice: as a pretrain (plain-text) and as an SFT (chat) checkpoint."""
    tmp = tmp_path_factory.mktemp("dpo")
    for stage in ("pretrain", "sft"):
        ckpt.save_checkpoint(tmp / stage, _tiny(0), byte_tokenizer(), stage=stage)
    return tmp


def _hand_logps(model: GPT, seq, start: int) -> float:
    """Summed log-prob of seq[start:] from one unpadded forward of the whole sequence."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq.tolist()]))[0].double(), -1)
    return sum(float(logp[t - 1, seq[t]]) for t in range(start, len(seq)))


# ---------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_loss_equals_a_hand_computation(loss_type, smoothing):
    tok = byte_tokenizer()
    policy, reference = _tiny(0), _tiny(1)
    pairs = [PreferencePair("Q: hi", " yes, really", " no"), PreferencePair("", " ok", " a much longer no"),
             PreferencePair("Say something nice about the film", " lovely", " dull!")]
    ex = encode_pairs(pairs, tok, chat=False, max_len=64)
    batch = DPOBatcher(ex, 3, pad_id=tok.pad_id).assemble([0, 1, 2])
    # the rows: chosen sides, then rejected sides; labels are exactly the completion tokens + <|endoftext|>
    x, labels = batch
    for j, (pair, side) in enumerate([(p, s) for s in ("chosen", "rejected") for p in pairs]):
        assert tok.decode(labels[j][labels[j] != -100]) == getattr(pair, side) + "<|endoftext|>"
    beta = 0.3
    loss, metrics = DPOLoss(reference, beta=beta, loss_type=loss_type, label_smoothing=smoothing)(policy, batch)

    seqs, starts = ex.seqs, ex.starts
    n_tok = [len(s) - int(k) for s, k in zip(seqs, starts)]
    pol = [_hand_logps(policy, s, int(k)) for s, k in zip(seqs, starts)]
    ref = [_hand_logps(reference, s, int(k)) for s, k in zip(seqs, starts)]
    # the library's one completion log-prob reader agrees with the hand computation
    samples = [Sample(s[:k].tolist(), s[k:].tolist(), "", True) for s, k in zip(seqs, starts)]
    assert [float(lp.sum()) for lp in completion_logprobs(reference, samples, pad_id=tok.pad_id)] == \
        pytest.approx(ref, abs=1e-4)
    if loss_type == "ipo":
        pol, ref = [p / n for p, n in zip(pol, n_tok)], [r / n for r, n in zip(ref, n_tok)]
    rewards_c = [beta * (pol[2 * i] - ref[2 * i]) for i in range(3)]
    rewards_r = [beta * (pol[2 * i + 1] - ref[2 * i + 1]) for i in range(3)]
    log_sig = lambda z: -math.log1p(math.exp(-z))
    losses = []
    for rc, rr in zip(rewards_c, rewards_r):
        h = (rc - rr) / beta
        if loss_type == "ipo":
            losses.append((h - 1 / (2 * beta)) ** 2)
        else:
            losses.append(-(1 - smoothing) * log_sig(beta * h) - smoothing * log_sig(-beta * h))
    assert float(loss.detach()) == pytest.approx(sum(losses) / 3, abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(sum(c > r for c, r in zip(rewards_c, rewards_r)) / 3)
    assert metrics["margin"] == pytest.approx(sum(c - r for c, r in zip(rewards_c, rewards_r)) / 3, abs=1e-5)
    assert metrics["chosen_reward"] == pytest.approx(sum(rewards_c) / 3, abs=1e-5)
    assert metrics["rejected_reward"] == pytest.approx(sum(rewards_r) / 3, abs=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_policy_equal_to_its_reference_gives_log_2_and_no_reward(loss_type):
    tok = byte_tokenizer()
    policy = _tiny(0).train()
    ex = encode_pairs(_toy_pairs(8, seed=0), tok, chat=True, max_len=64)
    batch = DPOBatcher(ex, 8, pad_id=tok.pad_id).batch(0)
    loss, m = DPOLoss(copy.deepcopy(policy), beta=0.1, loss_type=loss_type)(policy, batch)
    expected = math.log(2) if loss_type == "sigmoid" else (1 / (2 * 0.1)) ** 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert m == {"accuracy": 0.0, "margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0}


def test_the_reference_stays_frozen_while_the_policy_moves():
    tok = byte_tokenizer()
    policy = _tiny(0).train()
    loss_fn = DPOLoss(copy.deepcopy(policy), beta=0.1)
    before = {k: v.clone() for k, v in loss_fn.reference.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    batcher = DPOBatcher(encode_pairs(_toy_pairs(16, seed=0), tok, chat=False, max_len=64), 8, pad_id=tok.pad_id)
    for step in range(3):
        loss, _ = loss_fn(policy, batcher.batch(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(v, loss_fn.reference.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in loss_fn.reference.parameters()) and not loss_fn.reference.training
    assert not torch.equal(before["wte.weight"], policy.state_dict()["wte.weight"])


def test_encoding_keeps_the_same_prompt_tail_on_both_sides():
    tok = byte_tokenizer()
    ex = encode_pairs([PreferencePair("a long prompt here", " yes!", " no")], tok, chat=True, max_len=12)
    chosen, rejected = ex.seqs
    assert len(chosen) == 12 and ex.cut_prompts == 1 and ex.cut_completions == 0
    assert chosen[: ex.starts[0]].tolist() == rejected[: ex.starts[1]].tolist()
    assert tok.decode(chosen) == "here<|end|><|assistant|> yes!<|end|>"
    # completions too long for the block keep their start (and at least one prompt token stays)
    ex = encode_pairs([PreferencePair("p", " " + "x" * 20, " y")], tok, chat=False, max_len=8, append_stop=False)
    assert [len(s) for s in ex.seqs] == [8, 3] and ex.starts.tolist() == [1, 1] and ex.cut_completions == 1


# ---------------------------------------------------------------------------------------------- stage
def _train(out, steps: int, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=steps, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                       weight_decay=0.0, eval_interval=0, checkpoint_interval=0, seed=0, progress=False,
                       num_threads=1, **kw)


def _val_margin(model: GPT, pairs: list[PreferencePair]) -> float:
    """Mean summed log-prob of chosen minus rejected completions, over held-out pairs."""
    tok = byte_tokenizer()
    x, labels = DPOBatcher(encode_pairs(pairs, tok, chat=False, max_len=64), len(pairs),
                           pad_id=tok.pad_id).assemble(list(range(len(pairs))))
    with torch.no_grad():
        logps, _ = completion_logps(model.eval(), x, labels)
    return float((logps[: len(pairs)] - logps[len(pairs):]).mean())


def test_dpo_learns_a_toy_preference_on_held_out_pairs(bases):
    data = _write(bases / "train.jsonl", _toy_pairs(400, seed=0))
    held_out = _toy_pairs(40, seed=1)
    out = dpo(DPOConfig(init_from=str(bases / "pretrain"), data=str(data), val_fraction=0.1, num_samples=1,
                        sample_tokens=8, train=_train(bases / "dpo", 40)))
    trained, start = ckpt.load_checkpoint(out), ckpt.load_checkpoint(bases / "pretrain")
    assert trained.config["stage"] == "dpo" and not is_chat_checkpoint(trained.config)  # plain-text prompts
    before, after = _val_margin(start.model, held_out), _val_margin(trained.model, held_out)
    assert after > before + 2.0, (before, after)
    report = json.loads((out / "dpo_report.json").read_text())
    assert report["val_before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert report["val_before"]["val/accuracy"] == 0.0
    # the implicit rewards are measured against the starting weights, which did not move with the policy
    assert report["val_after"]["val/loss"] < 0.3 and report["val_after"]["val/accuracy"] > 0.9
    assert report["val_after"]["val/margin"] > 1.0
    assert {"prompt", "answer", "before"} <= set(report["samples"][0])
    assert trained.config["data"]["train"] + trained.config["data"]["val"] == 400


def test_rlfl_dpo_end_to_end_writes_a_chat_dpo_checkpoint(bases, capsys):
    data = _write(bases / "cli.jsonl", _toy_pairs(24, seed=2))
    out = bases / "cli-dpo"
    main(["dpo", "--init-from", str(bases / "sft"), "--data", str(data), "--out-dir", str(out), "--max-steps", "3",
          "--batch-size", "4", "--no-progress", "--eval-interval", "3", "--num-samples", "1", "--sample-tokens", "4",
          "--loss-type", "ipo", "--num-threads", "1"])
    assert f"checkpoint: {out}" in capsys.readouterr().out
    done = ckpt.load_checkpoint(out)
    assert done.config["stage"] == "dpo" and done.step == 3 and done.config["parent"] == str((bases / "sft").resolve())
    # the SFT start is a chat checkpoint, so the prompts were user turns and the result is one too
    assert done.config["dpo"]["chat_template"] is True and is_chat_checkpoint(done.config)
    assert done.config["dpo"]["loss_type"] == "ipo"
    # the same command with more steps resumes the run from its checkpoint
    main(["dpo", "--init-from", str(bases / "sft"), "--data", str(data), "--out-dir", str(out), "--max-steps", "5",
          "--batch-size", "4", "--no-progress", "--num-samples", "0", "--loss-type", "ipo", "--num-threads", "1"])
    assert ckpt.load_checkpoint(out).step == 5
    assert json.loads((out / "dpo_report.json").read_text())["val_before"] is None  # measured by the first run


# ---------------------------------------------------------------------------------------------- bad inputs
def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # log lines (what was read) may come first
    assert err.startswith("rlfl: error: "), err
    return err


def test_bad_inputs_end_in_one_line_naming_the_flag(bases, capsys, tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", _toy_pairs(8, seed=3))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    base = ["dpo", "--init-from", str(bases / "pretrain"), "--out-dir", str(tmp_path / "out"), "--no-progress"]
    err = _error(capsys, [*base, "--data", str(labels)])
    assert "--data" in err and "labels.jsonl" in err and "pairs" in err
    for flags, named in ((["--beta", "0"], "--beta"), (["--beta", "-1"], "--beta"),
                         (["--loss-type", "hinge"], "--loss-type"),
                         (["--loss-type", "ipo", "--label-smoothing", "0.1"], "--label-smoothing"),
                         (["--label-smoothing", "0.5"], "--label-smoothing")):
        err = _error(capsys, [*base, "--data", str(pairs), *flags])
        assert named in err, (flags, err)
    assert not (tmp_path / "out").exists()  # nothing written

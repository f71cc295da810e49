"""The synthetic task's preparation: SFT records, pair sampling and labelling, and the staged pipeline."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from rlfl import checkpoint as ckpt
from rlfl.chat_template import render_chat
from rlfl.envs.prompts import synthetic_review_prompts
from rlfl.envs.rewards import GoldSentiment
from rlfl.model import GPT, GPTConfig
from rlfl.preference_data import read_pairs
from rlfl.reward import load_reward_model
from rlfl.synthetic import generate_reviews, gold_sentiment
from rlfl.synthetic_task import (SyntheticTaskConfig, cut_response, gold_positive_rate, label_pairs,
                                 prepare_synthetic_task, review_sft_records, sample_pairs, write_jsonl)
from rlfl.tokenizer import byte_tokenizer

# A barely trained tiny policy writes near-gibberish, so few pairs are decisive: sample many short ones, keep all.
# One torch thread: on a shared 2-core machine two threads of tiny ops mostly wait for each other.
TINY = dict(corpus_docs=300, n_layer=2, n_head=2, n_embd=64, block_size=96, pretrain_steps=30,
            pretrain_batch_size=8, sft_reviews=300, sft_steps=20, sft_batch_size=8, n_pairs=1024, pair_min_margin=0.0,
            max_new_tokens=8, rm_steps=4, rm_batch_size=4, device="cpu", progress=False, num_threads=1)


class Length:
    """A judge that scores a completion by its length, so ties are easy to make on purpose."""

    name = "length"

    def score(self, prompts, completions):
        return np.array([len(c) for c in completions], dtype=float)


# ------------------------------------------------------------------------------------------ SFT records
def test_cut_response_prefers_a_sentence_end_then_a_word_end():
    assert cut_response(" good.", 31) == " good."  # fits whole
    assert cut_response(" good. The battery lasted all day long.", 20) == " good."
    assert cut_response(" was fine but the battery died", 20) == " was fine but the"
    assert cut_response(" extraordinarily", 5) == ""


def test_review_sft_records_follow_the_env_prompts_and_fit_the_byte_budget():
    tok = byte_tokenizer()
    n, seed = 200, 3
    records = review_sft_records(n, seed=seed)
    texts = [" ".join(r.text.split()) for r in generate_reviews(n, seed=seed)]
    env_prompts = list(synthetic_review_prompts(n, seed=seed))
    assert n - 10 <= len(records) <= n
    kept = iter(zip(env_prompts, texts))
    for r in records:
        assert set(r) == {"prompt", "response"}
        # same prompts as the env pool of that seed, in order (a review with no continuation is skipped)
        prompt, text = next((p, t) for p, t in kept if p == r["prompt"])
        assert 2 <= len(prompt.split()) <= 6
        assert text.startswith(prompt + r["response"]) and r["response"].startswith(" ")
        _, mask = render_chat(tok, [{"role": "user", "content": r["prompt"]},
                                    {"role": "assistant", "content": r["response"]}])
        assert sum(mask) <= 32  # response + <|end|> fit the env's 32 new tokens
    short = review_sft_records(n, seed=seed, max_response_bytes=10)
    assert all(len(r["response"].encode()) <= 10 for r in short)


def test_sentiment_only_keeps_non_neutral_records():
    everything = review_sft_records(300, seed=1)
    records = review_sft_records(300, seed=1, sentiment_only=True)
    assert 0 < len(records) < len(everything)
    assert all(gold_sentiment(r["prompt"] + r["response"]) != 0 for r in records)
    assert [r for r in everything if gold_sentiment(r["prompt"] + r["response"]) != 0] == records


def test_review_sft_records_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n=0"):
        review_sft_records(0, seed=0)
    with pytest.raises(ValueError, match="max_response_bytes=0"):
        review_sft_records(5, seed=0, max_response_bytes=0)


# ------------------------------------------------------------------------------------------ labelling
def test_label_pairs_picks_the_higher_gold_score_and_drops_ties():
    pairs = [("The soup was", " great.", " awful."), ("The soup was", " awful.", " great."),
             ("The soup was", " fine.", " fine."),  # identical: a tie
             ("The soup was", " on the table.", " in a bowl."),  # both neutral: a tie
             ("The soup was", " good.", "  ")]  # a blank side cannot be a pair
    records = label_pairs(pairs, GoldSentiment())
    want = {"prompt": "The soup was", "chosen": " great.", "rejected": " awful.", "source": "gold_sentiment"}
    assert records == [want, want]


def test_label_pairs_ties_are_exact_unless_a_margin_is_given():
    pairs = [("p", "abc", "abd"), ("p", "abcd", "ab"), ("p", "a", "abc")]
    assert [(r["chosen"], r["rejected"]) for r in label_pairs(pairs, Length())] == [("abcd", "ab"), ("abc", "a")]
    assert [(r["chosen"], r["rejected"]) for r in label_pairs(pairs, Length(), min_margin=2.0)] == []
    assert len(label_pairs(pairs, Length(), min_margin=1.5)) == 2
    with pytest.raises(ValueError, match="min_margin"):
        label_pairs(pairs, Length(), min_margin=-1)


def test_pairs_file_round_trips_through_read_pairs(tmp_path):
    records = label_pairs([("Dinner was", " lovely, thanks", " a disaster"), ("Ünïcode", " \"quoted\"\nline", " b")],
                          Length())
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    data = read_pairs(path)
    assert [(p.prompt, p.chosen, p.rejected, p.source) for p in data.pairs] == \
        [(r["prompt"], r["chosen"], r["rejected"], r["source"]) for r in records]
    assert os.listdir(tmp_path) == ["pairs.jsonl"]  # no temp file left behind
    write_jsonl(path, records[:1])  # replaced whole
    assert len(read_pairs(path)) == 1


# ------------------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=262, block_size=96, n_layer=2, n_head=2, n_embd=64))
    path = tmp_path_factory.mktemp("policy")
    ckpt.save_checkpoint(path, model, byte_tokenizer(), stage="sft")
    return path


def test_sample_pairs_is_deterministic_with_a_seed(tiny_policy):
    prompts = ["The soup was", "I bought this"]
    a = sample_pairs(tiny_policy, prompts, n_pairs=5, seed=7, max_new_tokens=8, batch_size=4)
    assert a == sample_pairs(tiny_policy, prompts, n_pairs=5, seed=7, max_new_tokens=8, batch_size=4)
    assert a != sample_pairs(tiny_policy, prompts, n_pairs=5, seed=8, max_new_tokens=8, batch_size=4)
    assert [p for p, _, _ in a] == ["The soup was", "I bought this"] * 2 + ["The soup was"]
    assert any(x != y for _, x, y in a)  # two samples, not one twice
    with pytest.raises(ValueError, match="no prompts"):
        sample_pairs(tiny_policy, [], n_pairs=1, seed=0)


def test_gold_positive_rate_of_a_random_policy(tiny_policy):
    r = gold_positive_rate(tiny_policy, ["The soup was", "I bought this"], n=20, seed=0, max_new_tokens=8)
    assert r.n == 20 and 0.0 <= r.positive_rate <= 1.0 and 0.0 <= r.stop_rate <= 1.0
    assert 0 < r.mean_tokens <= 8
    assert r == gold_positive_rate(tiny_policy, ["The soup was", "I bought this"], n=20, seed=0, max_new_tokens=8)


# ------------------------------------------------------------------------------------------ the pipeline
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()  # the training loop sets the process-wide thread count
    yield
    torch.set_num_threads(threads)


def test_prepare_synthetic_task_builds_every_stage_then_skips_them(tmp_path, caplog, restore_threads):
    with caplog.at_level(logging.INFO, logger="rlfl.synthetic_task"):
        task = prepare_synthetic_task(tmp_path / "task", **TINY)
    stages = ["corpus", "pretrain", "sft_data", "sft", "pairs", "reward_model"]
    assert list(task.figures["seconds"]) == stages and task.figures["skipped"] == []
    for path in (task.base, task.sft, task.reward_model):
        assert ckpt.load_checkpoint(path).model.config.n_embd == 64
    assert ckpt.read_config(task.sft)["stage"] == "sft"
    pairs = read_pairs(task.pairs)
    assert len(pairs) == task.figures["pairs_kept"] > 0
    gold = GoldSentiment()
    for p in pairs.pairs:  # gold-labelled: chosen scores higher
        assert gold.score([p.prompt], [p.chosen])[0] > gold.score([p.prompt], [p.rejected])[0]
    assert load_reward_model(task.reward_model).score(["The soup was"], [" great."]).shape == (1,)

    mtimes = {p: os.path.getmtime(p / "model.safetensors") for p in (task.base, task.sft, task.reward_model)}
    pairs_mtime = os.path.getmtime(task.pairs)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlfl.synthetic_task"):
        again = prepare_synthetic_task(tmp_path / "task", **{**TINY, "progress": True})  # runtime-only change
    assert again.figures["skipped"] == stages
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")]
    assert len(skip_lines) == len(stages) and all("skipped" in line for line in skip_lines)
    assert mtimes == {p: os.path.getmtime(p / "model.safetensors") for p in mtimes}
    assert os.path.getmtime(task.pairs) == pairs_mtime
    assert again.figures["rm_val_accuracy"] == task.figures["rm_val_accuracy"]

    with pytest.raises(ValueError, match="sft_steps=20, not 21"):
        prepare_synthetic_task(tmp_path / "task", **{**TINY, "sft_steps": 21})
    with pytest.raises(ValueError, match="unknown setting 'sft_step'"):
        prepare_synthetic_task(tmp_path / "task", sft_step=3)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="rm_init"):
        SyntheticTaskConfig(rm_init="rm")
    with pytest.raises(ValueError, match="n_pairs=0"):
        SyntheticTaskConfig(n_pairs=0)
    with pytest.raises(ValueError, match="block_size=40"):
        SyntheticTaskConfig(block_size=40)

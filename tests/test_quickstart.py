"""`rlfl quickstart`: config checks, a tiny run from raw text to the report, reuse of finished stages."""

from __future__ import annotations

import json

import pytest

from rlfl.feedback.store import LabelStore
from rlfl.quickstart import QuickstartConfig, format_summary, quickstart

TINY = {"corpus_docs": 300, "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 96, "pretrain_steps": 30,
        "pretrain_batch_size": 8, "sft_reviews": 600, "sft_steps": 30, "sft_batch_size": 16, "n_pairs": 64,
        "rm_steps": 10, "rm_batch_size": 16,
        "ai_judge": "lexicon", "ppo_timesteps": 512, "eval_prompts": 16, "seeds": [0, 1],
        "progress": False, "num_threads": 1, "plots": False}


@pytest.mark.parametrize("overrides, message", [
    ({"pretrain_steps": 0}, "QuickstartConfig.pretrain_steps=0 must be an integer >= 1; fix --pretrain-steps"),
    ({"n_embd": 100, "n_head": 3}, "n_embd=100 is not a multiple of n_head=3"),
    ({"block_size": 32}, "QuickstartConfig.block_size=32 is shorter than max_prompt_tokens \\+ max_new_tokens = 40"),
    ({"noise": 2.0}, "QuickstartConfig.noise=2.0 must be a probability"),
    ({"seeds": [1, 1]}, "QuickstartConfig.seeds=[1, 1] must be distinct"),
    ({"device": "tpu"}, "QuickstartConfig.device='tpu'"),
])
def test_bad_settings_name_the_flag(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        QuickstartConfig(**overrides)


def test_tiny_quickstart_from_raw_text_to_report(tmp_path):
    out = tmp_path / "qs"
    results = quickstart(QuickstartConfig(out=str(out), **TINY))
    for name in ("report.md", "results.json", "timing.json", "config.yaml", "labels.db", "task/sft/config.json",
                 "task/base/model.safetensors", "rm_rlhf/config.json", "ppo/rlaif/seed1/ppo_report.json"):
        assert (out / name).is_file(), name
    timing = results["timing"]
    assert {"corpus", "pretrain", "sft_data", "sft", "pairs", "rm_rlhf", "ppo_rlhf_seed0", "evaluate"} <= set(timing)
    assert json.loads((out / "timing.json").read_text()) == timing
    assert results["labels"]["human"]["simulated"] and "lexicon" in results["labels"]["ai"]["source"]
    with LabelStore(out / "labels.db", create=False) as store:
        assert sorted(store.annotators()) == ["sim-0", "sim-1", "sim-2"]
        assert all(label.simulated for label in store.labels())
    assert "SIMULATED" in (out / "report.md").read_text()
    # the corpus is tokenized by a BPE trained on it, and every policy's words are checked against the grammar
    assert json.loads((out / "task/data/tokenizer.json").read_text())["kind"] == "bpe"
    for name, policy in results["policies"].items():
        assert 0.0 <= policy["in_vocab_rate"] <= 1.0, name
    assert "in-vocabulary words" in (out / "report.md").read_text()
    text = format_summary(results)
    assert "rlhf" in text and "gold mean" in text and "agreement" in text

    # a second call reuses every stage (and refuses other task settings on the same folder)
    again = quickstart(QuickstartConfig(out=str(out), **TINY))
    assert {"corpus", "pretrain", "sft", "pairs", "rm_rlaif", "ppo_rlaif_seed1"} <= set(again["timing"]["skipped"])
    assert {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in results.items() if k != "timing"}
    with pytest.raises(ValueError, match="was built with pretrain_steps=30, not 40"):
        quickstart(QuickstartConfig(out=str(out), **{**TINY, "pretrain_steps": 40}))


def test_embed_judge_without_the_extra_is_refused_before_any_stage(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the embed extra .* pip install -e '\.\[embed\]', or pass "
                                         r"--ai-judge lexicon"):
        quickstart(QuickstartConfig(out=str(tmp_path / "qs"), **{**TINY, "ai_judge": "embed"}))
    assert not (tmp_path / "qs" / "task").exists()


def test_summary_columns_fit_long_arm_names():
    ci = [0.5, 0.4, 0.6]
    policy = {"gold_mean": ci, "gold_diff_vs_sft": ci, "gold_positive_rate": ci, "kl": ci, "length": 12.0}
    results = {"policies": {"sft": policy, "rlaif_grpo": policy},
               "labels": {"human": {"n": 4, "simulated": True, "source": "sim"}, "ai": {"n": 4, "source": "ai"},
                          "agreement": {"raw": 0.5, "kappa": None}}}
    header, sft, grpo = format_summary(results).splitlines()[:3]
    assert grpo.startswith("rlaif_grpo ") and len(sft) == len(grpo) == len(header)
    assert header.index("gold mean") + len("gold mean") == sft.index("]") + 1  # the first interval ends under it

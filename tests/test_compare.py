"""`rlfl compare`: bad configs fail before training, a tiny run end to end, determinism, resume, label sources,
algorithms."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlfl.compare import (
    CompareConfig,
    CompareRun,
    compare,
    load_compare_config,
    preflight,
    split_prompts,
    stage_ai_labels,
    stage_items_and_human,
    stage_prompts,
)
from rlfl.checkpoint import is_checkpoint
from rlfl.compare_eval import lexicon_sentiment, prefer_swapped, rollout_scores
from rlfl.feedback.store import LabelStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# the keys every policy of a results.json has
POLICY_KEYS = {"gold_mean", "gold_positive_rate", "win_rate_vs_sft", "gold_diff_vs_sft", "kl", "perplexity",
               "distinct_1", "distinct_2", "length", "per_seed"}


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> dict[str, str]:
    """A tiny chat SFT policy and its base (2 layers x 64 dims, a few dozen steps), built by quickstart's stages."""
    from rlfl.compare import StageClock
    from rlfl.quickstart import QuickstartConfig, build_policy

    out = tmp_path_factory.mktemp("policy")
    cfg = QuickstartConfig(out=str(out), corpus_docs=300, n_layer=2, n_head=2, n_embd=64, block_size=96,
                           pretrain_steps=30, pretrain_batch_size=8, sft_reviews=600, sft_steps=30, sft_batch_size=16,
                           progress=False, num_threads=1)
    base, sft = build_policy(cfg, StageClock(progress=False))
    return {"policy": str(sft), "rm_init": str(base)}


def tiny(out: Path, parts: dict[str, str], **overrides) -> CompareConfig:
    settings = {"out_dir": str(out), **parts, "eval_prompts": 16, "n_pairs": 64, "rm_steps": 10, "rm_batch_size": 16,
                "seeds": [0, 1], "ppo_timesteps": 512, "ppo_eval_prompts": 16, "n_boot": 200, "progress": False,
                "num_threads": 1, "plots": False, **overrides}
    return CompareConfig(**settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ bad configs
def test_unknown_config_key_names_it(tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text("policy: runs/sft\npolcy_lr: 1\nseeds: [0, 1, 2]\n")
    with pytest.raises(ValueError, match="unknown config key 'polcy_lr'; did you mean 'ppo_lr'"):
        load_compare_config(path)
    path.write_text("policy: runs/sft\nppo_lr: 0.0002\nseeds: [0, 1, 2]\n")
    assert load_compare_config(path).ppo_lr == 0.0002


@pytest.mark.parametrize("overrides, message", [
    ({"noise": 1.5}, "CompareConfig.noise=1.5: must be a probability"),
    ({"seeds": [0, 0, 1]}, "CompareConfig.seeds"),
    ({"human": "people"}, "CompareConfig.human='people'"),
    ({"ai_judge": "gpt4"}, "CompareConfig.ai_judge: judge 'gpt4'"),
    ({"per_item": 4}, "per_item=4: must be <= annotators"),
    ({"policy": ""}, "CompareConfig.policy=''"),
])
def test_bad_values_are_refused_with_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**{"policy": "runs/sft", **overrides})


@pytest.mark.parametrize("key, value, kind, shown", [
    ("policy", "missing-sft", FileNotFoundError, "missing-sft: not an rlfl checkpoint directory (policy)"),
    ("rm_init", "missing-base", FileNotFoundError, "missing-base: not an rlfl checkpoint directory (rm_init)"),
    ("gold", "rm:missing-gold", FileNotFoundError, "missing-gold: not a checkpoint directory (gold="),
    ("ai_judge", "lm:missing-judge", FileNotFoundError, "missing-judge: not a checkpoint directory (ai_judge="),
    ("prompts", "missing-prompts.txt", FileNotFoundError, "missing-prompts.txt: no such prompt file (prompts)"),
    ("human", "pairs:missing.jsonl", FileNotFoundError, "missing.jsonl: no such preference file (human="),
    ("ai_judge", "python:no_such_module:fn", ValueError, "ai_judge='python:no_such_module:fn': cannot build"),
])
def test_bad_paths_fail_before_any_stage(tmp_path, policy, key, value, kind, shown):
    cfg = tiny(tmp_path / "out", policy, **{key: str(tmp_path / value) if "missing" in value and ":" not in value
                                             else value})
    with pytest.raises(kind) as err:
        compare(cfg)
    assert shown in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "items.jsonl").exists() and not (tmp_path / "out" / "rm_rlhf").exists()


def test_judge_endpoint_down_fails_before_training(tmp_path, policy):
    cfg = tiny(tmp_path / "out", policy, ai_judge=f"http:http://127.0.0.1:{_free_port()}/v1")
    with pytest.raises(ValueError, match=r"ai_judge='http:http://127\.0\.0\.1:\d+/v1': the judge endpoint is down"):
        compare(cfg)
    assert not (tmp_path / "out" / "items.jsonl").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"algorithms": ["ppo", "sac"]},
     "CompareConfig.algorithms=['ppo', 'sac']: unknown algorithm 'sac'; use any of ppo, grpo, rloo, online_dpo, dpo; "
     "fix --algorithms"),
    ({"algorithms": []}, "CompareConfig.algorithms=[]: pass one or more distinct algorithms"),
    ({"algorithms": ["grpo"], "n_envs": 30},
     "CompareConfig.group_size=4: must divide n_envs (30): GRPO, RLOO and online DPO hand each prompt to "
     "group_size of the n_envs rows; fix --group-size"),
    ({"algorithms": ["rloo"], "group_size": 1}, "CompareConfig.group_size=1: must be an integer >= 2"),
    ({"algorithms": ["grpo"], "grpo_kl_penalty": "both"},
     "CompareConfig.grpo_kl_penalty='both': use loss or reward; fix --grpo-kl-penalty"),
    ({"algorithms": ["dpo"], "direct_rlaif": True}, "CompareConfig.direct_rlaif=True: trains on the AI judge"),
    ({"algorithms": ["dpo"], "dpo_beta": 0.0}, "CompareConfig.dpo_beta=0.0: must be > 0; fix --dpo-beta"),
])
def test_bad_algorithm_settings_name_the_flag(tmp_path, overrides, message):
    with pytest.raises(ValueError) as err:
        CompareConfig(**{"policy": "runs/sft", **overrides})
    assert message in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "compare.yaml"  # a config file gets the same one-line error
    path.write_text(json.dumps({"policy": "runs/sft", **overrides}))
    with pytest.raises(ValueError) as from_file:
        load_compare_config(path)
    assert str(from_file.value) == str(err.value)


def test_algorithm_settings_are_recorded_only_where_they_are_read():
    ppo = CompareRun(CompareConfig(policy="runs/sft", n_envs=30)).settings()  # no group: n_envs is free
    assert not {"algorithms", "group_size", "dpo_beta", "dpo_steps", "dpo_lr", "dpo_batch_size"} & set(ppo)
    both = CompareRun(CompareConfig(policy="runs/sft", algorithms=["ppo", "dpo"])).settings()
    assert both["algorithms"] == ["ppo", "dpo"] and both["dpo_beta"] == 0.1 and "group_size" not in both
    assert {k: v for k, v in both.items() if not k.startswith(("algorithms", "dpo_"))} == ppo | {"n_envs": 32}
    arms = CompareConfig(policy="runs/sft", algorithms=["dpo", "grpo"], direct_rlaif=True).arms
    assert [(a.name, a.folder(1)) for a in arms] == [
        ("rlhf_dpo", ("dpo", "rlhf", "seed1")), ("rlaif_dpo", ("dpo", "rlaif", "seed1")),
        ("rlhf_grpo", ("grpo", "rlhf", "seed1")), ("rlaif_grpo", ("grpo", "rlaif", "seed1")),
        ("direct_rlaif_grpo", ("grpo", "direct_rlaif", "seed1"))]  # no direct arm for DPO: it has no reward


def test_changed_settings_on_the_same_folder_are_refused(tmp_path, policy):
    run = CompareRun(tiny(tmp_path, policy))
    preflight(run)
    with pytest.raises(ValueError, match="was built with rm_steps=10, not 20"):
        preflight(CompareRun(tiny(tmp_path, policy, rm_steps=20)))
    preflight(CompareRun(tiny(tmp_path, policy, num_threads=2, progress=True)))  # runtime fields may change


def test_context_too_small_for_prompt_and_completion(tmp_path, policy):
    with pytest.raises(ValueError, match="exceeds the policy's context"):
        preflight(CompareRun(tiny(tmp_path, policy, max_prompt_tokens=90)))


# ------------------------------------------------------------------------------------------ pieces
def test_lexicon_judge_ignores_negation_and_ratings():
    assert lexicon_sentiment("The soup was", " great.") == 0.75
    assert lexicon_sentiment("The soup was", " not great.") == 0.75  # the gold judge reads this as negative
    assert lexicon_sentiment("", "10/10, five stars") == 0.0


def test_split_prompts_is_disjoint_and_seeded():
    texts = [f"p{i % 50}" for i in range(120)]
    train, held = split_prompts(texts, 10, seed=3)
    assert len(held) == 10 and len(train) == 40 and not set(train) & set(held)
    assert split_prompts(texts, 10, seed=3) == (train, held)
    with pytest.raises(ValueError, match="too few to hold 49 out"):
        split_prompts(texts, 49, seed=0)


def test_prefer_swapped_removes_position_bias():
    class FirstSlot:  # a judge that always likes whatever is shown first
        def prefer(self, prompts, a, b):
            return np.full(len(prompts), 0.9)

    assert prefer_swapped(FirstSlot(), ["p"] * 3, ["x"] * 3, ["y"] * 3).tolist() == [0.5] * 3


def test_rollout_scores_maps_each_rollout_to_its_start(tmp_path):
    # SB3 rows: a rollout's score lands in the next row (2 rollouts past its start); the last row has no timestep
    (tmp_path / "progress.csv").write_text("time/total_timesteps,rollout/score_mean\n100,\n200,0.1\n300,0.2\n,0.3\n")
    (tmp_path / "progress-from-200.csv").write_text("time/total_timesteps,rollout/score_mean\n300,\n,0.25\n")
    assert rollout_scores(tmp_path) == {0: 0.1, 100: 0.2, 200: 0.25}


def _pairs_file(path: Path) -> Path:
    from rlfl.synthetic import generate_reviews

    pos, neg = generate_reviews(40, seed=1, sentiment="positive"), generate_reviews(40, seed=2, sentiment="negative")
    path.write_text("".join(json.dumps({"prompt": "Review:", "chosen": " " + p.text, "rejected": " " + n.text}) + "\n"
                            for p, n in zip(pos, neg)))
    return path


def test_dataset_labels_are_shown_in_random_order_and_agree_with_the_judges(tmp_path, policy):
    cfg = tiny(tmp_path / "out", policy, human=f"pairs:{_pairs_file(tmp_path / 'pairs.jsonl')}", n_pairs=30)
    run = CompareRun(cfg)
    preflight(run)
    for stage in (stage_prompts, stage_items_and_human, stage_ai_labels):
        stage(run)
    items = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    human = [json.loads(line) for line in (tmp_path / "out" / "human_labels.jsonl").read_text().splitlines()]
    ai = [json.loads(line) for line in (tmp_path / "out" / "ai_labels.jsonl").read_text().splitlines()]
    assert len(items) == len(human) == len(ai) == 30
    assert {h["choice"] for h in human} == {"a", "b"} and not any(h["simulated"] for h in human)
    # the positive review is the human's choice; the lexicon judge agrees on (nearly) every such pair
    agree = np.mean([h["choice"] == a["choice"] for h, a in zip(human, ai)])
    assert agree > 0.9
    prefs = [json.loads(line) for line in (tmp_path / "out" / "human_prefs.jsonl").read_text().splitlines()]
    assert all(lexicon_sentiment("", p["chosen"]) > lexicon_sentiment("", p["rejected"]) for p in prefs[:5])


@pytest.mark.parametrize("human", ["simulated", "pairs"])
def test_the_items_compare_writes_are_accepted_by_every_label_command(tmp_path, policy, human, monkeypatch):
    """items.jsonl (with its item, store_id and source fields) imports into label serve, cli and simulate."""
    from rlfl.cli import main
    from rlfl.feedback.web import LabelServeConfig, start_label_server

    spec = "simulated" if human == "simulated" else f"pairs:{_pairs_file(tmp_path / 'pairs.jsonl')}"
    run = CompareRun(tiny(tmp_path / "out", policy, human=spec, n_pairs=12))
    preflight(run)
    stage_prompts(run)
    stage_items_and_human(run)
    items_path = tmp_path / "out" / "items.jsonl"
    items = [json.loads(line) for line in items_path.read_text().splitlines()]
    assert {"item", "store_id" if human == "simulated" else "source"} <= set(items[0])
    assert main(["label", "simulate", "--store", str(tmp_path / "sim.db"), "--import-jsonl", str(items_path)]) == 0
    with start_label_server(LabelServeConfig(store=str(tmp_path / "web.db"), import_jsonl=str(items_path), port=0)):
        pass
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))  # the annotator quits at once
    assert main(["label", "cli", "--store", str(tmp_path / "cli.db"), "--import-jsonl", str(items_path),
                 "--annotator", "ann", "--limit", "0"]) == 0
    for name in ("sim.db", "web.db", "cli.db"):
        with LabelStore(tmp_path / name, create=False) as store:
            got = store.items()
            assert len(got) == len(items) and [it.response_a for it in got] == [it["response_a"] for it in items]
            assert [it.meta["item"] for it in got] == [it["item"] for it in items]  # provenance kept in meta


def test_a_failed_import_leaves_no_store_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    from rlfl.cli import main

    bad = tmp_path / "items.jsonl"
    bad.write_text('{"prompt": "p", "response_a": "x", "response_b": "y"}\n{"prompt": "p", "respons_a": "x"}\n')
    for argv in (["label", "simulate"], ["label", "cli", "--annotator", "ann", "--limit", "0"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--store", str(tmp_path / "new.db"), "--import-jsonl", str(bad)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and f"{bad} line 2" in err and "--on-bad-line skip" in err
        assert not list(tmp_path.glob("new.db*"))  # no empty store (nor its -wal/-shm) left behind
    from rlfl.feedback.web import LabelServeConfig, start_label_server

    with pytest.raises(ValueError, match="line 2"):
        start_label_server(LabelServeConfig(store=str(tmp_path / "new.db"), import_jsonl=str(bad), port=0))
    assert not list(tmp_path.glob("new.db*"))
    # the flag the message names exists on every command that imports
    assert main(["label", "simulate", "--store", str(tmp_path / "new.db"), "--import-jsonl", str(bad),
                 "--on-bad-line", "skip"]) == 0
    with LabelStore(tmp_path / "new.db", create=False) as store:
        assert len(store.items()) == 1


# ------------------------------------------------------------------------------------------ end to end
def _contract(results: dict) -> None:
    assert set(results) >= {"config", "seeds", "labels", "reward_models", "policies", "head_to_head", "curves"}
    assert "timing" not in results  # results.json is deterministic: timings live in timing.json
    labels = results["labels"]
    assert set(labels["human"]) >= {"source", "simulated", "n", "detail"} and labels["human"]["simulated"] is True
    assert set(labels["ai"]) >= {"source", "n", "detail"} and set(labels["agreement"]) == {"n", "raw", "kappa"}
    assert labels["human"]["n"] == labels["ai"]["n"] > 0
    assert set(results["reward_models"]) == {"rlhf", "rlaif"}
    assert all("pair_accuracy_heldout" in rm for rm in results["reward_models"].values())
    assert set(results["policies"]) == {"sft", "rlhf", "rlaif"}
    for name, p in results["policies"].items():
        assert set(p) >= POLICY_KEYS, name
        assert len(p["gold_mean"]) == 3 and p["gold_mean"][1] <= p["gold_mean"][0] <= p["gold_mean"][2]
        assert set(p["per_seed"]) == {"0", "1"}
    assert abs(results["policies"]["sft"]["kl"][0]) < 1e-3  # the reference against itself
    h2h = results["head_to_head"]["rlhf_vs_rlaif"]
    assert h2h["position_swapped"] is True and len(h2h["win_rate"]) == 3
    for arm in ("rlhf", "rlaif"):
        curve = results["curves"][arm]["0"]
        assert curve[0]["timesteps"] == 0 and {"timesteps", "proxy_reward", "gold_mean", "kl"} <= set(curve[0])
        assert curve[0]["proxy_reward"] is not None


def test_tiny_compare_end_to_end_resumes_and_is_deterministic(tmp_path, policy):
    first = tmp_path / "first"
    out = compare(tiny(first, policy, plots=True))
    results = json.loads((first / "results.json").read_text())
    _contract(results)
    assert out["timing"]["total"] > 0 and {k: v for k, v in out.items() if k != "timing"} == results
    for name in ("report.md", "config.json", "config.yaml", "timing.json", "labels.db"):
        assert (first / name).is_file(), name
    report = (first / "report.md").read_text()
    assert "SIMULATED" in report and "agreement" in report.lower()
    with LabelStore(first / "labels.db", create=False) as store:  # the simulated labels are marked as such
        assert all(a["simulated"] for a in store.annotators().values())
        assert len(store.labels()) == results["labels"]["human"]["n"]
    assert load_compare_config(first / "config.yaml") == tiny(first, policy, plots=True)

    # run again in the same folder: every stage is reused, the figures do not move
    again = compare(tiny(first, policy, plots=True))
    assert {"pairs", "human_labels", "ai_labels", "rm_rlhf", "rm_rlaif", "ppo_rlhf_seed0", "ppo_rlaif_seed1",
            "evaluate", "gold_prefs"} <= set(again["timing"]["skipped"])
    assert (first / "results.json").read_text() == json.dumps(results, indent=2, ensure_ascii=False) + "\n"

    # the same config in a fresh folder gives a byte-identical results.json
    second = tmp_path / "second"
    compare(tiny(second, policy, plots=True))
    assert (second / "results.json").read_bytes() == (first / "results.json").read_bytes()


def test_label_store_source_and_direct_rlaif(tmp_path, policy):
    store_path = tmp_path / "people.db"
    cfg = tiny(tmp_path / "out", policy, human=f"store:{store_path}", seeds=[0], direct_rlaif=True, n_pairs=40)
    with pytest.raises(ValueError, match="none of its 40 comparison items is labelled yet"):
        compare(cfg)
    with LabelStore(store_path, create=False) as store:  # people label them (here: by the gold judge's sign)
        from rlfl.synthetic import gold_sentiment

        for item in store.items():
            choice = "a" if gold_sentiment(item.response_a) >= gold_sentiment(item.response_b) else "b"
            store.add_label(item.id, "alice", choice, "ab")
    results = compare(cfg)
    human = results["labels"]["human"]
    assert human["simulated"] is False and human["n"] == 40 and human["annotators"] == ["alice"]
    assert set(results["policies"]) == {"sft", "rlhf", "rlaif", "direct_rlaif"}
    assert {"rlhf_vs_rlaif", "rlhf_vs_direct_rlaif", "rlaif_vs_direct_rlaif"} == set(results["head_to_head"])


ARMS = {"rlhf": "ppo/rlhf", "rlaif": "ppo/rlaif", "rlhf_grpo": "grpo/rlhf", "rlaif_grpo": "grpo/rlaif",
        "rlhf_online_dpo": "online_dpo/rlhf", "rlaif_online_dpo": "online_dpo/rlaif", "rlhf_dpo": "dpo/rlhf",
        "rlaif_dpo": "dpo/rlaif"}


def test_algorithms_are_arms_evaluated_alike_and_reused(tmp_path, policy):
    out = tmp_path / "out"
    cfg = tiny(out, policy, algorithms=["ppo", "grpo", "online_dpo", "dpo"], dpo_steps=10, dpo_batch_size=8,
               dpo_beta=0.2, plots=True)
    results = compare(cfg)
    results.pop("timing")
    for name, folder in ARMS.items():
        for seed in (0, 1):
            run = out / folder / f"seed{seed}"
            assert is_checkpoint(run) and (out / "eval" / name / f"seed{seed}.jsonl").is_file(), run
            assert (run / ("dpo_report.json" if folder.startswith("dpo/") else "ppo_report.json")).is_file(), run
    # GRPO: PPO's settings plus the group; DPO: the side's own pairs, seeded with the arm's seed
    grpo = json.loads((out / "grpo/rlaif/seed1/ppo_config.json").read_text())
    ppo = json.loads((out / "ppo/rlaif/seed1/ppo_config.json").read_text())
    assert grpo["group_size"] == 4 and grpo["reward"] == ppo["reward"] == str(out / "rm_rlaif")
    assert grpo["kl_penalty"] == "reward"  # the KL held as in the PPO arms, by the same adaptive control
    assert {k: grpo[k] for k in ppo if k != "out_dir"} == {k: v for k, v in ppo.items() if k != "out_dir"}
    online = json.loads((out / "online_dpo/rlhf/seed0/ppo_config.json").read_text())
    assert (online["beta"], online["group_size"], online["reward"]) == (0.2, 4, str(out / "rm_rlhf"))
    dpo_config = json.loads((out / "dpo/rlhf/seed1/config.json").read_text())
    assert dpo_config["dpo"]["data"] == str(out / "human_prefs.jsonl") and dpo_config["train"]["seed"] == 1

    # every arm: gold figures with intervals, head to head with every other, curves where training evaluates
    assert list(results["policies"]) == ["sft", *ARMS]
    assert results["config"]["algorithms"] == ["ppo", "grpo", "online_dpo", "dpo"]
    for name, p in results["policies"].items():
        assert set(p) >= POLICY_KEYS and p["gold_mean"][1] <= p["gold_mean"][0] <= p["gold_mean"][2], name
        assert len(p["win_rate_vs_sft"]) == len(p["gold_diff_vs_sft"]) == 3 and set(p["per_seed"]) == {"0", "1"}
    names = list(ARMS)
    assert set(results["head_to_head"]) == {f"{a}_vs_{b}" for i, a in enumerate(names) for b in names[i + 1:]}
    assert all(len(h["win_rate"]) == 3 for h in results["head_to_head"].values())
    assert results["curves"]["rlhf_dpo"] == results["curves"]["rlaif_dpo"] == {}
    assert results["curves"]["rlaif_grpo"]["1"][0]["timesteps"] == 0
    report = (out / "report.md").read_text()
    for shown in ("RLHF", "RLAIF", "RLHF (GRPO)", "RLAIF (GRPO)", "RLHF (online DPO)", "RLHF (DPO)", "RLAIF (DPO)"):
        assert f"\n| {shown} | " in report, shown
    assert "No training curves for RLHF (DPO), RLAIF (DPO)" in report
    assert all((out / f).is_file() for f in ("reward_kl_frontier.png", "proxy_vs_gold.png", "gold_by_policy.png"))

    # run again: nothing trains, the results do not move
    weights = {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed*/model.safetensors")}
    assert len(weights) == 16
    again = compare(cfg)
    trained = {f"{folder.replace('/', '_')}_seed{s}" for folder in ARMS.values() for s in (0, 1)}
    assert trained | {"rm_rlhf", "rm_rlaif", "evaluate", "gold_prefs"} <= set(again["timing"]["skipped"])
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    assert (out / "results.json").read_text() == json.dumps(results, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------ examples
def _run_example(name: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "examples" / name), "--tiny", "--out", str(out), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_example(r: subprocess.CompletedProcess, out: Path) -> dict:
    """The example ran, and ``out`` (its compare folder) holds the report and results with every arm."""
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"sft", "rlhf", "rlaif"} <= set(results["policies"]) and (out / "report.md").is_file()
    assert "gold mean" in r.stdout
    return results


def test_quickstart_example_tiny(tmp_path):
    # --threads 1: with the default (one per core) the trainer sets 2 threads, which crawl on a shared machine
    results = _check_example(_run_example("quickstart.py", tmp_path, "--threads", "1"), tmp_path)
    assert results["labels"]["human"]["simulated"] is True


@pytest.mark.slow
def test_compare_imdb_example_tiny(tmp_path):
    if not all((SHARED / "imdb" / f"imdb_{s}.jsonl.gz").is_file() for s in ("train", "test")):
        pytest.skip(f"{SHARED / 'imdb'}: no IMDB data beside the repo")
    r = _run_example("compare_imdb.py", tmp_path, "--data-dir", str(SHARED / "imdb"))
    results = _check_example(r, tmp_path / "compare")
    assert results["judges"]["gold"].startswith("rm:") and results["labels"]["human"]["simulated"] is True


@pytest.mark.slow
def test_compare_hh_example_tiny(tmp_path):
    if not (SHARED / "hh-rlhf" / "helpful-base" / "test.jsonl.gz").is_file():
        pytest.skip(f"{SHARED / 'hh-rlhf'}: no HH-RLHF data beside the repo")
    r = _run_example("compare_hh.py", tmp_path, "--data-dir", str(SHARED / "hh-rlhf"))
    results = _check_example(r, tmp_path / "compare")
    assert results["labels"]["human"]["simulated"] is False and results["labels"]["human"]["source"].startswith("hh:")

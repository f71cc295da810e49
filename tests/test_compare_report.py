"""Tests of rlfl.compare_report: report.md content read from the numbers, plots, the missing-key errors."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest

from rlfl.compare_report import PLOTS_HINT, arm_name, arm_parts, check_results, render_report, write_report
from rlfl.compare_stats import round_floats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve(seed: int, *, gold_peak_at: int, proxy_slope: float) -> list[dict]:
    """Eval points of one PPO run: the proxy keeps rising; gold rises to a peak, then falls back."""
    rng = np.random.default_rng(seed)
    points = []
    for i in range(9):
        gold = 0.05 + 0.04 * min(i, gold_peak_at) - 0.05 * max(0, i - gold_peak_at)
        points.append({"timesteps": 4096 * i, "proxy_reward": -0.2 + proxy_slope * i + rng.normal(0, 0.02),
                       "gold_mean": gold + rng.normal(0, 0.01), "kl": 0.9 * i ** 1.3 + rng.normal(0, 0.05) ** 2})
    return points


def _policy(gold: float, diff: tuple[float, float, float] | None, *, kl: float, win: float) -> dict:
    per_seed = {str(s): {"gold_mean": gold + 0.01 * (s - 1), "gold_positive_rate": 0.5 + gold / 2,
                         "kl": kl + 0.1 * s, "perplexity": 6.0 + kl / 4, "length": 20.0 + s} for s in range(3)}
    rate = 0.5 + gold / 2
    policy = {"gold_mean": [gold, gold - 0.03, gold + 0.03], "gold_positive_rate": [rate, rate - 0.05, rate + 0.05],
              "kl": [kl, max(kl - 0.5, 0.0), kl + 0.5], "perplexity": [6.0 + kl / 4, 5.5, 7.9],
              "distinct_1": 0.4213, "distinct_2": 0.7718, "length": 21.37, "per_seed": per_seed}
    if diff is not None:
        policy["gold_diff_vs_sft"] = list(diff)
        policy["win_rate_vs_sft"] = [win, win - 0.04, win + 0.04]
    return policy


def make_results() -> dict:
    """A results dict as rlfl.compare writes it: 3 seeds, SFT / RLHF / RLAIF, curves, after a JSON round trip."""
    results = {
        "config": {"task": "rlfl/SyntheticReviews-v0", "sft": "runs/quick/sft", "config_file": "compare.yaml"},
        "seeds": [0, 1, 2],
        "labels": {"human": {"source": "simulated annotators (3 noisy oracles)", "simulated": True, "n": 512,
                             "detail": "Bradley-Terry on the gold judge, temperature 0.5"},
                   "ai": {"source": "LMJudge(runs/quick/sft)", "n": 498, "detail": "position-swapped"},
                   "agreement": {"n": 470, "raw": 0.7234, "kappa": 0.4412}},
        "reward_models": {"rlhf": {"pair_accuracy_heldout": 0.8125, "loss": 0.41},
                          "rlaif": {"pair_accuracy_heldout": 0.7461, "loss": 0.52}},
        "policies": {"sft": _policy(0.05, None, kl=0.0, win=0.5),
                     "rlhf": _policy(0.231, (0.181, 0.142, 0.221), kl=6.2, win=0.68),
                     "rlaif": _policy(0.071, (0.021, -0.012, 0.055), kl=4.1, win=0.53)},
        "head_to_head": {"rlhf_vs_rlaif": {"win_rate": [0.61, 0.55, 0.67], "judge": "GoldSentiment",
                                           "position_swapped": True}},
        "curves": {"rlhf": {str(s): _curve(s, gold_peak_at=8, proxy_slope=0.1) for s in range(3)},
                   "rlaif": {str(s): _curve(10 + s, gold_peak_at=4, proxy_slope=0.08) for s in range(3)}},
        "timing": {"pairs": 12.5, "labels": 30.25, "reward_models": 61.0, "ppo": 301.4, "eval": 40.0},
    }
    return json.loads(json.dumps(round_floats(results)))


def make_full_results() -> dict:
    """`make_results` plus the extras rlfl.compare adds (its config keys, judges, label counts, proxies, ...)."""
    results = make_results()
    results["config"] = {"policy": "runs/quick/sft", "prompts": "synthetic", "seeds": [0, 1, 2]}
    results["prompts"] = {"spec": "synthetic", "train": 1872, "eval": 128}
    results["judges"] = {"ai": "lexicon", "gold": "GoldSentiment"}
    results["labels"]["human"]["counts"] = {"a": 250, "b": 240, "tie": 22}
    results["labels"]["ai"]["counts"] = {"a": 231, "b": 229, "tie": 38}
    results["labels"]["agreement_with_gold"] = {"judge": "GoldSentiment", "human": {"n": 512, "raw": 0.8, "kappa": 0.6},
                                                "ai": {"n": 498, "raw": 0.7, "kappa": None}}
    results["reward_models"] = {arm: {"data": f"{arm}_prefs.jsonl", "train_pairs": 450, "val_pairs": 50,
                                      "val_accuracy": acc, "pair_accuracy_heldout": acc - 0.05, "heldout_pairs": 240,
                                      "heldout_judge": "gold"} for arm, acc in (("rlhf", 0.86), ("rlaif", 0.74))}
    for name, p in results["policies"].items():
        p["proxy_rlhf"] = [0.5 if name == "rlhf" else 0.1, 0.4, 0.6]
        p["proxy_rlaif"] = [0.7 if name == "rlaif" else 0.2, 0.6, 0.8]
        p["samples"] = [{"prompt": "The food was", "completion": f"great | {name}\n`really` *so*", "gold": 0.75}]
        for row in p["per_seed"].values():
            row.update(stop_rate=0.9, n=128)
    results["timing"] = {"preflight": 1.0, "ppo_rlhf": 100.0, "ppo_rlaif": 90.0, "total": 200.0,
                         "skipped": ["items", "human_labels"]}
    return results


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_report_content_follows_the_numbers(tmp_path):
    paths = write_report(tmp_path, make_results(), plots=False)
    text = paths["report"].read_text()
    assert paths["report"] == tmp_path / "report.md"
    # header
    assert "rlfl/SyntheticReviews-v0" in text and "`runs/quick/sft`" in text and "`compare.yaml`" in text
    assert "Seeds: 0, 1, 2 (3)" in text
    # labels: which were simulated, how many each side used, agreement
    assert ("**The human labels are SIMULATED** (no person gave them). Source: `simulated annotators (3 noisy "
            "oracles)`; Bradley-Terry on the gold judge, temperature 0.5.") in text
    assert "The AI labels come from an AI judge. Source: `LMJudge(runs/quick/sft)`; position-swapped." in text
    assert "| human (RLHF) | simulated annotators (3 noisy oracles) | 512 | - | yes |" in text
    assert "| AI (RLAIF) | LMJudge(runs/quick/sft) | 498 | - | AI judge |" in text
    assert ("AI-human agreement on the pairs both sides labelled (skips excluded): raw 0.723, Cohen's kappa 0.441 "
            "(n = 470).") in text
    assert "AI labels agree with the simulated human labels on 72% of the 470 pairs" in text
    # reward models
    assert "| reward model | trained on | held-out accuracy | loss |" in text
    assert "| RLHF | human labels | 0.812 | 0.410 |" in text and "| RLAIF | AI labels | 0.746 | 0.520 |" in text
    # main table rows, figures formatted
    assert ("| RLHF | 0.231 [0.201, 0.261] | 0.62 [0.57, 0.67] | 0.68 [0.64, 0.72] | 0.181 [0.142, 0.221] | "
            "6.20 [5.70, 6.70] | 7.55 [5.50, 7.90] | 0.421 | 0.772 | 21.4 |") in text
    assert "| SFT | 0.050 [0.020, 0.080] | 0.53 [0.47, 0.57] | - | - | 0.00 [0.00, 0.50] |" in text
    assert "| RLAIF | 0.071 [0.041, 0.101] |" in text
    # the reading of the numbers follows the intervals
    assert "RLHF beats SFT: the 95 % interval of the gold difference, [0.142, 0.221], is above 0" in text
    assert ("RLAIF vs SFT: the 95 % interval of the gold difference, [-0.012, 0.055], includes 0: no evidence of a "
            "difference at this budget.") in text
    assert "RLHF beats RLAIF head to head (judge: GoldSentiment): it wins 61% of prompts" in text
    assert "| RLHF vs RLAIF | 0.61 [0.55, 0.67] | GoldSentiment | yes |" in text
    # over-optimisation is called out for the run whose gold fell while the proxy rose, not for the other
    said = [line for line in text.splitlines() if "over training (mean of seeds)" in line]
    assert len(said) == 2
    assert "over-optimisation" in next(s for s in said if s.startswith("- RLAIF"))
    assert "over-optimisation" not in next(s for s in said if s.startswith("- RLHF"))
    # per-seed and timing tables
    assert "| policy | seed | gold mean | gold positive rate | KL | perplexity | length |" in text
    assert "| RLHF | 2 | 0.241 | 0.616 | 6.400 | 7.55 | 22.0 |" in text
    assert "| ppo | 301.4 |" in text and "| **total** | **445.1** |" in text
    assert "Plots were turned off" in text and "![" not in text
    assert set(paths) == {"report"}


def test_the_extras_rlfl_compare_writes_are_shown(tmp_path):
    (tmp_path / "config.yaml").write_text("policy: runs/quick/sft\n")
    text = write_report(tmp_path, make_full_results(), plots=False)["report"].read_text()
    assert "# RLHF vs RLAIF: synthetic" in text
    assert "- Task / prompts: `synthetic` (1872 for training, 128 held out for evaluation)" in text
    assert "- SFT policy (start of every run and the KL reference): `runs/quick/sft`" in text
    assert "- Config: `config.yaml`" in text
    assert "- Gold judge (final evaluation; neither side trained on it): GoldSentiment" in text
    assert "| human (RLHF) | simulated annotators (3 noisy oracles) | 512 | 250 / 240 / 22 | yes |" in text
    assert ("Against the gold judge (GoldSentiment), the human labels: raw 0.800, Cohen's kappa 0.600 (n = 512); "
            "the AI labels: raw 0.700, Cohen's kappa undefined (one label throughout) (n = 498).") in text
    assert ("| reward model | trained on | held-out accuracy | held-out pairs | val accuracy (own labels) | "
            "train pairs | val pairs |") in text
    assert "| RLHF | human labels | 0.810 | 240 | 0.860 | 450 | 50 |" in text
    assert "| policy | gold mean | RLAIF reward model | RLHF reward model |" in text
    assert "| RLAIF | 0.071 [0.041, 0.101] | 0.700 [0.600, 0.800] | 0.100 [0.400, 0.600] |" in text
    assert "| RLHF | The food was | great \\| rlhf \\`really\\` \\*so\\* | 0.750 |" in text
    assert "| gold mean | gold positive rate | KL | perplexity | length | n | stop rate |" in text
    assert "| ppo_rlaif | 90.0 |" in text and "| **total** | **200.0** |" in text
    assert "(not timed again): items, human_labels." in text


def test_a_worse_policy_and_real_people_read_differently(tmp_path):
    results = make_results()
    results["policies"]["rlaif"]["gold_diff_vs_sft"] = [-0.08, -0.12, -0.03]
    results["labels"]["human"].update(simulated=False, source="store:labels.db", detail="")
    results["labels"]["agreement"]["kappa"] = None
    results["seeds"] = [0]
    text = render_report(results, plots=False)
    assert "RLAIF is worse than SFT: the 95 % interval of the gold difference, [-0.120, -0.030], is below 0" in text
    assert "SIMULATED" not in text and "The human labels were given by people. Source: `store:labels.db`." in text
    assert "Cohen's kappa undefined" in text
    assert "Only 1 seed(s)" in text


@pytest.mark.skipif(not _has_matplotlib(), reason="matplotlib not installed (pip install 'rlfl[plots]')")
def test_plots_are_valid_pngs_embedded_and_deterministic(tmp_path):
    results = make_results()
    paths = write_report(tmp_path, results)
    assert set(paths) == {"report", "frontier", "proxy_vs_gold", "gold_by_policy"}
    text = paths["report"].read_text()
    first = {}
    for key in ("frontier", "proxy_vs_gold", "gold_by_policy"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, key
        assert f"]({paths[key].name})" in text
        first[key] = data
    assert PLOTS_HINT not in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # no temp files left behind
    again = write_report(tmp_path / "again", results)
    for key, data in first.items():
        assert again[key].read_bytes() == data, f"{key} differs between two identical runs"


def test_without_matplotlib_the_report_says_how_to_get_plots(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # makes `import matplotlib` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    paths = write_report(tmp_path, make_results())
    text = paths["report"].read_text()
    assert 'pip install "rlfl[plots]"' in text
    assert set(paths) == {"report"} and not list(tmp_path.glob("*.png"))


def test_no_curves_gives_only_the_gold_plot(tmp_path):
    results = make_results()
    del results["curves"], results["head_to_head"], results["timing"]
    if not _has_matplotlib():
        pytest.skip("matplotlib not installed")
    paths = write_report(tmp_path, results)
    assert set(paths) == {"report", "gold_by_policy"}
    text = paths["report"].read_text()
    assert "## Head to head" not in text and "## Timing" not in text


def test_arms_of_other_algorithms_are_named_from_their_parts(tmp_path):
    """GRPO and DPO arms beside the PPO ones: derived names, a DPO arm without curves, every plot still drawn."""
    results = make_results()
    results["policies"]["rlhf_grpo"] = _policy(0.19, (0.14, 0.1, 0.18), kl=3.0, win=0.6)
    results["policies"]["rlaif_dpo"] = _policy(0.12, (0.07, 0.03, 0.11), kl=2.0, win=0.57)
    results["curves"]["rlhf_grpo"] = {str(s): _curve(20 + s, gold_peak_at=8, proxy_slope=0.05) for s in range(3)}
    results["curves"]["rlaif_dpo"] = {}  # DPO evaluates only at the end
    results["head_to_head"]["rlhf_grpo_vs_rlaif_dpo"] = {"win_rate": [0.58, 0.52, 0.64], "judge": "GoldSentiment",
                                                         "position_swapped": True}
    assert [arm_parts(arm_name(s, a)) for s, a in (("rlhf", "ppo"), ("direct_rlaif", "rloo"))] == [
        ("rlhf", "ppo"), ("direct_rlaif", "rloo")]
    text = render_report(results, plots=False)
    assert "| RLHF (GRPO) | 0.190 [0.160, 0.220] |" in text and "| RLAIF (DPO) | 0.120 [0.090, 0.150] |" in text
    assert "- Arms: label source x algorithm (PPO, GRPO, DPO);" in text
    assert "RLHF (GRPO) beats RLAIF (DPO) head to head" in text
    assert "| RLHF (GRPO) vs RLAIF (DPO) | 0.58 [0.52, 0.64] |" in text
    assert "- RLHF (GRPO) over training (mean of seeds)" in text
    assert "- No training curves for RLAIF (DPO): DPO learns from the preference pairs offline" in text
    assert "Arms:" not in render_report(make_results(), plots=False)  # PPO alone reads as it always did
    if not _has_matplotlib():
        pytest.skip("matplotlib not installed")
    from rlfl.compare_report import COLORS, _color

    shades = [_color(n, i) for i, n in enumerate(("rlhf_grpo", "rlhf_rloo", "rlhf_dpo", "rlaif_dpo"))]
    assert len(set(shades) | {COLORS["rlhf"], COLORS["rlaif"]}) == 6  # a shade of the source's colour each
    paths = write_report(tmp_path, results)
    assert set(paths) == {"report", "frontier", "proxy_vs_gold", "gold_by_policy"}
    del results["curves"]["rlhf_grpo"], results["curves"]["rlhf"], results["curves"]["rlaif"]
    paths = write_report(tmp_path / "dpo_only", results)  # only arms without curves: no proxy-vs-gold plot
    assert set(paths) == {"report", "frontier", "gold_by_policy"}


@pytest.mark.parametrize("path", ["labels.human.simulated", "labels.ai.n", "labels.agreement", "seeds",
                                  "policies.sft", "policies.rlhf.gold_diff_vs_sft", "policies.rlaif.kl",
                                  "reward_models"])
def test_missing_key_is_named(tmp_path, path):
    results = make_results()
    node = results
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    del node[last]
    with pytest.raises(ValueError, match=f"missing key '{path}'"):
        write_report(tmp_path, results)
    assert not (tmp_path / "report.md").exists()


def test_malformed_values_are_named():
    results = make_results()
    bad = copy.deepcopy(results)
    bad["policies"]["rlhf"]["gold_mean"] = 0.23
    with pytest.raises(ValueError, match=r"policies.rlhf.gold_mean should be \[estimate, low, high\]"):
        check_results(bad)
    bad = copy.deepcopy(results)
    bad["policies"]["rlaif"]["length"] = "long"
    with pytest.raises(ValueError, match="policies.rlaif.length should be a number"):
        check_results(bad)
    bad = copy.deepcopy(results)
    del bad["curves"]["rlaif"]["1"][2]["timesteps"]
    with pytest.raises(ValueError, match=r"curves.rlaif.1\[2\] should be an eval point with 'timesteps'"):
        check_results(bad)
    bad = copy.deepcopy(results)
    bad["curves"]["rlhf"]["0"] = 3
    with pytest.raises(ValueError, match=r"curves.rlhf.0\[0\] should be an eval point"):
        check_results(bad)
    with pytest.raises(ValueError, match="expected a dict"):
        check_results([results])
    bad = copy.deepcopy(results)
    bad["policies"]["sft"]["kl"] = [0.0, "low", 0.1]
    with pytest.raises(ValueError, match=r"policies.sft.kl should be \[estimate, low, high\]"):
        check_results(bad)


def test_table_cells_are_escaped():
    results = make_results()
    results["labels"]["ai"]["source"] = "judge | v2\nbeta"
    text = render_report(results, plots=False)
    assert "| AI (RLAIF) | judge \\| v2 beta | 498 | - | AI judge |" in text

"""report.md and its plots from the results of `rlfl compare`: what was compared, on which labels, and what it says.

`write_report` reads the ``results`` dict that `rlfl.compare` writes as results.json (the layout is in that
module and in `check_results`) and writes, in ``out_dir``:

- ``report.md``: the task, the SFT policy, the seeds and the config file; a few sentences that read the
  numbers ("RLHF beats SFT: ... above 0" / "... includes 0: no evidence at this budget"); the labels (which
  ones were **simulated**, how many each side used, how well AI labels agree with human ones and with the
  gold judge); reward-model accuracy; the main table of policies with 95 % intervals; head-to-head results;
  each policy as the reward models see it; the plots; sample completions; per-seed figures; timing.
- three PNGs, when matplotlib is installed (the optional extra ``rlfl[plots]``): the reward-vs-KL frontier
  (``reward_kl_frontier.png``), proxy reward against gold score over training, where reward
  over-optimisation shows as a proxy that keeps rising while gold stalls or falls (``proxy_vs_gold.png``),
  and the gold score of every policy with its interval (``gold_by_policy.png``).

matplotlib is imported lazily and used through `matplotlib.figure.Figure` only (never pyplot), so drawing
the plots neither needs a display nor switches the backend of a notebook that calls us. PNGs are saved
without the "Software" metadata entry, so the same results and matplotlib version give byte-identical files.
Every file is written atomically.

Example:
    >>> import json                                                                         # doctest: +SKIP
    >>> results = json.load(open("runs/compare/results.json"))                              # doctest: +SKIP
    >>> write_report("runs/compare", results)["report"]                                     # doctest: +SKIP
    PosixPath('runs/compare/report.md')
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlfl.compare_stats import format_ci
from rlfl.files import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

PLOTS_HINT = 'Plots: not drawn because matplotlib is not installed; `pip install "rlfl[plots]"` gives them.'
PLOT_FILES = {"frontier": "reward_kl_frontier.png", "proxy_vs_gold": "proxy_vs_gold.png",
              "gold_by_policy": "gold_by_policy.png"}
# the SFT policy and the label sources; an arm trained by another algorithm than PPO takes its source's name and
# colour with the algorithm's name, shade and marker (`arm_name`, `_name`, `_color`)
NAMES = {"sft": "SFT", "rlhf": "RLHF", "rlaif": "RLAIF", "direct_rlaif": "direct RLAIF"}
COLORS = {"sft": "#7f7f7f", "rlhf": "#1f77b4", "rlaif": "#ff7f0e", "direct_rlaif": "#2ca02c"}
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
ALGORITHM_NAMES = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "online_dpo": "online DPO", "dpo": "DPO"}
# how far each algorithm moves its source's colour: towards black (< 0) or white (> 0)
SHADES = {"ppo": 0.0, "grpo": -0.4, "rloo": 0.35, "online_dpo": -0.2, "dpo": 0.6}
MARKERS = {"ppo": "o", "grpo": "s", "rloo": "^", "online_dpo": "v", "dpo": "D"}
TRIPLES = ("gold_mean", "gold_positive_rate", "kl", "perplexity")
TRIPLES_VS_SFT = ("win_rate_vs_sft", "gold_diff_vs_sft")
SCALARS = ("distinct_1", "distinct_2", "length")
# Columns of the per-seed table, in this order when present (other numeric keys follow, sorted).
SEED_COLUMNS = ("gold_mean", "gold_positive_rate", "win_rate_vs_sft", "gold_diff_vs_sft", "kl", "perplexity",
                "distinct_1", "distinct_2", "length", "in_vocab_rate")
COLUMN_NAMES = {"kl": "KL", "win_rate_vs_sft": "win rate vs SFT", "gold_diff_vs_sft": "gold diff vs SFT",
                "distinct_1": "distinct-1", "distinct_2": "distinct-2", "in_vocab_rate": "in-vocabulary words"}
DIGITS = {"length": 1, "perplexity": 2}


# ------------------------------------------------------------------------------------ validation
def _get(results: dict, dotted: str) -> Any:
    """``results["a"]["b"]`` for ``"a.b"``; a ValueError naming the first missing key."""
    node: Any = results
    for depth, key in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(dotted.split(".")[:depth + 1])
            raise ValueError(f"results: missing key '{where}'; write_report needs the results.json layout of "
                             "rlfl.compare (see rlfl.compare_report.check_results)")
        node = node[key]
    return node


def check_results(results: dict) -> None:
    """Raise a ValueError naming the first key that `write_report` needs and ``results`` lacks (or has malformed).

    Required: ``seeds``; ``labels.human.{source,simulated,n}``, ``labels.ai.{source,n}``,
    ``labels.agreement.{n,raw,kappa}``; ``reward_models``; ``policies.sft``; for every policy the triples
    ``gold_mean``, ``gold_positive_rate``, ``kl``, ``perplexity`` ([estimate, low, high]) and the numbers
    ``distinct_1``, ``distinct_2``, ``length``, plus ``win_rate_vs_sft`` and ``gold_diff_vs_sft`` for every
    policy but SFT. Optional: ``config`` (``task``, ``sft``, ``config_file`` name the run in the header),
    ``per_seed``, ``head_to_head``, ``curves``, ``timing``.
    """
    _require(isinstance(results, dict), f"expected a dict (the contents of results.json), got {type(results).__name__}")
    for key in ("seeds", "labels.human.source", "labels.human.simulated", "labels.human.n", "labels.ai.source",
                "labels.ai.n", "labels.agreement.n", "labels.agreement.raw", "labels.agreement.kappa",
                "reward_models", "policies.sft"):
        _get(results, key)
    _require(isinstance(results["seeds"], list) and results["seeds"], f"seeds should be a non-empty list of ints, "
             f"got {results['seeds']!r}")
    for name in results["policies"]:
        for field in TRIPLES + SCALARS + (TRIPLES_VS_SFT if name != "sft" else ()):
            value = _get(results, f"policies.{name}.{field}")
            if field in SCALARS:
                _require(value is None or isinstance(value, (int, float)),
                         f"policies.{name}.{field} should be a number, got {value!r}")
            else:
                _require(isinstance(value, (list, tuple)) and len(value) == 3
                         and all(v is None or isinstance(v, (int, float)) for v in value),
                         f"policies.{name}.{field} should be [estimate, low, high], got {value!r}")
    for name, model in results["reward_models"].items():
        _require(isinstance(model, dict), f"reward_models.{name} should be a dict of figures, got {model!r}")
    for name, by_seed in (results.get("curves") or {}).items():
        _require(isinstance(by_seed, dict), f"curves.{name} should map each seed to its list of eval points")
        for seed, points in by_seed.items():
            for i, point in enumerate(points if isinstance(points, list) else [None]):
                _require(isinstance(point, dict) and "timesteps" in point,
                         f"curves.{name}.{seed}[{i}] should be an eval point with 'timesteps' (and proxy_reward, "
                         f"gold_mean, kl), got {point!r}")


def _require(ok: Any, message: str) -> None:
    if not ok:
        raise ValueError(f"results: {message}")


# ------------------------------------------------------------------------------------ arm names
def arm_name(source: str, algorithm: str) -> str:
    """The name of the arm that trains on label source ``source`` with ``algorithm``: the bare source for PPO.

    Example:
        >>> arm_name("rlhf", "ppo"), arm_name("rlaif", "dpo"), arm_parts("direct_rlaif_grpo"), arm_parts("rlhf")
        ('rlhf', 'rlaif_dpo', ('direct_rlaif', 'grpo'), ('rlhf', 'ppo'))
        >>> arm_parts("rlhf_online_dpo"), arm_parts("rlhf_dpo")
        (('rlhf', 'online_dpo'), ('rlhf', 'dpo'))
    """
    return source if algorithm == "ppo" else f"{source}_{algorithm}"


def arm_parts(name: str) -> tuple[str, str]:
    """(label source, algorithm) of an arm's name, the inverse of `arm_name` (a bare name is a PPO arm)."""
    for algorithm in sorted(ALGORITHM_NAMES, key=len, reverse=True):  # online_dpo before dpo
        source = name.removesuffix(f"_{algorithm}")
        if algorithm != "ppo" and source and source != name:
            return source, algorithm
    return name, "ppo"


# ------------------------------------------------------------------------------------ formatting
def _name(key: str) -> str:
    """"RLHF" for a PPO arm, "RLAIF (DPO)" for another algorithm's, the key itself for an unknown name."""
    if key in NAMES:
        return NAMES[key]
    source, algorithm = arm_parts(key)
    return f"{NAMES.get(source, source)} ({ALGORITHM_NAMES[algorithm]})" if algorithm != "ppo" else key


def _algorithms(results: dict) -> list[str]:
    """The algorithms of the results' arms, in order of first appearance."""
    return list(dict.fromkeys(arm_parts(n)[1] for n in results["policies"] if n != "sft"))


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell (no pipes, no newlines)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _plain(text: str) -> str:
    """Model output shown as plain text: markdown's active characters escaped (a stray ` or * must not format)."""
    return re.sub(r"([\\`*_\[\]<>#~])", r"\\\1", text)


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):  # bools included
        return str(value)
    return f"{value:.{digits}f}"


def _interval(triple: Sequence[Any] | None, digits: int = 3) -> str:
    """``[low, high]`` of a triple."""
    return f"[{_num(triple[1], digits)}, {_num(triple[2], digits)}]" if triple else "n/a"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _seed_sort(keys: Any) -> list:
    """Seeds in numeric order whether the keys are ints or (after a JSON round trip) strings."""
    return sorted(keys, key=lambda k: (0, int(k), "") if str(k).lstrip("-").isdigit() else (1, 0, str(k)))


def _policy_order(policies: dict) -> list[str]:
    known = [k for k in NAMES if k in policies]
    return known + [k for k in policies if k not in NAMES]


# ------------------------------------------------------------------------------------ reading the numbers
def _versus_sft(name: str, diff: Sequence[Any]) -> str:
    est, low, high = diff
    if low is None or high is None:
        return f"{_name(name)} vs SFT: gold difference {_num(est)} (no interval)."
    span = _interval(diff)
    if low > 0:
        return (f"{_name(name)} beats SFT: the 95 % interval of the gold difference, {span}, is above 0 "
                f"(mean difference {est:+.3f}).")
    if high < 0:
        return (f"{_name(name)} is worse than SFT: the 95 % interval of the gold difference, {span}, is below 0 "
                f"(mean difference {est:+.3f}).")
    return (f"{_name(name)} vs SFT: the 95 % interval of the gold difference, {span}, includes 0: no evidence "
            "of a difference at this budget.")


def _head_to_head_sentence(key: str, entry: dict) -> str | None:
    triple = entry.get("win_rate")
    if not triple or triple[0] is None:
        return None
    first, _, second = key.partition("_vs_")
    a, b = _name(first), _name(second or "other")
    est, low, high = triple
    judged = f" (judge: {entry['judge']})" if entry.get("judge") else ""
    span = _interval(triple, 2)
    if low is not None and low > 0.5:
        return f"{a} beats {b} head to head{judged}: it wins {est:.0%} of prompts, interval {span} above 0.5."
    if high is not None and high < 0.5:
        return f"{b} beats {a} head to head{judged}: {a} wins only {est:.0%} of prompts, interval {span} below 0.5."
    return (f"{a} vs {b} head to head{judged}: {a} wins {est:.0%} of prompts; the interval {span} includes 0.5: "
            "no evidence either way.")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _mean_curve(curve_by_seed: dict, *fields: str) -> tuple[list[float], ...]:
    """(timesteps, mean over seeds of each field, ...) at every eval step some seed reached.

    A seed's point counts at a step only when it has all ``fields`` (so two fields averaged together, such
    as KL and gold for the frontier, always come from the same points).
    """
    sums: dict[float, list[list[float]]] = {}
    for points in curve_by_seed.values():
        for p in points:
            if all(_finite(p.get(f)) for f in fields):
                sums.setdefault(p["timesteps"], []).append([p[f] for f in fields])
    steps = sorted(sums)
    means = [[sum(row[i] for row in sums[t]) / len(sums[t]) for t in steps] for i in range(len(fields))]
    return (steps, *means)


def _overoptimisation_sentence(name: str, curve_by_seed: dict) -> str | None:
    steps, gold = _mean_curve(curve_by_seed, "gold_mean")
    p_steps, proxy = _mean_curve(curve_by_seed, "proxy_reward")
    if len(gold) < 2:
        return None
    peak = max(range(len(gold)), key=gold.__getitem__)
    text = (f"{_name(name)} over training (mean of seeds): gold score {gold[0]:.3f} -> {gold[-1]:.3f}, "
            f"peak {gold[peak]:.3f} at step {steps[peak]:g}")
    if len(proxy) >= 2:
        text += f"; proxy reward {proxy[0]:.3f} -> {proxy[-1]:.3f}"
        proxy_at_peak = dict(zip(p_steps, proxy)).get(steps[peak])
        # Call it over-optimisation only when gold gave back more than a quarter of its gain while the proxy
        # kept climbing: a last eval point a hair below the peak is noise, not a trend.
        gain = gold[peak] - gold[0]
        if (peak < len(gold) - 1 and proxy_at_peak is not None and proxy[-1] > proxy_at_peak
                and gold[peak] - gold[-1] > 0.25 * max(gain, 1e-12)):
            text += ": the proxy kept rising after the gold score peaked, a sign of reward over-optimisation"
    return text + "."


def _without_curves(results: dict) -> list[str]:
    """The arms that ``curves`` lists without a single eval point (DPO's: it evaluates only at the end)."""
    curves = results.get("curves") or {}
    return [n for n in _policy_order(results["policies"]) if n in curves and not any(curves[n].values())]


def _summary(results: dict) -> list[str]:
    policies, lines = results["policies"], []
    for name in _policy_order(policies):
        if name != "sft":
            lines.append("- " + _versus_sft(name, policies[name]["gold_diff_vs_sft"]))
    for key, entry in (results.get("head_to_head") or {}).items():
        sentence = _head_to_head_sentence(key, entry)
        if sentence:
            lines.append("- " + sentence)
    ag = results["labels"]["agreement"]
    if ag.get("n"):
        who = "simulated human" if results["labels"]["human"]["simulated"] else "human"
        kappa = "undefined" if ag.get("kappa") is None else f"{ag['kappa']:.2f}"
        lines.append(f"- AI labels agree with the {who} labels on {ag['raw']:.0%} of the {ag['n']} pairs both "
                     f"labelled (Cohen's kappa {kappa}).")
    for name, curve in (results.get("curves") or {}).items():
        sentence = _overoptimisation_sentence(name, curve)
        if sentence:
            lines.append("- " + sentence)
    missing = _without_curves(results)
    if missing:
        why = ("DPO learns from the preference pairs offline, with no evaluation during training"
               if all(arm_parts(n)[1] == "dpo" for n in missing) else "no evaluation was recorded during training")
        lines.append(f"- No training curves for {', '.join(_name(n) for n in missing)}: {why}. Their figures are the "
                     "final held-out evaluation (the tables, and one point each on the reward-vs-KL frontier).")
    if len(results["seeds"]) < 3:
        lines.append(f"- Only {len(results['seeds'])} seed(s): the intervals capture prompt noise but hardly any "
                     "seed-to-seed variance; run >= 3 seeds before drawing conclusions.")
    return lines


# ------------------------------------------------------------------------------------ sections
def _header(results: dict, config_file: str | None) -> list[str]:
    config = results.get("config") or {}
    prompts = results.get("prompts") or {}
    judges = results.get("judges") or {}
    task = config.get("task") or prompts.get("spec") or config.get("prompts") or "?"
    sft = config.get("sft") or config.get("policy") or "?"
    config_file = results.get("config_file") or config.get("config_file") or config_file
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = [f"# RLHF vs RLAIF: {task}", "", f"- Task / prompts: `{task}`"
             + (f" ({prompts['train']} for training, {prompts['eval']} held out for evaluation)"
                if "train" in prompts and "eval" in prompts else ""),
             f"- SFT policy (start of every run and the KL reference): `{sft}`",
             f"- Seeds: {seeds} ({len(results['seeds'])})",
             f"- Config: `{config_file}`" if config_file else "- Config: not recorded"]
    algorithms = _algorithms(results)
    if algorithms != ["ppo"]:
        lines.append(f"- Arms: label source x algorithm ({', '.join(ALGORITHM_NAMES[a] for a in algorithms)}); a bare "
                     "RLHF / RLAIF is PPO against that side's reward model, GRPO, RLOO and online DPO train against "
                     "the same reward model with the same settings, DPO trains on that side's preference pairs "
                     "directly (no reward model)")
    if judges.get("gold"):
        lines.append(f"- Gold judge (final evaluation; neither side trained on it): {judges['gold']}")
    return lines + ["", ("Every figure with an interval is the estimate over all seeds' held-out prompts and its "
                         "95 % bootstrap interval (seeds resampled, then prompts within each seed)."), ""]


def _agreement_text(ag: dict) -> str:
    raw = "n/a" if ag.get("raw") is None else f"{ag['raw']:.3f}"
    kappa = "undefined (one label throughout)" if ag.get("kappa") is None else f"{ag['kappa']:.3f}"
    return f"raw {raw}, Cohen's kappa {kappa} (n = {ag.get('n', 0)})"


def _labels(results: dict) -> list[str]:
    labels = results["labels"]
    human, ai = labels["human"], labels["ai"]
    lines = ["## Labels", ""]

    def source(side: dict) -> str:
        return f"Source: `{side['source']}`" + (f"; {side['detail']}." if side.get("detail") else ".")

    if human["simulated"]:
        lines.append(f"**The human labels are SIMULATED** (no person gave them). {source(human)}")
    else:
        lines.append(f"The human labels were given by people. {source(human)}")
    size = f" ({ai['parameters'] / 1e6:.1f}M parameters)" if ai.get("parameters") else ""
    lines.append(f"The AI labels come from an AI judge{size}. {source(ai)}")

    def split(side: dict) -> str:
        c = side.get("counts") or {}
        return " / ".join(str(c.get(k, 0)) for k in ("a", "b", "tie")) if c else "-"

    lines += ["", *_table(["side", "source", "labels used", "a / b / tie", "simulated"],
                          [["human (RLHF)", human["source"], human["n"], split(human),
                            "yes" if human["simulated"] else "no"],
                           ["AI (RLAIF)", ai["source"], ai["n"], split(ai), "AI judge"]]), ""]
    lines.append(f"AI-human agreement on the pairs both sides labelled (skips excluded): "
                 f"{_agreement_text(labels['agreement'])}.")
    gold = labels.get("agreement_with_gold") or {}
    if gold.get("human") and gold.get("ai"):
        lines.append(f"Against the gold judge ({gold.get('judge', 'gold')}), the human labels: "
                     f"{_agreement_text(gold['human'])}; the AI labels: {_agreement_text(gold['ai'])}.")
    return lines + [""]


def _reward_models(results: dict) -> list[str]:
    models = results["reward_models"]
    if not models:
        return []
    names = {"pair_accuracy_heldout": "held-out accuracy", "heldout_pairs": "held-out pairs",
             "val_accuracy": "val accuracy (own labels)", "train_pairs": "train pairs", "val_pairs": "val pairs"}
    numeric = {k for m in models.values() for k, v in m.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = [k for k in names if k in numeric or k == "pair_accuracy_heldout"] + sorted(numeric - set(names))
    trained_on = {"rlhf": "human labels", "rlaif": "AI labels"}
    rows = [[_name(n), trained_on.get(n, "?")] + [_num(m.get(k)) for k in keys] for n, m in models.items()]
    return ["## Reward models", "",
            ("Same architecture and hyperparameters on both sides; only the labels differ. Held-out accuracy: the "
             "share of held-out pairs that the reward model orders the way the gold judge does."), "",
            *_table(["reward model", "trained on"] + [names.get(k, k.replace("_", " ")) for k in keys], rows), ""]


def _policies(results: dict) -> list[str]:
    policies = results["policies"]
    words = any("in_vocab_rate" in p for p in policies.values())
    rows = []
    for name in _policy_order(policies):
        p = policies[name]
        rows.append([_name(name), format_ci(p["gold_mean"], 3), format_ci(p["gold_positive_rate"], 2),
                     format_ci(p.get("win_rate_vs_sft"), 2) if name != "sft" else "-",
                     format_ci(p.get("gold_diff_vs_sft"), 3) if name != "sft" else "-",
                     format_ci(p["kl"], 2), format_ci(p["perplexity"], 2), _num(p["distinct_1"]),
                     _num(p["distinct_2"]), _num(p["length"], 1)]
                    + ([_num(p.get("in_vocab_rate"), 3)] if words else []))
    header = ["policy", "gold mean", "gold positive rate", "win rate vs SFT", "gold diff vs SFT", "KL to SFT",
              "perplexity", "distinct-1", "distinct-2", "length"] + (["in-vocabulary words"] if words else [])
    return ["## Policies", "", *_table(header, rows), "",
            ("KL: nats per completion to the SFT reference; perplexity: of the policy's text under the SFT "
             "reference; length: tokens per completion; distinct-n: unique n-grams / all n-grams"
             + ("; in-vocabulary words: the share of the completions' words that the review grammar can write "
                "(1.0: every word is a real word of the corpus)." if words else ".")), ""]


def _head_to_head(results: dict) -> list[str]:
    entries = results.get("head_to_head") or {}
    if not entries:
        return []
    rows = []
    for key, e in entries.items():
        first, _, second = key.partition("_vs_")
        rows.append([f"{_name(first)} vs {_name(second)}", format_ci(e.get("win_rate"), 2), e.get("judge", "?"),
                     "yes" if e.get("position_swapped") else "no"])
    return ["## Head to head", "", *_table(["pair", "win rate of the first", "judge", "positions swapped"], rows),
            ""]


def _proxy_scores(results: dict) -> list[str]:
    """Each final policy scored by each reward model (``proxy_<rm>`` triples), beside its gold score."""
    policies = results["policies"]
    proxies = sorted({k for p in policies.values() for k, v in p.items()
                      if k.startswith("proxy_") and isinstance(v, (list, tuple))})
    if not proxies:
        return []
    rows = [[_name(n), format_ci(policies[n]["gold_mean"], 3)] + [format_ci(policies[n].get(k), 3) for k in proxies]
            for n in _policy_order(policies)]
    header = ["policy", "gold mean"] + [f"{_name(k[len('proxy_'):])} reward model" for k in proxies]
    return ["## What the reward models think", "",
            ("The same held-out completions scored by each reward model (the proxy) next to the gold judge: a policy "
             "that gains more on its own reward model than on gold has learned that model's blind spots."), "",
            *_table(header, rows), ""]


def _samples(results: dict, limit: int = 3, width: int = 160) -> list[str]:
    rows = []
    for name in _policy_order(results["policies"]):
        for sample in (results["policies"][name].get("samples") or [])[:limit]:
            text = {k: _plain(str(sample.get(k, ""))[:width]) for k in ("prompt", "completion")}
            score = sample.get("gold", sample.get("score"))
            rows.append([_name(name), text["prompt"], text["completion"],
                         _num(score) if isinstance(score, (int, float)) else "n/a"])
    if not rows:
        return []
    return ["## Samples", "", "A few held-out completions of each policy (first seed) with their gold score.", "",
            *_table(["policy", "prompt", "completion", "gold"], rows), ""]


def _per_seed(results: dict) -> list[str]:
    policies = results["policies"]
    present = {k for p in policies.values() for s in (p.get("per_seed") or {}).values() for k, v in s.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not present:
        return []
    columns = [c for c in SEED_COLUMNS if c in present] + sorted(present - set(SEED_COLUMNS))
    rows = []
    for name in _policy_order(policies):
        per_seed = policies[name].get("per_seed") or {}
        for seed in _seed_sort(per_seed):
            rows.append([_name(name), seed] + [_num(per_seed[seed].get(c), DIGITS.get(c, 3)) for c in columns])
    header = ["policy", "seed"] + [COLUMN_NAMES.get(c, c.replace("_", " ")) for c in columns]
    return ["## Per seed", "", *_table(header, rows), ""]


def _timing(results: dict) -> list[str]:
    raw = results.get("timing") or {}
    stages = {k: v for k, v in raw.items() if k != "total" and _finite(v) and not isinstance(v, bool)}
    if not stages:
        return []
    total = raw["total"] if _finite(raw.get("total")) else sum(stages.values())
    rows = [[stage, f"{sec:.1f}"] for stage, sec in stages.items()] + [["**total**", f"**{total:.1f}**"]]
    lines = ["## Timing", "", *_table(["stage", "seconds"], rows), ""]
    skipped = raw.get("skipped")
    if skipped:
        lines += [f"Reused from an earlier run in this folder (not timed again): {', '.join(map(str, skipped))}.", ""]
    return lines


# ------------------------------------------------------------------------------------ plots
def _color(name: str, i: int) -> str:
    """A label source's colour; its arms of other algorithms than PPO get shades of it."""
    if name in COLORS:
        return COLORS[name]
    source, algorithm = arm_parts(name)
    if source in COLORS and algorithm != "ppo":
        return _shade(COLORS[source], SHADES[algorithm])
    return OTHER_COLORS[i % len(OTHER_COLORS)]


def _shade(color: str, amount: float) -> str:
    """``color`` (#rrggbb) moved a share ``|amount|`` of the way to white (amount > 0) or black (amount < 0).

    >>> _shade("#1f77b4", 0.5), _shade("#1f77b4", -0.5)
    ('#8fbbda', '#103c5a')
    """
    target = 255 if amount > 0 else 0
    return "#" + "".join(f"{round(c + (target - c) * abs(amount)):02x}"
                         for c in (int(color[i:i + 2], 16) for i in (1, 3, 5)))


def _marker(name: str) -> str:
    return MARKERS[arm_parts(name)[1]]


def _save(fig: Any, path: Path) -> None:
    """Save a figure as PNG atomically, without the metadata entries that vary between matplotlib builds."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


def _plot_frontier(Figure: Any, results: dict, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    starts: list[tuple[float, float]] = []
    for i, (name, curve) in enumerate((results.get("curves") or {}).items()):
        color = _color(name, i)
        for points in curve.values():   # each seed's eval points, faint
            xy = [(p["kl"], p["gold_mean"]) for p in points if _finite(p.get("kl")) and _finite(p.get("gold_mean"))]
            if xy:
                ax.scatter(*zip(*xy), s=12, color=color, alpha=0.25, linewidths=0)
        steps, kl, gold = _mean_curve(curve, "kl", "gold_mean")
        if kl:
            ax.plot(kl, gold, marker=_marker(name), ms=4, color=color, label=f"{_name(name)} (mean of seeds)")
            ax.annotate("end", (kl[-1], gold[-1]), textcoords="offset points", xytext=(6, 4), fontsize=8,
                        color=color)
            if steps[0] == 0:
                starts.append((kl[0], gold[0]))
    policies, missing = results["policies"], _without_curves(results)
    for i, name in enumerate(["sft", *missing] if missing else [], len(results.get("curves") or {})):
        # no curve (DPO): the final held-out evaluation, each seed faint and the estimate over all of them, beside
        # SFT's on the same prompts
        color, p = _color(name, i), policies[name]
        xy = [(s["kl"], s["gold_mean"]) for s in (p.get("per_seed") or {}).values()
              if _finite(s.get("kl")) and _finite(s.get("gold_mean"))]
        if xy:
            ax.scatter(*zip(*xy), s=12, color=color, alpha=0.25, linewidths=0)
        if _finite(p["kl"][0]) and _finite(p["gold_mean"][0]):
            ax.scatter([p["kl"][0]], [p["gold_mean"][0]], marker="*" if name == "sft" else _marker(name),
                       s=90 if name == "sft" else 40, color=color, label=f"{_name(name)} (final, held-out prompts)")
    if starts:
        # Every arm starts as the SFT policy, measured on the curves' prompts (not the final table's SFT figure:
        # the curves are evaluated during training on their own prompt sample).
        ax.scatter(*zip(*starts), marker="*", s=160, color=COLORS["sft"], zorder=3, label="SFT (step 0)")
    ax.margins(x=0.1, y=0.08)  # room for the "end" labels
    ax.set_xlabel("KL to the SFT reference (nats per completion)")
    ax.set_ylabel("gold score (mean over eval prompts)")
    ax.set_title("Reward vs KL: gold score bought per unit of KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def _plot_proxy_vs_gold(Figure: Any, results: dict, path: Path) -> None:
    curves = results.get("curves") or {}
    names = [n for n in curves if n not in _without_curves(results)]
    cols = min(len(names), 4)  # panels in rows of four at most
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(max(6.4, 4.8 * cols), 4.4 * rows), layout="constrained")
    maximised = "PPO" if _algorithms(results) == ["ppo"] else "the RL algorithm"
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax2 = ax.twinx()
        for seed in curves[name]:
            ax.plot(*_mean_curve({seed: curves[name][seed]}, "proxy_reward"), color="#1f77b4", alpha=0.2, lw=1)
            ax2.plot(*_mean_curve({seed: curves[name][seed]}, "gold_mean"), color="#d62728", alpha=0.2, lw=1)
        proxy = _mean_curve(curves[name], "proxy_reward")
        lines = ax.plot(*proxy, color="#1f77b4", marker="o", ms=3, label=f"proxy reward (what {maximised} maximised)")
        if not proxy[0]:
            ax.text(0.5, 0.6, "no proxy reward recorded", transform=ax.transAxes, ha="center", color="#1f77b4")
        lines += ax2.plot(*_mean_curve(curves[name], "gold_mean"), color="#d62728", marker="s", ms=3, ls="--",
                          label="gold score (held-out judge)")
        ax.set_title(_name(name))
        ax.set_xlabel("training timesteps (tokens)")
        ax.set_ylabel("proxy reward", color="#1f77b4")
        ax2.set_ylabel("gold score", color="#d62728")
        ax.tick_params(axis="y", colors="#1f77b4")
        ax2.tick_params(axis="y", colors="#d62728")
        ax.grid(alpha=0.3)
    # One legend for all panels, under them, where it cannot cover a curve.
    fig.suptitle("Proxy reward vs gold score over training (thin lines: single seeds)")
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncol=2, frameon=False)
    _save(fig, path)


def _plot_gold_by_policy(Figure: Any, results: dict, path: Path) -> None:
    policies = results["policies"]
    names = [n for n in _policy_order(policies) if policies[n]["gold_mean"][0] is not None]
    fig = Figure(figsize=(max(5.0, 1.4 * len(names) + 1.5), 4.0), layout="constrained")
    ax = fig.add_subplot()
    for x, name in enumerate(names):
        est, low, high = policies[name]["gold_mean"]
        err = [[est - low], [high - est]] if low is not None and high is not None else None
        ax.errorbar([x], [est], yerr=err, fmt=_marker(name), ms=7, capsize=6, lw=1.5, color=_color(name, x))
        ax.annotate(f"{est:.3f}", (x, est), textcoords="offset points", xytext=(9, -3), fontsize=8)
    sft = policies["sft"]["gold_mean"][0]
    if sft is not None:
        ax.axhline(sft, color=COLORS["sft"], ls=":", lw=1, label="SFT estimate")
        ax.legend(fontsize=8, loc="best")
    ax.set_xticks(range(len(names)), [_name(n) for n in names])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("gold score (mean, 95 % interval)")
    ax.set_title("Gold score by policy (held-out prompts, all seeds)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _draw_plots(out_dir: Path, results: dict) -> dict[str, Path] | None:
    """Draw the PNGs; None when matplotlib is missing."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: report.md has no plots; pip install \"rlfl[plots]\" for them")
        return None
    paths = {}
    style = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
             "font.family": "DejaVu Sans", "figure.facecolor": "white", "savefig.facecolor": "white"}
    with matplotlib.rc_context(style):  # the caller's matplotlibrc must not change our files
        _plot_gold_by_policy(Figure, results, out_dir / PLOT_FILES["gold_by_policy"])
        paths["gold_by_policy"] = out_dir / PLOT_FILES["gold_by_policy"]
        if results.get("curves"):
            _plot_frontier(Figure, results, out_dir / PLOT_FILES["frontier"])
            paths["frontier"] = out_dir / PLOT_FILES["frontier"]
        if len(_without_curves(results)) < len(results.get("curves") or {}):  # some arm has a curve
            _plot_proxy_vs_gold(Figure, results, out_dir / PLOT_FILES["proxy_vs_gold"])
            paths["proxy_vs_gold"] = out_dir / PLOT_FILES["proxy_vs_gold"]
    return paths


def _plots_section(paths: dict[str, Path] | None, plots: bool) -> list[str]:
    if not plots:
        return ["## Plots", "", "Plots were turned off for this report (plots=False).", ""]
    if paths is None:
        return ["## Plots", "", PLOTS_HINT, ""]
    captions = {"frontier": "Reward vs KL frontier", "proxy_vs_gold": "Proxy reward vs gold score over training",
                "gold_by_policy": "Gold score by policy"}
    lines = ["## Plots", ""]
    for key in ("frontier", "proxy_vs_gold", "gold_by_policy"):
        if key in paths:
            lines += [f"![{captions[key]}]({paths[key].name})", ""]
    if "proxy_vs_gold" in paths:
        lines += [("The first two plots come from the evaluations during training, on their own sample of "
                   "prompts, so their values need not match the tables (the final evaluation on held-out prompts)."),
                  ""]
    return lines


# ------------------------------------------------------------------------------------ entry point
def render_report(results: dict, plot_paths: dict[str, Path] | None = None, *, plots: bool = True,
                  config_file: str | None = None) -> str:
    """The text of report.md for ``results`` (images linked by file name from ``plot_paths``).

    ``config_file`` names the config in the header when ``results`` does not (``config_file`` at the top
    level or in ``config``).
    """
    check_results(results)
    lines = [*_header(results, config_file), "## What this says", "", *_summary(results), "", *_labels(results),
             *_reward_models(results), *_policies(results), *_head_to_head(results), *_proxy_scores(results),
             *_plots_section(plot_paths, plots), *_samples(results), *_per_seed(results), *_timing(results)]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(out_dir: str | os.PathLike, results: dict, *, plots: bool = True) -> dict[str, Path]:
    """Write ``out_dir/report.md`` (and the PNG plots when matplotlib is installed) from `rlfl compare` results.

    ``results`` is the results.json dict (see `check_results` for the keys it needs; a missing one is a
    ValueError naming it, raised before anything is written). Returns the paths written: ``"report"`` and,
    with plots, ``"gold_by_policy"`` plus ``"frontier"`` and ``"proxy_vs_gold"`` when training curves are
    present. Without matplotlib (or with ``plots=False``) the report says how to get the plots.
    """
    check_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_paths = _draw_plots(out, results) if plots else None
    # the config used, as rlfl.compare writes it beside the results (rerun with `rlfl compare config.yaml`)
    config_file = next((name for name in ("config.yaml", "config.json") if (out / name).is_file()), None)
    report = atomic_write_text(out / "report.md", render_report(results, plot_paths, plots=plots,
                                                                config_file=config_file))
    logger.info("wrote %s%s", report, f" and {len(plot_paths)} plots" if plot_paths else "")
    return {"report": report, **(plot_paths or {})}

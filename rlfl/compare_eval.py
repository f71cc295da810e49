"""Judging for `rlfl compare`: its judges, the held-out prompts, the evaluation stage and the statistics.

`make_compare_judge` builds every judge a compare config names (the AI labeller, the gold judge, the scorer
simulated annotators read): `rlfl.judges.make_judge`'s specs plus ``lexicon`` (`lexicon_sentiment`),
``gold-sentiment`` and ``rm:DIR``. `load_prompts` reads the prompt set and `split_prompts` holds the final
evaluation's prompts out of everything else.

`stage_evaluate` samples each policy (the SFT policy and every arm's run, whatever trained it) on the held-out
prompts, one file per policy and seed in ``eval/<policy>/seed<k>.jsonl``, a record per completion: its gold score, its KL to the
reference (the SFT policy: the summed ``log p_policy - log p_ref`` of the sampled tokens), the reference's
negative log-likelihood of it (perplexity), its length and both reward models' scores (proxy). Seed ``k``
of every policy samples with the same generator seed (common random numbers: two similar policies draw
similar completions, which narrows the paired comparisons). Gold preferences between policies (win rate vs
SFT, head-to-head) go through the gold judge's ``prefer``, asked in both orders and averaged, and are cached
in ``eval/gold_prefs.json`` with the gold verdicts on the labelled items (how often each label source agrees
with gold) and on pairs of SFT completions from two seeds (each reward model's held-out accuracy).

`build_results` turns those files into the ``results.json`` dict (its keys: `rlfl.compare_report.check_results`),
with bootstrap confidence intervals over seeds (`rlfl.compare_stats`).

**Prompt encoding** follows the env exactly (`rlfl.envs.text_env`): a chat user turn when ``chat_template``,
else the plain tokens (``<|endoftext|>`` for an empty prompt), then the last ``max_prompt_tokens`` kept.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlfl.checkpoint import is_checkpoint, load_checkpoint, read_config
from rlfl.compare_stats import agreement, bootstrap_ci, distinct_n, paired_diff_ci
from rlfl.envs.prompts import hh_prompts, imdb_prompts, synthetic_review_prompts
from rlfl.envs.rewards import GoldSentiment, source_name
from rlfl.envs.text_env import default_stop_tokens
from rlfl.files import atomic_write_text
from rlfl import evaluate
from rlfl.evaluate import Sample, completion_logprobs, completion_records, encode_prompt
from rlfl.judges import CallableJudge, JudgeEndpointError, _parse_spec, make_judge
from rlfl.reward import load_reward_model
from rlfl.stage_cache import write_jsonl
from rlfl.synthetic import TERMS, grammar_words, words_of

if TYPE_CHECKING:
    from rlfl.compare import CompareRun

BUILTIN_JUDGES = ("lexicon", "gold-sentiment")
PROMPT_SPECS = "synthetic, imdb:PATH, hh:FILE[,FILE...], a .txt file (one a line) or a .jsonl file of {prompt}"
JUDGE_SPECS = "lexicon, gold-sentiment, rm:RM_DIR, lm:CKPT, http:URL, embed[:MODEL_DIR] or python:MODULE:NAME"
EVAL_SEED = 10_000  # sampling seed of evaluation seed k is EVAL_SEED + k: disjoint from every training seed
TIE_EPS = 1e-9


# ------------------------------------------------------------------------------------------ judges
_WORD = re.compile(r"[a-z]+")


def lexicon_sentiment(prompt: str, completion: str) -> float:
    """A bag-of-words sentiment of prompt + completion: the mean value of its sentiment words (0.0: none).

    It knows the synthetic corpus's words but none of its rules: no negation ("not good" reads as good), no
    intensifiers, no "but" weighting, no ratings ("1/10" reads as nothing). That makes it an honest offline
    stand-in for an AI judge: right most of the time, wrong in ways a model of the gold judge would not be.

    Example:
        >>> lexicon_sentiment("The soup was", " great."), lexicon_sentiment("The soup was", " not bad at all.")
        (0.75, -0.5)
    """

    values = [TERMS[w] for w in _WORD.findall((prompt + completion).lower()) if w in TERMS]
    return float(sum(values) / len(values)) if values else 0.0


def parse_judge_spec(spec: str) -> tuple[str, str]:
    """(kind, argument) of a judge spec (see ``JUDGE_SPECS``); raises ValueError on a malformed one."""
    if spec in BUILTIN_JUDGES:
        return spec, ""
    kind, _, arg = spec.partition(":")
    if kind == "rm":
        if not arg:
            raise ValueError(f"judge {spec!r}: nothing after 'rm:'; use {JUDGE_SPECS}")
        return kind, arg

    try:
        return _parse_spec(spec)
    except ValueError as e:
        raise ValueError(f"{e} (or lexicon, gold-sentiment, rm:RM_DIR)") from None


def make_compare_judge(spec: str, key: str, *, constitution: str | None = None, device: str = "cpu",
                       batch_size: int = 16, probe: bool = True) -> Any:
    """Build the judge ``spec`` names, failing with a one-line error that names config field ``key``.

    Beyond `rlfl.judges.make_judge`'s specs: ``lexicon`` (`lexicon_sentiment`), ``gold-sentiment`` (the
    synthetic task's gold judge) and ``rm:DIR`` (a reward model read as raw scores, e.g. a classifier whose
    logit > 0 means positive). With ``probe``, an ``http:`` judge must answer a one-pair request now.
    """

    kind, arg = parse_judge_spec(spec)
    flag = "--" + key.replace("_", "-")
    if kind == "lexicon":
        return CallableJudge(lexicon_sentiment, name="lexicon (rule-based stand-in for an LLM judge)")
    if kind == "gold-sentiment":
        return CallableJudge(GoldSentiment(), name="gold-sentiment")
    if kind in ("rm", "lm") and not is_checkpoint(arg):
        raise FileNotFoundError(f"{arg}: not a checkpoint directory ({key}={spec!r}); fix {flag}")
    if constitution is not None and not Path(constitution).is_file():
        raise FileNotFoundError(f"{constitution}: no such constitution file (constitution); fix --constitution")
    try:
        if kind == "rm":

            return CallableJudge(load_reward_model(arg, device=device, normalize=False), name=f"rm:{arg}")
        judge = make_judge(spec, constitution, device=device, batch_size=batch_size)
        if probe and kind == "http":
            judge.prefer(["probe"], [" yes"], [" no"])
        return judge
    except JudgeEndpointError as e:
        raise ValueError(f"{key}={spec!r}: the judge endpoint is down ({e}); fix {flag} or start the server") from None
    except (ImportError, ValueError, OSError) as e:
        raise ValueError(f"{key}={spec!r}: cannot build the judge ({str(e).splitlines()[0]}); fix {flag}") from None


# ------------------------------------------------------------------------------------------ prompts
def load_prompts(spec: str, *, n: int | None, seed: int) -> list[str]:
    """The prompt strings ``spec`` names (see ``PROMPT_SPECS``), a seeded subset of ``n`` when given."""

    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        if arg and not arg.isdigit():
            raise ValueError(f"prompts={spec!r}: use synthetic or synthetic:N (N prompts); fix --prompts")
        return list(synthetic_review_prompts(n or int(arg or 2000), seed=0))
    if kind in ("imdb", "hh"):
        paths = [p for p in arg.split(",") if p]
        missing = [p for p in paths if not Path(p).exists()] or ([] if paths else [""])
        if missing:
            raise FileNotFoundError(f"{missing[0] or spec}: no such prompt data (prompts={spec!r}); fix --prompts")
        if kind == "imdb":
            texts = [t for p in paths for t in imdb_prompts(p, split="train", n=None, seed=seed)]
        else:
            texts = [t for p in paths for t in hh_prompts(p, n=None, seed=seed)]
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such prompt file (prompts); pass {PROMPT_SPECS}")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.suffix == ".jsonl":
            texts = []
            for i, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i}: not valid JSON ({e.msg}); fix or remove the line") from None
                if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                    raise ValueError(  # noqa: TRY004 - bad user data, not a programming error
                        f"{path} line {i}: no string field 'prompt'; pass {{\"prompt\": ...}} per line")
                texts.append(record["prompt"])
        else:
            texts = lines
    if n is not None and n < len(texts):
        keep = sorted(np.random.default_rng(seed).choice(len(texts), size=n, replace=False).tolist())
        texts = [texts[i] for i in keep]
    return texts


def split_prompts(texts: Sequence[str], n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out evaluation prompts): deduplicated, then a seeded split, so no text is in both.

    Example:
        >>> train, held = split_prompts(["a", "b", "a", "c", "d"], 1, seed=0)
        >>> sorted(train + held), len(held)
        (['a', 'b', 'c', 'd'], 1)
    """
    unique = list(dict.fromkeys(texts))
    if len(unique) < n_eval + 2:
        raise ValueError(f"{len(unique)} distinct prompts are too few to hold {n_eval} out and train on the rest; "
                         "lower --eval-prompts or pass more prompts")
    order = np.random.default_rng(seed).permutation(len(unique))
    held = set(order[:n_eval].tolist())
    return ([t for i, t in enumerate(unique) if i not in held], [unique[i] for i in sorted(held)])


# ------------------------------------------------------------------------------------------ sampling
def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[str], *, chat: bool, max_prompt_tokens: int,
                       max_new_tokens: int, seed: int, on_batch: Callable[[int], Any] | None = None) -> list[Sample]:
    """One plain-softmax completion per prompt text (temperature 1: what PPO optimises), encoded as the env
    encodes it, stopping at the env's stop tokens (``<|endoftext|>``, ``<|end|>``); batches of 256 seeded from
    ``seed``, so the same seed gives the same completions (`rlfl.evaluate.sample_completions`)."""
    encoded = [encode_prompt(tokenizer, p, chat=chat, max_prompt_tokens=max_prompt_tokens) for p in prompts]
    return evaluate.sample_completions(model, tokenizer, encoded, max_new_tokens=max_new_tokens,
                                       stop_tokens=default_stop_tokens(tokenizer), seed=seed, seed_stride=100_003,
                                       batch_size=256, on_batch=on_batch)


def prefer_swapped(judge: Any, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """P(a better than b), asked in both orders and averaged: ``(prefer(a, b) + 1 - prefer(b, a)) / 2``.

    A judge that favours a position says the same in both orders, and the two cancel.
    """
    prompts, a, b = list(prompts), list(a), list(b)
    if not prompts:
        return np.zeros(0)
    ab = np.asarray(judge.prefer(prompts, a, b), dtype=np.float64)
    ba = np.asarray(judge.prefer(prompts, b, a), dtype=np.float64)
    return 0.5 + (ab - ba) / 2.0  # = (ab + 1 - ba) / 2, exactly 0.5 when the orders cancel


# ------------------------------------------------------------------------------------------ the stage
def policy_dirs(run: CompareRun) -> dict[str, dict[int, Path]]:
    """Policy name -> seed -> checkpoint directory (the SFT policy is the same one for every seed)."""
    out = {"sft": {s: Path(run.cfg.policy) for s in run.cfg.seeds}}
    for arm in run.cfg.arms:
        out[arm.name] = {s: run.arm_dir(arm, s) for s in run.cfg.seeds}
    return out


def _eval_file(run: CompareRun, name: str, seed: int) -> Path:
    return run.path("eval", name, f"seed{seed}.jsonl")


def stage_evaluate(run: CompareRun) -> None:
    """eval/<policy>/seed<k>.jsonl for every policy and seed, then eval/gold_prefs.json."""

    cfg = run.cfg
    todo = [(name, seed, d) for name, dirs in policy_dirs(run).items() for seed, d in dirs.items()
            if not _eval_file(run, name, seed).is_file()]
    prompts = [p for p in run.eval_prompts for _ in range(cfg.eval_samples)]
    with run.stage("evaluate", f"{len(todo)} policy x seed evaluations on {len(prompts)} held-out completions each",
                   not todo) as going:
        if going:
            ref = load_checkpoint(cfg.policy, device=run.device)
            rms = {arm: load_reward_model(run.path(f"rm_{arm}"), device=run.device) for arm in ("rlhf", "rlaif")}
            gold = run.judges["gold"]
            with run.bar(len(todo), "evaluate") as bar:
                for name, seed, directory in todo:
                    model = ref.model if name == "sft" else load_checkpoint(directory, device=run.device).model
                    samples = sample_completions(model, ref.tokenizer, prompts, chat=cfg.chat_template,
                                                 max_prompt_tokens=cfg.max_prompt_tokens,
                                                 max_new_tokens=cfg.max_new_tokens, seed=EVAL_SEED + seed)
                    ref_lp = completion_logprobs(ref.model, samples, pad_id=ref.tokenizer.pad_id)
                    texts = [s.text for s in samples]
                    scores = np.asarray(gold.score(prompts, texts), dtype=np.float64)
                    proxy = {f"rm_{arm}": rm.score(prompts, texts) for arm, rm in rms.items()}
                    records = [{"prompt": p, "completion": r["completion"], "gold": r["score"], "kl": r["kl"],
                                "nll": r["nll"], "tokens": r["tokens"], "stopped": r["stopped"],
                                **{k: float(v[i]) for k, v in proxy.items()}}
                               for i, (p, r) in enumerate(zip(prompts, completion_records(samples, ref_lp, scores)))]
                    write_jsonl(_eval_file(run, name, seed), records)
                    bar.update(1)
    _gold_prefs(run)


def _read(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _comparisons(run: CompareRun) -> dict[str, tuple[str, str, int]]:
    """Cache key -> (policy a, policy b, seed) of every gold pairwise comparison of policies."""
    names = ["sft", *(arm.name for arm in run.cfg.arms)]
    out = {}
    for seed in run.cfg.seeds:
        for name in names[1:]:
            out[f"{name}_vs_sft/seed{seed}"] = (name, "sft", seed)
        for i, a in enumerate(names[1:], 1):
            for b in names[i + 1:]:
                out[f"{a}_vs_{b}/seed{seed}"] = (a, b, seed)
    return out


def _gold_prefs(run: CompareRun) -> None:
    """eval/gold_prefs.json: gold P(a better), position-swapped, for every policy comparison, the labelled
    items (label agreement with gold) and the held-out SFT pairs (reward-model accuracy)."""
    path = run.path("eval", "gold_prefs.json")
    cached = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    wanted: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for key, (a, b, seed) in _comparisons(run).items():
        if key not in cached:
            ra, rb = _read(_eval_file(run, a, seed)), _read(_eval_file(run, b, seed))
            wanted[key] = ([r["prompt"] for r in ra], [r["completion"] for r in ra], [r["completion"] for r in rb])
    if "items" not in cached:
        items = _read(run.path("items.jsonl"))
        wanted["items"] = ([it["prompt"] for it in items], [it["response_a"] for it in items],
                           [it["response_b"] for it in items])
    for s0, s1 in itertools.pairwise(run.cfg.seeds):
        key = f"heldout/seed{s0}_seed{s1}"
        if key not in cached:
            r0, r1 = _read(_eval_file(run, "sft", s0)), _read(_eval_file(run, "sft", s1))
            wanted[key] = ([r["prompt"] for r in r0], [r["completion"] for r in r0], [r["completion"] for r in r1])
    with run.stage("gold_prefs", f"gold preferences on {len(wanted)} sets of pairs (both orders)", not wanted) as todo:
        if todo:
            with run.bar(len(wanted), "gold prefs") as bar:
                for key, (prompts, a, b) in wanted.items():
                    cached[key] = [round(float(p), 9) for p in prefer_swapped(run.judges["gold"], prompts, a, b)]
                    bar.update(1)
            atomic_write_text(path, json.dumps(cached) + "\n")


# ------------------------------------------------------------------------------------------ results
def wins(probs: Sequence[float]) -> np.ndarray:
    """1 / 0.5 / 0 per pair from P(a better): a win, a tie (within 1e-9 of 0.5) or a loss."""
    p = np.asarray(probs, dtype=np.float64)
    return np.where(p > 0.5 + TIE_EPS, 1.0, np.where(p < 0.5 - TIE_EPS, 0.0, 0.5))


def choices(probs: Sequence[float]) -> list[str]:
    """"a" / "b" / "tie" from P(a better) (ties within 1e-9 of 0.5)."""
    return ["a" if w == 1.0 else "b" if w == 0.0 else "tie" for w in wins(probs)]


def _ci(values_by_seed: list[np.ndarray], run: CompareRun, **kw: Any) -> list[float]:

    return list(bootstrap_ci(values_by_seed, n_boot=run.cfg.n_boot, seed=run.cfg.seed, **kw))


def _policy_figures(run: CompareRun, name: str, evals: dict[str, dict[int, list[dict]]],
                    prefs: dict[str, list[float]]) -> dict[str, Any]:

    seeds = run.cfg.seeds
    rec = evals[name]
    arr = {key: [np.array([r[key] for r in rec[s]], dtype=np.float64) for s in seeds]
           for key in ("gold", "kl", "nll", "tokens", "rm_rlhf", "rm_rlaif")}
    stopped = [np.array([r["stopped"] for r in rec[s]], dtype=np.float64) for s in seeds]
    per_token_nll = [n / np.maximum(t, 1) for n, t in zip(arr["nll"], arr["tokens"])]
    positive = [(g > 0).astype(np.float64) for g in arr["gold"]]
    if name == "sft":
        win_by_seed = [np.full(len(g), 0.5) for g in arr["gold"]]
        diff = [0.0, 0.0, 0.0]
    else:
        win_by_seed = [wins(prefs[f"{name}_vs_sft/seed{s}"]) for s in seeds]
        sft_gold = [np.array([r["gold"] for r in evals["sft"][s]], dtype=np.float64) for s in seeds]
        diff = list(paired_diff_ci(arr["gold"], sft_gold, n_boot=run.cfg.n_boot, seed=run.cfg.seed))
    ppl = [math.exp(v) for v in _ci(per_token_nll, run)]
    texts = [r["completion"] for s in seeds for r in rec[s]]
    words = _in_vocab_rate(run, texts)
    per_seed = {}
    for i, s in enumerate(seeds):
        seed_texts = [r["completion"] for r in rec[s]]
        per_seed[str(s)] = {
            "gold_mean": float(arr["gold"][i].mean()), "gold_positive_rate": float(positive[i].mean()),
            "win_rate_vs_sft": float(win_by_seed[i].mean()), "kl": float(arr["kl"][i].mean()),
            "perplexity": math.exp(float(per_token_nll[i].mean())), "length": float(arr["tokens"][i].mean()),
            "stop_rate": float(stopped[i].mean()), "distinct_1": distinct_n(seed_texts, 1),
            "distinct_2": distinct_n(seed_texts, 2), "proxy_rlhf": float(arr["rm_rlhf"][i].mean()),
            "proxy_rlaif": float(arr["rm_rlaif"][i].mean()), "n": len(seed_texts),
            **({} if words is None else {"in_vocab_rate": _in_vocab_rate(run, seed_texts)})}
    return {
        "gold_mean": _ci(arr["gold"], run), "gold_positive_rate": _ci(positive, run),
        "win_rate_vs_sft": _ci(win_by_seed, run), "gold_diff_vs_sft": diff, "kl": _ci(arr["kl"], run),
        "perplexity": ppl, "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
        "length": float(np.concatenate(arr["tokens"]).mean()), "stop_rate": float(np.concatenate(stopped).mean()),
        "proxy_rlhf": _ci(arr["rm_rlhf"], run), "proxy_rlaif": _ci(arr["rm_rlaif"], run),
        "n": int(sum(len(g) for g in arr["gold"])), "per_seed": per_seed,
        **({} if words is None else {"in_vocab_rate": words}),
        "samples": [{"prompt": r["prompt"], "completion": r["completion"], "gold": r["gold"]}
                    for r in rec[seeds[0]][:3]],
    }


def _in_vocab_rate(run: CompareRun, texts: Sequence[str]) -> float | None:
    """On the built-in synthetic prompts: the share of the completions' words that the review grammar can
    write (`rlfl.synthetic.in_vocabulary_rate`, pooled over words); None for other prompt sets."""
    if run.cfg.prompts != "synthetic":
        return None

    vocab = grammar_words()
    words = [w for t in texts for w in words_of(t)]
    return sum(w in vocab for w in words) / len(words) if words else 1.0


def _label_section(run: CompareRun, gold_items: list[float]) -> dict[str, Any]:

    cfg = run.cfg
    items = _read(run.path("items.jsonl"))
    human, ai = _read(run.path("human_labels.jsonl")), _read(run.path("ai_labels.jsonl"))
    ai_by_item = {lab["item"]: lab["choice"] for lab in ai}
    gold_by_item = dict(zip((it["item"] for it in items), choices(gold_items)))
    simulated = all(lab["simulated"] for lab in human)
    kind, _, arg = cfg.human.partition(":")
    names = sorted({lab["annotator"] for lab in human})
    if kind == "simulated":
        detail = (f"{cfg.annotators} SIMULATED annotators ({', '.join(names)}) reading "
                  f"{source_name(run.judges['human_gold'])} with noise {cfg.noise:g}, position bias "
                  f"{cfg.position_bias:g}, length bias {cfg.length_bias:g}, {cfg.per_item} per pair; in labels.db")
    elif kind == "store":
        detail = (f"labels of {len(names)} annotator(s) ({', '.join(names)}) from the label store "
                  f"{run.portable(arg)}" + ("; all SIMULATED" if simulated else ""))
    else:
        detail = f"the dataset's own preference labels ({run.portable(arg)}), pairs shown in a seeded random order"

    def counts(labels: list[dict]) -> dict[str, int]:
        return {c: sum(lab["choice"] == c for lab in labels) for c in ("a", "b", "tie")}

    human_choices = [lab["choice"] for lab in human]
    return {
        "human": {"source": run.portable(cfg.human), "simulated": simulated, "n": len(human), "detail": detail,
                  "annotators": names, "counts": counts(human)},
        "ai": {"source": source_name(run.judges["ai_judge"]), "n": len(ai), "counts": counts(ai),
               "parameters": getattr(run.judges["ai_judge"], "n_params", None),
               "detail": f"{source_name(run.judges['ai_judge'])}: prefer() on the same {len(items)} pairs, a tie "
                         f"when |P - 0.5| <= {cfg.tie_band:g}"},
        "agreement": agreement(human_choices, [ai_by_item[lab["item"]] for lab in human]),
        "agreement_with_gold": {
            "judge": source_name(run.judges["gold"]),
            "human": agreement(human_choices, [gold_by_item[lab["item"]] for lab in human]),
            "ai": agreement([lab["choice"] for lab in ai], [gold_by_item[lab["item"]] for lab in ai])},
        "items": len(items),
    }


def _reward_models(run: CompareRun, evals: dict[str, dict[int, list[dict]]], prefs: dict[str, list[float]]
                   ) -> dict[str, Any]:
    """Each RM's own validation accuracy and its accuracy against GOLD on held-out pairs of SFT samples."""

    seeds = run.cfg.seeds
    out = {}
    for arm in ("rlhf", "rlaif"):
        config = read_config(run.path(f"rm_{arm}"))
        stats, data = config.get("reward", {}), config.get("data", {})
        correct, n = 0.0, 0
        for s0, s1 in itertools.pairwise(seeds):
            r0, r1 = evals["sft"][s0], evals["sft"][s1]
            for p, x, y in zip(prefs[f"heldout/seed{s0}_seed{s1}"], r0, r1):
                w = wins([p])[0]
                if w == 0.5:
                    continue  # the gold judge sees no difference: nothing to be right about
                d = x[f"rm_{arm}"] - y[f"rm_{arm}"]
                correct += 0.5 if d == 0 else float((d > 0) == (w == 1.0))
                n += 1
        out[arm] = {"data": "human_prefs.jsonl" if arm == "rlhf" else "ai_prefs.jsonl",
                    "train_pairs": data.get("train"), "val_pairs": stats.get("val_items"),
                    "val_accuracy": stats.get("val_accuracy"),
                    "pair_accuracy_heldout": correct / n if n else None, "heldout_pairs": n,
                    "heldout_judge": "gold"}
    return out


def _curves(run: CompareRun) -> dict[str, Any]:
    """Per arm and seed: the RL run's gold evaluations (eval.csv), each with ``proxy_reward``: the mean training
    reward (reward model, or the judge for direct RLAIF) of the rollout collected with the weights evaluated; the
    final evaluation's weights collected none, so it gets the last rollout's (one update older). An arm that
    evaluates nothing during training (DPO) has an empty dict."""
    out: dict[str, Any] = {}
    for arm in run.cfg.arms:
        out[arm.name] = {}
        for seed in run.cfg.seeds if arm.curves else ():
            d = run.arm_dir(arm, seed)
            with open(d / "eval.csv", newline="", encoding="utf-8") as fh:
                evals = list(csv.DictReader(fh))
            proxy = rollout_scores(d / "logs")
            rows = []
            for row in evals:
                t = int(row["timesteps"])
                score = proxy.get(t, proxy[max(proxy)] if proxy and t > max(proxy) else None)
                rows.append({"timesteps": t, "proxy_reward": score, "gold_mean": float(row["gold_mean"]),
                             "gold_positive_rate": float(row["gold_positive_rate"]), "kl": float(row["kl"]),
                             "perplexity": float(row["perplexity"])})
            out[arm.name][str(seed)] = rows
    return out


def rollout_scores(logs: Path) -> dict[int, float]:
    """Timestep a rollout started at -> its mean training reward, from SB3's progress CSV(s) of an RL run.

    SB3 writes a row after each rollout (at the timestep it ended) and before the update; the update records
    ``rollout/score_mean`` of the rollout it trains on, so that figure lands in the NEXT row: the rollout it
    describes started where the row before the previous one ended (at 0, or at the step a resumed run started
    from, for the first). The last row (``train_ppo``'s final dump) has no timestep: its rollout is the one
    after the previous row's. Rollouts need not be the same length (GRPO's end with their longest completion).
    A resumed run writes ``progress-from-<step>.csv``; its rows override the first file's for rollouts it redid.
    """
    def step(path: Path) -> int:
        m = re.fullmatch(r"progress-from-(\d+)\.csv", path.name)
        return int(m.group(1)) if m else -1

    scores: dict[int, float] = {}
    for path in sorted(logs.glob("progress*.csv"), key=step):
        ends = [max(step(path), 0)]  # where the file's rollouts end, from where its first one started
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                t = row.get("time/total_timesteps") or None
                score = row.get("rollout/score_mean") or None
                if score is not None and len(ends) >= 2:
                    scores[ends[-2]] = float(score)
                if t is not None:
                    ends.append(int(float(t)))
    return scores


def build_results(run: CompareRun) -> dict[str, Any]:
    """The results.json dict (config, seeds, labels, reward_models, policies, head_to_head, curves) from the stages'
    files."""

    cfg = run.cfg
    prefs = json.loads(run.path("eval", "gold_prefs.json").read_text(encoding="utf-8"))
    evals = {name: {s: _read(_eval_file(run, name, s)) for s in cfg.seeds} for name in policy_dirs(run)}
    policies = {name: _policy_figures(run, name, evals, prefs) for name in evals}
    gold = source_name(run.judges["gold"])
    h2h = {}
    for key, (a, b, _) in _comparisons(run).items():
        pair = key.split("/")[0]
        if b != "sft" and pair not in h2h:
            h2h[pair] = {"win_rate": _ci([wins(prefs[f"{pair}/seed{s}"]) for s in cfg.seeds], run), "judge": gold,
                         "position_swapped": True, "n": len(prefs[key]) * len(cfg.seeds)}
    return {
        "config": run.settings(keep=("task",)) | {"task": run.portable(cfg.task or cfg.prompts)},
        "config_file": "config.yaml",
        "seeds": list(cfg.seeds),
        "prompts": {"spec": run.portable(cfg.prompts), "train": len(run.train_prompts), "eval": len(run.eval_prompts),
                    "eval_completions_per_seed": len(run.eval_prompts) * cfg.eval_samples},
        "judges": {"ai": source_name(run.judges["ai_judge"]), "gold": gold,
                   **({"human_gold": source_name(run.judges["human_gold"])} if "human_gold" in run.judges else {})},
        "labels": _label_section(run, prefs["items"]),
        "reward_models": _reward_models(run, evals, prefs),
        "policies": policies,
        "head_to_head": h2h,
        "curves": _curves(run),
    }

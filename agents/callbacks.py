"""SB3 callbacks for rlfl PPO runs: sample completions, gold-judge evaluation, checkpoints, a metrics line.

All of them are ordinary ``stable_baselines3`` ``BaseCallback`` subclasses, so they go in ``learn(callback=[...])``
beside any SB3 callback. Each one survives a resume (a killed run restarted from its last checkpoint):
they keep no counters of their own but read the model's ``num_timesteps``, and `GoldEval` re-reads its CSV.

**When they act.** Inside a rollout the weights do not change; they change in ``train()``, between
``on_rollout_end`` and the next ``on_rollout_start``. The start of a rollout is therefore the one point where
the weights, the optimizer, the KL coefficient and ``num_timesteps`` all describe the same moment (every
counted token has been trained on), so checkpoints and evaluations happen there, plus once when
training starts (the "before" figure) and once when it ends.

- `SampleLogger`: a few finished completions of the last rollout with their rewards (best to worst).
- `GoldEval` / `evaluate_policy`: the policy samples completions of held-out prompts (plain softmax,
  temperature 1, the env's stop tokens, ``min_new_tokens`` and prompt encoding); a gold judge scores them;
  the KL to the reference and the reference's perplexity of the text say what the reward cost.
- `CheckpointEvery`: the rlfl checkpoint (for ``rlfl sample``/``serve`` and later stages) and the run's
  resume state (``ppo_resume.pt``: tensors and numbers only, nothing unpickled), each written atomically.
- `ProgressLine`: a progress bar over tokens and one metrics line per update (score, KL, beta, tok/s).

Example:
    >>> from rlfl.agents import PPO                                                    # doctest: +SKIP
    >>> model = PPO("runs/sft", "rlfl/SyntheticReviews-v0", n_envs=32)                 # doctest: +SKIP
    >>> prompts = ["The food was", "I bought this"]
    >>> before = evaluate_policy(model, prompts)                                      # doctest: +SKIP
    >>> model.learn(65536, callback=[SampleLogger(every_rollouts=8), GoldEval(prompts, every_steps=8192),
    ...                              CheckpointEvery("runs/ppo", every_steps=8192)])   # doctest: +SKIP
    >>> evaluate_policy(model, prompts)["gold_mean"] > before["gold_mean"]             # doctest: +SKIP
    True
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from rlfl.envs.text_env import EpisodeFacts
from rlfl.files import atomic_write_bytes
from rlfl.envs.rewards import as_reward_source, check_scores
from rlfl.evaluate import completion_logprobs, completion_records, sample_completions, summarize

logger = logging.getLogger(__name__)

EVAL_FIELDS = ("timesteps", "gold_mean", "gold_positive_rate", "kl", "perplexity", "length", "stop_rate", "empty",
               "distinct_1", "distinct_2", "n")
# columns a GoldEval CSV written before they existed lacks; read back as NaN ("not measured")
LATER_FIELDS = ("empty", "distinct_1", "distinct_2")


# ---------------------------------------------------------------------------------------------- helpers
def _text_env(env: Any) -> Any:
    """The rlfl text env (single or vector) under a `TextVecEnv` or Gymnasium wrappers."""
    inner = getattr(env, "inner", None) or getattr(env, "unwrapped", env)
    if not isinstance(inner, EpisodeFacts):
        raise ValueError(f"{type(env).__name__} is not an rlfl text env; pass the env the policy was trained in "
                         "(a TextVecEnv, or a gymnasium env built from an rlfl env id)")
    return inner


def save_sb3_zip(model: BaseAlgorithm, path: str | Path) -> None:
    """``model.save(path)`` made atomic: SB3 writes the zip in place, so a kill mid-save would corrupt it.

    The zip is an export for SB3's ``PPO.load``, which unpickles parts of it: open only zips you wrote or
    trust. rlfl resumes from `rlfl.agents.PPO.save_resume_state` files instead, which hold no code.
    """
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_policy(
    model_or_policy: Any,
    prompts: Sequence[str],
    judge: Any = None,
    *,
    env: Any = None,
    n_samples: int = 1,
    max_new_tokens: int | None = None,
    seed: int | None = 0,
    batch_size: int = 64,
    n_show: int = 3,
) -> dict[str, Any]:
    """Sample the policy on ``prompts`` and measure it: gold score, KL to the reference, reference perplexity.

    ``model_or_policy`` is an rlfl `PPO` (its env is used) or a `TransformerPolicy` (then pass ``env=``, the
    text env or `TextVecEnv` it acts in). Prompts are encoded exactly as the env encodes them (chat template,
    left truncation to ``max_prompt_tokens``); completions are drawn from the plain softmax (temperature 1, no
    top-k/top-p), ``n_samples`` per prompt, up to ``max_new_tokens`` (default: the env's) or a stop token of
    the env, which cannot come before the env's ``min_new_tokens`` (as in PPO's rollouts; the reference's
    log-probs of the KL get the same ban). ``judge`` is a reward source or ``fn(prompt, completion) -> float``
    (default: the env's ``gold_judge``); it scores the completion text without its stop token. With a fixed
    ``seed`` two calls on the same weights draw the same completions, so figures before and after training are
    comparable.

    Returns the figures of `rlfl.evaluate.summarize`: ``gold_mean``, ``gold_positive_rate`` (share of scores
    > 0), ``kl`` (mean over completions of the summed ``log p_policy - log p_reference`` of the sampled tokens,
    nats), ``perplexity`` (exp of the mean per-token NLL of the sampled tokens under the REFERENCE: how fluent
    the text is by the starting model's standards), ``length`` (mean tokens generated, a final stop token
    included), ``stop_rate``, ``empty`` (completions with no text but white space), ``distinct_1``/``_2`` and
    ``n`` (completions); plus ``samples``: the first ``n_show`` as dicts of prompt, completion and score.
    """

    policy = model_or_policy.policy if isinstance(model_or_policy, BaseAlgorithm) else model_or_policy
    if env is None:
        env = getattr(model_or_policy, "env", None)
    if env is None:
        raise ValueError("evaluate_policy: pass env= (the text env the policy acts in: prompt encoding, stop "
                         "tokens and the default gold judge come from it)")
    inner = _text_env(env)
    if judge is None:
        judge = getattr(inner, "gold_judge", None)
        if judge is None:
            raise ValueError("evaluate_policy: the env has no gold judge; pass judge= (a reward source or "
                             "fn(prompt, completion) -> float)")
    judge = as_reward_source(judge)
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("evaluate_policy: prompts must be a non-empty list of strings")
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"evaluate_policy: n_samples={n_samples} and batch_size={batch_size} must be >= 1")
    tok = inner.tokenizer
    encoded = inner.encode_prompts(prompts)  # the env's own encoding (chat template, truncation)
    rows = [i for i in range(len(prompts)) for _ in range(n_samples)]
    n_new = int(max_new_tokens or inner.max_new_tokens)
    early = {"stop_tokens": inner.stop_tokens, "min_new_tokens": min(inner.min_new_tokens, n_new)}
    samples = sample_completions(policy.gpt, tok, [encoded[i] for i in rows], max_new_tokens=n_new, seed=seed,
                                 batch_size=batch_size, **early)
    ref = completion_logprobs(policy.reference, samples, pad_id=tok.pad_id, batch_size=batch_size,
                              attention_mask=True, **early)
    prompt_texts = [prompts[i] for i in rows]
    texts = [s.text for s in samples]
    scores = check_scores(judge.score(prompt_texts, texts), prompt_texts, texts, judge)
    figures = summarize(completion_records(samples, ref, scores))
    figures["samples"] = [{"prompt": p, "completion": t, "score": float(s)}
                          for p, t, s in list(zip(prompt_texts, texts, scores))[:n_show]]
    return figures


# ---------------------------------------------------------------------------------------------- callbacks
class SampleLogger(BaseCallback):
    """Logs ``n`` finished completions of every ``every_rollouts``-th rollout with their rewards.

    The completions are spread over the rollout's score ranking (best first, worst last), so a user sees both
    what the reward likes and what it does not. Lines go to Python logging; the text also goes to the SB3
    logger as ``samples/text`` (TensorBoard/JSON only: it would break stdout and CSV tables).
    """

    def __init__(self, every_rollouts: int = 1, n: int = 3, max_chars: int = 200) -> None:
        super().__init__()
        if every_rollouts < 1 or n < 1:
            raise ValueError(f"SampleLogger: every_rollouts={every_rollouts} and n={n} must be >= 1")
        self.every_rollouts, self.n, self.max_chars = int(every_rollouts), int(n), int(max_chars)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        store = getattr(self.model, "_store", None)
        # the rollout number comes from the token count, so a resumed run keeps the same schedule
        rollout = self.num_timesteps // max(1, self.model.n_steps * self.model.n_envs)
        if store is None or not store.completions or rollout % self.every_rollouts:
            return
        ranked = sorted(store.completions, key=lambda c: -c[2])
        picks = sorted({round(i) for i in np.linspace(0, len(ranked) - 1, min(self.n, len(ranked)))})
        lines = []
        for i in picks:
            prompt, completion, score = ranked[i]
            lines.append(f"[{score:+.3f}] {prompt[-self.max_chars:]!r} -> {completion[:self.max_chars]!r}")
        for line in lines:
            logger.info("sample @ %d: %s", self.num_timesteps, line)
        self.logger.record("samples/text", "\n".join(lines), exclude=("stdout", "log", "csv"))


class GoldEval(BaseCallback):
    """Evaluates the policy on held-out ``prompts`` with a gold judge (see `evaluate_policy`) during training.

    Runs when training starts (unless this timestep is already evaluated: the "before" figure of a fresh
    run), at the first rollout boundary past every multiple of ``every_steps`` timesteps (0: never in between)
    and when training ends. Each evaluation is recorded as ``eval/<figure>`` in the SB3 logger, appended to
    ``history`` (a list of dicts with ``timesteps``) and, with ``csv_path``, written to that CSV (the whole
    file is rewritten atomically). On resume the CSV is read back, minus rows past the resumed timestep (the
    run that wrote them was killed before its next checkpoint), so history and schedule continue.
    ``judge=None`` uses the env's ``gold_judge``; other keywords go to `evaluate_policy`. ``last_samples``
    holds the first few completions of the latest evaluation (prompt, completion, score).
    """

    def __init__(self, prompts: Sequence[str], judge: Any = None, *, every_steps: int = 0, n_samples: int = 1,
                 max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 64,
                 csv_path: str | Path | None = None, verbose: int = 1) -> None:
        super().__init__(verbose=verbose)
        if every_steps < 0:
            raise ValueError(f"GoldEval: every_steps={every_steps} must be >= 0 (0 = only at start and end)")
        if not prompts:
            raise ValueError("GoldEval: prompts is empty; pass held-out prompt strings")
        self.prompts, self.judge, self.every_steps = list(prompts), judge, int(every_steps)
        self.kwargs = {"n_samples": n_samples, "max_new_tokens": max_new_tokens, "seed": seed, "batch_size": batch_size}
        self.csv_path = None if csv_path is None else Path(csv_path)
        self.history: list[dict[str, float]] = []
        self.last_samples: list[dict[str, Any]] = []

    def _on_training_start(self) -> None:
        if self.judge is None and getattr(_text_env(self.model.env), "gold_judge", None) is None:
            raise ValueError("GoldEval: the env has no gold judge; pass judge= (a reward source or "
                             "fn(prompt, completion) -> float)")
        now = self.num_timesteps
        if self.csv_path is not None and self.csv_path.is_file():
            self.history = read_eval_csv(self.csv_path)
        kept = [row for row in self.history if row["timesteps"] <= now]
        if len(kept) != len(self.history):
            logger.info("GoldEval: dropped %d evaluation(s) after timestep %d (from a run that did not reach its "
                        "next checkpoint)", len(self.history) - len(kept), now)
        self.history = kept
        if self.csv_path is not None:
            self._write_csv()
        if not self.history:
            self.evaluate()
        else:
            self._maybe_evaluate()

    def _on_rollout_start(self) -> None:
        self._maybe_evaluate()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if not self.history or self.history[-1]["timesteps"] != self.num_timesteps:
            self.evaluate()

    def _maybe_evaluate(self) -> None:
        if not self.every_steps or not self.history:
            return
        last = int(self.history[-1]["timesteps"])
        if self.num_timesteps // self.every_steps > last // self.every_steps:
            self.evaluate()

    def evaluate(self) -> dict[str, float]:
        """Evaluate now; record, keep and write the figures; returns them."""
        t0 = time.perf_counter()
        result = evaluate_policy(self.model, self.prompts, self.judge, **self.kwargs)
        self.last_samples = result.pop("samples")
        row = {"timesteps": int(self.num_timesteps), **result}
        self.history.append(row)
        for key in EVAL_FIELDS[1:-1]:
            self.logger.record(f"eval/{key}", row[key])
        if self.csv_path is not None:
            self._write_csv()
        if self.verbose:
            logger.info("eval @ %d: gold %.4f | positive %.3f | kl %.3f | ppl %.2f | length %.1f (%d completions, "
                        "%.1fs)", row["timesteps"], row["gold_mean"], row["gold_positive_rate"], row["kl"],
                        row["perplexity"], row["length"], row["n"], time.perf_counter() - t0)
        return row

    def _write_csv(self) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(EVAL_FIELDS)
        for row in self.history:
            writer.writerow([row[k] for k in EVAL_FIELDS])
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.csv_path, text.getvalue().encode())


def read_eval_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a `GoldEval` CSV (``eval.csv`` of a PPO run) as dicts of `EVAL_FIELDS`; a column the file
    predates (`LATER_FIELDS`) reads as NaN."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(EVAL_FIELDS) - set(LATER_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a GoldEval CSV (no column {min(missing)!r}); delete it or pick "
                             "another csv_path")
        rows = []
        for row in reader:
            parsed: dict[str, Any] = {k: float(row.get(k) or "nan") for k in EVAL_FIELDS}
            parsed["timesteps"], parsed["n"] = int(parsed["timesteps"]), int(parsed["n"])
            if math.isfinite(parsed["empty"]):
                parsed["empty"] = int(parsed["empty"])
            rows.append(parsed)
    return rows


class CheckpointEvery(BaseCallback):
    """Saves the rlfl checkpoint and the run's resume state every ``every_steps`` timesteps and when training ends.

    ``out_dir`` becomes an rlfl checkpoint directory (``model.save_checkpoint``: atomic as a whole) and also
    holds ``resume_name`` (``model.save_resume_state``: weights, optimizer, counters and settings, read back
    by `rlfl.agents.PPO.from_resume_state` with ``torch.load(weights_only=True)``, so no code runs from it).
    The checkpoint is written first, so wherever a kill lands the resume state is never newer than the
    checkpoint and both always load (at worst it is one save behind, and a resume from it redoes those
    steps). ``every_steps=0``: only at the end. ``extra`` is added to the checkpoint's config.json (e.g. the
    run's config).
    """

    def __init__(self, out_dir: str | Path, every_steps: int, *, resume_name: str = "ppo_resume.pt",
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        if every_steps < 0:
            raise ValueError(f"CheckpointEvery: every_steps={every_steps} must be >= 0 (0 = only at the end)")
        self.out_dir, self.every_steps = Path(out_dir), int(every_steps)
        self.resume_path = Path(out_dir) / resume_name
        self.extra = extra
        self.last_saved = -1

    def _on_training_start(self) -> None:
        self.last_saved = self.num_timesteps  # what we resumed from (or 0) is already on disk or is the start

    def _on_rollout_start(self) -> None:
        if self.every_steps and self.num_timesteps // self.every_steps > self.last_saved // self.every_steps:
            self.save()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps != self.last_saved or not self.resume_path.is_file():
            self.save()

    def save(self) -> None:
        """Write both now."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_checkpoint(self.out_dir, extra=self.extra)
        self.model.save_resume_state(self.resume_path)
        self.last_saved = self.num_timesteps
        logger.debug("saved %s at timestep %d", self.resume_path, self.num_timesteps)


class ProgressLine(BaseCallback):
    """A progress bar over timesteps (tokens) and a metrics line after every PPO update.

    The line reads what ``train()`` recorded in the SB3 logger (rollout score, KL per completion, the KL
    coefficient) plus the last gold evaluation; with ``progress=True`` it is the bar's postfix, otherwise it is
    logged once per update.
    """

    def __init__(self, progress: bool = True) -> None:
        super().__init__()
        self.progress = progress
        self.bar: Any = None
        self.total = 0
        self._t0, self._steps0 = 0.0, 0

    def _on_training_start(self) -> None:
        self.total = int(self.locals.get("total_timesteps", 0))
        self._t0, self._steps0 = time.perf_counter(), self.num_timesteps
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.num_timesteps, desc=self._name(), unit="tok",
                            dynamic_ncols=True)

    def _name(self) -> str:
        """The algorithm's command name (ppo, grpo, online-dpo; an SB3 algorithm's class name)."""
        return getattr(self.model, "command", type(self.model).__name__.lower())

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_start(self) -> None:
        self._report()

    def _on_training_end(self) -> None:
        self._report()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _report(self) -> None:
        values = self.logger.name_to_value
        if "train/kl_coef" not in values:  # no update since the last dump: nothing new to say
            return
        rate = (self.num_timesteps - self._steps0) / max(time.perf_counter() - self._t0, 1e-9)
        parts = [f"score {values['rollout/score_mean']:.4f}" if "rollout/score_mean" in values else "score -",
                 f"kl {values['rollout/kl']:.3f}" if "rollout/kl" in values else "kl -",
                 f"beta {values['train/kl_coef']:.3g}", f"{rate:.0f} tok/s"]
        if "eval/gold_mean" in values:
            parts.append(f"gold {values['eval/gold_mean']:.4f}")
        if self.bar is not None:
            self.bar.set_postfix_str(" | ".join(parts), refresh=False)
        else:
            logger.info("%s %d/%d tok | %s", self._name(), self.num_timesteps, self.total, " | ".join(parts))

"""`rlfl compare`: RLHF against RLAIF, fairly: one SFT policy, one prompt set, two label sources, same everything else
(and, with ``algorithms``, PPO against GRPO, RLOO, online DPO and DPO on each side).

The experiment, in stages that each leave their output in ``out_dir`` and are skipped when it is
complete, so a second run (or one after a crash) goes straight to where the first one stopped:

1. ``prompts.json``: the prompt set (``prompts``), deduplicated and split with ``seed`` into ``eval_prompts``
   held-out prompts (used only by the final evaluation) and the training prompts (pairs and PPO);
2. ``items.jsonl``: the comparison items both label sources judge. With ``human: simulated`` (or a label
   store with no labels yet) they are two samples of the SFT policy per training prompt; with a preference
   dataset (``pairs:FILE``, ``hh:FILES``) they are its pairs, each shown in a seeded random order so that
   "a" is not always the human's choice (agreement would be meaningless otherwise);
3. ``human_labels.jsonl`` + ``human_prefs.jsonl``: the human side. Simulated annotators (a pool over the
   ``human_gold`` scorer with ``noise``, AlpacaFarm style) write their labels into ``labels.db`` (a
   `rlfl.feedback.LabelStore`, marked simulated there and in every report); ``store:PATH`` reads the labels
   people gave with ``rlfl label serve``/``cli``; a dataset gives its own labels;
4. ``ai_labels.jsonl`` + ``ai_prefs.jsonl``: the AI side, ``ai_judge``'s ``prefer`` on the same items;
5. ``rm_rlhf/`` and ``rm_rlaif/``: two reward models, same trunk (``rm_init``), steps, batch, learning rate
   and seed: only the labels differ;
6. ``<algorithm>/<source>/seed<k>/``: every arm, a label source trained with one of ``algorithms``, from the
   SFT policy, one run per seed in ``seeds``, same seeds for every arm; each run resumes from its last
   checkpoint. ``ppo`` (`rlfl.agents.train.train_ppo`), ``grpo``, ``rloo`` and ``online_dpo`` (the same
   function with `GRPOConfig` / `RLOOConfig` / `OnlineDPOConfig`, the same settings plus ``group_size``,
   ``grpo_kl_penalty`` for GRPO and ``dpo_beta`` for online DPO) train against each source's reward model
   (and, with ``direct_rlaif``, against the judge itself); ``dpo`` (`rlfl.dpo.dpo`) trains on each source's
   preference file (``human_prefs.jsonl``, ``ai_prefs.jsonl``) with no reward model, its seed the arm's seed.
   A PPO arm is named after its source (``rlhf``, ``rlaif``, ``direct_rlaif``, in ``ppo/<source>/``), another
   algorithm's after both (``rlhf_grpo`` in ``grpo/rlhf/``, ``rlaif_dpo`` in ``dpo/rlaif/``);
7. ``eval/``: every policy (SFT included) sampled on the held-out prompts, scored by the ``gold`` judge that
   no side trained on (`rlfl.compare_eval`), and the statistics (bootstrap CIs over seeds,
   `rlfl.compare_stats`); every arm the same way, whatever trained it (a DPO arm has no training curves:
   DPO evaluates nothing during training);
8. ``results.json`` (every figure), ``config.json`` / ``config.yaml`` (the config used), ``timing.json``
   and ``report.md`` with its plots (`rlfl.compare_report.write_report`).

**Determinism.** ``results.json`` holds no time and no absolute path inside ``out_dir``: the same config and
seeds on CPU (same torch thread count) give a byte-identical file, in a fresh folder or a resumed one. Wall
times go to ``timing.json`` (and into the report and the dict `compare` returns, under ``"timing"``).

**Bad configs fail first.** Unknown keys (`load_compare_config`), missing checkpoints, prompt or data files,
judges that cannot be built, and HTTP judge endpoints that do not answer a one-pair probe all stop the run
with a one-line error naming the key, before any stage runs.

Example:
    >>> cfg = CompareConfig(policy="runs/sft", out_dir="runs/compare", seeds=[0, 1, 2])   # doctest: +SKIP
    >>> results = compare(cfg)                                                             # doctest: +SKIP
    >>> results["policies"]["rlhf"]["gold_diff_vs_sft"]                                   # doctest: +SKIP
    [0.21, 0.15, 0.27]
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
import yaml

from rlfl import config as cfglib
from rlfl.agents.schedules import SCHEDULES
from rlfl.agents.settings import KL_PENALTIES
from rlfl.agents.train import GRPOConfig, OnlineDPOConfig, PPOConfig, RLOOConfig, train_ppo
from rlfl.checkpoint import is_checkpoint, load_checkpoint
from rlfl.compare_eval import (
    JUDGE_SPECS,
    PROMPT_SPECS,
    build_results,
    load_prompts,
    make_compare_judge,
    parse_judge_spec,
    sample_completions,
    split_prompts,
    stage_evaluate,
)
from rlfl.compare_report import ALGORITHM_NAMES, arm_name, write_report
from rlfl.compare_stats import round_floats
from rlfl.config import to_dict
from rlfl.device import pick_device
from rlfl.dpo import DPOConfig, dpo
from rlfl.envs.registry import register_reward_env
from rlfl.envs.rewards import source_name
from rlfl.feedback.annotators import SimulatedAnnotator, label_store
from rlfl.feedback.store import LabelStore
from rlfl.files import atomic_write_text
from rlfl.judges import choices_from_probs
from rlfl.preference_data import read_hh, read_pairs
from rlfl.reward import RewardTrainConfig, train_reward_model
from rlfl.stage_cache import check_settings, checkpoint_done, write_jsonl
from rlfl.trainer import TrainConfig

log = logging.getLogger(__name__)

SOURCES = ("rlhf", "rlaif", "direct_rlaif")  # the label sources: human labels, AI labels, the AI judge as the reward
PREFS = {"rlhf": "human_prefs.jsonl", "rlaif": "ai_prefs.jsonl"}  # each side's preference pairs
ALGORITHMS = tuple(ALGORITHM_NAMES)  # ppo, grpo, rloo, online_dpo, dpo
# the algorithms that train on a reward
RL_CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig, "online_dpo": OnlineDPOConfig}
# settings only some algorithms read: a run that trains none of those leaves them out of its settings record and
# results.json, and ``algorithms`` is left out when it is PPO alone, so such a run records what it always did
ALGORITHM_FIELDS = {"group_size": ("grpo", "rloo", "online_dpo"), "grpo_kl_penalty": ("grpo",),
                    "dpo_beta": ("dpo", "online_dpo"), "dpo_steps": ("dpo",), "dpo_lr": ("dpo",),
                    "dpo_batch_size": ("dpo",)}
HUMAN_SPECS = "simulated, store:LABELS.db, pairs:PAIRS.jsonl[,...] or hh:FILE[,FILE...]"
# fields that change how a run goes, not what it computes: a resumed run may differ in them (results.json
# leaves them out, except the task's name)
RUNTIME_FIELDS = ("out_dir", "device", "num_threads", "progress", "plots", "task")


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: a label source (``rlhf``, ``rlaif``, ``direct_rlaif``) trained with an algorithm.

    Example:
        >>> arm = Arm("rlaif", "dpo")
        >>> arm.name, arm.folder(1), Arm("rlhf", "ppo").name
        ('rlaif_dpo', ('dpo', 'rlaif', 'seed1'), 'rlhf')
    """

    source: str
    algorithm: str

    @property
    def name(self) -> str:
        """What results.json, eval/ and the report call the arm (`rlfl.compare_report.arm_name`)."""
        return arm_name(self.source, self.algorithm)

    @property
    def curves(self) -> bool:
        """Whether its runs evaluate during training (eval.csv): the RL algorithms do, DPO does not."""
        return self.algorithm in RL_CONFIGS

    def folder(self, seed: int) -> tuple[str, ...]:
        """Its run of ``seed``, inside ``out_dir``."""
        return (self.algorithm, self.source, f"seed{seed}")


@dataclass
class CompareConfig:
    """`rlfl compare`: RLHF vs RLAIF (x ``algorithms``) from one SFT policy and one prompt set (see the module
    docstring)."""

    policy: str = field(default="", metadata={"help": "the SFT policy checkpoint every arm starts from (the KL reference)"})
    task: str = field(default="", metadata={"help": "a name for the task in the report (default: the prompt set)"})
    out_dir: str = field(default="runs/compare", metadata={"help": "output folder; finished stages in it are reused"})
    prompts: str = field(default="synthetic", metadata={"help": f"the prompt set: {PROMPT_SPECS}"})
    n_prompts: int | None = field(default=None, metadata={
        "help": "keep a seeded subset of this many prompts (synthetic: how many to draw, default 2000)"})
    eval_prompts: int = field(default=128, metadata={"help": "prompts held out for the final gold evaluation"})
    chat_template: bool = field(default=True, metadata={"help": "wrap prompts as a chat user turn (chat SFT policies)"})
    max_prompt_tokens: int = field(default=48, metadata={"help": "prompt tokens kept (longer ones lose their start)"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens per completion at most"})
    # ---- labels
    n_pairs: int = field(default=2000, metadata={
        "help": "comparison pairs: sampled from the policy, or read at most from a preference dataset"})
    human: str = field(default="simulated", metadata={"help": f"the human label source: {HUMAN_SPECS}"})
    human_gold: str = field(default="gold-sentiment", metadata={
        "help": f"human: simulated: the scorer the simulated annotators read ({JUDGE_SPECS})"})
    annotators: int = field(default=3, metadata={"help": "human: simulated: annotators in the pool"})
    per_item: int = field(default=1, metadata={"help": "human: simulated: annotators per pair"})
    noise: float = field(default=0.2, metadata={"help": "human: simulated: probability a label is flipped (error rate)"})
    position_bias: float = field(default=0.0, metadata={"help": "human: simulated: probability of picking the first shown"})
    length_bias: float = field(default=0.0, metadata={"help": "human: simulated: probability of picking the longer one"})
    ai_judge: str = field(default="lexicon", metadata={
        "help": f"the AI label source ({JUDGE_SPECS}); lexicon = a rule-based stand-in for an LLM judge"})
    gold: str = field(default="gold-sentiment", metadata={
        "help": f"the gold judge of the final evaluation, which no side trains on ({JUDGE_SPECS})"})
    constitution: str | None = field(default=None, metadata={
        "help": "principles file for lm/http/embed judges (default: the built-in one)"})
    judge_batch_size: int = field(default=16, metadata={"help": "judge prompts per forward pass or HTTP request"})
    tie_band: float = field(default=0.0, metadata={"help": "the AI label is a tie when |P(A better) - 0.5| <= this"})
    # ---- reward models (identical for both arms)
    rm_init: str | None = field(default=None, metadata={"help": "trunk of both reward models (default: the policy)"})
    rm_steps: int = field(default=200, metadata={"help": "reward-model training steps"})
    rm_batch_size: int = field(default=64, metadata={"help": "pairs per reward-model step"})
    rm_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of reward-model training"})
    rm_val_fraction: float = field(default=0.1, metadata={"help": "share of the labels held out to validate each RM"})
    # ---- the arms: label source x algorithm
    algorithms: list[str] = field(default_factory=lambda: ["ppo"], metadata={
        "help": "what trains each label source's policy, any of: ppo, grpo, rloo, online_dpo (against its reward "
                "model, with the PPO settings below), dpo (on its preference pairs, no reward model)"})
    group_size: int = field(default=4, metadata={
        "help": "grpo, rloo, online_dpo: completions per prompt compared in a group (--n-envs must be a multiple)"})
    grpo_kl_penalty: str = field(default="reward", metadata={
        "help": "grpo: where the KL to the SFT policy goes: reward (kl_coef x the completion's KL off its score, "
                "as in the PPO and RLOO arms, so adaptive_kl holds every arm near kl_target) | loss (the GRPO "
                "paper's k3 term in each token's loss; its arms end at a larger KL than the others)"})
    dpo_beta: float = field(default=0.1, metadata={
        "help": "dpo, online_dpo: strength of the pull to the SFT policy (> 0)"})
    dpo_steps: int = field(default=200, metadata={"help": "dpo: optimizer steps of each run"})
    dpo_lr: float = field(default=1e-4, metadata={"help": "dpo: peak learning rate (cosine decay to a tenth)"})
    dpo_batch_size: int = field(default=32, metadata={"help": "dpo: preference pairs per step"})
    # ---- PPO (identical for every arm; GRPO, RLOO and online DPO read the same settings)
    direct_rlaif: bool = field(default=False, metadata={
        "help": "also train with the AI judge itself as the reward (every RL algorithm of --algorithms)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "help": "training seeds, the same for every arm (>= 3 for confidence intervals)"})
    ppo_timesteps: int = field(default=40960, metadata={"help": "generated tokens each PPO (GRPO, RLOO) run trains on"})
    n_envs: int = field(default=32, metadata={"help": "parallel episodes of each PPO (GRPO, RLOO) run"})
    ppo_batch_size: int = field(default=512, metadata={"help": "tokens per PPO minibatch"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each PPO rollout"})
    ppo_lr: float = field(default=5e-5, metadata={"help": "PPO learning rate"})
    ppo_lr_schedule: str = field(default="constant", metadata={
        "help": "PPO learning-rate schedule over each run: constant | linear | cosine"})
    value_lr_scale: float = field(default=1.0, metadata={
        "help": "the PPO value head's learning rate over the policy's"})
    kl_coef: float = field(default=0.05, metadata={"help": "weight of the per-token KL penalty"})
    adaptive_kl: bool = field(default=False, metadata={"help": "adapt the KL weight towards --kl-target"})
    kl_target: float = field(default=6.0, metadata={"help": "target KL per completion (nats) with --adaptive-kl"})
    ppo_eval_every: int = field(default=0, metadata={
        "help": "gold evaluation (training curves) every N tokens (0 = 4 times per run)"})
    ppo_eval_prompts: int = field(default=64, metadata={"help": "training prompts PPO holds out for its curves"})
    # ---- evaluation
    eval_samples: int = field(default=1, metadata={"help": "completions per held-out prompt, policy and seed"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples of every confidence interval"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt split, the pairs, the labels and the RMs"})
    # ---- runtime
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = one per core; pass 1 on a machine busy with other jobs)"})
    progress: bool = field(default=True, metadata={"help": "one progress bar per stage"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots beside report.md (needs matplotlib)"})

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"CompareConfig.{name}={getattr(self, name)!r}: {what}; fix --{name.replace('_', '-')}")

        need(bool(self.policy), "policy", "pass the SFT policy checkpoint directory")
        need(bool(self.out_dir), "out_dir", "pass an output folder")
        for name in ("eval_prompts", "max_prompt_tokens", "max_new_tokens", "n_pairs", "annotators", "per_item",
                     "judge_batch_size", "rm_steps", "rm_batch_size", "ppo_timesteps", "n_envs", "ppo_batch_size",
                     "ppo_epochs", "eval_samples", "n_boot", "dpo_steps", "dpo_batch_size"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("ppo_eval_every", "ppo_eval_prompts", "num_threads", "seed", "kl_coef"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.n_prompts is None or self.n_prompts >= 2, "n_prompts", "must be >= 2 (or unset)")
        need(self.per_item <= self.annotators, "per_item", f"must be <= annotators ({self.annotators})")
        for name in ("noise", "position_bias", "length_bias"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "must be a probability in [0, 1]")
        need(0.0 <= self.tie_band < 0.5, "tie_band", "must be in [0, 0.5)")
        need(0.0 < self.rm_val_fraction < 1.0, "rm_val_fraction", "must be in (0, 1)")
        for name in ("rm_lr", "ppo_lr", "kl_target", "value_lr_scale", "dpo_beta", "dpo_lr"):
            need(getattr(self, name) > 0, name, "must be > 0")
        for algorithm in self.algorithms:
            need(algorithm in ALGORITHMS, "algorithms",
                 f"unknown algorithm {algorithm!r}; use any of {', '.join(ALGORITHMS)}")
        need(bool(self.algorithms) and len(set(self.algorithms)) == len(self.algorithms), "algorithms",
             f"pass one or more distinct algorithms of {', '.join(ALGORITHMS)}")
        need(self.grpo_kl_penalty in KL_PENALTIES, "grpo_kl_penalty", f"use {' or '.join(KL_PENALTIES)}")
        need(isinstance(self.group_size, int) and self.group_size >= 2, "group_size",
             "must be an integer >= 2 (a group compares its completions)")
        need(not set(ALGORITHM_FIELDS["group_size"]) & set(self.algorithms) or self.n_envs % self.group_size == 0,
             "group_size", f"must divide n_envs ({self.n_envs}): GRPO, RLOO and online DPO hand each prompt to "
             "group_size of the n_envs rows")
        need(not self.direct_rlaif or any(a in RL_CONFIGS for a in self.algorithms), "direct_rlaif",
             "trains on the AI judge as a reward, so it needs ppo, grpo, rloo or online_dpo in --algorithms (DPO has "
             "no reward)")
        need(self.ppo_lr_schedule in SCHEDULES, "ppo_lr_schedule", f"use one of {', '.join(SCHEDULES)}")
        need(bool(self.seeds), "seeds", "pass at least one seed (3 or more for confidence intervals)")
        need(len(set(self.seeds)) == len(self.seeds) and all(s >= 0 for s in self.seeds), "seeds",
             "seeds must be distinct integers >= 0")
        need(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", "use auto, cpu, cuda or cuda:N")
        human_kind = self.human.partition(":")[0]
        need(self.human == "simulated" or (human_kind in ("store", "pairs", "hh") and self.human.partition(":")[2]),
             "human", f"use {HUMAN_SPECS}")
        for name in ("ai_judge", "gold", "human_gold"):
            try:
                parse_judge_spec(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"CompareConfig.{name}: {e}; fix --{name.replace('_', '-')}") from None

    @property
    def arms(self) -> tuple[Arm, ...]:
        """The arms this config runs: every algorithm x label source (direct RLAIF for the RL algorithms only)."""
        sources = SOURCES if self.direct_rlaif else SOURCES[:2]
        return tuple(Arm(s, a) for a in self.algorithms for s in sources if s in PREFS or a in RL_CONFIGS)

    def unused_fields(self) -> set[str]:
        """The fields this run reads nothing of (see ``ALGORITHM_FIELDS``), left out of what it records."""
        unused = {k for k, algorithms in ALGORITHM_FIELDS.items() if not set(algorithms) & set(self.algorithms)}
        return unused | ({"algorithms"} if self.algorithms == ["ppo"] else set())


def load_compare_config(path: str | os.PathLike | None = None, **overrides: Any) -> CompareConfig:
    """A `CompareConfig` from a YAML/JSON file (unknown keys refused, with the closest known one) plus overrides.

    Example:
        >>> load_compare_config(None, policy="runs/sft", seeds=[0, 1, 2]).seeds
        [0, 1, 2]
    """

    values = cfglib.load_config_file(path) if path is not None else {}
    return cfglib.build(CompareConfig, values, overrides)


# ------------------------------------------------------------------------------------------ the run
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class StageClock:
    """Times pipeline stages and skips finished ones: ``with clock.stage(name, what, done) as todo: ...``."""

    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress
        self.timing: dict[str, float] = {}
        self.skipped: list[str] = []

    @contextmanager
    def stage(self, name: str, what: str, done: bool) -> Iterator[bool]:
        """Yields False (and logs "skipped") when the stage's output is complete, else True; logs its time."""
        if done:
            self.skipped.append(name)
            self.timing.setdefault(name, 0.0)
            log.info("[%s] skipped: %s (output complete)", name, what)
            yield False
            return
        log.info("[%s] %s ...", name, what)
        t0 = time.perf_counter()
        yield True
        self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - t0
        log.info("[%s] %.1f s: %s", name, self.timing[name], what)

    def bar(self, total: int, desc: str) -> Any:
        """A tqdm progress bar (silent with ``progress=False``)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, dynamic_ncols=True, leave=False)


class CompareRun(StageClock):
    """One `compare` run: its config, folder, judges, prompts and stage timings (what the stages share)."""

    def __init__(self, cfg: CompareConfig) -> None:
        super().__init__(progress=cfg.progress)
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.device = str(pick_device(cfg.device))
        self.judges: dict[str, Any] = {}
        self.train_prompts: list[str] = []
        self.eval_prompts: list[str] = []

    @property
    def rm_init(self) -> str:
        """The trunk both reward models start from."""
        return self.cfg.rm_init or self.cfg.policy

    def path(self, *parts: str) -> Path:
        """A path inside ``out_dir``."""
        return self.out.joinpath(*parts)

    def arm_dir(self, arm: Arm, seed: int) -> Path:
        """The folder of ``arm``'s run of ``seed`` (its checkpoint)."""
        return self.path(*arm.folder(seed))

    def settings(self, *, keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """The config as a portable dict without the fields that do not change results (`RUNTIME_FIELDS`) except
        ``keep``, nor those the run reads nothing of (`CompareConfig.unused_fields`): what the folder's settings
        record and results.json hold."""
        unused = self.cfg.unused_fields()
        return self.portable({k: v for k, v in to_dict(self.cfg).items()
                              if (k not in RUNTIME_FIELDS or k in keep) and k not in unused})

    def portable(self, value: Any) -> Any:
        """``value`` with paths inside ``out_dir`` made relative to it (results.json must not depend on where it is)."""
        if isinstance(value, str) and value:
            root = str(self.out.resolve())
            for prefix in ("rm:", "lm:", "store:", ""):
                if value.startswith(prefix):
                    rest = value[len(prefix):]
                    resolved = str(Path(rest).resolve())
                    if resolved == root or resolved.startswith(root + os.sep):
                        return prefix + (os.path.relpath(resolved, root) if resolved != root else ".")
            return value
        if isinstance(value, list):
            return [self.portable(v) for v in value]
        if isinstance(value, dict):
            return {k: self.portable(v) for k, v in value.items()}
        return value


def preflight(run: CompareRun) -> None:
    """Every check that can fail before training: paths, judges (HTTP probed), prompts, sizes, the settings record."""

    cfg = run.cfg
    for key in ("policy", "rm_init"):
        path = getattr(cfg, key)
        if path is not None and not is_checkpoint(path):
            raise FileNotFoundError(f"{path}: not an rlfl checkpoint directory ({key}); fix --{key.replace('_', '-')}")
        if path is not None:  # readable weights, tokenizer and config (each error names the file)
            config = load_checkpoint(path).config
            if key == "policy":
                block = int(config["model"]["block_size"])
    if cfg.max_prompt_tokens + cfg.max_new_tokens > block:
        raise ValueError(f"max_prompt_tokens + max_new_tokens = {cfg.max_prompt_tokens + cfg.max_new_tokens} exceeds "
                         f"the policy's context ({block}); lower --max-prompt-tokens or --max-new-tokens")
    kind, _, arg = cfg.human.partition(":")
    if kind in ("pairs", "hh"):
        for p in [p for p in arg.split(",") if p]:
            if not Path(p).is_file():
                raise FileNotFoundError(f"{p}: no such preference file (human={cfg.human!r}); fix --human")
    if kind == "store" and Path(arg).exists() and not Path(arg).is_file():
        raise ValueError(f"{arg}: not a label store file (human={cfg.human!r}); fix --human")
    texts = load_prompts(cfg.prompts, n=cfg.n_prompts, seed=cfg.seed)
    run.train_prompts, run.eval_prompts = split_prompts(texts, cfg.eval_prompts, cfg.seed)
    judge_args = {"constitution": cfg.constitution, "device": run.device, "batch_size": cfg.judge_batch_size}
    keys = ["ai_judge", "gold"] + (["human_gold"] if cfg.human == "simulated" else [])
    for key in keys:
        run.judges[key] = make_compare_judge(getattr(cfg, key), key, **judge_args)
    run.out.mkdir(parents=True, exist_ok=True)
    check_settings(run.path("compare_settings.json"),
                   run.settings())


# ------------------------------------------------------------------------------------------ stages
def stage_prompts(run: CompareRun) -> None:
    """prompts.json: the split. Once written it wins over what preflight read, so a prompt file edited between
    two calls cannot leave the later stages on other prompts than the finished ones."""
    path = run.path("prompts.json")
    with run.stage("prompts", f"{len(run.train_prompts)} training / {len(run.eval_prompts)} held-out prompts",
                   path.is_file()) as todo:
        if todo:
            atomic_write_text(path, json.dumps({"train": run.train_prompts, "eval": run.eval_prompts}, indent=1) + "\n")
    split = json.loads(path.read_text(encoding="utf-8"))
    run.train_prompts, run.eval_prompts = split["train"], split["eval"]


def _sampled_items(run: CompareRun) -> list[dict[str, Any]]:

    cfg = run.cfg
    picked = [run.train_prompts[i % len(run.train_prompts)] for i in range(cfg.n_pairs)]
    policy = load_checkpoint(cfg.policy, device=run.device)
    with run.bar(2 * cfg.n_pairs, "pairs") as bar:
        samples = sample_completions(policy.model, policy.tokenizer, [p for p in picked for _ in range(2)],
                                     chat=cfg.chat_template, max_prompt_tokens=cfg.max_prompt_tokens,
                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 3000, on_batch=bar.update)
    items = []
    for i, prompt in enumerate(picked):
        a, b = samples[2 * i].text, samples[2 * i + 1].text
        if a.strip() and b.strip() and a != b:  # the pairs format cannot hold an empty or a non-pair
            items.append({"prompt": prompt, "response_a": a, "response_b": b})
    return items


def _dataset_items(run: CompareRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Items from a preference dataset in a seeded random a/b order, and the dataset's labels of them (pairs
    whose prompt is a held-out evaluation prompt are left out)."""

    kind, _, arg = run.cfg.human.partition(":")
    files = [p for p in arg.split(",") if p]
    read = [read_hh(files, on_bad_line="skip")] if kind == "hh" else [read_pairs(f, on_bad_line="skip") for f in files]
    held_out = set(run.eval_prompts)  # the final evaluation's prompts stay unseen by both reward models
    pairs = [p for data in read for p in data.pairs if p.prompt not in held_out]
    if len(pairs) > run.cfg.n_pairs:
        keep = sorted(np.random.default_rng(run.cfg.seed).choice(len(pairs), size=run.cfg.n_pairs, replace=False))
        pairs = [pairs[i] for i in keep]
    rng = np.random.default_rng(run.cfg.seed + 1)
    items, labels = [], []
    for i, p in enumerate(pairs):
        swap = bool(rng.integers(2))
        a, b = (p.rejected, p.chosen) if swap else (p.chosen, p.rejected)
        items.append({"item": i, "prompt": p.prompt, "response_a": a, "response_b": b, "source": p.source or kind})
        labels.append({"item": i, "annotator": kind, "choice": "tie" if p.tie else ("b" if swap else "a"),
                       "simulated": False})
    return items, labels


def _store_labels(store: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Labels of ``items`` (which carry their ``store_id``) from a label store, skips dropped."""
    by_store = {it["store_id"]: it["item"] for it in items}
    return [{"item": by_store[lab.item_id], "annotator": lab.annotator, "choice": lab.choice,
             "simulated": lab.simulated}
            for lab in store.labels(include_skips=False) if lab.item_id in by_store]


def stage_items_and_human(run: CompareRun) -> None:
    """items.jsonl and the human side (human_labels.jsonl, human_prefs.jsonl); see the module docstring."""

    cfg = run.cfg
    items_path, labels_path = run.path("items.jsonl"), run.path("human_labels.jsonl")
    kind, _, arg = cfg.human.partition(":")
    where = "sampled from the policy" if kind in ("simulated", "store") else f"from {cfg.human}"
    with run.stage("pairs", f"{cfg.n_pairs} comparison pairs ({where})", items_path.is_file()) as todo:
        if todo:
            store_items = None
            if kind == "store" and Path(arg).is_file():
                with LabelStore(arg, create=False) as store:
                    labelled = {lab.item_id for lab in store.labels(include_skips=False)}
                    store_items = [it for it in store.items() if it.id in labelled]
            if store_items:
                items = [{"item": i, "prompt": it.prompt, "response_a": it.response_a, "response_b": it.response_b,
                          "store_id": it.id} for i, it in enumerate(store_items)]
            elif kind in ("pairs", "hh"):
                items, labels = _dataset_items(run)
                write_jsonl(labels_path, labels)
            else:
                items = [{"item": i, **it} for i, it in enumerate(_sampled_items(run))]
            if not items:
                raise ValueError(f"no usable comparison pair (all empty or identical); train the policy longer or "
                                 f"raise --n-pairs (human={cfg.human!r})")
            if kind in ("simulated", "store") and "store_id" not in items[0]:
                store_path = run.path("labels.db") if kind == "simulated" else Path(arg)
                with LabelStore(store_path) as store:
                    ids = store.add_items([{k: it[k] for k in ("prompt", "response_a", "response_b")}
                                           | {"source_a": "policy", "source_b": "policy", "meta": {"item": it["item"]}}
                                           for it in items])
                for it, store_id in zip(items, ids):
                    it["store_id"] = store_id
            write_jsonl(items_path, items)

    items = _read_jsonl(items_path)
    with run.stage("human_labels", f"human labels ({cfg.human})", labels_path.is_file()) as todo:
        if todo:
            if kind == "simulated":
                gold = run.judges["human_gold"]
                pool = [SimulatedAnnotator(gold, name=f"sim-{i}", noise=cfg.noise, position_bias=cfg.position_bias,
                                           length_bias=cfg.length_bias, seed=[cfg.seed, i])
                        for i in range(cfg.annotators)]
                with LabelStore(run.path("labels.db")) as store:
                    label_store(store, pool, per_item=cfg.per_item, seed=cfg.seed)
                    labels = _store_labels(store, items)
            else:  # store: people label the items the pairs stage imported
                with LabelStore(arg) as store:
                    labels = _store_labels(store, items)
                if not labels:
                    raise ValueError(f"{arg}: none of its {len(items)} comparison items is labelled yet; label them "
                                     f"with `rlfl label serve --store {arg}` (or `rlfl label cli`) and run compare again")
            write_jsonl(labels_path, labels)
    labels = _read_jsonl(labels_path)
    write_prefs(run.path("human_prefs.jsonl"), items, labels, source="simulated" if all(
        lab["simulated"] for lab in labels) else "human")


def write_prefs(path: Path, items: list[dict[str, Any]], labels: list[dict[str, Any]], *, source: str) -> int:
    """Preference JSONL for `rlfl reward train` from item labels ("a"/"b"/"tie"); returns the record count."""
    by_item = {it["item"]: it for it in items}
    records = []
    for lab in labels:
        it = by_item[lab["item"]]
        a, b = it["response_a"], it["response_b"]
        chosen, rejected = (b, a) if lab["choice"] == "b" else (a, b)
        record = {"prompt": it["prompt"], "chosen": chosen, "rejected": rejected, "source": source}
        if lab["choice"] == "tie":
            record["tie"] = True
        records.append(record)
    if not any(lab["choice"] != "tie" for lab in labels):
        raise ValueError(f"{path}: every label is a tie; a reward model cannot learn from that (check the label source)")
    if not path.is_file() or path.read_text(encoding="utf-8") != "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                          for r in records):
        write_jsonl(path, records)
    return len(records)


def stage_ai_labels(run: CompareRun) -> None:
    """ai_labels.jsonl + ai_prefs.jsonl: the AI judge's preference on every item."""

    cfg = run.cfg
    items = _read_jsonl(run.path("items.jsonl"))
    path = run.path("ai_labels.jsonl")
    judge = run.judges["ai_judge"]
    with run.stage("ai_labels", f"AI labels by {source_name(judge)}", path.is_file()) as todo:
        if todo:
            chunk = max(cfg.judge_batch_size * 8, 64)
            probs = np.empty(len(items))
            with run.bar(len(items), "ai labels") as bar:
                for first in range(0, len(items), chunk):
                    part = items[first:first + chunk]
                    probs[first:first + len(part)] = judge.prefer([it["prompt"] for it in part],
                                                                  [it["response_a"] for it in part],
                                                                  [it["response_b"] for it in part])
                    bar.update(len(part))
            choices = choices_from_probs(probs, cfg.tie_band)
            write_jsonl(path, [{"item": it["item"], "choice": c, "p_a": round(float(p), 6)}
                               for it, c, p in zip(items, choices, probs)])
    write_prefs(run.path("ai_prefs.jsonl"), items, _read_jsonl(path), source="ai")


def stage_reward_models(run: CompareRun) -> None:
    """rm_rlhf/ and rm_rlaif/: the same RewardTrainConfig, only the data differ."""

    cfg = run.cfg
    for arm, data in PREFS.items():
        out = run.path(f"rm_{arm}")
        with run.stage(f"rm_{arm}", f"reward model on {data} ({cfg.rm_steps} steps x {cfg.rm_batch_size} pairs)",
                       checkpoint_done(out, cfg.rm_steps, need="reward")) as todo:
            if todo:
                train_reward_model(RewardTrainConfig(
                    init_from=run.rm_init, data=str(run.path(data)), val_fraction=cfg.rm_val_fraction,
                    stats_samples=1024, train=TrainConfig(
                        out_dir=str(out), max_steps=cfg.rm_steps, batch_size=cfg.rm_batch_size, lr=cfg.rm_lr,
                        min_lr=cfg.rm_lr / 10, warmup_steps=min(30, max(1, cfg.rm_steps // 10)), eval_interval=0,
                        eval_steps=10, log_interval=max(1, min(50, cfg.rm_steps // 5)),
                        checkpoint_interval=max(50, cfg.rm_steps // 2), seed=cfg.seed, device=run.device,
                        progress=cfg.progress, num_threads=cfg.num_threads)))


ENV_ID = "rlfl-compare/Prompts-v0"


def ppo_done(out: Path, total: int) -> bool:
    """True when ``out`` holds a finished PPO run of at least ``total`` timesteps."""
    report = out / "ppo_report.json"
    if not report.is_file() or not (out / "eval.csv").is_file():
        return False
    return int(json.loads(report.read_text(encoding="utf-8")).get("timesteps", 0)) >= total


def dpo_done(out: Path, steps: int) -> bool:
    """True when ``out`` holds a finished DPO run of at least ``steps`` steps."""
    return checkpoint_done(out, steps, need="dpo") and (out / "dpo_report.json").is_file()


def stage_arms(run: CompareRun) -> None:
    """<algorithm>/<source>/seed<k>/: every arm, every seed, from the same policy with the same settings."""

    cfg = run.cfg
    if any(arm.curves for arm in cfg.arms):
        # the env: the training prompts, the judge as its own reward (direct RLAIF; the RM arms replace it) and
        # the gold judge for the curves. Registered in this process only, under one id, replaced on every run.
        gymnasium.registry.pop(ENV_ID, None)
        register_reward_env(ENV_ID, reward=run.judges["ai_judge"], prompts=run.train_prompts, tokenizer=cfg.policy,
                            max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens,
                            gold=run.judges["gold"], chat_template=cfg.chat_template)
    for seed in cfg.seeds:
        for arm in cfg.arms:
            (_train_dpo if arm.algorithm == "dpo" else _train_rl)(run, arm, seed)


def _train_rl(run: CompareRun, arm: Arm, seed: int) -> None:
    """One PPO, GRPO, RLOO or online DPO run against the arm's reward model (or the AI judge, for direct RLAIF)."""
    cfg = run.cfg
    out = run.arm_dir(arm, seed)
    reward = None if arm.source == "direct_rlaif" else str(run.path(f"rm_{arm.source}"))
    rollout = cfg.n_envs * cfg.max_new_tokens
    every = cfg.ppo_eval_every or max(rollout, cfg.ppo_timesteps // 4)
    group = {} if arm.algorithm == "ppo" else {"group_size": cfg.group_size}
    if arm.algorithm == "online_dpo":
        group["beta"] = cfg.dpo_beta
    if arm.algorithm == "grpo":
        group["kl_penalty"] = cfg.grpo_kl_penalty
    with run.stage(f"{arm.algorithm}_{arm.source}_seed{seed}",
                   f"{ALGORITHM_NAMES[arm.algorithm]} {arm.source} seed {seed} ({cfg.ppo_timesteps} tokens)",
                   ppo_done(out, cfg.ppo_timesteps)) as todo:
        if todo:
            train_ppo(RL_CONFIGS[arm.algorithm](
                init_from=cfg.policy, env_id=ENV_ID, reward=reward, max_new_tokens=cfg.max_new_tokens,
                max_prompt_tokens=cfg.max_prompt_tokens, chat_template=cfg.chat_template, n_envs=cfg.n_envs,
                total_timesteps=cfg.ppo_timesteps, n_steps=cfg.max_new_tokens, batch_size=cfg.ppo_batch_size,
                n_epochs=cfg.ppo_epochs, learning_rate=cfg.ppo_lr, lr_schedule=cfg.ppo_lr_schedule,
                value_lr_scale=cfg.value_lr_scale, kl_coef=cfg.kl_coef,
                adaptive_kl=cfg.adaptive_kl, kl_target=cfg.kl_target, out_dir=str(out),
                checkpoint_every=every, eval_every=every, eval_prompts=cfg.ppo_eval_prompts, sample_every=0,
                seed=seed, device=run.device, num_threads=cfg.num_threads, progress=cfg.progress, **group))


def _train_dpo(run: CompareRun, arm: Arm, seed: int) -> None:
    """One DPO run on the arm's preference pairs, seeded with the arm's seed, prompts in the env's chat template."""
    cfg = run.cfg
    out = run.arm_dir(arm, seed)
    data = PREFS[arm.source]
    with run.stage(f"dpo_{arm.source}_seed{seed}",
                   f"DPO {arm.source} seed {seed} on {data} ({cfg.dpo_steps} steps x {cfg.dpo_batch_size} pairs)",
                   dpo_done(out, cfg.dpo_steps)) as todo:
        if todo:
            dpo(DPOConfig(
                init_from=cfg.policy, data=str(run.path(data)), beta=cfg.dpo_beta, chat_template=cfg.chat_template,
                num_samples=0, train=TrainConfig(
                    out_dir=str(out), max_steps=cfg.dpo_steps, batch_size=cfg.dpo_batch_size, lr=cfg.dpo_lr,
                    min_lr=cfg.dpo_lr / 10, warmup_steps=cfg.dpo_steps // 20, eval_interval=0,
                    log_interval=max(1, min(50, cfg.dpo_steps // 5)),
                    checkpoint_interval=max(50, cfg.dpo_steps // 2), seed=seed, device=run.device,
                    progress=cfg.progress, num_threads=cfg.num_threads)))


# ------------------------------------------------------------------------------------------ entry point
def write_config(out: Path, cfg: CompareConfig) -> None:
    """config.json and config.yaml: the config used (``rlfl compare out/config.yaml`` runs it again)."""
    data = to_dict(cfg)
    atomic_write_text(out / "config.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def compare(config: CompareConfig, *, timing: dict[str, float] | None = None,
            skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or finish) the RLHF-vs-RLAIF experiment ``config`` describes; returns the results with ``"timing"``.

    Writes ``results.json`` (deterministic, no timings), ``timing.json``, ``config.json``/``config.yaml`` and
    ``report.md`` (+ PNG plots) in ``config.out_dir``; see the module docstring for the stages. ``timing`` and
    ``skipped`` are stages a caller ran before (`rlfl.quickstart` builds the policy): they head timing.json.
    """

    cfg = config
    if cfg.num_threads:

        torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    before = dict(timing or {})
    run = CompareRun(cfg)
    run.timing.update(before)
    run.skipped.extend(skipped)
    with run.stage("preflight", "check paths, judges, prompts and settings", False):
        preflight(run)
    if len(cfg.seeds) < 3:
        log.warning("only %d seed(s): confidence intervals over seeds need 3 or more to mean much", len(cfg.seeds))
    write_config(run.out, cfg)
    for stage in (stage_prompts, stage_items_and_human, stage_ai_labels, stage_reward_models, stage_arms,
                  stage_evaluate):
        stage(run)
    with run.stage("results", "statistics and results.json", False):
        results = round_floats(build_results(run))
        atomic_write_text(run.path("results.json"), json.dumps(results, indent=2, ensure_ascii=False) + "\n")

    def summary() -> dict[str, Any]:
        total = sum(before.values()) + time.perf_counter() - t0
        return {**{k: round(v, 3) for k, v in run.timing.items()}, "total": round(total, 3),
                "skipped": sorted(set(run.skipped))}

    with run.stage("report", "report.md and plots", False):
        write_report(run.out, {**results, "timing": summary()}, plots=cfg.plots)
    timing_out = summary()
    atomic_write_text(run.path("timing.json"), json.dumps(timing_out, indent=2) + "\n")
    log.info("compare: done in %.1f s -> %s (results.json, report.md, timing.json)", timing_out["total"], run.out)
    return {**results, "timing": timing_out}

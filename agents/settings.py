"""`PPOSettings` and `GRPOSettings`: every hyperparameter of rlfl's PPO and GRPO/RLOO, defined once, with its
default, help and check.

`rlfl.agents.PPO` takes them as keyword arguments (SB3 style: ``PPO("runs/sft", env, kl_coef=0.1)``);
`rlfl.agents.train.PPOConfig` (what ``rlfl ppo`` and config files read) inherits them, so each one is a
command-line flag (``--kl-coef``); a PPO run's resume state and its checkpoint's ``train_config`` record all of
them. Adding a setting means adding a field here (and reading it where PPO uses it). The LoRA settings
(``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``) are inherited from
`rlfl.lora.LoRASettings`, the one definition every fine-tuning stage shares.

Example:
    >>> s = PPOSettings(kl_coef=0.1, adaptive_kl=True, kl_target=5.0)
    >>> s.kl_coef, s.n_steps
    (0.1, 32)
    >>> PPOSettings(gamma=2.0)
    Traceback (most recent call last):
    ...
    ValueError: PPOSettings.gamma=2.0: must be in [0, 1]; fix --gamma
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from rlfl.agents.kl import ESTIMATORS, KL_HORIZON
from rlfl.agents.schedules import SCHEDULES

from rlfl.lora import LoRASettings
from rlfl.preference_loss import PreferenceLossSettings

PRECISIONS = ("float32", "bfloat16", "auto")


@dataclass
class PPOSettings(LoRASettings):
    """How PPO learns: rollout and update sizes, the learning rate, the KL penalty, the losses, reward shaping, and
    the LoRA adapters (`rlfl.lora.LoRASettings`: with ``lora_rank`` > 0 only the adapters and the value head train,
    and the frozen base with the adapters switched off is the KL reference)."""

    n_steps: int = field(default=32, metadata={"help": "tokens per row per rollout (rollout = n_steps * n_envs)"})
    batch_size: int = field(default=512, metadata={"help": "tokens per minibatch (about)"})
    n_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (the start of the schedule)"})
    lr_schedule: str = field(default="constant", metadata={
        "help": "constant | linear | cosine: the learning rate decays to 0 at --total-timesteps"})
    kl_coef: float = field(default=0.05, metadata={
        "help": "the KL coefficient: weight of the per-token KL penalty (initial, if adaptive)"})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "adapt beta to keep the KL per completion near --kl-target"})
    kl_target: float = field(default=6.0, metadata={"help": "target KL per completion (nats) of the adaptive controller"})
    kl_horizon: int = field(default=KL_HORIZON, metadata={
        "help": "adaptive KL: each completion moves log(beta) by clip(log(KL / target), -0.5, 0.5) / kl_horizon "
                "(smaller = faster; 32 completions per rollout at the clip: x4.5 in 48 rollouts)"})
    kl_estimator: str = field(default="k1", metadata={
        "help": "per-token KL estimator: k1 (log ratio) | k3 (always >= 0)"})
    target_kl: float | None = field(default=None, metadata={
        "help": "stop an update's epochs when the approximate KL of the update exceeds 1.5x this"})
    gamma: float = field(default=1.0, metadata={"help": "discount over tokens"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clip"})
    clip_range_vf: float | None = field(default=0.2, metadata={
        "help": "value clip (null in a config file: unclipped value loss)"})
    normalize_advantage: bool = field(default=True, metadata={"help": "whiten the advantages of each minibatch"})
    ent_coef: float = field(default=0.0, metadata={
        "help": "entropy bonus weight; negative: an entropy penalty, which sharpens the policy so that the KL it "
                "spends on the reward does not raise the reference's perplexity of its text (e.g. -0.01)"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss weight"})
    value_lr_scale: float = field(default=1.0, metadata={
        "help": "the value head's learning rate as a multiple of --learning-rate (a linear head on the trunk's "
                "features learns little at a policy's rate)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    ratio_threshold: float = field(default=10.0, metadata={
        "help": "skip a minibatch whose probability ratios leave [1/x, x] (counted in train/skipped_batches)"})
    no_stop_penalty: float = field(default=0.0, metadata={
        "help": "added to the reward of completions that never emit a stop token (e.g. -1.0)"})
    short_penalty: float = field(default=0.0, metadata={
        "help": "added to the reward of completions shorter than --short-tokens tokens, empty ones included "
                "(e.g. -1.0)"})
    short_tokens: int = field(default=0, metadata={
        "help": "completions with fewer tokens than this (a final stop token not counted) get --short-penalty"})
    reward_clip: float | None = field(default=None, metadata={"help": "clip scores to [-x, x]"})
    normalize_reward: bool = field(default=False, metadata={"help": "normalise scores by their running mean/std"})
    logsigmoid_reward: float | None = field(default=None, metadata={
        "help": "centre c: a score s becomes log(sigmoid(s - c)), bounded above, so already-good completions "
                "earn little more; c near the score of a good completion"})
    precision: str = field(default="float32", metadata={
        "help": "float32 | bfloat16 | auto (bfloat16 where the hardware has it natively: recent CPUs and GPUs)"})

    def __post_init__(self) -> None:
        super().__post_init__()

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {what}; fix "
                                 f"--{name.replace('_', '-')}")

        def number(name: str) -> float:
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name,
                 "must be a finite number")
            return value

        for name in ("n_steps", "batch_size", "n_epochs", "kl_horizon"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(number("learning_rate") >= 0, "learning_rate", "must be >= 0 (0: the weights stay as they are)")
        for name in ("kl_target", "clip_range", "max_grad_norm", "value_lr_scale"):
            need(number(name) > 0, name, "must be > 0")
        for name in ("kl_coef", "vf_coef"):
            need(number(name) >= 0, name, "must be >= 0")
        number("ent_coef")
        for name in ("gamma", "gae_lambda"):
            need(0.0 <= number(name) <= 1.0, name, "must be in [0, 1]")
        for name in ("target_kl", "clip_range_vf", "reward_clip"):
            need(getattr(self, name) is None or number(name) > 0, name, "must be > 0 (or unset)")
        for name in ("no_stop_penalty", "short_penalty"):
            number(name)
        need(self.logsigmoid_reward is None or math.isfinite(number("logsigmoid_reward")), "logsigmoid_reward",
             "must be a finite number (or unset)")
        need(number("ratio_threshold") > 1.0, "ratio_threshold", "must be > 1")
        need(isinstance(self.short_tokens, int) and self.short_tokens >= 0, "short_tokens", "must be an integer >= 0")
        need(self.short_penalty == 0 or self.short_tokens >= 1, "short_penalty",
             "penalises completions shorter than --short-tokens, which is 0; set --short-tokens too (e.g. 8)")
        need(self.kl_estimator in ESTIMATORS, "kl_estimator", f"use {' or '.join(ESTIMATORS)}")
        need(self.lr_schedule in SCHEDULES, "lr_schedule", f"use one of {', '.join(SCHEDULES)}")
        need(not self.adaptive_kl or self.kl_coef > 0, "kl_coef", "--adaptive-kl moves beta by factors from this "
             "starting value; set it > 0, e.g. 0.05")
        need(self.precision in PRECISIONS, "precision", f"use one of {', '.join(PRECISIONS)}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in order."""
        settings = next(c for c in cls.__mro__ if c.__name__.endswith("Settings"))  # not a config's run fields
        return tuple(f.name for f in dataclasses.fields(settings))

    @classmethod
    def of(cls, obj: Any) -> Any:
        """The settings an object carries as attributes of the same names (a `PPOConfig`, a dict)."""
        get = obj.get if isinstance(obj, dict) else (lambda k: getattr(obj, k))
        return cls(**{k: get(k) for k in cls.names()})

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Any:
        """Settings from keyword arguments, refusing unknown names with the closest known one."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            close = difflib.get_close_matches(unknown[0], cls.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; see rlfl.agents.settings.{cls.__name__}"
            raise ValueError(f"{cls.__name__.removesuffix('Settings')} got an unknown setting {unknown[0]!r}{hint}")
        return cls(**kwargs)


ADVANTAGES = ("grpo", "dr_grpo", "rloo")
LOSS_AGGREGATIONS = ("grpo", "dapo", "dr_grpo")
KL_PENALTIES = ("loss", "reward")


@dataclass
class GRPOSettings(PPOSettings):
    """How the critic-free algorithms (GRPO, RLOO) learn: PPO's settings plus the group ones.

    They read PPO's learning rate, epochs, minibatch size, clip range, KL settings, reward shaping and rails;
    a rollout is one completion per env row, so ``n_steps`` (set to the env's ``max_new_tokens``) and the
    critic's settings (``gamma``, ``gae_lambda``, ``vf_coef``, ``clip_range_vf``, ``value_lr_scale``,
    ``normalize_advantage``) are not read.

    >>> GRPOSettings(group_size=4, advantage="rloo").advantage
    'rloo'
    >>> GRPOSettings(group_size=1)
    Traceback (most recent call last):
    ...
    ValueError: GRPOSettings.group_size=1: must be an integer >= 2 (a group compares its completions); fix --group-size
    """

    group_size: int = field(default=4, metadata={
        "help": "completions per prompt: the env hands each prompt to this many consecutive rows (n_envs must be "
                "a multiple)"})
    advantage: str = field(default="grpo", metadata={
        "help": "grpo: (reward - group mean) / group std | dr_grpo: reward - group mean (Dr. GRPO) | rloo: reward "
                "- mean of the group's other completions (leave-one-out)"})
    loss_agg: str = field(default="grpo", metadata={
        "help": "how token losses are averaged: grpo (over each completion, then over completions) | dapo (over "
                "all tokens of a minibatch) | dr_grpo (summed, over completions x max_new_tokens)"})
    clip_range_high: float | None = field(default=None, metadata={
        "help": "upper clip of the probability ratio, 1 + this (DAPO's clip-higher, e.g. 0.28); default: clip_range"})
    kl_penalty: str = field(default="loss", metadata={
        "help": "loss: kl_coef x the k3 KL to the reference added to every token's loss (GRPO) | reward: kl_coef "
                "x the completion's KL subtracted from its reward before the group baseline (RLOO)"})
    drop_equal_groups: bool = field(default=False, metadata={
        "help": "dynamic sampling: leave out of the update the groups whose completions all scored the same "
                "(their advantages are all 0)"})

    def __post_init__(self) -> None:
        super().__post_init__()

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {what}; fix "
                                 f"--{name.replace('_', '-')}")

        need(isinstance(self.group_size, int) and not isinstance(self.group_size, bool) and self.group_size >= 2,
             "group_size", "must be an integer >= 2 (a group compares its completions)")
        need(self.advantage in ADVANTAGES, "advantage", f"use one of {', '.join(ADVANTAGES)}")
        need(self.loss_agg in LOSS_AGGREGATIONS, "loss_agg", f"use one of {', '.join(LOSS_AGGREGATIONS)}")
        need(self.kl_penalty in KL_PENALTIES, "kl_penalty", f"use {' or '.join(KL_PENALTIES)}")
        need(self.clip_range_high is None or (isinstance(self.clip_range_high, (int, float))
                                              and math.isfinite(self.clip_range_high) and self.clip_range_high > 0),
             "clip_range_high", "must be a number > 0 (or unset)")


@dataclass
class OnlineDPOSettings(GRPOSettings, PreferenceLossSettings):
    """How online DPO learns: the group rollout of `GRPOSettings` and the preference loss of offline DPO
    (`rlfl.preference_loss.PreferenceLossSettings`: ``loss_type``, ``beta``, ``label_smoothing``).

    Each group's best and worst completion by reward form a preference pair; the policy-gradient settings
    (``advantage``, ``loss_agg``, ``clip_range``, ``clip_range_high``, ``drop_equal_groups``: groups whose
    completions all scored the same are always left out, having no preference) and the critic's are not read.

    >>> s = OnlineDPOSettings(beta=0.1, group_size=2)
    >>> s.beta, s.loss_type
    (0.1, 'sigmoid')
    >>> OnlineDPOSettings(beta=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: beta=-1.0 must be > 0; pass e.g. --beta 0.1
    """

    soft_preferences: bool = field(default=True, metadata={
        "help": "label each pair with the probability sigmoid(r_chosen - r_rejected) that its chosen side is better "
                "(Bradley-Terry, as a reward model's scores are): DPO's optimum is then the KL-regularised policy "
                "ref * exp(r / beta); --no-soft-preferences: label 1 (the chosen side always wins), which pushes "
                "towards the chosen completions without end"})

    def __post_init__(self) -> None:
        super().__post_init__()  # GRPO's, PPO's and LoRA's checks
        PreferenceLossSettings.__post_init__(self)
        if self.soft_preferences and self.label_smoothing:
            raise ValueError(f"label_smoothing={self.label_smoothing} sets the label of hard preferences, but "
                             "soft_preferences (the default) labels each pair with its own probability; pass "
                             "--no-soft-preferences with --label-smoothing")

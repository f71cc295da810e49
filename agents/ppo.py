"""`PPO` for language models on stable-baselines3: batched KV-cache rollouts, whole-sequence training, KL control.

An ``OnPolicyAlgorithm`` subclass, so SB3's ``learn()``, callbacks, logger (stdout/CSV/TensorBoard through
``configure``), ``save``/``load`` and schedules all work as for any SB3 algorithm. Two methods change:

- ``collect_rollouts`` steps the text vector env one token per row per step (the Gymnasium API stays the
  contract), while `rlfl.agents.rollout.CachedActor` keeps every row's context in a KV cache, so a step is
  one single-token forward of the batch. Tokens come from the plain softmax (no top-k/top-p), so the
  recorded log-probs are those of the policy being trained and the KL is right.
- ``train`` re-reads each episode segment with ONE forward per sequence (segments packed into rows without
  padding, `rlfl.agents.rollout.RolloutStore.batch`), and builds per-token rewards:
  the env's reward on the completion's last real token (never on padding) minus ``beta * KL(policy ||
  reference)`` on every token (``kl_estimator`` k1 or k3). GAE over tokens (gamma, lambda), whitened
  advantages, clipped policy and value losses, entropy bonus, gradient clipping, minibatches of about
  ``batch_size`` tokens, ``n_epochs`` epochs.

Safety rails: the reference policy is frozen (no grad, never updated); an epoch stops early when the
approximate KL of the update exceeds ``1.5 * target_kl`` (SB3's rule); a minibatch whose probability
ratios explode (any ratio above ``ratio_threshold`` or below its inverse) is skipped and counted in
``train/skipped_batches``; a NaN/inf loss raises `FloatingPointError` (training never goes on silently).
``beta`` is fixed or adaptive (``adaptive_kl=True``: `rlfl.agents.kl.AdaptiveKL` keeps the KL per completion
near ``kl_target``, moving beta at a speed set by ``kl_horizon``). Optional: ``no_stop_penalty`` (added to the
reward of completions that ran out of tokens without a stop token), ``short_penalty`` (added to the reward of
completions with fewer than ``short_tokens`` tokens, a final stop token not counted, so an empty completion is
short), ``reward_clip``, ``normalize_reward`` (running mean/std of the reward source's scores) and
``logsigmoid_reward`` (a score s becomes ``log sigmoid(s - c)``: Wang et al. 2024, "Transforming and
Combining Rewards for Aligning Large Language Models". The reward is bounded above, so pushing an already
good completion further pays little while a bad one still pays in full; the paper finds less reward
hacking per nat of KL. On ``rlfl/SyntheticReviews-v0`` it has not moved the gold-vs-KL line so far: see
``benchmarks/bench_ppo_learning.py``). ``value_lr_scale`` gives the value head its own learning rate, a
multiple of the policy's: a zero-initialised linear head at a policy's learning rate explains ~0 % of the
returns for dozens of rollouts, which leaves the advantages with little more than a batch-mean baseline.
``learning_rate`` takes a schedule too: ``LRSchedule("linear", 1.5e-4)`` (`rlfl.agents.schedules`) decays it
to 0 over the run. On ``rlfl/SyntheticReviews-v0`` the decay is worth more than a nat of KL at the same gold
rate: as the steps shrink, the KL that update noise had added drains away while the reward stays.

Against length collapse (a reward that pays for short or empty completions), besides ``short_penalty``: the
env's ``min_new_tokens`` (the stop tokens cannot be sampled before a completion has that many tokens: the
actor bans their logits, and the training forwards of policy and reference ban them on the same actions, so
the first epoch's probability ratios are exactly 1 and the KL is 0 before the policy moves), and fixed-length
episodes (the env's ``stop_tokens=[]``: every completion runs ``max_new_tokens``).

LoRA (``lora_rank=8``, ``--lora-rank 8``; `rlfl.lora`): the policy's GPT is frozen and only adapters on the
``lora_target_modules`` layers and the value head train (the optimizer holds nothing else). The KL reference
is then the same network with its adapters switched off (`rlfl.lora.FrozenBase`): one copy of the base
weights in memory instead of two, and the reference log-probs equal the starting policy's exactly.

Under torchrun every process steps its own env rows and the ranks average each minibatch's gradients and
share the statistics an update reads (`rlfl.agents.distributed`): ``torchrun --nproc_per_node=N -m rlfl
ppo ...``, or a script that joins the process group before building `PPO`. ``num_timesteps`` then counts
the tokens of all ranks.

Units: one timestep is one token of one env row, as in SB3 (``n_steps`` tokens per row per rollout,
``num_timesteps`` counts tokens). ``save_checkpoint`` writes the policy in rlfl's checkpoint format (the
GPT and its value head), which ``rlfl sample``/``serve`` and a further PPO run open; ``save`` writes SB3's zip.

Example:
    >>> import tempfile, rlfl.envs
    >>> from rlfl.checkpoint import save_checkpoint
    >>> from rlfl.model import GPT, GPTConfig
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok, d = byte_tokenizer(), tempfile.mkdtemp()
    >>> save_checkpoint(d, GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=96, n_layer=1, n_head=2, n_embd=32)),
    ...                 tok, stage="sft")
    >>> model = PPO(d, "rlfl/SyntheticReviews-v0", n_envs=4, n_steps=8, env_kwargs={"max_new_tokens": 8}, seed=0)
    >>> _ = model.learn(total_timesteps=64)
    >>> model.num_timesteps
    64
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from rlfl.agents.distributed import (
    all_gather, all_max, all_min, all_sum, average_gradients, broadcast_module, mean_count, mean_std, world,
)
from rlfl.agents.kl import AdaptiveKL, FixedKL, kl_per_token
from rlfl.agents.policy import TransformerPolicy
from rlfl.agents.rollout import CachedActor, RolloutStore
from rlfl.agents.schedules import LRSchedule
from rlfl.agents.settings import PPOSettings
from rlfl.agents.vec_env import TextVecEnv, make_text_vec_env
from rlfl.envs.rewards import RunningMoments
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.utils import FloatSchedule, explained_variance

from rlfl.checkpoint import is_checkpoint, save_checkpoint
from rlfl.files import atomic_write_bytes

logger = logging.getLogger(__name__)


# the file a PPO run's resume state is saved to (`PPO.save_resume_state`), and its format tag
RESUME_FILE = "ppo_resume.pt"
RESUME_FORMAT = "rlfl-ppo-resume/2"


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32).

    "auto" picks bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, or a CPU with
    AVX-512 BF16/AMX, where it runs matmuls 2-3x faster than float32), else float32.
    """
    if precision == "float32":
        return None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bfloat16" or native:
        return torch.bfloat16
    return None


def _as_text_vec_env(env: Any, n_envs: int, env_kwargs: dict[str, Any] | None) -> TextVecEnv:
    if isinstance(env, TextVecEnv):
        return env
    if isinstance(env, str):
        return make_text_vec_env(env, n_envs, **(env_kwargs or {}))
    from rlfl.envs.vector_env import TextGenerationVectorEnv

    if isinstance(getattr(env, "unwrapped", env), TextGenerationVectorEnv):
        return TextVecEnv(env)
    raise ValueError(f"rlfl PPO steps an rlfl text vector env, got {type(env).__name__}; pass an env id such as "
                     "'rlfl/SyntheticReviews-v0', gymnasium.make_vec(id, num_envs=N, vectorization_mode="
                     "'vector_entry_point'), or a TextVecEnv (stable_baselines3.PPO takes any env)")


class PPO(OnPolicyAlgorithm):
    """PPO with a KL penalty to a frozen reference for rlfl transformer policies (see the module docstring).

    ``policy`` is an rlfl checkpoint directory (the starting policy and, unless
    ``policy_kwargs["reference_checkpoint"]`` says otherwise, the reference) or `TransformerPolicy` with
    ``policy_kwargs={"checkpoint": ...}``. ``env`` is an env id (built with ``n_envs`` rows and
    ``env_kwargs``), a text vector env, or a `TextVecEnv`.
    """

    policy_aliases = {"TransformerPolicy": TransformerPolicy}
    policy: TransformerPolicy
    settings_class: type[PPOSettings] = PPOSettings  # the dataclass of the algorithm's settings
    command = "ppo"  # the CLI command that runs it (rlfl ppo)

    def __init__(
        self,
        policy: str | Path | type[TransformerPolicy],
        env: GymEnv | str | None,
        *,
        n_envs: int = 32,
        env_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
        **settings: Any,
    ) -> None:
        # every hyperparameter is a PPOSettings field (its default, help and check live there); the learning
        # rate may also be an SB3 schedule (a callable of the progress remaining), used as is
        schedule = settings.get("learning_rate")
        if isinstance(schedule, LRSchedule) and schedule.final == 0.0:  # the same as a rate and lr_schedule
            settings.update(learning_rate=schedule.lr, lr_schedule=schedule.kind)
            schedule = schedule.lr
        if callable(schedule):
            if settings.get("lr_schedule", "constant") != "constant":
                raise ValueError("pass learning_rate as a number with lr_schedule, or as a schedule (a callable) alone")
            settings["learning_rate"] = float(schedule(1.0))
        self.settings = self.settings_class.from_kwargs(settings)
        s = self.settings
        learning_rate = schedule if callable(schedule) else LRSchedule(s.lr_schedule, s.learning_rate)
        policy_kwargs = dict(policy_kwargs or {})
        if s.lora_rank:  # LoRA is a setting (recorded with the others); the policy builds the adapters
            policy_kwargs["lora"] = dataclasses.asdict(s.lora_settings())
        elif policy_kwargs.get("lora"):
            raise ValueError(f"{type(self).__name__} takes LoRA as settings (lora_rank=8, lora_alpha=..., "
                             "lora_target_modules=[...]), not as policy_kwargs['lora']")
        if isinstance(policy, (str, Path)) and str(policy) not in self.policy_aliases:
            if not is_checkpoint(policy):
                raise FileNotFoundError(f"{policy}: not an rlfl checkpoint directory; pass the policy to train "
                                        "(a directory written by rlfl pretrain/sft/ppo)")
            policy_kwargs["checkpoint"] = str(policy)
            policy = TransformerPolicy
        if env is not None:
            env = _as_text_vec_env(env, n_envs, env_kwargs)
        super().__init__(
            policy, env, learning_rate=learning_rate, n_steps=s.n_steps, gamma=s.gamma, gae_lambda=s.gae_lambda,
            ent_coef=s.ent_coef, vf_coef=s.vf_coef, max_grad_norm=s.max_grad_norm, use_sde=False, sde_sample_freq=-1,
            stats_window_size=stats_window_size, tensorboard_log=tensorboard_log, policy_kwargs=policy_kwargs,
            verbose=verbose, seed=seed, device=device, _init_setup_model=False, supported_action_spaces=(spaces.Discrete,),
        )
        for name in self.settings_class.names():  # the attributes PPO's code (and SB3's) reads
            if name not in ("learning_rate", "lr_schedule"):
                setattr(self, name, getattr(s, name))
        self.kl_ctl: FixedKL | AdaptiveKL = (AdaptiveKL(s.kl_coef, s.kl_target, s.kl_horizon) if s.adaptive_kl
                                             else FixedKL(s.kl_coef))
        self.score_moments = RunningMoments()
        self.parent_checkpoint = policy_kwargs.get("checkpoint")
        self._actor: CachedActor | None = None
        self._store: RolloutStore | None = None
        self.rollout_buffer = None  # SB3's learn() passes it along; rollouts live in a RolloutStore instead
        self._episode_kl = np.zeros(self.n_envs if env is not None else 0)
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------------------ setup and saving
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        **self.policy_kwargs).to(self.device)
        # a saved zip rebuilds the network from its architecture (weights and reference come from the zip)
        self.policy_kwargs = {k: v for k, v in self.policy_kwargs.items()
                              if k not in ("checkpoint", "reference_checkpoint")}
        self.policy_kwargs["gpt_config"] = self.policy.gpt.config.to_dict()
        if "lora" in self.policy_kwargs:  # a saved zip's reference: the frozen base, or a copy of its own
            self.policy_kwargs["shared_reference"] = self.policy.shared_reference
        broadcast_module(self.policy)  # under torchrun: every rank starts from rank 0's value head
        self._amp_dtype = resolve_precision(self.precision, self.device)
        if self.value_lr_scale != 1.0:
            self._split_value_group()
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None and not callable(self.clip_range_vf):
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        if self.env is not None:
            self._check_env(self.env)

    def _split_value_group(self) -> None:
        """Give the value head its own optimizer group, whose learning rate is ``value_lr_scale`` times the policy's.

        Why: the value head is one zero-initialised linear layer on the trunk's features, and at a policy's
        learning rate (1e-5 to 1e-4, small so the policy moves little per update) Adam moves each of its
        weights by at most that much per step, so after 40 rollouts of ``rlfl/SyntheticReviews-v0`` its
        explained variance was still ~0: the advantages were Monte-Carlo returns with a batch-mean baseline.
        The scale applies to the head only; the shared trunk learns from the value loss at the policy's rate.
        """
        opt = self.policy.optimizer
        head = {id(p) for p in self.policy.net.value.parameters()}
        if len(opt.param_groups) != 1 or opt.state:
            raise ValueError("value_lr_scale needs the policy's default single-group optimizer before its first step; "
                             "leave value_lr_scale=1.0 with a custom optimizer")
        group = opt.param_groups[0]
        group["params"] = [p for p in group["params"] if id(p) not in head]
        group["lr_scale"] = 1.0
        opt.add_param_group({"params": list(self.policy.net.value.parameters()), "lr_scale": self.value_lr_scale})

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        """SB3's schedule step, then each group's ``lr_scale`` (the value head's, see `_split_value_group`)."""
        super()._update_learning_rate(optimizers)
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in opt.param_groups:
                group["lr"] *= group.get("lr_scale", 1.0)

    def _check_env(self, env: TextVecEnv) -> None:
        tok = self.policy.tokenizer
        if tok is not None and tok.fingerprint != env.tokenizer.fingerprint:
            raise ValueError(f"the policy's tokenizer ({tok.name}) differs from the env's ({env.tokenizer.name}); build "
                             "the env with tokenizer=<the policy checkpoint directory>")
        need = env.max_prompt_tokens + env.max_new_tokens
        if need > self.policy.gpt.config.block_size:
            raise ValueError(f"the env's max_prompt_tokens + max_new_tokens = {need} exceeds the policy's block_size "
                             f"{self.policy.gpt.config.block_size}; lower max_prompt_tokens or max_new_tokens")
        if self.short_tokens > env.max_new_tokens:
            raise ValueError(f"short_tokens={self.short_tokens} exceeds the env's max_new_tokens {env.max_new_tokens}: "
                             "every completion would be short; lower short_tokens")
        if self.no_stop_penalty != 0 and not env.stop_tokens:
            raise ValueError("no_stop_penalty penalises completions that end without a stop token, and this env has "
                             "no stop tokens (fixed-length episodes), so it would penalise every one; set "
                             "no_stop_penalty=0")
        if len(self._episode_kl) != env.num_envs:
            self._episode_kl = np.zeros(env.num_envs)

    def _excluded_save_params(self) -> list[str]:
        # in-flight episodes are not saved: a resumed run starts fresh episodes
        return super()._excluded_save_params() + ["_actor", "_store", "_last_obs", "_last_original_obs",
                                                   "_last_episode_starts", "_episode_kl", "_amp_dtype"]

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for the forwards when ``precision`` asks for it (losses stay float32)."""
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        env = _as_text_vec_env(env, self.n_envs, None)
        super().set_env(env, force_reset=force_reset)
        self._check_env(env)
        self._actor = None

    @property
    def tokenizer(self) -> Any:
        """The policy's tokenizer (from its checkpoint, else the env's)."""
        if self.policy.tokenizer is not None:
            return self.policy.tokenizer
        if self.env is None:
            raise ValueError("this PPO model has no env and no tokenizer; pass env= to PPO.load")
        return self.env.tokenizer

    # ------------------------------------------------------------------------------ resume state (no pickle)
    def resume_state(self) -> dict[str, Any]:
        """Everything `from_resume_state` needs to continue this run, as tensors and plain values only.

        The weights (policy, value head and the frozen reference, which with LoRA is the policy's own frozen base
        and so is stored once), the optimizer's moments, the step counters, the KL coefficient, the reward
        statistics and the settings that rebuild the algorithm. Saved with
        ``torch.save`` it loads with ``torch.load(weights_only=True)``, which never runs code from the file
        (unlike SB3's zip, whose ``data`` entry is unpickled by ``PPO.load``).
        """
        settings = dataclasses.asdict(self.settings)
        if not isinstance(self.learning_rate, LRSchedule):  # a custom schedule is code: the resumed run is given it
            settings["learning_rate"] = None
        return {
            "format": RESUME_FORMAT,
            "algorithm": type(self).__name__,
            "settings": settings,
            "gpt_config": self.policy.gpt.config.to_dict(),
            "shared_reference": self.policy.shared_reference,
            "obs_length": int(self.observation_space["input_ids"].shape[-1]),
            "parent_checkpoint": None if self.parent_checkpoint is None else str(self.parent_checkpoint),
            "num_timesteps": int(self.num_timesteps), "n_updates": int(self._n_updates),
            "kl_beta": float(self.kl_ctl.beta),
            "score_moments": self.score_moments.state_dict(),
            "policy": self.policy.state_dict(),
            "optimizer": self.policy.optimizer.state_dict(),
        }

    def save_resume_state(self, path: str | Path) -> Path:
        """Write `resume_state` to ``path`` atomically (a temp file, then a rename); `from_resume_state` reads it."""
        buffer = io.BytesIO()
        torch.save(self.resume_state(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return Path(path)

    @classmethod
    def from_resume_state(cls, path: str | Path, env: GymEnv | str | None, *, device: torch.device | str = "auto",
                          **overrides: Any) -> PPO:
        """Rebuild a run saved by `save_resume_state`: same weights, optimizer, counters and settings.

        The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts
        only, so a crafted file cannot run code (a pickle payload is refused with a one-line error).
        ``overrides`` replace saved settings (``learning_rate`` is required when the run's rate was a custom
        schedule). A run resumed this way continues with ``learn(remaining,
        reset_num_timesteps=False)``.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no PPO resume state here; start a new run") from None
        except Exception as exc:  # an unpickling error (code in the file) or a truncated/corrupt file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not a readable PPO resume state ({reason[:160]}); delete it to start the run "
                             "over, or restore it from a backup") from None
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise ValueError(f"{path}: not a PPO resume state of this version (format "
                             f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, expected "
                             f"{RESUME_FORMAT!r}); delete it to start the run over")
        algorithm = state.get("algorithm", "PPO")
        if algorithm != cls.__name__:
            classes, known = [PPO], {}
            while classes:  # PPO and every algorithm built on it
                known[classes[0].__name__] = classes[0].command
                classes = classes[1:] + classes[0].__subclasses__()
            raise ValueError(f"{path}: the resume state of a {algorithm} run, not a {cls.__name__} one; resume it with "
                             f"rlfl {known.get(algorithm, algorithm.lower())}, or pass a new --out-dir")
        settings = {**state["settings"], **overrides}
        if settings["learning_rate"] is None:
            raise ValueError(f"{path}: the run's learning rate was a custom schedule, which a resume file does not "
                             "hold; pass learning_rate= to from_resume_state")
        policy_kwargs = {"gpt_config": state["gpt_config"], "shared_reference": state.get("shared_reference")}
        model = cls("TransformerPolicy", env, device=device, policy_kwargs=policy_kwargs, _init_setup_model=False,
                    **settings)
        if env is None:  # the spaces of the env it was trained in
            vocab, length = int(state["gpt_config"]["vocab_size"]), int(state["obs_length"])
            box = spaces.Box(0, vocab - 1, shape=(length,), dtype=np.int64)
            model.observation_space = spaces.Dict({"input_ids": box,
                                                   "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int64)})
            model.action_space = spaces.Discrete(vocab)
        model._setup_model()
        model.policy.load_state_dict(state["policy"])
        model.policy.optimizer.load_state_dict(state["optimizer"])
        model.num_timesteps, model._n_updates = int(state["num_timesteps"]), int(state["n_updates"])
        model.kl_ctl.beta = float(state["kl_beta"])
        model.score_moments.load_state_dict(state["score_moments"])
        model.parent_checkpoint = state["parent_checkpoint"]
        return model

    def save_checkpoint(self, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write the policy (GPT + value head) as an rlfl checkpoint: ``rlfl sample``/``serve`` open it."""
        hyper = dataclasses.asdict(self.settings)
        hyper["learning_rate_now"] = self.lr_schedule(self._current_progress_remaining)
        hyper["kl_beta"] = self.kl_ctl.beta
        hyper["algorithm"] = type(self).__name__
        save_checkpoint(directory, self.policy.net, self.tokenizer, stage="ppo", step=self.num_timesteps,
                        train_config=hyper, parent=self.parent_checkpoint, extra=extra)
        return Path(directory)

    # ------------------------------------------------------------------------------ rollouts
    def collect_rollouts(self, env: TextVecEnv, callback: Any, rollout_buffer: Any, n_rollout_steps: int) -> bool:
        """Step the env ``n_rollout_steps`` tokens per row with the KV-cached actor; fill a `RolloutStore`."""
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        # one autocast region for the whole rollout: the weights do not change in it, so autocast casts
        # each of them to bfloat16 once instead of at every step (the actor's own regions nest inside)
        with self._autocast():
            return self._collect(env, callback, n_rollout_steps)

    def _collect(self, env: TextVecEnv, callback: Any, n_rollout_steps: int, *, first_episodes: bool = False) -> bool:
        """The rollout loop; ``first_episodes``: stop as soon as every row has finished one episode (GRPO's
        rollouts are one completion per row, from a reset).

        With ``first_episodes`` a row that has finished idles until the others do: the actor does not
        prefill the prompt the env restarts it with, its tokens from then on are a tail of its segment that
        nothing trains on, and the env's later episodes in it are neither recorded nor logged."""
        if self._actor is None:
            self._actor = CachedActor(self.policy, env.num_envs, env.max_prompt_tokens, env.max_new_tokens,
                                      env.tokenizer.pad_id, self.device, autocast=self._autocast,
                                      min_new_tokens=env.min_new_tokens, stop_tokens=env.stop_tokens)
        actor = self._actor
        actor.load(self._last_obs, env.completion_lengths())  # the weights changed since the last rollout
        store = RolloutStore(n_rollout_steps, env.num_envs, actor.width, min_new_tokens=actor.min_new_tokens,
                             stop_tokens=actor.stop_ids.tolist())
        seg_j0, seg_t0 = actor.n.copy(), np.zeros(env.num_envs, dtype=np.int64)
        finished = np.zeros(env.num_envs, dtype=bool)
        callback.on_rollout_start()
        for t in range(n_rollout_steps):
            actions, logp = actor.sample()
            values = actor.values.clone()
            actions_np = actions.cpu().numpy()
            actor.append(actions_np)
            new_obs, rewards, dones, infos = env.step(actions_np)
            if first_episodes:  # an idle row's episodes are not this rollout's completions
                rewards, dones = np.where(finished, 0.0, rewards), dones & ~finished
                infos = [{} if idle else info for idle, info in zip(finished, infos)]
            self.num_timesteps += env.num_envs * world()[1]  # every rank's tokens (torchrun)
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            store.actions[t], store.logp[t], store.values[t] = actions_np, logp.cpu().numpy(), values.cpu().numpy()
            store.rewards[t], store.dones[t] = rewards, dones
            for r in np.flatnonzero(dones):
                info = infos[r]
                store.scores[t, r], store.stopped[t, r] = info["score"], info["stopped"]
                store.lengths[t, r] = info["episode"]["l"] - int(info["stopped"])
                store.completions.append((info["prompt"], info["completion"], info["score"]))
                store.close_segment(r, seg_j0[r], actor.n[r], seg_t0[r], actor.tokens[r], actor.mask[r])
                seg_j0[r], seg_t0[r] = (actor.n[r], t + 1) if first_episodes else (0, t + 1)
            finished |= dones
            last = t + 1 == n_rollout_steps or (first_episodes and finished.all())
            actor.advance(actions, dones, new_obs, restart=not (last or first_episodes))
            store.steps += 1
            self._last_obs, self._last_episode_starts = new_obs, dones
            if last:
                break
        for r in range(env.num_envs):  # episodes that go on into the next rollout: their part so far
            if not store.dones[store.steps - 1, r]:
                store.close_segment(r, seg_j0[r], actor.n[r], seg_t0[r], actor.tokens[r], actor.mask[r])
        store.last_values = actor.values.cpu().numpy().copy()
        store.index(env.max_prompt_tokens)
        self._store = store
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------------------ rewards and advantages
    def _shaped_rewards(self, store: RolloutStore) -> np.ndarray:
        """Env rewards with the score on each episode's last token transformed (normalise, log-sigmoid, clip, in
        that order), then the no-stop and short-completion penalties."""
        rewards = store.rewards.astype(np.float64).copy()
        ended = store.dones
        scores = store.scores[ended].astype(np.float64)
        new = scores.copy()
        if self.normalize_reward:
            self.score_moments.update(all_gather(scores))
            new = (new - self.score_moments.mean) / max(self.score_moments.std, 1e-6)
        if self.logsigmoid_reward is not None:
            new = -np.logaddexp(0.0, self.logsigmoid_reward - new)  # log sigmoid(new - c), stable for any new
        if self.reward_clip is not None:
            new = np.clip(new, -self.reward_clip, self.reward_clip)
        rewards[ended] += new - scores
        rewards[ended & ~store.stopped] += self.no_stop_penalty
        rewards[ended & (store.lengths < self.short_tokens)] += self.short_penalty
        return rewards

    def _gae(self, rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray) -> np.ndarray:
        """Generalised advantage estimates over the (steps, rows) grid; a done token has no next value."""
        adv = np.zeros_like(rewards)
        last = np.zeros(rewards.shape[1])
        for t in reversed(range(rewards.shape[0])):
            next_values = last_values if t == rewards.shape[0] - 1 else values[t + 1]
            alive = 1.0 - dones[t]
            delta = rewards[t] + self.gamma * next_values * alive - values[t]
            last = delta + self.gamma * self.gae_lambda * alive * last
            adv[t] = last
        return adv

    @torch.no_grad()
    def _forward_pass(self, store: RolloutStore,
                      segments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference log-probs of every action (of ``segments``, default all), and (with a bfloat16 KV cache) the
        policy's own log-probs and values.

        The rollout's cached log-probs are the "old" policy as is where the KV cache holds float32: they
        equal a whole-sequence forward to ~1e-6 in float32, and to ~1e-3 (largest of a rollout) under
        bfloat16 autocast on a CPU, whose cache and attention stay float32. A bfloat16 cache (autocast on a
        GPU) rounds every cached key and value, so there the old log-probs and values are recomputed with
        exactly the forward training uses, and the probability ratio starts at exactly 1.
        """
        n = store.steps * store.num_rows
        ref, logp, values = np.zeros(n, np.float32), store.logp.reshape(-1).copy(), store.values.reshape(-1).copy()
        # chunks of about a minibatch: a whole rollout's (tokens, vocab) float32 logits at once (tens of MB)
        # cost more on a CPU than the extra forwards (4 ms for the float cast of 1,024 x 4,096 alone)
        recompute = self._actor is not None and self._actor.cache.k.dtype != torch.float32
        order = np.arange(store.num_segments) if segments is None else np.asarray(segments)
        n_actions = int((store.seg_n - store.seg_j0)[order].sum())
        for chunk in np.array_split(order, max(1, round(n_actions / self.batch_size))):
            b = store.batch(chunk, self.device)
            cells = b.cells.cpu().numpy()
            with self._autocast():
                ref[cells] = self.policy.reference_logprobs(b.tokens, b.mask, b.positions, b.actions,
                                                            **b.layout).cpu().numpy()
                if recompute:
                    lp, _, v = self.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions, entropy="none",
                                                            **b.layout)
                    logp[cells], values[cells] = lp.cpu().numpy(), v.cpu().numpy()
        shape = (store.steps, store.num_rows)
        return ref.reshape(shape), logp.reshape(shape), values.reshape(shape)

    def _episode_kls(self, store: RolloutStore, kl: np.ndarray) -> list[float]:
        """KL (nats) of every completion that finished in this rollout, summed over its tokens."""
        done_kls: list[float] = []
        for t in range(store.steps):
            self._episode_kl += kl[t]
            for r in np.flatnonzero(store.dones[t]):
                done_kls.append(float(self._episode_kl[r]))
                self._episode_kl[r] = 0.0
        return done_kls

    # ------------------------------------------------------------------------------ training
    def train(self) -> None:
        """PPO epochs over the last rollout: one forward per segment, clipped losses, KL-penalised rewards."""
        store, clip_range = self._begin_update()
        clip_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)

        ref_logp, old_logp, old_values = self._forward_pass(store)
        kl_tok = kl_per_token(torch.from_numpy(old_logp), torch.from_numpy(ref_logp), self.kl_estimator).numpy()
        beta = self.kl_ctl.beta
        rewards = self._shaped_rewards(store) - beta * kl_tok
        advantages = self._gae(rewards, old_values.astype(np.float64), store.dones, store.last_values)
        returns = advantages + old_values
        episode_kls = self._episode_kls(store, kl_tok)
        if self.normalize_advantage:
            adv_mean, adv_std = mean_std(advantages)  # of every rank's advantages under torchrun
            advantages = (advantages - adv_mean) / (adv_std + 1e-8)
        flat = lambda a: torch.as_tensor(a.reshape(-1), dtype=torch.float32, device=self.device)
        adv_t, ret_t, old_v_t = flat(advantages), flat(returns), flat(old_values)

        def ppo_loss(b: Any, logp: torch.Tensor, values: torch.Tensor, log_ratio: torch.Tensor,
                     ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            adv, ret, old_v = adv_t[b.cells], ret_t[b.cells], old_v_t[b.cells]
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
            v_pred = values if clip_vf is None else old_v + (values - old_v).clamp(-clip_vf, clip_vf)
            vf_loss = 0.5 * torch.max((values - ret) ** 2, (v_pred - ret) ** 2).mean()
            clipped = ((ratio - 1).abs() > clip_range).float().mean().item()
            return pg_loss + self.vf_coef * vf_loss, {"pg": pg_loss.item(), "vf": vf_loss.item(), "clip": clipped}

        n_minibatches = max(1, round(store.steps * store.num_rows / self.batch_size))
        stats = self._optimize(store, np.arange(store.num_segments), n_minibatches, flat(old_logp), ppo_loss)
        self.kl_ctl.update(*mean_count(episode_kls))  # all ranks' completions under torchrun
        self._record(store, stats, clip_range=clip_range, beta=beta, kl_tok=kl_tok, episode_kls=episode_kls)
        self.logger.record("train/explained_variance",
                           float(explained_variance(old_values.reshape(-1), returns.reshape(-1))))

    def _begin_update(self) -> tuple[RolloutStore, float]:
        """The last rollout and this update's clip range, with the policy in training mode at this update's rate."""
        assert self._store is not None, "train() needs a rollout: call learn()"
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        return self._store, self.clip_range(self._current_progress_remaining)

    def _optimize(self, store: RolloutStore, segments: np.ndarray, n_minibatches: int, old_logp: torch.Tensor,
                  loss_fn: Any, *, block: int = 1) -> dict[str, Any]:
        """``n_epochs`` passes over ``segments`` in about ``n_minibatches`` shuffled minibatches, with the rails.

        ``block`` > 1 keeps each run of ``block`` consecutive segments in one minibatch (the two completions of a
        preference pair), shuffling the runs instead of the segments.

        ``loss_fn(batch, logp, values, log_ratio, ratio) -> (loss, {"pg", "vf", "clip", ...})`` is the algorithm's
        loss of one minibatch (``old_logp`` is indexed by grid cell); this loop adds the entropy bonus, skips a
        minibatch whose ratios explode, stops an epoch past ``1.5 * target_kl``, raises on NaN/inf, averages
        gradients across torchrun ranks, clips them and steps. Returns the per-minibatch figures.
        """
        ranks = world()[1]
        if ranks > 1:  # as many minibatches on every rank, none empty: each one's collectives need all ranks
            n_minibatches = int(min(n_minibatches, all_min([len(segments) // block])[0]))
        stats: dict[str, Any] = {k: [] for k in ("pg", "vf", "ent", "approx_kl", "clip")}
        skipped, continue_training, updates = 0, True, 0
        if n_minibatches < 1 or len(segments) == 0:  # nothing to train on (here, or on another rank): no step
            stats["skipped"] = 0
            return stats
        max_log_ratio = math.log(self.ratio_threshold)
        for epoch in range(self.n_epochs):
            if block == 1:
                minibatches = np.array_split(np.random.permutation(segments), n_minibatches)
            else:
                runs = segments.reshape(-1, block)
                minibatches = [runs[k].reshape(-1) for k in np.array_split(np.random.permutation(len(runs)), n_minibatches)]
            for segs in minibatches:
                if len(segs) == 0:
                    continue
                b = store.batch(segs, self.device)
                with self._autocast():
                    # without an entropy bonus the entropy is only logged: measure it in the first epoch
                    want = "grad" if self.ent_coef != 0 else "log" if epoch == 0 else "none"
                    logp, entropy, values = self.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions,
                                                                         entropy=want, **b.layout)
                log_ratio = logp - old_logp[b.cells]
                finite = bool(torch.isfinite(log_ratio).all())
                max_abs = float(log_ratio.detach().abs().max()) if finite else math.inf
                if ranks > 1:  # one rank's NaN stops every rank; one rank's exploding ratio skips the minibatch
                    not_finite, max_abs = all_max([float(not finite), max_abs])
                    finite = not_finite == 0
                if not finite:
                    raise FloatingPointError(
                        f"{type(self).__name__}: NaN/inf log-probabilities at timestep {self.num_timesteps} (epoch "
                        f"{epoch}); the policy diverged: lower learning_rate, set target_kl or restart from the last "
                        "checkpoint")
                if max_abs > max_log_ratio:
                    skipped += 1  # one sample this far off would dominate the update: drop the minibatch
                    continue
                ratio = log_ratio.exp()
                loss, pieces = loss_fn(b, logp, values, log_ratio, ratio)
                if entropy is not None:
                    ent = entropy.mean()
                    loss = loss - self.ent_coef * ent
                    stats["ent"].append(ent.item())
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean().item()
                loss_finite = bool(torch.isfinite(loss))
                if ranks > 1:  # the early stop and the NaN stop below are taken on all ranks' figures
                    not_finite, kl_sum = all_sum([float(not loss_finite), approx_kl])
                    loss_finite, approx_kl = not_finite == 0, kl_sum / ranks
                if not loss_finite:
                    raise FloatingPointError(
                        f"{type(self).__name__}: the loss is {loss.item()} at timestep {self.num_timesteps} (policy "
                        f"{pieces['pg']:.4g}, value {pieces.get('vf', 0.0):.4g}; NaN/inf on this rank or another "
                        "under torchrun); lower learning_rate or vf_coef, or clip rewards (reward_clip)")
                for key, value in pieces.items():
                    stats.setdefault(key, []).append(value)
                stats["approx_kl"].append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        logger.info("early stop at epoch %d: approx KL %.4f > 1.5 * target_kl", epoch, approx_kl)
                    break
                self.policy.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(self.policy.parameters())  # under torchrun: every rank takes the same step
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                updates += 1
            if not continue_training:
                break
        self._n_updates += updates
        stats["skipped"] = skipped
        return stats

    def _record(self, store: RolloutStore, stats: dict[str, Any], *, clip_range: float, beta: float,
                kl_tok: np.ndarray, episode_kls: list[float]) -> None:
        """Log an update's figures (SB3's names where SB3 has them)."""
        ended = store.dones
        record = self.logger.record
        for key, name in (("pg", "policy_gradient_loss"), ("vf", "value_loss"), ("ent", "entropy"),
                          ("approx_kl", "approx_kl"), ("clip", "clip_fraction")):
            if stats[key]:
                record(f"train/{name}", float(np.mean(stats[key])))
        record("train/skipped_batches", stats["skipped"])
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/learning_rate", self.lr_schedule(self._current_progress_remaining))
        record("train/clip_range", clip_range)
        record("train/kl_coef", beta)
        record("rollout/kl_per_token", float(kl_tok.mean()))
        if ended.any():
            record("rollout/score_mean", float(store.scores[ended].mean()))
            record("rollout/stop_rate", float(store.stopped[ended].mean()))
        if episode_kls:
            record("rollout/kl", float(np.mean(episode_kls)))

    def learn(self, total_timesteps: int, callback: Any = None, log_interval: int = 1, tb_log_name: str = "PPO",
              reset_num_timesteps: bool = True, progress_bar: bool = False) -> PPO:
        """SB3's learn loop (rollout, log, train), counting one timestep per generated token."""
        return super().learn(total_timesteps=total_timesteps, callback=callback, log_interval=log_interval,
                             tb_log_name=tb_log_name, reset_num_timesteps=reset_num_timesteps, progress_bar=progress_bar)

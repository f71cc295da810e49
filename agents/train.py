"""`rlfl ppo`: one PPO run from a config, resumable, with gold evaluation, checkpoints and a report.

`train_ppo` is what the command runs and what a script calls with a `PPOConfig`:

1. checks the inputs before anything heavy (the policy checkpoint, the env id, the reward-model path, the
   log formats), so a typo fails in a second, not after the first rollout;
2. builds the env (``make_text_vec_env(env_id, n_envs, ...)``) with the policy's own tokenizer, and holds
   ``eval_prompts`` of the env's prompts out of training for `GoldEval` (a seeded split);
3. **resumes** when ``out_dir`` holds ``ppo_resume.pt`` (`PPO.from_resume_state`, which reads tensors and
   numbers only, then ``learn(remaining, reset_num_timesteps=False)``: the same command after a crash or a
   SIGKILL continues from the last checkpoint), else starts `PPO` from ``init_from``;
4. trains with `SampleLogger`, `GoldEval`, `CheckpointEvery` and `ProgressLine`; SB3's logger writes
   ``out_dir/logs`` (CSV by default; ``stdout``/``tensorboard``/``json`` on request);
5. leaves in ``out_dir``: the final policy as an rlfl checkpoint (``rlfl sample OUT_DIR`` and ``rlfl serve
   OUT_DIR`` open it; a later stage starts from it), ``ppo_resume.pt`` (the resume state),
   ``ppo_sb3.zip`` (an export for SB3's ``PPO.load``, which unpickles it: share it only with people who
   trust you, and open only ones you trust),
   ``eval.csv`` (every gold evaluation), ``ppo_config.json`` and ``ppo_report.json`` (gold figures before
   and after, timesteps, wall time). While a run writes ``out_dir`` it holds a lock on ``.ppo.lock`` there, so
   a second run on the same directory stops with an error instead of mixing its saves in.

Under ``torchrun --nproc_per_node=N -m rlfl ppo ...`` every process steps its own ``n_envs`` rows (its own
prompts and samples) and the ranks average each minibatch's gradients (`rlfl.agents.distributed`), so one
rollout trains on N x n_envs x n_steps tokens and ``total_timesteps`` counts all of them. Rank 0 alone
evaluates, logs, samples and writes ``out_dir``; each process uses cpu_count / N threads unless
``num_threads`` says otherwise, and its own GPU (``cuda:LOCAL_RANK``) with ``--device cuda``.

Example:
    >>> from rlfl.agents.train import PPOConfig, train_ppo
    >>> out = train_ppo(PPOConfig(init_from="runs/sft", out_dir="runs/ppo", total_timesteps=65536))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import rlfl.envs
import torch
import torch.distributed as dist
from rlfl.agents.callbacks import (
    CheckpointEvery,
    GoldEval,
    ProgressLine,
    SampleLogger,
    read_eval_csv,
    save_sb3_zip,
)
from rlfl.agents.grpo import GRPO, RLOO
from rlfl.agents.online_dpo import OnlineDPO
from rlfl.agents.ppo import PPO, RESUME_FILE
from rlfl.agents.settings import GRPOSettings, OnlineDPOSettings, PPOSettings
from rlfl.agents.vec_env import TextVecEnv, make_text_vec_env
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import Logger, make_output_format

from rlfl.checkpoint import is_checkpoint
from rlfl.config import to_dict
from rlfl.device import pick_device
from rlfl.envs.rewards import as_reward_source
from rlfl.files import atomic_write_bytes, read_json
from rlfl.trainer import join_process_group

log = logging.getLogger(__name__)

EXPORT_ZIP = "ppo_sb3.zip"
LOG_FORMATS = ("stdout", "csv", "tensorboard", "json", "log")


@dataclass
class PPOConfig(PPOSettings):
    """`rlfl ppo`: which policy to fine-tune, in which env, against which reward, and how (the `PPOSettings`)."""

    algorithm: ClassVar[type[PPO]] = PPO  # what trains: the other algorithms' configs name theirs
    init_from: str = field(default="runs/sft", metadata={
        "help": "policy checkpoint directory to start from (any stage), or hf:DIR (a local Hugging Face folder)"})
    env_id: str = field(default="rlfl/SyntheticReviews-v0", metadata={"help": "registered text env id"})
    reward: str | None = field(default=None, metadata={
        "help": "reward-model checkpoint directory (`rlfl reward train`); default: the env's own reward"})
    gold: str | None = field(default=None, metadata={
        "help": "reward-model checkpoint used as the gold judge of evaluations, read as raw scores (a classifier: "
                "score > 0 = positive; default: the env's gold judge)"})
    reference: str | None = field(default=None, metadata={
        "help": "checkpoint of the KL reference (default: the starting policy)"})
    # ---- env options (None: the env's default)
    max_new_tokens: int | None = field(default=None, metadata={"help": "tokens per completion at most"})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "prompt tokens kept (longer ones are left-truncated)"})
    chat_template: bool | None = field(default=None, metadata={"help": "wrap prompts as a chat user turn"})
    stop_tokens: list[int] | None = field(default=None, metadata={
        "help": "token ids that end a completion (the flag alone, an empty list: none, every completion runs "
                "--max-new-tokens)"})
    min_new_tokens: int | None = field(default=None, metadata={
        "help": "a stop token cannot end a completion before it has this many tokens (PPO never samples one there)"})
    data_path: str | None = field(default=None, metadata={"help": "prompt data of envs that need it (IMDB, HH-RLHF)"})
    n_prompts: int | None = field(default=None, metadata={"help": "prompts the env draws from"})
    env_options: list[str] = field(default_factory=list, metadata={
        "help": "more options of the env as KEY=VALUE, VALUE read as JSON when it is JSON (e.g. level=2 for "
                "rlfl/Arithmetic-v0, split=test for rlfl/GSM8K-v0)"})
    # ---- run size
    n_envs: int = field(default=32, metadata={
        "help": "parallel episodes (rows of the vector env), per process under torchrun"})
    total_timesteps: int = field(default=65536, metadata={
        "help": "generated tokens to train on (runs to the end of the rollout that reaches it)"})
    # ---- output, evaluation, logging
    out_dir: str = field(default="runs/ppo", metadata={
        "help": "output directory: final checkpoint, ppo_resume.pt (resume), ppo_sb3.zip (SB3 export), eval.csv, logs/, "
                "ppo_report.json"})
    checkpoint_every: int = field(default=8192, metadata={"help": "save every N timesteps (and at the end; 0 = end only)"})
    eval_every: int = field(default=8192, metadata={"help": "gold evaluation every N timesteps (and at start and end; 0 = those only)"})
    eval_prompts: int = field(default=64, metadata={"help": "prompts held out of training for gold evaluation (0 = no evaluation)"})
    eval_samples: int = field(default=1, metadata={"help": "completions per evaluation prompt"})
    sample_every: int = field(default=8, metadata={"help": "log a few completions every N rollouts (0 = never)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, prompts, sampling and the eval split"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    log_formats: list[str] = field(default_factory=lambda: ["csv"], metadata={
        "help": "SB3 logger outputs in out_dir/logs: stdout csv tensorboard json log"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (off: one metrics line per update)"})

    def __post_init__(self) -> None:
        super().__post_init__()

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {what}; fix {flag}")

        need(bool(self.init_from), "init_from", "pass the policy checkpoint directory")
        need(bool(self.env_id), "env_id", "pass a registered env id such as rlfl/SyntheticReviews-v0")
        for name in ("n_envs", "total_timesteps", "eval_samples"):
            need(getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("checkpoint_every", "eval_every", "eval_prompts", "sample_every", "num_threads"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("max_new_tokens", "max_prompt_tokens", "n_prompts"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, name, "must be >= 1 (or unset)")
        need(self.min_new_tokens is None or self.min_new_tokens >= 0, "min_new_tokens", "must be >= 0 (or unset)")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "use auto, cpu, cuda or cuda:N")
        for option in self.env_options:
            key = option.split("=", 1)[0]
            need("=" in option and key.isidentifier(), "env_options", f"{option!r} is not KEY=VALUE")
            need(key not in _ENV_FLAGS, "env_options", f"{key} has its own flag: pass --{key.replace('_', '-')}")
        bad = [f for f in self.log_formats if f not in LOG_FORMATS]
        need(not bad, "log_formats", f"unknown format {bad[0]!r}; use any of {' '.join(LOG_FORMATS)}" if bad else "")

    def env_kwargs(self) -> dict[str, Any]:
        """The env options that were set (the others stay the env's defaults).

        >>> PPOConfig(max_new_tokens=8, env_options=["level=2", "name=abc"]).env_kwargs()
        {'max_new_tokens': 8, 'level': 2, 'name': 'abc'}
        """
        kwargs = {k: getattr(self, k) for k in _ENV_FLAGS if getattr(self, k) is not None}
        for option in self.env_options:
            key, text = option.split("=", 1)
            try:
                kwargs[key] = json.loads(text)
            except json.JSONDecodeError:
                kwargs[key] = text
        return kwargs


# the env options with a flag of their own
_ENV_FLAGS = ("max_new_tokens", "max_prompt_tokens", "chat_template", "stop_tokens", "min_new_tokens", "data_path",
              "n_prompts")


def _with_default(config: type, name: str, value: Any) -> Any:
    """A field of ``config`` with another default (its help stays), for a subclass that redefines it."""
    return field(default=value, metadata=config.__dataclass_fields__[name].metadata)


@dataclass
class GRPOConfig(PPOConfig, GRPOSettings):
    """`rlfl grpo`: `PPOConfig`'s run (policy, env, reward, evaluation, output) trained by `rlfl.agents.GRPO`, with
    the `GRPOSettings`. A run's out-dir holds the same files as a PPO run's."""

    algorithm: ClassVar[type[PPO]] = GRPO
    out_dir: str = _with_default(PPOConfig, "out_dir", "runs/grpo")


@dataclass
class RLOOConfig(GRPOConfig):
    """`rlfl rloo`: `GRPOConfig` with RLOO's defaults (leave-one-out baseline, the KL in the reward)."""

    algorithm: ClassVar[type[PPO]] = RLOO
    advantage: str = _with_default(GRPOSettings, "advantage", "rloo")
    kl_penalty: str = _with_default(GRPOSettings, "kl_penalty", "reward")
    out_dir: str = _with_default(PPOConfig, "out_dir", "runs/rloo")


@dataclass
class OnlineDPOConfig(PPOConfig, OnlineDPOSettings):
    """`rlfl online-dpo`: `PPOConfig`'s run trained by `rlfl.agents.OnlineDPO`, with the `OnlineDPOSettings`
    (pairs of two completions per prompt and no KL term by default: ``beta`` holds the policy near the
    reference)."""

    algorithm: ClassVar[type[PPO]] = OnlineDPO
    group_size: int = _with_default(GRPOSettings, "group_size", 2)
    kl_coef: float = _with_default(PPOSettings, "kl_coef", 0.0)
    out_dir: str = _with_default(PPOConfig, "out_dir", "runs/online_dpo")



# ---------------------------------------------------------------------------------------------- pieces
@contextlib.contextmanager
def _process_group(device: str) -> Iterator[tuple[int, int]]:
    """Torchrun's process group for the run, left when it ends if this run joined it; (rank, world size).

    A run that ends normally waits for every rank before leaving: rank 0 evaluates and saves alone at the
    end, and a gloo group torn down on one rank while another still holds it can abort that process."""
    joined = not dist.is_initialized()
    join_process_group(torch.device(device))
    try:
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if joined and dist.is_initialized():
            dist.barrier()
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def _check_inputs(cfg: PPOConfig, resuming: bool) -> None:
    """Fail on bad paths and names before anything is built or written."""
    for name, path in (("init_from", None if resuming else cfg.init_from), ("reference", cfg.reference)):
        if path is not None and not is_checkpoint(path):
            raise FileNotFoundError(f"{path}: not an rlfl checkpoint directory (--{name.replace('_', '-')}); pass a "
                                    "directory written by rlfl pretrain/sft/ppo")
    for name, path in (("reward", cfg.reward), ("gold", cfg.gold)):
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no such reward-model checkpoint directory (--{name}); pass a directory "
                                    "written by `rlfl reward train`")
    if cfg.env_id not in gymnasium.registry:
        close = difflib.get_close_matches(cfg.env_id, list(gymnasium.registry), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"--env-id {cfg.env_id!r} is not a registered env{hint} (built in: "
                         f"{', '.join(rlfl.envs.BUILTIN_IDS)}; custom ids: rlfl.envs.register_reward_env)")
    if "tensorboard" in cfg.log_formats and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--log-formats tensorboard needs the tensorboard package; pip install tensorboard or drop "
                         "it from --log-formats")
    if Path(cfg.out_dir).resolve() == Path(cfg.init_from).resolve():
        raise ValueError(f"--out-dir {cfg.out_dir} is the policy checkpoint itself; pass another output directory")


def split_prompts(texts: list[str] | None, sampler: Any, n_eval: int, seed: int) -> tuple[list[str] | None, list[str]]:
    """(training prompts or None = all of them, held-out evaluation prompts), a seeded split.

    A prompt list with more than ``2 * n_eval`` prompts loses ``n_eval`` of them to evaluation. A smaller
    list is evaluated on ``n_eval`` of its own prompts (nothing to hold out; a warning says so), and a prompt
    source without a list (``sample()`` only) on ``n_eval`` fresh draws from it.

    Example:
        >>> train, held = split_prompts([f"p{i}" for i in range(10)], None, 2, seed=0)
        >>> len(train), len(held), set(train) & set(held)
        (8, 2, set())
    """
    rng = np.random.default_rng(seed)
    if texts is None:
        return None, [str(sampler.sample(rng)) for _ in range(n_eval)]
    if len(texts) > 2 * n_eval:
        held = set(rng.choice(len(texts), size=n_eval, replace=False).tolist())
        return ([t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)])
    log.warning("only %d prompts: too few to hold %d out; evaluating on training prompts", len(texts), n_eval)
    picks = rng.choice(len(texts), size=min(n_eval, len(texts)), replace=False)
    return None, [texts[i] for i in sorted(picks.tolist())]


def _sb3_logger(out_dir: Path, formats: list[str], resumed_at: int | None) -> Any:
    folder = out_dir / "logs"
    # SB3's CSV writer truncates its file: a resumed run writes progress-from-<step>.csv beside the first one
    suffix = "" if resumed_at is None else f"-from-{resumed_at}"
    return Logger(str(folder), [make_output_format(f, str(folder), suffix) for f in formats])


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run: two runs writing one directory would mix their saves.

    ``flock`` locks die with their process, so a run killed with SIGKILL never leaves a stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    with open(out / ".ppo.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out}: another rlfl ppo run is writing this directory; wait for it to end or pass "
                             "another --out-dir") from None
        yield


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _warn_changed_settings(out: Path, cfg: PPOConfig) -> None:
    path = out / "ppo_config.json"
    if not path.is_file():
        return
    before = read_json(path, fix="it records the run's settings: restore it, or pass a new --out-dir")
    now = to_dict(cfg)
    # settings a resumed run takes from its resume state, whatever the command line says now
    changed = [k for k in ("init_from", "reference", *cfg.names()) if k in before and before[k] != now.get(k)]
    if changed:
        log.warning("resuming %s: %s changed since the run started; the saved run's values are used (start a new "
                    "--out-dir to train with the new ones)", out, ", ".join(changed))


# ---------------------------------------------------------------------------------------------- the run
def train_ppo(cfg: PPOConfig) -> Path:
    """Run (or resume) PPO as ``cfg`` says; returns ``cfg.out_dir``, which holds the final checkpoint."""
    out = Path(cfg.out_dir)
    _check_inputs(cfg, (out / RESUME_FILE).is_file())
    device = str(pick_device(cfg.device))
    created = not out.exists()
    try:
        with _process_group(device) as (rank, size), contextlib.ExitStack() as stack:
            if rank == 0:  # rank 0 writes out_dir (torchrun stops the other ranks if it fails here)
                out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(_exclusive(out))
            if size > 1:
                dist.barrier()  # out_dir exists and is locked before any rank reads it
            _run(cfg, out, device, rank, size)
    except BaseException:
        # a run that failed before writing anything (a bad policy, reward or env) leaves no folder behind
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {".ppo.lock"}:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _run(cfg: PPOConfig, out: Path, device: str, rank: int, size: int) -> None:
    state = out / RESUME_FILE
    resuming = state.is_file()
    if not resuming and (out / "ppo_state.zip").is_file():
        raise ValueError(f"{out / 'ppo_state.zip'}: runs no longer resume from SB3 zips (loading one runs pickled "
                         "code from the file); pass a new --out-dir, or delete the zip to start this one over")
    if cfg.num_threads or size > 1:
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // size))
    main = rank == 0
    env, eval_prompts = _build_env(cfg, out, device, resuming)
    model, resumed_at = _build_model(cfg, out, env, device, rank, main, resuming)
    if not main:  # rank 0 alone logs, evaluates and writes out_dir
        model.set_logger(Logger(None, []))
        if cfg.total_timesteps > model.num_timesteps:
            model.learn(cfg.total_timesteps - model.num_timesteps, reset_num_timesteps=not resuming)
        return
    model.set_logger(_sb3_logger(out, cfg.log_formats, resumed_at))
    rollout = model.n_steps * model.n_envs * size
    if cfg.total_timesteps % rollout:
        log.info("total_timesteps %d is not a multiple of the rollout (%d tokens): training stops at %d",
                 cfg.total_timesteps, rollout, math.ceil(cfg.total_timesteps / rollout) * rollout)
    callbacks, gold_eval = _callbacks(cfg, out, env, eval_prompts, device)
    start = model.num_timesteps
    remaining = cfg.total_timesteps - start
    t0 = time.perf_counter()
    if remaining > 0:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resuming)
        if model.logger.name_to_value:
            model.logger.dump(model.num_timesteps)  # the last update's figures and the final evaluation
    else:
        log.info("%s is already trained to %d timesteps (>= --total-timesteps %d); nothing to do", out,
                 model.num_timesteps, cfg.total_timesteps)
    wall = time.perf_counter() - t0
    model.logger.close()
    if remaining > 0 or not (out / EXPORT_ZIP).is_file():
        save_sb3_zip(model, out / EXPORT_ZIP)  # for SB3's PPO.load; never read back by rlfl
    if remaining <= 0 and (out / "ppo_report.json").is_file():
        return  # a finished run run again: its report stays as it was
    history = gold_eval.history if gold_eval is not None else []
    if remaining <= 0 and (out / "eval.csv").is_file():  # killed after its last save, before the report
        history = read_eval_csv(out / "eval.csv")
    _report(cfg, out, model, history, resumed_at=resumed_at,
            tokens_per_s=round((model.num_timesteps - start) / wall, 1) if remaining > 0 else None, wall=wall)


def _build_env(cfg: PPOConfig, out: Path, device: str, resuming: bool) -> tuple[TextVecEnv, list[str]]:
    """The vector env (the policy's tokenizer, the reward loaded once) and the prompts held out of it for
    evaluation. A resumed run reads the tokenizer from out_dir: the checkpoint there is written before the
    resume state."""
    env_kwargs: dict[str, Any] = {"tokenizer": str(out if resuming else cfg.init_from), **cfg.env_kwargs()}
    if cfg.reward is not None:
        env_kwargs["reward"] = as_reward_source(cfg.reward, device=device)
    eval_prompts: list[str] = []
    if cfg.eval_prompts:
        probe = make_text_vec_env(cfg.env_id, 1, **env_kwargs).inner
        train_prompts, eval_prompts = split_prompts(probe.prompt_texts, probe.prompt_source, cfg.eval_prompts,
                                                    cfg.seed)
        if train_prompts is not None:
            env_kwargs["prompts"] = train_prompts
    return make_text_vec_env(cfg.env_id, cfg.n_envs, **env_kwargs), eval_prompts


def _build_model(cfg: PPOConfig, out: Path, env: TextVecEnv, device: str, rank: int, main: bool,
                 resuming: bool) -> tuple[PPO, int | None]:
    """PPO resumed from out_dir's resume state, or started from the policy checkpoint; and the step it
    resumed at (None for a fresh run)."""
    if resuming:
        state = out / RESUME_FILE
        if main:
            _warn_changed_settings(out, cfg)
        model = cfg.algorithm.from_resume_state(state, env, device=device)
        model.set_random_seed(cfg.seed + model.num_timesteps + rank)  # don't replay the first run's samples
        if main:
            log.info("resumed %s from %s at timestep %d of %d", cfg.algorithm.__name__, state, model.num_timesteps,
                     cfg.total_timesteps)
        return model, model.num_timesteps
    # each rank its own prompts and samples (rank 0's are a single process's)
    model = cfg.algorithm(cfg.init_from, env, seed=cfg.seed + rank, device=device,
                          policy_kwargs={"reference_checkpoint": cfg.reference} if cfg.reference else None,
                          **dataclasses.asdict(cfg.algorithm.settings_class.of(cfg)))
    if main:
        _write_json(out / "ppo_config.json", to_dict(cfg))
    return model, None


def _callbacks(cfg: PPOConfig, out: Path, env: TextVecEnv, eval_prompts: list[str],
               device: str) -> tuple[list[Any], GoldEval | None]:
    """Samples, gold evaluation, checkpoints and the metrics line, in the order they must run."""
    callbacks: list[Any] = []
    gold_eval = None
    if cfg.sample_every:
        callbacks.append(SampleLogger(every_rollouts=cfg.sample_every))
    if eval_prompts:
        # raw scores: a gold classifier's logit is > 0 exactly when it reads the text as positive, which is
        # what eval/gold_positive_rate counts (normalising by the training mean would move that threshold)
        judge = as_reward_source(cfg.gold, device=device, normalize=False) if cfg.gold else None
        if judge is None and env.gold_judge is None:
            log.warning("%s has no gold judge and --gold is unset: eval/gold_* measure the training reward",
                        cfg.env_id)
            judge = env.inner.reward
        gold_eval = GoldEval(eval_prompts, judge, every_steps=cfg.eval_every, n_samples=cfg.eval_samples,
                             seed=cfg.seed, csv_path=out / "eval.csv")
        callbacks.append(gold_eval)
    # evaluate before saving at the same step: a kill in between leaves an eval row newer than the resume
    # state, which GoldEval drops on resume (and redoes), never a state whose evaluation is missing from eval.csv
    callbacks.append(CheckpointEvery(out, cfg.checkpoint_every, resume_name=RESUME_FILE,
                                     extra={"ppo": {"env_id": cfg.env_id, "reward": cfg.reward, "config": to_dict(cfg)}}))
    callbacks.append(ProgressLine(progress=cfg.progress))
    return callbacks, gold_eval


def _report(cfg: PPOConfig, out: Path, model: PPO, history: list[dict[str, Any]], *, resumed_at: int | None,
            tokens_per_s: float | None, wall: float) -> None:
    """ppo_report.json (gold figures at the start and the end, timesteps, wall time) and its log line."""
    report = {
        "env_id": cfg.env_id, "init_from": cfg.init_from, "reward": cfg.reward or "the env's default",
        "out_dir": str(out), "timesteps": int(model.num_timesteps), "total_timesteps": cfg.total_timesteps,
        "resumed_from": resumed_at, "wall_time_s": round(wall, 3), "tokens_per_s": tokens_per_s,
        "kl_coef": model.kl_ctl.beta, "start": history[0] if history else None,
        "end": history[-1] if history else None, "evaluations": len(history),
    }
    _write_json(out / "ppo_report.json", report)
    if history:
        s, e = history[0], history[-1]
        log.info("%s: gold %.4f -> %.4f | positive %.3f -> %.3f | kl %.3f | ppl %.2f -> %.2f | %d timesteps",
                 model.command, s["gold_mean"], e["gold_mean"], s["gold_positive_rate"], e["gold_positive_rate"], e["kl"],
                 s["perplexity"], e["perplexity"], model.num_timesteps)

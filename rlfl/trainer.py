"""The one training loop: pretraining, SFT and reward-model training all run through ``Trainer``.

A stage supplies only what differs: a ``batch_fn(step, micro_step)`` that returns the tensors of one
micro-batch, a ``loss_fn(model, batch)`` that returns the loss (optionally with a dict of metrics), and
optionally eval batches, an eval-metrics transform and a sampler for text samples. The loop owns the
rest: AdamW with no decay on norms/biases/embeddings, warmup + cosine schedule, gradient accumulation,
clipping, bf16/fp16 autocast on CUDA, optional ``torch.compile``, DDP under ``torchrun`` (gloo on CPU,
nccl on GPU), eval, atomic checkpoints with exact resume, a progress bar, a metrics line, a CSV log and
TensorBoard when it is installed.

Exact resume works because nothing in the loop carries hidden state across steps: the data a step sees
derives from (seed, step, rank), the learning rate from the step, and the optimizer and RNG states are
saved with the weights in one atomic checkpoint.

Example:
    >>> import torch
    >>> from rlfl.model import GPT, GPTConfig
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=16, n_layer=1, n_head=2, n_embd=32))
    >>> x = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    >>> def batch_fn(step, micro): return x[:, :-1], x[:, 1:]
    >>> def loss_fn(m, b): return torch.nn.functional.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())
    >>> import tempfile
    >>> cfg = TrainConfig(out_dir=tempfile.mkdtemp(), max_steps=20, warmup_steps=2, progress=False)
    >>> summary = Trainer(model, cfg, stage="demo", tokenizer=tok, batch_fn=batch_fn, loss_fn=loss_fn,
    ...                   tokens_per_batch=64).fit()
    >>> summary["train/loss"] < 5.0
    True
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from rlfl import checkpoint as ckpt
from rlfl.config import to_dict
from rlfl.device import pick_device
from rlfl.files import atomic_write_text
from rlfl.lora import describe_lora, lora_record
from rlfl.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Batch = Sequence[torch.Tensor]
LossOut = torch.Tensor | tuple[torch.Tensor, dict[str, float]]

# Dense bf16 peak FLOP/s per GPU for MFU (vendor datasheets, no sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class TrainConfig:
    """Settings of the shared training loop (every stage's optimisation, logging and checkpointing)."""

    out_dir: str = field(default="runs/pretrain", metadata={"help": "checkpoint directory (also holds metrics.csv)"})
    max_steps: int = field(default=2000, metadata={"help": "optimizer steps to train for"})
    batch_size: int = field(default=12, metadata={"help": "sequences per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay on matrices (never on norms, biases, embeddings)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0 = off)"})
    eval_interval: int = field(default=250, metadata={"help": "evaluate every N steps (and at the end; 0 = only at the end)"})
    eval_steps: int = field(default=20, metadata={"help": "batches per evaluation"})
    log_interval: int = field(default=10, metadata={"help": "write the metrics line every N steps"})
    checkpoint_interval: int = field(default=250, metadata={"help": "save a checkpoint every N steps (and at the end; 0 = only at the end)"})
    seed: int = field(default=1337, metadata={"help": "seed for init, data order and dropout"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on capable CUDA, else float32) | float32 | bfloat16 | float16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    resume: bool = field(default=True, metadata={"help": "resume from out_dir's checkpoint when it has trainer state"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads per process (0 = cores / processes)"})
    peak_flops: float = field(default=0.0, metadata={"help": "peak FLOP/s per device for MFU (0 = known GPUs only)"})

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_steps", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1; pass --{name.replace('_', '-')} 1 or more")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr (got lr={self.lr}, min_lr={self.min_lr}); fix --lr/--min-lr")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1/beta2 must be in [0, 1) (got {self.beta1}, {self.beta2})")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16")



def finetune_defaults(out_dir: str) -> TrainConfig:
    """The loop settings a fine-tuning stage (SFT, reward model) starts from: shorter and gentler than pretraining.

    >>> finetune_defaults("runs/sft").max_steps, finetune_defaults("runs/rm").out_dir
    (500, 'runs/rm')
    """
    return TrainConfig(out_dir=out_dir, max_steps=500, batch_size=16, lr=3e-4, min_lr=3e-5, warmup_steps=20,
                       eval_interval=100, checkpoint_interval=100)


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Runtime:
    """Where this process runs: device, DDP rank and world size, autocast dtype."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def join_process_group(device: torch.device) -> None:
    """Join torchrun's process group when launched by torchrun (NCCL on GPUs, gloo on CPUs); else nothing."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device and precision; join the torchrun process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(config.device)
    join_process_group(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        threads = config.num_threads or max(1, (os.cpu_count() or 1) // world_size)
        torch.set_num_threads(threads)
        # As training goes on, tiny values (Adam's second moments, small gradients) become subnormal
        # floats, which x86 CPUs handle ~100x slower; flushing them to zero keeps steps from slowing down.
        torch.set_flush_denormal(True)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float16" and device.type != "cuda":
        raise ValueError("dtype=float16 needs CUDA; use --dtype bfloat16 or float32 on CPU")
    amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return Runtime(device=device, rank=rank, local_rank=local_rank, world_size=world_size, amp_dtype=amp)


def to_device(batch: Batch, device: torch.device) -> list[torch.Tensor]:
    """A batch's tensors on ``device``; to a GPU, host tensors go through pinned memory without blocking.

    A copy from pinned (page-locked) host memory is asynchronous, so the host goes on to the next step's
    Python while the GPU still computes this one; from ordinary memory ``non_blocking`` would be synchronous.
    Tensors already on the device pass through untouched, and on a CPU nothing is copied.

    Example:
        >>> [t.shape for t in to_device([torch.zeros(2, 3), torch.ones(4)], torch.device("cpu"))]
        [torch.Size([2, 3]), torch.Size([4])]
    """
    if device.type == "cuda":
        return [t.pin_memory().to(device, non_blocking=True) if t.device.type == "cpu" else t.to(device)
                for t in batch]
    return [t.to(device, non_blocking=True) for t in batch]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: norms, biases and embeddings are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith(("wte.weight", "wpe.weight"))
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel is a single pass over all params: a clear win on CUDA and on CPU alike
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=True)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def peak_flops(device: torch.device, config: TrainConfig) -> float:
    """Peak FLOP/s of one device for MFU: the config's value, else a known GPU's bf16 figure, else 0."""
    if config.peak_flops > 0:
        return config.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_FLOPS.items():
            if key in name:
                return value
    return 0.0


# ---------------------------------------------------------------------------------------------- logging
METRICS_HEADER = ["step", "time", "name", "value"]


def _logged_rows(path: Path, up_to_step: int) -> list[list[str]]:
    """The complete rows of a metrics.csv up to ``up_to_step``. A kill can leave the file empty (before its
    first row reached the disk) or end it in a half-written row: such rows are dropped, never fatal."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            rows = list(csv.reader(fh))
    except (OSError, csv.Error):
        return []
    if not rows or rows[0] != METRICS_HEADER:
        return []
    return [r for r in rows[1:] if len(r) == 4 and r[0].isdigit() and int(r[0]) <= up_to_step]


class MetricsLog:
    """metrics.csv (long format: step, time, name, value) plus TensorBoard when it is installed.

    The file is rewritten at the start, atomically (temp file, then rename) and with its header: the header of
    a new run, or the rows up to the checkpoint a run resumes from, so it reads as one clean run and a kill at
    any moment leaves a file the next resume can read.
    """

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        self.path = out_dir / "metrics.csv"
        kept = _logged_rows(self.path, resume_step) if resume_step is not None else []
        text = io.StringIO()
        csv.writer(text).writerows([METRICS_HEADER, *kept])
        atomic_write_text(self.path, text.getvalue())
        self.fh = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            pass

    def write(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        for name, value in metrics.items():
            self.writer.writerow([step, f"{now:.3f}", name, f"{value:.6g}"])
            if self.tb is not None:
                self.tb.add_scalar(name, value, step)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def _split_loss(out: LossOut) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, {}


def _metrics_line(step: int, max_steps: int, m: dict[str, float]) -> str:
    parts = [f"step {step}/{max_steps}", f"loss {m['train/loss']:.4f}", f"lr {m['train/lr']:.2e}",
             f"{m['train/tokens_per_s'] / 1000:.1f}k tok/s", f"{m['train/ms_per_step']:.0f} ms/step"]
    if "train/mfu" in m:
        parts.append(f"mfu {100 * m['train/mfu']:.1f}%")
    if "moe/max_load" in m:
        parts.append(f"expert load {100 * m['moe/min_load']:.0f}-{100 * m['moe/max_load']:.0f}%")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs the optimisation of any stage; see the module docstring for what a stage supplies."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        stage: str,
        tokenizer: Tokenizer,
        batch_fn: Callable[[int, int], Batch],
        loss_fn: Callable[[nn.Module, Batch], LossOut],
        tokens_per_batch: int,
        eval_batch_fn: Callable[[int], Batch] | None = None,
        eval_metrics_fn: Callable[[dict[str, float]], dict[str, float]] | None = None,
        sample_fn: Callable[[nn.Module], list[str]] | None = None,
        parent: str | None = None,
        extra_config: dict[str, Any] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.config = config
        self.rt = runtime or setup_runtime(config)
        self.stage, self.tokenizer, self.parent = stage, tokenizer, parent
        self.batch_fn, self.loss_fn = batch_fn, loss_fn
        self.eval_batch_fn, self.eval_metrics_fn, self.sample_fn = eval_batch_fn, eval_metrics_fn, sample_fn
        self.tokens_per_batch = tokens_per_batch
        self.extra_config = extra_config or {}
        self.out_dir = Path(config.out_dir)
        self.model = model.to(self.rt.device)
        self.gpt = ckpt.trunk(self.model)  # the GPT itself, or the trunk of a GPT-plus-heads model
        self.optimizer = make_optimizer(self.model, config, self.rt.device)
        self.scaler = torch.amp.GradScaler(enabled=self.rt.amp_dtype == torch.float16)
        self.step = 0
        self._resume_step: int | None = None
        if config.resume:
            self._try_resume()
        self.train_model: nn.Module = self.model
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)

    # -- resume -----------------------------------------------------------------------------------
    def _try_resume(self) -> None:
        if self.rt.distributed and not self.rt.is_main:
            dist.barrier()  # let rank 0 finish any interrupted save (checkpoint recovery) first
        found = ckpt.is_checkpoint(self.out_dir)
        saved = ckpt.load_checkpoint(self.out_dir, with_state=True) if found else None
        if self.rt.distributed and self.rt.is_main:
            dist.barrier()
        if saved is None or saved.trainer_state is None:
            return
        mine = ckpt.trunk(self.model).config.to_dict()
        if saved.config["model"] != mine:
            raise ValueError(f"{self.out_dir}: holds a checkpoint of a different model ({saved.config['model']}); "
                             "pass a new --out-dir, or --no-resume to overwrite it")
        lora = lora_record(self.model)
        if saved.config.get("lora") != lora:
            raise ValueError(f"{self.out_dir}: holds a checkpoint with LoRA {describe_lora(saved.config.get('lora'))}, "
                             f"this run has LoRA {describe_lora(lora)}; pass the run's --lora-* flags again, a new "
                             "--out-dir, or --no-resume to overwrite it")
        if saved.config.get("stage") != self.stage:
            raise ValueError(f"{self.out_dir}: holds a '{saved.config.get('stage')}' checkpoint, not '{self.stage}'; "
                             "pass a new --out-dir, or --no-resume to overwrite it")
        if saved.tokenizer.fingerprint != self.tokenizer.fingerprint:
            raise ValueError(f"{self.out_dir}: checkpoint tokenizer differs from this run's; pass a new --out-dir")
        state = saved.trainer_state
        if int(state["step"]) > self.config.max_steps:
            raise ValueError(f"{self.out_dir}: holds a checkpoint at step {int(state['step'])}, past --max-steps "
                             f"{self.config.max_steps}; pass --max-steps {int(state['step'])} or more to continue it, "
                             "a new --out-dir, or --no-resume to start over")
        ckpt.load_into(self.model, saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.rt.rank] if self.rt.rank < len(state["rng"]) else None
        if rng is not None:
            torch.set_rng_state(rng)
        if self.rt.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"][self.rt.rank].cpu(), self.rt.device)
        self.step = self._resume_step = int(state["step"])
        if self.rt.is_main:
            log.info("resumed %s from %s at step %d", self.stage, self.out_dir, self.step)

    def _trainer_state(self) -> dict[str, Any]:
        rng = [torch.get_rng_state()]
        cuda_rng = [torch.cuda.get_rng_state(self.rt.device)] if self.rt.device.type == "cuda" else None
        if self.rt.distributed:  # every rank's dropout stream, so each resumes exactly
            rng = self._gather(rng[0])
            if cuda_rng is not None:
                cuda_rng = self._gather(cuda_rng[0])
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "rng": rng, "scaler": self.scaler.state_dict()}
        if cuda_rng is not None:
            state["cuda_rng"] = cuda_rng
        return state

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out: list[Any] = [None] * self.rt.world_size
        dist.all_gather_object(out, t.cpu())
        return out

    def save(self) -> None:
        """Write the checkpoint (weights, tokenizer, config, trainer state) atomically; main rank only."""
        state = self._trainer_state()  # collective under DDP: every rank takes part
        if self.rt.is_main:
            ckpt.save_checkpoint(self.out_dir, self.model, self.tokenizer, stage=self.stage, step=self.step,
                                 train_config=to_dict(self.config), parent=self.parent, extra=self.extra_config,
                                 trainer_state=state)
        if self.rt.distributed:
            dist.barrier()

    # -- eval -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss (and stage metrics) over ``eval_steps`` eval batches, averaged across ranks."""
        if self.eval_batch_fn is None:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        for i in range(self.config.eval_steps):
            batch = to_device(self.eval_batch_fn(i), self.rt.device)
            with self.rt.autocast():
                loss, extra = _split_loss(self.loss_fn(self.model, batch))
            for k, v in {"loss": float(loss), **extra}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        self.model.train()
        names = sorted(sums)
        vec = torch.tensor([sums[k] / self.config.eval_steps for k in names], dtype=torch.float64)
        if self.rt.distributed:
            dist.all_reduce(vec)
            vec /= self.rt.world_size
        out = {f"val/{k}": float(v) for k, v in zip(names, vec)}
        if self.eval_metrics_fn is not None:
            out.update(self.eval_metrics_fn(out))
        return out

    # -- train ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from the current step to ``max_steps``; returns the last train and eval metrics."""
        cfg, rt = self.config, self.rt
        if rt.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            metrics_log = MetricsLog(self.out_dir, self._resume_step)
        if self._resume_step is None:  # a resumed run continues the saved dropout RNG stream instead
            torch.manual_seed(cfg.seed + rt.rank)
        flops = self.gpt.flops_per_token
        peak = peak_flops(rt.device, cfg)
        bar = None
        if rt.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.stage, unit="step", dynamic_ncols=True)
        summary: dict[str, float] = {}
        self.model.train()
        window_t, window_steps = time.perf_counter(), 0
        try:
            while self.step < cfg.max_steps:
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=rt.device)
                for micro in range(cfg.grad_accum):
                    batch = to_device(self.batch_fn(self.step, micro), rt.device)
                    last = micro == cfg.grad_accum - 1
                    sync = contextlib.nullcontext() if last or not rt.distributed else self.train_model.no_sync()
                    with sync:
                        with rt.autocast():
                            loss, _ = _split_loss(self.loss_fn(self.train_model, batch))
                            # a mixture-of-experts model leaves its (already weighted) router balancing
                            # loss on the model after each forward; every stage gets it added here
                            aux = self.gpt.aux_loss
                            if aux is not None:
                                loss = loss + aux
                        self.scaler.scale(loss / cfg.grad_accum).backward()
                    loss_sum += loss.detach()
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                window_steps += 1
                if bar is not None:
                    bar.update(1)

                done = self.step == cfg.max_steps
                if self.step % cfg.log_interval == 0 or done:
                    loss_val = float(loss_sum) / cfg.grad_accum
                    if not math.isfinite(loss_val):
                        raise FloatingPointError(f"{self.stage}: training loss is {loss_val} at step {self.step}; "
                                                 "lower --lr, raise --warmup-steps or set --grad-clip 1.0")
                    elapsed = time.perf_counter() - window_t
                    tok_s = self.tokens_per_batch * cfg.grad_accum * rt.world_size * window_steps / elapsed
                    summary = {"train/loss": loss_val, "train/lr": lr, "train/tokens_per_s": tok_s,
                               "train/ms_per_step": 1000 * elapsed / window_steps}
                    if peak > 0:
                        summary["train/mfu"] = flops() * tok_s / (peak * rt.world_size)
                    summary.update(self.gpt.expert_load())  # MoE: share of tokens per expert ({} if dense)
                    if rt.is_main:
                        metrics_log.write(self.step, summary)
                        if bar is not None:
                            bar.set_postfix_str(_metrics_line(self.step, cfg.max_steps, summary).split(" | ", 1)[1])
                        else:
                            log.info(_metrics_line(self.step, cfg.max_steps, summary))
                    window_t, window_steps = time.perf_counter(), 0

                evaluating = done or (cfg.eval_interval and self.step % cfg.eval_interval == 0)
                saving = done or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0)
                if evaluating or saving:
                    paused = time.perf_counter()
                    if evaluating:
                        ev = self.evaluate()
                        summary.update(ev)
                        if rt.is_main and ev:
                            metrics_log.write(self.step, ev)
                            _log_eval(self.step, ev, bar)
                            if self.sample_fn is not None:
                                for text in self.sample_fn(self.model):
                                    _log_text(f"sample @ step {self.step}: {text!r}", bar)
                    if saving:
                        self.save()
                    window_t += time.perf_counter() - paused  # eval and saving don't count against tok/s
        finally:
            if bar is not None:
                bar.close()
            if rt.is_main:
                metrics_log.close()
        return summary


def _log_text(text: str, bar: Any) -> None:
    if bar is not None:
        bar.write(text)
    else:
        log.info(text)


def _log_eval(step: int, ev: dict[str, float], bar: Any) -> None:
    _log_text(f"eval @ step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in sorted(ev.items())), bar)

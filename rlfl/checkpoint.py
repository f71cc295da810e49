"""The one checkpoint format every stage writes and reads.

A checkpoint is a directory:

- ``config.json``: model config, tokenizer description, stage, training config, parent checkpoint, step;
- ``model.safetensors``: the weights (the tied LM head is not stored twice);
- ``tokenizer.json`` (+ ``tokenizer.tiktoken``): the tokenizer, so a checkpoint is self-contained;
- ``trainer_state.pt``: optimizer, step and RNG states, for exact resume only (loaded with
  ``weights_only=True``, so a checkpoint can't run code when opened).

Saving is atomic as a whole, not just file by file: every file is first written into ``.staging/``,
then a ``COMMITTED`` marker is written, then the files are renamed into place. A crash before the marker
leaves the previous checkpoint untouched (the staging dir is discarded on the next open); a crash after
it is rolled forward on the next open. So a SIGKILL at any instant never leaves weights from one step
beside optimizer state from another.

Example:
    >>> from rlfl.model import GPT, GPTConfig
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=32, n_layer=1, n_head=2, n_embd=32))
    >>> import tempfile; d = tempfile.mkdtemp()
    >>> save_checkpoint(d, model, tok, stage="pretrain")
    >>> load_checkpoint(d).model.config.n_embd
    32
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlfl.device import pick_device
from rlfl.files import atomic_write_bytes, read_json
from rlfl.hf_models import hf_folder, load_hf_parts, read_hf_config
from rlfl.model import GPT, GPTConfig, trunk, unwrap
from rlfl.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STAGING = ".staging"
COMMITTED = "COMMITTED"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: the model, its tokenizer and the recorded config."""

    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]
    path: Path
    trainer_state: dict[str, Any] | None = field(default=None, repr=False)
    heads: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # e.g. a reward or value head

    @property
    def step(self) -> int:
        return int(self.config.get("step", 0))


def _recover(directory: Path) -> None:
    """Finish or discard a save that was interrupted (see the module docstring)."""
    staging = directory / STAGING
    if not staging.is_dir():
        return
    if (staging / COMMITTED).exists():
        log.warning("%s: completing an interrupted checkpoint save", directory)
        _move_into_place(staging, directory)
    else:
        log.warning("%s: discarding an incomplete checkpoint save", directory)
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, directory: Path) -> None:
    for item in sorted(staging.iterdir()):
        if item.name != COMMITTED:
            os.replace(item, directory / item.name)
    shutil.rmtree(staging, ignore_errors=True)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    core, gpt = unwrap(model), trunk(model)
    state = dict(gpt.state_dict())
    if gpt.config.tie_embeddings:  # the LM head shares its tensor with the token embedding; safetensors refuses
        state.pop("lm_head.weight", None)  # shared storage (an untied head is a tensor of its own and is kept)
    if core is not gpt:
        state.update({f"heads.{k}": v for k, v in core.state_dict().items() if not k.startswith("gpt.")})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_into(model: torch.nn.Module, saved: "Checkpoint") -> None:
    """Copy a loaded checkpoint's weights (trunk and heads) into ``model`` of the same shape."""
    core, gpt = unwrap(model), trunk(model)
    gpt.load_state_dict(saved.model.state_dict())
    if core is not gpt:
        missing, unexpected = core.load_state_dict(saved.heads, strict=False)
        missing = [k for k in missing if not k.startswith("gpt.")]
        if missing or unexpected:
            raise ValueError(f"{saved.path}: heads {sorted(saved.heads)} do not fit {type(core).__name__} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    *,
    stage: str,
    step: int = 0,
    train_config: dict[str, Any] | None = None,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` + ``tokenizer`` (+ optional ``trainer_state``) as one atomic checkpoint directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _recover(directory)
    staging = directory / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    core = trunk(model)
    config = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "step": int(step),
        "model": core.config.to_dict(),
        "tokenizer": {"kind": tokenizer.kind, "name": tokenizer.name, "n_vocab": tokenizer.n_vocab,
                      "fingerprint": tokenizer.fingerprint},
        "train": train_config or {},
        "parent": parent,
        **(extra or {}),
    }
    from rlfl.lora import lora_record  # LoRA adapters: record them, so load_checkpoint rebuilds the layers

    if (lora := lora_record(model)) is not None:
        config["lora"] = lora
    save_file(_weights(model), str(staging / WEIGHTS_FILE), metadata={"step": str(int(step)), "stage": stage})
    tokenizer.save(staging)
    if trainer_state is not None:
        torch.save({**trainer_state, "step": int(step)}, staging / STATE_FILE)
    atomic_write_bytes(staging / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    atomic_write_bytes(staging / COMMITTED, b"")
    _move_into_place(staging, directory)
    if trainer_state is None and (directory / STATE_FILE).exists():
        # weights without a matching optimizer state: drop the stale state so resume can't mix them
        # (load_checkpoint also refuses a state whose step differs from config.json's)
        os.remove(directory / STATE_FILE)
    log.info("saved %s checkpoint at step %d to %s", stage, step, directory)


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def is_checkpoint(directory: str | Path) -> bool:
    """True when ``directory`` holds an rlfl checkpoint (possibly one mid-save), or is ``hf:PATH`` of a folder
    with a config.json (a Hugging Face model, see `load_checkpoint`)."""
    if (folder := hf_folder(directory)) is not None:
        return (folder / CONFIG_FILE).is_file()
    d = Path(directory)
    return (d / CONFIG_FILE).is_file() or (d / STAGING / COMMITTED).is_file()


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint, with a clear error when it is not one (for ``hf:PATH``, the config a
    checkpoint of that Hugging Face model would have)."""
    if (folder := hf_folder(directory)) is not None:
        return read_hf_config(folder)
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: checkpoint directory not found; pass a directory written by rlfl pretrain/sft")
    _recover(d)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {d} is not an rlfl checkpoint (expected config.json, model.safetensors)")
    return read_json(path, fix="the checkpoint is corrupt: rerun the stage that wrote it, or restore it from a copy")


def parent_spec(init_from: str | os.PathLike) -> str:
    """How a checkpoint records the checkpoint it started from: an ``hf:PATH`` spec as given, a directory as its
    absolute path."""
    return os.fspath(init_from) if hf_folder(init_from) is not None else str(Path(init_from).resolve())


def load_checkpoint(
    directory: str | Path, *, device: str | torch.device = "cpu", with_state: bool = False
) -> Checkpoint:
    """Open any stage's checkpoint directory: model (eval mode), tokenizer, config, optional trainer state.

    ``hf:PATH`` opens a local Hugging Face folder instead (GPT-2, Llama, Qwen2/2.5/3, SmolLM2: config.json,
    safetensors weights and tokenizer.json; `rlfl.hf_models`), so every stage's ``--init-from`` takes one. It
    has no trainer state and its config's stage is "hf".
    """
    if (folder := hf_folder(directory)) is not None:
        model, tokenizer, config = load_hf_parts(folder)
        return Checkpoint(model=model.to(pick_device(device)).eval(), tokenizer=tokenizer, config=config, path=folder)
    d = Path(directory)
    config = read_config(d)
    from rlfl.tokenizer import Tokenizer as _Tok

    for key, kind in (("model", dict), ("tokenizer", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{d / CONFIG_FILE}: no {key!r} section; the checkpoint is corrupt: rerun the stage that "
                             "wrote it, or restore it from a copy")
    tokenizer = _Tok.load(d)
    if tokenizer.fingerprint != config["tokenizer"].get("fingerprint"):
        raise ValueError(f"{d}: tokenizer files do not match config.json's fingerprint; the checkpoint is corrupt")
    try:
        model = GPT(GPTConfig.from_dict(config["model"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{d / CONFIG_FILE}: its 'model' field does not describe a model ({type(exc).__name__}: "
                         f"{exc}); the checkpoint is corrupt") from None
    if config.get("lora") is not None:  # a LoRA stage's adapters, stored beside the base weights
        from rlfl.lora import apply_lora_record

        apply_lora_record(model, config["lora"], source=str(d / CONFIG_FILE))
    weights_path = d / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing; the checkpoint is incomplete")
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors' own error types: a truncated or foreign file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({_reason(exc)}); the checkpoint is "
                         "corrupt: rerun the stage that wrote it, or restore it from a copy") from None
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ValueError(f"{weights_path}: tensor {bad!r} holds NaN or inf values; the run that wrote it diverged: "
                         "use an earlier checkpoint, or rerun with a lower --lr")
    heads = {k[len("heads."):]: state.pop(k) for k in list(state) if k.startswith("heads.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.config.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{weights_path}: weights do not fit the model config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); the checkpoint is corrupt")
    model.to(pick_device(device)).eval()
    trainer_state = None
    if with_state and (d / STATE_FILE).is_file():
        try:  # weights_only: tensors and plain values, never code from the file
            trainer_state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle payload, a truncated or a foreign file
            raise ValueError(f"{d / STATE_FILE}: not a readable trainer state ({_reason(exc)}); delete it to "
                             "continue from the weights with a fresh optimizer, or restore it from a copy") from None
        if not isinstance(trainer_state, dict):
            raise ValueError(f"{d / STATE_FILE}: not a trainer state (a {type(trainer_state).__name__}); delete it "
                             "to continue from the weights with a fresh optimizer")
        if int(trainer_state.get("step", -1)) != int(config.get("step", 0)):
            raise ValueError(f"{d / STATE_FILE}: step {trainer_state.get('step')} differs from config.json's "
                             f"step {config.get('step')}; delete trainer_state.pt to start fresh from the weights")
    return Checkpoint(model=model, tokenizer=tokenizer, config=config, path=d, trainer_state=trainer_state,
                      heads=heads)



def load_for_finetuning(directory: str | Path, block_size: int = 0) -> tuple[Checkpoint, int]:
    """The checkpoint a fine-tuning stage (SFT, DPO) starts from, and the context it trains at: ``block_size``,
    or the model's own when 0; a longer one than the model's is a ValueError naming --block-size."""
    source = load_checkpoint(directory)
    limit = source.model.config.block_size
    block = block_size or limit
    if block > limit:
        raise ValueError(f"block_size={block} exceeds the model's maximum context {limit}; pass --block-size {limit} "
                         "or less")
    return source, block


def update_config(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Add or replace top-level fields of a checkpoint's ``config.json`` atomically (e.g. reward statistics)."""
    d = Path(directory)
    config = read_config(d)
    config.update(fields)
    atomic_write_bytes(d / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return config

"""Export a checkpoint as a Hugging Face folder: ``rlfl export CKPT --format hf --out DIR``.

The folder holds config.json, model.safetensors (`rlfl.hf_models.save_hf_model`: the architecture's own
weight names, LoRA adapters merged), generation_config.json and the tokenizer's tokenizer.json and
tokenizer_config.json (`rlfl.hf_tokenizer.save_hf_tokenizer`), so ``transformers``'
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` open it and give rlfl's logits.

Example:
    >>> export_hf("runs/sft", "exported/sft-hf")              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlfl.chat_template import stop_tokens
from rlfl.checkpoint import Checkpoint, load_checkpoint
from rlfl.hf_models import model_type_of, save_hf_model
from rlfl.hf_tokenizer import save_hf_tokenizer
from rlfl.model import trunk

log = logging.getLogger(__name__)


def _generation_config(tokenizer: Any) -> dict[str, Any]:
    """generation_config.json: generation stops where rlfl's does (`rlfl.chat_template.stop_tokens`: the
    end-of-text token, and the end-of-turn token of a tokenizer that can chat)."""
    stops = list(stop_tokens(tokenizer))
    bos = tokenizer.bos_id
    return {"_from_model_config": True, "bos_token_id": stops[0] if bos is None else bos,
            "eos_token_id": stops if len(stops) > 1 else stops[0], "pad_token_id": tokenizer.pad_id}


def export_hf(source: Any, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a checkpoint (a directory, an ``hf:PATH`` spec or a loaded `Checkpoint`) as a Hugging Face folder.

    The folder holds config.json (model_type from the architecture: gpt2, llama, qwen2 or qwen3),
    model.safetensors (float32), generation_config.json and the tokenizer (rlfl.hf_tokenizer.save_hf_tokenizer),
    and opens with ``transformers.AutoModelForCausalLM.from_pretrained``. LoRA adapters are merged into the
    weights; a PPO value head is left out; a reward model is refused. It is written into a temporary folder
    beside ``out`` and renamed into place, so ``out`` is never half written; an existing non-empty ``out`` is
    replaced only with ``overwrite=True``. Mixture-of-experts models, and options no supported family has,
    are refused with a ValueError. Returns ``out``.

    Example:
        >>> export_hf("runs/sft", "exported/sft-hf")          # doctest: +SKIP
    """
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    if ckpt.config.get("stage") == "reward":
        raise ValueError(f"{ckpt.path}: a reward model's scalar head has no place in a causal-LM folder; export a "
                         "policy checkpoint (pretrain, sft, dpo, ppo, grpo)")
    model = trunk(ckpt.model)
    family = model_type_of(model.config)
    if ckpt.heads:
        log.info("%s: not exporting the training-only head(s) %s", ckpt.path, ", ".join(sorted(ckpt.heads)))
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file is in the way; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out}: the folder exists and is not empty; pass a new folder, or --overwrite to "
                         "replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_hf_model(model, staging, generation=_generation_config(ckpt.tokenizer))
        save_hf_tokenizer(ckpt.tokenizer, staging)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s (%s, %.1fM parameters) to %s", ckpt.path, family, model.num_params(False) / 1e6, out)
    return out


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; a previous ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

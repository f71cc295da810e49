"""Load GPT-2 weights from a local Hugging Face style directory into an rlfl GPT (``--init-from gpt2:DIR``).

This is the gpt2 case of `rlfl.hf_models`, which holds the one name table for every family: keys may carry
a ``transformer.`` prefix (GPT2LMHeadModel) or not (GPT2Model, the hub's gpt2 file); HF's Conv1D weights
are stored (in, out) and are transposed; the attention-mask buffers are skipped; a ``lm_head.weight``
must equal ``wte.weight`` unless config.json unties them. ``pytorch_model.bin`` (a pickle) is not read.

Example (with a real download placed in ./gpt2):
    >>> model = load_gpt2("gpt2")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from rlfl.hf_models import load_hf_model
from rlfl.model import GPT


def load_gpt2(directory: str | Path, *, dropout: float = 0.0) -> GPT:
    """Build a GPT from a Hugging Face style GPT-2 directory (config.json + model.safetensors).

    A config.json without a model_type is taken as GPT-2's; any other model_type is refused (load those
    folders with `rlfl.hf_models.load_hf_model` or ``--init-from hf:DIR``).
    """
    return load_hf_model(directory, dropout=dropout, model_type="gpt2")

"""Load GPT-2 weights from a local Hugging Face style directory into an rlfl GPT.

The directory holds `config.json` (HF's GPT2Config fields) and `model.safetensors`. We read the
safetensors file directly (no `transformers` dependency, no pickle). Differences from our layout:
- keys may carry a `transformer.` prefix (GPT2LMHeadModel) or not (GPT2Model, the hub's gpt2 file);
- HF's GPT-2 uses `Conv1D` layers whose weights are stored (in, out), the transpose of nn.Linear's;
- `h.N.attn.bias` / `h.N.attn.masked_bias` are causal-mask buffers, not weights, and are skipped;
- `lm_head.weight`, when present, must equal `wte.weight` (our LM head is tied).

Only `pytorch_model.bin` (a pickle) is not read: loading pickles from untrusted files can run code.

Example (with a real download placed in ./gpt2):
    >>> model = load_gpt2("gpt2")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from rlfl.files import read_json
from rlfl.model import GPT, GPTConfig

log = logging.getLogger(__name__)

# HF activation names that all mean GPT-2's tanh approximation of GELU.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Weights whose HF Conv1D layout is (in, out): transpose into nn.Linear's (out, in).
_CONV1D = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# Buffers some HF checkpoints save that are not parameters.
_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def gpt2_config(path: str | Path, *, dropout: float = 0.0) -> GPTConfig:
    """Translate a Hugging Face GPT-2 `config.json` into a GPTConfig, refusing variants we can't run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; a GPT-2 directory needs config.json and model.safetensors")
    hf = read_json(path, fix="fix or re-download it")

    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{path}: model_type is {model_type!r}; only 'gpt2' checkpoints can be loaded")
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise ValueError(
            f"{path}: activation_function {act!r} is not supported; rlfl's GPT uses tanh-GELU "
            f"({', '.join(_TANH_GELUS)})"
        )
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{path}: scale_attn_by_inverse_layer_idx=true is not supported by rlfl's GPT")
    if not hf.get("scale_attn_weights", True):
        raise ValueError(f"{path}: scale_attn_weights=false is not supported by rlfl's GPT")

    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in hf]
    block_size = hf.get("n_positions", hf.get("n_ctx"))
    if block_size is None:
        missing.append("n_positions")
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}; is this a GPT-2 config.json?")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf["n_embd"]:
        raise ValueError(f"{path}: n_inner={n_inner} but rlfl's GPT needs 4 * n_embd = {4 * hf['n_embd']}")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            block_size=block_size,
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            dropout=dropout,
            bias=True,
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_gpt2(directory: str | Path, *, dropout: float = 0.0) -> GPT:
    """Build a GPT from a Hugging Face style GPT-2 directory (config.json + model.safetensors).

    Every parameter of our model must be found with the right shape, and every tensor in the file must
    be used (apart from the attention-mask buffers): a checkpoint with more layers than its config says
    is an error, not a silent truncation.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such directory; pass a folder holding config.json and model.safetensors"
        )
    config = gpt2_config(directory / "config.json", dropout=dropout)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        hint = (
            " (found pytorch_model.bin, which is a pickle we do not load; convert it to safetensors)"
            if (directory / "pytorch_model.bin").exists()
            else ""
        )
        raise FileNotFoundError(f"{weights}: no such file{hint}")

    model = GPT(config)
    ours = model.state_dict()
    ours.pop("lm_head.weight")  # tied to wte.weight; filled through it
    loaded: dict[str, torch.Tensor] = {}
    lm_head = None
    with safe_open(str(weights), framework="pt") as f:
        for raw_key in f.keys():
            key = raw_key.removeprefix("transformer.")
            if _BUFFERS.match(key):
                continue
            if key == "lm_head.weight":
                lm_head = f.get_tensor(raw_key)
                continue
            if key not in ours:
                raise ValueError(
                    f"{weights}: unexpected tensor {raw_key!r}; "
                    f"does config.json (n_layer={config.n_layer}) match the weights?"
                )
            tensor = f.get_tensor(raw_key)
            if _CONV1D.match(key):
                tensor = tensor.t()
            want = tuple(ours[key].shape)
            if tuple(tensor.shape) != want:
                layout = " (after transposing HF's Conv1D (in, out) layout)" if _CONV1D.match(key) else ""
                raise ValueError(
                    f"{weights}: tensor {raw_key!r} has shape {tuple(tensor.shape)}{layout}, expected {want}"
                )
            loaded[key] = tensor

    missing = [k for k in ours if k not in loaded]
    if missing:
        raise ValueError(
            f"{weights}: missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; is this a complete GPT-2 checkpoint?"
        )
    wte = loaded["wte.weight"]
    if lm_head is not None and (lm_head.shape != wte.shape or not torch.equal(lm_head, wte)):
        raise ValueError(
            f"{weights}: lm_head.weight differs from wte.weight; rlfl's GPT ties them and cannot load an untied head"
        )

    with torch.no_grad():
        for key, tensor in loaded.items():
            ours[key].copy_(tensor)  # state_dict tensors share storage with the parameters
    log.info("loaded GPT-2 weights from %s (%d layers, %d dims, %.1fM parameters)",
             directory, config.n_layer, config.n_embd, model.num_params(non_embedding=False) / 1e6)
    return model

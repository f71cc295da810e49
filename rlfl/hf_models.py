"""Hugging Face model folders (GPT-2, Llama, Qwen2, Qwen2.5, Qwen3, SmolLM2) to and from rlfl's one GPT class.

A folder holds ``config.json`` and ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``).
The config becomes a `GPTConfig` with the architecture options the family needs; the weights are renamed
into rlfl's names (q, k, v concatenated into the fused ``c_attn``, SwiGLU's gate and up into ``c_fc``,
GPT-2's Conv1D matrices transposed). Export runs the same table backwards. Safetensors only: a folder with
just ``pytorch_model.bin`` (a pickle, which can run code when loaded) is refused.

``load_checkpoint("hf:PATH")`` (rlfl.checkpoint) wraps `load_hf_parts`: the model with the folder's
``tokenizer.json``, so every stage's ``--init-from hf:PATH`` starts from a Hugging Face folder. `save_hf_model`
writes the model files back; `rlfl.export.export_hf` (``rlfl export CKPT --format hf --out DIR``) adds the
tokenizer, so any dense rlfl checkpoint becomes a folder `transformers` opens.

Example:
    >>> model = load_hf_model("models/SmolLM2-135M")          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rlfl.config import is_int
from rlfl.files import atomic_write_text, read_json
from rlfl.model import GPT, GPTConfig

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
FAMILIES = ("gpt2", "llama", "qwen2", "qwen3")  # SmolLM2 and Qwen2.5 folders say "llama" / "qwen2"

# HF activation names that all mean GPT-2's tanh approximation of GELU.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# GPT-2 weights whose HF Conv1D layout is (in, out): transposed into nn.Linear's (out, in).
_CONV1D = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# Tensors some folders store that are buffers, not weights.
_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$|(^|\.)rotary_emb\.inv_freq$")
# rlfl name inside block i -> the HF Llama-family names (under model.layers.i.) it is the concatenation of.
_LLAMA_LAYER = {
    "ln_1.weight": ("input_layernorm.weight",),
    "ln_2.weight": ("post_attention_layernorm.weight",),
    "attn.q_norm.weight": ("self_attn.q_norm.weight",),
    "attn.k_norm.weight": ("self_attn.k_norm.weight",),
    "attn.c_proj.weight": ("self_attn.o_proj.weight",),
    "attn.c_proj.bias": ("self_attn.o_proj.bias",),
    "mlp.c_proj.weight": ("mlp.down_proj.weight",),
    "mlp.c_proj.bias": ("mlp.down_proj.bias",),
    **{f"attn.c_attn.{p}": tuple(f"self_attn.{x}_proj.{p}" for x in "qkv") for p in ("weight", "bias")},
    **{f"mlp.c_fc.{p}": (f"mlp.gate_proj.{p}", f"mlp.up_proj.{p}") for p in ("weight", "bias")},
}
_LLAMA_TOP = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}
_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}


# ---------------------------------------------------------------------------------------------- configs
def _need(hf: Mapping[str, Any], where: Path, *keys: str) -> list[Any]:
    missing = [k for k in keys if hf.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; is this a complete config.json?")
    return [hf[k] for k in keys]


def _rope(hf: Mapping[str, Any], where: Path) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) of a config in either layout: transformers 5's ``rope_parameters`` or the
    older top-level ``rope_theta`` + ``rope_scaling``."""
    field_name, params = "rope_parameters", hf.get("rope_parameters")
    if not isinstance(params, Mapping):
        field_name, params = "rope_scaling", hf.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: {field_name}={params!r} is not an object; use null or e.g. "
                         '{"rope_type": "linear", "factor": 2.0}')
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(f"{where}: partial_rotary_factor != 1 is not supported; rlfl rotates every head dimension")
    if kind == "default":
        return theta, None
    keys = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    if kind not in keys:
        raise ValueError(f"{where}: {field_name} rope_type {kind!r} is not supported; rlfl runs 'default', "
                         "'linear' and 'llama3'")
    return theta, {"rope_type": kind, **{k: params[k] for k in keys[kind] if k in params}}


def _sliding_window_in_use(hf: Mapping[str, Any], n_layer: int, block_size: int) -> bool:
    window = hf.get("sliding_window")
    if window is None or (is_int(window) and window >= block_size):
        return False  # no window, or one no sequence can exceed
    layer_types = hf.get("layer_types")
    if isinstance(layer_types, list):
        return any(t != "full_attention" for t in layer_types)
    return bool(hf.get("use_sliding_window")) and hf.get("max_window_layers", 0) < n_layer


def _gpt2_config(hf: Mapping[str, Any], where: Path, dropout: float) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise ValueError(f"{where}: activation_function {act!r} is not supported; rlfl's GPT-2 MLP uses tanh-GELU "
                         f"({', '.join(_TANH_GELUS)})")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{where}: scale_attn_by_inverse_layer_idx=true is not supported by rlfl's GPT")
    if not hf.get("scale_attn_weights", True):
        raise ValueError(f"{where}: scale_attn_weights=false is not supported by rlfl's GPT")
    if hf.get("add_cross_attention", False):
        raise ValueError(f"{where}: add_cross_attention=true (an encoder-decoder GPT-2) is not supported")
    block_size = hf.get("n_positions", hf.get("n_ctx"))
    if block_size is None:
        raise ValueError(f"{where}: missing field(s) n_positions; is this a GPT-2 config.json?")
    n_embd, n_layer, n_head, vocab = _need(hf, where, "n_embd", "n_layer", "n_head", "vocab_size")
    n_inner = hf.get("n_inner")
    return GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     dropout=dropout, bias=True, layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                     intermediate_size=None if n_inner in (None, 4 * n_embd) else n_inner,
                     tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _llama_config(hf: Mapping[str, Any], where: Path, family: str, dropout: float) -> GPTConfig:
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{where}: hidden_act {act!r} is not supported for {family}; rlfl's SwiGLU MLP uses silu")
    n_embd, n_layer, n_head, vocab, width, block_size = _need(
        hf, where, "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
        "max_position_embeddings")
    if _sliding_window_in_use(hf, n_layer, block_size):
        raise ValueError(f"{where}: sliding_window={hf.get('sliding_window')} is in use (use_sliding_window / "
                         "layer_types); rlfl attends over the full context and cannot run sliding-window layers")
    theta, scaling = _rope(hf, where)
    kv = hf.get("num_key_value_heads") or n_head
    head = hf.get("head_dim")
    attention_bias = bool(hf.get("attention_bias", False))
    qkv_bias, proj_bias = (True, False) if family == "qwen2" else (attention_bias, attention_bias)
    return GPTConfig(
        vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout,
        bias=False, layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), position_embedding="rope",
        rope_theta=float(theta), rope_scaling=scaling, norm="rmsnorm", mlp="swiglu", intermediate_size=width,
        n_kv_head=None if kv == n_head else kv,
        head_size=None if head is None or (n_embd % n_head == 0 and head == n_embd // n_head) else head,
        qkv_bias=qkv_bias or None, attn_proj_bias=proj_bias or None,
        mlp_bias=bool(hf.get("mlp_bias", False)) or None, qk_norm=family == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def config_from_hf(hf: Mapping[str, Any], *, where: str | Path = "config.json", dropout: float = 0.0,
                   model_type: str | None = None) -> tuple[GPTConfig, str]:
    """A Hugging Face ``config.json`` (as a dict) -> (GPTConfig, model_type); ValueError naming the field otherwise.

    ``model_type`` requires that family (and assumes it when the config names none, as early GPT-2 files do).

    Example:
        >>> cfg, kind = config_from_hf({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
        ...     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128,
        ...     "max_position_embeddings": 256, "tie_word_embeddings": True})
        >>> kind, cfg.n_kv_head, cfg.qkv_bias, cfg.mlp, cfg.position_embedding
        ('qwen2', 2, True, 'swiglu', 'rope')
    """
    where = Path(where)
    family = hf.get("model_type", model_type)
    if model_type is not None and family != model_type:
        raise ValueError(f"{where}: model_type is {family!r}; only {model_type!r} checkpoints can be loaded here")
    if family not in FAMILIES:
        raise ValueError(f"{where}: model_type {family!r} is not supported; rlfl loads {', '.join(FAMILIES)} "
                         "(SmolLM2 and Qwen2.5 folders are llama and qwen2)")
    try:
        if family == "gpt2":
            return _gpt2_config(hf, where, dropout), family
        return _llama_config(hf, where, family, dropout), family
    except ValueError as err:
        if str(err).startswith(str(where)):
            raise
        raise ValueError(f"{where}: {err}") from None


def model_type_of(config: GPTConfig) -> str:
    """The Hugging Face model_type that runs ``config`` exactly; ValueError naming the option that has none.

    gpt2: learned positions, LayerNorm, GELU MLP, plain multi-head attention. Rotary + RMSNorm + SwiGLU models
    are qwen3 with per-head q/k norm, qwen2 with biases on q, k, v only, llama otherwise.
    """
    if config.n_experts:
        raise ValueError(f"n_experts={config.n_experts}: mixture-of-experts models have no Hugging Face equivalent "
                         "in the supported families (gpt2, llama, qwen2, qwen3); export a dense model")
    if config.position_embedding == "learned":
        checks = (("norm", config.norm, config.norm == "layernorm"), ("mlp", config.mlp, config.mlp == "gelu"),
                  ("n_kv_head", config.n_kv_head, config.kv_heads == config.n_head),
                  ("qk_norm", config.qk_norm, not config.qk_norm),
                  ("head_size", config.head_size, config.head_dim * config.n_head == config.n_embd))
        for name, value, fine in checks:
            if not fine:
                raise ValueError(f"{name}={value!r} with learned positions has no Hugging Face equivalent (GPT-2 is "
                                 "LayerNorm, GELU, multi-head); only gpt2-style or llama/qwen-style models export")
        return "gpt2"
    if config.norm != "rmsnorm" or config.mlp != "swiglu":
        field_name, value = ("norm", config.norm) if config.norm != "rmsnorm" else ("mlp", config.mlp)
        raise ValueError(f"{field_name}={value!r} with rotary positions has no Hugging Face equivalent (Llama / Qwen "
                         "use rmsnorm and swiglu)")
    qkv, proj, mlp = (config.bias_of(n) for n in ("qkv_bias", "attn_proj_bias", "mlp_bias"))
    if config.qk_norm:
        if qkv != proj or mlp:
            raise ValueError("qk_norm models export as qwen3, which has one attention_bias for q, k, v and the output "
                             f"projection and no MLP bias; got qkv_bias={qkv}, attn_proj_bias={proj}, mlp_bias={mlp}")
        return "qwen3"
    if qkv and not proj and not mlp:
        return "qwen2"
    if qkv != proj:
        raise ValueError(f"qkv_bias={qkv} with attn_proj_bias={proj} has no Hugging Face equivalent (llama has one "
                         "attention_bias; qwen2 biases q, k, v only, with no MLP bias)")
    return "llama"


def config_to_hf(config: GPTConfig, model_type: str | None = None) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of ``config`` (model_type chosen by `model_type_of` unless given)."""
    kind = model_type or model_type_of(config)
    out: dict[str, Any] = {"architectures": [_ARCHITECTURES[kind]], "model_type": kind,
                           "vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings,
                           "torch_dtype": "float32"}
    if kind == "gpt2":
        return {**out, "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
                "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.intermediate_size,
                "activation_function": "gelu_new", "layer_norm_epsilon": config.layer_norm_eps,
                "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
                "scale_attn_weights": True}
    out.update(hidden_size=config.n_embd, intermediate_size=config.mlp_width, num_hidden_layers=config.n_layer,
               num_attention_heads=config.n_head, num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
               max_position_embeddings=config.block_size, rms_norm_eps=config.layer_norm_eps, hidden_act="silu",
               rope_theta=config.rope_theta, rope_scaling=config.rope_scaling, attention_dropout=config.dropout)
    if kind == "llama":
        out.update(attention_bias=config.bias_of("qkv_bias"), mlp_bias=config.bias_of("mlp_bias"))
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
        if kind == "qwen3":
            out["attention_bias"] = config.bias_of("qkv_bias")
    return out


# ---------------------------------------------------------------------------------------------- weight names
@dataclasses.dataclass(frozen=True)
class _Rule:
    """One rlfl tensor and the HF tensors it is (concatenated along dim 0; transposed for GPT-2's Conv1D)."""

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...]
    transpose: bool = False


def _rules(config: GPTConfig, family: str, shapes: Mapping[str, torch.Size]) -> list[_Rule]:
    """The name table for every tensor of a GPT with ``config`` (``shapes``: its state dict's shapes)."""
    q, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    rules = []
    for key, shape in shapes.items():
        if key == "lm_head.weight" and config.tie_embeddings:
            continue
        if family == "gpt2":
            conv = bool(_CONV1D.match(key))
            rules.append(_Rule(key, (key,), (shape[0],), conv))
            continue
        m = re.match(r"h\.(\d+)\.(.+)$", key)
        if m is None:
            rules.append(_Rule(key, (_LLAMA_TOP[key],), (shape[0],)))
            continue
        names = tuple(f"model.layers.{m[1]}.{n}" for n in _LLAMA_LAYER[m[2]])
        sizes = (q, kv, kv) if m[2].startswith("attn.c_attn") else (shape[0] // len(names),) * len(names)
        rules.append(_Rule(key, names, sizes))
    return rules


def _meta_model(config: GPTConfig) -> GPT:
    """A GPT whose tensors have no storage: the shapes and names, at no cost."""
    with torch.device("meta"):
        return GPT(config)


# ---------------------------------------------------------------------------------------------- loading
class _Weights(contextlib.ExitStack):
    """The tensors of a folder's safetensors file(s), by name, opened lazily; refuses pickles."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        single, index = folder / WEIGHTS, folder / INDEX
        if single.is_file():
            files = {WEIGHTS: None}
            self.where = single
        elif index.is_file():
            weight_map = read_json(index, fix="re-save the folder with save_pretrained").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no 'weight_map' object; re-save the folder with save_pretrained")
            files = {name: None for name in weight_map.values()}
            self.where = index
        else:
            pickles = [p.name for p in sorted(folder.glob("pytorch_model*.bin"))]
            hint = (f" (found {pickles[0]}, which is a pickle we do not load; convert it to safetensors, e.g. "
                    "load it once with transformers and save_pretrained(..., safe_serialization=True))"
                    if pickles else "")
            raise FileNotFoundError(f"{single}: no such file{hint}")
        self.names: dict[str, tuple[str, str]] = {}  # key in a file -> (file, key)
        self._handles: dict[str, Any] = {}
        try:
            for name in files:
                self._open(name)
        except BaseException:
            self.close()
            raise

    def _open(self, name: str) -> None:
        path = (self.folder / name).resolve()
        if path.parent != self.folder.resolve() or not path.is_file():
            raise FileNotFoundError(f"{self.where}: shard {name!r} is not a file in {self.folder}")
        try:
            handle = self.enter_context(safe_open(str(path), framework="pt"))
            keys = list(handle.keys())
        except Exception as exc:  # safetensors' own error types: a truncated or foreign file
            raise ValueError(f"{path}: not a readable safetensors file ({str(exc).strip()[:160]}); re-download or "
                             "re-save the folder") from None
        self._handles[name] = handle
        self.names.update({key: (name, key) for key in keys})

    def get(self, where: tuple[str, str]) -> torch.Tensor:
        """The tensor at (file, key) of `names`."""
        file, key = where
        return self._handles[file].get_tensor(key)


def _normalise(names: dict[str, tuple[str, str]], family: str) -> dict[str, tuple[str, str]]:
    """File names as the rules spell them: GPT-2 without ``transformer.``, Llama-family with ``model.``."""
    if family == "gpt2":
        return {k.removeprefix("transformer."): v for k, v in names.items()}
    return {k if k.startswith("model.") or k.startswith("lm_head.") else f"model.{k}": v for k, v in names.items()}


def load_hf_model(path: str | os.PathLike, *, dropout: float = 0.0, model_type: str | None = None) -> GPT:
    """Build a GPT from a local Hugging Face folder (config.json + safetensors) of a supported family.

    ``dropout`` is the new model's dropout; ``model_type`` restricts the folder to one family. Every
    parameter must be found with the right shape and every tensor in the files must be used (buffers
    aside): a folder whose weights disagree with its config.json is an error, never a silent truncation.
    The model is float32, in eval mode, on the CPU.

    Example:
        >>> model = load_hf_model("models/Qwen2.5-0.5B")      # doctest: +SKIP
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such directory; pass a folder holding config.json and "
                                "model.safetensors")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file; a Hugging Face model folder needs config.json and "
                                "model.safetensors")
    return _load(folder, dropout, model_type)[0]


def _load(folder: Path, dropout: float = 0.0, model_type: str | None = None) -> tuple[GPT, str]:
    config_path = folder / "config.json"
    hf = read_json(config_path, fix="fix or re-download it")
    config, family = config_from_hf(hf, where=config_path, dropout=dropout, model_type=model_type)
    with _Weights(folder) as weights:
        model = _fill(config, family, weights)
    log.info("loaded %s weights from %s (%d layers, %d dims, %.1fM parameters)", family, folder, config.n_layer,
             config.n_embd, model.num_params(non_embedding=False) / 1e6)
    return model.eval(), family


def _fill(config: GPTConfig, family: str, weights: _Weights) -> GPT:
    """A GPT with ``config`` holding the folder's tensors (built on the meta device: no random init to undo)."""
    model = _meta_model(config).to_empty(device="cpu")
    model.tie_weights()  # to_empty gives each module its own storage
    if model.rotary is not None:
        model.rotary.reset()
    ours = model.state_dict()
    available = _normalise(weights.names, family)
    used: set[str] = set()
    where = weights.where
    with torch.no_grad():
        for rule in _rules(config, family, {k: v.shape for k, v in ours.items()}):
            want = ours[rule.ours].split(list(rule.sizes), dim=0)
            parts = []
            for name, target in zip(rule.theirs, want):
                if name not in available:
                    raise ValueError(f"{where}: missing tensor {name!r}; is this a complete {family} checkpoint, and "
                                     "does config.json match it?")
                tensor = weights.get(available[name])
                used.add(name)
                if rule.transpose:
                    tensor = tensor.t()
                if tuple(tensor.shape) != tuple(target.shape):
                    layout = " (after transposing HF's Conv1D (in, out) layout)" if rule.transpose else ""
                    raise ValueError(f"{where}: tensor {available[name][1]!r} has shape {tuple(tensor.shape)}{layout}, "
                                     f"expected {tuple(target.shape)}")
                parts.append(tensor)
            ours[rule.ours].copy_(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
        if config.tie_embeddings and "lm_head.weight" in available:
            used.add("lm_head.weight")
            if not torch.equal(weights.get(available["lm_head.weight"]).to(model.wte.weight.dtype), model.wte.weight):
                raise ValueError(f"{where}: lm_head.weight differs from wte.weight but config.json ties them "
                                 "(tie_word_embeddings); rlfl's GPT cannot load this head as a tied one")
    extra = sorted(k for k in available if k not in used and not _BUFFERS.search(k))
    if extra:
        raise ValueError(f"{where}: unexpected tensor {available[extra[0]][1]!r}"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                         + f"; does config.json (n_layer={config.n_layer}) match the weights?")
    return model


def _trim_vocab(model: GPT, n_vocab: int) -> None:
    """Keep the first ``n_vocab`` rows of the token embedding (and of an untied LM head)."""
    with torch.no_grad():
        wte = nn.Embedding(n_vocab, model.config.n_embd)
        wte.weight.copy_(model.wte.weight[:n_vocab])
        head = nn.Linear(model.config.n_embd, n_vocab, bias=False)
        head.weight.copy_(model.lm_head.weight[:n_vocab])
    model.wte, model.lm_head = wte, head
    model.config.vocab_size = n_vocab
    model.tie_weights()


def hf_folder(spec: str | os.PathLike) -> Path | None:
    """The folder of an ``hf:PATH`` spec, or None when ``spec`` is not one."""
    text = os.fspath(spec)
    return Path(text[len(HF_PREFIX):]).expanduser() if text.startswith(HF_PREFIX) else None


def _checkpoint_config(folder: Path, tokenizer: Any, config: GPTConfig, model_type: str) -> dict[str, Any]:
    """The rlfl checkpoint config (as in a checkpoint's config.json) that describes a Hugging Face folder."""
    return {"format_version": 1, "stage": "hf", "step": 0, "model": config.to_dict(),
            "tokenizer": {"kind": tokenizer.kind, "name": tokenizer.name, "n_vocab": tokenizer.n_vocab,
                          "fingerprint": tokenizer.fingerprint},
            "train": {}, "parent": None, "hf": {"path": str(folder.resolve()), "model_type": model_type}}


def _folder_tokenizer(folder: Path) -> Any:
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder / 'tokenizer.json'}: no such file; an hf: checkpoint needs the folder's "
                                "tokenizer.json (save it with the tokenizer's save_pretrained)")
    from rlfl.hf_tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(folder)


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The rlfl checkpoint config of a Hugging Face folder without loading its weights."""
    config_path = folder / "config.json"
    hf = read_json(config_path, fix="pass a Hugging Face model folder (config.json + model.safetensors)")
    config, family = config_from_hf(hf, where=config_path)
    tokenizer = _folder_tokenizer(folder)
    config = dataclasses.replace(config, vocab_size=_vocab_rows(folder, tokenizer, config))
    return _checkpoint_config(folder, tokenizer, config, family)


def _vocab_rows(folder: Path, tokenizer: Any, config: GPTConfig) -> int:
    """The embedding rows an hf: checkpoint keeps: one per tokenizer id (see `load_hf_checkpoint`)."""
    if tokenizer.n_vocab > config.vocab_size:
        raise ValueError(f"{folder}: tokenizer.json has {tokenizer.n_vocab} tokens but the model only "
                         f"{config.vocab_size} embeddings; the folder's tokenizer and weights do not belong together")
    return tokenizer.n_vocab


def load_hf_parts(folder: str | os.PathLike) -> tuple[GPT, Any, dict[str, Any]]:
    """The model, tokenizer (from tokenizer.json) and rlfl checkpoint config of a Hugging Face folder, on the CPU:
    what ``rlfl.checkpoint.load_checkpoint("hf:PATH")`` wraps into a `Checkpoint`.

    rlfl's model has one embedding row per token id (`Tokenizer.n_vocab`; the RL envs' action space is that
    vocabulary). Many folders pad the embedding beyond the tokenizer (Qwen2.5: 151,936 rows for 151,665
    ids); those rows belong to no token, so they are dropped here and the model never emits an id its
    tokenizer cannot decode. The logits of every real token are unchanged.
    """
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder / 'config.json'}: no such file; hf:PATH must name a Hugging Face model "
                                "folder (config.json, model.safetensors, tokenizer.json)")
    model, family = _load(folder)
    tokenizer = _folder_tokenizer(folder)
    rows = _vocab_rows(folder, tokenizer, model.config)
    if rows < model.config.vocab_size:
        log.info("%s: dropping %d embedding rows beyond the tokenizer's %d ids", folder,
                 model.config.vocab_size - rows, rows)
        _trim_vocab(model, rows)
    return model, tokenizer, _checkpoint_config(folder, tokenizer, model.config, family)


# ---------------------------------------------------------------------------------------------- export
def _plain_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The model's tensors under the plain architecture's names: exactly what the exported files hold.

    This is the one place where extra structure is folded away before export: a model carrying LoRA
    adapters is copied and the copy's adapters merged into its base weights (``rlfl.lora.merge_lora``), so
    the caller's model keeps them. A tensor the plain architecture still has no place for is refused
    rather than dropped.
    """
    expected = set(_meta_model(model.config).state_dict())
    state = model.state_dict()
    if set(state) - expected:
        from rlfl.lora import merge_lora

        state = merge_lora(copy.deepcopy(model)).state_dict()
    extra = sorted(set(state) - expected)
    if extra:
        raise ValueError(f"the model holds {len(extra)} tensor(s) the {model_type_of(model.config)} format has no "
                         f"place for (e.g. {extra[0]!r}); merge adapters into the weights before exporting")
    return state


def hf_state_dict(model: GPT, model_type: str | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face names (float32, contiguous, on the CPU), ready for safetensors."""
    config = model.config
    family = model_type or model_type_of(config)
    ours = {k: v.detach().float().cpu() for k, v in _plain_weights(model).items()}
    if family == "gpt2":
        # HF's GPT-2 always has biases: a bias-free rlfl model exports zeros in their place (the same function)
        full = dataclasses.replace(config, bias=True, qkv_bias=None, attn_proj_bias=None, mlp_bias=None)
        shapes = {k: v.shape for k, v in _meta_model(full).state_dict().items()}
        ours.update({k: torch.zeros(s) for k, s in shapes.items() if k not in ours})
        config = full
    else:
        shapes = {k: v.shape for k, v in ours.items()}
    prefix = "transformer." if family == "gpt2" else ""  # GPT2LMHeadModel's names; lm_head sits outside
    out = {}
    for rule in _rules(config, family, shapes):
        for name, part in zip(rule.theirs, ours[rule.ours].split(list(rule.sizes), dim=0)):
            key = name if name == "lm_head.weight" else prefix + name
            out[key] = (part.t() if rule.transpose else part).contiguous()
    return out


def save_hf_model(model: GPT, folder: str | os.PathLike, *, generation: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` as Hugging Face model files into ``folder``: config.json and model.safetensors (float32),
    plus generation_config.json when ``generation`` is given (its token ids also go into config.json).
    Returns the model_type. No tokenizer, and file by file: `export_hf` writes a whole folder atomically.

    Example:
        >>> save_hf_model(GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)),
        ...               tempfile.mkdtemp())
        'gpt2'
    """
    folder = Path(folder)
    family = model_type_of(model.config)
    weights = hf_state_dict(model, family)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(weights, tmp, metadata={"format": "pt"})
        os.replace(tmp, folder / WEIGHTS)
    finally:
        Path(tmp).unlink(missing_ok=True)
    hf_config = config_to_hf(model.config, family)
    if generation is not None:
        hf_config.update({k: v for k, v in generation.items() if k != "_from_model_config"})
        atomic_write_text(folder / "generation_config.json", json.dumps(dict(generation), indent=2) + "\n")
    atomic_write_text(folder / "config.json", json.dumps(hf_config, indent=2) + "\n")
    return family

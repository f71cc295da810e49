"""LoRA adapters: train a low-rank update of chosen Linear layers while the base weights stay frozen.

A LoRA layer computes ``x W^T + b + (alpha / r) * dropout(x) A^T B^T`` with the base ``W``, ``b`` frozen and
only ``A`` (r x in, random) and ``B`` (out x r, zeros) trained. ``B`` starts at zero, so an adapted model is
exactly its base until the first step; switching the adapters off (`adapters_disabled`) gives the base back
exactly at any time, which is what lets PPO and DPO use the frozen base as their reference with no second
copy of the weights; `merge_lora` folds ``W + (alpha / r) B A`` into plain Linear layers for export.

Which layers get adapters is a list of name patterns over the model's ``nn.Linear`` layers (`select_layers`),
so it does not depend on one architecture's module names: a pattern names a layer or a module holding layers,
by its full dotted name or any dotted run of it, with ``*`` and ``?`` wildcards. The default ``attn`` is
every Linear layer inside an attention block (``c_attn`` and ``c_proj`` of the GPT-2 layout, or separate
``q_proj``/``k_proj``/``v_proj`` projections); ``c_attn``, ``mlp.c_fc``, ``q_proj``, ``h.0.*`` are others.

Every fine-tuning stage reads the same `LoRASettings` (``--lora-rank``, ``--lora-alpha``, ``--lora-dropout``,
``--lora-target-modules``); rank 0, the default, leaves the stage exactly as it was without LoRA. A LoRA
stage's checkpoint is a normal checkpoint that records the settings under ``"lora"`` in config.json and
stores ``lora_A``/``lora_B`` beside the base weights; `rlfl.checkpoint.load_checkpoint` rebuilds the
adapted model from it.

Example:
    >>> import torch
    >>> from rlfl.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> x = torch.randint(0, 64, (2, 8))
    >>> base = model(x)
    >>> model = apply_lora(model, LoRASettings(lora_rank=4), seed=0)
    >>> torch.equal(model(x), base)   # B starts at zero: the adapted model is its base
    True
    >>> sorted({n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad})
    ['lora_A', 'lora_B']
    >>> with torch.no_grad():
    ...     _ = model.h[0].attn.c_attn.lora_B.normal_()
    >>> bool((model(x) - base).abs().max() > 0)
    True
    >>> with adapters_disabled(model):
    ...     torch.equal(model(x), base)
    True
    >>> adapted = model(x)
    >>> bool((merge_lora(model)(x) - adapted).abs().max() < 1e-5)   # plain nn.Linear layers again
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlfl.model import trunk
from rlfl.config import is_int, is_number

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("attn",)


@dataclass
class LoRASettings:
    """LoRA adapters of a fine-tuning stage; ``lora_rank`` 0 (the default) is off: every weight trains as usual.

    Stage configs nest it (``SFTConfig.lora``) or inherit it (`rlfl.agents.settings.PPOSettings`), so every
    stage has the same ``--lora-*`` flags.

    >>> LoRASettings(lora_rank=8).lora_alpha / 8   # the adapters' scale alpha / rank
    2.0
    >>> LoRASettings(lora_rank=-1)
    Traceback (most recent call last):
    ...
    ValueError: LoRASettings.lora_rank=-1: must be an integer >= 0 (0 = LoRA off); fix --lora-rank
    """

    lora_rank: int = field(default=0, metadata={
        "help": "rank r of LoRA adapters on the --lora-target-modules layers; the rest of the model stays frozen "
                "(0 = off: every weight trains)"})
    lora_alpha: float = field(default=16.0, metadata={
        "help": "LoRA scale: an adapter adds (alpha / rank) * B @ A to its layer's weight"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "dropout on the adapters' input while training, in [0, 1) (PPO/GRPO/RLOO keep dropout off)"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={
        "help": "Linear layers that get adapters, as name patterns: a layer or a module holding layers, by a dotted "
                "run of its name, * and ? wildcards (attn: every attention projection; c_attn, mlp.c_fc, q_proj, "
                "h.0.*)"})

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {what}; fix "
                                 f"--{name.replace('_', '-')}")

        need(is_int(self.lora_rank) and self.lora_rank >= 0, "lora_rank", "must be an integer >= 0 (0 = LoRA off)")
        need(is_number(self.lora_alpha) and math.isfinite(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha",
             "must be a finite number > 0 (the adapters' scale is alpha / rank)")
        need(is_number(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        targets = self.lora_target_modules
        need(isinstance(targets, (list, tuple)) and all(isinstance(t, str) and t.strip() for t in targets),
             "lora_target_modules", "must be a list of layer name patterns (e.g. attn, or c_attn mlp.c_fc)")
        need(bool(targets) or self.lora_rank == 0, "lora_target_modules",
             "is empty, so no layer would get an adapter; name at least one (e.g. attn)")
        if self.lora_rank == 0:  # LoRA options without a rank: the user meant LoRA to be on
            for f in dataclasses.fields(LoRASettings):
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                if f.name != "lora_rank" and getattr(self, f.name) != default:
                    raise ValueError(f"{type(self).__name__}.{f.name}={getattr(self, f.name)!r} is set but lora_rank=0 "
                                     f"(LoRA off); pass --lora-rank 8 (or another rank >= 1) to train adapters, or "
                                     f"drop --{f.name.replace('_', '-')}")

    def lora_settings(self) -> LoRASettings:
        """These LoRA settings alone (of a stage's settings that inherit them)."""
        return LoRASettings(**{f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(LoRASettings)})

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "LoRA settings") -> LoRASettings:
        """Settings from a dict of their fields (a checkpoint's record), refusing unknown keys in one line."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: LoRA settings must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(LoRASettings)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{source}: unknown LoRA setting {unknown[0]!r}; known: {', '.join(names)}")
        return LoRASettings(**{k: _copy(v) for k, v in data.items()})


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------------------- the layer
class LoRALinear(nn.Linear):
    """A Linear layer plus a trainable low-rank update: ``x W^T + b + (alpha / rank) * dropout(x) A^T B^T``.

    It takes over the base layer's ``weight`` and ``bias`` parameters (the same tensors, not copies), so its
    state dict holds the base's keys unchanged plus ``lora_A`` and ``lora_B``. ``A`` starts random (Kaiming
    uniform, as nn.Linear's weights) and ``B`` at zero, so the layer starts as exactly its base.
    ``adapter_enabled = False`` (see `adapters_disabled`) makes the forward exactly nn.Linear's.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, *,
                 generator: torch.Generator | None = None) -> None:
        if not (is_int(rank) and rank >= 1):
            raise ValueError(f"a LoRA layer needs rank >= 1, got {rank!r}; fix --lora-rank")
        if not (is_number(alpha) and alpha > 0):
            raise ValueError(f"a LoRA layer needs alpha > 0, got {alpha!r}; fix --lora-alpha")
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.scaling = self.alpha / self.rank
        w = base.weight
        a = torch.empty(self.rank, self.in_features)  # initialised on the CPU, where the generator lives
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=w.device, dtype=w.dtype))
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapter_enabled:
            return out
        # the scale multiplies the rank-wide activations, the smallest tensor on the way
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_A) * self.scaling, self.lora_B)

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / rank) * B @ A``, summed in float64 and returned in the weight's dtype."""
        with torch.no_grad():
            delta = self.lora_B.double() @ self.lora_A.double()
            return (self.weight.double() + self.scaling * delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"rank={self.rank}, alpha={self.alpha:g}")


# ---------------------------------------------------------------------------------------------- choosing layers
def _runs(name: str) -> Iterator[str]:
    """Every dotted run of ``name``: ``h.0.attn`` gives h, h.0, h.0.attn, 0, 0.attn, attn."""
    parts = name.split(".")
    for start in range(len(parts)):
        for end in range(start + 1, len(parts) + 1):
            yield ".".join(parts[start:end])


def _pattern_matches(pattern: str, name: str) -> bool:
    return any(fnmatch.fnmatchcase(run, pattern) for run in _runs(name))


def _tied(model: nn.Module) -> set[str]:
    """Linear layers whose weight is also another module's parameter (the GPT's LM head is the token embedding)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and owners[id(m.weight)] > 1}


def _summary(names: list[str]) -> str:
    """Layer names with their layer/expert indices collapsed to * (``h.*.attn.c_attn``), in order, once each."""
    out: list[str] = []
    for n in names:
        short = re.sub(r"(^|(?<=\.))\d+(?=\.|$)", "*", n)
        if short not in out:
            out.append(short)
    return ", ".join(out)


def linear_layer_names(model: nn.Module) -> list[str]:
    """The names of the Linear layers of ``model`` that can take an adapter (tied layers cannot), in order."""
    tied = _tied(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in tied]


def select_layers(model: nn.Module, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """The Linear layers of ``model`` that ``patterns`` name, in module order; a pattern naming none is a ValueError.

    >>> from rlfl.model import GPT, GPTConfig
    >>> gpt = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> select_layers(gpt, ["attn"])
    ['h.0.attn.c_attn', 'h.0.attn.c_proj', 'h.1.attn.c_attn', 'h.1.attn.c_proj']
    >>> select_layers(gpt, ["mlp.c_fc", "h.1.attn.c_proj"])
    ['h.0.mlp.c_fc', 'h.1.attn.c_proj', 'h.1.mlp.c_fc']
    """
    available = linear_layer_names(model)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in available if _pattern_matches(pattern, n)}
        if not hits:
            tied = sorted(_tied(model))
            note = f" ({', '.join(tied)} shares its weight with another layer and takes no adapter)" if tied else ""
            raise ValueError(f"--lora-target-modules {pattern!r} matches no Linear layer of the model; its Linear "
                             f"layers are {_summary(available)}{note}; fix --lora-target-modules")
        chosen |= hits
    return [n for n in available if n in chosen]


# ---------------------------------------------------------------------------------------------- applying
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRA layers of ``model`` by name (relative to ``model``), in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    """True when ``model`` holds LoRA layers."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _inject(gpt: nn.Module, names: list[str], settings: LoRASettings, generator: torch.Generator | None) -> None:
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = gpt.get_submodule(parent_name) if parent_name else gpt
        base = getattr(parent, attr)
        setattr(parent, attr, LoRALinear(base, settings.lora_rank, settings.lora_alpha, settings.lora_dropout,
                                         generator=generator))
    gpt.requires_grad_(False)
    for layer in lora_layers(gpt).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    gpt._lora_settings = settings.lora_settings()  # what lora_record writes into a checkpoint's config.json


def apply_lora(model: nn.Module, settings: LoRASettings, *, seed: int | None = None) -> nn.Module:
    """Give ``model``'s GPT LoRA adapters as ``settings`` say and freeze the rest of the GPT, in place; returns it.

    ``model`` is an rlfl GPT or a module with a ``.gpt`` trunk (a reward model, PPO's policy network); only the
    trunk is adapted and frozen: parameters outside it (a reward model's scalar head, PPO's value head) keep
    their ``requires_grad``. ``lora_rank`` 0 returns ``model`` untouched. ``seed`` seeds the adapters' random
    ``A`` matrices with a generator of their own (None: torch's global RNG, as any layer's init).
    """
    if settings.lora_rank == 0:
        return model
    gpt = trunk(model)
    if has_lora(gpt):
        raise ValueError("the model has LoRA adapters already; merge them first (rlfl.lora.merge_lora) to stack new "
                         "ones")
    names = select_layers(gpt, settings.lora_target_modules)
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    _inject(gpt, names, settings, generator)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("LoRA rank %d, alpha %g on %d layers (%s): %s of %s parameters train (%.2f%%)", settings.lora_rank,
             settings.lora_alpha, len(names), _summary(names), f"{n_train:,}", f"{n_all:,}", 100 * n_train / n_all)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every LoRA layer of ``model`` computes its base layer exactly (nothing else changes).

    >>> from rlfl.model import GPT, GPTConfig
    >>> gpt = apply_lora(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)),
    ...                  LoRASettings(lora_rank=2))
    >>> with adapters_disabled(gpt):
    ...     gpt.h[0].attn.c_attn.adapter_enabled
    False
    >>> gpt.h[0].attn.c_attn.adapter_enabled
    True
    """
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    before = [m.adapter_enabled for m in layers]
    for m in layers:
        m.adapter_enabled = False
    try:
        yield model
    finally:
        for m, enabled in zip(layers, before):
            m.adapter_enabled = enabled


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + (alpha / rank) B @ A``) and make the layers plain
    ``nn.Linear`` again, in place; returns ``model``, every parameter of its GPT trainable again.

    The merged model's logits equal the adapted model's to float rounding (~1e-6); a model without adapters
    is returned untouched. Export a LoRA checkpoint as a plain one:
    ``save_checkpoint(out, merge_lora(load_checkpoint(path).model), tokenizer, stage=...)``.
    """
    gpt = trunk(model)
    layers = lora_layers(gpt)
    if not layers:
        return model
    for name, layer in layers.items():
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = nn.Parameter(layer.merged_weight())
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach())
        parent_name, _, attr = name.rpartition(".")
        setattr(gpt.get_submodule(parent_name) if parent_name else gpt, attr, plain)
    gpt.requires_grad_(True)
    gpt.__dict__.pop("_lora_settings", None)
    return model


# ---------------------------------------------------------------------------------------------- checkpoints
def lora_record(model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint's config.json records of ``model``'s adapters (None without any): the settings and the
    adapted layers' names, from which `apply_lora_record` rebuilds the same layers."""
    gpt = trunk(model)
    layers = lora_layers(gpt)
    if not layers:
        return None
    settings = getattr(gpt, "_lora_settings", None)
    if settings is None:  # adapters built by hand: their own figures
        first = next(iter(layers.values()))
        settings = LoRASettings(lora_rank=first.rank, lora_alpha=first.alpha, lora_dropout=first.dropout,
                                lora_target_modules=list(layers))
    return {**dataclasses.asdict(settings), "layers": list(layers)}


def describe_lora(record: dict[str, Any] | None) -> str:
    """A short description of a `lora_record` for messages.

    >>> describe_lora(None), describe_lora({"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
    ...                                     "lora_target_modules": ["attn"], "layers": ["h.0.attn.c_attn"]})
    ('off', 'rank 8, alpha 16, dropout 0 on attn (1 layers)')
    """
    if not record:
        return "off"
    targets = " ".join(str(t) for t in record.get("lora_target_modules", []))
    return (f"rank {record.get('lora_rank')}, alpha {record.get('lora_alpha'):g}, dropout {record.get('lora_dropout'):g} "
            f"on {targets} ({len(record.get('layers', []))} layers)")


def apply_lora_record(model: nn.Module, record: Any, *, source: str = "config.json") -> nn.Module:
    """Rebuild the adapters a checkpoint recorded (`lora_record`) on ``model`` (before its weights are loaded)."""
    bad = f"{source}: its 'lora' record is not one rlfl writes; the checkpoint is corrupt: rerun the stage that wrote it"
    if not isinstance(record, dict) or not isinstance(record.get("layers"), list):
        raise ValueError(bad)
    try:
        settings = LoRASettings.from_dict({k: v for k, v in record.items() if k != "layers"}, source=source)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{bad} ({exc})") from None
    gpt = trunk(model)
    available = set(linear_layer_names(gpt))
    names = record["layers"]
    missing = [n for n in names if n not in available]
    if missing or not names or settings.lora_rank == 0:
        raise ValueError(f"{bad} (layer {missing[0] if missing else None!r} of {len(names)}, rank "
                         f"{settings.lora_rank})")
    _inject(gpt, [n for n in linear_layer_names(gpt) if n in set(names)], settings, None)
    return model


# ---------------------------------------------------------------------------------------------- the frozen base
class FrozenBase(nn.Module):
    """A LoRA model's frozen base as a model of its own that shares the weights: a reference with no copy.

    Its ``forward``, ``hidden_states`` and ``lm_head`` run the wrapped GPT in eval mode with every adapter
    switched off, so they compute the base exactly. The GPT is held, not registered as a submodule: the view
    adds nothing to a parent's ``state_dict`` or ``parameters()``, and ``.eval()``/``.requires_grad_()`` on the
    view never reach the adapters being trained. Its own ``parameters()`` are the base weights (frozen).

    >>> from rlfl.model import GPT, GPTConfig
    >>> gpt = apply_lora(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)),
    ...                  LoRASettings(lora_rank=2))
    >>> ref = FrozenBase(gpt)
    >>> ref.state_dict() == {} and ref.model is gpt and ref.config is gpt.config
    True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["model"] = model  # not a submodule (see the class docstring)

    @property
    def config(self) -> Any:
        return self.model.config

    @contextlib.contextmanager
    def _base(self) -> Iterator[None]:
        training = [m for m in self.model.modules() if m.training]
        for m in training:  # eval mode for this forward only: no dropout in the reference
            m.training = False
        try:
            with adapters_disabled(self.model):
                yield
        finally:
            for m in training:
                m.training = True

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._base():
            return self.model(*args, **kwargs)

    def hidden_states(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._base():
            return self.model.hidden_states(*args, **kwargs)

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._base():
            return self.model.lm_head(hidden)

    @property
    def lm_head(self) -> Any:
        return self._lm_head

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The base weights the view reads (never the adapters)."""
        for name, p in self.model.named_parameters():
            if not name.endswith(("lora_A", "lora_B")):
                yield p

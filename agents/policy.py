"""`TransformerPolicy`: an rlfl GPT checkpoint as a stable-baselines3 actor-critic policy.

The actor is the language model itself: the observation is a left-padded window of token ids (the env's
``input_ids`` and ``attention_mask``), the trunk reads it, and the LM head's logits at the last position
are the action logits over the whole vocabulary. The critic is a linear value head on the same final
hidden state (one shared trunk: one forward gives both, and the value learns from features the policy
already has). A frozen copy of the starting weights is kept as the **reference** policy for the KL
penalty; it is part of the policy's state (so it is saved and restored with it) but has no gradient and no
optimizer state, so its weights never move.

With LoRA (policy_kwargs ``lora={"lora_rank": 8, ...}``, `rlfl.lora`) the GPT's weights are frozen and only its
adapters and the value head train, so the starting weights never move: the reference is then the policy's own
GPT with its adapters switched off (`rlfl.lora.FrozenBase`), one copy of the weights instead of two.

This class is all SB3 needs: ``stable_baselines3.PPO(TransformerPolicy, env, policy_kwargs={"checkpoint":
"runs/sft"})`` and ``A2C`` train with it as is (one full forward of the window per env step: correct,
and slow). `rlfl.agents.PPO` uses the same policy through its batched paths: `sequence_outputs` (one
forward per whole completion) and `rlfl.agents.rollout.CachedActor` (KV-cached decoding).

Dropout stays off in every mode: PPO's probability ratios and the KL to the reference compare forwards
of the same weights, and dropout noise would make both lie.

Example:
    >>> import gymnasium, rlfl.envs, tempfile
    >>> from rlfl.checkpoint import save_checkpoint
    >>> from rlfl.model import GPT, GPTConfig
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> env = gymnasium.make("rlfl/SyntheticReviews-v0")   # byte-level tokens, observations of 80
    >>> tok, d = byte_tokenizer(), tempfile.mkdtemp()
    >>> tiny = GPTConfig(vocab_size=tok.n_vocab, block_size=96, n_layer=1, n_head=2, n_embd=32)
    >>> save_checkpoint(d, GPT(tiny), tok, stage="sft")
    >>> policy = TransformerPolicy(env.observation_space, env.action_space, lambda _: 1e-5, checkpoint=d)
    >>> obs, _ = env.reset(seed=0)
    >>> action, _ = policy.predict(obs)
    >>> 0 <= int(action) < tok.n_vocab
    True
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from rlfl.checkpoint import load_checkpoint
from rlfl.generate import ban_stop_tokens
from rlfl.lora import FrozenBase, LoRASettings, apply_lora, merge_lora
from rlfl.model import GPT, GPTConfig

logger = logging.getLogger(__name__)


class ValueHead(nn.Module):
    """A scalar value per position from the trunk's final hidden state (zero-initialised: V starts at 0)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).squeeze(-1)


class PolicyNetwork(nn.Module):
    """The GPT trunk plus the value head: the module stored in an rlfl checkpoint (``heads.value.*``)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.value = ValueHead(gpt.config.n_embd)


def _to_tokens(obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The observation dict (SB3 may hand it over as floats) as int64 ids and a bool mask, batched."""
    ids, mask = obs["input_ids"], obs["attention_mask"]
    if ids.dim() == 1:
        ids, mask = ids[None], mask[None]
    return ids.long(), mask.bool()


class TransformerPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy whose actor is an rlfl GPT (LM head = action logits) plus a value head.

    policy_kwargs:
        checkpoint: an rlfl checkpoint directory (any stage). A PPO checkpoint's value head is restored too.
        reference_checkpoint: the KL reference (default: the starting weights of ``checkpoint``).
        gpt_config: instead of a checkpoint, the architecture alone (a `GPTConfig` dict); the weights come
            from ``set_parameters`` / ``PPO.load``. This is what a saved PPO zip records.
        lora: LoRA adapters as a dict of `rlfl.lora.LoRASettings` fields (default: none, every weight trains).
            A LoRA checkpoint given as ``checkpoint`` starts as its merged weights either way.
        shared_reference: whether the reference is the policy's own frozen base with its adapters switched off
            (default: with ``lora`` and no ``reference_checkpoint``); a saved policy records it.
        optimizer_class / optimizer_kwargs: default AdamW (fused kernel) with eps 1e-5 and no weight decay.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        *,
        checkpoint: str | Path | None = None,
        reference_checkpoint: str | Path | None = None,
        gpt_config: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        shared_reference: bool | None = None,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (checkpoint is None) == (gpt_config is None):
            raise ValueError("TransformerPolicy needs exactly one of policy_kwargs checkpoint='path/to/checkpoint' "
                             "or gpt_config={...}")
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"TransformerPolicy acts with token ids: the action space must be Discrete, got {action_space}")
        if kwargs.pop("use_sde", False):
            raise ValueError("use_sde=True has no meaning for a token policy; pass use_sde=False")
        unsupported = sorted(set(kwargs) & {"net_arch", "activation_fn", "ortho_init", "log_std_init", "full_std",
                                            "use_expln", "squash_output", "share_features_extractor"})
        if unsupported:
            raise ValueError(f"policy_kwargs {unsupported[0]!r} has no meaning for TransformerPolicy (its network is "
                             "the checkpoint's GPT); drop it")
        self._checkpoint = None if checkpoint is None else str(checkpoint)
        self._reference_checkpoint = None if reference_checkpoint is None else str(reference_checkpoint)
        self._gpt_config = gpt_config
        if isinstance(lora, LoRASettings):
            lora = dataclasses.asdict(lora.lora_settings())
        self._lora = LoRASettings.from_dict(dict(lora), source="policy_kwargs lora") if lora else None
        if self._lora is not None and self._lora.lora_rank == 0:
            self._lora = None
        if shared_reference is None:
            shared_reference = self._lora is not None and reference_checkpoint is None
        if shared_reference and (self._lora is None or reference_checkpoint is not None):
            raise ValueError("shared_reference=True makes the policy's frozen base the reference: it needs LoRA "
                             "(policy_kwargs lora with lora_rank >= 1) and no reference_checkpoint")
        self.shared_reference = bool(shared_reference)
        self.tokenizer = None  # set from the checkpoint (None when built from gpt_config alone)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], ortho_init=False,
                         optimizer_class=optimizer_class,
                         optimizer_kwargs={"eps": 1e-5, "weight_decay": 0.0, "fused": True} if optimizer_kwargs is None
                         else optimizer_kwargs, **kwargs)

    # ------------------------------------------------------------------------------ building
    def _build(self, lr_schedule: Any) -> None:
        n_actions = int(self.action_space.n)
        if self._checkpoint is not None:
            saved = load_checkpoint(self._checkpoint)
            gpt, self.tokenizer = merge_lora(saved.model), saved.tokenizer  # a LoRA checkpoint: its merged weights
            self.net = PolicyNetwork(gpt)
            value_state = {k[len("value."):]: v for k, v in saved.heads.items() if k.startswith("value.")}
            if value_state:
                self.net.value.load_state_dict(value_state)
                logger.info("restored the value head from %s", self._checkpoint)
            self._gpt_config = gpt.config.to_dict()
        else:
            self.net = PolicyNetwork(GPT(GPTConfig.from_dict(dict(self._gpt_config))))
        if self.net.gpt.config.vocab_size != n_actions:
            raise ValueError(f"the policy's vocabulary has {self.net.gpt.config.vocab_size} tokens but the env's action "
                             f"space has {n_actions}; build the env with the policy's tokenizer")
        if self._lora is not None:  # the GPT freezes, its adapters and the value head train
            apply_lora(self.net, self._lora)
        if self._reference_checkpoint is not None:
            reference = merge_lora(load_checkpoint(self._reference_checkpoint).model)
            if reference.config.vocab_size != n_actions:
                raise ValueError(f"{self._reference_checkpoint}: the reference's vocabulary ({reference.config.vocab_size}) "
                                 f"differs from the policy's ({n_actions}); use a checkpoint with the same tokenizer")
        elif self.shared_reference:
            reference = FrozenBase(self.net.gpt)  # the same weights with the adapters off: no copy
        else:  # a copy of the starting weights (a saved policy's reference weights are loaded into it)
            reference = copy.deepcopy(self.net.gpt)
            if self._lora is not None:
                reference = merge_lora(reference)
        self.reference = reference.requires_grad_(False).eval()
        self.action_dist = CategoricalDistribution(n_actions)
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = self.optimizer_class(trainable, lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "activation_fn", "ortho_init", "use_sde", "log_std_init", "squash_output",
                    "full_std", "use_expln"):
            data.pop(key, None)
        # the architecture, not a path: a saved policy must load where the checkpoint is not
        data["gpt_config"] = self._gpt_config
        if self._lora is not None:
            data["lora"] = dataclasses.asdict(self._lora)
            data["shared_reference"] = self.shared_reference
        return data

    def train(self, mode: bool = True) -> TransformerPolicy:
        """nn.Module.train, except that the GPTs stay in eval mode (dropout off, see the module docstring)."""
        super().train(mode)
        self.net.gpt.eval()
        self.reference.eval()
        return self

    @property
    def gpt(self) -> GPT:
        """The trained language model (the actor's trunk and LM head)."""
        return self.net.gpt

    # ------------------------------------------------------------------------------ SB3 interface
    def _last_hidden(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = _to_tokens(obs)
        return self.net.gpt.hidden_states(ids, attention_mask=mask)[:, -1]

    def _distribution(self, hidden: torch.Tensor) -> CategoricalDistribution:
        return self.action_dist.proba_distribution(action_logits=self.net.gpt.lm_head(hidden))

    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool = False) -> tuple[torch.Tensor, ...]:
        hidden = self._last_hidden(obs)
        dist = self._distribution(hidden)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, self.net.value(hidden)[:, None], dist.log_prob(actions)

    def evaluate_actions(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self._last_hidden(obs)
        dist = self._distribution(hidden)
        return self.net.value(hidden)[:, None], dist.log_prob(actions.reshape(-1)), dist.entropy()

    def get_distribution(self, obs: dict[str, torch.Tensor]) -> CategoricalDistribution:
        return self._distribution(self._last_hidden(obs))

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.value(self._last_hidden(obs))[:, None]

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)

    # ------------------------------------------------------------------------------ batched paths (rlfl PPO)
    def sequence_outputs(
        self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, actions: torch.Tensor,
        *, entropy: str = "grad", segment_ids: torch.Tensor | None = None, branch_ids: torch.Tensor | None = None,
        early: torch.Tensor | None = None, stop_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Log-probs, entropies and values of many actions from ONE forward per sequence.

        ``tokens``/``mask``: (S, W) whole sequences (prompt window + completion); ``positions``: (K, 2) rows of
        (sequence, column) whose hidden state chose an action; ``actions``: (K,) the tokens chosen there.
        The LM head runs at those K positions only (the vocabulary projection is the costliest matmul of a
        small model, and the prompt's positions never choose an action). ``entropy``: "grad" (part of the
        graph, for an entropy bonus), "log" (no graph: for logging only) or "none" (returned as None).
        ``segment_ids``: for rows that pack several sequences (`rlfl.agents.rollout.Batch`), which one each
        column belongs to; each attends to itself only and its positions start at 0; ``branch_ids``: the
        continuations of a shared prefix within one (`rlfl.attention.segment_mask`). ``early`` (K,) and
        ``stop_ids``: the actions that were sampled with the stop tokens banned (an env's ``min_new_tokens``,
        `rlfl.generate.ban_stop_tokens`) get the same ban here, so these are the log-probs they were drawn with.
        """
        hidden = self.net.gpt.hidden_states(tokens, attention_mask=mask, segment_ids=segment_ids, branch_ids=branch_ids)
        h = hidden[positions[:, 0], positions[:, 1]]
        logits = ban_stop_tokens(self.net.gpt.lm_head(h).float(), early, stop_ids)
        logp_all = F.log_softmax(logits, dim=-1)
        logp = logp_all.gather(1, actions[:, None]).squeeze(1)
        ent = None
        if entropy != "none":
            with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
                ent = -(logp_all.exp() * logp_all).sum(-1)
        return logp, ent, self.net.value(h).float()

    @torch.no_grad()
    def reference_logprobs(
        self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, actions: torch.Tensor,
        *, segment_ids: torch.Tensor | None = None, branch_ids: torch.Tensor | None = None,
        early: torch.Tensor | None = None, stop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The frozen reference's log-probs of the same actions (one no-grad forward per sequence).

        ``early``/``stop_ids`` ban the stop tokens as in `sequence_outputs`: the KL then compares the policy
        with the reference under the same rule, and is 0 while the two have the same weights.
        """
        hidden = self.reference.hidden_states(tokens, attention_mask=mask, segment_ids=segment_ids,
                                              branch_ids=branch_ids)
        logits = self.reference.lm_head(hidden[positions[:, 0], positions[:, 1]]).float()
        logits = ban_stop_tokens(logits, early, stop_ids)
        return F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1)

"""The chat template: how a conversation becomes token ids, and which of them an SFT loss may learn from.

One conversation renders as::

    <|system|>You are terse.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

Role markers and ``<|end|>`` are special tokens (never produced by ordinary text: a user who types
"<|end|>" gets those characters as plain text, so nobody can forge a turn). Every stage that talks in
turns uses this one template: SFT (with the loss mask), generation (``add_generation_prompt`` ends the
ids with ``<|assistant|>`` and ``<|end|>`` is the stop token), ``rlfl serve``'s chat endpoint, ``rlfl chat``
and ``rlfl sample`` on a checkpoint that ``is_chat_checkpoint``.

Example:
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> ids, mask = render_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> tok.decode(ids)
    '<|user|>hi<|end|><|assistant|>yo<|end|>'
    >>> tok.decode([t for t, m in zip(ids, mask) if m])  # what SFT learns from
    'yo<|end|>'
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rlfl.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
END = "<|end|>"


def role_token(tokenizer: Tokenizer, role: str) -> int:
    """The special-token id that opens a turn of ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; use one of {', '.join(ROLES)}")
    return tokenizer.special_tokens[f"<|{role}|>"]


def end_token(tokenizer: Tokenizer) -> int:
    """The special-token id that closes every turn (the stop token of chat generation)."""
    return tokenizer.special_tokens[END]


def is_chat_checkpoint(config: Mapping[str, Any]) -> bool:
    """Whether a checkpoint (its ``config.json``) was trained to answer user turns of this template.

    ``rlfl sft`` always trains on the template, so every SFT checkpoint is one. A PPO checkpoint is one
    when its run wrapped prompts as user turns (``PPOConfig.chat_template``; unset means the env's
    default, plain text for the built-in envs): PPO from an SFT policy on plain-text prompts has been
    tuned to continue text, and that is how it should be sampled. A DPO checkpoint is one when its
    prompts were user turns (``DPOConfig.chat_template``, which follows the starting checkpoint by
    default). Pretrained and reward-model checkpoints continue plain text.
    """
    stage = config.get("stage")
    if stage == "sft":
        return True
    if stage == "ppo":
        run = (config.get("ppo") or {}).get("config") or {}
        return run.get("chat_template") is True
    if stage == "dpo":
        return (config.get("dpo") or {}).get("chat_template") is True
    return False


def validate_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """Check a list of ``{"role", "content"}`` dicts; a one-line ValueError names what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"{where}[{i}]: expected an object with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}]: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}]: 'content' must be a string")
        out.append({"role": role, "content": content})
    return out


def render_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 loss mask that is 1 exactly on assistant content + its ``<|end|>``.

    With ``add_generation_prompt`` the ids end with ``<|assistant|>``, ready for the model to answer.
    """
    messages = validate_messages(list(messages))
    end = end_token(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        body = tokenizer.encode(m["content"]) + [end]
        learn = 1 if m["role"] == "assistant" else 0
        ids += [role_token(tokenizer, m["role"])] + body
        mask += [0] + [learn] * len(body)
    if add_generation_prompt:
        ids.append(role_token(tokenizer, "assistant"))
        mask.append(0)
    return ids, mask


def chat_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The ids to feed the model so that it writes the next assistant turn."""
    return render_chat(tokenizer, messages, add_generation_prompt=True)[0]

"""The chat template: how a conversation becomes token ids, and which of them an SFT loss may learn from.

One conversation renders as::

    <|system|>You are terse.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

Role markers and ``<|end|>`` are special tokens (never produced by ordinary text: a user who types
"<|end|>" gets those characters as plain text, so nobody can forge a turn). Every stage that talks in
turns uses this one template: SFT (with the loss mask), generation (``add_generation_prompt`` ends the
ids with ``<|assistant|>`` and ``<|end|>`` is the stop token), ``rlfl serve``'s chat endpoint, ``rlfl chat``
and ``rlfl sample`` on a checkpoint that ``is_chat_checkpoint``.

A tokenizer loaded from Hugging Face files brings its own Jinja chat template (`jinja_chat_template` decides,
for every function here): conversations are then rendered with it in a sandbox, as ``transformers``'
``apply_chat_template`` does, and tokenized with the template's special tokens; special-token text inside a
message stays plain text there too. The loss mask covers each assistant turn's tokens up to the template's
end-of-turn token, and that token (``<|im_end|>``, ``<|eot_id|>``, ...) is what `end_token` returns.

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

import functools
import json
import re
import weakref
from datetime import datetime
from typing import Any, Mapping, Sequence

from rlfl.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
END = "<|end|>"
_RLFL_TOKENS = tuple(f"<|{r}|>" for r in ROLES) + (END,)

# Private-use characters put around special-token text inside messages before a Jinja render, so that the
# rendered text can be tokenized with the template's own special tokens while the messages' stay plain text.
_MARK_OPEN, _MARK_CLOSE = "\U000F0000", "\U000F0001"
_TURN_END: "weakref.WeakKeyDictionary[Tokenizer, int]" = weakref.WeakKeyDictionary()


def jinja_chat_template(tokenizer: Tokenizer) -> str | None:
    """The Jinja chat template ``tokenizer`` renders conversations with, or None for rlfl's own format.

    This one function decides which format every chat stage uses: a tokenizer loaded from Hugging Face files
    with a ``chat_template`` uses that template; every other tokenizer uses rlfl's role tokens.
    """
    return tokenizer.conventions.chat_template


def can_chat(tokenizer: Tokenizer) -> bool:
    """Whether ``tokenizer`` can render conversations: it has a Jinja template or rlfl's role tokens."""
    return jinja_chat_template(tokenizer) is not None or all(t in tokenizer.special_tokens for t in _RLFL_TOKENS)


def _require_chat(tokenizer: Tokenizer) -> None:
    if not can_chat(tokenizer):
        raise ValueError(f"tokenizer {tokenizer.name!r} has neither rlfl's chat tokens "
                         f"({', '.join(_RLFL_TOKENS)}) nor a chat template; give its tokenizer_config.json a "
                         f"chat_template, or use an rlfl tokenizer")


def role_token(tokenizer: Tokenizer, role: str) -> int:
    """The special-token id that opens a turn of ``role`` (rlfl's own format only)."""
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; use one of {', '.join(ROLES)}")
    if jinja_chat_template(tokenizer) is not None:
        raise ValueError(f"tokenizer {tokenizer.name!r} renders chats with its Jinja template, which has no role "
                         f"tokens; use render_chat or chat_prompt")
    _require_chat(tokenizer)
    return tokenizer.special_tokens[f"<|{role}|>"]


def end_token(tokenizer: Tokenizer) -> int:
    """The special-token id that closes every assistant turn (the stop token of chat generation).

    ``<|end|>`` in rlfl's format; for a Jinja template, the first special token the template writes after an
    assistant's words (``<|im_end|>``, ``<|eot_id|>``), else the end-of-text token.
    """
    if jinja_chat_template(tokenizer) is None:
        _require_chat(tokenizer)
        return tokenizer.special_tokens[END]
    if tokenizer not in _TURN_END:
        user = [{"role": "user", "content": "Hi"}]
        prompt = _encode_jinja(tokenizer, user, add_generation_prompt=True)
        full = _encode_jinja(tokenizer, user + [{"role": "assistant", "content": "Hi"}], add_generation_prompt=False)
        specials = set(tokenizer.special_tokens.values())
        tail = full[_common_prefix(prompt, full):]
        _TURN_END[tokenizer] = next((t for t in tail if t in specials), tokenizer.eot_id)
    return _TURN_END[tokenizer]


def stop_tokens(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids that end generated text: the end-of-text token and, for a tokenizer that can chat, its end-of-turn
    token when that is another one (``<|end|>``; ``<|im_end|>`` of a Qwen chat model whose eos is ``<|endoftext|>``).

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> stop_tokens(byte_tokenizer())  # <|endoftext|>, <|end|>
        (256, 261)
    """
    eot = tokenizer.eot_id
    end = end_token(tokenizer) if can_chat(tokenizer) else eot
    return (eot,) if end == eot else (eot, end)


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
    if jinja_chat_template(tokenizer) is not None:
        return _render_jinja_chat(tokenizer, messages, add_generation_prompt)
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


# ---------------------------------------------------------------------------------------------- Jinja templates
def _render_jinja_chat(
    tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool
) -> tuple[list[int], list[int]]:
    """`render_chat` for a Jinja template: the ids of the whole rendered text; the mask from rendered prefixes.

    Assistant turn i starts where the ids of (messages before i + the generation prompt) stop agreeing with
    the whole conversation's, and ends after its first end-of-turn token (or where the ids of messages up to
    i stop agreeing): tokenizing the whole text keeps exactly the ids a Hugging Face model was trained on.
    """
    ids = _encode_jinja(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    mask = [0] * len(ids)
    if any(m["role"] == "assistant" for m in messages):
        end = end_token(tokenizer)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = _common_prefix(ids, _encode_jinja(tokenizer, messages[:i], add_generation_prompt=True))
            stop = _common_prefix(ids, _encode_jinja(tokenizer, messages[:i + 1], add_generation_prompt=False))
            if end in ids[start:stop]:
                stop = ids.index(end, start, stop) + 1
            mask[start:stop] = [1] * (stop - start)
    return ids, mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _encode_jinja(tokenizer: Tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> list[int]:
    """Render ``messages`` with the tokenizer's Jinja template and tokenize the text.

    The template's special tokens become their ids; special-token text from the messages (marked before
    rendering) is plain text, tokenized with the text around it, so a message cannot forge a turn.
    """
    template = jinja_chat_template(tokenizer)
    assert template is not None
    specials = tokenizer.special_tokens
    control = [t for t in specials if t not in tokenizer.conventions.added_tokens]
    find, scan = _marker_patterns(tuple(control))

    def mark(text: str) -> str:
        text = text.replace(_MARK_OPEN, "").replace(_MARK_CLOSE, "")
        return find.sub(lambda m: _MARK_OPEN + m.group(0) + _MARK_CLOSE, text) if control else text

    conv = tokenizer.conventions
    names = {"bos_token": conv.bos_token, "eos_token": conv.eos_token, "pad_token": conv.pad_token}
    text = render_jinja(template, [{"role": m["role"], "content": mark(m["content"])} for m in messages],
                        add_generation_prompt=add_generation_prompt,
                        **{k: v for k, v in names.items() if v is not None})
    ids: list[int] = []
    plain: list[str] = []  # text since the last special token, marked tokens unwrapped, lone markers dropped
    pos = 0
    for m in scan.finditer(text):
        plain.append(text[pos:m.start()])
        if m.group(1) is not None:
            plain.append(m.group(1))
        elif m.group(2) is not None:
            ids += tokenizer.encode("".join(plain))
            plain = []
            ids.append(specials[m.group(2)])
        pos = m.end()
    plain.append(text[pos:])
    return ids + tokenizer.encode("".join(plain))


@functools.lru_cache(maxsize=16)
def _marker_patterns(control: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a regex finding control tokens, a regex scanning for marked tokens, lone markers and control tokens)."""
    alternatives = "|".join(re.escape(t) for t in sorted(control, key=len, reverse=True)) or "(?!)"
    scan = re.compile(f"{_MARK_OPEN}({alternatives}){_MARK_CLOSE}|[{_MARK_OPEN}{_MARK_CLOSE}]|({alternatives})")
    return re.compile(alternatives), scan


def render_jinja(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool, **names: str) -> str:
    """Render a Hugging Face chat template as ``transformers``' ``apply_chat_template(..., tokenize=False)`` does.

    The template runs in jinja2's immutable sandbox with ``raise_exception``, ``tojson`` and ``strftime_now``;
    ``names`` are the special tokens it may use (``bos_token``, ``eos_token``, ...). A template that raises
    gives a one-line ValueError.

    Example:
        >>> render_jinja("{% for m in messages %}[{{ m.role }}] {{ m.content }};{% endfor %}",
        ...              [{"role": "user", "content": "hi"}], add_generation_prompt=True)
        '[user] hi;'
    """
    compiled = _compile(template)
    import jinja2

    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **names)
    except jinja2.TemplateError as e:
        raise ValueError(f"chat template: {e}") from None


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("rendering a Hugging Face chat template needs jinja2: pip install -e '.[hf]'") from None

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (marks assistant text for transformers): render the body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template: Jinja syntax error on line {e.lineno}: {e.message}") from None

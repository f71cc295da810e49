"""Log-probabilities in `rlfl serve`'s answers, in OpenAI's two shapes.

``/v1/completions`` (OpenAI's legacy shape): ``"logprobs": k`` (0 to ``max_logprobs``) adds
``choices[i].logprobs = {"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` with the k most likely
tokens at each generated position, and ``"echo": true`` puts the prompt in front of the text (and its tokens
in front of the logprobs; the first prompt token has ``null`` log-probs). ``/v1/chat/completions``:
``"logprobs": true`` (and ``"top_logprobs": k``) adds ``choices[i].logprobs = {"content": [{"token",
"logprob", "bytes", "top_logprobs"}], "refusal": null}``, the same numbers for the message's tokens (never
the stop token, which is not in the message).

They are log-probabilities of the PLAIN softmax at temperature 1, before top-k/top-p and whatever the
request's temperature, so a judge reads the model's own distribution. A whole answer's come from one
teacher-forced forward over prompt + generated tokens (`answer_logprobs`, through
`rlfl.evaluate.position_logprobs`, the code LMJudge uses in-process), run on the HTTP thread after
generation: the batching engine returns tokens only, and a forward of the finished sequence computes exactly
the distributions the sampler drew from (up to float rounding between batch shapes). A streamed answer's are
read from the logits each step was picked from (`token_logprobs` of one row; equal up to float rounding). A
row that ended on a stop token lists that token last in ``tokens`` although it is not in the text; the engine
reports only *that* a stop token ended the row, so the likelier of ``<|endoftext|>`` and ``<|end|>`` at that
position is named (exact for greedy rows). Token strings are the token's UTF-8 text, or ``bytes:\\xNN...``
for a token that is not valid UTF-8 on its own (OpenAI's convention).

Example:
    >>> import torch
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> [e] = token_logprobs(torch.tensor([[0.0, -1.0, -2.0]]), [1], k=2)
    >>> logprobs_json(tok, [e], chat=False, base=5)
    {'tokens': ['\\x01'], 'token_logprobs': [-1.0], 'top_logprobs': [{'\\x00': 0.0, '\\x01': -1.0}], 'text_offset': [5]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from rlfl.batching import Completion, stop_token_ids
from rlfl.config import is_int
from rlfl.evaluate import position_logprobs
from rlfl.model import GPT
from rlfl.serve_requests import Request, RequestError
from rlfl.tokenizer import Tokenizer


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """How a token is named in ``logprobs``: its UTF-8 text, or ``bytes:\\xNN...`` when it is not valid UTF-8 alone.

    Example:
        >>> from rlfl.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> token_text(tok, tok.encode("A")[0]), token_text(tok, 0xE2), token_text(tok, tok.eot_id)
        ('A', 'bytes:\\\\xe2', '<|endoftext|>')
    """
    raw = tokenizer.decode_bytes([token_id])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _text_offsets(tokenizer: Tokenizer, ids: list[int], base: int, before: bytes = b"") -> list[int]:
    """Character offset of each token in the decoded text, counted from ``base`` and after the bytes ``before``."""
    out, acc = [], before
    for t in ids:
        out.append(base + len(acc.decode("utf-8", errors="replace")))
        acc += tokenizer.decode_bytes([t])
    return out


def logprobs_arg(body: dict[str, Any], limit: int) -> int | None:
    """Top tokens listed per position of a completion (``logprobs: k``); None: no logprobs."""
    k = body.get("logprobs")
    if k is None or k is False:
        return None
    if not is_int(k) or not 0 <= k <= limit:
        raise RequestError(f"'logprobs' must be an integer in [0, {limit}] (top tokens listed per position), "
                           f"got {json.dumps(k)}", "logprobs")
    return k


def chat_logprobs_arg(body: dict[str, Any], limit: int) -> int | None:
    """Top tokens listed per position of a chat answer (``logprobs: true``, ``top_logprobs: k``); None: none."""
    on, k = body.get("logprobs"), body.get("top_logprobs")
    if on is not None and not isinstance(on, bool):
        raise RequestError(f"'logprobs' must be true or false, got {json.dumps(on)}", "logprobs")
    if k is not None and (not is_int(k) or not 0 <= k <= limit):
        raise RequestError(f"'top_logprobs' must be an integer in [0, {limit}], got {json.dumps(k)}", "top_logprobs")
    if k and not on:
        raise RequestError("'top_logprobs' needs \"logprobs\": true", "top_logprobs")
    return (k or 0) if on else None


@dataclass
class TokenLogprob:
    """One listed token: its id, log-probability and the top (id, log-probability) pairs (None: unknown)."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] | None


def token_logprobs(lp: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprob]:
    """The `TokenLogprob` of each row of ``lp`` (rows, vocab): log-probs of ``targets`` and the ``k`` likeliest."""
    lp = lp.cpu()
    chosen = lp.gather(1, torch.tensor(targets, dtype=torch.long)[:, None])[:, 0].tolist()
    values, ids = lp.topk(min(k, lp.shape[1]), dim=-1)
    return [TokenLogprob(t, c, list(zip(i, v)))
            for t, c, i, v in zip(targets, chosen, ids.tolist(), values.tolist())]


def reported(c: Completion, count: int, with_stop_token: bool) -> list[int]:
    """The tokens a choice's logprobs list: the ``count`` its usage counts, the stop token that ended it as -1 (the
    engine says that one ended the row, not which), which chat answers never list (it is not in the message)."""
    return (c.tokens + [-1] if c.stopped and with_stop_token else c.tokens)[:count]


def logprobs_json(tokenizer: Tokenizer, entries: list[TokenLogprob], *, chat: bool, base: int,
                  before: bytes = b"") -> dict[str, Any]:
    """A choice's (or a chunk's) ``logprobs``: OpenAI's chat shape (``content``), or the legacy completions shape
    whose ``text_offset`` counts from ``base`` characters after the bytes ``before``."""
    if chat:
        def named(t: int, v: float | None) -> dict[str, Any]:
            return {"token": token_text(tokenizer, t), "logprob": v, "bytes": list(tokenizer.decode_bytes([t]))}

        return {"content": [{**named(e.token, e.logprob), "top_logprobs": [named(t, v) for t, v in e.top or []]}
                            for e in entries], "refusal": None}
    return {"tokens": [token_text(tokenizer, e.token) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [None if e.top is None else {token_text(tokenizer, t): v for t, v in e.top}
                             for e in entries],
            "text_offset": _text_offsets(tokenizer, [e.token for e in entries], base, before)}


def answer_logprobs(model: GPT, tokenizer: Tokenizer, req: Request, results: list[Completion], counts: list[int],
                    *, batch_size: int) -> list[list[TokenLogprob]]:
    """The listed tokens of each choice of a whole answer with their ``req.top`` likeliest, from one teacher-forced
    forward over prompt + generated tokens (see the module docstring)."""
    assert req.top is not None
    prompts = [req.prompts[i] for i in req.rows]
    listed = [reported(c, k, not req.chat) for c, k in zip(results, counts)]
    targets = [(p[1:] if req.echo else []) + r for p, r in zip(prompts, listed)]
    starts = [0 if req.echo else len(p) - 1 for p in prompts]
    todo = [i for i, t in enumerate(targets) if t]  # a chat answer that stopped at once lists nothing
    seqs = [(prompts[i] + listed[i])[: starts[i] + len(targets[i])] for i in todo]  # the last is never fed
    stops = list(stop_token_ids(tokenizer))
    out: list[list[TokenLogprob]] = [[] for _ in prompts]
    for j, lp in position_logprobs(model, seqs, [starts[i] for i in todo], pad_id=tokenizer.pad_id,
                                   batch_size=batch_size):
        i = todo[j]
        if targets[i][-1] == -1:  # the stop token: name the likelier one (exact for greedy rows)
            targets[i][-1] = stops[int(lp[-1, stops].argmax())]
        first = [TokenLogprob(prompts[i][0], None, None)] if req.echo else []
        out[i] = first + token_logprobs(lp, targets[i], req.top)
    return out


def prompt_logprobs(model: GPT, tokenizer: Tokenizer, prompt: list[int], top: int | None) -> list[Any]:
    """The listed prompt tokens of an echoed stream: the first has no log-prob, the rest are predicted (all None
    without logprobs)."""
    if top is None:
        return [None] * len(prompt)
    [(_, lp)] = position_logprobs(model, [prompt], [0], pad_id=tokenizer.pad_id)
    return [TokenLogprob(prompt[0], None, None)] + token_logprobs(lp[:-1], prompt[1:], top)

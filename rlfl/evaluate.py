"""Evaluating a policy: sample completions, score them, and measure what the reward cost (KL, perplexity, length).

One module for every stage that measures text: PPO's gold evaluations (`rlfl.agents.callbacks.evaluate_policy`,
`GoldEval`), `rlfl compare`'s held-out evaluation, the LM judges and the server's ``logprobs`` all read their
numbers from here, so "KL", "perplexity" and "log-prob of a token" mean the same thing everywhere.

- `encode_prompt`: a prompt as the text envs encode it (chat user turn or plain text, left-truncated).
- `sample_completions`: plain-softmax completions (temperature 1: the distribution PPO optimises), batched and
  seeded per batch, with their log-probs.
- `completion_logprobs`: the log-prob of each completion token under a model (e.g. the KL reference), with the
  stop tokens banned before ``min_new_tokens`` as they were in sampling.
- `position_logprobs`: whole next-token log-softmax rows at chosen positions (the server's top logprobs).
- `completion_records` and `summarize`: per-completion figures (score, KL, NLL under the reference, tokens,
  stop, empty) and their means (score mean, positive rate, KL, perplexity, length, stop rate, empties,
  distinct-1/2).

Example (a policy that is its own reference spends no KL; with checkpoints, ``load_checkpoint("runs/ppo")``
gives the policy and ``load_checkpoint("runs/sft")`` the reference):
    >>> from rlfl.model import GPT, GPTConfig
    >>> from rlfl.tokenizer import byte_tokenizer
    >>> tok, _ = byte_tokenizer(), torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    >>> ids = [encode_prompt(tok, "The food was", chat=False, max_prompt_tokens=16)]
    >>> samples = sample_completions(model, tok, ids, max_new_tokens=8, seed=0)
    >>> len(samples[0].tokens)
    8
    >>> lp = completion_logprobs(model, samples, pad_id=tok.pad_id)
    >>> summary = summarize(completion_records(samples, lp, scores=[0.5]))
    >>> abs(summary["kl"]) < 1e-5, summary["length"]
    (True, 8.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlfl.chat_template import chat_prompt, end_token
from rlfl.compare_stats import distinct_n
from rlfl.generate import SamplingConfig, ban_stop_tokens, generate
from rlfl.model import GPT


@dataclass
class Sample:
    """One sampled completion: the prompt's ids, the new tokens (a final stop token included), the text (without
    it), whether a stop token ended it, and the sampling policy's log-prob of each new token."""

    prompt_ids: list[int]
    tokens: list[int]
    text: str
    finished: bool
    logprobs: list[float] | None = None


def encode_prompt(tokenizer: Any, text: str, *, chat: bool, max_prompt_tokens: int) -> list[int]:
    """A prompt's ids as the env encodes them: chat turn or plain text, left-truncated to ``max_prompt_tokens``."""
    ids = chat_prompt(tokenizer, [{"role": "user", "content": text}]) if chat else tokenizer.encode_prompt(text)
    return ids[-max_prompt_tokens:]


@torch.no_grad()
def sample_completions(model: GPT, tokenizer: Any, prompts: Sequence[list[int]], *, max_new_tokens: int,
                       stop_tokens: Sequence[int] = (), min_new_tokens: int = 0, seed: int | None = 0,
                       seed_stride: int = 1, batch_size: int = 64,
                       on_batch: Callable[[int], Any] | None = None) -> list[Sample]:
    """One plain-softmax completion per encoded prompt, in batches of ``batch_size``; batch k is seeded
    ``seed * seed_stride + k`` (None: unseeded), so the same arguments give the same completions. Stops at
    ``stop_tokens``, which cannot come before ``min_new_tokens``."""
    sampling = {"max_new_tokens": max_new_tokens, "stop_tokens": tuple(stop_tokens),
                "min_new_tokens": min(min_new_tokens, max_new_tokens)}
    out: list[Sample] = []
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        gen = generate(model, chunk, SamplingConfig(seed=None if seed is None else seed * seed_stride + k, **sampling),
                       pad_id=tokenizer.pad_id, return_logprobs=True)
        for i, (ids, done) in enumerate(zip(gen.tokens, gen.finished)):
            out.append(Sample(chunk[i], ids, tokenizer.decode(ids[:-1] if done else ids), bool(done),
                              gen.logprobs[i]))
        if on_batch is not None:
            on_batch(len(chunk))
    return out



def greedy_answers(model: GPT, tokenizer: Any, prompts: Sequence[list[int]], *, max_new_tokens: int) -> list[str]:
    """Greedy answers to encoded prompts, each up to its first stop token (``<|end|>`` or ``<|endoftext|>``,
    left out): the before/after samples of the fine-tuning stages. [] when the longest prompt fills the context."""
    if not prompts:
        return []
    room = model.config.block_size - max(len(p) for p in prompts)
    if room < 1:
        return []
    stop = (end_token(tokenizer), tokenizer.eot_id)
    out = generate(model, list(prompts), SamplingConfig(max_new_tokens=min(max_new_tokens, room), greedy=True,
                                                        stop_tokens=stop), pad_id=tokenizer.pad_id)
    return [tokenizer.decode(t[:-1] if done else t) for t, done in zip(out.tokens, out.finished)]

@torch.no_grad()
def completion_logprobs(model: GPT, samples: Sequence[Sample], *, pad_id: int, batch_size: int = 64,
                        min_new_tokens: int = 0, stop_tokens: Sequence[int] = (),
                        attention_mask: bool = False) -> list[np.ndarray]:
    """The log-prob of each sample's completion tokens under ``model`` (float64 arrays, one per sample).

    Rows are ``prompt + completion``, right-padded, one forward per batch: with causal attention the padding
    after a row's last token changes nothing before it, and positions count from each row's first token, as
    in generation. The LM head runs only where a completion token is predicted, so a large vocabulary never
    costs a (batch, length, vocab) tensor. The stop tokens are banned before ``min_new_tokens`` (their logits
    set to -inf there), as they were when the completions were sampled. ``attention_mask=True`` also passes the
    rows' padding mask, as PPO's training forwards do; the figures agree with the unmasked forward to float32
    rounding (~1e-7), and PPO's own evaluations use it so that their KL is read the way training reads it.
    """
    device = next(model.parameters()).device
    stop_ids = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    out: list[np.ndarray] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        width = max(len(s.prompt_ids) + len(s.tokens) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        rows, cols, targets, early = [], [], [], []
        for r, s in enumerate(chunk):
            ids[r, :len(s.prompt_ids) + len(s.tokens)] = torch.tensor(s.prompt_ids + s.tokens)
            mask[r, :len(s.prompt_ids) + len(s.tokens)] = True
            rows += [r] * len(s.tokens)
            cols += range(len(s.prompt_ids) - 1, len(s.prompt_ids) - 1 + len(s.tokens))  # the state before token j
            targets += s.tokens
            early += [j < min_new_tokens for j in range(len(s.tokens))]
        hidden = model.hidden_states(ids.to(device), attention_mask=mask.to(device) if attention_mask else None)
        hidden = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        logits = model.lm_head(hidden).float()
        if min_new_tokens and stop_ids.numel():
            logits = ban_stop_tokens(logits, torch.tensor(early, device=device), stop_ids)
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0].double().cpu().numpy()
        out += np.split(picked, np.cumsum([len(s.tokens) for s in chunk])[:-1])
    return out


def position_logprobs(model: GPT, seqs: list[list[int]], starts: list[int], *, pad_id: int,
                      batch_size: int = 8) -> Iterator[tuple[int, torch.Tensor]]:
    """Next-token log-softmax (temperature 1, float32) at positions ``starts[i] .. len(seqs[i]) - 1`` of each row.

    Yields ``(row index, (len - start, vocab) tensor)`` once per row, longest rows first (similar lengths
    share a batch). Rows are right-padded and run with NO attention mask: attention is causal, so a
    position never sees the padding after its row's end and its output is exactly the unpadded one, while
    SDPA keeps its fused causal path. The LM head runs only on the positions asked for, not on (B, T, V).
    Used by the server's ``logprobs`` and by `rlfl.judges.LMJudge`, so both read the same numbers.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    was_training = model.training
    if was_training:  # the server's model is already in eval mode: never flip it under the engine's feet
        model.eval()
    try:
        for first in range(0, len(order), batch_size):
            chunk = order[first:first + batch_size]
            x = torch.full((len(chunk), len(seqs[chunk[0]])), pad_id, dtype=torch.long)
            for r, i in enumerate(chunk):
                x[r, : len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)
            with torch.no_grad():
                h = model.hidden_states(x.to(device))
            for r, i in enumerate(chunk):  # one row's (positions, vocab) at a time: a long row is large
                with torch.no_grad():
                    row = F.log_softmax(model.lm_head(h[r, starts[i]: len(seqs[i])]).float(), dim=-1)
                yield i, row
    finally:
        if was_training:
            model.train()


def completion_records(samples: Sequence[Sample], reference_logprobs: Sequence[np.ndarray],
                       scores: Sequence[float]) -> list[dict[str, Any]]:
    """Per completion: its text, score, KL to the reference (summed ``log p_policy - log p_ref`` of its tokens,
    nats), NLL under the reference, tokens (a final stop token included), whether it stopped, and whether its
    text is empty (white space only)."""
    return [{"completion": s.text, "score": float(score),
             "kl": float(np.sum(np.asarray(s.logprobs, dtype=np.float64) - lp)), "nll": float(-lp.sum()),
             "tokens": len(s.tokens), "stopped": s.finished, "empty": not s.text.strip()}
            for s, lp, score in zip(samples, reference_logprobs, scores)]


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over `completion_records`: ``gold_mean`` (score), ``gold_positive_rate`` (share of scores > 0),
    ``kl``, ``perplexity`` (exp of the mean per-token NLL under the reference: how fluent the text is by the
    reference's standards), ``length``, ``stop_rate``, ``empty`` (a count), ``distinct_1``/``distinct_2`` and
    ``n``."""
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    tokens = sum(r["tokens"] for r in records)
    texts = [r["completion"] for r in records]
    return {"gold_mean": float(scores.mean()), "gold_positive_rate": float(np.mean(scores > 0)),
            "kl": float(np.mean([r["kl"] for r in records])),
            "perplexity": float(np.exp(sum(r["nll"] for r in records) / max(tokens, 1))),
            "length": float(tokens / len(records)), "stop_rate": float(np.mean([r["stopped"] for r in records])),
            "empty": int(sum(r["empty"] for r in records)), "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2), "n": len(records)}

"""The batched sampling engine: every rlfl stage that generates text goes through `generate`.

How a call runs:
1. Prompts of different lengths are left-padded into one (B, P + max_new_tokens) id buffer. The padding
   mask (prompt pads = 0, everything else = 1) and the position ids (mask cumsum - 1, so each row's
   first real token is position 0 whatever its padding) are built ONCE for the whole buffer; each step
   only slices them. When all prompts have the same length no mask is passed at all, so the prefill
   takes SDPA's fused causal path.
2. One KV cache sized P + max_new_tokens is preallocated; the prompt is run once (prefill), then each
   step feeds one token per row.
3. The next token comes from greedy argmax or from sampling softmax(logits / temperature) after top-k
   and top-p (nucleus) filtering, drawn with a torch.Generator seeded from `seed`.
4. A row that emits a stop token is finished: from then on it is fed `pad_id` (its outputs are
   ignored) so the batch keeps a fixed shape. The loop exits as soon as every row is finished. With
   ``min_new_tokens`` the stop tokens' logits are masked (`ban_stop_tokens`) until the rows have that many
   new tokens, as Hugging Face's ``min_new_tokens`` does, so no completion is shorter.
5. ``on_step``, when given, sees every step as it happens (the server streams text with it): the token each
   row took and the logits it was picked from. Returning False ends the loop there; raising aborts the call.

`use_cache=False` recomputes the whole prefix each step with the same masks and positions; it is the
slow reference the tests compare the cache against.

Example:
    >>> from rlfl.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64))
    >>> out = generate(model, [[1, 2, 3], [4]], SamplingConfig(max_new_tokens=5, seed=0), pad_id=0)
    >>> [len(t) for t in out.tokens]
    [5, 5]
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from rlfl.config import is_int, is_number
from rlfl.model import GPT, KVCache

log = logging.getLogger(__name__)



@dataclass
class SamplingConfig:
    """How to pick each next token, and when to stop."""

    max_new_tokens: int = field(metadata={"help": "Maximum number of tokens to generate per prompt."})
    temperature: float = field(
        default=1.0, metadata={"help": "Divide logits by this before sampling (>0; lower is more deterministic)."}
    )
    top_k: int | None = field(default=None, metadata={"help": "Sample only among the k most likely tokens."})
    top_p: float | None = field(
        default=None,
        metadata={"help": "Nucleus sampling: sample from the smallest set of most likely tokens holding top_p of the "
                          "probability."},
    )
    greedy: bool = field(default=False, metadata={"help": "Always take the most likely token (ignores top-k/top-p)."})
    stop_tokens: tuple[int, ...] = field(
        default=(), metadata={"help": "Token ids that end a completion (the stop token is kept as its last token)."}
    )
    min_new_tokens: int = field(
        default=0, metadata={"help": "The stop tokens cannot be chosen before a row has this many new tokens."}
    )
    seed: int | None = field(default=None, metadata={"help": "Seed for sampling; the same seed gives the same output."})

    def __post_init__(self) -> None:
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if not is_number(self.temperature) or not 0 < self.temperature < math.inf:
            raise ValueError(
                f"SamplingConfig.temperature={self.temperature!r} must be a finite number > 0; for deterministic output "
                "set greedy=True"
            )
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"SamplingConfig.top_k={self.top_k!r} must be an integer >= 1, or None to disable it")
        if self.top_p is not None and (not is_number(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise ValueError(f"SamplingConfig.top_p={self.top_p!r} must be in (0, 1], or None to disable it")
        self.stop_tokens = tuple(self.stop_tokens)
        if not all(is_int(t) and t >= 0 for t in self.stop_tokens):
            raise ValueError(f"SamplingConfig.stop_tokens={self.stop_tokens!r} must be non-negative token ids")
        if not is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"SamplingConfig.min_new_tokens={self.min_new_tokens!r} must be an integer in [0, "
                             f"max_new_tokens={self.max_new_tokens}]")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"SamplingConfig.seed={self.seed!r} must be an integer, or None for unseeded sampling")


@dataclass
class Generation:
    """The result of `generate`, one entry per prompt, in prompt order."""

    tokens: list[list[int]]
    """Completion ids (prompt excluded); a stop token, if hit, is the last id."""
    finished: list[bool]
    """True when the row ended on a stop token, False when it ran out of max_new_tokens."""
    logprobs: list[list[float]] | None = None
    """With return_logprobs=True: log-prob of each completion token under log_softmax(logits / temperature),
    i.e. BEFORE top-k/top-p filtering, with the stop tokens banned before ``min_new_tokens``. That is what a
    training forward recomputes (the policy's own distribution under the same ban), so PPO's old and new
    log-probs agree at the first step."""


def ban_stop_tokens(logits: torch.Tensor, early: torch.Tensor | None, stop_ids: torch.Tensor | None) -> torch.Tensor:
    """``logits`` (K, V) with the ``stop_ids`` columns masked in the rows where ``early`` (K,) is True.

    What ``min_new_tokens`` does to a distribution: a stop token cannot end a completion that is still too
    short. The mask is the float's lowest finite value, not -inf: its probability is exactly 0 all the same,
    and ``p * log p`` (an entropy) stays 0 instead of NaN, in the forward and the backward pass. Returns
    ``logits`` itself when there is nothing to mask.

    Example:
        >>> ban_stop_tokens(torch.zeros(2, 3), torch.tensor([True, False]), torch.tensor([2])).softmax(-1)
        tensor([[0.5000, 0.5000, 0.0000],
                [0.3333, 0.3333, 0.3333]])
    """
    if early is None or stop_ids is None or stop_ids.numel() == 0:
        return logits
    cols = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    cols[stop_ids] = True
    return logits.masked_fill(early[:, None] & cols, torch.finfo(logits.dtype).min)


def _validate_prompts(prompts: list[list[int]], vocab_size: int, pad_id: int) -> None:
    if not prompts:
        raise ValueError("generate: prompts is empty; pass at least one list of token ids")
    if not 0 <= pad_id < vocab_size:
        raise ValueError(
            f"generate: pad_id={pad_id} is outside the vocabulary [0, {vocab_size}); pass the tokenizer's pad_id"
        )
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"generate: prompt {i} is empty; start it with a token such as the tokenizer's eot_id")
        bad = [t for t in prompt if not is_int(t) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"generate: prompt {i} has token id {bad[0]!r} outside the vocabulary [0, {vocab_size})")


def _pick(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Choose one token per row from float logits (B, V); returns (B, 1) ids."""
    if config.greedy:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top token is
        # therefore always kept, and a tiny top_p degenerates to greedy.
        drop = (probs.cumsum(dim=-1) - probs) > config.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        choice = torch.multinomial(F.softmax(sorted_logits, dim=-1), 1, generator=generator)
        return order.gather(-1, choice)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    prompts: list[list[int]],
    config: SamplingConfig,
    *,
    pad_id: int,
    use_cache: bool = True,
    return_logprobs: bool = False,
    on_step: Callable[[torch.Tensor, torch.Tensor], bool | None] | None = None,
) -> Generation:
    """Complete a batch of token-id prompts (of any lengths) with one batched, KV-cached decode loop.

    The model is put in eval mode for the call and its previous mode restored afterwards. Raises
    ValueError when the longest prompt + max_new_tokens exceeds the model's block_size.

    ``on_step(tokens, logits)`` is called after every step with the (B,) ids the rows took (``pad_id`` for a
    row that had already stopped) and the (B, V) float logits they were picked from (before temperature,
    top-k and top-p; stop tokens masked before ``min_new_tokens``). Returning False ends generation after
    that step: the result then holds the steps taken so far. Without it the loop is exactly as before.
    """
    cfg = model.config
    _validate_prompts(prompts, cfg.vocab_size, pad_id)
    lengths = [len(p) for p in prompts]
    B, P, N = len(prompts), max(lengths), config.max_new_tokens
    total = P + N
    if total > cfg.block_size:
        raise ValueError(
            f"generate: longest prompt ({P} tokens) + max_new_tokens ({N}) = {total} exceeds block_size "
            f"{cfg.block_size}; shorten the prompts or lower max_new_tokens to {max(cfg.block_size - P, 0)}"
        )
    param = next(model.parameters())
    device = param.device

    # Everything per-row happens here, once: left-pad into the id buffer and build mask + positions.
    ids = torch.full((B, total), pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, P - len(prompt) : P] = torch.tensor(prompt, dtype=torch.long)
    ids = ids.to(device)
    padded = min(lengths) != P
    if padded:
        starts = torch.tensor([P - n for n in lengths], device=device)
        mask = torch.arange(total, device=device)[None, :] >= starts[:, None]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    else:  # no padding: no mask, default positions, SDPA's fused causal kernels for the prefill
        mask = positions = None

    stop = torch.tensor(config.stop_tokens, dtype=torch.long, device=device)
    early = torch.ones(B, dtype=torch.bool, device=device)  # every row has `step` new tokens at each step
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out_len = torch.full((B,), N, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, N, device=device) if return_logprobs else None
    cache = KVCache(cfg, B, total, device=device, dtype=param.dtype) if use_cache else None

    was_training = model.training
    model.eval()
    try:
        cur = P  # the buffer holds valid tokens in [0, cur)
        for step in range(N):
            start = cache.length if cache is not None else 0
            h = model.hidden_states(
                ids[:, start:cur],
                attention_mask=None if mask is None else mask[:, :cur],
                position_ids=None if positions is None else positions[:, start:cur],
                cache=cache,
            )
            logits = model.lm_head(h[:, -1]).float()  # only the last position: no (B, T, V) prefill logits
            if step < config.min_new_tokens:
                logits = ban_stop_tokens(logits, early, stop)
            token = _pick(logits, config, generator)
            if logprobs is not None:
                logprobs[:, step] = F.log_softmax(logits / config.temperature, dim=-1).gather(-1, token).squeeze(-1)
            token = token.squeeze(-1).masked_fill(done, pad_id)
            ids[:, cur] = token
            cur += 1
            newly = torch.isin(token, stop) & ~done
            out_len.masked_fill_(newly, step + 1)
            done |= newly
            if on_step is not None and on_step(token, logits) is False:
                break
            if stop.numel() and bool(done.all()):
                break
    finally:
        model.train(was_training)

    log.debug("generated %d rows x %d steps (longest prompt %d, cache=%s)", B, cur - P, P, use_cache)
    completions = ids[:, P:cur].tolist()
    out_len_list = out_len.clamp(max=cur - P).tolist()  # rows still running when on_step ended the loop
    return Generation(
        tokens=[row[:n] for row, n in zip(completions, out_len_list)],
        finished=done.tolist(),
        logprobs=None if logprobs is None else [row[:n] for row, n in zip(logprobs.tolist(), out_len_list)],
    )


class TextTokenizer(Protocol):
    """The part of rlfl.tokenizer.Tokenizer that generate_text needs."""

    eot_id: int
    pad_id: int

    def encode_prompts(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: list[int]) -> str: ...


def generate_text(model: GPT, tokenizer: TextTokenizer, prompts: list[str], config: SamplingConfig) -> list[str]:
    """Complete text prompts; <|endoftext|> is always a stop token and stop tokens are not in the text.

    Prompts are encoded by ``tokenizer.encode_prompts``: a begin-of-text token in front where the tokenizer adds
    one (Llama-3), and an empty prompt without it starts from <|endoftext|>, GPT-2's document separator, so the
    model samples a fresh document.
    """
    stops = config.stop_tokens if tokenizer.eot_id in config.stop_tokens else (*config.stop_tokens, tokenizer.eot_id)
    config = dataclasses.replace(config, stop_tokens=stops)
    encoded = tokenizer.encode_prompts(prompts)
    out = generate(model, encoded, config, pad_id=tokenizer.pad_id)
    return [tokenizer.decode(t[:-1] if done else t) for t, done in zip(out.tokens, out.finished)]

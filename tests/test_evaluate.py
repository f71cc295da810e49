"""rlfl.evaluate: log-probs that equal a plain unpadded forward, the stop-token ban, figures computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlfl.evaluate import (
    Sample,
    completion_logprobs,
    completion_records,
    encode_prompt,
    position_logprobs,
    sample_completions,
    summarize,
)
from rlfl.model import GPT, GPTConfig
from rlfl.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=byte_tokenizer().n_vocab, block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()


def by_hand(model: GPT, prompt: list[int], completion: list[int], banned: dict[int, list[int]] | None = None):
    """Log-probs of the completion from one forward of the unpadded sequence; ``banned``: position -> ids."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion]))[0].double()
    out = []
    for j, t in enumerate(completion):
        row = logits[len(prompt) - 1 + j].clone()
        for b in (banned or {}).get(j, []):
            row[b] = -math.inf
        out.append(F.log_softmax(row, -1)[t].item())
    return np.array(out)


def test_completion_logprobs_equal_an_unpadded_forward_and_apply_the_ban(model):
    tok = byte_tokenizer()
    samples = [Sample(tok.encode("The food"), tok.encode(" was great"), " was great", False),
               Sample(tok.encode("A"), tok.encode(" ok!"), " ok", True),
               Sample(tok.encode("Service was slow and"), tok.encode(" bad"), " bad", False)]
    got = completion_logprobs(model, samples, pad_id=tok.pad_id, batch_size=2)  # padded rows, two batches
    for s, lp in zip(samples, got):
        np.testing.assert_allclose(lp, by_hand(model, s.prompt_ids, s.tokens), atol=1e-5)
    stop = [ord("!")]
    banned = completion_logprobs(model, samples, pad_id=tok.pad_id, min_new_tokens=2, stop_tokens=stop)
    for s, lp in zip(samples, banned):
        np.testing.assert_allclose(lp, by_hand(model, s.prompt_ids, s.tokens, {0: stop, 1: stop}), atol=1e-5)
    assert not np.allclose(banned[0], got[0])  # the ban moved the mass of the other tokens


def test_position_logprobs_rows_equal_the_full_forward(model):
    tok = byte_tokenizer()
    seqs = [tok.encode("hello there"), tok.encode("hi"), tok.encode("a longer sequence here")]
    starts = [3, 0, 10]
    rows = dict(position_logprobs(model, seqs, starts, pad_id=tok.pad_id, batch_size=2))
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            full = F.log_softmax(model(torch.tensor([seq]))[0].float(), -1)
        torch.testing.assert_close(rows[i], full[starts[i]:], atol=1e-5, rtol=1e-5)


def test_sampling_is_seeded_and_figures_are_computed_as_documented(model):
    tok = byte_tokenizer()
    prompts = [encode_prompt(tok, p, chat=False, max_prompt_tokens=6) for p in ["The food was good", "Bad", "ok"]]
    assert prompts[0] == tok.encode("The food was good")[-6:]
    a = sample_completions(model, tok, prompts, max_new_tokens=5, stop_tokens=[ord(" ")], seed=3, batch_size=2)
    b = sample_completions(model, tok, prompts, max_new_tokens=5, stop_tokens=[ord(" ")], seed=3, batch_size=2)
    assert [s.tokens for s in a] == [s.tokens for s in b] and all(len(s.logprobs) == len(s.tokens) for s in a)
    ref = completion_logprobs(model, a, pad_id=tok.pad_id)
    records = completion_records(a, ref, scores=[1.0, -2.0, 0.5])
    assert all(abs(r["kl"]) < 1e-4 for r in records)  # the sampling model is its own reference
    figures = summarize(records)
    tokens = sum(len(s.tokens) for s in a)
    assert figures["gold_mean"] == pytest.approx(-1 / 6) and figures["gold_positive_rate"] == pytest.approx(2 / 3)
    assert figures["perplexity"] == pytest.approx(math.exp(-sum(r.sum() for r in ref) / tokens))
    assert figures["length"] == pytest.approx(tokens / 3) and figures["n"] == 3
    assert figures["stop_rate"] == pytest.approx(np.mean([s.finished for s in a]))
    assert figures["empty"] == sum(not s.text.strip() for s in a)


def test_the_masked_forward_gives_the_same_log_probs(model):
    tok = byte_tokenizer()
    samples = [Sample(tok.encode("The food"), tok.encode(" was great"), " was great", False),
               Sample(tok.encode("A"), tok.encode(" ok"), " ok", False)]
    plain = completion_logprobs(model, samples, pad_id=tok.pad_id)
    masked = completion_logprobs(model, samples, pad_id=tok.pad_id, attention_mask=True)
    for a, b, s in zip(plain, masked, samples):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(b, by_hand(model, s.prompt_ids, s.tokens), atol=1e-5)

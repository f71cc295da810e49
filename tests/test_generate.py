"""Tests for rlfl.generate: the batched, KV-cached sampling engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlfl.generate import SamplingConfig, generate, generate_text
from rlfl.model import GPT, GPTConfig, KVCache

PAD = 0
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15], [200, 201, 202, 203]]


def random_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> GPT:
    """A tiny model with large random weights, so greedy decoding wanders instead of repeating one token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**dict(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64), **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.to(dtype)


@pytest.fixture(scope="module")
def model() -> GPT:
    return random_model()


@pytest.fixture(scope="module")
def model64() -> GPT:
    return random_model(dtype=torch.float64)


def greedy(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, greedy=True, **kw)


# ---- the cache is exact ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_greedy_with_cache_equals_without(dtype):
    m = random_model(dtype=dtype)
    cached = generate(m, PROMPTS, greedy(20), pad_id=PAD)
    recomputed = generate(m, PROMPTS, greedy(20), pad_id=PAD, use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert len({t for row in cached.tokens for t in row}) > 4  # the model really produces varied text


def test_left_padded_row_equals_prompt_alone(model64):
    batch = generate(model64, PROMPTS, greedy(16), pad_id=PAD)
    for prompt, row in zip(PROMPTS, batch.tokens):
        assert generate(model64, [prompt], greedy(16), pad_id=PAD).tokens[0] == row
    # and the pad id itself does not matter: it is masked out
    assert generate(model64, PROMPTS, greedy(16), pad_id=299).tokens == batch.tokens


def test_cached_logits_equal_uncached_logits_at_every_step(model):
    # Left-padded batch: the same masks/positions generate() builds, fed by hand step by step.
    P, N = 7, 6
    lengths = [len(p) for p in PROMPTS]
    ids = torch.full((len(PROMPTS), P + N), PAD)
    for row, prompt in enumerate(PROMPTS):
        ids[row, P - len(prompt) : P] = torch.tensor(prompt)
    ids[:, P:] = torch.randint(1, 300, (len(PROMPTS), N), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(P + N)[None, :] >= torch.tensor([P - n for n in lengths])[:, None]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model.config, len(PROMPTS), P + N)
    with torch.no_grad():
        for cur in range(P, P + N + 1):
            start = cache.length
            cached = model(
                ids[:, start:cur], attention_mask=mask[:, :cur], position_ids=positions[:, start:cur], cache=cache
            )
            full = model(ids[:, :cur], attention_mask=mask[:, :cur])  # positions derived from the mask
            torch.testing.assert_close(cached[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    assert cache.length == P + N


# ---- stopping ---------------------------------------------------------------------------------------------


def test_stop_tokens_end_rows_and_the_rest_continue(model64):
    plain = generate(model64, PROMPTS, greedy(20), pad_id=PAD).tokens
    stop = plain[1][2]  # a token that row 1 emits at step 3
    out = generate(model64, PROMPTS, greedy(20, stop_tokens=(stop,)), pad_id=PAD)
    for row, full, finished in zip(out.tokens, plain, out.finished):
        if stop in full:
            assert finished and row == full[: full.index(stop) + 1] and row[-1] == stop
        else:
            assert not finished and row == full
    assert out.finished[1] and len(out.tokens[1]) == 3


def test_all_rows_stopped_exits_early(model64):
    plain = generate(model64, PROMPTS, greedy(20), pad_id=PAD).tokens
    stops = tuple(row[0] for row in plain)  # every row stops at its first token
    out = generate(model64, PROMPTS, greedy(20, stop_tokens=stops), pad_id=PAD)
    assert out.tokens == [[row[0]] for row in plain]
    assert out.finished == [True] * len(PROMPTS)


def test_min_new_tokens_bans_the_stop_tokens_until_each_row_has_that_many(model64):
    plain = generate(model64, PROMPTS, greedy(20), pad_id=PAD).tokens
    stops = tuple(row[0] for row in plain)  # without the ban, every row would stop at its first token
    out = generate(model64, PROMPTS, greedy(20, stop_tokens=stops, min_new_tokens=3), pad_id=PAD,
                   return_logprobs=True)
    for row, logprobs in zip(out.tokens, out.logprobs):
        assert len(row) >= 4 and not set(row[:3]) & set(stops)  # 3 tokens, then a stop may end it
    # the log-probs are those of the banned distribution: the stop tokens' mass went to the others
    prompt, completion = PROMPTS[0], out.tokens[0]
    with torch.no_grad():
        logits = model64(torch.tensor([prompt + completion]))[0, len(prompt) - 1: -1].float()
    logits[:3, list(stops)] = float("-inf")
    expected = F.log_softmax(logits, dim=-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.logprobs[0]), expected, atol=1e-5, rtol=1e-5)
    sampled = generate(model64, PROMPTS * 8, SamplingConfig(max_new_tokens=6, stop_tokens=stops, min_new_tokens=2,
                                                            temperature=3.0, seed=0), pad_id=PAD)
    assert min(len(t) for t in sampled.tokens) >= 3 and any(sampled.finished)


def test_max_new_tokens_is_respected(model):
    out = generate(model, PROMPTS, SamplingConfig(max_new_tokens=9, seed=0), pad_id=PAD, return_logprobs=True)
    assert [len(t) for t in out.tokens] == [9] * 4
    assert [len(lp) for lp in out.logprobs] == [9] * 4
    assert out.finished == [False] * 4


# ---- sampling -----------------------------------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different_output(model):
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.5, seed=3)
    a = generate(model, PROMPTS, cfg, pad_id=PAD).tokens
    assert generate(model, PROMPTS, cfg, pad_id=PAD).tokens == a
    assert generate(model, PROMPTS, SamplingConfig(max_new_tokens=12, temperature=1.5, seed=4), pad_id=PAD).tokens != a


def test_sampling_with_cache_equals_without(model64):
    cfg = SamplingConfig(max_new_tokens=12, top_k=50, top_p=0.9, seed=7)
    assert generate(model64, PROMPTS, cfg, pad_id=PAD).tokens == generate(
        model64, PROMPTS, cfg, pad_id=PAD, use_cache=False
    ).tokens


def test_top_k_1_and_tiny_top_p_equal_greedy(model64):
    expected = generate(model64, PROMPTS, greedy(15), pad_id=PAD).tokens
    for cfg in (SamplingConfig(max_new_tokens=15, top_k=1, seed=0),
                SamplingConfig(max_new_tokens=15, top_p=1e-6, seed=1)):
        assert generate(model64, PROMPTS, cfg, pad_id=PAD).tokens == expected


def test_logprobs_are_of_the_unfiltered_tempered_distribution(model64):
    out = generate(model64, PROMPTS, greedy(6, temperature=0.7), pad_id=PAD, return_logprobs=True)
    for prompt, completion, logprobs in zip(PROMPTS, out.tokens, out.logprobs):
        seq = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model64(seq)[0, len(prompt) - 1 : -1]
        expected = F.log_softmax(logits.float() / 0.7, dim=-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-5, rtol=1e-5)
    # top_k=1 picks the same tokens but the log-probs are NOT 0: filtering does not renormalise them
    topk = generate(model64, PROMPTS, SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=1, seed=0), pad_id=PAD,
                    return_logprobs=True)
    assert topk.logprobs == out.logprobs and max(max(r) for r in topk.logprobs) < 0


def test_eval_mode_during_generation_and_mode_restored():
    m = random_model(dropout=0.5).train()
    a = generate(m, PROMPTS, greedy(10), pad_id=PAD).tokens
    assert m.training
    assert generate(m, PROMPTS, greedy(10), pad_id=PAD).tokens == a  # dropout was off both times


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), r"temperature=0.0 must be a finite number > 0; for deterministic output set greedy=True"),
        (dict(temperature=float("nan")), r"temperature=nan must be a finite number > 0"),
        (dict(temperature=float("inf")), r"temperature=inf must be a finite number > 0"),
        (dict(temperature=-1), r"temperature=-1 must be a finite number > 0"),
        (dict(top_k=0), r"top_k=0 must be an integer >= 1"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
        (dict(max_new_tokens=0), r"max_new_tokens=0 must be an integer >= 1"),
        (dict(stop_tokens=(-1,)), r"stop_tokens=\(-1,\) must be non-negative token ids"),
        (dict(seed="x"), r"seed='x' must be an integer"),
        (dict(min_new_tokens=5), r"min_new_tokens=5 must be an integer in \[0, max_new_tokens=4\]"),
    ],
)
def test_sampling_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{"max_new_tokens": 4, **kwargs})


def test_prompt_plus_new_tokens_beyond_block_size_is_refused(model):
    with pytest.raises(ValueError, match=r"longest prompt \(60 tokens\) \+ max_new_tokens \(10\) = 70 exceeds "
                                         r"block_size 64; shorten the prompts or lower max_new_tokens to 4"):
        generate(model, [[1] * 60, [2]], greedy(10), pad_id=PAD)


def test_bad_prompts_are_refused(model):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []], greedy(2), pad_id=PAD)
    with pytest.raises(ValueError, match=r"prompt 0 has token id 300 outside the vocabulary \[0, 300\)"):
        generate(model, [[1, 300]], greedy(2), pad_id=PAD)
    with pytest.raises(ValueError, match=r"pad_id=300 is outside the vocabulary"):
        generate(model, [[1]], greedy(2), pad_id=300)


# ---- text in, text out ----------------------------------------------------------------------------------------


def test_generate_text_stops_at_eot_and_hides_it():
    tokenizer_module = pytest.importorskip("rlfl.tokenizer")
    tok = tokenizer_module.byte_tokenizer()
    m = random_model(vocab_size=tok.n_vocab)
    prompts = ["Hello", ""]
    # Make <|endoftext|> the only likely token so every row ends on it at once.
    with torch.no_grad():
        m.wte.weight[tok.eot_id] = 0
        m.ln_f.weight.fill_(1.0)
        m.ln_f.bias.zero_()
        m.ln_f.bias[0] = 50.0
        m.wte.weight[tok.eot_id, 0] = 1.0
    texts = generate_text(m, tok, prompts, SamplingConfig(max_new_tokens=5, seed=0))
    assert texts == ["", ""]
    # Without the forced EOT, text comes back decoded and the same as decoding generate()'s tokens.
    m2 = random_model(vocab_size=tok.n_vocab)
    cfg = SamplingConfig(max_new_tokens=5, greedy=True)
    expected = generate(m2, [tok.encode("Hi")], cfg, pad_id=tok.pad_id).tokens[0]
    got = generate_text(m2, tok, ["Hi"], cfg)[0]
    assert got == tok.decode(expected[:-1] if expected[-1] == tok.eot_id else expected)

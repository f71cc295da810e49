"""Tests for rlfl.model (GPT, GPTConfig, KVCache) and rlfl.gpt2_weights (loading HF GPT-2 directories)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from rlfl.gpt2_weights import load_gpt2
from rlfl.model import GPT, GPTConfig, KVCache

TINY = dict(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


# ---- config ------------------------------------------------------------------------------------------


def test_config_round_trip_through_dict():
    cfg = GPTConfig(**TINY, dropout=0.1, bias=False, layer_norm_eps=1e-6, n_experts=3, moe_top_k=1, aux_loss_weight=0.1)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert GPTConfig.from_dict(data) == cfg


def test_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'n_embed', 'wat'"):
        GPTConfig.from_dict({**TINY, "n_embed": 64, "wat": 1})
    data = dict(TINY)
    del data["n_layer"]
    with pytest.raises(ValueError, match=r"missing key\(s\) 'n_layer'"):
        GPTConfig.from_dict(data)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_embd=65), r"n_embd=65 is not divisible by n_head=2; pick n_embd a multiple of n_head"),
        (dict(vocab_size=0), r"vocab_size must be a positive integer, got 0"),
        (dict(n_layer=-1), r"n_layer must be a positive integer"),
        (dict(block_size=16.0), r"block_size must be a positive integer"),
        (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout=-0.1 must be in \[0, 1\)"),
        (dict(layer_norm_eps=0), r"layer_norm_eps=0 must be > 0"),
    ],
)
def test_config_validation_says_what_to_fix(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **change})


# ---- model structure -----------------------------------------------------------------------------------


def test_shapes_and_forward_is_lm_head_of_hidden_states():
    model = tiny_model()
    idx = torch.randint(0, 300, (3, 10))
    logits = model(idx)
    hidden = model.hidden_states(idx)
    assert logits.shape == (3, 10, 300)
    assert hidden.shape == (3, 10, 64)
    torch.testing.assert_close(logits, hidden @ model.wte.weight.T)


def test_lm_head_is_tied_to_token_embedding():
    model = tiny_model()
    assert model.lm_head.weight is model.wte.weight
    with torch.no_grad():
        model.wte.weight[5, 0] = 123.0
    assert model.lm_head.weight[5, 0].item() == 123.0


def test_num_params_counted_by_hand():
    C, V, L, block = 64, 300, 2, 64
    per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    non_embedding = L * per_layer + 2 * C + V * C  # blocks, ln_f, tied wte/lm_head
    model = tiny_model()
    assert model.num_params() == non_embedding == 119296
    assert model.num_params(non_embedding=False) == non_embedding + block * C
    no_bias = tiny_model(bias=False)
    assert no_bias.num_params() == L * (12 * C * C + 2 * C) + C + V * C


def test_flops_per_token_known_value():
    model = tiny_model()
    # 6 * 119296 + 12 * n_layer(2) * n_embd(64) * seq_len
    assert model.flops_per_token() == 6 * 119296 + 12 * 2 * 64 * 64 == 814080
    assert model.flops_per_token(seq_len=16) == 6 * 119296 + 12 * 2 * 64 * 16


def test_gpt2_style_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2000, block_size=64, n_layer=8, n_head=4, n_embd=128))
    assert abs(model.h[0].attn.c_attn.weight.std().item() - 0.02) < 1e-3
    assert abs(model.wte.weight.std().item() - 0.02) < 1e-3
    residual = 0.02 / math.sqrt(2 * 8)
    assert abs(model.h[3].mlp.c_proj.weight.std().item() - residual) < 3e-4
    assert abs(model.h[3].attn.c_proj.weight.std().item() - residual) < 3e-4
    assert torch.all(model.h[0].mlp.c_fc.bias == 0)
    assert torch.all(model.h[0].ln_1.weight == 1)


def test_sequence_longer_than_block_size_is_refused():
    model = tiny_model(block_size=256)
    with pytest.raises(ValueError, match=r"sequence of 300 tokens exceeds block_size 256; truncate"):
        model(torch.zeros(1, 300, dtype=torch.long))


def test_training_mode_with_dropout_backpropagates():
    model = tiny_model(dropout=0.2).train()
    idx = torch.randint(0, 300, (2, 12))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert model.wte.weight.grad is not None and torch.isfinite(model.wte.weight.grad).all()
    assert model.h[1].attn.c_attn.weight.grad.abs().sum() > 0


# ---- masks, positions, KV cache --------------------------------------------------------------------------


def test_all_ones_mask_matches_fused_causal_path():
    model = tiny_model()
    idx = torch.randint(0, 300, (2, 9))
    torch.testing.assert_close(model(idx, attention_mask=torch.ones(2, 9)), model(idx), atol=1e-5, rtol=1e-5)


def test_masked_cpu_attention_gradients_match_the_fused_causal_path():
    # a mask on a CPU goes through plain matmuls (rlfl.attention._masked_attention_cpu): same values and gradients
    torch.manual_seed(0)
    model = tiny_model()
    idx = torch.randint(0, 300, (3, 11))
    grads = []
    for mask in (None, torch.ones(3, 11)):
        model.zero_grad()
        model(idx, attention_mask=mask).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_left_padding_does_not_change_real_token_logits():
    model = tiny_model()
    short = torch.randint(1, 300, (4,))
    long = torch.randint(1, 300, (7,))
    idx = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long])
    mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    logits = model(idx, attention_mask=mask)
    assert torch.isfinite(logits).all()
    # A pad query attends to itself only (never to nothing, which is NaN on some SDPA backends), so
    # each pad position computes what a lone pad token at position 0 would.
    alone = model(torch.zeros(1, 1, dtype=torch.long))[0, 0]
    for pad_position in range(3):
        torch.testing.assert_close(logits[0, pad_position], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0, 3:], model(short[None])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], model(long[None])[0], atol=1e-5, rtol=1e-5)


def test_cache_prefill_then_steps_and_chunks_match_full_forward():
    model = tiny_model()
    idx = torch.randint(0, 300, (2, 14))
    full = model(idx)
    cache = KVCache(model.config, 2, 20)
    pieces = [model(idx[:, :5], cache=cache)]  # prefill
    pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(5, 9)]  # one token at a time
    pieces.append(model(idx[:, 9:14], cache=cache))  # a chunk after a cached prefix
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_limits_are_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"max_len=65 must be in \[1, block_size=64\]"):
        KVCache(model.config, 1, 65)
    cache = KVCache(model.config, 1, 4)
    model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"KV cache is full: 3 cached \+ 2 new > max_len 4"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"KV cache holds 1 rows but the input has 2"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)


# ---- packed sequences (segment_ids) --------------------------------------------------------------------------


def test_packed_row_equals_each_example_alone():
    model = tiny_model()
    a, b, c = (torch.randint(0, 300, (1, n)) for n in (9, 14, 5))
    segments = torch.tensor([[0] * 9 + [1] * 14 + [2] * 5])
    packed = model(torch.cat([a, b, c], dim=1), segment_ids=segments)
    for got, alone in zip(packed.split([9, 14, 5], dim=1), (a, b, c)):
        torch.testing.assert_close(got, model(alone), atol=1e-5, rtol=1e-5)


def test_packed_rows_with_padding_and_reused_ids():
    """A segment is a run of equal ids (so [7, 7, 3, 3, 7] is three segments); pads may sit in a row too."""
    model = tiny_model()
    a, b, c = (torch.randint(1, 300, (n,)) for n in (4, 6, 3))
    pad = torch.zeros(3, dtype=torch.long)
    idx = torch.stack([torch.cat([pad, a, b, c]), torch.cat([b, a, c, pad])])
    segment_ids = torch.tensor([[0] * 3 + [7] * 4 + [3] * 6 + [7] * 3, [5] * 6 + [1] * 4 + [5] * 3 + [0] * 3])
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = mask[1, 13:] = 0
    logits = model(idx, attention_mask=mask, segment_ids=segment_ids)
    assert torch.isfinite(logits).all()
    alone = {name: model(t[None])[0] for name, t in (("a", a), ("b", b), ("c", c))}
    layouts = {0: [("pad", 3), ("a", 4), ("b", 6), ("c", 3)], 1: [("b", 6), ("a", 4), ("c", 3), ("pad", 3)]}
    for row, layout in layouts.items():
        start = 0
        for name, n in layout:
            if name != "pad":
                torch.testing.assert_close(logits[row, start : start + n], alone[name], atol=1e-5, rtol=1e-5)
            start += n


def test_one_segment_equals_no_segments_and_positions_restart():
    model = tiny_model()
    idx = torch.randint(0, 300, (2, 12))
    torch.testing.assert_close(model(idx, segment_ids=torch.full((2, 12), 4)), model(idx), atol=1e-5, rtol=1e-5)
    # explicit positions override the per-segment restart: counting on from the first segment changes the second
    segments = torch.tensor([[0] * 5 + [1] * 7] * 2)
    restarted = model(idx, segment_ids=segments)
    continued = model(idx, segment_ids=segments, position_ids=torch.arange(12)[None].expand(2, -1))
    torch.testing.assert_close(restarted[:, :5], continued[:, :5])
    assert not torch.allclose(restarted[:, 5:], continued[:, 5:], atol=1e-3)


def test_continuations_of_a_shared_prefix_each_equal_prefix_plus_continuation_alone():
    model = tiny_model()
    block = model.config.block_size
    prefix, x, y, z = (torch.randint(1, 300, (n,)) for n in (block - 6, 6, 3, 5))
    # one segment: the prefix once, then three continuations; the row is wider than block_size (positions are not)
    idx = torch.cat([prefix, x, y, z, torch.zeros(2, dtype=torch.long)])[None]
    segments = torch.tensor([[1] * (block + 8) + [0] * 2])
    branches = torch.tensor([[0] * (block - 6) + [1] * 6 + [2] * 3 + [3] * 5 + [0] * 2])
    mask = (segments > 0).long()
    logits = model(idx, attention_mask=mask, segment_ids=segments, branch_ids=branches)
    torch.testing.assert_close(logits[0, : block - 6], model(prefix[None])[0], atol=1e-5, rtol=1e-5)
    start = block - 6
    for cont in (x, y, z):
        alone = model(torch.cat([prefix, cont])[None])[0, block - 6:]
        torch.testing.assert_close(logits[0, start: start + len(cont)], alone, atol=1e-5, rtol=1e-5)
        start += len(cont)
    with pytest.raises(ValueError, match="branch_ids needs segment_ids"):
        model(idx, branch_ids=branches)
    with pytest.raises(ValueError, match=f"reaches position {block + 2}, past block_size {block}"):
        model(torch.cat([prefix, x, y])[None], segment_ids=torch.ones(1, block + 3, dtype=torch.long),
              branch_ids=torch.tensor([[0] * (block - 6) + [1] * 9]))


def test_segment_ids_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"segment_ids must have shape \(batch, seq_len\) = \(1, 4\), got \(1, 5\)"):
        model(torch.zeros(1, 4, dtype=torch.long), segment_ids=torch.zeros(1, 5, dtype=torch.long))
    cache = KVCache(model.config, 1, 8)
    with pytest.raises(ValueError, match=r"segment_ids \(packed sequences\) cannot be combined with a KV cache"):
        model(torch.zeros(1, 4, dtype=torch.long), segment_ids=torch.zeros(1, 4, dtype=torch.long), cache=cache)


# ---- GPT-2 weights from a Hugging Face style directory ------------------------------------------------------

HF = dict(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=300)


def hf_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random GPT-2 weights in HF's names and Conv1D (in, out) layouts; big enough to give peaky attention."""
    g = torch.Generator().manual_seed(seed)
    C, V = HF["n_embd"], HF["vocab_size"]

    def rnd(*shape, std=0.1, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    t = {"wte.weight": rnd(V, C, std=0.3), "wpe.weight": rnd(HF["n_positions"], C, std=0.3)}
    for i in range(HF["n_layer"]):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"], t[p + ln + ".bias"] = rnd(C, mean=1.0), rnd(C)
        t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = rnd(C, 3 * C, std=0.3), rnd(3 * C)
        t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = rnd(C, C), rnd(C)
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = rnd(C, 4 * C), rnd(4 * C)
        t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = rnd(4 * C, C), rnd(C)
    t["ln_f.weight"], t["ln_f.bias"] = rnd(C, mean=1.0), rnd(C)
    return t


def write_checkpoint(directory, tensors, *, prefix="", extra=None, config=None):
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, **HF}
    (directory / "config.json").write_text(json.dumps(config if config is not None else cfg))
    out = {prefix + k: v.contiguous() for k, v in tensors.items()}
    out.update(extra or {})
    save_file(out, str(directory / "model.safetensors"))
    return directory


def reference_logits(t: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """GPT-2 forward written straight from the HF tensors in float64: x @ W + b, explicit softmax."""
    t = {k: v.double() for k, v in t.items()}
    H, eps = HF["n_head"], 1e-5
    T = ids.shape[1]
    D = HF["n_embd"] // H

    def layer_norm(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def gelu(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    def heads(x):  # (B, T, C) -> (B, H, T, D)
        return x.reshape(x.shape[0], T, H, D).transpose(1, 2)

    x = t["wte.weight"][ids] + t["wpe.weight"][torch.arange(T)]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(HF["n_layer"]):
        p = f"h.{i}."
        qkv = layer_norm(x, p + "ln_1") @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]
        q, k, v = (heads(z) for z in qkv.split(HF["n_embd"], dim=-1))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(future, float("-inf"))
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        y = (weights / weights.sum(-1, keepdim=True)) @ v
        y = y.transpose(1, 2).reshape(x.shape)
        x = x + y @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        m = gelu(layer_norm(x, p + "ln_2") @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
        x = x + m @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    return layer_norm(x, "ln_f") @ t["wte.weight"].T


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_from_gpt2_matches_independent_reference(tmp_path, prefix):
    tensors = hf_tensors()
    extra = {}
    if prefix:  # GPT2LMHeadModel layout: prefixed keys, mask buffers and an (equal) lm_head
        extra = {
            "transformer.h.0.attn.bias": torch.tril(torch.ones(1, 1, 32, 32)),
            "transformer.h.1.attn.masked_bias": torch.tensor(-1e4),
            "lm_head.weight": tensors["wte.weight"].clone(),
        }
    model = load_gpt2(write_checkpoint(tmp_path / "gpt2", tensors, prefix=prefix, extra=extra))
    assert model.config == GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=64)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(tensors, ids)
    assert expected.std() > 1.0  # weights large enough that a wrong transpose could not hide
    with torch.no_grad():
        got32 = model(ids)
        got64 = model.double()(ids)
    # float64 pins the weight mapping down; float32 (logits of size ~5) can only be held to ~1e-4.
    torch.testing.assert_close(got64, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got32.double(), expected, atol=1e-4, rtol=1e-4)
    assert model.lm_head.weight is model.wte.weight


def test_from_gpt2_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_gpt2(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json: no such file"):
        load_gpt2(tmp_path / "empty")
    d = write_checkpoint(tmp_path / "ckpt", hf_tensors())
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: no such file \(found pytorch_model\.bin"):
        load_gpt2(d)


def test_from_gpt2_missing_key(tmp_path):
    tensors = hf_tensors()
    del tensors["h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing tensor 'h\.1\.mlp\.c_fc\.bias'"):
        load_gpt2(write_checkpoint(tmp_path, tensors))


def test_from_gpt2_shape_mismatch_names_key_and_shapes(tmp_path):
    tensors = hf_tensors()
    tensors["h.0.attn.c_proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match=r"'h\.0\.attn\.c_proj\.weight' has shape \(32, 64\) .*expected \(64, 64\)"):
        load_gpt2(write_checkpoint(tmp_path, tensors))


def test_from_gpt2_rejects_extra_layers_untied_head_and_other_activations(tmp_path):
    tensors = hf_tensors()
    extra = {"h.2.ln_1.weight": torch.ones(64)}
    with pytest.raises(ValueError, match=r"unexpected tensor 'h\.2\.ln_1\.weight'.*n_layer=2"):
        load_gpt2(write_checkpoint(tmp_path / "a", tensors, extra=extra))
    extra = {"lm_head.weight": tensors["wte.weight"] + 1}
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_gpt2(write_checkpoint(tmp_path / "b", tensors, extra=extra))
    cfg = {**HF, "activation_function": "relu"}
    with pytest.raises(ValueError, match=r"activation_function 'relu' is not supported"):
        load_gpt2(write_checkpoint(tmp_path / "c", tensors, config=cfg))
    cfg = {k: v for k, v in HF.items() if k != "n_positions"} | {"n_ctx": 32}  # older configs: n_ctx only
    assert load_gpt2(write_checkpoint(tmp_path / "d", tensors, config=cfg)).config.block_size == 32

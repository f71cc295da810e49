"""Tests for rlfl.hf_models: Hugging Face GPT-2 / Llama / Qwen2 / Qwen3 folders load into rlfl's GPT with the
same logits and greedy tokens as transformers, export back exactly, and bad folders fail with clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rlfl import checkpoint as ckpt  # noqa: E402
from rlfl.generate import SamplingConfig, generate  # noqa: E402
from rlfl.export import export_hf  # noqa: E402
from rlfl.hf_models import config_from_hf, load_hf_model, save_hf_model  # noqa: E402
from rlfl.model import GPT, GPTConfig, KVCache  # noqa: E402
from rlfl.tokenizer import byte_tokenizer  # noqa: E402

VOCAB = 320  # room for a byte-level BPE's 256 base tokens
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=128, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


def hf_config(family: str):
    """Tiny configs, each exercising its family's options."""
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                       bos_token_id=None, eos_token_id=None)
    if family == "llama":  # grouped-query attention, llama3 rope scaling, tied embeddings
        return transformers.LlamaConfig(**COMMON, num_key_value_heads=2, rope_scaling=dict(LLAMA3),
                                        tie_word_embeddings=True)
    if family == "qwen2":  # q, k, v biases, GQA, untied
        return transformers.Qwen2Config(**COMMON, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=False)
    # qwen3: q/k norm, head_dim 32 != 64 / 4, untied
    return transformers.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)


FAMILIES = ("gpt2", "llama", "qwen2", "qwen3")


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Each family's random model (every weight perturbed, so biases and norms are not trivial), saved."""
    out = {}
    for i, family in enumerate(FAMILIES):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(hf_config(family)).eval()
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder)
        out[family] = (model, folder)
    return out


def random_ids(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


# ---- loading: same logits and greedy tokens as transformers ----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(hf_folders, family):
    theirs, folder = hf_folders[family]
    ours = load_hf_model(folder)
    ids = random_ids(64, 32)
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)
    assert expected.std() > 0.3  # weights large enough that a wrong mapping could not hide
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_loaded_configs_carry_each_familys_options(hf_folders):
    configs = {f: load_hf_model(hf_folders[f][1]).config for f in FAMILIES}
    assert configs["gpt2"] == GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=2, n_head=4, n_embd=64)
    llama = configs["llama"]
    assert (llama.position_embedding, llama.norm, llama.mlp, llama.n_kv_head, llama.tie_embeddings) == \
        ("rope", "rmsnorm", "swiglu", 2, True)
    assert llama.rope_scaling == LLAMA3 and llama.intermediate_size == 96
    qwen2 = configs["qwen2"]
    assert (qwen2.bias, qwen2.qkv_bias, qwen2.attn_proj_bias, qwen2.rope_theta, qwen2.tie_embeddings) == \
        (False, True, None, 1e6, False)
    qwen3 = configs["qwen3"]
    assert (qwen3.qk_norm, qwen3.head_size, qwen3.head_dim) == (True, 32, 32)


def test_llama3_rope_scaling_changes_the_logits(hf_folders):
    # the scaled frequencies are in use: the same weights without scaling give other logits
    model = load_hf_model(hf_folders["llama"][1])
    plain = GPT(GPTConfig(**{**model.config.to_dict(), "rope_scaling": None})).eval()
    plain.load_state_dict(model.state_dict())
    ids = random_ids(4, 32)
    with torch.no_grad():
        assert (model(ids) - plain(ids)).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers_generate(hf_folders, family):
    theirs, folder = hf_folders[family]
    ours = load_hf_model(folder)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    # one batched, left-padded, KV-cached call, as every stage generates
    out = generate(ours, prompts, SamplingConfig(max_new_tokens=16, greedy=True), pad_id=0)
    for prompt, tokens in zip(prompts, out.tokens):
        expected = theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=0)
        assert tokens == expected[0, len(prompt):].tolist()


def test_sharded_folder_loads_the_same_model(hf_folders, tmp_path):
    theirs, folder = hf_folders["qwen3"]
    theirs.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    one, sharded = load_hf_model(folder), load_hf_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), sharded.state_dict().values()))


# ---- the RoPE model with cache, padding, packing and ragged decoding --------------------------------------------


def rope_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False, position_embedding="rope",
               norm="rmsnorm", mlp="swiglu", intermediate_size=96, n_kv_head=2, head_size=32, qk_norm=True,
               qkv_bias=True, tie_embeddings=False, rope_scaling={"rope_type": "linear", "factor": 2.0})
    return GPT(GPTConfig(**{**cfg, **overrides})).eval()


def test_rope_cache_positions_continue_from_the_cache_length():
    model = rope_model()
    idx = random_ids(2, 20)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, 2, 24)
        pieces = [model(idx[:, :7], cache=cache)]
        pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(7, 12)]
        pieces.append(model(idx[:, 12:], cache=cache))
    assert cache.k.shape[2] == 2  # the cache holds the kv heads only
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_packed_segments_on_a_rope_model_equal_separate_forwards():
    model = rope_model()
    a, b, c = random_ids(1, 9, 1), random_ids(1, 14, 2), random_ids(1, 5, 3)
    segments = torch.tensor([[0] * 9 + [1] * 14 + [2] * 5])
    with torch.no_grad():
        packed = model(torch.cat([a, b, c], dim=1), segment_ids=segments)
        for got, alone in zip(packed.split([9, 14, 5], dim=1), (a, b, c)):
            torch.testing.assert_close(got, model(alone), atol=1e-5, rtol=1e-5)


def test_rope_left_padding_and_ragged_decode_match_unpadded_rows():
    model = rope_model()
    short, long = random_ids(1, 4, 1)[0], random_ids(1, 7, 2)[0]
    idx = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long])
    mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    with torch.no_grad():
        logits = model(idx, attention_mask=mask)
        torch.testing.assert_close(logits[0, 3:], model(short[None])[0], atol=1e-5, rtol=1e-5)
        # a ragged decode step: row 1 writes its first token at cache column 3, at position 0
        cache = KVCache(model.config, 2, 8)
        key_mask = torch.zeros(2, 8, dtype=torch.bool)
        key_mask[0, 0] = key_mask[1, 3] = True
        h = model.decode_ragged(torch.tensor([5, 7]), cache, columns=torch.tensor([0, 3]),
                                position_ids=torch.tensor([0, 0]), key_mask=key_mask)
        torch.testing.assert_close(h[1], model.hidden_states(torch.tensor([[7]]))[0, 0], atol=1e-6, rtol=1e-6)


def test_moe_with_rope_and_swiglu_keeps_cache_equal_to_full_forward():
    model = rope_model(n_experts=4, moe_top_k=2)
    idx = random_ids(2, 12)
    with torch.no_grad():
        cache = KVCache(model.config, 2, 12)
        stepped = torch.cat([model(idx[:, :6], cache=cache)] + [model(idx[:, t : t + 1], cache=cache)
                                                                 for t in range(6, 12)], dim=1)
        torch.testing.assert_close(stepped, model(idx), atol=1e-5, rtol=1e-5)
    model.train()
    model(idx).sum().backward()
    assert model.aux_loss is not None and model.h[0].mlp.experts[0].c_fc.weight.grad is not None


# ---- config ----------------------------------------------------------------------------------------------------


def test_old_config_dicts_load_to_the_gpt2_defaults():
    old = dict(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0, bias=True,
               layer_norm_eps=1e-5, n_experts=0, moe_top_k=2, aux_loss_weight=0.01)
    cfg = GPTConfig.from_dict(old)
    assert (cfg.position_embedding, cfg.norm, cfg.mlp, cfg.kv_heads, cfg.head_dim, cfg.mlp_width) == \
        ("learned", "layernorm", "gelu", 2, 32, 256)
    assert GPTConfig.from_dict(json.loads(json.dumps(rope_model().config.to_dict()))) == rope_model().config


@pytest.mark.parametrize("change, message", [
    (dict(norm="batchnorm"), r"norm='batchnorm' is not one of 'layernorm', 'rmsnorm'"),
    (dict(n_kv_head=3), r"n_kv_head=3 must divide n_head=4"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     r"rope_type must be one of 'default', 'linear', 'llama3'"),
    (dict(rope_scaling={"rope_type": "linear"}), r"missing factor"),
    (dict(position_embedding="learned"), r"rope_scaling applies to rotary embeddings only"),
    (dict(head_size=33, qk_norm=False), r"rotary embeddings need an even head width, got 33"),
])
def test_architecture_options_are_validated(change, message):
    with pytest.raises(ValueError, match=message):
        rope_model(**change)


# ---- export ----------------------------------------------------------------------------------------------------


def _logits_after_round_trip(model: GPT, folder, ids):
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return reloaded(ids).logits, model(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_hf_model_round_trips_through_transformers(hf_folders, family, tmp_path):
    model = load_hf_model(hf_folders[family][1])
    assert save_hf_model(model, tmp_path) == family
    ids = random_ids(8, 24)
    theirs, ours = _logits_after_round_trip(model, tmp_path, ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert load_hf_model(tmp_path).config == model.config


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_rlfl_native_models_export_exactly(style, tmp_path):
    torch.manual_seed(0)
    if style == "gpt2":  # a fresh rlfl GPT-2-style model without biases: HF's GPT-2 gets zero biases
        model = GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False))
    else:  # a Llama-style GPTConfig trained for 0 steps
        model = GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=4, n_embd=32, bias=False,
                              position_embedding="rope", norm="rmsnorm", mlp="swiglu", intermediate_size=48,
                              n_kv_head=2, tie_embeddings=False, layer_norm_eps=1e-6))
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf_model(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == style
    theirs, ours = _logits_after_round_trip(model, tmp_path, random_ids(8, 24))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_lora_adapters_are_merged_on_export(tmp_path):
    lora = pytest.importorskip("rlfl.lora")
    model = lora.apply_lora(rope_model(qkv_bias=None), lora.LoRASettings(lora_rank=4), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.1)
    assert save_hf_model(model, tmp_path) == "qwen3"
    assert any(n.endswith("lora_A") for n, _ in model.named_parameters())  # the caller's model keeps its adapters
    theirs, ours = _logits_after_round_trip(model, tmp_path, random_ids(4, 16))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_untied_model_survives_an_rlfl_checkpoint(tmp_path):
    model, tok = rope_model(vocab_size=byte_tokenizer().n_vocab), byte_tokenizer()
    ckpt.save_checkpoint(tmp_path, model, tok, stage="pretrain")
    loaded = ckpt.load_checkpoint(tmp_path).model
    assert loaded.lm_head.weight.data_ptr() != loaded.wte.weight.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_export_refuses_models_without_an_hf_equivalent(tmp_path):
    tok = byte_tokenizer()
    moe = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=16, n_layer=1, n_head=2, n_embd=16, n_experts=2))
    with pytest.raises(ValueError, match=r"^n_experts=2: mixture-of-experts models have no Hugging Face equivalent"):
        export_hf(ckpt.Checkpoint(moe, tok, {}, tmp_path), tmp_path / "out")
    mixed = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="rmsnorm"))
    with pytest.raises(ValueError, match=r"^norm='rmsnorm' with learned positions has no Hugging Face equivalent"):
        export_hf(ckpt.Checkpoint(mixed, tok, {}, tmp_path), tmp_path / "out")
    plain = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=r"a reward model's scalar head has no place in a causal-LM folder"):
        export_hf(ckpt.Checkpoint(plain, tok, {"stage": "reward"}, tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- bad folders ------------------------------------------------------------------------------------------------


def _copy(folder, tmp_path, **config_changes):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_pytorch_bin_only_is_refused_with_the_fix(hf_folders, tmp_path):
    folder = _copy(hf_folders["llama"][1], tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: no such file \(found pytorch_model\.bin, "
                                                r"which is a pickle we do not load; convert it to safetensors"):
        load_hf_model(folder)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="mistral"), r"config\.json: model_type 'mistral' is not supported; rlfl loads gpt2, llama"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
     r"config\.json: rope_parameters rope_type 'yarn' is not supported"),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}),
     r"config\.json: rope_scaling rope_type 'dynamic' is not supported"),
    (dict(hidden_act="gelu"), r"config\.json: hidden_act 'gelu' is not supported for llama"),
    (dict(sliding_window=16, use_sliding_window=True, max_window_layers=0, layer_types=None),
     r"config\.json: sliding_window=16 is in use"),
    (dict(num_hidden_layers=1), r"unexpected tensor 'model\.layers\.1\.[a-z_.]+'.*n_layer=1"),
])
def test_unsupported_configs_name_the_field(hf_folders, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_hf_model(_copy(hf_folders["llama"][1], tmp_path, **changes))


def test_unused_sliding_window_is_accepted():
    cfg, family = config_from_hf({**hf_config("qwen2").to_dict(), "sliding_window": 4096, "use_sliding_window": False})
    assert family == "qwen2" and cfg.block_size == 128


# ---- hf:PATH checkpoints and `rlfl export` (with the folder's tokenizer) -----------------------------------------


def _with_tokenizer(folder, tmp_path):
    """A copy of the folder with a small byte-level BPE tokenizer.json that fits its vocabulary."""
    tokenizers = pytest.importorskip("tokenizers")
    target = _copy(folder, tmp_path)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(target)
    return target


def test_hf_checkpoint_and_export_command(hf_folders, tmp_path):
    pytest.importorskip("rlfl.hf_tokenizer")
    from rlfl.cli import main

    folder = _with_tokenizer(hf_folders["qwen2"][1], tmp_path)
    spec = f"hf:{folder}"
    assert ckpt.is_checkpoint(spec) and not ckpt.is_checkpoint(f"hf:{tmp_path / 'nope'}")
    loaded = ckpt.load_checkpoint(spec)
    assert loaded.config["stage"] == "hf" and ckpt.read_config(spec)["model"] == loaded.model.config.to_dict()
    source, block = ckpt.load_for_finetuning(spec, 64)
    assert block == 64 and source.model.config.qkv_bias is True
    ids = loaded.tokenizer.encode("the cat")
    n_vocab = loaded.tokenizer.n_vocab
    # the embedding rows no token id reaches are dropped: one row per id, as every rlfl model has
    assert loaded.model.config.vocab_size == n_vocab < VOCAB and not loaded.model.config.tie_embeddings
    with torch.no_grad():
        expected = hf_folders["qwen2"][0](torch.tensor([ids])).logits
        torch.testing.assert_close(loaded.model(torch.tensor([ids])), expected[..., :n_vocab], atol=1e-4, rtol=0)
    out = tmp_path / "exported"
    assert main(["export", spec, "--format", "hf", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) >= ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json"]
    theirs, ours = _logits_after_round_trip(loaded.model, out, torch.tensor([ids]))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    with pytest.raises(SystemExit):  # an existing export is replaced only with --overwrite
        main(["export", spec, "--out", str(out)])
    assert main(["export", spec, "--out", str(out), "--overwrite"]) == 0


def test_native_checkpoint_exports_with_its_tokenizer(tmp_path):
    pytest.importorskip("rlfl.hf_tokenizer")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=32, n_layer=1, n_head=2, n_embd=32)).eval()
    ckpt.save_checkpoint(tmp_path / "ckpt", model, tok, stage="pretrain")
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.eot_id, tok.special_tokens["<|end|>"]]  # end of text, end of turn
    ids = torch.tensor([tok.encode("hello there")])
    theirs, ours = _logits_after_round_trip(model, out, ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

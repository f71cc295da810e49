"""GPTConfig's architecture options as `rlfl pretrain` settings: the same names, defaults and help, defined once."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from rlfl.config import add_arguments, build
from rlfl.model import GPTConfig
from rlfl.pretrain import PretrainConfig, new_model_config

# GPTConfig fields a pretraining run sets otherwise: the vocabulary is the tokenizer's, the context is the
# run's --block-size, and rope_scaling stretches an existing model's positions (a folder's config sets it).
NOT_FLAGS = {"vocab_size", "block_size", "rope_scaling"}


def test_default_pretrain_config_builds_the_gpt2_model_it_always_built():
    assert new_model_config(PretrainConfig(), 300) == GPTConfig(vocab_size=300, block_size=64, n_layer=4, n_head=4,
                                                                n_embd=128)


def test_every_architecture_option_is_a_pretrain_setting_with_gptconfigs_help():
    options = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    for f in dataclasses.fields(GPTConfig):
        if f.name in NOT_FLAGS:
            continue
        assert f.name in options, f"GPTConfig.{f.name} has no `rlfl pretrain` setting"
        assert options[f.name].metadata["help"].startswith(f.metadata["help"])
        if f.default is not dataclasses.MISSING:
            assert options[f.name].default == f.default


def test_llama_flags_reach_the_new_models_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser, PretrainConfig)
    flags = ["--position-embedding", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--n-kv-head", "2",
             "--intermediate-size", "96", "--no-bias", "--qkv-bias", "--qk-norm", "--head-size", "16",
             "--rope-theta", "5e5", "--no-tie-embeddings", "--n-layer", "3", "--n-embd", "64"]
    cfg = build(PretrainConfig, {}, vars(parser.parse_args(flags)))
    model = new_model_config(cfg, 300)
    assert (model.position_embedding, model.norm, model.mlp, model.kv_heads, model.mlp_width, model.head_dim) == \
        ("rope", "rmsnorm", "swiglu", 2, 96, 16)
    assert (model.bias, model.bias_of("qkv_bias"), model.bias_of("mlp_bias"), model.qk_norm) == \
        (False, True, False, True)
    assert (model.rope_theta, model.tie_embeddings, model.n_layer, model.n_embd) == (5e5, False, 3, 64)


def test_a_bad_option_fails_when_the_config_is_built_not_after_loading_data():
    with pytest.raises(ValueError, match=r"GPTConfig\.norm='batchnorm' is not one of 'layernorm', 'rmsnorm'"):
        PretrainConfig(norm="batchnorm")
    with pytest.raises(ValueError, match=r"GPTConfig\.n_kv_head=3 must divide n_head=4"):
        PretrainConfig(n_kv_head=3)
    # with --init-from the model comes from the checkpoint, so a new model's options are not checked
    assert PretrainConfig(init_from="runs/base", n_kv_head=3).n_kv_head == 3

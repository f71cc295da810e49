"""Tests for the mixture-of-experts MLP (rlfl.moe) and its contract with the model and the Trainer."""

from __future__ import annotations

import csv
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.generate import SamplingConfig, generate
from rlfl.model import GPT, GPTConfig
from rlfl.moe import MoE, balance_loss
from rlfl.pretrain import PretrainConfig, pretrain
from rlfl.tokenizer import Tokenizer, byte_tokenizer
from rlfl.trainer import TrainConfig

TINY_MOE = dict(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64, n_experts=4, moe_top_k=2)


def moe_model(seed: int = 0, *, std: float | None = None, dtype: torch.dtype = torch.float32, **overrides) -> GPT:
    """A tiny 4-expert top-2 model in eval mode; std re-draws every weight (large = decisive routing)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY_MOE, **overrides}))
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std)
    return model.to(dtype).eval()


# ---- config --------------------------------------------------------------------------------------------


def test_moe_config_round_trip_and_old_configs_load_dense():
    cfg = GPTConfig(**TINY_MOE, aux_loss_weight=0.05)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in TINY_MOE.items() if k not in ("n_experts", "moe_top_k")}  # a round-1 config.json
    loaded = GPTConfig.from_dict(old)
    assert (loaded.n_experts, loaded.moe_top_k, loaded.aux_loss_weight) == (0, 2, 0.01)
    assert not isinstance(GPT(loaded).h[0].mlp, MoE)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_experts=1), r"n_experts=1 must be 0 \(dense MLP\) or an integer >= 2"),
        (dict(n_experts=-2), r"n_experts=-2 must be 0 \(dense MLP\) or an integer >= 2"),
        (dict(n_experts=4.0), r"n_experts=4.0 must be 0"),
        (dict(moe_top_k=0), r"moe_top_k=0 must be an integer >= 1; 2 is the usual choice"),
        (dict(moe_top_k=5), r"moe_top_k=5 exceeds n_experts=4; set moe_top_k <= 4"),
        (dict(aux_loss_weight=-0.1), r"aux_loss_weight=-0.1 must be a finite number >= 0"),
        (dict(aux_loss_weight=float("nan")), r"aux_loss_weight=nan must be a finite number >= 0"),
    ],
)
def test_moe_config_validation_says_what_to_fix(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY_MOE, **change})


def test_every_config_field_has_help():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(GPTConfig))


# ---- the layer -------------------------------------------------------------------------------------------


def test_dispatch_equals_dense_reference():
    """The gather/scatter dispatch computes sum_k gate_k * expert_k(x), checked against every expert on every token."""
    torch.manual_seed(0)
    model = moe_model(std=0.3, dtype=torch.float64)
    layer = model.h[0].mlp
    x = torch.randn(3, 11, 64, dtype=torch.float64)
    weights, experts, _ = layer.router(x.reshape(-1, 64))
    every = torch.stack([e(x.reshape(-1, 64)) for e in layer.experts], dim=1)  # (N, E, C)
    chosen = every.gather(1, experts[..., None].expand(-1, -1, 64))  # (N, k, C)
    expected = (weights.double()[..., None] * chosen).sum(1).reshape(3, 11, 64)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)
    assert len(set(experts.flatten().tolist())) == 4  # every expert really served tokens


def test_top1_keeps_router_probability_so_the_router_learns():
    # aux off: any router gradient here comes from the language-model loss through the gate weights
    model = moe_model(moe_top_k=1, aux_loss_weight=0.0).train()
    x = torch.randint(0, 300, (2, 16))
    F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    assert model.aux_loss is None
    assert model.h[0].mlp.router.gate.weight.grad.abs().sum() > 0


def test_balance_loss_values():
    uniform = torch.full((6, 2), 0.5)
    assert balance_loss(torch.tensor([3, 3]), uniform).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0]] * 6)
    assert balance_loss(torch.tensor([6, 0]), collapsed).item() == pytest.approx(2.0)  # = n_experts


def test_aux_loss_gradient_reaches_the_router_and_rebalances_it():
    """Optimising the aux loss alone drives a router that sends every token to expert 0 towards uniform."""
    torch.manual_seed(0)
    layer = MoE(16, n_experts=4, top_k=2, make_expert=lambda: torch.nn.Linear(16, 16)).train()
    direction = torch.randn(16)
    direction /= direction.norm()
    x = torch.randn(256, 16) + 3.0 * direction  # every token shares a component ...
    with torch.no_grad():
        layer.router.gate.weight[0] = 2.0 * direction  # ... that expert 0's router row loves
    opt = torch.optim.Adam(layer.router.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        layer(x)
        share = layer.load.max().item() / layer.load.sum().item()
        first = share if first is None else first
        opt.zero_grad()
        layer.aux_loss.backward()
        assert layer.router.gate.weight.grad.abs().sum() > 0
        opt.step()
    assert first == 0.5  # top-2: expert 0 was in every token's pair, the most any expert can get
    assert share < 0.3 and layer.aux_loss.item() < 1.05


def test_idle_expert_gets_zero_gradients_not_none():
    """DDP needs a gradient for every parameter; an expert that received no token gets zeros."""
    torch.manual_seed(0)
    layer = MoE(16, n_experts=4, top_k=2, make_expert=lambda: torch.nn.Linear(16, 16)).train()
    direction = torch.randn(16)
    x = torch.randn(64, 16) + 2.0 * direction
    with torch.no_grad():
        layer.router.gate.weight[3] = -5.0 * direction  # expert 3 scores last for every token
    (layer(x).square().sum() + layer.aux_loss).backward()
    assert layer.load[3] == 0 and layer.load.sum() == 128
    assert all(p.grad is not None and not p.grad.any() for p in layer.experts[3].parameters())
    assert all(p.grad is not None and p.grad.any() for p in layer.experts[0].parameters())


# ---- the contract with the Trainer ---------------------------------------------------------------------------


def test_aux_loss_and_expert_load_contract():
    model = moe_model()
    x = torch.randint(0, 300, (2, 16))
    assert model.aux_loss is None and model.expert_load() == {}
    model(x)  # eval mode: nothing recorded
    assert model.aux_loss is None and model.expert_load() == {}
    model.train()
    with torch.no_grad():
        model(x)
    assert model.aux_loss is None  # no graph under no_grad
    model(x)
    aux = model.aux_loss
    assert aux.dim() == 0 and aux.requires_grad
    # near-uniform router at init: each layer's balance loss is about 1, so the sum is ~ weight * n_layer
    assert aux.item() == pytest.approx(0.01 * 2, rel=0.2)
    assert all(block.mlp.aux_loss is None for block in model.h)  # the layers keep no graph reference
    load = model.expert_load()
    names = ("max_load", "min_load", "expert0", "expert1", "expert2", "expert3")
    expected = {"moe/max_load", "moe/min_load"} | {f"moe/layer{i}/{name}" for i in range(2) for name in names}
    assert set(load) == expected
    for i in range(2):
        assert sum(load[f"moe/layer{i}/expert{e}"] for e in range(4)) == pytest.approx(1.0)
    # the next forward releases the previous step's graph
    ref = weakref.ref(aux)
    del aux
    model(x)
    assert ref() is None
    model.eval()
    model(x)
    assert model.aux_loss is None


def test_expert_load_of_a_big_moe_has_few_keys():
    model = moe_model(n_experts=32, n_embd=32).train()
    model(torch.randint(0, 300, (1, 8)))
    assert sorted(model.expert_load()) == sorted(
        ["moe/max_load", "moe/min_load"] + [f"moe/layer{i}/{m}" for i in range(2) for m in ("max_load", "min_load")]
    )


def test_dense_model_has_no_aux_loss_or_expert_load():
    model = moe_model(n_experts=0).train()
    model(torch.randint(0, 300, (2, 8)))
    assert model.aux_loss is None and model.expert_load() == {}


def test_active_params_and_flops():
    C, L = 64, 2
    per_expert = (4 * C * C + 4 * C) + (4 * C * C + C)
    dense = moe_model(n_experts=0).num_params()
    model = moe_model()
    assert model.num_params() == dense + L * (3 * per_expert + 4 * C)  # 3 more experts + a router per layer
    assert model.num_params(active=True) == dense + L * (1 * per_expert + 4 * C)  # 2 of 4 experts run
    assert model.flops_per_token(seq_len=16) == 6 * model.num_params(active=True) + 12 * L * C * 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_shards):
    """Pretrain the 4-expert top-2 model for 150 steps through the real pretrain stage and Trainer.

    `pretrain` builds dense models only, so the MoE model is handed to it as an init checkpoint (the
    continued-pretraining path). Returns {aux weight: (run dir, metrics by step)}.
    """
    runs = {}
    tok = Tokenizer.load(synthetic_shards)
    for weight in (0.01, 0.0):
        base = tmp_path_factory.mktemp(f"moe_aux{weight}")
        torch.manual_seed(0)
        model = GPT(GPTConfig(**{**TINY_MOE, "vocab_size": tok.n_vocab, "aux_loss_weight": weight}))
        save_checkpoint(base / "init", model, tok, stage="init")
        train = TrainConfig(out_dir=str(base / "run"), max_steps=150, batch_size=8, lr=3e-3, min_lr=3e-4,
                            warmup_steps=10, eval_interval=0, eval_steps=4, log_interval=10, checkpoint_interval=0,
                            progress=False, device="cpu", num_threads=1)
        pretrain(PretrainConfig(data=str(synthetic_shards), init_from=str(base / "init"), block_size=64,
                                sample_tokens=0, train=train))
        metrics: dict[int, dict[str, float]] = {}
        with open(base / "run" / "metrics.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                metrics.setdefault(int(row["step"]), {})[row["name"]] = float(row["value"])
        runs[weight] = (base / "run", metrics)
    return runs


def test_moe_pretrains_and_the_aux_loss_keeps_experts_balanced(trained):
    run, metrics = trained[0.01]
    first, last = metrics[10], metrics[150]
    assert last["train/loss"] < 0.7 * first["train/loss"] and last["val/loss"] < 2.7  # ln(262) = 5.57 at init
    loads = {k: v for k, v in last.items() if k.startswith("moe/layer") and "/expert" in k}
    assert len(loads) == 8
    # Shares of token-slots: with top-2 no expert can exceed 0.5 (it would be in every token's pair);
    # uniform is 0.25. At the end every expert in every layer does real work and none dominates.
    assert max(loads.values()) < 0.4 and min(loads.values()) > 0.1
    assert last["moe/max_load"] == max(loads.values())
    # Without the balancing loss the same run ends far less balanced: the loss is doing the work.
    _, unbalanced = trained[0.0]
    assert unbalanced[150]["moe/min_load"] < 0.5 * last["moe/min_load"]
    assert load_checkpoint(run).model.config.n_experts == 4


# ---- generation, checkpoints, packing ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_greedy_generation_with_cache_equals_without(dtype):
    model = moe_model(seed=2, std=0.2, dtype=dtype)  # a seed whose greedy text wanders, not loops
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15], [200, 201, 202, 203]]
    config = SamplingConfig(max_new_tokens=20, greedy=True)
    cached = generate(model, prompts, config, pad_id=0)
    recomputed = generate(model, prompts, config, pad_id=0, use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert len({t for row in cached.tokens for t in row}) > 4


def test_trained_moe_generation_with_cache_equals_without(trained):
    model = load_checkpoint(trained[0.01][0]).model
    tok = byte_tokenizer()
    prompts = [tok.encode("This product"), tok.encode("I")]
    config = SamplingConfig(max_new_tokens=24, greedy=True)
    assert generate(model, prompts, config, pad_id=tok.pad_id).tokens == \
        generate(model, prompts, config, pad_id=tok.pad_id, use_cache=False).tokens


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = moe_model(std=0.1, aux_loss_weight=0.02)
    save_checkpoint(tmp_path, model, byte_tokenizer(), stage="pretrain")
    loaded = load_checkpoint(tmp_path).model
    assert loaded.config == model.config
    assert sorted(loaded.state_dict()) == sorted(model.state_dict())
    idx = torch.randint(0, 300, (3, 20))
    assert torch.equal(loaded(idx), model(idx))


def test_packed_moe_row_equals_each_example_alone():
    model = moe_model(std=0.1)
    a, b = torch.randint(0, 300, (1, 9)), torch.randint(0, 300, (1, 14))
    packed = model(torch.cat([a, b], dim=1), segment_ids=torch.tensor([[0] * 9 + [1] * 14]))
    torch.testing.assert_close(packed[:, :9], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 9:], model(b), atol=1e-5, rtol=1e-5)
    assert math.isfinite(packed.sum().item())

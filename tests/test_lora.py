"""LoRA: exact identity at init and with the adapters off, merging, checkpoints, what trains, errors, and the
stages with adapters (SFT, reward model, DPO, PPO/GRPO with the frozen base as the KL reference)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import rlfl.envs
import torch
import torch.nn.functional as F
from rlfl.agents import GRPO, PPO, make_text_vec_env
from rlfl.agents.policy import PolicyNetwork
from rlfl.agents.settings import PPOSettings
from safetensors.torch import load_file
from torch import nn

from conftest import lower_share, rollout_scores
from rlfl import checkpoint as ckpt
from rlfl import config as cfglib
from rlfl.cli import build_parser, main
from rlfl.dpo import DPOConfig, dpo
from rlfl.instruct_tasks import reverse_words
from rlfl.lora import (
    FrozenBase,
    LoRALinear,
    LoRASettings,
    adapters_disabled,
    apply_lora,
    lora_layers,
    merge_lora,
    select_layers,
)
from rlfl.model import GPT, GPTConfig
from rlfl.reward import RewardModel, RewardTrainConfig, load_reward_model, train_reward_model
from rlfl.sft import SFTConfig, sft
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig, make_optimizer

EVERY_BLOCK = ["attn", "mlp"]
WORDS = "the movie was very quite rather really plot acting film story".split()


# a Llama-family shape: rotary positions, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head
LLAMA = dict(position_embedding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False, tie_embeddings=False)


def _gpt(seed: int = 0, block_size: int = 32, *, steerable: bool = False, llama: bool = False) -> GPT:
    """A tiny byte-level GPT (``llama``: of the Llama family's shape); ``steerable``: token embeddings 5x, an
    untied head 10x and block matrices 3x larger than at init.

    An untrained GPT's small weights give near-uniform logits that only the tied embeddings can move much: an
    adapter's change passes through frozen 0.02-std matrices on its way to the logits. A LoRA learning check
    needs a base whose blocks can steer its output, as a trained model's can.
    """
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=byte_tokenizer().n_vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=64,
                        **(LLAMA if llama else {})))
    if steerable:
        with torch.no_grad():
            gpt.wte.weight.mul_(5.0)
            if not gpt.config.tie_embeddings:  # after the final RMSNorm only the head's scale sets the logits'
                gpt.lm_head.weight.mul_(10.0)
            for block in gpt.h:
                for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                    layer.weight.mul_(3.0)
    return gpt


def _tokens(seed: int = 1, shape: tuple[int, int] = (4, 16)) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def _train_adapters(model: nn.Module, steps: int = 5) -> None:
    """A few AdamW steps of next-token loss on random tokens, on whatever requires grad."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = _tokens(2, (8, 17))
    for _ in range(steps):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(("lora_A", "lora_B"))}


def _train_cfg(out: Path, steps: int, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), max_steps=steps, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                weight_decay=0.0, eval_interval=0, checkpoint_interval=0, seed=0, progress=False, num_threads=1)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------- the layer
def test_the_adapted_model_is_exactly_its_base_at_init_and_with_the_adapters_off():
    model, x = _gpt(), _tokens()
    with torch.no_grad():
        base = model(x)
    before = _base_state(model)
    apply_lora(model, LoRASettings(lora_rank=4, lora_target_modules=EVERY_BLOCK), seed=0)
    with torch.no_grad():
        assert torch.equal(model(x), base)  # B starts at zero
    _train_adapters(model)
    with torch.no_grad():
        adapted = model(x)
        assert (adapted - base).abs().max() > 1e-2  # the adapters did learn something
        with adapters_disabled(model):
            assert torch.equal(model(x), base)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                off_bf16 = model(x)
        assert torch.equal(model(x), adapted)  # the context restores them
        plain = _gpt()  # the base, rebuilt from scratch
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(plain(x), off_bf16)
    after = _base_state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_merge_folds_the_adapters_into_plain_linear_layers():
    model, x = _gpt(), _tokens()
    apply_lora(model, LoRASettings(lora_rank=4, lora_alpha=8.0, lora_target_modules=EVERY_BLOCK), seed=0)
    _train_adapters(model)
    with torch.no_grad():
        adapted = model(x)
    assert merge_lora(model) is model
    assert not lora_layers(model) and type(model.h[0].attn.c_attn) is nn.Linear
    assert all(p.requires_grad for p in model.parameters()) and model.lm_head.weight is model.wte.weight
    assert set(model.state_dict()) == set(_gpt().state_dict())  # a plain GPT's keys
    with torch.no_grad():
        assert (model(x) - adapted).abs().max() < 1e-5
    plain = _gpt()
    weights = [id(p) for p in plain.parameters()]
    assert merge_lora(plain) is plain and [id(p) for p in plain.parameters()] == weights  # nothing to merge


def test_only_adapters_and_heads_train_and_reach_the_optimizer():
    reward = apply_lora(RewardModel(_gpt()), LoRASettings(lora_rank=4), seed=0)
    trainable = {n for n, p in reward.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | {f"gpt.h.{i}.attn.{m}.lora_{ab}" for i in range(2)
                                                       for m in ("c_attn", "c_proj") for ab in "AB"}
    optimizer = make_optimizer(reward, _train_cfg(Path("unused"), 1), torch.device("cpu"))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in reward.parameters() if p.requires_grad}
    x = _tokens()
    reward(x, torch.full((4,), 16)).sum().backward()
    grads = {n for n, p in reward.named_parameters() if p.grad is not None}
    assert grads == trainable  # the frozen weights get no gradient at all
    assert reward.gpt.h[0].attn.c_attn.lora_B.grad.abs().sum() > 0
    policy = apply_lora(PolicyNetwork(_gpt()), LoRASettings(lora_rank=2), seed=0)
    heads = {n for n, p in policy.named_parameters() if p.requires_grad and "lora_" not in n}
    assert heads == {"value.proj.weight", "value.proj.bias"}


def test_layer_patterns_and_a_pattern_that_matches_nothing():
    gpt = _gpt()
    assert select_layers(gpt, ["c_attn"]) == ["h.0.attn.c_attn", "h.1.attn.c_attn"]
    assert select_layers(gpt, ["h.1.*"]) == ["h.1.attn.c_attn", "h.1.attn.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"]
    assert select_layers(gpt, ["mlp.c_*", "0.attn"]) == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc",
                                                          "h.0.mlp.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"]
    with pytest.raises(ValueError) as info:
        apply_lora(gpt, LoRASettings(lora_rank=4, lora_target_modules=["attn", "q_proj"]))
    message = str(info.value)
    assert "\n" not in message and "'q_proj'" in message and "--lora-target-modules" in message
    assert "h.*.attn.c_attn, h.*.attn.c_proj, h.*.mlp.c_fc, h.*.mlp.c_proj" in message
    assert not lora_layers(gpt)  # nothing was changed by the failed call
    with pytest.raises(ValueError, match="'lm_head' matches no Linear.*lm_head shares its weight"):
        select_layers(gpt, ["lm_head"])
    apply_lora(gpt, LoRASettings(lora_rank=2))
    with pytest.raises(ValueError, match="LoRA adapters already; merge them first"):
        apply_lora(gpt, LoRASettings(lora_rank=2))


def test_settings_are_checked_and_errors_name_the_flag(capsys, tmp_path):
    cases = [({"lora_rank": -1}, r"lora_rank=-1: must be an integer >= 0 \(0 = LoRA off\); fix --lora-rank"),
             ({"lora_rank": 2.5}, "lora_rank=2.5.*--lora-rank"),
             ({"lora_rank": 4, "lora_alpha": 0.0}, "lora_alpha=0.0: must be a finite number > 0.*--lora-alpha"),
             ({"lora_rank": 4, "lora_alpha": float("nan")}, "lora_alpha=nan.*--lora-alpha"),
             ({"lora_rank": 4, "lora_dropout": 1.0}, r"lora_dropout=1.0: must be in \[0, 1\).*--lora-dropout"),
             ({"lora_rank": 4, "lora_target_modules": []}, "lora_target_modules=\\[\\]: is empty.*"),
             ({"lora_alpha": 32.0}, "lora_alpha=32.0 is set but lora_rank=0.*--lora-rank 8.*--lora-alpha"),
             ({"lora_target_modules": ["mlp"]}, "is set but lora_rank=0.*--lora-target-modules")]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            LoRASettings(**kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="PPOSettings.lora_rank=-2"):
        PPOSettings(lora_rank=-2)
    with pytest.raises(ValueError, match="rank >= 1"):
        LoRALinear(nn.Linear(4, 4), 0, 8.0)
    with pytest.raises(SystemExit):
        main(["sft", "--data", str(tmp_path / "x.jsonl"), "--lora-rank", "4", "--lora-dropout", "1.5"])
    assert capsys.readouterr().err.strip().endswith("must be in [0, 1); fix --lora-dropout")


@pytest.mark.parametrize("command", [("sft",), ("reward", "train"), ("dpo",), ("ppo",), ("grpo",), ("rloo",)])
def test_every_fine_tuning_command_takes_the_same_lora_flags(command):
    parser = build_parser()
    flags = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--lora-target-modules", "c_attn",
             "mlp.c_fc"]
    ns = vars(parser.parse_args([*command, "--data", "pairs.jsonl", *flags]
                                if command[0] in ("sft", "reward", "dpo") else [*command, *flags]))
    cls = ns.pop("__cls__")
    values = {k: v for k, v in ns.items() if not k.startswith("__") and k not in ("command", "subcommand", "verbose")}
    if command == ("dpo",):
        values["disable_dropout"] = False  # DPO turns dropout off unless asked not to
    config = cfglib.build(cls, {}, values)
    lora = config.lora_settings() if isinstance(config, LoRASettings) else config.lora
    assert lora == LoRASettings(lora_rank=4, lora_alpha=8.0, lora_dropout=0.1,
                                lora_target_modules=["c_attn", "mlp.c_fc"])


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact_and_records_the_settings(tmp_path):
    model, x, tok = _gpt(), _tokens(), byte_tokenizer()
    with torch.no_grad():
        base = model(x)
    apply_lora(model, LoRASettings(lora_rank=4, lora_alpha=8.0, lora_target_modules=["c_attn", "mlp.c_fc"]), seed=0)
    _train_adapters(model)
    ckpt.save_checkpoint(tmp_path / "lora", model, tok, stage="sft")
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["lora"] == {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0,
                              "lora_target_modules": ["c_attn", "mlp.c_fc"],
                              "layers": ["h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.attn.c_attn", "h.1.mlp.c_fc"]}
    stored = load_file(str(tmp_path / "lora" / "model.safetensors"))
    assert {"h.0.attn.c_attn.weight", "h.0.attn.c_attn.lora_A", "h.0.attn.c_attn.lora_B"} <= set(stored)
    assert not list((tmp_path / "lora").glob("*.pt")) and not list((tmp_path / "lora").glob("*.bin"))

    loaded = ckpt.load_checkpoint(tmp_path / "lora").model
    assert set(lora_layers(loaded)) == set(config["lora"]["layers"])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        with adapters_disabled(loaded):
            assert torch.equal(loaded(x), base)
    ckpt.save_checkpoint(tmp_path / "merged", merge_lora(loaded), tok, stage="sft")  # the export of a LoRA run
    merged = ckpt.load_checkpoint(tmp_path / "merged")
    assert "lora" not in merged.config and not lora_layers(merged.model)
    with torch.no_grad():
        assert (merged.model(x) - model(x)).abs().max() < 1e-5

    config["lora"]["layers"] = ["h.0.attn.q_proj"]
    (tmp_path / "lora" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="its 'lora' record is not one rlfl writes.*corrupt"):
        ckpt.load_checkpoint(tmp_path / "lora")


# ---------------------------------------------------------------------------------------------- stages
def test_sft_with_lora_lowers_the_loss_trains_only_adapters_and_resumes_exactly(tmp_path):
    tok = byte_tokenizer()
    ckpt.save_checkpoint(tmp_path / "base", _gpt(block_size=64, steerable=True), tok, stage="pretrain")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": c[0]["content"], "response": c[1]["content"]}) + "\n"
                            for c in reverse_words(300, seed=0, max_words=3)))
    lora = LoRASettings(lora_rank=8, lora_target_modules=EVERY_BLOCK)

    def run(out: str, steps: int, settings: LoRASettings = lora) -> Path:
        return sft(SFTConfig(init_from=str(tmp_path / "base"), data=str(data), num_samples=0, lora=settings,
                             train=_train_cfg(tmp_path / out, steps, eval_steps=4, lr=1e-2, min_lr=1e-2,
                                              warmup_steps=0)))  # a constant rate: the same at any max_steps

    out = run("once", 30)
    report = json.loads((out / "sft_report.json").read_text())
    assert report["val_loss_after"] < report["val_loss_before"] - 0.5, report
    done, start = ckpt.load_checkpoint(out), ckpt.load_checkpoint(tmp_path / "base")
    assert done.config["lora"]["lora_rank"] == 8 and done.config["sft"]["lora"]["lora_rank"] == 8
    base_after, base_before = _base_state(done.model), _base_state(start.model)
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_after[k], base_before[k]) for k in base_before)  # the base never moved
    # 20 steps, then the same command to 30 steps: the weights of the run in one go
    run("twice", 20)
    run("twice", 30)
    again = ckpt.load_checkpoint(tmp_path / "twice")
    assert again.step == 30
    for k, v in done.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="LoRA rank 8, .* this run has LoRA rank 4.*--lora-\\* flags"):
        run("twice", 40, LoRASettings(lora_rank=4, lora_target_modules=EVERY_BLOCK))
    with pytest.raises(ValueError, match="LoRA rank 8.* this run has LoRA off"):
        run("twice", 40, LoRASettings())


def _pairs(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(2))
        lines.append(json.dumps({"prompt": "Review:", "chosen": f" {a} good {b}", "rejected": f" {a} bad {b}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reward_model_with_lora_trains_its_head_and_adapters(tmp_path):
    ckpt.save_checkpoint(tmp_path / "base", _gpt(block_size=64), byte_tokenizer(), stage="pretrain")
    data = _pairs(tmp_path / "pairs.jsonl", 200)
    lora = LoRASettings(lora_rank=4, lora_target_modules=EVERY_BLOCK)
    out = train_reward_model(RewardTrainConfig(init_from=str(tmp_path / "base"), data=str(data), val_fraction=0.1,
                                               stats_samples=64, lora=lora, train=_train_cfg(tmp_path / "rm", 25)))
    saved = ckpt.load_checkpoint(out)
    assert saved.config["lora"]["lora_rank"] == 4 and "head.weight" in saved.heads
    start = _base_state(ckpt.load_checkpoint(tmp_path / "base").model)
    assert all(torch.equal(v, _base_state(saved.model)[k]) for k, v in start.items())
    assert saved.config["reward"]["val_accuracy"] > 0.6
    scores = load_reward_model(out).score(["Review:"] * 2, [" the film good", " the film bad"])
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="--freeze-trunk.*--lora-rank.*pass one"):
        RewardTrainConfig(data=str(data), freeze_trunk=True, lora=lora)


def test_dpo_with_lora_measures_against_the_frozen_base(tmp_path):
    ckpt.save_checkpoint(tmp_path / "base", _gpt(block_size=64), byte_tokenizer(), stage="pretrain")
    data = _pairs(tmp_path / "pairs.jsonl", 200)
    out = dpo(DPOConfig(init_from=str(tmp_path / "base"), data=str(data), val_fraction=0.1, num_samples=0,
                        lora=LoRASettings(lora_rank=8, lora_target_modules=EVERY_BLOCK),
                        train=_train_cfg(tmp_path / "dpo", 25, lr=1e-2, min_lr=1e-3)))
    report = json.loads((out / "dpo_report.json").read_text())
    # at the start the policy IS its reference (the adapters are zero), so every pair's loss is log 2
    assert report["val_before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert report["val_after"]["val/loss"] < 0.6 and report["val_after"]["val/accuracy"] > 0.8, report
    saved = ckpt.load_checkpoint(out)
    start = _base_state(ckpt.load_checkpoint(tmp_path / "base").model)
    assert all(torch.equal(v, _base_state(saved.model)[k]) for k, v in start.items())
    with pytest.raises(ValueError, match="lora_dropout=0.1 has no effect with --disable-dropout"):
        DPOConfig(data=str(data), lora=LoRASettings(lora_rank=4, lora_dropout=0.1))


# ---------------------------------------------------------------------------------------------- PPO / GRPO
@pytest.fixture(scope="module")
def lora_policy(tmp_path_factory) -> str:
    """A tiny byte-level Llama-family policy whose logits the adapters can steer (see `_gpt`)."""
    d = tmp_path_factory.mktemp("lora_policy")
    ckpt.save_checkpoint(d, _gpt(steerable=True, llama=True), byte_tokenizer(), stage="sft")
    return str(d)


def _env() -> str:
    rlfl.envs.register_reward_env("test/LoRALower-v0", reward=lower_share, overwrite=True, max_new_tokens=8,
                                  max_prompt_tokens=16, prompts=["The film was", "Dinner was", "I think", "My dog"])
    return "test/LoRALower-v0"


def test_ppo_with_lora_raises_the_reward_with_one_copy_of_the_base(lora_policy):
    size = lambda m: sum(p.numel() for p in {id(p): p for p in m.policy.parameters()}.values())
    full = size(PPO(lora_policy, _env(), n_envs=16, n_steps=8, seed=0))  # the weights and their reference copy
    model = PPO(lora_policy, _env(), n_envs=16, n_steps=8, batch_size=128, learning_rate=3e-3, kl_coef=0.01, seed=0,
                lora_rank=8, lora_target_modules=EVERY_BLOCK)
    policy = model.policy
    # the reference is the policy's own GPT with its adapters off: no second copy of the weights
    assert isinstance(policy.reference, FrozenBase) and policy.reference.model is policy.gpt
    assert not [k for k in policy.state_dict() if k.startswith("reference.")]
    base_ptrs = {p.data_ptr() for p in policy.gpt.parameters()}
    assert {p.data_ptr() for p in policy.reference.parameters()} <= base_ptrs
    assert size(model) < 0.6 * full  # the copy PPO keeps without LoRA is gone
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n} | {"net.value.proj.weight", "net.value.proj.bias"}
    in_optimizer = {id(p) for g in policy.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in policy.parameters() if p.requires_grad}

    before = _base_state(policy.gpt)
    log = rollout_scores()
    model.learn(16 * 8 * 50, callback=log)
    assert np.mean(log.scores[-4:]) > np.mean(log.scores[:4]) + 0.3, log.scores
    assert model.logger.name_to_value["rollout/kl"] > 0
    after = _base_state(policy.gpt)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base (and so the reference) never moved
    x = _tokens(shape=(2, 12))
    start = ckpt.load_checkpoint(lora_policy).model
    with torch.no_grad():
        assert torch.equal(policy.reference(x), start(x))  # reference log-probs = the starting policy's, exactly
        assert not torch.equal(policy.gpt(x), start(x))


def test_ppo_lora_resume_state_checkpoint_and_grpo(lora_policy, tmp_path):
    settings = dict(lora_rank=4, lora_alpha=8.0, learning_rate=1e-2)
    model = PPO(lora_policy, _env(), n_envs=4, n_steps=8, batch_size=16, seed=0, **settings)
    model.learn(64)
    model.save_resume_state(tmp_path / "resume.pt")
    again = PPO.from_resume_state(tmp_path / "resume.pt", make_text_vec_env(_env(), 4))
    assert again.settings == model.settings and again.policy.reference.model is again.policy.gpt
    mine, theirs = model.policy.state_dict(), again.policy.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    again.learn(64, reset_num_timesteps=False)
    assert again.num_timesteps == 128

    saved = ckpt.load_checkpoint(model.save_checkpoint(tmp_path / "ckpt"))
    assert saved.config["lora"]["lora_rank"] == 4 and saved.config["train"]["lora_rank"] == 4
    x = _tokens(shape=(2, 12))
    with torch.no_grad():
        assert torch.equal(saved.model(x), model.policy.gpt(x))
    # a further run starts from the merged weights: its starting policy (and reference) is this one's policy
    follow = PPO(str(tmp_path / "ckpt"), _env(), n_envs=4, n_steps=8, seed=0)
    assert not lora_layers(follow.policy.gpt)
    with torch.no_grad():
        assert (follow.policy.reference(x) - model.policy.gpt(x)).abs().max() < 1e-5

    grpo = GRPO(lora_policy, _env(), n_envs=8, group_size=4, batch_size=32, seed=0, **settings)
    before = _base_state(grpo.policy.gpt)
    grpo.learn(64)
    assert grpo.policy.reference.model is grpo.policy.gpt
    assert all(torch.equal(v, _base_state(grpo.policy.gpt)[k]) for k, v in before.items())
    assert any(p.abs().sum() > 0 for n, p in grpo.policy.gpt.named_parameters() if n.endswith("lora_B"))

"""`rlfl sample`: chat checkpoints answer a user turn and stop at its end; base checkpoints and --raw continue text."""

from __future__ import annotations

import json

import pytest
import torch

from rlfl.chat_template import is_chat_checkpoint
from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.cli import main
from rlfl.generate import SamplingConfig, generate
from rlfl.model import GPT, GPTConfig
from rlfl.tokenizer import byte_tokenizer

MAX_NEW = 20


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> str:
    """A tiny byte-level model that `rlfl sft` taught to answer every user turn with "ok<|end|>" (2 s on a CPU)."""
    root = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    save_checkpoint(root / "base", GPT(GPTConfig(vocab_size=262, block_size=64, n_layer=1, n_head=2, n_embd=32)),
                    byte_tokenizer(), stage="pretrain")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}", "response": "ok"}) + "\n" for i in range(32)))
    main(["sft", "--init-from", str(root / "base"), "--data", str(data), "--out-dir", str(root / "sft"),
          "--max-steps", "40", "--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "2", "--eval-interval", "40",
          "--num-samples", "0", "--no-progress"])
    return str(root / "sft")


def sample(capsys, checkpoint, *flags: str) -> str:
    """What `rlfl sample CHECKPOINT --greedy ...` prints."""
    capsys.readouterr()
    assert main(["sample", str(checkpoint), "--greedy", "--max-new-tokens", str(MAX_NEW), *flags]) == 0
    return capsys.readouterr().out


def continuation(checkpoint, prompt: str) -> tuple[str, int]:
    """The greedy plain-text continuation of ``prompt`` (only <|endoftext|> stops it) and its token count."""
    c = load_checkpoint(checkpoint)
    tok = c.tokenizer
    out = generate(c.model, [tok.encode(prompt)], SamplingConfig(max_new_tokens=MAX_NEW, greedy=True,
                                                                 stop_tokens=(tok.eot_id,)), pad_id=tok.pad_id)
    return tok.decode(out.tokens[0]), len(out.tokens[0])


def resave(source: str, directory, stage: str, **extra) -> str:
    """The weights of ``source`` saved again as a checkpoint of another stage."""
    c = load_checkpoint(source)
    save_checkpoint(directory, c.model, c.tokenizer, stage=stage, extra=extra)
    return str(directory)


def test_chat_checkpoint_answers_a_user_turn_and_stops_at_its_end(sft_dir, capsys):
    out = sample(capsys, sft_dir, "--prompt", "Say hi", "The food")
    # the prompts went in as user turns (the model only learned to answer those) and each answer ended at
    # <|end|>, which is not printed, instead of running on for all 20 tokens
    assert out == ("--- sample 1 ---\nuser: Say hi\nassistant: ok\n"
                   "--- sample 2 ---\nuser: The food\nassistant: ok\n")


def test_raw_continues_the_prompt_as_plain_text(sft_dir, capsys):
    text, n = continuation(sft_dir, "Say hi")
    assert sample(capsys, sft_dir, "--prompt", "Say hi", "--raw") == f"--- sample 1 ---\nSay hi{text}\n"
    assert n == MAX_NEW and "<|end|>" in text  # no template, and <|end|> does not stop it


def test_base_checkpoint_is_sampled_as_before(sft_dir, tmp_path, capsys):
    # the same weights under a pretrain stage: plain continuation whether or not --raw is given
    base = resave(sft_dir, tmp_path / "base", "pretrain")
    text, _ = continuation(base, "Say hi")
    expected = f"--- sample 1 ---\nSay hi{text}\n"
    assert sample(capsys, base, "--prompt", "Say hi") == expected
    assert sample(capsys, base, "--prompt", "Say hi", "--raw") == expected


def test_ppo_checkpoint_follows_its_runs_prompt_format(sft_dir, tmp_path, capsys):
    chat = resave(sft_dir, tmp_path / "chat_ppo", "ppo", ppo={"config": {"chat_template": True}})
    assert sample(capsys, chat, "--prompt", "Say hi") == "--- sample 1 ---\nuser: Say hi\nassistant: ok\n"
    plain = resave(sft_dir, tmp_path / "plain_ppo", "ppo", ppo={"config": {"chat_template": None}})
    text, _ = continuation(plain, "Say hi")
    assert sample(capsys, plain, "--prompt", "Say hi") == f"--- sample 1 ---\nSay hi{text}\n"


def test_prompt_too_long_for_the_chat_template(sft_dir, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", sft_dir, "--prompt", "x" * 62])  # 62 bytes fit 64 tokens, not with 4 template tokens
    assert exit_info.value.code == 2
    assert "64 tokens with the chat template" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "chat"), [
    ({"stage": "sft"}, True),
    ({"stage": "ppo", "ppo": {"config": {"chat_template": True}}}, True),
    ({"stage": "ppo", "ppo": {"config": {"chat_template": None}}}, False),  # the built-in envs' plain prompts
    ({"stage": "ppo", "ppo": {"config": {"chat_template": False}}}, False),
    ({"stage": "ppo"}, False),  # saved by a script, without the run's config
    ({"stage": "pretrain"}, False),
    ({"stage": "reward"}, False),
])
def test_is_chat_checkpoint(config, chat):
    assert is_chat_checkpoint(config) is chat

"""SFT: the learning check (a task no base model solves by chance), loss masking, report and lineage."""

from __future__ import annotations

import json

import pytest
import torch

from rlfl.chat_template import chat_prompt, end_token
from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.generate import SamplingConfig, generate
from rlfl.instruct_tasks import exact_match, reverse_words
from rlfl.model import GPT, GPTConfig
from rlfl.sft import SFTConfig, sft, sft_loss
from rlfl.tokenizer import train_bpe
from rlfl.trainer import TrainConfig


def _answers(ckpt_dir, conversations) -> list[str]:
    c = load_checkpoint(ckpt_dir)
    stop = (end_token(c.tokenizer), c.tokenizer.eot_id)
    out = generate(c.model, [chat_prompt(c.tokenizer, conv[:1]) for conv in conversations],
                   SamplingConfig(max_new_tokens=12, greedy=True, stop_tokens=stop), pad_id=c.tokenizer.pad_id)
    return [c.tokenizer.decode([t for t in tokens if t not in stop]) for tokens in out.tokens]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A base checkpoint (BPE on the task's words, untrained weights), SFT data and held-out prompts."""
    tmp = tmp_path_factory.mktemp("sft")
    train = reverse_words(3000, seed=0)
    held_out = reverse_words(100, seed=1, exclude={c[0]["content"] for c in train})
    tok = train_bpe([c[0]["content"] + " " + c[1]["content"] for c in train], 390)
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=32, n_layer=2, n_head=4, n_embd=64))
    save_checkpoint(tmp / "base", base, tok, stage="pretrain")
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": c[0]["content"], "response": c[1]["content"]}) + "\n"
                            for c in train))
    return tmp, data, held_out


@pytest.mark.parametrize("pack", [False, True])
def test_sft_learns_an_instruction_the_base_model_cannot_follow(task, pack):
    tmp, data, held_out = task
    refs = [c[1]["content"] for c in held_out]
    base_em = exact_match(_answers(tmp / "base", held_out), refs)
    out = tmp / f"sft-pack{pack}"
    sft(SFTConfig(init_from=str(tmp / "base"), data=str(data), pack=pack, num_samples=2,
                  train=TrainConfig(out_dir=str(out), max_steps=400, batch_size=32 if not pack else 8, lr=3e-3,
                                    min_lr=3e-4, warmup_steps=20, weight_decay=0.0, eval_interval=400,
                                    checkpoint_interval=400, progress=False, num_threads=2)))
    sft_em = exact_match(_answers(out, held_out), refs)
    assert base_em < 0.10 and sft_em >= 0.90, (base_em, sft_em)
    report = json.loads((out / "sft_report.json").read_text())
    assert report["val_loss_after"] < report["val_loss_before"] - 1.0
    assert len(report["samples"]) == 2 and {"prompt", "before", "answer", "reference"} <= set(report["samples"][0])
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "sft" and config["parent"] == str((tmp / "base").resolve())


def test_prompt_tokens_contribute_nothing_to_the_loss(task):
    """Changing every prompt token's target leaves the loss and the gradients exactly unchanged."""
    tmp, _, _ = task
    c = load_checkpoint(tmp / "base")
    model, tok = c.model.train(), c.tokenizer
    from rlfl.chat_template import render_chat

    ids, mask = render_chat(tok, reverse_words(1, seed=5)[0])
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:])]])
    loss = sft_loss(model, (x, y))
    # the same inputs with every response token turned off give no loss signal at all
    assert torch.isnan(sft_loss(model, (x, torch.full_like(y, -100))))
    # and the loss equals a hand computation over response positions only
    logits = model(x)[0]
    positions = [t for t in range(len(ids) - 1) if mask[t + 1]]
    manual = torch.stack([-torch.log_softmax(logits[t], -1)[ids[t + 1]] for t in positions]).mean()
    assert torch.allclose(loss, manual, atol=1e-6)

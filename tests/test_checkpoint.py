"""The checkpoint format: round trip, interrupted saves rolled forward or back, corrupt dirs refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlfl import checkpoint as ckpt
from rlfl.model import GPT, GPTConfig
from rlfl.tokenizer import byte_tokenizer


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=262, block_size=16, n_layer=2, n_head=2, n_embd=64))


def _same(a: GPT, b: GPT) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_round_trip_is_exact(tmp_path):
    model, tok = _model(), byte_tokenizer()
    ckpt.save_checkpoint(tmp_path, model, tok, stage="pretrain", step=7, parent="p",
                         trainer_state={"optimizer": {"x": torch.ones(2)}, "rng": [torch.get_rng_state()]})
    loaded = ckpt.load_checkpoint(tmp_path, with_state=True)
    assert _same(model, loaded.model) and loaded.step == 7 and loaded.config["parent"] == "p"
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.wte.weight.data_ptr()  # still tied
    assert loaded.tokenizer.fingerprint == tok.fingerprint
    assert torch.equal(loaded.trainer_state["optimizer"]["x"], torch.ones(2))
    idx = torch.randint(0, 262, (2, 16))
    assert torch.equal(model.eval()(idx), loaded.model(idx))


def test_interrupted_save_before_commit_keeps_old_checkpoint(tmp_path):
    old, new, tok = _model(0), _model(1), byte_tokenizer()
    ckpt.save_checkpoint(tmp_path, old, tok, stage="pretrain", step=1)
    # simulate a crash mid-save: staging written but no COMMITTED marker
    ckpt.save_checkpoint(tmp_path / "scratch", new, tok, stage="pretrain", step=2)
    (tmp_path / ckpt.STAGING).mkdir()
    shutil.copy(tmp_path / "scratch" / ckpt.WEIGHTS_FILE, tmp_path / ckpt.STAGING / ckpt.WEIGHTS_FILE)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 1 and _same(loaded.model, old)
    assert not (tmp_path / ckpt.STAGING).exists()


def test_interrupted_save_after_commit_is_rolled_forward(tmp_path):
    old, new, tok = _model(0), _model(1), byte_tokenizer()
    ckpt.save_checkpoint(tmp_path, old, tok, stage="pretrain", step=1)
    ckpt.save_checkpoint(tmp_path / "scratch", new, tok, stage="pretrain", step=2)
    staging = tmp_path / ckpt.STAGING
    shutil.copytree(tmp_path / "scratch", staging)
    (staging / ckpt.COMMITTED).write_bytes(b"")
    # the crash happened after the weights were moved but before config.json was
    shutil.move(staging / ckpt.WEIGHTS_FILE, tmp_path / ckpt.WEIGHTS_FILE)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 2 and _same(loaded.model, new)


def test_mismatched_state_and_missing_files_are_refused(tmp_path):
    tok = byte_tokenizer()
    ckpt.save_checkpoint(tmp_path, _model(), tok, stage="pretrain", step=3, trainer_state={"rng": []})
    config = json.loads((tmp_path / "config.json").read_text())
    config["step"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="step 3 differs from config.json's step 4"):
        ckpt.load_checkpoint(tmp_path, with_state=True)
    (tmp_path / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an rlfl checkpoint"):
        ckpt.load_checkpoint(tmp_path / "..")


class _WithHead(torch.nn.Module):
    """A GPT trunk plus a scalar head, the shape of a reward model or a value-head policy."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = torch.nn.Linear(gpt.config.n_embd, 1)


def test_heads_round_trip_in_the_same_format(tmp_path):
    model, tok = _WithHead(_model(3)), byte_tokenizer()
    ckpt.save_checkpoint(tmp_path, model, tok, stage="reward")
    loaded = ckpt.load_checkpoint(tmp_path)
    assert set(loaded.heads) == {"head.weight", "head.bias"}
    assert _same(loaded.model, model.gpt)  # the trunk opens as a plain GPT for any later stage
    fresh = _WithHead(_model(4))
    ckpt.load_into(fresh, loaded)
    assert torch.equal(fresh.head.weight, model.head.weight) and _same(fresh.gpt, model.gpt)
    with pytest.raises(ValueError, match="do not fit"):
        ckpt.load_into(_WithHead(_model(4)), ckpt.Checkpoint(loaded.model, tok, {}, tmp_path, heads={}))


def test_update_config_adds_fields_atomically(tmp_path):
    ckpt.save_checkpoint(tmp_path, _model(), byte_tokenizer(), stage="reward", step=2)
    ckpt.update_config(tmp_path, reward={"mean": 0.5, "std": 2.0})
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.config["reward"] == {"mean": 0.5, "std": 2.0} and loaded.step == 2
    assert not list(tmp_path.glob("*.tmp"))

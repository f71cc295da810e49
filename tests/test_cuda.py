"""The CUDA paths: numbered devices, the KV cache against a full forward, bf16 against float32, a PPO update, a
pretraining resume, the server and an NCCL process group under torchrun. Every test is skipped without a GPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest
import torch
import torch.nn.functional as F

from conftest import printable_checkpoint
from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.device import pick_device
from rlfl.generate import SamplingConfig, generate
from rlfl.model import GPT, GPTConfig, KVCache
from rlfl.tokenizer import byte_tokenizer
from rlfl.trainer import TrainConfig, Trainer, setup_runtime, to_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["The film was", "Dinner was", "I think", "Our hotel room", "My dog"]


@pytest.fixture
def exact_float32():
    """Plain float32 matmuls for the test (the training runtime turns TF32 on for the whole process)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def tiny_gpt(vocab: int = 300, block: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=4, n_embd=64))


def test_cuda_is_numbered_and_the_training_runtime_uses_bf16_tf32_and_pinned_copies(tmp_path):
    assert pick_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert pick_device(torch.device("cuda")).index is not None
    rt = setup_runtime(TrainConfig(out_dir=str(tmp_path), device="cuda"))
    assert rt.device.type == "cuda" and rt.device.index is not None
    assert rt.amp_dtype is (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    assert torch.backends.cuda.matmul.allow_tf32
    x, y = to_device([torch.arange(6), torch.ones(2, 3)], rt.device)
    assert x.device == rt.device and y.device == rt.device and x.tolist() == list(range(6))


def test_kv_cache_decode_equals_a_full_forward(exact_float32):
    cuda = pick_device("cuda")
    model = tiny_gpt().to(cuda).eval()
    ids = torch.randint(0, 300, (3, 24), device=cuda, generator=torch.Generator(cuda).manual_seed(0))
    # left padding: row 1 starts at column 5, row 2 at 11 (the masked SDPA path)
    mask = torch.ones(3, 24, dtype=torch.bool, device=cuda)
    mask[1, :5] = False
    mask[2, :11] = False
    with torch.no_grad():
        for attention_mask in (None, mask):
            full = model(ids, attention_mask=attention_mask)
            cache = KVCache(model.config, 3, 24, device=cuda)
            upto = [None if attention_mask is None else attention_mask[:, :n] for n in range(25)]
            parts = [model(ids[:, :12], attention_mask=upto[12], cache=cache)]
            parts += [model(ids[:, t : t + 1], attention_mask=upto[t + 1], cache=cache) for t in range(12, 24)]
            cached = torch.cat(parts, 1)
            real = torch.ones_like(mask) if attention_mask is None else mask
            # float32 on both sides; the kernels SDPA picks for the two shapes may differ in rounding only
            assert (cached - full)[real].abs().max().item() < 1e-3
        # the batched engine on the GPU: left-padded prompts, a seeded generator on the device
        out = generate(model, [[5, 6, 7, 8], [9], [10, 11]], SamplingConfig(max_new_tokens=10, seed=0), pad_id=0,
                       return_logprobs=True)
    assert [len(t) for t in out.tokens] == [10, 10, 10]
    assert all(-20 < lp <= 0 for row in out.logprobs for lp in row)


def test_bf16_log_probs_are_close_to_float32(exact_float32):
    cuda = pick_device("cuda")
    model = tiny_gpt().to(cuda).eval()
    ids = torch.randint(0, 300, (4, 33), device=cuda, generator=torch.Generator(cuda).manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        lp32 = F.log_softmax(model(x).float(), -1).gather(-1, y[..., None])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lp16 = F.log_softmax(model(x).float(), -1).gather(-1, y[..., None])
            # a float32 KV cache read by bf16 queries (generation under autocast) works too
            out = generate(model, [[1, 2, 3], [4]], SamplingConfig(max_new_tokens=5, seed=0), pad_id=0)
    diff = (lp16 - lp32).abs()
    assert diff.max().item() < 0.05 and diff.mean().item() < 0.01, (diff.max().item(), diff.mean().item())
    assert [len(t) for t in out.tokens] == [5, 5]


def lower_share(prompt: str, completion: str) -> float:
    return sum(c.islower() for c in completion) / max(1, len(completion))


def test_a_ppo_update_on_cuda(tmp_path):
    import rlfl.envs
    from rlfl.agents import PPO

    tok = byte_tokenizer()
    save_checkpoint(tmp_path / "policy", tiny_gpt(tok.n_vocab, 32), tok, stage="sft")
    rlfl.envs.register_reward_env("test/CudaLower-v0", reward=lower_share, prompts=PROMPTS, max_new_tokens=8,
                                  max_prompt_tokens=16, overwrite=True)
    model = PPO(str(tmp_path / "policy"), "test/CudaLower-v0", n_envs=8, n_steps=8, batch_size=32, seed=0,
                device="cuda", precision="auto", learning_rate=1e-3)
    before = [p.detach().clone() for p in model.policy.net.parameters()]
    model.learn(128)
    assert model.num_timesteps == 128
    params = list(model.policy.net.parameters())
    assert all(p.is_cuda and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params)), "the update moved no weight"
    if torch.cuda.is_bf16_supported():  # precision auto: bf16 rollouts, old log-probs recomputed in training
        assert model._actor.cache.k.dtype == torch.bfloat16
    model.save_checkpoint(tmp_path / "ppo")
    assert load_checkpoint(tmp_path / "ppo").model.config.vocab_size == tok.n_vocab


class _Stop(Exception):
    pass


def _last(path, name: str) -> float:
    with open(path, newline="") as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r["name"] == name][-1]


def test_pretrain_resumes_on_cuda(synthetic_shards, tmp_path, monkeypatch, capfd):
    from rlfl.cli import main

    def flags(out) -> list[str]:
        return ["pretrain", "--data", str(synthetic_shards), "--out-dir", str(out), "--device", "cuda", "--dtype",
                "float32", "--dropout", "0.1", "--max-steps", "20", "--checkpoint-interval", "10", "--eval-interval",
                "20", "--eval-steps", "2", "--log-interval", "5", "--n-layer", "2", "--n-head", "2", "--n-embd", "64",
                "--block-size", "32", "--batch-size", "8", "--sample-tokens", "0", "--no-progress"]

    main(flags(tmp_path / "ref"))
    save = Trainer.save

    def save_then_stop(self):  # a run that stops right after its step-10 checkpoint, as a kill would
        save(self)
        if self.step == 10:
            raise _Stop

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(_Stop):
        main(flags(tmp_path / "run"))
    monkeypatch.undo()
    state = torch.load(tmp_path / "run" / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 10 and "cuda_rng" in state
    capfd.readouterr()
    main(flags(tmp_path / "run"))
    assert "resumed pretrain" in capfd.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 20
    for name in ("train/loss", "val/loss"):
        ref, run = _last(tmp_path / "ref" / "metrics.csv", name), _last(tmp_path / "run" / "metrics.csv", name)
        assert abs(ref - run) < 1e-3, (name, ref, run)


def test_serve_answers_a_completion_on_cuda(tmp_path):
    from rlfl.serve import ServeConfig, start_server

    ckpt = printable_checkpoint(tmp_path / "ckpt", 64)
    with start_server(ServeConfig(checkpoint=str(ckpt), port=0, device="cuda", batch_wait_ms=0)) as srv:
        req = urllib.request.Request(srv.url + "/v1/completions", method="POST",
                                     data=json.dumps({"prompt": "Hello", "max_tokens": 8, "temperature": 0}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200
            body = json.loads(resp.read())
    [choice] = body["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 8


NCCL_SCRIPT = """
import os
from datetime import timedelta

import torch
import torch.distributed as dist

device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(device)
dist.init_process_group("nccl", device_id=device, timeout=timedelta(seconds=60))
t = torch.full((4,), float(dist.get_rank() + 1), device=device)
dist.all_reduce(t)
torch.cuda.synchronize(device)
print("all_reduce", dist.get_world_size(), t.tolist(), flush=True)
dist.destroy_process_group()
"""


def test_nccl_process_group_of_one_under_torchrun(tmp_path):
    script = tmp_path / "nccl_check.py"
    script.write_text(textwrap.dedent(NCCL_SCRIPT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "all_reduce 1 [1.0, 1.0, 1.0, 1.0]" in r.stdout

"""Shared test fixtures: the location of ../shared/data, a small prepared corpus, and the tiny starting policy
and reward of the RL tests."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test when a fresh clone doesn't have it."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent in a fresh clone)")
    return path


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """Byte-level shards of 600 built-in synthetic reviews (no download, seconds to build)."""
    from rlfl.data import prepare_corpus
    from rlfl.synthetic import synthetic_documents
    from rlfl.tokenizer import byte_tokenizer

    out = tmp_path_factory.mktemp("shards")
    prepare_corpus(synthetic_documents(600, seed=0), byte_tokenizer(), out, val_fraction=0.1, seed=0)
    return out


def printable_checkpoint(directory: Path, block_size: int) -> Path:
    """A tiny byte-level checkpoint whose greedy text is varied printable ASCII (serve and chat tests).

    Large random weights and larger position embeddings make the text wander (with the tied LM head a
    random model otherwise repeats its input token); zero embedding rows outside printable ASCII give
    those tokens logit 0, below the best printable ones, so texts are plain characters that stop
    strings can be cut from.
    """
    import torch

    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.tokenizer import byte_tokenizer

    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=262, block_size=block_size, n_layer=2, n_head=2, n_embd=64))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 2.0 if name == "wpe.weight" else 0.3)
        model.wte.weight[:32] = 0
        model.wte.weight[127:] = 0
    save_checkpoint(directory, model, byte_tokenizer(), stage="sft")
    return directory


def stalled_clients_are_dropped(port: int, request_head: bytes, read_timeout: float, n: int = 20) -> float:
    """Open ``n`` connections to 127.0.0.1:``port`` that each send ``request_head`` (an unfinished request) and
    then nothing; return the seconds until the server had closed every one of them. A server without a read
    timeout never closes them: each ``recv`` then fails with a timeout ``read_timeout + 5`` seconds later."""
    import socket
    import time

    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for c in conns:
        c.sendall(request_head)
    t0 = time.monotonic()
    for c in conns:
        c.settimeout(read_timeout + 5)
        try:
            while c.recv(4096):  # an error answer, if any, then the close
                pass
        except ConnectionResetError:
            pass
        finally:
            c.close()
    return time.monotonic() - t0


def lower_share(prompt: str, completion: str) -> float:
    """Share of the completion's characters that are lowercase letters: a reward a tiny policy can learn."""
    return sum(c in string.ascii_lowercase for c in completion) / max(1, len(completion))


def one(prompt: str, completion: str) -> float:
    """The same reward for every completion: nothing to learn."""
    return 1.0


def tiny_policy(directory: Path, *, block_size: int = 32, seed: int = 0) -> str:
    """A randomly initialised 2-layer byte-level GPT saved as an SFT checkpoint: the RL tests' starting policy."""
    import torch

    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=tok.n_vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=64)
    save_checkpoint(directory, GPT(config), tok, stage="sft")
    return str(directory)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> str:
    """`tiny_policy` with a 32-token context, once per test module."""
    return tiny_policy(tmp_path_factory.mktemp("policy"))


def step_text(env, text: str, stop: bool = True):
    """Step the bytes of ``text`` (then <|endoftext|>) in a byte-level text env; return the last step's result."""
    from rlfl.tokenizer import byte_tokenizer

    out = None
    for t in list(text.encode()) + ([byte_tokenizer().eot_id] if stop else []):
        out = env.step(t)
        if out[2] or out[3]:
            break
    return out


def rollout_scores():
    """An SB3 callback whose ``scores`` get the mean env score of every rollout's finished completions."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RolloutScores(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.scores: list[float] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            store = self.model._store
            self.scores.append(float(store.scores[store.dones].mean()))

    return RolloutScores()


def learn_with_frozen_reference(model, total_timesteps: int) -> list[float]:
    """``model.learn`` with `rollout_scores`; checks that the KL reference did not change; returns the scores."""
    import torch

    before = {k: v.clone() for k, v in model.policy.reference.state_dict().items()}
    log = rollout_scores()
    model.learn(total_timesteps, callback=log)
    for k, v in model.policy.reference.state_dict().items():
        assert torch.equal(v, before[k]), k
    return log.scores

"""Tests for rlfl.chat: scripted terminal sessions through StringIO, checked against direct generate calls."""

from __future__ import annotations

import io

import pytest
from conftest import printable_checkpoint

from rlfl.batching import sampling_config
from rlfl.chat import REPLY, ChatConfig, chat, fit_conversation
from rlfl.chat_template import chat_prompt
from rlfl.checkpoint import load_checkpoint
from rlfl.generate import generate
from rlfl.tokenizer import byte_tokenizer

MAX_NEW = 8


def make_checkpoint(directory, block_size: int):
    """The printable tiny checkpoint, loaded (the chat runs on the saved copy, references on this one)."""
    return load_checkpoint(printable_checkpoint(directory, block_size))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("chat"), block_size=256)


def reply(ckpt, messages, max_new: int = MAX_NEW) -> str:
    """What the model answers to ``messages`` rendered with the chat template (greedy)."""
    tok = ckpt.tokenizer
    out = generate(ckpt.model, [chat_prompt(tok, messages)],
                   sampling_config(tok, max_new_tokens=max_new, temperature=0), pad_id=tok.pad_id)
    tokens = out.tokens[0][:-1] if out.finished[0] else out.tokens[0]
    return tok.decode(tokens)


def run(ckpt, script: str, **kw) -> list[str]:
    """The replies of a scripted session, in order."""
    out = io.StringIO()
    cfg = ChatConfig(checkpoint=str(ckpt.path), max_new_tokens=MAX_NEW, temperature=0, **kw)
    chat(cfg, input_stream=io.StringIO(script), output_stream=out)
    return [line[len(REPLY):] for line in out.getvalue().splitlines() if line.startswith(REPLY)]


def test_session_keeps_history_and_reset_forgets_it(ckpt):
    replies = run(ckpt, "hello there\nhow are you?\n/reset\nhello there\n/quit\nnever read\n")
    u1 = {"role": "user", "content": "hello there"}
    r1 = reply(ckpt, [u1])
    r2 = reply(ckpt, [u1, {"role": "assistant", "content": r1}, {"role": "user", "content": "how are you?"}])
    assert replies == [r1, r2, r1]  # after /reset the first turn is answered exactly as before; /quit stops
    assert r2 != reply(ckpt, [{"role": "user", "content": "how are you?"}])  # the history really was in the prompt
    assert len(set(r1 + r2)) > 2


def test_system_prompt_from_config_and_command(ckpt):
    sys_msg = {"role": "system", "content": "Be terse."}
    u = {"role": "user", "content": "hi"}
    assert run(ckpt, "hi\n", system="Be terse.") == [reply(ckpt, [sys_msg, u])]  # EOF ends cleanly
    out = run(ckpt, "/system Be terse.\nhi\n/system\n/reset\nhi\n")
    assert out == [reply(ckpt, [sys_msg, u]), reply(ckpt, [u])]


def test_commands_and_blank_lines_print_notes(ckpt):
    out = io.StringIO()
    chat(ChatConfig(checkpoint=str(ckpt.path), max_new_tokens=2, temperature=0),
         input_stream=io.StringIO("\n/frobnicate\n/reset\n"), output_stream=out)
    text = out.getvalue()
    assert "unknown command /frobnicate" in text and "(conversation reset)" in text and REPLY not in text


def test_history_is_trimmed_from_the_oldest_turn(tmp_path):
    small = make_checkpoint(tmp_path / "small", block_size=64)
    tok = small.tokenizer
    turns = ["first message here", "second one", "third message"]
    replies = run(small, "".join(t + "\n" for t in turns), system="sys")
    # replay the conversation with the same trimming rule, checking what the model was fed
    history: list[dict[str, str]] = []
    for turn, got in zip(turns, replies):
        messages, ids, dropped = fit_conversation(tok, "sys", history, turn, block_size=64, max_new_tokens=MAX_NEW)
        assert len(ids) + MAX_NEW <= 64 and messages[0]["role"] == "system" and messages[-1]["content"] == turn
        assert got == reply(small, messages)
        history = history[dropped:] + [{"role": "user", "content": turn}, {"role": "assistant", "content": got}]
    assert dropped > 0  # the last turn did not fit with the whole history
    assert messages[1]["role"] == "user"  # trimming drops whole user/assistant pairs


def test_fit_conversation_limits():
    tok = byte_tokenizer()
    history = [{"role": "user", "content": "a" * 20}, {"role": "assistant", "content": "b" * 20}]
    messages, ids, dropped = fit_conversation(tok, None, history, "hi", block_size=100, max_new_tokens=10)
    assert dropped == 0 and ids == chat_prompt(tok, messages)
    messages, ids, dropped = fit_conversation(tok, None, history, "hi", block_size=30, max_new_tokens=10)
    assert dropped == 2 and messages == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="too long"):
        fit_conversation(tok, None, [], "x" * 40, block_size=30, max_new_tokens=10)


def test_chat_config_validation():
    with pytest.raises(ValueError, match="max_new_tokens"):
        ChatConfig(checkpoint="x", max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        ChatConfig(checkpoint="x", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        ChatConfig(checkpoint="x", top_p=0)

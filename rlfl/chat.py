"""An interactive terminal chat with any rlfl checkpoint, through the chat template.

Each line the user types is one user turn. The whole conversation (an optional system prompt, then
alternating user/assistant turns) is rendered with ``rlfl.chat_template.chat_prompt`` and the model
writes the next assistant turn until ``<|end|>`` (or ``<|endoftext|>``, or ``max_new_tokens``). When the
conversation no longer fits the model's context with room for a full reply, the oldest user/assistant
pair is dropped first; the system prompt and the newest user turn are always kept.

Commands: ``/reset`` forgets the conversation, ``/system TEXT`` sets the system prompt (``/system``
alone clears it), ``/quit`` (or end of input) leaves.

Example:
    >>> import io
    >>> chat(ChatConfig(checkpoint="runs/sft"), input_stream=io.StringIO("Hi!\\n/quit\\n"))  # doctest: +SKIP
    assistant> Hello.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

import torch

from rlfl.batching import sampling_config
from rlfl.chat_template import chat_prompt
from rlfl.checkpoint import load_checkpoint
from rlfl.generate import generate
from rlfl.tokenizer import Tokenizer

log = logging.getLogger(__name__)

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /quit"
PROMPT = "you> "
REPLY = "assistant> "


@dataclass
class ChatConfig:
    """`rlfl chat`: talk to a checkpoint in the terminal."""

    checkpoint: str = field(default="runs/sft", metadata={"help": "checkpoint directory of any stage"})
    system: str | None = field(default=None, metadata={"help": "system prompt (change it with /system TEXT)"})
    max_new_tokens: int = field(default=256, metadata={"help": "most tokens per reply"})
    temperature: float = field(default=0.8, metadata={"help": "softmax temperature (0 = greedy)"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass in (0, 1]"})
    top_k: int | None = field(default=None, metadata={"help": "keep the k most likely tokens"})
    seed: int = field(default=0, metadata={"help": "sampling seed (reply i uses seed + i)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | cuda:N"})

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ValueError("ChatConfig.checkpoint is empty; pass a checkpoint directory")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"ChatConfig.max_new_tokens={self.max_new_tokens!r} must be >= 1; pass --max-new-tokens 256")
        if self.temperature < 0:
            raise ValueError(f"ChatConfig.temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"ChatConfig.top_p={self.top_p!r} must be in (0, 1]; leave it unset to disable it")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"ChatConfig.top_k={self.top_k!r} must be >= 1; leave it unset to disable it")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"ChatConfig.device={self.device!r} is not a torch device ({exc}); pass --device cpu") from None


def fit_conversation(
    tokenizer: Tokenizer,
    system: str | None,
    history: list[dict[str, str]],
    user: str,
    *,
    block_size: int,
    max_new_tokens: int,
) -> tuple[list[dict[str, str]], list[int], int]:
    """The messages and prompt ids for the next reply, dropping the oldest turns until they fit.

    Returns (messages, ids, n_dropped): ``history[n_dropped:]`` is what was kept. The prompt + a full
    ``max_new_tokens`` reply fit when possible; otherwise only the system prompt and the new user turn are
    kept and the reply gets whatever room is left. Raises ValueError when even that leaves no room.
    """
    head = [{"role": "system", "content": system}] if system else []
    tail = [{"role": "user", "content": user}]
    dropped = 0
    while True:
        messages = head + history[dropped:] + tail
        ids = chat_prompt(tokenizer, messages)
        if len(ids) + max_new_tokens <= block_size or dropped >= len(history):
            break
        dropped += 2  # a user turn and the assistant's answer go together, so history starts with a user turn
    if len(ids) >= block_size:
        raise ValueError(f"the message is too long: {len(ids)} prompt tokens for a context of {block_size}; "
                         "shorten it (or /system a shorter system prompt)")
    return messages, ids, min(dropped, len(history))


def chat(config: ChatConfig, *, input_stream: TextIO = sys.stdin, output_stream: TextIO = sys.stdout) -> None:
    """Run the chat loop: read user lines from ``input_stream``, write replies to ``output_stream``."""
    ckpt = load_checkpoint(config.checkpoint, device=config.device)
    model, tok = ckpt.model, ckpt.tokenizer
    block_size = model.config.block_size
    system, history = config.system, []
    turn = 0
    interactive = input_stream.isatty()

    def say(text: str) -> None:
        output_stream.write(text + "\n")
        output_stream.flush()

    say(f"chatting with {ckpt.path} ({block_size}-token context); {HELP}")
    while True:
        if interactive:
            output_stream.write(PROMPT)
            output_stream.flush()
        line = input_stream.readline()
        if not line:  # end of input
            break
        text = line.rstrip("\r\n")
        command, _, arg = text.strip().partition(" ")
        if command == "/quit":
            break
        if command == "/reset":
            history = []
            say("(conversation reset)")
            continue
        if command == "/system":
            system = arg.strip() or None
            say(f"(system prompt {'set' if system else 'cleared'})")
            continue
        if command.startswith("/"):
            say(f"(unknown command {command}; {HELP})")
            continue
        if not text.strip():
            continue
        try:
            messages, ids, dropped = fit_conversation(tok, system, history, text, block_size=block_size,
                                                      max_new_tokens=config.max_new_tokens)
        except ValueError as exc:
            say(f"({exc})")
            continue
        if dropped:
            log.info("dropped the %d oldest messages to fit the %d-token context", dropped, block_size)
        sc = sampling_config(tok, max_new_tokens=min(config.max_new_tokens, block_size - len(ids)),
                             temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                             seed=config.seed + turn)
        out = generate(model, [ids], sc, pad_id=tok.pad_id)
        tokens = out.tokens[0][:-1] if out.finished[0] else out.tokens[0]
        reply = tok.decode(tokens)
        history = history[dropped:] + [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        turn += 1
        say(REPLY + reply)

"""The ``rlfl`` command: one console script, one subcommand per stage.

Every subcommand takes ``--config FILE`` (YAML or JSON; flags override it; unknown keys are rejected)
and one flag per config field, each with its help text. User errors end as a one-line ``rlfl: error:``
message and exit status 2, never a traceback.

Example:
    rlfl data prepare --dataset synthetic --out runs/data
    rlfl pretrain --data runs/data --out-dir runs/base --max-steps 300
    rlfl sample runs/base --prompt "The movie was"
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlfl import config as cfglib

log = logging.getLogger("rlfl")


# ------------------------------------------------------------------------------------ command configs
@dataclass
class CorpusArgs:
    """Where a corpus comes from: local files, a known dataset, or the built-in synthetic reviews."""

    input: list[str] = field(default_factory=list, metadata={"help": "local .txt/.md/.jsonl(.gz)/.txt.gz files or folders"})
    dataset: str | None = field(default=None, metadata={"help": "a known dataset: synthetic, tinyshakespeare, tinystories, imdb"})
    local_path: str | None = field(default=None, metadata={"help": "a local copy of --dataset (always wins over downloading)"})
    cache_dir: str = field(default="~/.cache/rlfl/datasets", metadata={"help": "where downloaded datasets are kept"})
    text_field: str = field(default="text", metadata={"help": "the JSONL field holding the text"})
    synthetic_docs: int = field(default=20000, metadata={"help": "reviews generated for --dataset synthetic"})
    seed: int = field(default=0, metadata={"help": "seed for the synthetic corpus and the train/val split"})


@dataclass
class PrepareArgs:
    """`rlfl data prepare`: clean, dedup, split and tokenize a corpus into shards."""

    corpus: CorpusArgs = field(default_factory=CorpusArgs, metadata={"help": "corpus"})
    tokenizer: str = field(default="bytes", metadata={
        "help": "bytes | gpt2:FILE (r50k_base.tiktoken, or a dir with encoder.json+vocab.bpe) | a dir with tokenizer.json "
                "(from `rlfl tokenizer train` or a checkpoint) | a tiktoken name (needs internet)"})
    out: str = field(default="runs/data", metadata={"help": "output directory for train.bin, val.bin, meta.json"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the corpus held out for validation"})
    clean: bool = field(default=True, metadata={"help": "normalise Unicode, strip HTML remnants, tidy whitespace"})
    dedup: bool = field(default=True, metadata={"help": "drop exact duplicate documents"})


@dataclass
class TokenizerTrainArgs:
    """`rlfl tokenizer train`: learn a byte-level BPE and save it as a tiktoken encoding."""

    corpus: CorpusArgs = field(default_factory=CorpusArgs, metadata={"help": "corpus"})
    vocab_size: int = field(default=4096, metadata={"help": "tokens in the vocabulary, special tokens included"})
    out: str = field(default="runs/tokenizer", metadata={"help": "directory to write tokenizer.json into"})
    max_bytes: int = field(default=0, metadata={"help": "train on at most this many bytes of text (0 = all)"})


@dataclass
class SampleArgs:
    """`rlfl sample`: generate text from any checkpoint."""

    checkpoint: str = field(default="runs/base", metadata={"help": "checkpoint directory of any stage"})
    prompt: list[str] = field(default_factory=list, metadata={
        "help": "prompts (default: one empty prompt); on a chat checkpoint (sft, dpo, or ppo/grpo/rloo with "
                "--chat-template) each is a user turn answered up to <|end|>, as in `rlfl chat`"})
    raw: bool = field(default=False, metadata={
        "help": "continue the prompt as plain text even on a chat checkpoint (no chat template, no stop at <|end|>)"})
    num_samples: int = field(default=1, metadata={"help": "samples per prompt"})
    max_new_tokens: int = field(default=100, metadata={"help": "tokens to generate per sample"})
    temperature: float = field(default=0.8, metadata={"help": "softmax temperature"})
    top_k: int | None = field(default=None, metadata={"help": "keep the k most likely tokens"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass"})
    greedy: bool = field(default=False, metadata={"help": "take the most likely token each step"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})


@dataclass
class ExportArgs:
    """`rlfl export`: write a checkpoint as a Hugging Face model folder."""

    checkpoint: str = field(default="runs/sft", metadata={"help": "checkpoint directory of any stage (or hf:DIR)"})
    format: str = field(default="hf", metadata={
        "help": "hf: config.json + model.safetensors + generation_config.json + tokenizer, for transformers"})
    out: str | None = field(default=None, metadata={"help": "folder to write (created; written atomically)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out when it exists and is not empty"})


# ------------------------------------------------------------------------------------ commands
def _documents(c: CorpusArgs):
    """Documents of the corpus the flags describe, plus a name for logs."""
    from rlfl import data

    if bool(c.input) == bool(c.dataset):
        raise ValueError("give the corpus as either --input PATH... or --dataset NAME (exactly one)")
    if c.input:
        return data.iter_documents(c.input, text_field=c.text_field), ", ".join(c.input)
    if c.dataset == "synthetic":
        from rlfl.synthetic import synthetic_documents

        return synthetic_documents(c.synthetic_docs, seed=c.seed), "synthetic"
    from rlfl.download import dataset_documents

    return dataset_documents(c.dataset, cache_dir=Path(c.cache_dir).expanduser(), local_path=c.local_path), c.dataset


def cmd_data_prepare(a: PrepareArgs) -> None:
    from rlfl.data import prepare_corpus
    from rlfl.tokenizer_spec import load_tokenizer

    tokenizer = load_tokenizer(a.tokenizer)
    docs, name = _documents(a.corpus)
    prepare_corpus(docs, tokenizer, a.out, val_fraction=a.val_fraction, seed=a.corpus.seed,
                   clean=a.clean, dedup=a.dedup)  # logs what it wrote
    log.info("corpus: %s, tokenizer: %s", name, tokenizer.name)


def cmd_tokenizer_train(a: TokenizerTrainArgs) -> None:
    import time

    from rlfl.data import clean_text
    from rlfl.tokenizer import train_bpe

    docs, name = _documents(a.corpus)

    def texts():
        total = 0
        for doc in docs:
            text = clean_text(doc.text)
            total += len(text.encode("utf-8"))
            yield text
            if a.max_bytes and total >= a.max_bytes:
                return

    t0 = time.perf_counter()
    tokenizer = train_bpe(texts(), a.vocab_size, progress=True)
    tokenizer.save(a.out)
    print(f"trained a {tokenizer.n_vocab}-token BPE on {name} in {time.perf_counter() - t0:.1f}s -> {a.out}")


def cmd_pretrain(a: Any) -> None:
    from rlfl.pretrain import pretrain

    out = pretrain(a)
    print(f"checkpoint: {out}")


def cmd_sft(a: Any) -> None:
    from rlfl.sft import sft

    out = sft(a)
    print(f"checkpoint: {out}")


def cmd_dpo(a: Any) -> None:
    from rlfl.dpo import dpo

    out = dpo(a)
    print(f"checkpoint: {out}")


def cmd_reward_train(a: Any) -> None:
    from rlfl.reward import train_reward_model

    out = train_reward_model(a)
    print(f"reward model: {out}")


def cmd_ppo(a: Any) -> None:
    from rlfl.agents.train import train_ppo

    out = train_ppo(a)
    print(f"checkpoint: {out}")


def cmd_compare(a: Any) -> None:
    from rlfl.compare import compare
    from rlfl.quickstart import format_summary

    print(format_summary(compare(a)))


def cmd_quickstart(a: Any) -> None:
    from rlfl.quickstart import format_summary, quickstart

    print(format_summary(quickstart(a)))


def cmd_sample(a: SampleArgs) -> None:
    from rlfl.batching import stop_token_ids
    from rlfl.chat_template import chat_prompt, is_chat_checkpoint
    from rlfl.checkpoint import load_checkpoint
    from rlfl.generate import SamplingConfig, generate

    c = load_checkpoint(a.checkpoint, device=a.device)
    tok = c.tokenizer
    prompts = a.prompt or [""]
    # a chat checkpoint learned to answer user turns and end them with <|end|>: feed it what `rlfl chat`
    # feeds it, or a plain prompt would get text the model never learned to write (past <|end|>, new turns)
    chat = is_chat_checkpoint(c.config) and not a.raw
    if chat:
        log.info("%s is a %s chat checkpoint: each prompt is a user turn (--raw continues plain text)",
                 c.path, c.config["stage"])
        encoded = [chat_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
        stops = stop_token_ids(tok)
    else:
        encoded = tok.encode_prompts(prompts)
        stops = (tok.eot_id,)
    ids = [e for e in encoded for _ in range(a.num_samples)]
    room = c.model.config.block_size - max(len(p) for p in ids)
    if room < 1:
        raise ValueError(f"prompt is longer than the model's context ({c.model.config.block_size} tokens"
                         f"{' with the chat template' if chat else ''}); shorten --prompt")
    sc = SamplingConfig(max_new_tokens=min(a.max_new_tokens, room), temperature=a.temperature, top_k=a.top_k,
                        top_p=a.top_p, greedy=a.greedy, seed=a.seed, stop_tokens=stops)
    out = generate(c.model, ids, sc, pad_id=tok.pad_id)
    for i, (completion, finished) in enumerate(zip(out.tokens, out.finished)):
        prompt = prompts[i // a.num_samples]
        if chat:  # the answer without the stop token that ended it
            answer = tok.decode(completion[:-1] if finished else completion)
            print(f"--- sample {i + 1} ---\nuser: {prompt}\nassistant: {answer}")
        else:
            print(f"--- sample {i + 1} ---\n{prompt}{tok.decode(completion)}")


def cmd_export(a: ExportArgs) -> None:
    from rlfl.export import export_hf

    if a.format != "hf":
        raise ValueError(f"--format {a.format!r} is not supported; the one export format is 'hf' (Hugging Face)")
    if not a.out:
        raise ValueError("rlfl export needs --out DIR, the folder to write the model into")
    out = export_hf(a.checkpoint, a.out, overwrite=a.overwrite)
    print(f"exported {a.checkpoint} -> {out}")


# ------------------------------------------------------------------------------------ parser
def _commands() -> dict[tuple[str, ...], tuple[type, Callable[[Any], None], str]]:
    from rlfl.agents.train import GRPOConfig, OnlineDPOConfig, PPOConfig, RLOOConfig
    from rlfl.chat import ChatConfig, chat
    from rlfl.compare import CompareConfig
    from rlfl.dpo import DPOConfig
    from rlfl.feedback.annotators import LabelSimulateConfig, label_simulate
    from rlfl.feedback.terminal import (
        LabelCliConfig,
        LabelExportConfig,
        LabelStatsConfig,
        label_cli,
        label_export,
        label_stats,
    )
    from rlfl.feedback.web import LabelServeConfig, label_serve
    from rlfl.judges import JudgeConfig, judge
    from rlfl.pretrain import PretrainConfig
    from rlfl.quickstart import QuickstartConfig
    from rlfl.reward import RewardTrainConfig
    from rlfl.serve import ServeConfig, serve
    from rlfl.sft import SFTConfig

    return {
        ("quickstart",): (QuickstartConfig, cmd_quickstart,
                          ("the whole pipeline on the built-in synthetic reviews (pretrain, SFT, simulated-human and AI "
                           "labels, two reward models, PPO x 3 seeds, gold evaluation): report.md, plots, results.json")),
        ("compare",): (CompareConfig, cmd_compare,
                       ("RLHF vs RLAIF from one SFT policy: label pairs twice, two reward models, PPO x seeds, gold "
                        "evaluation with bootstrap CIs, report.md + plots + results.json (rlfl compare CONFIG)")),
        ("data", "prepare"): (PrepareArgs, cmd_data_prepare, "clean, dedup, split and tokenize a corpus into shards"),
        ("tokenizer", "train"): (TokenizerTrainArgs, cmd_tokenizer_train, "train a byte-level BPE tokenizer"),
        ("pretrain",): (PretrainConfig, cmd_pretrain, "pretrain or continue pretraining a GPT (torchrun for DDP)"),
        ("sft",): (SFTConfig, cmd_sft, "supervised fine-tuning / instruct-tuning of a checkpoint"),
        ("dpo",): (DPOConfig, cmd_dpo, ("tune a policy on preference pairs with DPO or IPO (no reward model, no "
                                        "sampling; a frozen reference)")),
        ("reward", "train"): (RewardTrainConfig, cmd_reward_train,
                              "train a reward model (Bradley-Terry pairs or labels) on any checkpoint's trunk"),
        ("ppo",): (PPOConfig, cmd_ppo, ("fine-tune a policy with PPO in a text env (reward model, KL to the "
                                        "reference, gold evaluation; resumes from its out-dir)")),
        ("grpo",): (GRPOConfig, cmd_ppo, ("fine-tune a policy with GRPO: groups of completions per prompt, "
                                          "group-relative advantages, no critic (same run, files and resume as ppo)")),
        ("rloo",): (RLOOConfig, cmd_ppo, ("fine-tune a policy with RLOO: GRPO's groups with a leave-one-out baseline "
                                          "and the KL in the reward")),
        ("online-dpo",): (OnlineDPOConfig, cmd_ppo, ("fine-tune a policy with online DPO: DPO's loss on pairs of the "
                                                     "policy's own completions, ranked by the env's reward")),
        ("sample",): (SampleArgs, cmd_sample, "generate text from a checkpoint"),
        ("export",): (ExportArgs, cmd_export, ("write a checkpoint as a Hugging Face folder (gpt2, llama, qwen2 or "
                                               "qwen3) that transformers' from_pretrained opens")),
        ("serve",): (ServeConfig, serve, "OpenAI-compatible HTTP server over a checkpoint (127.0.0.1 by default)"),
        ("chat",): (ChatConfig, chat, "chat with a checkpoint in the terminal"),
        ("judge",): (JudgeConfig, judge, ("label preference pairs with an AI judge (lm:CKPT | http:URL | embed[:DIR] | "
                                          "python:MODULE:FUNCTION) and report agreement with human labels")),
        ("label", "serve"): (LabelServeConfig, label_serve,
                             "label pairs in a local web page (127.0.0.1; a session token guards every write)"),
        ("label", "cli"): (LabelCliConfig, label_cli,
                           "label comparison pairs in the terminal (1/2 left/right, 3 tie, s skip, u undo, q quit)"),
        ("label", "export"): (LabelExportConfig, label_export,
                              "export a label store as preference pairs JSONL for `rlfl reward train`"),
        ("label", "stats"): (LabelStatsConfig, label_stats,
                             "labels per annotator and inter-annotator agreement (Cohen's kappa)"),
        ("label", "simulate"): (LabelSimulateConfig, label_simulate,
                                "label a store with SIMULATED annotators (gold scorer + noise/position/length bias)"),
    }


_CONFIG_POSITIONAL = {("compare",)}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``rlfl`` with every subcommand and flag."""
    parser = argparse.ArgumentParser(prog="rlfl", description="Reinforcement learning from feedback on language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (cls, fn, help_text) in _commands().items():
        if len(path) == 2:
            if path[0] not in groups:
                g = sub.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = g.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            p = groups[path[0]].add_parser(path[1], help=help_text, description=help_text)
        else:
            p = sub.add_parser(path[0], help=help_text, description=help_text)
        if path in _CONFIG_POSITIONAL:  # `rlfl compare CONFIG`: the config file is the command's argument
            p.add_argument("config_file", nargs="?", default=None, metavar="CONFIG", help="YAML/JSON config file")
        if "checkpoint" in cfglib.field_names(cls):  # positional: `rlfl sample CKPT`, `rlfl serve CKPT`
            p.add_argument("checkpoint", nargs="?", default=argparse.SUPPRESS, help="checkpoint directory")
            cfglib.add_arguments(p, cls, exclude=frozenset({"checkpoint"}))
        else:
            cfglib.add_arguments(p, cls)
        p.add_argument("--config", dest="__config__", default=None, metavar="FILE", help="YAML/JSON file of defaults; flags override it")
        p.set_defaults(__cls__=cls, __fn__=fn)
    return parser


def _setup_logging(verbose: bool) -> None:
    class TqdmHandler(logging.StreamHandler):
        # route log lines through tqdm.write so they don't break a running progress bar
        def emit(self, record: logging.LogRecord) -> None:
            try:
                from tqdm import tqdm

                tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # noqa: BLE001 # pragma: no cover - logging must never crash the program
                self.handleError(record)

    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlfl`` console script."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    verbose = ns.pop("verbose")
    _setup_logging(verbose)
    cls, fn, config_path = ns.pop("__cls__"), ns.pop("__fn__"), ns.pop("__config__")
    positional = ns.pop("config_file", None)
    if positional and config_path and positional != config_path:
        parser.exit(2, f"rlfl: error: two config files ({positional} and --config {config_path}); pass one\n")
    config_path = config_path or positional
    ns.pop("command", None)
    ns.pop("subcommand", None)
    try:
        file_values = cfglib.load_config_file(config_path) if config_path else {}
        args = cfglib.build(cls, file_values, ns)
        fn(args)
    except (ValueError, OSError, FloatingPointError) as exc:  # what a user's files, flags or machine cause
        if verbose:  # -v: the traceback too, for telling a real bug from a bad input
            traceback.print_exc()
        parser.exit(2, f"rlfl: error: {_one_line(exc)}\n")
    except KeyboardInterrupt:
        parser.exit(130, "rlfl: interrupted\n")
    return 0


# what to do about an operating-system error, by errno (the message names the file already)
_OS_FIXES = {
    errno.EEXIST: "a file is in the way where a folder is needed; pass another path or move the file",
    errno.ENOTDIR: "a file is in the way where a folder is needed; pass another path or move the file",
    errno.EISDIR: "a folder is where a file is needed; pass the file's path",
    errno.EACCES: "no permission; pass a path you can write, or fix its permissions",
    errno.EPERM: "no permission; pass a path you can write, or fix its permissions",
    errno.ENOSPC: "the disk is full; free some space and rerun (finished steps are kept)",
    errno.EROFS: "the file system is read-only; pass a path on a writable one",
}


def _one_line(exc: BaseException) -> str:
    """A user-caused error as one line: its message, or for an OS error the file, the reason and the fix."""
    if isinstance(exc, OSError) and exc.errno is not None and (exc.filename or exc.errno in _OS_FIXES):
        where = f"{exc.filename}: " if exc.filename else ""
        fix = _OS_FIXES.get(exc.errno)
        return f"{where}{exc.strerror or os.strerror(exc.errno)}" + (f"; {fix}" if fix else "")
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

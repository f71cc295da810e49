"""Generation with Hugging Face tokenizers: a begin-of-text token where the tokenizer adds one, and chat models
that stop at the end of a turn.

The tokenizers are trained in-process with ``tokenizers`` on a few sentences (well under a second); the
expected ids come from ``tokenizers`` itself, whose post-processor puts Llama-3's ``<|begin_of_text|>`` in front.
"""

from __future__ import annotations

import functools
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from test_hf_tokenizer import CHATML_TEMPLATE, LLAMA3_PAT, LLAMA3_SPECIALS, LLAMA3_TEMPLATE  # noqa: E402
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

from rlfl.batching import sampling_config, stop_token_ids  # noqa: E402
from rlfl.chat_template import chat_prompt  # noqa: E402
from rlfl.checkpoint import save_checkpoint  # noqa: E402
from rlfl.cli import main  # noqa: E402
from rlfl.data import Document, _encode_chunks, load_shards, prepare_corpus  # noqa: E402
from rlfl.envs.text_env import TextGenerationEnv, default_stop_tokens  # noqa: E402
from rlfl.evaluate import encode_prompt  # noqa: E402
from rlfl.generate import SamplingConfig, generate, generate_text  # noqa: E402
from rlfl.hf_tokenizer import load_hf_tokenizer  # noqa: E402
from rlfl.model import GPT, GPTConfig  # noqa: E402
from rlfl.serve import ServeConfig, start_server  # noqa: E402
from rlfl.tokenizer import byte_tokenizer  # noqa: E402

CORPUS = ["The food was great and the service was slow.", "I'd come back in 2025, maybe twice!",
          "Hello there, how are you today?", "A quiet place with good bread."] * 20
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PROMPTS = ["The food was", "Hello there"]


@functools.lru_cache(maxsize=None)
def _trained_json(specials: tuple[str, ...], bos: str | None) -> str:
    """tokenizer.json of a small Llama-3-style byte-level BPE (split regex, then bytes), with a bos post-processor."""
    tok = HFTokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok.to_str()


def _folder(path: Path, specials: list[str], config: dict, bos: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(_trained_json(tuple(specials), bos))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(rlfl Tokenizer, the ``tokenizers`` one) of a Llama-3-style tokenizer that adds <|begin_of_text|>."""
    folder = _folder(tmp_path_factory.mktemp("llama3"), LLAMA3_SPECIALS,
                     {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
                      "chat_template": LLAMA3_TEMPLATE}, bos="<|begin_of_text|>")
    return load_hf_tokenizer(folder), HFTokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def llama_ckpt(llama, tmp_path_factory):
    """A tiny random model on the Llama-3-style tokenizer, saved as a pretraining checkpoint."""
    tok, _ = llama
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():  # large weights: greedy continuations depend on every prompt token
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("ckpt") / "llama-tiny"
    save_checkpoint(path, model, tok, stage="pretrain")
    return path, model


def _greedy(model: GPT, tok, ids: list[int], n: int = 8) -> list[int]:
    cfg = SamplingConfig(max_new_tokens=n, greedy=True, stop_tokens=(tok.eot_id,))
    return generate(model, [ids], cfg, pad_id=tok.pad_id).tokens[0]


def test_prompts_get_bos_exactly_as_the_hf_tokenizer_adds_it(llama):
    tok, hf = llama
    bos = tok.special_tokens["<|begin_of_text|>"]
    assert tok.conventions.add_bos and tok.bos_id == bos and tok.bos_prefix == [bos]
    for text in [*PROMPTS, "", "I'd pay $12.50"]:
        assert tok.encode_prompt(text) == hf.encode(text).ids and tok.encode_prompt(text)[0] == bos
    assert tok.encode_prompts(PROMPTS) == [hf.encode(t).ids for t in PROMPTS]
    assert tok.encode("Hello") == hf.encode("Hello", add_special_tokens=False).ids  # plain encode never adds it
    assert encode_prompt(tok, "Hello there", chat=False, max_prompt_tokens=64) == hf.encode("Hello there").ids
    # rlfl's own tokenizers: no bos, and an empty prompt still starts a fresh document at <|endoftext|>
    own = byte_tokenizer()
    assert own.bos_prefix == [] and own.encode_prompts(["hi", ""]) == [own.encode("hi"), [own.eot_id]]


def test_env_prompts_start_with_bos_and_chat_prompts_have_it_once(llama):
    tok, hf = llama
    bos = tok.bos_id
    for chat in (False, True):
        for prompts in (PROMPTS, _Sampler()):  # the pre-encoded list and the encode-on-first-sight path
            env = TextGenerationEnv(tok, prompts, lambda p, c: 0.0, max_prompt_tokens=48, chat_template=chat)
            obs, info = env.reset(seed=0)
            ids = obs["input_ids"][obs["attention_mask"] == 1].tolist()
            want = (chat_prompt(tok, [{"role": "user", "content": info["prompt"]}]) if chat
                    else hf.encode(info["prompt"]).ids)
            assert ids == want and ids[0] == bos and ids.count(bos) == 1


class _Sampler:
    """A prompt source with ``sample`` (the env encodes its texts one at a time)."""

    def sample(self, rng: np.random.Generator) -> str:
        return PROMPTS[int(rng.integers(len(PROMPTS)))]


def test_pretraining_documents_each_start_with_bos(llama, tmp_path):
    tok, hf = llama
    docs = [Document(t) for t in ("First document here.", "Second one\nhas two lines.", "Third!")]
    prepare_corpus(docs, tok, tmp_path / "shards", val_fraction=0.0, seed=0)
    stream = load_shards(tmp_path / "shards").train.tolist()
    got = []
    while stream:
        end = stream.index(tok.eot_id)
        got.append(stream[:end])
        stream = stream[end + 1:]
    assert sorted(got) == sorted(hf.encode(d.text).ids for d in docs)
    # a document cut into pieces (to bound memory) has one bos, at its start
    long = Document("line one of many\n" * 40)
    chunks = list(_encode_chunks([long], tok, max_chars=64))
    ids = [i for chunk in chunks for i in chunk]
    assert len(chunks) > 1 and ids == hf.encode(long.text).ids + [tok.eot_id] and ids.count(tok.bos_id) == 1
    # rlfl's own tokenizer: documents as before, no bos
    own = byte_tokenizer()
    assert list(_encode_chunks([Document("ab")], own)) == [own.encode("ab") + [own.eot_id]]


def test_sample_and_generate_text_feed_bos_first(llama, llama_ckpt, capsys):
    tok, _ = llama
    path, model = llama_ckpt
    prompt = "Hello there"
    with_bos, without = _greedy(model, tok, tok.encode_prompt(prompt)), _greedy(model, tok, tok.encode(prompt))
    assert with_bos != without  # the check below can tell the two apart
    capsys.readouterr()
    assert main(["sample", str(path), "--greedy", "--max-new-tokens", "8", "--prompt", prompt]) == 0
    assert capsys.readouterr().out == f"--- sample 1 ---\n{prompt}{tok.decode(with_bos)}\n"
    cfg = SamplingConfig(max_new_tokens=8, greedy=True)
    done = bool(with_bos) and with_bos[-1] == tok.eot_id
    assert generate_text(model, tok, [prompt], cfg) == [tok.decode(with_bos[:-1] if done else with_bos)]


def test_completions_request_prompt_starts_with_bos(llama, llama_ckpt):
    tok, _ = llama
    path, _ = llama_ckpt
    with start_server(ServeConfig(checkpoint=str(path), port=0, batch_wait_ms=0)) as srv:
        body = {"prompt": "Hello there", "max_tokens": 2, "temperature": 0, "echo": True, "logprobs": 0}
        req = urllib.request.Request(srv.url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
    listed = answer["choices"][0]["logprobs"]["tokens"]
    prompt = tok.encode_prompt("Hello there")
    assert listed[:len(prompt)] == [tok.decode([t]) for t in prompt] and listed[0] == "<|begin_of_text|>"
    assert answer["usage"]["prompt_tokens"] == len(prompt)


def test_chatml_model_whose_eos_is_not_im_end_stops_at_the_end_of_a_turn(tmp_path):
    # A Qwen2 base model's files: eos <|endoftext|>, and the ChatML template that ends turns with <|im_end|>.
    tok = load_hf_tokenizer(_folder(tmp_path, QWEN_SPECIALS, {"eos_token": "<|endoftext|>",
                                                              "chat_template": CHATML_TEMPLATE}))
    eot, im_end = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|im_end|>"]
    assert tok.eot_id == eot and default_stop_tokens(tok) == [eot, im_end] and stop_token_ids(tok) == (eot, im_end)
    env = TextGenerationEnv(tok, ["hi"], lambda p, c: float(len(c)), chat_template=True, max_new_tokens=8)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(tok.encode("ok")[0])
    assert not terminated and not truncated
    _, reward, terminated, truncated, info = env.step(im_end)
    assert terminated and not truncated and info["completion"] == "o" and reward == 1.0
    # when the template's turn end is the eos itself, it is listed once
    same = load_hf_tokenizer(_folder(tmp_path / "instruct", QWEN_SPECIALS, {"eos_token": "<|im_end|>",
                                                                           "chat_template": CHATML_TEMPLATE}))
    assert default_stop_tokens(same) == [im_end] and stop_token_ids(same) == (im_end,)


def test_a_tokenizer_without_a_chat_template_stops_at_its_eos(tmp_path):
    tok = load_hf_tokenizer(_folder(tmp_path, QWEN_SPECIALS, {"eos_token": "<|endoftext|>"}))
    assert stop_token_ids(tok) == (tok.eot_id,) and default_stop_tokens(tok) == [tok.eot_id]
    assert sampling_config(tok, max_new_tokens=4).stop_tokens == (tok.eot_id,)

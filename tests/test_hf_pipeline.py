"""Hugging Face models end to end through the `rlfl` command: a local Qwen2-style folder (safetensors, byte-level
BPE tokenizer.json, ChatML chat template) is fine-tuned with `rlfl sft`, trained with `rlfl ppo`, exported with
`rlfl export`, and transformers opens the export with the same chat-prompt ids and logits; a Llama-style model
pretrained from `rlfl pretrain` flags exports the same way; continued pretraining records an ``hf:`` parent as given.

Everything is built in tmp folders (transformers + tokenizers, seeded); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from rlfl import chat_template as ct  # noqa: E402
from rlfl.checkpoint import load_checkpoint  # noqa: E402
from rlfl.cli import main  # noqa: E402
from rlfl.tokenizer import byte_tokenizer  # noqa: E402

# Qwen2-Instruct's chat template (ChatML with a default system turn), as in its tokenizer_config.json.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The movie was great and the acting was good.", "A terrible film; I would not recommend it to anyone.",
          "You are a helpful assistant. The user asks, the assistant answers.", "Was the movie any good? Yes, 10/10!"]
QUESTION = [{"role": "user", "content": "Was the movie any good?"}]
RUN = ["--no-progress", "--num-threads", "1"]


def rlfl(*args: str | Path) -> None:
    """Run one `rlfl` command line in-process; it must succeed."""
    assert main([str(a) for a in args]) == 0


def state(directory: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(directory).model.state_dict()


def max_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return max((after[k] - before[k]).abs().max().item() for k in before)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory) -> Path:
    """A random Qwen2-style model (grouped-query attention, q/k/v biases, untied LM head) saved by transformers,
    with a byte-level BPE tokenizer.json trained here by `tokenizers` and a ChatML chat template."""
    folder = tmp_path_factory.mktemp("qwen2")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=360, special_tokens=SPECIALS, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHATML_TEMPLATE}))
    config = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128, rope_theta=1e6,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the init's, so that a wrong mapping shows in the logits
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return folder


def test_sft_then_ppo_then_export_opens_in_transformers_with_the_same_logits(qwen_folder, tmp_path):
    records = [{"messages": [{"role": "user", "content": f"Review {i}: was the movie any good?"},
                             {"role": "assistant", "content": "Yes, great acting." if i % 2 else "No, terrible."}]}
               for i in range(16)]
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in records))
    sft, ppo, export = tmp_path / "sft", tmp_path / "ppo", tmp_path / "export"

    rlfl("sft", "--init-from", f"hf:{qwen_folder}", "--data", chats, "--out-dir", sft, "--max-steps", "3",
         "--batch-size", "4", "--block-size", "64", "--lr", "3e-3", "--warmup-steps", "1", "--num-samples", "0", *RUN)
    hf_start = load_checkpoint(f"hf:{qwen_folder}").model.state_dict()
    assert max_change(hf_start, state(sft)) > 1e-3
    # two rollouts of 2 episodes x 4 tokens, prompts wrapped in the ChatML template
    rlfl("ppo", "--init-from", sft, "--out-dir", ppo, "--chat-template", "--n-envs", "2", "--n-steps", "4",
         "--batch-size", "8", "--n-epochs", "1", "--learning-rate", "1e-3", "--max-new-tokens", "4",
         "--max-prompt-tokens", "48", "--eval-prompts", "0", "--sample-every", "0", "--total-timesteps", "16", *RUN)
    assert max_change(state(sft), state(ppo)) > 1e-4
    assert json.loads((ppo / "config.json").read_text())["step"] == 16
    rlfl("export", ppo, "--format", "hf", "--out", export)

    assert json.loads((export / "config.json").read_text())["model_type"] == "qwen2"
    hf_tok = transformers.AutoTokenizer.from_pretrained(export)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    ours = load_checkpoint(ppo)
    ids = hf_tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=False)
    assert hf_tok.decode(ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                  "<|im_start|>user\nWas the movie any good?<|im_end|>\n<|im_start|>assistant\n")
    assert ct.chat_prompt(ours.tokenizer, QUESTION) == ids
    assert tokenizers.Tokenizer.from_file(str(qwen_folder / "tokenizer.json")).encode(hf_tok.decode(ids)).ids == ids
    with torch.no_grad():
        theirs, mine = hf_model(torch.tensor([ids])).logits, ours.model(torch.tensor([ids]))
    assert mine.std() > 0.1  # logits large enough for the tolerance below to mean something
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)


def test_llama_style_pretrain_from_flags_exports_to_transformers(synthetic_shards, tmp_path):
    base, export = tmp_path / "base", tmp_path / "export"
    rlfl("pretrain", "--data", synthetic_shards, "--out-dir", base, "--max-steps", "6", "--batch-size", "4",
         "--block-size", "32", "--lr", "1e-2", "--warmup-steps", "1", "--sample-tokens", "0",
         "--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--position-embedding", "rope", "--norm", "rmsnorm",
         "--mlp", "swiglu", "--n-kv-head", "2", "--intermediate-size", "96", "--no-bias", "--rope-theta", "500000",
         "--layer-norm-eps", "1e-6", "--no-tie-embeddings", *RUN)
    model = json.loads((base / "config.json").read_text())["model"]
    assert {k: model[k] for k in ("position_embedding", "norm", "mlp", "n_kv_head", "intermediate_size", "bias",
                                  "rope_theta", "tie_embeddings")} == {
        "position_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "intermediate_size": 96,
        "bias": False, "rope_theta": 500000.0, "tie_embeddings": False}
    rlfl("export", base, "--format", "hf", "--out", export)

    hf_config = json.loads((export / "config.json").read_text())
    assert (hf_config["model_type"], hf_config["num_key_value_heads"], hf_config["tie_word_embeddings"]) == \
        ("llama", 2, False)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    ids = torch.tensor([byte_tokenizer().encode("A great movie, superb acting.")])
    ours = load_checkpoint(base).model
    with torch.no_grad():
        theirs, mine = hf_model(ids).logits, ours(ids)
    assert mine.std() > 0.1
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)


def test_continued_pretraining_from_an_hf_folder_records_the_spec(qwen_folder, tmp_path):
    corpus, shards, out = tmp_path / "corpus.txt", tmp_path / "shards", tmp_path / "cont"
    corpus.write_text("\n".join(CORPUS * 50))
    rlfl("data", "prepare", "--input", corpus, "--tokenizer", f"hf:{qwen_folder}", "--out", shards)
    rlfl("pretrain", "--data", shards, "--init-from", f"hf:{qwen_folder}", "--out-dir", out, "--max-steps", "2",
         "--batch-size", "2", "--block-size", "32", "--sample-tokens", "0", *RUN)
    config = json.loads((out / "config.json").read_text())
    assert config["parent"] == f"hf:{qwen_folder}"
    assert config["model"]["qkv_bias"] is True and config["model"]["n_kv_head"] == 2

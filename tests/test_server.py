"""The OpenAI-compatible server as a client sees it: a real uvicorn process on a tiny random Llama,
driven with the official ``openai`` client (and httpx where the client cannot say it)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import httpx
import openai
import pytest

from server_helpers import ServerProcess, tiny_server_args, token_ids

pytest.importorskip("transformers")

MODEL = "llama"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("server") / "llama"
    make_tiny_llama(path)  # context 256 tokens
    return path


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    proc = ServerProcess(*tiny_server_args(tiny_dir), cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def post(server, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=60,
                      **kwargs)


# -- the basics ----------------------------------------------------------------------------------
def test_listening_line_and_models(server, client):
    assert server.model == MODEL and server.url.startswith("http://127.0.0.1:")
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, **GREEDY)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL and r.created > 0
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.prompt_tokens > 10


def test_chat_stream_equals_non_stream(client):
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, **GREEDY)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_equals_non_stream(client):
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20, **GREEDY)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.usage.completion_tokens == 20 and whole.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20, stream=True,
                                            **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_prompt_forms_and_n(client, server):
    ids = post(server, "/tokenize", {"prompt": "Hello"}).json()["tokens"]
    by_text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, **GREEDY).choices[0].text
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, **GREEDY).choices[0].text
    assert by_text == by_ids
    # two prompts x n=2: choice index = prompt * n + choice, each equal to the prompt run alone
    other = client.completions.create(model=MODEL, prompt="Bye", max_tokens=6, **GREEDY).choices[0].text
    bye = post(server, "/tokenize", {"prompt": "Bye"}).json()["tokens"]
    r = client.completions.create(model=MODEL, prompt=[ids, bye], n=2, max_tokens=6, **GREEDY)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [by_text, by_text, other, other]
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == len(ids) + len(bye)
    r = client.completions.create(model=MODEL, prompt=["Hello", "Bye"], max_tokens=6, stream=True, **GREEDY)
    texts: dict[int, str] = {}
    for chunk in r:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: by_text, 1: other}


def test_chat_n_choices_streamed_and_not(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, n=3, max_tokens=8, seed=3, temperature=1.0,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 24
    assert len({c.message.content for c in r.choices}) > 1  # seeds seed, seed+1, seed+2
    stream = client.chat.completions.create(model=MODEL, messages=CHAT, n=3, max_tokens=8, seed=3, temperature=1.0,
                                            stream=True, extra_body={"ignore_eos": True})
    texts, roles, finishes = {}, [], []
    for chunk in stream:
        (c,) = chunk.choices
        if c.delta.role:
            roles.append(c.index)
        texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        if c.finish_reason:
            finishes.append(c.index)
    assert sorted(roles) == sorted(finishes) == [0, 1, 2]
    assert texts == {c.index: c.message.content for c in r.choices}  # same seeds, same samples


def test_seed_reproducibility(client):
    def sample(seed):
        return client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, seed=seed, temperature=1.0,
                                              top_p=0.95, extra_body={"ignore_eos": True}).choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_strings_and_stop_token_ids(client):
    base = client.completions.create(model=MODEL, prompt="abc", max_tokens=24, **GREEDY).choices[0].text
    stop = base[6:9]
    expected = base[: base.find(stop)]
    for stops in (stop, [stop, "\x00never"]):
        r = client.completions.create(model=MODEL, prompt="abc", max_tokens=24, stop=stops, **GREEDY)
        assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, **GREEDY)
    text = chat.choices[0].message.content
    stop = text[4:7]
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, stop=[stop], **GREEDY)
    assert r.choices[0].message.content == text[: text.find(stop)] and r.choices[0].finish_reason == "stop"
    # a stop token id ends the choice at its first occurrence
    lp = client.completions.create(model=MODEL, prompt="abc", max_tokens=24, logprobs=0, temperature=0,
                                   extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True})
    ids = token_ids(lp.choices[0].logprobs.tokens)
    r = client.completions.create(model=MODEL, prompt="abc", max_tokens=24, temperature=0,
                                  extra_body={"stop_token_ids": [ids[5]]})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == ids.index(ids[5]) + 1


def test_logit_bias_steers_sampling(client):
    forced = client.completions.create(model=MODEL, prompt="abc", max_tokens=6, logit_bias={"70": 100}, logprobs=0,
                                       temperature=0.8, seed=1,
                                       extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True})
    assert forced.choices[0].logprobs.tokens == ["token_id:70"] * 6


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=3,
                                       **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert entry.logprob == pytest.approx(tops[0])  # greedy picks the best token
        assert entry.token == entry.top_logprobs[0].token and isinstance(entry.bytes, list)
    streamed = [c.choices[0].logprobs.content for c in
                client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, logprobs=True,
                                               top_logprobs=3, stream=True, **GREEDY)
                if c.choices and c.choices[0].logprobs]
    flat = [e for part in streamed for e in part]
    assert [(e.token, round(e.logprob, 4)) for e in flat] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, **GREEDY)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_with_echo(client, server):
    prompt = "The sky is"
    prompt_ids = post(server, "/tokenize", {"prompt": prompt}).json()["tokens"]
    as_ids = dict(temperature=0, extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True})
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=2, echo=True, **as_ids)
    c = r.choices[0]
    assert c.text.startswith(prompt)
    lp = c.logprobs
    n = len(prompt_ids) + 4
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert 2 <= len(top) <= 3 and top[token] == pytest.approx(value) and max(top.values()) >= value - 1e-6
    assert token_ids(lp.tokens[:len(prompt_ids)]) == prompt_ids
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[1] == 0  # BOS takes no room
    # the generated part equals a run without echo
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=2, **GREEDY).choices[0]
    assert plain.text == c.text[len(prompt):]
    assert plain.logprobs.token_logprobs == pytest.approx(lp.token_logprobs[len(prompt_ids):], abs=1e-4)
    # scoring: echo with max_tokens=0 returns the prompt's logprobs and generates nothing
    score = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, logprobs=1, echo=True)
    assert score.choices[0].text == prompt and score.usage.completion_tokens == 0
    assert score.choices[0].logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:len(prompt_ids)], abs=1e-4)
    # a prompt logprob equals the logprob the same token had when it was generated
    ids = prompt_ids + token_ids(client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=1, logprobs=0, temperature=0,
        extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs.tokens)
    rescored = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, logprobs=0, echo=True)
    assert rescored.choices[0].logprobs.token_logprobs[-1] == pytest.approx(plain.logprobs.token_logprobs[0], abs=1e-4)
    # streamed echo: the first chunk carries the prompt and its logprobs
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=2, echo=True,
                                            stream=True, **GREEDY))
    assert "".join(ch.choices[0].text for ch in chunks) == c.text
    streamed = [v for ch in chunks for v in ch.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-4)


def test_unknown_fields_are_ignored(client, server):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, user="me",
                                       extra_body={"no_such_field": {"x": [1, 2]}, "another": None})
    assert r.usage.completion_tokens <= 2
    body = {"prompt": "x", "max_tokens": 1, "frobnicate": True}  # and no model at all: the served one
    assert post(server, "/v1/completions", body).status_code == 200


def test_tokenize_and_detokenize(server):
    r = post(server, "/tokenize", {"model": MODEL, "prompt": "hello"}).json()
    assert r["count"] == 6 == len(r["tokens"]) and r["max_model_len"] == 256
    assert r["tokens"][0] == 1  # BOS (the byte tokenizer adds it), then one token per byte
    bare = post(server, "/tokenize", {"prompt": "hello", "add_special_tokens": False}).json()["tokens"]
    assert bare == r["tokens"][1:]
    assert post(server, "/detokenize", {"model": MODEL, "tokens": bare}).json() == {"prompt": "hello"}
    chat = post(server, "/tokenize", {"messages": CHAT}).json()
    usage = httpx.post(server.url + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1}).json()["usage"]
    assert chat["count"] == usage["prompt_tokens"]
    assert post(server, "/tokenize", {"model": "other", "prompt": "x"}).status_code == 404
    bad = post(server, "/detokenize", {"tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=2), "top_p"),
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_completion_tokens=0), "max_completion_tokens"),
    (dict(presence_penalty=5), "presence_penalty"),
    (dict(logit_bias={"abc": 1}), "logit_bias"),
    (dict(logit_bias={"100000": 1}), "logit_bias"),
    (dict(logprobs=True, top_logprobs=50), "top_logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(stop=[f"s{i}" for i in range(40)]), "stop"),
    (dict(messages=[]), "messages"),
    (dict(messages=CHAT * 600), "messages"),  # more than serve.max_messages
    (dict(messages=[{"role": "user"}]), "messages"),
    (dict(extra_body={"top_k": -5}), "top_k"),
    (dict(extra_body={"max_tokens": "many"}), "max_tokens"),
    (dict(extra_body={"messages": "hi"}), "messages"),
])
def test_invalid_parameters_are_400_naming_the_field(client, kwargs, param):
    kwargs = {"messages": CHAT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, **kwargs)
    err = error_of(info.value)
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


@pytest.mark.parametrize("kwargs, param", [
    (dict(prompt=[]), "prompt"),
    (dict(prompt=[[1, 2], "x"]), "prompt"),
    (dict(prompt=[10**6]), "prompt"),
    (dict(prompt=["x"] * 65), "prompt"),  # more than serve.max_prompts
    (dict(prompt="x", logprobs=21), "logprobs"),
    (dict(prompt="x", logprobs=21, echo=True), "logprobs"),
    (dict(prompt="x", suffix="tail"), "suffix"),
    (dict(prompt="x", best_of=3), "best_of"),
])
def test_invalid_completion_requests(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, max_tokens=2, **kwargs)
    err = error_of(info.value)
    assert err["param"] == param, err
    if param == "suffix":
        assert "not supported" in err["message"]


def test_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10_000)
    err = error_of(info.value)
    assert err["code"] == "context_length_exceeded" and "256" in err["message"]
    with pytest.raises(openai.BadRequestError) as info:  # no max_tokens, but the prompt alone fills the context
        client.completions.create(model=MODEL, prompt="x" * 400)
    assert error_of(info.value)["code"] == "context_length_exceeded"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=2)
    err = error_of(info.value)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", max_tokens=2)


def test_unknown_route_method_and_bad_json(server):
    for response, status in [(httpx.get(server.url + "/v1/nothing"), 404),
                             (httpx.post(server.url + "/nothing", json={}), 404),
                             (httpx.get(server.url + "/v1/chat/completions"), 405),
                             (post(server, "/v1/chat/completions", b"{not json"), 400),
                             (post(server, "/v1/chat/completions", b"[1, 2]"), 400),
                             (post(server, "/v1/completions", b""), 400)]:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/v1/chat/completions").json()["error"]["code"] == "method_not_allowed"


# -- concurrency and cancellation ------------------------------------------------------------------
def test_32_concurrent_streaming_clients(server, capsys):
    clients, max_tokens = 32, 64

    async def one(aclient, i):
        messages = [{"role": "user", "content": f"client {i}: count to ten"}]
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=max_tokens, stream=True, logprobs=True, temperature=0,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        text, tokens, usage, ids = "", 0, None, set()
        async for chunk in stream:
            ids.add(chunk.id)
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                tokens += len(c.logprobs.content) if c.logprobs else 0
        return text, tokens, usage, ids

    async def whole(aclient, i):
        messages = [{"role": "user", "content": f"client {i}: count to ten"}]
        r = await aclient.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                  temperature=0, extra_body={"ignore_eos": True})
        return r.choices[0].message.content

    async def main():
        aclient = server.async_client(http_client=openai.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=64)))
        start = time.perf_counter()
        streamed = await asyncio.gather(*(one(aclient, i) for i in range(clients)))
        elapsed = time.perf_counter() - start
        reference = await asyncio.gather(*(whole(aclient, i) for i in range(clients)))
        await aclient.close()
        return streamed, elapsed, reference

    streamed, elapsed, reference = asyncio.run(main())
    for i, (text, tokens, usage, ids) in enumerate(streamed):
        assert tokens == max_tokens and usage.completion_tokens == max_tokens, i
        assert len(ids) == 1  # one response per client, nothing crossed over
        assert text == reference[i], i  # nothing lost, nothing duplicated, nobody else's tokens
    assert len({s[3].pop() for s in streamed}) == clients
    with capsys.disabled():
        print(f"\n32 concurrent streams: {clients * max_tokens} tokens in {elapsed:.2f}s = "
              f"{clients * max_tokens / elapsed:.0f} tok/s")


def test_disconnect_mid_stream_frees_kv_blocks(server, client):
    total = server.metrics()["mistralrs_kv_blocks_total"]
    stream = client.completions.create(model=MODEL, prompt="a long one", max_tokens=240, stream=True, **GREEDY)
    for _, chunk in zip(range(3), stream):
        pass
    busy = server.metrics()
    assert busy["mistralrs_kv_blocks_free"] < total and busy["mistralrs_sequences_running"] == 1
    stream.close()  # the client goes away
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        m = server.metrics()
        if m["mistralrs_kv_blocks_free"] == total and m["mistralrs_sequences_running"] == 0:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"KV blocks not freed within a second: {server.metrics()}")


def test_disconnect_before_response_cancels_non_streamed_request(server):
    total = server.metrics()["mistralrs_kv_blocks_total"]
    body = json.dumps({"prompt": "x", "max_tokens": 240, "n": 16, "ignore_eos": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 5
        while server.metrics()["mistralrs_sequences_running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 1.0
    while server.metrics()["mistralrs_kv_blocks_free"] != total:
        assert time.monotonic() < deadline, server.metrics()
        time.sleep(0.02)


def test_metrics_exposition(server, client):
    client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    httpx.get(server.url + "/no/such/route")
    text = httpx.get(server.url + "/metrics").text
    assert '# TYPE mistralrs_http_requests_total counter' in text
    assert 'mistralrs_http_requests_total{method="POST",endpoint="/v1/chat/completions",status="200"}' in text
    assert 'endpoint="unmatched",status="404"' in text
    m = server.metrics()
    for name in ("prompt_tokens_total", "generation_tokens_total", "sequences_running", "sequences_waiting",
                 "kv_blocks_used", "kv_blocks_free", "prefix_cache_hit_tokens_total",
                 "prefix_cache_queried_tokens_total", "preemptions_total"):
        assert f"mistralrs_{name}" in m, name
    assert m["mistralrs_prompt_tokens_total"] > 0 and m["mistralrs_generation_tokens_total"] > 0
    assert m["mistralrs_kv_blocks_used"] + m["mistralrs_kv_blocks_free"] == m["mistralrs_kv_blocks_total"]


# -- in process ----------------------------------------------------------------------------------
def test_create_app_works_with_litestar_test_client(tiny_dir):
    from litestar.testing import TestClient

    import mistralrs
    from mistralrs.engine.server import create_app

    llm = mistralrs.load("model=llama", f"model.source={tiny_dir}", "model.dtype=float32", "model.device=cpu",
                         "serve.api_key=k")
    with TestClient(app=create_app(llm)) as tc:
        assert tc.get("/health").status_code == 200
        assert tc.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        auth = {"Authorization": "Bearer k"}
        r = tc.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "ignore_eos": True}, headers=auth)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        r = tc.post("/v1/chat/completions", headers=auth,
                    json={"messages": CHAT, "max_tokens": 3, "stream": True, "ignore_eos": True})
        events = [line for line in r.text.split("\n\n") if line]
        assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_unexpected_failures_keep_the_error_shape(tiny_dir):
    from litestar.testing import TestClient

    import mistralrs
    from mistralrs.engine.server import create_app

    llm = mistralrs.load("model=llama", f"model.source={tiny_dir}", "model.dtype=float32", "model.device=cpu")
    app = create_app(llm)
    with TestClient(app=app) as tc:
        llm.chat_prompt_ids = lambda messages: 1 / 0  # a bug in the server's path
        r = tc.post("/v1/chat/completions", json={"messages": CHAT})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"

        def broken_step(*args):
            raise RuntimeError("kernel exploded")

        llm.engine.runner.run = broken_step  # a failure inside the engine thread
        r = tc.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        r = tc.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True})
        events = [e for e in r.text.split("\n\n") if e]
        assert '"engine_error"' in events[-2] and events[-1] == "data: [DONE]"
        metrics = tc.get("/metrics").text
        assert 'endpoint="/v1/chat/completions",status="500"' in metrics


def test_serve_is_the_default_task():
    from mistralrs.engine.config import compose_config

    assert compose_config([]).task == "serve"

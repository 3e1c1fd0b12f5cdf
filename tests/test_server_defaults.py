"""Fields a request omits take the server's ``sampling.*`` settings (as llama-server's --temp and -n
do), so a bare request answers in bounded time."""

from __future__ import annotations

import signal

import pytest

from server_helpers import ServerProcess, tiny_server_args, token_ids

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("defaults") / "llama"
    make_tiny_llama(path)  # context 256 tokens
    proc = ServerProcess(*tiny_server_args(path, "sampling.max_tokens=7", "sampling.temperature=0"),
                         cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.stderr


def test_omitted_max_tokens_and_temperature_take_the_servers_sampling_settings(server):
    client = server.client()
    extra = {"ignore_eos": True, "return_tokens_as_token_ids": True}
    bare = client.completions.create(model="llama", prompt="hello", logprobs=0, extra_body=extra)
    assert bare.usage.completion_tokens == 7  # sampling.max_tokens
    # sampling.temperature=0: the bare request is greedy, the same as an explicit temperature 0
    greedy = client.completions.create(model="llama", prompt="hello", logprobs=0, max_tokens=7, temperature=0,
                                       extra_body=extra)
    assert token_ids(bare.choices[0].logprobs.tokens) == token_ids(greedy.choices[0].logprobs.tokens)
    chat = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}],
                                          extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 7


def test_a_request_field_overrides_the_server_setting(server):
    client = server.client()
    r = client.completions.create(model="llama", prompt="hello", max_tokens=12, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 12
    sampled = {client.completions.create(model="llama", prompt="hello", max_tokens=12, temperature=2.0, seed=s,
                                         extra_body={"ignore_eos": True}).choices[0].text for s in range(4)}
    assert len(sampled) > 1  # temperature 2 from the request, not the server's greedy 0


@pytest.mark.parametrize("kwargs, param", [  # tools are served: tests/test_server_tools.py
    (dict(extra_body={"functions": [{"name": "f"}]}), "functions"),
    (dict(modalities=["text", "audio"]), "modalities"),
    (dict(audio={"voice": "alloy", "format": "wav"}), "audio"),
    (dict(prediction={"type": "content", "content": "x"}), "prediction"),
    (dict(store=True), "store"),
    (dict(reasoning_effort="high"), "reasoning_effort"),
    (dict(extra_body={"web_search_options": {}}), "web_search_options"),
    (dict(service_tier="priority"), "service_tier"),
])
def test_unsupported_openai_features_are_refused_not_ignored(server, kwargs, param):
    import openai

    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       **kwargs)
    err = info.value.body.get("error", info.value.body) if isinstance(info.value.body, dict) else {}
    assert err.get("param") == param and "not supported" in err.get("message", ""), info.value.body


def test_plain_text_response_format_and_no_tools_are_accepted(server):
    r = server.client().chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2, response_format={"type": "text"}, tool_choice="none",
                                                modalities=["text"], store=False, service_tier="auto", user="u1",
                                                metadata={"k": "v"}, parallel_tool_calls=False)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_extreme_sampling_values_never_harm_a_live_stream(server):
    """Values at the edge of float32 beside a decoding stream: each gets a 200 (sampled as documented)
    or a 400 naming the field, and the stream still finishes with all its tokens."""
    import threading

    import httpx

    client = server.client()
    done: dict = {}

    def live() -> None:
        chunks = list(client.completions.create(model="llama", prompt="live", max_tokens=200, stream=True,
                                                temperature=0.8, logprobs=0, extra_body={"ignore_eos": True}))
        done["tokens"] = sum(len(c.choices[0].logprobs.tokens) for c in chunks if c.choices and c.choices[0].logprobs)
        done["finish"] = chunks[-1].choices[0].finish_reason

    thread = threading.Thread(target=live)
    thread.start()
    statuses = {}
    for field, value in [("temperature", 1e-45), ("temperature", 5e-324), ("top_p", 1e-300), ("top_k", 2**63),
                         ("repetition_penalty", 1e-38), ("top_k", 2**31 - 1)]:
        body = {"model": "llama", "prompt": "x", "max_tokens": 3, field: value}
        if field != "temperature":
            body["temperature"] = 1.0
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        statuses[(field, value)] = r.status_code
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert r.json()["error"]["param"] == field
    thread.join(60)
    assert done == {"tokens": 200, "finish": "length"}
    assert statuses[("temperature", 1e-45)] == 200 and statuses[("top_k", 2**63)] == 400


def test_bodies_that_are_not_json_requests_are_refused(server):
    """text/plain JSON (what a web page can POST cross-site without a preflight) is a 415; JSON nested
    1,000+ deep, even in a field the server ignores, is a 400, not a 500."""
    import json

    import httpx

    body = json.dumps({"model": "llama", "prompt": "x", "max_tokens": 1}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        r = httpx.post(server.url + "/v1/completions", content=body, headers=headers, timeout=30)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    ok = httpx.post(server.url + "/v1/completions", content=body,
                    headers={"content-type": "application/json; charset=utf-8"}, timeout=30)
    assert ok.status_code == 200, ok.text
    deep = b'{"model": "llama", "prompt": "x", "max_tokens": 1, "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = httpx.post(server.url + "/v1/completions", content=deep, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("key", ["\u0663", "1_0", " 7", "+3", "-1"])
def test_logit_bias_keys_must_be_ascii_decimal_ids(server, key):
    import httpx

    r = httpx.post(server.url + "/v1/completions", json={"model": "llama", "prompt": "x", "max_tokens": 1,
                                                          "logit_bias": {key: 1.0}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text

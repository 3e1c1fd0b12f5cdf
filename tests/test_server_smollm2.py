"""The real SmolLM2-135M-Instruct Q4_1 behind the server, started the way a user would (``mistralrs``:
the default task and model), checked against llama.cpp's tokenizer and the float32 reference."""

from __future__ import annotations

import signal

import httpx
import pytest

from conftest import load_reference
from server_helpers import ServerProcess, token_ids

STEM = "smollm2-135m-instruct-q4_1"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    # no task= and no model=: `mistralrs` serves the default model (resolved from the local cache)
    proc = ServerProcess("model.dtype=float32", "model.device=cpu", cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.stderr


def test_default_invocation_serves_smollm2(server):
    assert server.model == "smollm2"
    assert [m.id for m in server.client().models.list().data] == ["smollm2"]


def test_tokenize_equals_llama_cpp(server):
    meta, _ = load_reference(STEM, "llamacpp")
    for case in meta["tokenize"]:
        got = httpx.post(server.url + "/tokenize", json={"model": "smollm2", "prompt": case["text"]}).json()
        # special-token text is parsed, as vLLM's /tokenize does; SmolLM2 adds no BOS, so this is
        # llama.cpp's `ids_special`, which equals `ids` for every text without special tokens
        assert got["tokens"] == case["ids_special"], case["text"]
        if "<|" not in case["text"]:
            assert got["tokens"] == case["ids"], case["text"]
        assert got["count"] == len(case["ids_special"])
        back = httpx.post(server.url + "/detokenize", json={"tokens": got["tokens"]}).json()["prompt"]
        assert back == case["text"]


def test_greedy_completions_equal_float_reference(server):
    meta, _ = load_reference(STEM, "transformers")
    client = server.client()
    extra = {"ignore_eos": True, "return_tokens_as_token_ids": True}

    for prompt in meta["prompts"]:
        r = client.completions.create(model="smollm2", prompt=prompt["ids"], max_tokens=32, temperature=0,
                                      logprobs=0, extra_body=extra)
        assert token_ids(r.choices[0].logprobs.tokens) == prompt["greedy_ids"], f"prompt {prompt['index']}"
        assert r.usage.completion_tokens == 32 and r.usage.prompt_tokens == len(prompt["ids"])
    # all prompts in one request: batched in the engine, still the same tokens
    r = client.completions.create(model="smollm2", prompt=[p["ids"] for p in meta["prompts"]], max_tokens=32,
                                  temperature=0, logprobs=0, extra_body=extra)
    assert [token_ids(c.logprobs.tokens) for c in r.choices] == [p["greedy_ids"] for p in meta["prompts"]]


def test_chat_answers(server):
    r = server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"  # the model ends its turn with <|im_end|>


def test_the_readme_request_answers_with_default_settings(server):
    """The README's curl body as it is (no max_tokens, no temperature): answered, bounded by the
    default sampling.max_tokens, with text."""
    import json
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    body = json.loads(re.search(r"-d '(\{.*?\})'", readme, re.S).group(1))
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert 0 < answer["usage"]["completion_tokens"] <= 256
    assert answer["choices"][0]["message"]["content"].strip()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def test_rss_growth_is_bounded_over_200_requests(smollm2_gguf, tmp_path):
    """Serving must not leak: once warm-up requests have cycled through the (small) KV pool, 200 more
    requests (streamed and not, chat and completions, 4 at a time) grow the server's resident memory by
    less than 16 MB. (A fresh pool's pages become resident as blocks are first used, which is not a
    leak; a 64-block pool is touched whole by the warm-up.)"""
    from concurrent.futures import ThreadPoolExecutor

    proc = ServerProcess("engine.kv_cache_tokens=1024", "engine.threads=2", cwd=tmp_path)
    try:
        client = proc.client()

        def one(i: int) -> None:
            extra = {"ignore_eos": True}
            if i % 2:
                list(client.completions.create(model="smollm2", prompt=f"Request {i}: the", max_tokens=8,
                                               stream=True, temperature=0, extra_body=extra))
            else:
                client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": f"Say {i}"}],
                                               max_tokens=8, temperature=0, extra_body=extra)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(80)))
            before = _rss_mb(proc.proc.pid)
            list(pool.map(one, range(80, 280)))
        after = _rss_mb(proc.proc.pid)
    finally:
        assert proc.stop(signal.SIGTERM) == 0, proc.stderr
    assert after - before < 16, f"RSS grew {after - before:.1f} MB over 200 requests ({before:.0f} -> {after:.0f} MB)"


def test_the_headline_command_serves_a_chat(smollm2_gguf, tmp_path):
    """`mistralrs model=llama quant=q4_k serve.port=1234` (on a free port here): model=llama serves
    SmolLM2, whose Q4_1 file is requantized to Q4_K at load, with a warning saying so."""
    proc = ServerProcess("model=llama", "quant=q4_k", cwd=tmp_path)
    try:
        # max_tokens bounds the time on a loaded machine (the full 256-token default took >120 s there)
        r = proc.client().chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=48)
        assert r.choices[0].message.content.strip() and 0 < r.usage.completion_tokens <= 48
    finally:
        assert proc.stop(signal.SIGTERM) == 0, proc.stderr
    assert "requantizing from the dequantized weights" in proc.stderr

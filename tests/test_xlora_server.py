"""X-LoRA served through the OpenAI server: /v1/models shows the adapters, and concurrent greedy
requests (decoded together, two KV caches each) equal the offline engine's answers."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from server_helpers import ServerProcess, tiny_server_args
from xlora_layouts import BASE, load_xlora, mistralrs_layout

pytest.importorskip("openai")

VARIANT = "v2_layerwise_topk_temp"
PROMPTS = ["hello there", "x-lora mixes adapters", "a", "the quick brown fox jumps"]


@pytest.fixture(scope="module")
def xlora_dir(tmp_path_factory):
    return mistralrs_layout(tmp_path_factory.mktemp("x") / "xlora", VARIANT)


@pytest.fixture(scope="module")
def server(xlora_dir, tmp_path_factory):
    proc = ServerProcess(*tiny_server_args(BASE, "adapter=xlora", f"adapter.source={xlora_dir}"),
                         cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_models_lists_the_adapters(server):
    card = httpx.get(f"{server.base_url}/models", timeout=10).json()["data"][0]
    assert card["adapter"]["kind"] == "xlora"
    assert card["adapter"]["adapters"] == ["adapter_0", "adapter_1", "adapter_2"]
    assert card["adapter"]["xlora_layers"] == 10


def test_concurrent_completions_equal_offline(server, xlora_dir):
    client = server.async_client()

    async def one(prompt):
        r = await client.completions.create(model=server.model, prompt=prompt, max_tokens=8, temperature=0,
                                            extra_body={"ignore_eos": True})
        return r.choices[0].text

    async def all_of():
        return await asyncio.gather(*(one(p) for p in PROMPTS))

    served = asyncio.run(all_of())
    llm = load_xlora(xlora_dir)
    offline = [llm.generate(p, max_tokens=8, temperature=0, ignore_eos=True) for p in PROMPTS]
    assert served == offline


def test_chat_completion_streams(server):
    client = server.client()
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
        stream=True, extra_body={"ignore_eos": True})]
    whole = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert "".join(pieces) == whole.choices[0].message.content


def test_constrained_requests_beside_free_ones(server):
    """X-LoRA's two passes and a grammar mask share steps: constrained answers match, free ones decode."""
    import re

    client = server.async_client()
    pattern = r"[a-d]{3}-[0-9]{2}"

    async def constrained(seed):
        r = await client.completions.create(model=server.model, prompt="code:", max_tokens=20, temperature=0.9,
                                            seed=seed, extra_body={"structured_outputs": {"regex": pattern}})
        return r.choices[0]

    async def free(prompt):
        r = await client.completions.create(model=server.model, prompt=prompt, max_tokens=8, temperature=0,
                                            extra_body={"ignore_eos": True})
        return r.choices[0]

    async def all_of():
        return await asyncio.gather(*(constrained(s) for s in range(4)), *(free(p) for p in PROMPTS))

    results = asyncio.run(all_of())
    for choice in results[:4]:
        assert re.fullmatch(pattern, choice.text) and choice.finish_reason == "stop", choice
    assert all(c.finish_reason == "length" for c in results[4:])

"""serve.backend=ray on a local Ray cluster (``ray.init(num_cpus=2)``) with two replicas of a tiny
random Llama: answers equal the local engine's greedy output, work spreads over both replicas,
prompts follow their cached prefix, and a replica killed during a burst loses no request that had not
started streaming and hangs none. The first test runs the CLI with a cluster of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import httpx
import pytest

from ray_helpers import InProcessIngress, ray_overrides, start_local_ray, stop_ray
from server_helpers import ServerProcess

pytestmark = pytest.mark.slow
MODEL = "llama"
PROMPTS = [f"Replica test {i}: the weather today is" for i in range(8)]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(path)
    return path


@pytest.fixture(scope="module")
def local_greedy(tiny_dir):
    """The local engine's greedy chat answers to PROMPTS."""
    import mistralrs

    llm = mistralrs.load("model=llama", f"model.source={tiny_dir}", "model.dtype=float32", "model.device=cpu")
    return [llm.chat([{"role": "user", "content": p}], max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
            for p in PROMPTS]


def _ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "ray/core/src/ray/(gcs|raylet)"], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def test_cli_serves_through_ray_and_sigterm_leaves_no_ray_process(tiny_dir, tmp_path, local_greedy):
    """Runs before the module's shared cluster exists: the CLI starts (and must stop) its own."""
    before = _ray_processes()
    server = ServerProcess(*ray_overrides(tiny_dir, 1), "task=serve", cwd=tmp_path, startup_timeout=240)
    try:
        assert "1 replicas on Ray Serve" in server.stderr
        answer = server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=MAX_TOKENS, temperature=0,
            extra_body={"ignore_eos": True})
        assert answer.choices[0].message.content == local_greedy[0]
        assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok", "replicas": 1, "replicas_up": 1}
        assert _ray_processes() - before  # it started a cluster of its own
    finally:
        status = server.stop(signal.SIGTERM, timeout=120)
    assert status == 0, server.stderr
    deadline = time.monotonic() + 30
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes() - before, "Ray processes left behind"


@pytest.fixture(scope="module")
def ingress(tiny_dir):
    start_local_ray(num_cpus=2)
    try:
        served = InProcessIngress(ray_overrides(tiny_dir, 2))
        try:
            yield served
        finally:
            served.close()
    finally:
        stop_ray()


def _requests(slots) -> list[int]:
    return [s.counters.requests for s in slots]


def test_concurrent_answers_equal_local_greedy_and_both_replicas_work(ingress, local_greedy):
    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0, timeout=120)

        async def one(prompt: str, stream: bool) -> str:
            kwargs = dict(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
                          temperature=0, extra_body={"ignore_eos": True})
            if not stream:
                return (await client.chat.completions.create(**kwargs)).choices[0].message.content
            text = ""
            async for chunk in await client.chat.completions.create(stream=True, **kwargs):
                text += "".join(c.delta.content or "" for c in chunk.choices)
            return text

        try:
            jobs = [one(p, stream=i % 2 == 0) for i, p in enumerate(PROMPTS * 2)]
            return await asyncio.wait_for(asyncio.gather(*jobs), 180)
        finally:
            await client.close()

    before = _requests(ingress.slots)
    answers = asyncio.run(main())
    assert answers == local_greedy * 2
    got = [after - b for after, b in zip(_requests(ingress.slots), before)]
    assert sum(got) == len(PROMPTS) * 2 and all(got), f"requests per replica: {got}"
    metrics = httpx.get(ingress.url + "/metrics", timeout=10).text
    assert 'mistralrs_replicas_up{model="llama"} 2' in metrics
    per_replica = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("mistralrs_replica_generation_tokens_total{")]
    total = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("mistralrs_generation_tokens_total{"))
    assert len(per_replica) == 2 and all(per_replica) and total == sum(per_replica)


def test_prefix_affine_requests_land_on_the_replica_that_has_the_prefix(ingress):
    client = ingress.client()
    shared = "You are careful. " * 5  # several full KV blocks (16 tokens) of the same prompt prefix

    def ask(question: str) -> int:
        """The replica that served it."""
        before = _requests(ingress.slots)
        client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                       messages=[{"role": "system", "content": shared},
                                                 {"role": "user", "content": question}])
        return next(i for i, (a, b) in enumerate(zip(_requests(ingress.slots), before)) if a > b)

    home = ask("first question")
    hits_before = ingress.slots[home].counters.current.prefix_hit_tokens
    assert [ask(f"question {k}") for k in range(6)] == [home] * 6
    httpx.get(ingress.url + "/metrics", timeout=10)  # refreshes the replicas' counters
    assert ingress.slots[home].counters.current.prefix_hit_tokens > hits_before  # its cache did serve them


def _burst(url: str, n: int, max_tokens: int, on_started) -> list[dict]:
    """``n`` concurrent raw SSE streams; per request: chunks received, whether it ended with an error
    event, and whether [DONE] came."""
    async def one(client: httpx.AsyncClient, i: int) -> dict:
        body = {"model": MODEL, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "ignore_eos": True}
        out = {"chunks": 0, "error": False, "done": False, "text": ""}
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    out["done"] = True
                elif '"error"' in data[:10]:
                    out["error"] = True
                else:
                    out["chunks"] += 1
                    out["text"] += httpx.Response(200, content=data).json()["choices"][0]["text"]
                    if out["chunks"] == 1:
                        on_started()
        return out

    async def main():
        limits = httpx.Limits(max_connections=n + 8)
        async with httpx.AsyncClient(timeout=180, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*[one(client, i) for i in range(n)]), 240)

    return asyncio.run(main())


def test_a_replica_killed_during_a_burst_loses_no_unstarted_request_and_hangs_none(ingress, capsys):
    victim = ingress.slots[1]
    pid = victim.pid
    started = 0
    killed = []

    def on_started():
        nonlocal started
        started += 1
        if started == 8 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())

    reference = _burst(ingress.url, len(PROMPTS), 64, lambda: None)  # before the kill: the full answers
    before = sum(_requests(ingress.slots))
    results = _burst(ingress.url, 64, 64, on_started)
    assert killed, "the burst ended before the kill"
    moved = sum(_requests(ingress.slots)) - before - 64  # attempts beyond one per request
    assert all(r["done"] for r in results)  # every stream ended properly: nothing hung
    cut = [r for r in results if r["error"]]
    for i, r in enumerate(results):
        if r["error"]:
            assert r["chunks"] >= 1, f"request {i} failed without having started streaming"
        else:
            assert r["text"] == reference[i % len(PROMPTS)]["text"], f"request {i} was lost or changed"
    assert len(cut) <= 32  # at most what the dead replica was streaming
    assert moved > 0  # its queued requests (16 decode at once) went to the other replica
    with capsys.disabled():
        print(f"\nreplica killed mid-burst: {len(cut)} streams cut with an error event, {moved} requests moved, "
              f"{64 - len(cut)} answered in full")
    # Ray Serve replaces the replica; the ingress takes it back
    deadline = time.monotonic() + 120
    while httpx.get(ingress.url + "/health", timeout=10).json()["status"] != "ok":
        assert time.monotonic() < deadline, "the replica was not replaced"
        time.sleep(0.5)
    assert victim.up and victim.pid != pid
    again = _burst(ingress.url, 4, 8, lambda: None)
    assert all(r["done"] and not r["error"] for r in again)

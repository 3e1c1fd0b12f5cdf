"""Server limits and lifecycle: API key, body size, a full queue, graceful shutdown, a taken port."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
import openai
import pytest

from cli_helpers import run_cli
from server_helpers import ServerProcess, tiny_server_args

pytest.importorskip("transformers")

KEY = "sekret-key"
BODY_LIMIT = 65536


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("server-limits") / "llama"
    make_tiny_llama(path, max_position_embeddings=2048)  # long generations keep a sequence busy for seconds
    return path


@pytest.fixture(scope="module")
def server(long_dir, tmp_path_factory):
    """One sequence at a time, one waiting: the third concurrent request finds the queue full."""
    proc = ServerProcess(*tiny_server_args(long_dir, f"serve.api_key={KEY}", "engine.max_seqs=1",
                                           "engine.max_waiting=1", f"serve.max_body_bytes={BODY_LIMIT}"),
                         cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGINT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_api_key(server):
    ok = server.client(api_key=KEY)
    assert [m.id for m in ok.models.list().data] == ["llama"]
    with pytest.raises(openai.AuthenticationError) as info:
        server.client(api_key="wrong").chat.completions.create(model="llama",
                                                               messages=[{"role": "user", "content": "x"}])
    assert info.value.response.json()["error"]["code"] == "invalid_api_key"
    for method, path in [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                         ("POST", "/tokenize"), ("POST", "/detokenize")]:
        r = httpx.request(method, server.url + path, json={"prompt": "x", "tokens": [5]})
        assert r.status_code == 401, (path, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # open, for load balancers
    assert httpx.get(server.url + "/metrics").status_code == 200
    r = httpx.post(server.url + "/tokenize", json={"prompt": "x"}, headers=auth())
    assert r.status_code == 200


def test_oversized_bodies_are_413(server):
    big = json.dumps({"prompt": "x" * (BODY_LIMIT + 100), "max_tokens": 1}).encode()
    r = httpx.post(server.url + "/v1/completions", content=big, headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert str(BODY_LIMIT) in r.json()["error"]["message"]
    # no Content-Length (chunked): the limit holds on the bytes actually read
    chunks = [big[i:i + 8192] for i in range(0, len(big), 8192)]
    r = httpx.post(server.url + "/v1/completions", content=iter(chunks),
                   headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 413, r.text
    # an announced length over the limit is refused before anything is read
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{")
        head = sock.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head
    # just under the limit is fine
    ok = json.dumps({"prompt": "x" * 1000, "max_tokens": 1}).encode()
    assert httpx.post(server.url + "/v1/completions", content=ok,
                      headers={**auth(), "content-type": "application/json"}).status_code == 200


def test_full_queue_is_503_with_retry_after(server):
    client = server.client(api_key=KEY)
    long = dict(model="llama", prompt="a", max_tokens=1900, stream=True, extra_body={"ignore_eos": True})
    running = client.completions.create(**long)  # admitted: it holds the only running slot
    next(iter(running))
    waiting_result: dict = {}

    def wait_in_line():
        try:
            waiting_result["r"] = server.client(api_key=KEY).completions.create(
                model="llama", prompt="b", max_tokens=2, extra_body={"ignore_eos": True})
        except Exception as exc:  # noqa: BLE001
            waiting_result["error"] = exc

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    deadline = time.monotonic() + 10
    while server.metrics()["mistralrs_sequences_waiting"] < 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.01)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "c", "max_tokens": 2}, headers=auth())
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "queue_full" and r.json()["error"]["type"] == "server_error"
    with pytest.raises(openai.InternalServerError) as info:  # the client sees it too (no retries here)
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "d"}], max_tokens=2)
    assert info.value.status_code == 503
    running.close()  # disconnect: the waiting request gets the slot and finishes
    waiter.join(30)
    assert waiting_result.get("r") is not None, waiting_result
    assert waiting_result["r"].usage.completion_tokens == 2


def test_n_larger_than_the_queue_is_400(server):
    with pytest.raises(openai.BadRequestError) as info:
        server.client(api_key=KEY).completions.create(model="llama", prompt="x", n=2, max_tokens=2)
    assert info.value.response.json()["error"]["param"] == "n"


def test_taken_port_is_one_clear_line(server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    result = run_cli("task=serve", "model=llama", "model.source=/nonexistent", f"serve.port={port}", cwd=tmp_path,
                     timeout=120)
    assert result.returncode == 2, result.stderr
    assert "cannot listen on 127.0.0.1" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_lets_in_flight_requests_finish(long_dir, tmp_path):
    # a grace far longer than 600 tokens take, even on a loaded machine: the test is about finishing
    proc = ServerProcess(*tiny_server_args(long_dir, "serve.shutdown_grace_seconds=120"), cwd=tmp_path)
    try:
        client = proc.client()
        stream = client.completions.create(model="llama", prompt="a", max_tokens=600, stream=True, logprobs=0,
                                           extra_body={"ignore_eos": True})
        chunks = [next(iter(stream))]
        proc.proc.send_signal(signal.SIGTERM)
        chunks += list(stream)
        tokens = sum(len(c.choices[0].logprobs.tokens) for c in chunks if c.choices)
        assert tokens == 600 and chunks[-1].choices[0].finish_reason == "length"
        assert proc.proc.wait(60) == 0, proc.stderr
        with pytest.raises(httpx.ConnectError):
            httpx.get(proc.url + "/health")
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr


def test_sigterm_ends_every_stream_cleanly_after_the_grace(long_dir, tmp_path):
    """8 long streams, SIGTERM, a 1 s grace: each client still gets a final chunk with a finish reason
    and ``data: [DONE]``, the server exits 0 within the grace plus a margin, and logs no traceback."""
    proc = ServerProcess(*tiny_server_args(long_dir, "serve.shutdown_grace_seconds=1", "engine.max_seqs=8"),
                         cwd=tmp_path)
    results: list[list[str]] = [[] for _ in range(8)]
    started = threading.Barrier(9)

    def stream(i: int) -> None:
        body = {"model": "llama", "prompt": f"stream {i}", "max_tokens": 2000, "stream": True, "ignore_eos": True,
                "temperature": 0}
        with httpx.stream("POST", proc.url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for line in lines:
                if line:
                    results[i].append(line)
                    break
            started.wait(30)
            results[i].extend(line for line in lines if line)

    try:
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        started.wait(30)
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0, proc.stderr
        exit_seconds = time.monotonic() - t0
        for t in threads:
            t.join(30)
    finally:
        proc.kill()
    for lines in results:
        assert lines[-1] == "data: [DONE]", lines[-3:]
        last = json.loads(lines[-2].removeprefix("data: "))
        assert last["choices"][0]["finish_reason"] in ("abort", "length"), last
    assert any(json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "abort"
               for lines in results)  # 8 x 2000 tokens do not fit in 1 s: some were cut
    assert exit_seconds < 1 + 10, exit_seconds
    assert "Traceback" not in proc.stderr and "CancelledError" not in proc.stderr, proc.stderr
    assert "were ended (finish_reason 'abort')" in proc.stderr

"""Chat templates are bounded in time, memory and output size, and never hold up a shutdown (issue #17).

Templates render in renderer processes (engine/tokenizer/template_worker.py); these tests run with
short limits so that each bomb is over in about a second.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import httpx
import pytest

from mistralrs.engine.tokenizer import DEFAULT_CHATML_TEMPLATE, ChatTemplateError, render_chat
from mistralrs.engine.tokenizer.chat_template import ChatTemplateCancelled
from mistralrs.engine.tokenizer import template_worker

from server_helpers import ServerProcess, tiny_server_args

TIMEOUT = 1.0
MEMORY_MB = 256
SLACK = 3.0  # starting a fresh renderer on a busy machine

CPU_BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
LJUST_BOMB = "{{ 'x'.ljust(2**30) }}"
PLUS_DOUBLING = ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
                 "{{ ns.s }}")
TILDE_DOUBLING = ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                  "{{ ns.s | length }}")
CENTER_FILTER = "{{ 'x' | center(2**30) }}"

MSGS = [{"role": "user", "content": "hi"}]
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _render(template: str, **kw) -> str:
    return render_chat(template, MSGS, bos_token="<s>", eos_token="</s>", **kw)


@pytest.fixture(autouse=True)
def short_limits():
    previous = template_worker.configure(timeout_s=TIMEOUT, memory_mb=MEMORY_MB)
    yield
    template_worker.configure(**{f: getattr(previous, f) for f in ("timeout_s", "memory_mb", "max_chars", "workers")})
    template_worker.shutdown()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_cpu_bomb_times_out():
    _render(DEFAULT_CHATML_TEMPLATE)  # a renderer is up
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=f"took longer than {TIMEOUT:g} s") as info:
        _render(CPU_BOMB)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert info.value.__cause__ is None
    assert _render(DEFAULT_CHATML_TEMPLATE) == CHATML_HI  # the killed renderer was replaced


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (LJUST_BOMB, "output exceeds"),
        (PLUS_DOUBLING, "output exceeds"),
        (TILDE_DOUBLING, f"used more than {MEMORY_MB} MB of memory"),
        (CENTER_FILTER, f"used more than {MEMORY_MB} MB of memory"),
    ],
)
def test_memory_bombs_are_refused(template, message):
    before = _peak_rss_mb()
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=message):
        _render(template)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert _peak_rss_mb() - before < 100, "the server's own memory grew"
    assert _render(DEFAULT_CHATML_TEMPLATE) == CHATML_HI


def test_output_size_is_bounded():
    template_worker.configure(max_chars=10_000)
    assert len(_render("{% for i in range(1000) %}0123456789{% endfor %}")) == 10_000
    with pytest.raises(ChatTemplateError, match="output exceeds 10000 characters"):
        _render("{% for i in range(1001) %}0123456789{% endfor %}")
    with pytest.raises(ChatTemplateError, match="output exceeds 10000 characters"):
        _render("{{ 'x'.rjust(20000) }}")


def test_renderer_killed_from_outside_is_replaced():
    _render(DEFAULT_CHATML_TEMPLATE)
    for worker in template_worker._POOL.idle_workers():
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
    assert _render(DEFAULT_CHATML_TEMPLATE) == CHATML_HI


def test_normal_render_beside_a_bomb():
    """A bomb holds one renderer; other renders go on, and wait for a renderer when all are busy."""
    errors: list[Exception] = []

    def bomb() -> None:
        try:
            _render(CPU_BOMB)
        except ChatTemplateError as exc:
            errors.append(exc)

    for workers in (2, 1):
        template_worker.configure(workers=workers)
        thread = threading.Thread(target=bomb)
        thread.start()
        time.sleep(0.2)
        start = time.monotonic()
        assert _render(DEFAULT_CHATML_TEMPLATE) == CHATML_HI
        if workers == 2:
            assert thread.is_alive() and time.monotonic() - start < TIMEOUT
        thread.join()
    assert len(errors) == 2 and all("took longer" in str(e) for e in errors)


def test_shutdown_cancels_a_render_in_flight():
    template_worker.configure(timeout_s=60)
    errors: list[Exception] = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(ChatTemplateError, _render, CPU_BOMB)))
    thread.start()
    time.sleep(0.5)
    start = time.monotonic()
    template_worker.shutdown()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - start < 2
    assert isinstance(errors[0].value, ChatTemplateCancelled) and "shutting down" in str(errors[0].value)
    assert _render(DEFAULT_CHATML_TEMPLATE) == CHATML_HI  # renderers start again on demand


def test_extra_variables_are_plain_data():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    assert _render("{{ tools | tojson }}", tools=tools) == (
        '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]')
    with pytest.raises(ChatTemplateError, match="plain data"):
        _render("{{ x }}", x=threading.Lock())


def test_surrogates_survive_the_round_trip():
    msgs = [{"role": "user", "content": "a\ud800b"}]
    assert render_chat("{{ messages[0].content }}", msgs, bos_token=None, eos_token=None) == "a\ud800b"


# ----------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_models import make_tiny_llama

    root = tmp_path_factory.mktemp("template-bounds")
    make_tiny_llama(root / "llama")
    (root / "bomb.jinja").write_text(CPU_BOMB)
    env = {"MISTRALRS_CHAT_TEMPLATE_TIMEOUT": "3"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = ServerProcess(*tiny_server_args(root / "llama", f"model.chat_template={root / 'bomb.jinja'}",
                                               "serve.shutdown_grace_seconds=1"), cwd=root)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield proc
    proc.kill()


def _chat(url: str, out: dict) -> None:
    start = time.monotonic()
    try:
        out["response"] = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                                     json={"model": "llama", "messages": MSGS, "max_tokens": 2})
    except httpx.HTTPError as exc:
        out["error"] = exc
    out["elapsed"] = time.monotonic() - start


def test_server_bomb_template_is_400_while_completions_answer(bomb_server):
    url = bomb_server.url
    out: dict = {}
    chat = threading.Thread(target=_chat, args=(url, out))
    chat.start()
    time.sleep(0.3)
    r = httpx.post(f"{url}/v1/completions", json={"model": "llama", "prompt": "hello", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/tokenize", json={"model": "llama", "prompt": "hello"}, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/v1/completions", json={"model": "llama", "prompt": [1, 2, 3], "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text
    assert chat.is_alive(), "the raw completions waited for the chat template"
    chat.join(30)
    response = out["response"]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "took longer than 3 s" in error["message"] and error["param"] == "messages"
    assert out["elapsed"] < 3 + SLACK


def test_server_sigterm_exits_while_a_bomb_renders(bomb_server):
    out: dict = {}
    chat = threading.Thread(target=_chat, args=(bomb_server.url, out))
    chat.start()
    time.sleep(0.5)  # the render is under way (its timeout is 3 s, the grace 1 s)
    start = time.monotonic()
    assert bomb_server.stop(signal.SIGTERM, timeout=20) == 0, bomb_server.stderr
    assert time.monotonic() - start < 1 + 1.5, bomb_server.stderr
    chat.join(10)
    assert "response" in out, out  # cancelled, as the engine refuses new work while shutting down
    assert out["response"].status_code == 503, out["response"].text
    assert out["response"].json()["error"]["code"] == "shutting_down"
    assert "Traceback" not in bomb_server.stderr, bomb_server.stderr

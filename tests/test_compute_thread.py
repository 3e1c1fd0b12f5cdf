"""Model computation runs on one thread: loading, the Python API and the server's engine alike (so
OpenMP keeps a single worker pool, whose barriers spin instead of sleeping; compute_thread.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import mistralrs
from mistralrs.engine import api
from mistralrs.engine.core import llm_engine
from mistralrs.engine.core.compute_thread import ComputeThread, compute_thread

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("compute") / "m"
    make_tiny_llama(path)
    return path


def _recording(monkeypatch, module, name: str) -> list[threading.Thread]:
    seen: list[threading.Thread] = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        seen.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


def test_load_generate_and_logits_run_on_the_compute_thread(model_dir, monkeypatch):
    loads = _recording(monkeypatch, api, "load_model")
    steps = _recording(monkeypatch, llm_engine.LLMEngine, "step")
    logits = _recording(monkeypatch, api, "full_logits")
    llm = mistralrs.load("model=llama", f"model.source={model_dir}", "model.dtype=float32", "model.device=cpu")
    llm.generate("hello", max_tokens=4, temperature=0, ignore_eos=True)
    # from another thread too: the work still goes to the compute thread
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: llm.generate("other", max_tokens=3, temperature=0, ignore_eos=True)).result()
    llm.logits([1, 2, 3])
    worker = compute_thread()
    assert worker.ident is not None and worker.ident != threading.main_thread().ident
    assert loads and steps and logits
    assert {t.ident for t in loads + steps + logits} == {worker.ident}


def test_server_engine_steps_on_the_compute_thread(model_dir, monkeypatch):
    from litestar.testing import TestClient

    from mistralrs.engine.server import create_app

    llm = mistralrs.load("model=llama", f"model.source={model_dir}", "model.dtype=float32", "model.device=cpu")
    expected = llm.generate("hi", max_tokens=5, temperature=0, ignore_eos=True)
    steps = _recording(monkeypatch, llm_engine.LLMEngine, "step")
    with TestClient(create_app(llm)) as client:
        r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected
    assert steps and {t.ident for t in steps} == {compute_thread().ident}


def test_compute_thread_runs_callables_and_pollers_in_order():
    worker = ComputeThread(name="test-compute")
    ran: list[str] = []
    budget = [3]

    def poller() -> bool:  # three units of work, then idle
        if budget[0] == 0:
            return False
        budget[0] -= 1
        ran.append("poll")
        return True

    assert worker.call(lambda: threading.current_thread().name) == "test-compute"
    worker.add_poller(poller)
    worker.call(lambda: None)  # a callable between units of work
    for _ in range(500):  # at most 5 s
        if not budget[0]:
            break
        threading.Event().wait(0.01)
    worker.remove_poller(poller)
    assert ran == ["poll"] * 3
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    # a call made on the compute thread itself runs inline instead of waiting on itself
    assert worker.call(lambda: worker.call(lambda: 7)) == 7


def test_ctrl_c_at_any_moment_of_a_hand_over_leaves_the_thread_usable(tmp_path):
    """A KeyboardInterrupt can land on any bytecode of the waiting thread. It once landed inside
    Event.set, between taking the event's lock and the ``with`` that releases it: the lock leaked, and
    the next hand-over (the stream's clean-up after Ctrl-C in ``task=chat``) hung for ever. Interrupt
    thousands of hand-overs at random moments; every later call must still answer."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, signal, threading, time
        from mistralrs.engine.core.compute_thread import ComputeThread

        worker = ComputeThread(name="interrupted")
        stop = threading.Event()
        armed = [False]

        def on_sigint(signum, frame):  # one KeyboardInterrupt per armed hand-over, as Ctrl-C gives
            if armed[0]:
                armed[0] = False
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)

        def interrupter():  # SIGINT the process every ~0.2 ms
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.0002)

        threading.Thread(target=interrupter, daemon=True).start()
        interrupted = 0
        for _ in range(20000):
            try:
                armed[0] = True
                worker.call(lambda: None)
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                armed[0] = False
        stop.set()
        assert worker.call(lambda: 42) == 42
        print("interrupted", interrupted)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) > 100  # the interrupts really landed during hand-overs

"""``task=serve`` (the default task): the OpenAI-compatible server on uvicorn.

The socket is bound before the model loads, so a taken port fails at once with one line; clients
are refused until the model is ready and one line on stderr says ``serving <model> on http://...``.
SIGINT/SIGTERM stop accepting connections, give in-flight requests ``serve.shutdown_grace_seconds``
to finish, end the rest with ``finish_reason: "abort"`` (a final chunk and ``[DONE]`` for streams) and
exit 0 (a second SIGINT forces the exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from typing import Awaitable, Callable, Iterator

import uvicorn
from omegaconf import DictConfig

from mistralrs.engine.config import to_schema

from mistralrs.engine.cli.tasks.common import load_llm


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(cfg: DictConfig) -> None:
    from mistralrs.engine.server import create_app

    config = to_schema(cfg)
    serve = config.serve
    sock = bind(serve.host, serve.port)
    if serve.backend == "ray":
        _run_ray(config, sock)
        return
    llm = load_llm(cfg)
    app = create_app(llm, serve)
    state = app.state.server
    _serve(app, sock, serve, f"serving {llm.name} on {url_of(sock)}",
           lambda: state.engine.shutdown(serve.shutdown_grace_seconds))


def _run_ray(config, sock: socket.socket) -> None:
    """serve.backend=ray: replicas on Ray Serve behind this process's app (engine/scaleout). The
    replicas (and a local Ray cluster we started) go down with the server: while starting, SIGTERM
    interrupts as SIGINT does and start_ingress tears down what it deployed; once serving, either
    signal stops the server gracefully; the final teardown ignores both (it is bounded:
    cluster.teardown)."""
    from mistralrs.engine.scaleout.ingress import start_ingress

    serve = config.serve
    with _signals_interrupt():  # the default SIGTERM would leave the Ray processes behind
        ingress = start_ingress(config)
    try:
        banner = f"serving {ingress.model.name} on {url_of(sock)} ({serve.replicas} replicas on Ray Serve)"
        _serve(ingress.app, sock, serve, banner, lambda: ingress.client.shutdown(serve.shutdown_grace_seconds))
    finally:
        with _signals_ignored():  # a second Ctrl-C must not leave half the replicas running
            ingress.close()


def _serve(app, sock: socket.socket, serve, banner: str, shutdown_engine: Callable[[], Awaitable[object]]) -> None:
    from mistralrs.engine.tokenizer import template_worker

    if serve.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    # uvicorn cancels connections still open after its own timeout: give the engine's grace period
    # and the final chunks time to reach the clients first (see _Server.capture_signals). The event
    # loop and HTTP parser are pinned: uvloop and httptools, when installed (ray[serve] brings them),
    # would otherwise replace the ones this server is tested and measured with.
    uv_config = uvicorn.Config(app, log_config=None, access_log=serve.access_log, lifespan="on", ws="none",
                               loop="asyncio", http="h11",
                               timeout_graceful_shutdown=serve.shutdown_grace_seconds + 5, server_header=False)

    def on_exit() -> Awaitable[object]:
        template_worker.shutdown()  # a chat template rendering now must not hold up the exit
        return shutdown_engine()

    server = _Server(uv_config, banner=banner, on_exit=on_exit)
    asyncio.run(server.serve(sockets=[sock]))


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, so that cleanup code runs."""
    def interrupt(sig: int, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM do nothing inside (for a short, bounded cleanup only)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once listening, and ending with exit status 0 after a
    graceful shutdown (uvicorn re-raises the signal it caught, which would kill the process).

    On the first SIGINT/SIGTERM it starts ``on_exit`` (the engine's shutdown: running sequences get
    the grace period, then end with a final chunk and ``[DONE]``) while uvicorn stops accepting and
    waits for the open connections, which those final chunks close."""

    def __init__(self, config, banner: str, on_exit: Callable[[], Awaitable[object]] | None = None):
        super().__init__(config)
        self.banner = banner
        self.on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_task: asyncio.Future | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            print(self.banner, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(sig: int, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            if self.on_exit is not None and self._loop is not None and self._exit_task is None:
                self._loop.call_soon_threadsafe(self._start_exit)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start_exit(self) -> None:
        if self._exit_task is None and self.on_exit is not None:
            self._exit_task = asyncio.ensure_future(self.on_exit())

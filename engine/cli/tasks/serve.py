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
    from mistralrs.engine.tokenizer import template_worker

    config = to_schema(cfg)
    serve = config.serve
    sock = bind(serve.host, serve.port)
    llm = load_llm(cfg)
    app = create_app(llm, serve)
    if serve.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    # uvicorn cancels connections still open after its own timeout: give the engine's grace period
    # and the final chunks time to reach the clients first (see _Server.capture_signals)
    uv_config = uvicorn.Config(app, log_config=None, access_log=serve.access_log, lifespan="on", ws="none",
                               timeout_graceful_shutdown=serve.shutdown_grace_seconds + 5, server_header=False)
    state = app.state.server

    def on_exit() -> Awaitable[object]:
        template_worker.shutdown()  # a chat template rendering now must not hold up the exit
        return state.engine.shutdown(serve.shutdown_grace_seconds)

    server = _Server(uv_config, banner=f"serving {llm.name} on {url_of(sock)}", on_exit=on_exit)
    asyncio.run(server.serve(sockets=[sock]))


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

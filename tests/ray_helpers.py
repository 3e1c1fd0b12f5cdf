"""A local Ray cluster and our ingress (serve.backend=ray) in the test process, served by uvicorn on a
thread, so that tests can both talk to it as clients and look at its replicas."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import uvicorn


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """TimeoutError if the block runs longer (SIGALRM: main thread only)."""
    def expired(sig, frame):
        raise TimeoutError(f"{what} took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def start_local_ray(num_cpus: int = 2, timeout: float = 120) -> None:
    import ray

    with time_limit(timeout, "starting a local Ray cluster"):
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning")


def stop_ray() -> None:
    import ray
    from ray import serve

    with time_limit(120, "stopping the Ray cluster"):
        serve.shutdown()
        ray.shutdown()


def ray_overrides(model_dir: Path, replicas: int, *extra: str) -> list[str]:
    return ["model=llama", f"model.source={model_dir}", "model.dtype=float32", "model.device=cpu",
            "serve.backend=ray", f"serve.replicas={replicas}", "serve.replica_cpus=1", "engine.threads=1",
            "serve.shutdown_grace_seconds=5", *extra]


class InProcessIngress:
    """``start_ingress`` for the composed config, its app on uvicorn on a background thread."""

    def __init__(self, overrides: list[str], timeout: float = 240):
        from mistralrs.engine.config import compose_config, to_schema, validate_config
        from mistralrs.engine.scaleout.ingress import start_ingress

        config = to_schema(compose_config(overrides))
        validate_config(config)
        with time_limit(timeout, "deploying the replicas"):
            self.ingress = start_ingress(config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.ingress.app, log_config=None, lifespan="on", ws="none",
                                                    loop="asyncio", http="h11", timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[sock])), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the ingress app did not start")
            time.sleep(0.05)

    @property
    def slots(self):
        return self.ingress.client.replicas.slots

    def client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120, **kwargs)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        with time_limit(120, "deleting the replicas"):
            self.ingress.close()

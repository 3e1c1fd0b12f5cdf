"""Run ``mistralrs task=serve`` as a real uvicorn subprocess and talk to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

BANNER = re.compile(r"serving (\S+) on (http://\S+)")


class ServerProcess:
    """``mistralrs <args> serve.port=0``; the port comes from the ``serving ... on http://...`` line."""

    def __init__(self, *args: str, cwd: Path | None = None, startup_timeout: float = 120):
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "mistralrs.engine.cli", *args, "serve.port=0"],
                                     cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr_lines: list[str] = []
        self.stdout = ""
        self._ready = threading.Event()
        self.url = ""
        self.model = ""
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or not self.url:
            self.kill()
            raise RuntimeError(f"server did not start: {self.stderr}")
        self._wait_healthy(startup_timeout)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            m = BANNER.search(line)
            if m and not self.url:
                self.model, self.url = m.group(1), m.group(2)
                self._ready.set()
        self._ready.set()  # the process ended

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"/health never answered: {self.stderr}")

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, api_key: str = "unused", **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def async_client(self, api_key: str = "unused", **kwargs):
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def metrics(self) -> dict[str, float]:
        """Unlabelled view of /metrics: ``name -> value`` (labels dropped; request counts summed)."""
        out: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def tiny_server_args(model_dir: Path, *extra: str) -> list[str]:
    return ["task=serve", "model=llama", f"model.source={model_dir}", "model.dtype=float32", "model.device=cpu",
            *extra]


def token_ids(logprob_tokens: list[str]) -> list[int]:
    """Ids from ``logprobs.tokens`` of a request made with ``return_tokens_as_token_ids``."""
    return [int(t.removeprefix("token_id:")) for t in logprob_tokens]


def real_model_args(request) -> list[str]:
    """Overrides serving the real model a fixture is parametrized with: "smollm2" (the default model)
    or "gemma3"; the model file comes from its session fixture (a PyPI package, not a hub)."""
    if request.param == "gemma3":
        return ["model=gemma3", f"model.source={request.getfixturevalue('gemma3_gguf')}"]
    request.getfixturevalue("smollm2_gguf")
    return []

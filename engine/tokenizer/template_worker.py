"""Chat templates render in worker processes, bounded in time, memory and output size (issue #17).

A template comes from a model file, i.e. from a stranger. Inside the server's process, a template that
loops for ever cannot be stopped (a thread cannot be cancelled) and one that builds a huge string
takes the server's memory. So templates render in a small pool of child processes, each a fresh
interpreter (``subprocess``: fork + exec, never a bare fork of a process holding torch's threads) that
imports only jinja2 and ``chat_template.py``. A child caps its address space (RLIMIT_AS, ``memory_mb``
above its size once started) and, per render, its CPU time (RLIMIT_CPU: ends a runaway render even
if the server died and nobody is left to kill it). The parent sends ``(template, variables)`` and
waits at most ``timeout_s``; on a timeout, a MemoryError or a dead child it kills that child (the
next render starts a fresh one) and raises :class:`RenderError` with a clear message. Compiled
templates are cached in the children.

Limits (module defaults, overridable by environment variables read at import, or :func:`configure`):

* ``MISTRALRS_CHAT_TEMPLATE_TIMEOUT``: seconds a render may take (5);
* ``MISTRALRS_CHAT_TEMPLATE_MEMORY_MB``: memory a renderer may use beyond its baseline (1024);
* ``MISTRALRS_CHAT_TEMPLATE_MAX_CHARS``: characters a rendered prompt may have (16 Mi);
* ``MISTRALRS_CHAT_TEMPLATE_WORKERS``: renderer processes (2).

Only the standard library is imported here: the children import this file too.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

__all__ = [
    "Limits", "RenderCancelled", "RenderError", "compile_cache_info", "configure", "limits", "render", "shutdown",
]


class RenderError(Exception):
    """A render failed; the message says why (the template's own error, or a bound it hit)."""


class RenderCancelled(RenderError):
    """The render was stopped by :func:`shutdown`: nothing is wrong with the template."""


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 1024
    max_chars: int = 16 * 2**20
    workers: int = 2


_ENV = {"timeout_s": ("MISTRALRS_CHAT_TEMPLATE_TIMEOUT", float),
        "memory_mb": ("MISTRALRS_CHAT_TEMPLATE_MEMORY_MB", int),
        "max_chars": ("MISTRALRS_CHAT_TEMPLATE_MAX_CHARS", int),
        "workers": ("MISTRALRS_CHAT_TEMPLATE_WORKERS", int)}


def _checked(limits: Limits) -> Limits:
    for field in dataclasses.fields(limits):
        if not getattr(limits, field.name) > 0:
            raise ValueError(f"chat template limit {field.name} must be positive, got {getattr(limits, field.name)!r}")
    return limits


def _from_environment() -> Limits:
    values: dict[str, Any] = {}
    for name, (var, cast) in _ENV.items():
        raw = os.environ.get(var)
        if raw:
            try:
                values[name] = cast(raw)
            except ValueError:
                raise ValueError(f"{var} must be a {cast.__name__}, got {raw!r}") from None
    return _checked(Limits(**values))


_LIMITS = _from_environment()
_STARTUP_TIMEOUT = 60.0  # a fresh interpreter importing jinja2, on a loaded machine
_MAX_ERROR_CHARS = 2000  # of an error message, which ends up in a 400 response


def limits() -> Limits:
    return _LIMITS


def configure(**changes: Any) -> Limits:
    """Change the limits (fields of :class:`Limits`); returns the previous ones. Renderers started
    with another memory limit or pool size are replaced."""
    global _LIMITS
    previous = _LIMITS
    _LIMITS = _checked(dataclasses.replace(previous, **changes))
    if (_LIMITS.memory_mb, _LIMITS.workers) != (previous.memory_mb, previous.workers):
        _POOL.close()
    return previous


# ----------------------------------------------------------------------------- parent side
class _Worker:
    """One renderer process and the two pipes to it (requests in, replies out)."""

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.cancelled = False  # killed by shutdown(), not by a bound
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            # start_new_session: the terminal's Ctrl-C goes to the server, which shuts the pool down
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, os.path.dirname(os.path.abspath(__file__)), str(req_r), str(resp_w),
                 str(memory_mb)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(req_r, resp_w), start_new_session=True)
        except BaseException as exc:
            os.close(req_w)
            os.close(resp_r)
            if isinstance(exc, OSError):  # out of processes or file descriptors
                raise RenderError(f"the chat template renderer did not start: {exc}") from None
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(resp_r, writable=False)
        try:
            ready = self.replies.recv_bytes() if self.replies.poll(_STARTUP_TIMEOUT) else b"etimed out"
        except (EOFError, OSError):
            ready = b"edied"
        if ready != b"r":
            self.kill()
            raise RenderError(f"the chat template renderer did not start: {ready[1:].decode(errors='replace')}")

    def call(self, request: bytes, timeout: float) -> bytes | None:
        """The child's reply, or None when it took longer than ``timeout``. EOFError/OSError: it died."""
        self.requests.send_bytes(request)
        if not self.replies.poll(timeout):
            return None
        return self.replies.recv_bytes()

    def death(self) -> str:
        try:
            code = self.proc.wait(1)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for conn in ("requests", "replies"):
            if hasattr(self, conn):
                getattr(self, conn).close()


class _Pool:
    """At most ``workers`` renderers, started on demand; a render borrows an idle one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []  # most recently used last: its compile cache is warm
        self._busy: set[_Worker] = set()
        self._starting = 0
        self._generation = 0  # close() bumps it: workers of older generations are not reused
        self._atexit = False

    def acquire(self, deadline: float) -> tuple[_Worker, int]:
        with self._cond:
            while True:
                generation = self._generation
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.poll() is None:
                        self._busy.add(worker)
                        return worker, generation
                    worker.kill()  # died while idle (killed from outside): start another
                if len(self._busy) + self._starting < _LIMITS.workers:
                    self._starting += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RenderError(f"chat template renderers were all busy for {_LIMITS.timeout_s:g} s")
                self._cond.wait(remaining)
            if not self._atexit:
                atexit.register(self.close)
                self._atexit = True
        try:
            worker = _Worker(_LIMITS.memory_mb)  # outside the lock: starting takes tens of milliseconds
        finally:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
        with self._cond:
            self._busy.add(worker)
        return worker, generation

    def release(self, worker: _Worker, generation: int, healthy: bool) -> None:
        with self._cond:
            self._busy.discard(worker)
            reuse = healthy and generation == self._generation and worker.memory_mb == _LIMITS.memory_mb
            if reuse:
                self._idle.append(worker)
            self._cond.notify()
        if not reuse:
            worker.kill()

    def close(self) -> None:
        """Kill every renderer; renders in flight fail at once. Later renders start fresh ones."""
        with self._cond:
            self._generation += 1
            workers = [*self._idle, *self._busy]
            self._idle.clear()
            for worker in self._busy:
                worker.cancelled = True
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.kill()  # the rendering thread sees the pipe close, and reaps it
        for worker in workers:
            if worker.cancelled:
                continue
            worker.kill()

    def idle_workers(self) -> list[_Worker]:
        with self._cond:
            return list(self._idle)


_POOL = _Pool()


def _forget_pool_in_fork_child() -> None:
    global _POOL
    _POOL = _Pool()  # the renderers belong to the parent


os.register_at_fork(after_in_child=_forget_pool_in_fork_child)


def shutdown() -> None:
    """Kill the renderers (server shutdown): a render in flight never holds up the exit."""
    _POOL.close()


def render(template: str, variables: dict[str, Any]) -> str:
    """``template`` rendered with ``variables`` (plain data: they are pickled) in a renderer process.
    Raises :class:`RenderError` with the template's own error or the bound it hit."""
    lim = _LIMITS
    try:
        request = pickle.dumps(("render", (template, variables, lim.max_chars, lim.timeout_s + 2)),
                               protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - whatever pickle refuses
        raise RenderError(f"chat template variables must be plain data: {exc}") from None
    worker, generation = _POOL.acquire(time.monotonic() + lim.timeout_s)
    healthy = False
    try:
        try:
            reply = worker.call(request, lim.timeout_s)
        except (EOFError, OSError):
            if worker.cancelled:
                raise RenderCancelled("chat template rendering was cancelled: the server is shutting down") from None
            how = worker.death()
            if how == "killed by SIGXCPU":
                raise RenderError(f"chat template took longer than {lim.timeout_s:g} s to render") from None
            raise RenderError(f"the chat template renderer died ({how}): the template may use too much "
                              f"memory (limit {worker.memory_mb} MB) or recurse too deeply") from None
        if reply is None:
            raise RenderError(f"chat template took longer than {lim.timeout_s:g} s to render")
        kind, body = reply[:1], reply[1:]
        if kind == b"m":
            raise RenderError(f"chat template used more than {worker.memory_mb} MB of memory")
        healthy = True
        text = body.decode("utf-8", "surrogatepass")
        if kind == b"e":
            raise RenderError(text)
        return text
    finally:
        _POOL.release(worker, generation, healthy)


def compile_cache_info() -> tuple[int, int]:
    """``(hits, misses)`` of the compiled-template caches of the idle renderers (for tests)."""
    hits = misses = 0
    request = pickle.dumps(("cache_info", ()))
    for worker in _POOL.idle_workers():
        try:
            reply = worker.call(request, _STARTUP_TIMEOUT)
        except (EOFError, OSError):
            continue
        if reply and reply[:1] == b"o":
            h, m = reply[1:].split()
            hits, misses = hits + int(h), misses + int(m)
    return hits, misses


# ----------------------------------------------------------------------------- child side
# The child runs ``python -c _BOOT <dir> <request fd> <reply fd> <memory MB>``. The package's
# __init__ imports the vocab readers (numpy): a stand-in package object lets the child import just
# this file and chat_template.py. The working directory leaves sys.path, so nothing there shadows
# jinja2. The boot script hands chat_template over (it imports this file, not the other way round).
_BOOT = """\
import sys, types
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
pkg = types.ModuleType("mistralrs.engine.tokenizer")
pkg.__path__ = [sys.argv[1]]
sys.modules[pkg.__name__] = pkg
from mistralrs.engine.tokenizer.template_worker import _child_main

def load_renderer():
    from mistralrs.engine.tokenizer import chat_template
    return chat_template

_child_main(sys.argv[2:], load_renderer)
"""


def _child_main(argv: list[str], load_renderer: Callable[[], Any]) -> None:
    """Serve render requests until the parent goes away. ``load_renderer()`` returns the module with
    ``render_sandboxed(template, variables, max_chars)`` and ``_compile`` (chat_template)."""
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource

        chat_template = load_renderer()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a render killed for its CPU time leaves no core file
        _limit_memory(resource, int(argv[2]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the reason
        replies.send_bytes(b"e" + f"{type(exc).__name__}: {exc}".encode())
        return
    replies.send_bytes(b"r")
    while True:
        try:
            request = requests.recv_bytes()
        except (EOFError, OSError):
            return  # the server went away
        try:
            op, args = pickle.loads(request)
            if op == "render":
                template, variables, max_chars, cpu_seconds = args
                _limit_cpu(resource, cpu_seconds)
                reply = b"o" + chat_template.render_sandboxed(template, variables, max_chars).encode(
                    "utf-8", "surrogatepass")
            else:
                info = chat_template._compile.cache_info()
                reply = f"o{info.hits} {info.misses}".encode()
        except MemoryError:
            reply = b"m"
        except Exception as exc:  # noqa: BLE001 - render_sandboxed raises ChatTemplateError; anything else too
            message = str(exc)
            if len(message) > _MAX_ERROR_CHARS:  # a KeyError can quote a huge key
                message = message[:_MAX_ERROR_CHARS] + "..."
            reply = b"e" + message.encode("utf-8", "surrogatepass")
        finally:
            request = args = variables = None  # noqa: F841 - free them before the next request
        try:
            replies.send_bytes(reply)
        except OSError:
            return
        if reply == b"m":
            return  # the parent replaces a renderer that ran out of memory


def _limit_memory(resource: Any, memory_mb: int) -> None:
    baseline = 0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    baseline = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not baseline:
        return  # no /proc (macOS, where RLIMIT_AS is not enforced anyway): the timeout still holds
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = baseline + memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _limit_cpu(resource: Any, seconds: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))

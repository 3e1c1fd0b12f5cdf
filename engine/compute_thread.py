"""The one thread that runs model computation in this process.

Why one: OpenMP (libgomp, which torch and our kernels share) keeps a pool of worker threads per thread
that starts a parallel region, and while its pools hold more threads than there are cores, every
barrier sleeps in the kernel instead of spinning. A model loaded on one thread and run on another (the
server's engine loop) thus woke and slept its workers ~270 times per decoded token, and decoded at
0.6x the speed of the same engine on the loading thread. So loading, the Python API's generation, the
server's engine loop and logits all run here, and other threads hand work over and wait.

Work arrives as callables (``submit``/``call``); long-running clients such as the server's engine
register a *poller*: a function called between callables that does one unit of work (an engine step)
and says whether it did any, so the thread sleeps only when no poller is busy.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
Poller = Callable[[], bool]


class ComputeThread:
    def __init__(self, name: str = "mistralrs-compute"):
        self._inbox: queue.SimpleQueue[tuple[Callable[[], object], Future]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._pollers: list[Poller] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _ensure_started(self) -> None:
        if self._thread.ident is not None:  # the common case, on every hand-over: no lock
            return
        with self._lock:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()

    # -- handing work over ------------------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> "Future[T]":
        """Run ``fn`` on the compute thread (between pollers' units of work); its result or exception
        arrives in the future."""
        fut: Future = Future()
        if self.on_thread():  # already here: run inline rather than wait on ourselves
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                fut.set_exception(exc)
            return fut
        self._ensure_started()
        self._inbox.put((fn, fut))
        self._wake.set()
        return fut

    def call(self, fn: Callable[[], T]) -> T:
        """``submit(fn)`` and wait for its result (re-raising its exception)."""
        return self.submit(fn).result()

    def wake(self) -> None:
        self._wake.set()

    def add_poller(self, poller: Poller) -> None:
        self._ensure_started()
        with self._lock:
            self._pollers.append(poller)
        self._wake.set()

    def remove_poller(self, poller: Poller) -> None:
        with self._lock:
            if poller in self._pollers:
                self._pollers.remove(poller)

    # -- the thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._drain()
            busy = False
            for poller in list(self._pollers):
                try:
                    busy = poller() or busy
                except Exception:  # a poller handles its own failures; never let one kill the thread
                    log.exception("compute thread: a poller failed")
            if not busy:
                self._wake.wait(timeout=0.05)
                self._wake.clear()

    def _drain(self) -> None:
        while True:
            try:
                fn, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                    fut.set_exception(exc)


_COMPUTE = ComputeThread()


def compute_thread() -> ComputeThread:
    """The process's compute thread (started on first use)."""
    return _COMPUTE

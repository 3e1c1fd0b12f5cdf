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
        # Callables to run. Waking the thread is a put on this queue too: SimpleQueue.put is one C call,
        # so a KeyboardInterrupt landing on the handing-over thread cannot leave a lock half-taken (an
        # Event's lock once leaked that way, and the next hand-over hung; see ``call``).
        self._inbox: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
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
        arrives in the future. For threads that never see KeyboardInterrupt (an event loop's)."""
        fut: Future = Future()

        def job() -> None:
            if fut.set_running_or_notify_cancel():
                _settle(fut, fn)

        if self.on_thread():  # already here: run inline rather than wait on ourselves
            _settle(fut, fn)
        else:
            self._put(job)
        return fut

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the compute thread, wait for it and return its result (re-raising its
        exception). Safe to interrupt: the caller only puts on a queue and waits on a bare lock, both
        single C calls, so Ctrl-C at any moment leaves nothing half-done (``fn`` still runs)."""
        if self.on_thread():
            return fn()
        done = threading.Lock()
        done.acquire()
        outcome: list = []

        def job() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                outcome.append((False, exc))
            finally:
                done.release()

        self._put(job)
        done.acquire()
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def wake(self) -> None:
        self._put(_nothing)

    def add_poller(self, poller: Poller) -> None:
        with self._lock:
            self._pollers.append(poller)
        self.wake()

    def remove_poller(self, poller: Poller) -> None:
        with self._lock:
            if poller in self._pollers:
                self._pollers.remove(poller)

    def _put(self, job: Callable[[], object]) -> None:
        self._ensure_started()
        self._inbox.put(job)

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
            if not busy:  # sleep until work is handed over (or a poller's timeout passes)
                try:
                    job = self._inbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._run(job)

    def _drain(self) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._run(job)

    @staticmethod
    def _run(job: Callable[[], object]) -> None:
        try:
            job()
        except Exception:  # jobs deliver their own outcome; this is a bug, not the caller's error
            log.exception("compute thread: a job failed")


def _settle(fut: Future, fn: Callable[[], object]) -> None:
    try:
        fut.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - delivered to the caller
        fut.set_exception(exc)


def _nothing() -> None:
    """Queued by ``wake``: its arrival is what wakes the thread."""


_COMPUTE = ComputeThread()


def compute_thread() -> ComputeThread:
    """The process's compute thread (started on first use)."""
    return _COMPUTE

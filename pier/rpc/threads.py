"""Background threads with one owner, which starts them, asks them to stop and joins them.

A part of pier that runs a thread of its own either subclasses `OwnedThread`, implementing `run()`
(which returns soon after `stopping` is set) and `wake()` when `run()` waits on something else
than `stopping` (a condition, a queue, a socket), or hands both in: `OwnedThread(name, target,
wake=...)`, for a loop that already has its own way to be told. The owner calls `start()` once, and
`stop()` when it stops: `stop()` sets `stopping`, wakes the thread and joins it. A join never
hangs the owner: after `join_timeout` seconds it gives up, says so in the log at WARNING, naming
the thread, and returns False. `request_stop()` asks without waiting (from any thread, even the
owned one). Every layer may use this module: it imports nothing else of pier.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("pier.threads")


class OwnedThread:
    """One named daemon thread running `run()`, with an orderly stop."""

    join_timeout: float = 5.0

    def __init__(self, name: str, target: Callable[[], object] | None = None,
                 wake: Callable[[], object] | None = None) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._target = target
        self._wake = wake
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """The thread's work (`target` when given); return soon after `stopping` is set."""
        if self._target is None:
            raise NotImplementedError(f"thread {self.name} has neither a target nor a run()")
        self._target()

    def wake(self) -> None:
        """Interrupt what `run()` waits on besides `stopping` (`wake` when given, else nothing);
        called by `request_stop()` after `stopping` is set."""
        if self._wake is not None:
            self._wake()

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread; an OwnedThread runs once."""
        if self._thread is not None:
            raise RuntimeError(f"thread {self.name} was started already")
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end, without waiting for it."""
        self.stopping.set()
        self.wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (default `join_timeout`) for the thread to end: True when it
        has (or never started, or this is the thread itself), False with a warning when not."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        wait = self.join_timeout if timeout is None else timeout
        thread.join(wait)
        if thread.is_alive():
            log.warning("thread %s did not end within %g s of being asked to stop; going on without it",
                        self.name, wait)
            return False
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to end and join it (see `join`)."""
        self.request_stop()
        return self.join(timeout)

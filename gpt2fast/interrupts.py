"""Ctrl-C and SIGTERM during a run: the first asks the loop to stop, a second ends the process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal and tells the listeners (the running loop)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.by_peer = False  # another rank of the job ended early (``run_status``)
        self.listeners: list[Callable[[], None]] = []

    def on_request(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when a stop is requested (at once if it already was)."""
        self.listeners.append(listener)
        if self.requested:
            listener()

    def request(self, signum: int) -> None:
        if not self.requested:
            self.signal = signum
            self.notify()

    def request_by_peer(self) -> None:
        """Stop because another rank of the job stopped or failed."""
        if not self.requested:
            self.by_peer = True
            self.notify()

    def notify(self) -> None:
        for listener in self.listeners:
            listener()

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.by_peer

    def exit_status(self) -> int:
        """128 + the signal number, the shell's convention for a run ended by a signal; 1
        for a stop another rank caused; 0 without a stop."""
        if self.signal is not None:
            return 128 + int(self.signal)
        return 1 if self.by_peer else 0


@contextmanager
def graceful_stop(second_signal_exits: bool = True) -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM for the duration of a run.

    The first signal is recorded and the handlers are put back: the system defaults when
    ``second_signal_exits`` (the CLI: a second one ends the process at once), else the ones
    in place before (a notebook: a second Ctrl-C raises KeyboardInterrupt, the kernel
    lives). Outside the main thread (where Python cannot install signal handlers) the
    request is never set and signals keep their usual meaning.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def first_signal(signum, _frame) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL if second_signal_exits else previous[sig])
        stop.request(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, first_signal)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

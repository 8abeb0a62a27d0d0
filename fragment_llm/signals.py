"""The signals that stop a run, and handling them for a while: one place for both."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed


@contextmanager
def handling(handler: Callable[[int, object], None], signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """`handler` for `signums` while the context lasts, then the handlers before it. Only the main
    thread may set handlers (a job of a threaded launcher runs elsewhere): there this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)

"""Signals that end a session, turned into exceptions so that every `finally` (and with it
the safe state) runs; and short critical sections during which they are held.

SIGINT raises KeyboardInterrupt as usual; SIGTERM, SIGHUP (terminal closed, SSH session
lost) and SIGQUIT (Ctrl-\\) raise `Terminated`. Python delivers signals to the main thread
only, so both context managers do nothing in other threads (which no signal interrupts).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Terminated(BaseException):
    """The process received SIGTERM, SIGHUP or SIGQUIT. A BaseException, like
    KeyboardInterrupt: ordinary `except Exception` handlers do not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _terminate(signum, frame):
    raise Terminated(signum)


_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate,
             signal.SIGHUP: _terminate, signal.SIGQUIT: _terminate}
_deferring = threading.local()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def exit_signals_raise() -> Iterator[None]:
    """For the lifetime of the block, the exit signals raise (KeyboardInterrupt or
    Terminated); the handlers found on entry are restored on exit."""
    if not _main_thread():
        yield
        return
    saved = {s: signal.signal(s, _HANDLERS[s]) for s in EXIT_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the exit signals while the block runs (the safe state, a pulse leaving the host
    together with its count, an operation's record); deliver them, in order, after it."""
    if not _main_thread() or getattr(_deferring, "active", False):
        yield
        return
    pending: list[int] = []
    saved = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in EXIT_SIGNALS}
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        for s, handler in saved.items():
            signal.signal(s, handler)
        for s in pending:
            signal.raise_signal(s)

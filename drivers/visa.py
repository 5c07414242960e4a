"""The VISA session every driver is built on: framing, timeouts, and what may be retried.

Every message passes the driver's guard (`guard.py`) before it is written, whichever
method built it. Queries that only read state may be retried after a timeout; a message
that changes the bench (a pulse above all) is sent once, and if its reply does not come the
caller is told that the outcome is unknown (and the guard assumes the worst of both).
After an abandoned query a late reply may still arrive: `drain()` reconnects, so the next
query does not read someone else's answer.
"""

from __future__ import annotations

import functools
import os
import re
import select
import socket

import pyvisa
from pyvisa import constants
from pyvisa.errors import VisaIOError

from .errors import InstrumentError, InstrumentNotAnswering, InstrumentTimeout, LimitError, ReplyError
from .guard import Change, Grammar, Guard


_ERROR = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$')   # <code>,"<message>"


@functools.cache
def resource_manager(library: str = "@py") -> pyvisa.ResourceManager:
    """One resource manager per VISA library ('@py' is pyvisa-py; '@ivi' a vendor VISA)."""
    return pyvisa.ResourceManager(library)


class VisaInstrument:
    read_termination = "\n"
    write_termination = "\n"
    error_query = ""   # the error-queue query, answered <code>,"<message>" (0: no error)

    def __init__(self, resource: str, *, grammar: Grammar, name: str | None = None,
                 timeout_s: float = 5.0, visa_library: str = "@py"):
        self.name = name or type(self).__name__
        self.resource_name = resource
        self.timeout_s = timeout_s
        self.visa_library = visa_library
        self.guard = Guard(grammar, self.name)
        self._last_change: Change | None = None   # what the last message written would do
        self.round_trips = 0   # times the host waited for the instrument (replies read)
        self._awaiting_reply = False
        self._res = self._open()

    def _open(self):
        try:
            res = resource_manager(self.visa_library).open_resource(
                self.resource_name, read_termination=self.read_termination,
                write_termination=self.write_termination, timeout=int(self.timeout_s * 1000))
        except (VisaIOError, OSError, ValueError) as exc:
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name} did not answer: {exc}") from exc
        # pyvisa-py (0.8) opens a TCPIP SOCKET resource "successfully" even when the
        # connection was refused: ask the socket itself.
        sock = _socket_of(res)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if sock is not None else 0
        if error:
            res.close()
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name} did not answer: "
                                         f"{os.strerror(error)}")
        return res

    def set_timeout(self, seconds: float) -> None:
        """The session timeout from now on (a long one to connect, a short one to poll)."""
        self.timeout_s = seconds
        self._res.timeout = int(seconds * 1000)

    def reopen(self) -> None:
        """A new session after a dropped connection (the instrument keeps its state)."""
        self.close()
        self._awaiting_reply = False
        self._res = self._open()

    def make_safe(self, action, attempts: int = 3) -> None:
        """Run a safe-state action (0 V, relays open: repeating it is harmless) until it is
        confirmed, at most `attempts` times, on a new connection after each failure."""
        for attempt in range(attempts):
            try:
                action()
                return
            except (InstrumentNotAnswering, InstrumentError, InstrumentTimeout, ReplyError):
                if attempt == attempts - 1:
                    raise
                self.reopen()

    def write(self, message: str) -> None:
        """Send one message, if the guard can prove it safe (LimitError otherwise: nothing is sent)."""
        try:
            change = self.guard.check(message)
        except LimitError:
            self._awaiting_reply = False  # nothing was sent: no reply is owed
            raise
        # from before it is sent until the instrument confirms it, any part of it may have run
        self._last_change, self.guard.state = change, change.uncertain
        try:
            self._res.write(message)
        except (VisaIOError, OSError) as exc:
            self._awaiting_reply = False  # not sent (or the link is gone): no reply is owed
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: sending {message!r} "
                                         f"failed: {exc}") from exc

    def confirm_last(self) -> None:
        """The instrument carried out the whole of the last message written."""
        if self._last_change is not None:
            self.guard.state, self._last_change = self._last_change.after, None

    def read(self) -> str:
        self.round_trips += 1
        try:
            reply = self._res.read()
        except VisaIOError as exc:
            if exc.error_code == constants.StatusCode.error_timeout:
                if self._link_closed():
                    raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: the connection "
                                                 f"was closed by the instrument") from exc
                raise InstrumentTimeout(f"{self.name} at {self.resource_name}: no reply within "
                                        f"{self.timeout_s} s") from exc
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: {exc}") from exc
        except UnicodeDecodeError as exc:
            self._awaiting_reply = False  # the garbled reply was read: nothing more is owed
            raise ReplyError(f"{self.name}: garbled reply {exc.object!r}") from exc
        except OSError as exc:
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: {exc}") from exc
        self._awaiting_reply = False
        return reply

    def query(self, message: str, *, retries: int = 0) -> str:
        """Send and read the reply. Retries (only for messages safe to repeat) after a
        timeout or a garbled reply."""
        for attempt in range(retries + 1):
            self.drain()
            self._awaiting_reply = True  # before sending: an interrupt may land as soon as it is sent
            self.write(message)
            try:
                return self.read()
            except (TimeoutError, ReplyError):
                if attempt == retries:
                    raise

    def drain(self) -> None:
        """Make sure no reply still owed by an abandoned query (timed out, or interrupted)
        is read as the answer to the next one: such a reply may come at any time, so the
        session is replaced by a fresh connection (the instrument keeps its state; the late
        reply goes to the closed one)."""
        if not self._awaiting_reply:
            return
        self.reopen()   # not reached if interrupted: the next drain tries again

    def _link_closed(self) -> bool:
        """pyvisa-py reports a connection closed by the instrument as a timeout (it reads
        nothing until the timeout); a vendor VISA reports it as a lost connection."""
        sock = _socket_of(self._res)
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        try:
            self._res.close()
        except (VisaIOError, OSError):
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.resource_name}>"


    # --- the error queue ------------------------------------------------------------------

    def send(self, *commands: str) -> None:
        """Commands in one message, then the error queue read in the same round trip: a
        clean answer confirms the whole message to the guard."""
        message = ";".join([*commands, self.error_query])
        try:
            reply = self.query(message)
        except TimeoutError:
            # A failing command may discard the rest of its message, the error query
            # included: ask the error queue on its own before giving up.
            self._raise_on_error(self.query(self.error_query), message)
            raise
        self._raise_on_error(reply, message)
        self.confirm_last()

    def check_errors(self) -> None:
        self._raise_on_error(self.query(self.error_query, retries=1), "")

    def _raise_on_error(self, reply: str, message: str) -> None:
        code, text = self._parse_error(reply)
        if code != 0:   # part of the message may have run: the guard keeps assuming the worst
            self._clear_error_queue()
            raise InstrumentError(self.name, code, text, message)

    def _parse_error(self, reply: str) -> tuple[int, str]:
        m = _ERROR.match(reply.strip())
        if not m:
            raise ReplyError(f"{self.name}: unexpected reply {reply.strip()!r} to {self.error_query}")
        return int(m.group(1)), m.group(2)

    def _clear_error_queue(self, limit: int = 40) -> None:
        for _ in range(limit):
            if self._parse_error(self.query(self.error_query, retries=1))[0] == 0:
                return


def _socket_of(res) -> socket.socket | None:
    """The socket behind a pyvisa-py TCPIP SOCKET session, or None (other backends)."""
    try:
        sessions = getattr(res.visalib, "sessions", None)
        session = sessions.get(res.session) if isinstance(sessions, dict) else None
    except Exception:  # a closed session
        return None
    sock = getattr(session, "interface", None)
    return sock if isinstance(sock, socket.socket) else None

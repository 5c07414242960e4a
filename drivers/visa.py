"""The VISA session every driver is built on: framing, timeouts, and what may be retried.

Queries that only read state may be retried after a timeout; a message that changes the
bench (a pulse above all) is sent once, and if its reply does not come the caller is told
that the outcome is unknown. After an interrupted query, a late reply may still arrive:
`drain()` discards it so the next query does not read someone else's answer.
"""

from __future__ import annotations

import functools

import pyvisa
from pyvisa import constants
from pyvisa.errors import VisaIOError

from .errors import InstrumentNotAnswering, ReplyError


@functools.cache
def resource_manager(library: str = "@py") -> pyvisa.ResourceManager:
    """One resource manager per VISA library ('@py' is pyvisa-py; '@ivi' a vendor VISA)."""
    return pyvisa.ResourceManager(library)


class VisaInstrument:
    read_termination = "\n"
    write_termination = "\n"

    def __init__(self, resource: str, *, name: str | None = None, timeout_s: float = 5.0,
                 visa_library: str = "@py"):
        self.name = name or type(self).__name__
        self.resource_name = resource
        self.timeout_s = timeout_s
        self._awaiting_reply = False
        try:
            self._res = resource_manager(visa_library).open_resource(
                resource, read_termination=self.read_termination,
                write_termination=self.write_termination, timeout=int(timeout_s * 1000))
        except (VisaIOError, OSError, ValueError) as exc:
            raise InstrumentNotAnswering(f"{self.name} at {resource} did not answer: {exc}") from exc

    def write(self, message: str) -> None:
        try:
            self._res.write(message)
        except (VisaIOError, OSError) as exc:
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: sending {message!r} "
                                         f"failed: {exc}") from exc

    def read(self) -> str:
        try:
            reply = self._res.read()
        except VisaIOError as exc:
            if exc.error_code == constants.StatusCode.error_timeout:
                raise TimeoutError(f"{self.name} at {self.resource_name}: no reply within "
                                   f"{self.timeout_s} s") from exc
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ReplyError(f"{self.name}: garbled reply {exc.object!r}") from exc
        except OSError as exc:
            raise InstrumentNotAnswering(f"{self.name} at {self.resource_name}: {exc}") from exc
        self._awaiting_reply = False
        return reply

    def query(self, message: str, *, retries: int = 0) -> str:
        """Send and read the reply. Retries (only for messages safe to repeat) after a timeout."""
        for attempt in range(retries + 1):
            self.drain()
            self.write(message)
            self._awaiting_reply = True
            try:
                return self.read()
            except TimeoutError:
                if attempt == retries:
                    raise

    def drain(self) -> None:
        """Discard a reply that was still owed when the last query was abandoned."""
        if not self._awaiting_reply:
            return
        saved = self._res.timeout
        self._res.timeout = 200
        try:
            while True:
                self._res.read_raw()
        except (VisaIOError, OSError):
            pass
        finally:
            self._res.timeout = saved
            self._awaiting_reply = False

    def close(self) -> None:
        try:
            self._res.close()
        except (VisaIOError, OSError):
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.resource_name}>"

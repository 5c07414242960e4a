"""Errors raised by the drivers. Each names the instrument, the command or the limit."""


class DriverError(Exception):
    """Base class for everything the drivers raise."""


class LimitError(DriverError, ValueError):
    """A command was refused on the host because it would exceed a safety limit."""


class InstrumentNotAnswering(DriverError, ConnectionError):
    """An instrument could not be reached, or stopped answering."""


class InstrumentTimeout(DriverError, TimeoutError):
    """No reply within the session timeout. A DriverError (so callers that handle instrument
    failures, the tuner's retries above all, handle this one too) and a TimeoutError."""


class InstrumentError(DriverError):
    """The instrument reported an error for a command it received."""

    def __init__(self, instrument: str, code: int, message: str, command: str = ""):
        self.instrument, self.code, self.message, self.command = instrument, code, message, command
        where = f" after {command!r}" if command else ""
        super().__init__(f"{instrument}: error {code} {message!r}{where}")


class ReplyError(DriverError):
    """A reply could not be understood (garbled, truncated, wrong shape)."""


class PulseOutcomeUnknown(DriverError):
    """A pulse was sent but its completion was not confirmed. Never retry it blindly:
    re-read the device and decide again."""

"""Keysight B1500A semiconductor parameter analyzer (FLEX command set) over VISA.

Written from the B1500 programming guide's FLEX conventions: CR LF framing, several
commands joined with ';' in one message, `ERRX?` for the error queue, data in `FMT 1`
(3 header letters, 12-character number). Every source command is built by a method that
checks the bench limits first, so nothing outside them can be sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InstrumentError, LimitError, PulseOutcomeUnknown, ReplyError
from .interfaces import Levels, Measurement, SourceMeter, level_pairs
from .limits import Limits
from .visa import VisaInstrument

SMU_MODELS = {"B1510A": "HPSMU", "B1511A": "MPSMU", "B1511B": "MPSMU", "B1514A": "MCSMU",
              "B1517A": "HRSMU"}
NO_ERROR = '+0,"No Error."'
# SMU pulse timing limits of the B1511B/B1517A (programming guide, PT command)
SMU_PULSE_MIN_WIDTH = 0.5e-3
SMU_PULSE_MIN_PERIOD = 5e-3

_FIELD = re.compile(r"^([A-Z])([A-J Z])([A-Za-z])([+-]\d{3}\.\d{3}E[+-]\d{2})$")
_COMMAND = re.compile(r"^\s*(\*?[A-Z]+\??)\s*(.*)$", re.IGNORECASE)
# Commands the guard lets through unchecked: none of them sources anything. Every other
# command (sweeps, staircases, RZ restoring zeroed outputs, ...) is refused on the host.
_HARMLESS = frozenset({"CN", "CL", "FMT", "MM", "TI", "TV", "XE", "AV", "AIT", "AAD", "AZ", "FL", "CMM",
                       "RI", "RV", "DZ"})


@dataclass(frozen=True)
class Reading:
    """One FMT 1 data field."""

    status: str   # N normal, C this channel in compliance, T another in compliance, V overflow...
    channel: int  # slot 1..10 (0 for time or sweep-source fields)
    kind: str     # I, V, T...
    value: float

    @property
    def in_compliance(self) -> bool:
        return self.status == "C"

    @property
    def valid(self) -> bool:
        return self.status in ("N", "C", "T", "W", "E")


def parse_fields(reply: str) -> list[Reading]:
    fields = []
    for text in reply.strip().split(","):
        m = _FIELD.match(text.strip())
        if not m:
            raise ReplyError(f"B1500A: not an FMT 1 data field: {text!r} in {reply!r}")
        status, chan, kind, number = m.groups()
        channel = ord(chan) - ord("A") + 1 if chan in "ABCDEFGHIJ" else 0
        fields.append(Reading(status, channel, kind, float(number)))
    return fields


def _num(x: float) -> str:
    return f"{x:.7g}"


class B1500A(VisaInstrument, SourceMeter):
    read_termination = "\r\n"
    write_termination = "\r\n"
    error_query = "ERRX?"

    def __init__(self, resource: str, *, limits: Limits, name: str = "B1500A", **visa):
        super().__init__(resource, name=name, **visa)
        self.limits = limits
        self.identity = ""
        self.modules: dict[int, str] = {}
        self.enabled: set[int] = set()
        # the pulse set-up the instrument holds (PT width, PV peak and compliance): a pulse's
        # energy is checked whichever message sets which part
        self._pulse_setup: dict[str, float | None] = {"width": None, "peak": None, "compliance": None}

    def initialize(self) -> None:
        """Identify the mainframe and its modules and select the FMT 1 data format."""
        self.identity = self.query("*IDN?", retries=1).strip()
        self.modules = self.read_modules()
        self.send("FMT 1,0")

    def read_modules(self) -> dict[int, str]:
        reply = self.query("UNT?", retries=1)
        slots = reply.strip().split(";")
        if len(slots) != 10:
            raise ReplyError(f"{self.name}: UNT? should list 10 slots, got {reply!r}")
        modules = {}
        for slot, entry in enumerate(slots, start=1):
            model = entry.split(",")[0].strip()
            if model != "0":
                modules[slot] = model
        return modules

    def source_channels(self) -> list[int]:
        return [s for s, m in sorted(self.modules.items()) if m in SMU_MODELS]

    def require_smu(self, slot: int) -> None:
        if self.modules.get(slot) not in SMU_MODELS:
            found = ", ".join(f"{s}: {m}" for s, m in sorted(self.modules.items())) or "none"
            raise ValueError(f"{self.name}: slot {slot} holds no SMU (modules: {found})")

    def enable(self, channels: list[int]) -> None:
        for slot in channels:
            self.require_smu(slot)
        self.send("CN " + ",".join(str(s) for s in channels))
        self.enabled.update(channels)

    def disable(self, channels: list[int]) -> None:
        self.send("CL " + ",".join(str(s) for s in channels))
        self.enabled.difference_update(channels)

    # --- checked command builders -----------------------------------------------------------

    def dv_command(self, slot: int, volts: float, compliance: float | None = None) -> str:
        compliance = self.limits.compliance_current if compliance is None else compliance
        where = f"{self.name} SMU {slot}: "
        self.limits.check_line_voltage(volts, where)
        self.limits.check_compliance(compliance, where)
        return f"DV {slot},0,{_num(volts)},{_num(compliance)}"

    def pulse_commands(self, slot: int, base: float, peak: float, width: float, *,
                       hold: float = 0.0, period: float | None = None,
                       compliance: float | None = None) -> list[str]:
        compliance = self.limits.compliance_current if compliance is None else compliance
        where = f"{self.name} SMU {slot}: "
        self.limits.check_line_voltage(base, where)
        self.limits.check_pulse(peak, width, compliance, where)
        if width < SMU_PULSE_MIN_WIDTH:
            raise ValueError(f"{where}SMU pulses are at least {SMU_PULSE_MIN_WIDTH * 1e3} ms wide "
                             f"(asked {width:.3g} s); use an SPGU or WGFMU for shorter pulses")
        period = max(SMU_PULSE_MIN_PERIOD, width + 2e-3) if period is None else period
        return [f"PT {_num(hold)},{_num(width)},{_num(period)}",
                f"PV {slot},0,{_num(base)},{_num(peak)},{_num(compliance)}",
                f"MM 3,{slot}"]

    # --- SourceMeter ------------------------------------------------------------------------

    def set_voltages(self, levels: Levels) -> None:
        self.send(*(self.dv_command(slot, v) for slot, v in level_pairs(levels)))

    def measure_current(self, channel: int, *, levels: Levels | None = None,
                        then: Levels | None = None) -> Measurement:
        before = [self.dv_command(slot, v) for slot, v in level_pairs(levels or {})]
        after = [self.dv_command(slot, v) for slot, v in level_pairs(then or {})]
        field = self.measure(";".join([*before, f"TI {channel},0", *after]))[0]
        if not field.valid:  # an overflow or an oscillation is not a current to decide on
            raise ReplyError(f"{self.name}: SMU {channel} reading has status {field.status!r} "
                             f"({field.value:g}), not a valid measurement")
        return Measurement(field.value, field.in_compliance)

    def check_pulse(self, channel: int, base: float, peak: float, width: float) -> None:
        self.pulse_commands(channel, base, peak, width)

    def pulse(self, channel: int, base: float, peak: float, width: float) -> Measurement:
        self.send(*self.pulse_commands(channel, base, peak, width))
        field = self.trigger_pulse()
        return Measurement(field.value, field.in_compliance)

    # --- messaging ------------------------------------------------------------------------

    def write(self, message: str) -> None:
        """Every message passes the limit guard, whoever built it."""
        try:
            setup = self._guard(message)
        except LimitError:
            self._awaiting_reply = False  # nothing was sent: no reply is owed
            raise
        super().write(message)
        self._pulse_setup = setup

    def _guard(self, message: str) -> dict[str, float | None]:
        """The last check before the wire: source levels, compliances and pulse widths in
        any DV, PV or PT command within the bench limits, the pulse energy of the pulse
        set-up the message leaves behind, and nothing that could source unchecked (DI, RZ,
        sweeps: any command not known to be harmless). Returns that pulse set-up."""
        setup = dict(self._pulse_setup)
        for command in message.split(";"):
            m = _COMMAND.match(command)
            if not command.strip():
                continue
            where = f"{self.name}: {command.strip()!r}: "
            if not m:
                raise LimitError(f"{where}not a command the bench limits can check")
            name = m.group(1).upper()
            if name.startswith("*") or name.endswith("?"):
                if name == "*RST":
                    setup = dict.fromkeys(setup)
                continue                     # common commands and queries source nothing
            if name in _HARMLESS:
                continue
            if name not in ("DV", "PV", "PT"):
                raise LimitError(f"{where}{name} is not covered by the bench limits")
            args = [a.strip() for a in m.group(2).split(",")] if m.group(2) else []
            try:
                values = [float(a) for a in args]
            except ValueError:
                raise LimitError(f"{where}cannot check non-numeric arguments") from None
            if name == "DV" and len(values) >= 3:
                self.limits.check_line_voltage(values[2], where)
                if len(values) >= 4:
                    self.limits.check_compliance(values[3], where)
            elif name == "PV" and len(values) >= 4:
                self.limits.check_line_voltage(values[2], where)
                self.limits.check_line_voltage(values[3], where)
                setup["peak"] = values[3]
                setup["compliance"] = values[4] if len(values) >= 5 else self.limits.compliance_current
                self.limits.check_compliance(setup["compliance"], where)
            elif name == "PT" and len(values) >= 2:
                setup["width"] = values[1]
                if not 0 < setup["width"] <= self.limits.max_pulse_width:
                    raise LimitError(f"{where}pulse width {setup['width']:.4g} s outside (0, "
                                     f"{self.limits.max_pulse_width}] s")
            else:
                raise LimitError(f"{where}too few arguments to check")
        if setup["width"] is not None and setup["peak"] is not None:
            self.limits.check_pulse(setup["peak"], setup["width"], setup["compliance"], f"{self.name}: ")
        return setup

    def measure(self, message: str) -> list[Reading]:
        """A measurement query. On silence the error queue says why; if it is empty the
        query is repeated once (a spot measurement is safe to repeat)."""
        for attempt in range(2):
            try:
                return parse_fields(self.query(message))
            except TimeoutError:
                self.check_errors()
                if attempt:
                    raise

    def trigger_pulse(self) -> Reading:
        """XE for a pulsed-spot measurement set up beforehand. Sent exactly once."""
        self.drain()
        self._awaiting_reply = True  # before sending: an interrupt may land as soon as it is sent
        self.write("XE")
        try:
            reply = self.read()
        except (TimeoutError, ReplyError) as exc:
            raise PulseOutcomeUnknown(f"{self.name}: no valid reply to XE; the pulse may or may "
                                      f"not have been applied ({exc})") from exc
        return parse_fields(reply)[0]

    def safe_state(self) -> None:
        """All SMU outputs to 0 V, then every channel disabled (CL also zeroes them)."""
        self.make_safe(self._safe_state)

    def _safe_state(self) -> None:
        self.drain()
        try:
            if self.enabled:
                self.send(*(f"DV {slot},0,0" for slot in sorted(self.enabled)))
        except InstrumentError:
            pass  # e.g. a channel the instrument had already switched off; CL zeroes them all
        finally:
            self.write("CL")
            self.enabled.clear()
            self.check_errors()

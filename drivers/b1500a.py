"""Keysight B1500A semiconductor parameter analyzer (FLEX command set) over VISA.

Written from the B1500 programming guide's FLEX conventions: CR LF framing, several
commands joined with ';' in one message, `ERRX?` for the error queue, data in `FMT 1`
(3 header letters, 12-character number). Every message passes the guard with `FlexGrammar`
before it leaves the host, whichever method built it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Context

from .errors import InstrumentError, LimitError, PulseOutcomeUnknown, ReplyError
from .guard import Grammar, Guard, integer, number
from .interfaces import Levels, Measurement, SourceMeter, level_pairs
from .limits import Limits
from .signals import signals_deferred
from .visa import VisaInstrument

SMU_MODELS = {"B1510A": "HPSMU", "B1511A": "MPSMU", "B1511B": "MPSMU", "B1514A": "MCSMU",
              "B1517A": "HRSMU"}
NO_ERROR = '+0,"No Error."'
# SMU pulse timing limits of the B1511B/B1517A (programming guide, PT command)
SMU_PULSE_MIN_WIDTH = 0.5e-3
SMU_PULSE_MIN_PERIOD = 5e-3
SLOTS = range(1, 11)

_FIELD = re.compile(r"^([A-Z])([A-J Z])([A-Za-z])([+-]\d{3}\.\d{3}E[+-]\d{2})$")


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
        status, chan, kind, number_text = m.groups()
        channel = ord(chan) - ord("A") + 1 if chan in "ABCDEFGHIJ" else 0
        fields.append(Reading(status, channel, kind, float(number_text)))
    return fields


_DIGITS = Context(prec=10, rounding=ROUND_DOWN)   # nine level changes still fit in 250 characters


def _num(x: float) -> str:
    """Ten significant digits, rounded towards zero: a level or a compliance at a limit never
    comes out above it (the guard checks the text, as the instrument will read it)."""
    shortest = _DIGITS.create_decimal(repr(float(x)))   # from the shortest exact decimal: 0.3, not 0.29999...
    return format(shortest.normalize(_DIGITS), "g")


# --- the guard's grammar ------------------------------------------------------------------------

@dataclass
class FlexState:
    """What this session knows the analyzer holds. None: unknown (before the connect reset,
    or after a message that may or may not have been carried out)."""

    levels: dict[int, float | None] = field(default_factory=lambda: dict.fromkeys(SLOTS))
    compliance: dict[int, float | None] = field(default_factory=lambda: dict.fromkeys(SLOTS))
    width: float | None = None                  # PT pulse width; unknown counts as max_pulse_width
    pulses: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # PV: base, peak, Icomp
    mode: tuple[int, tuple[int, ...]] | None = None  # MM set in this session


_NAME = re.compile(r"^\s*(\*?[A-Za-z]+\??)(.*)$", re.S)
_QUERIES = frozenset({"*IDN?", "*OPC?", "*STB?", "*LRN?", "UNT?", "ERRX?", "ERR?"})
# settings that source nothing and change no output
_SETTINGS = frozenset({"FMT", "AV", "AIT", "AAD", "AZ", "FL", "CMM", "RI", "RV", "TSC", "TSR", "BC"})
_MEASUREMENTS = frozenset({"TI", "TV", "TTI", "TTV", "TIV", "TTIV"})


class FlexGrammar(Grammar[FlexState]):
    """The FLEX commands memlab needs, checked against the bench limits. Every DC level, the
    spread between any two levels (a device may sit between any two lines), compliance,
    pulse width and pulse energy are proved within the limits from what this session set;
    returning an output to 0 V is always allowed (the safe state must be reachable); any
    other command is refused."""

    def __init__(self, limits: Limits):
        self.limits = limits

    def unknown_state(self) -> FlexState:
        return FlexState()

    def reset_state(self) -> FlexState:
        """After *RST: every output off at 0 V; no pulse, mode or compliance set by us."""
        return FlexState(levels=dict.fromkeys(SLOTS, 0.0))

    def copy(self, s: FlexState) -> FlexState:
        return replace(s, levels=dict(s.levels), compliance=dict(s.compliance), pulses=dict(s.pulses))

    def commands(self, message: str) -> list[str]:
        return [c for c in message.split(";") if c.strip()]

    def apply(self, s: FlexState, command: str, where: str) -> None:
        m = _NAME.match(command)
        name = m.group(1).upper() if m else ""
        rest = m.group(2).strip() if m else ""
        if name == "*RST" and not rest:
            fresh = self.reset_state()
            s.levels, s.compliance, s.width, s.pulses, s.mode = (fresh.levels, fresh.compliance, fresh.width,
                                                                 fresh.pulses, fresh.mode)
            return
        if name in _QUERIES or name in _SETTINGS or name in _MEASUREMENTS:
            return
        args = [a.strip() for a in rest.split(",")] if rest else []
        handler = getattr(self, f"_{name.lower()}", None) if name.isalpha() else None
        if handler is None:
            raise LimitError(f"{where}{name or command.strip()!r} is not covered by the bench limits")
        handler(s, args, where)

    # --- commands -------------------------------------------------------------------------

    def _slot(self, token: str, where: str) -> int:
        slot = integer(token, where)
        if slot not in SLOTS:
            raise LimitError(f"{where}channel {slot} is not a slot 1 to 10")
        return slot

    def _slots(self, args: list[str], where: str) -> list[int]:
        return [self._slot(a, where) for a in args] if args else list(SLOTS)

    def _cn(self, s, args, where):
        """Output switch on: a channel that was off comes on at 0 V (the level CL and *RST
        left in the state); one already on keeps its level."""
        self._slots(args, where)

    def _cl(self, s, args, where):          # output switch off, 0 V
        for slot in self._slots(args, where):
            s.levels[slot] = 0.0

    _dz = _cl                               # outputs to 0 V (settings kept for RZ, which is refused)

    def _dv(self, s, args, where):
        """DV ch,range,V[,Icomp[,polarity[,Irange]]]"""
        if not 3 <= len(args) <= 6:
            raise LimitError(f"{where}DV takes 3 to 6 arguments")
        slot = self._slot(args[0], where)
        integer(args[1], where)
        volts = number(args[2], where)
        for extra in args[4:]:
            integer(extra, where)
        if len(args) > 3:
            compliance = number(args[3], where)
            self.limits.check_compliance(compliance, where)
        else:
            compliance = s.compliance[slot]
        if volts != 0:
            self.limits.check_line_voltage(volts, where)
            if compliance is None:
                raise LimitError(f"{where}compliance of SMU {slot} not set in this session: give Icomp")
            self.limits.check_compliance(compliance, where)
            self._spread(s, slot, volts, where)
        s.levels[slot], s.compliance[slot] = volts, compliance

    def _pt(self, s, args, where):
        """PT hold,width[,period[,tdelay]]"""
        if not 2 <= len(args) <= 4:
            raise LimitError(f"{where}PT takes 2 to 4 arguments")
        hold, width, period, delay = [number(a, where) for a in args] + [0.0] * (4 - len(args))
        if hold < 0 or delay < 0:
            raise LimitError(f"{where}negative hold or delay time")
        if not 0 < width <= self.limits.max_pulse_width:
            raise LimitError(f"{where}pulse width {width:.4g} s outside (0, {self.limits.max_pulse_width}] s")
        if width < SMU_PULSE_MIN_WIDTH:
            raise LimitError(f"{where}SMU pulses are at least {SMU_PULSE_MIN_WIDTH * 1e3} ms wide (asked "
                             f"{width:.3g} s); use an SPGU or WGFMU for shorter pulses")
        if period != 0 and period < width:
            raise LimitError(f"{where}pulse period {period:.4g} s shorter than the width {width:.4g} s")
        s.width = width

    def _pv(self, s, args, where):
        """PV ch,range,base,peak[,Icomp]"""
        if not 4 <= len(args) <= 5:
            raise LimitError(f"{where}PV takes 4 or 5 arguments")
        slot = self._slot(args[0], where)
        integer(args[1], where)
        base, peak = number(args[2], where), number(args[3], where)
        self.limits.check_line_voltage(base, where)
        self.limits.check_line_voltage(peak, where)
        compliance = number(args[4], where) if len(args) == 5 else s.compliance[slot]
        if compliance is None:
            raise LimitError(f"{where}compliance of SMU {slot} not set in this session: give Icomp")
        self.limits.check_compliance(compliance, where)
        s.pulses[slot] = (base, peak, compliance)

    def _mm(self, s, args, where):
        """MM 1,ch... (spot) or MM 3,ch (pulsed spot with the PV set in this session)."""
        if len(args) < 2:
            raise LimitError(f"{where}MM takes a mode and channels")
        mode, slots = integer(args[0], where), tuple(self._slot(a, where) for a in args[1:])
        if mode == 3:
            if len(slots) != 1 or slots[0] not in s.pulses:
                raise LimitError(f"{where}a pulsed spot measurement needs one channel with a PV set in "
                                 f"this session")
        elif mode != 1:
            raise LimitError(f"{where}measurement mode {mode} would run a sweep nobody set up in this session")
        s.mode = (mode, slots)

    def _xe(self, s, args, where):
        if args:
            raise LimitError(f"{where}XE takes no arguments")
        if s.mode is None:
            raise LimitError(f"{where}no measurement mode set up in this session")
        mode, slots = s.mode
        if mode == 3:
            slot = slots[0]
            if slot not in s.pulses:
                raise LimitError(f"{where}no pulse set up on SMU {slot} in this session")
            base, peak, compliance = s.pulses[slot]
            self._energy(s, peak, compliance, where)
            self._spread(s, slot, peak, where)
            self._spread(s, slot, base, where)
            s.levels[slot], s.compliance[slot] = base, compliance

    def finish(self, s: FlexState, where: str) -> None:
        for base, peak, compliance in s.pulses.values():
            self._energy(s, peak, compliance, where)

    # --- checks ---------------------------------------------------------------------------

    def _energy(self, s: FlexState, peak: float, compliance: float, where: str) -> None:
        width = self.limits.max_pulse_width if s.width is None else s.width
        unknown = " (pulse width unknown: counted as max_pulse_width)" if s.width is None else ""
        energy = abs(peak) * compliance * width
        if energy > self.limits.max_pulse_energy:
            raise LimitError(f"{where}pulse energy bound {energy:.3g} J exceeds max_pulse_energy "
                             f"{self.limits.max_pulse_energy} J{unknown}")

    def _spread(self, s: FlexState, slot: int, volts: float, where: str) -> None:
        """A device may sit between this output and any other: their difference is bounded."""
        for other, level in s.levels.items():
            if other == slot:
                continue
            if level is None:
                raise LimitError(f"{where}level of SMU {other} unknown: cannot bound the voltage across a device")
            if abs(volts - level) > self.limits.max_device_voltage:
                raise LimitError(f"{where}{volts:+.4g} V against {level:+.4g} V on SMU {other} exceeds "
                                 f"max_device_voltage {self.limits.max_device_voltage} V across a device")

    def doubt(self, before: FlexState, after: FlexState) -> FlexState:
        same = lambda a, b: a if a == b else None  # noqa: E731
        return FlexState(
            levels={k: same(before.levels[k], after.levels[k]) for k in SLOTS},
            compliance={k: same(before.compliance[k], after.compliance[k]) for k in SLOTS},
            width=None if None in (before.width, after.width) else max(before.width, after.width),
            pulses={k: v for k, v in after.pulses.items() if before.pulses.get(k) == v},
            mode=same(before.mode, after.mode))


# --- the driver ---------------------------------------------------------------------------------

class B1500A(VisaInstrument, SourceMeter):
    read_termination = "\r\n"
    write_termination = "\r\n"
    error_query = "ERRX?"

    def __init__(self, resource: str, *, limits: Limits, name: str = "B1500A", **visa):
        self.limits = limits
        self.identity = ""
        self.modules: dict[int, str] = {}
        self.enabled: set[int] = set()
        self.pulses_sent = 0   # XE messages that left the host for a pulsed spot measurement
        super().__init__(resource, name=name, grammar=FlexGrammar(limits), **visa)

    def initialize(self) -> None:
        """Reset (the guard then knows the instrument's state), identify the mainframe and its
        modules, and select the FMT 1 data format."""
        self.send("*RST")
        self.enabled.clear()
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

    # --- command builders (the guard checks what they build) ------------------------------

    def dv_command(self, slot: int, volts: float, compliance: float | None = None) -> str:
        compliance = self.limits.compliance_current if compliance is None else compliance
        return f"DV {slot},0,{_num(volts)},{_num(compliance)}"

    def pulse_commands(self, slot: int, base: float, peak: float, width: float, *,
                       hold: float = 0.0, period: float | None = None,
                       compliance: float | None = None) -> list[str]:
        compliance = self.limits.compliance_current if compliance is None else compliance
        return pulse_commands(slot, base, peak, width, hold=hold, period=period, compliance=compliance)

    @classmethod
    def check_pulse_plan(cls, limits: Limits, base: float, peak: float, width: float) -> None:
        """Would a pulse like this pass, on a freshly connected instrument? For preflight:
        nothing is connected or sent."""
        guard = Guard(FlexGrammar(limits), "B1500A")
        guard.state = guard.grammar.reset_state()
        commands = pulse_commands(1, base, peak, width, compliance=limits.compliance_current)
        guard.check(";".join([f"DV 1,0,0,{_num(limits.compliance_current)}", *commands, "XE"]))

    # --- SourceMeter ------------------------------------------------------------------------

    def set_voltages(self, levels: Levels) -> None:
        self.send(*(self.dv_command(slot, v) for slot, v in level_pairs(levels)))

    def measure_current(self, channel: int, *, levels: Levels | None = None,
                        then: Levels | None = None) -> Measurement:
        before = [self.dv_command(slot, v) for slot, v in level_pairs(levels or {})]
        after = [self.dv_command(slot, v) for slot, v in level_pairs(then or {})]
        field_ = self.measure(";".join([*before, f"TI {channel},0", *after]))[0]
        if not field_.valid:  # an overflow or an oscillation is not a current to decide on
            raise ReplyError(f"{self.name}: SMU {channel} reading has status {field_.status!r} "
                             f"({field_.value:g}), not a valid measurement")
        return Measurement(field_.value, field_.in_compliance)

    def check_pulse(self, channel: int, base: float, peak: float, width: float) -> None:
        self.guard.check(";".join([*self.pulse_commands(channel, base, peak, width), "XE"]))

    def pulse(self, channel: int, base: float, peak: float, width: float) -> Measurement:
        self.send(*self.pulse_commands(channel, base, peak, width))
        field_ = self.trigger_pulse()
        return Measurement(field_.value, field_.in_compliance)

    # --- messaging ------------------------------------------------------------------------

    def measure(self, message: str) -> list[Reading]:
        """A measurement query, with the error queue read at its end in the same round trip
        (so levels set after the measurement are confirmed too). On silence the error queue
        says why; if it is empty the query is repeated once (a spot measurement is safe to
        repeat)."""
        message = f"{message};{self.error_query}"
        for attempt in range(2):
            try:
                try:
                    fields = parse_fields(self.query(message))
                finally:
                    self._awaiting_reply = True   # the error queue's line is still owed
                self._raise_on_error(self.read(), message)
                self.confirm_last()
                return fields
            except TimeoutError:
                self.check_errors()
                if attempt:
                    raise

    def trigger_pulse(self) -> Reading:
        """XE for a pulsed-spot measurement set up beforehand. Sent exactly once, and counted
        in `pulses_sent` as it leaves the host (signals held, so the count never misses one)."""
        self.drain()
        with signals_deferred():
            self._awaiting_reply = True
            self.write("XE")
            self.pulses_sent += 1
        try:
            field_ = parse_fields(self.read())[0]
        except (TimeoutError, ReplyError) as exc:
            raise PulseOutcomeUnknown(f"{self.name}: no valid reply to XE; the pulse may or may "
                                      f"not have been applied ({exc})") from exc
        self.confirm_last()   # its data: the pulse was applied
        return field_

    def safe_state(self) -> None:
        """All SMU outputs to 0 V, then every channel disabled (CL also zeroes them)."""
        self.make_safe(self._safe_state)

    def _safe_state(self) -> None:
        self.drain()
        # only outputs that may be away from 0 V (as far as the guard knows) are zeroed first
        biased = [slot for slot in sorted(self.enabled) if self.guard.state.levels.get(slot) != 0.0]
        try:
            if biased:
                self.send(*(f"DV {slot},0,0" for slot in biased))
        except InstrumentError:
            pass  # e.g. a channel the instrument had already switched off; CL zeroes them all
        finally:
            self.send("CL")
            self.enabled.clear()


def pulse_commands(slot: int, base: float, peak: float, width: float, *, hold: float = 0.0,
                   period: float | None = None, compliance: float) -> list[str]:
    """The PT, PV and MM commands of one SMU pulsed spot measurement (XE fires it); the
    guard checks them."""
    period = max(SMU_PULSE_MIN_PERIOD, width + 2e-3) if period is None else period
    return [f"PT {_num(hold)},{_num(width)},{_num(period)}",
            f"PV {slot},0,{_num(base)},{_num(peak)},{_num(compliance)}",
            f"MM 3,{slot}"]

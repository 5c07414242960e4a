"""Keithley 4200A-SCS parameter analyzer over KXCI on a LAN socket: its SMUs (user mode) and
its 4225-PMU (segment ARB), as a `SourceMeter` and a `PulseSource`.

Written from the KXCI conventions (Tektronix's KXCI examples, the KXCI programming manual as
quoted by client code): on LAN every message gets exactly one reply, `ACK` for setters;
several commands may be joined with ';'; replies end with the configured line ending and a
NUL, so this driver reads up to the NUL and strips the line ending (any of the four
settings works). Errors are read with `:ERROR:LAST:GET` (`<text>. (<code>)`; GUESS, see
simulator/k4200a.py for what could not be confirmed) and cleared with `:ERROR:LAST:CLEAR`.

Channel numbers: SMU k is k; channel c of PMU card m is 100*m + c (101, 102 for PMU1), which
KXCI's `:PMU:` commands call pulse channel 2*(m-1) + c.

KXCI's user mode has no pulsed SMU measurement (no PT/PV as on the B1500): an SMU output
changes only with DV, for as long as the host leaves it, so no pulse width could be proved.
`pulse` therefore runs on a PMU channel, as a one-step segment ARB.

System mode (the 4200A-SCS Reference Manual's KXCI section, 4200A-901-01 Rev. C, and
Tektronix's KXCI system-mode examples) runs SMU sweeps on the instrument: the channel
definition page `DE` (`CH`), the source set-up page `SS` (`VR` VAR1, `VP` VAR2, `VC` constants,
`HT`, `DT`, `IT`), the measurement set-up page `SM` (`DM`, `LI`, ...), the measurement control
page `MD` (`ME1` runs the test, `ME4` stops it); `SP` has the busy bit while it runs; `DO
'name'` reads a name's readings (`X+N.NNNNE+NN`, comma separated), `RD 'name',index` one
reading (a bare number; `0` past the last one, as Tektronix's examples read it: GUESS).
`sweep_iv` sweeps one SMU with the other SMUs that are on held as constants, then returns to
user mode and puts the held levels back (GUESS: a finished test leaves its SMUs off).

memlab's KULT library (drivers/kult/memlab_pulse_read.md: `UL`, `EX memlab_kult ...`, `GP n`)
runs pulse-and-read tests the PMU's segment ARB cannot: PulseRead, and RampRead, a write-verify
ramp that ends at the first write whose last read crosses a threshold. A 4200A has the library
only if the lab built it: the bench says so (option `kult`), and only then `stops_early`.
"""

from __future__ import annotations

import functools
import math
import re
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Context

from .errors import InstrumentError, InstrumentNotAnswering, LimitError, PulseOutcomeUnknown, ReplyError
from .guard import Grammar, Guard, integer, number
from .interfaces import Levels, Measurement, PulseSource, PulseStep, SourceMeter, Stop, level_pairs
from .limits import Limits
from .signals import signals_deferred
from .visa import VisaInstrument

SMU_CHANNELS = range(1, 9)
PMU_CARDS = range(1, 5)
PMU_CHANNELS = tuple(100 * m + c for m in PMU_CARDS for c in (1, 2))
NO_ERROR_CODE = 0
SEGMENT_MIN_S = 20e-9          # :PMU:SARB:SEQ:TIME minimum and resolution (KXCI manual, as quoted)
SEGMENT_RESOLUTION_S = 10e-9
VALUES_PER_CALL = 128          # values in one :PMU:SARB:SEQ:* command
SEGMENTS_PER_STEP = 4          # rise, top, fall, a gap at 0 V (steps are separate pulses)
MAX_CHECKED_SEGMENTS = 1024    # a test longer than this (loops included) is not expanded to be checked
PMU_CURRENT_RANGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.2, 0.8)

_READING = re.compile(r"^([A-Z])([A-H])([VI])([+-]\d\.\d+E[+-]\d+)$")
_ERROR = re.compile(r"^(.*?)\.?\s*\(\s*([+-]?\d+)\s*\)\s*$")


def kxci_channel(hardware_channel: int) -> int:
    """PMU hardware channel 100*m + c -> KXCI pulse channel 2*(m-1) + c."""
    return 2 * (hardware_channel // 100 - 1) + hardware_channel % 100


def hardware_channel(pulse_channel: int) -> int:
    return 100 * ((pulse_channel + 1) // 2) + (pulse_channel - 1) % 2 + 1


@dataclass(frozen=True)
class Reading:
    """One user-mode reading, e.g. `NAI+2.0000E-06`."""

    status: str    # N normal, C this channel in compliance, T another in compliance, V overflow, X, L
    channel: int
    kind: str      # V or I
    value: float

    @property
    def valid(self) -> bool:
        return self.status in ("N", "C", "T")


def parse_reading(reply: str) -> Reading:
    m = _READING.match(reply.strip())
    if not m:
        raise ReplyError(f"K4200A: not a KXCI reading: {reply.strip()!r}")
    status, letter, kind, value = m.groups()
    return Reading(status, "ABCDEFGH".index(letter) + 1, kind, float(value))


_DIGITS = Context(prec=10, rounding=ROUND_DOWN)


def _num(x: float) -> str:
    """Ten significant digits rounded towards zero (a level at a limit never comes out above it)."""
    shortest = _DIGITS.create_decimal(repr(float(x)))
    return format(shortest.normalize(_DIGITS), "g")


@dataclass(frozen=True)
class SystemReading:
    """One system-mode reading of `DO`, e.g. `N+2.0000E-06` (no channel letter: the name says it)."""

    status: str    # N normal, C this channel in compliance, T another in compliance, V overflow, X, L
    value: float

    @property
    def valid(self) -> bool:
        return self.status in ("N", "C", "T")


_SYS_READING = re.compile(r"^([NLVXCT])([+-]\d\.\d+E[+-]\d+)$")
_BARE_READING = re.compile(r"^[+-]\d\.\d+E[+-]\d+$")
_NAME_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,5}")


def _zeroed(volts: float) -> float:
    """KXCI sets a voltage start or step below 1 mV to 0."""
    return 0.0 if abs(volts) < MIN_VOLTAGE_STEP else volts


def var1_levels(start: float, stop: float, step: float) -> list[float]:
    """The levels of a linear VAR1 voltage sweep as KXCI runs it: int(|stop - start| / step + 1.5)
    points (the manual's count) from start in steps of step (ValueError: not a sweep it runs)."""
    start, step = _zeroed(start), _zeroed(step)
    if start == stop:
        return [start]
    if step == 0 or (stop - start) * step < 0:
        raise ValueError(f"a step of {step:g} V does not go from {start:g} V to {stop:g} V (below 1 mV it is 0)")
    points = int(abs((stop - start) / step) + 1.5)
    if points > VAR1_MAX_POINTS:
        raise ValueError(f"{points} points; a VAR1 sweep has at most {VAR1_MAX_POINTS}")
    return [start + k * step for k in range(points)]


def var2_levels(start: float, step: float, points: int) -> list[float]:
    if not 1 <= points <= VAR2_MAX_POINTS:
        raise ValueError(f"{points} VAR2 points; 1 to {VAR2_MAX_POINTS} are covered")
    start, step = _zeroed(start), _zeroed(step)
    return [start + k * step for k in range(points)]


def _checked(levels, where: str, *args) -> list[float]:
    try:
        return levels(*args)
    except ValueError as exc:
        raise LimitError(f"{where}{exc}") from None


# --- the guard's grammar ------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _split(command: str) -> tuple[str, list[str]]:
    """(command name in upper case, its arguments): a pure function of the text, so a
    set-up the guard sees several times (checked, then sent) is parsed once."""
    text = command.strip()
    if text.startswith(":"):
        head, _, rest = text.partition(" ")
        name = head.upper()
    else:
        m = _NAME.match(text)
        name, rest = (m.group(1).upper(), m.group(2)) if m else ("", "")
    return name, tuple(a.strip() for a in rest.split(",")) if rest.strip() else ()


_NUMBER_TOKEN = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"   # as guard.number accepts
_NUMBER_LIST = re.compile(rf"{_NUMBER_TOKEN}(?:\x00{_NUMBER_TOKEN})*")


@functools.lru_cache(maxsize=4096)
def _numbers(tokens: tuple[str, ...]) -> tuple[float, ...] | None:
    """The tokens as numbers if every one is a decimal number as `guard.number` accepts it
    (one regex over all of them), else None (the caller names the bad one)."""
    if any("\x00" in t for t in tokens) or not _NUMBER_LIST.fullmatch("\x00".join(tokens)):
        return None
    return tuple(float(t) for t in tokens)

@dataclass(frozen=True)
class PmuConfig:
    """What this session set up on the PMU since its `:PMU:INIT` (None: not set)."""

    mode: int
    limits: tuple[tuple[int, float | None], ...] = ()       # pulse channel -> current limit (A)
    arrays: tuple[tuple[tuple[int, int, str], tuple[float, ...]], ...] = ()
    wfm: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] = ()
    trains: tuple[tuple[int, tuple[float, float]], ...] = ()
    times: tuple[tuple[int, tuple[float, float, float, float]], ...] = ()
    burst: int = 1

    def get(self, name: str, key):
        return dict(getattr(self, name)).get(key)

    def put(self, name: str, key, value) -> "PmuConfig":
        return replace(self, **{name: tuple(sorted({**dict(getattr(self, name)), key: value}.items()))})


@dataclass(frozen=True)
class SystemSetup:
    """What this session defined on the system-mode pages since the connect reset: the test
    channels (SMU -> source mode, function), the VAR1 sweep (start, stop, step, compliance),
    the VAR2 steps (start, step, points, compliance) and the constants (SMU -> V, compliance)."""

    channels: tuple[tuple[int, tuple[int, int]], ...] = ()
    var1: tuple[float, float, float, float] | None = None
    var2: tuple[float, float, int, float] | None = None
    constants: tuple[tuple[int, tuple[float, float]], ...] = ()

    def put(self, name: str, key, value) -> "SystemSetup":
        items = {**dict(getattr(self, name)), key: value}
        if value is None:
            del items[key]
        return replace(self, **{name: tuple(sorted(items.items()))})


@dataclass
class KxciState:
    """What this session knows the 4200A holds; None: unknown."""

    levels: dict[int, float | None] = field(default_factory=lambda: dict.fromkeys([*SMU_CHANNELS, *PMU_CHANNELS]))
    compliance: dict[int, float | None] = field(default_factory=lambda: dict.fromkeys(SMU_CHANNELS))
    pmu_on: dict[int, bool | None] = field(default_factory=lambda: dict.fromkeys(PMU_CHANNELS))
    pmu: PmuConfig | None = None
    page: str | None = None               # the KXCI page commands are read on
    system: SystemSetup | None = None     # the system-mode set-up
    test_running: bool | None = None      # a system-mode test may still be running


_QUERIES = frozenset({"*IDN?", "ID", "*OPT?", "SP", ":ERROR:LAST:GET", "TV", "TI", ":PMU:TEST:STATUS?",
                      ":PMU:DATA:COUNT?", ":PMU:DATA:GET", "GP", "GD", "RD", "DO"})
# memlab's own KULT user modules (drivers/kult/memlab_pulse_read.md)
KULT_LIBRARY, KULT_PULSE_READ, KULT_RAMP_READ = "memlab_kult", "PulseRead", "RampRead"
KULT_OUTPUT_PARAM = 11            # PulseRead's Currents: the output array's position in the argument list
KULT_RAMP_OUTPUT_PARAM = 15       # RampRead's Currents
# module -> (arguments, position of its output array)
KULT_SIGNATURES = {KULT_PULSE_READ: (12, KULT_OUTPUT_PARAM), KULT_RAMP_READ: (16, KULT_RAMP_OUTPUT_PARAM)}
KULT_RETURN = {-1: "an argument is out of range", -2: "CurrentsSize is smaller than the reads",
               -3: "too many steps for one run"}
RAMP_LINEAR_TOLERANCE_V = 1e-9    # write levels of a sequence RampRead plays: this close to a straight ramp
_EX = re.compile(r"^\s*EX\s+(\w+)\s+(\w+)\s*\((.*)\)\s*$", re.S)
# settings that source nothing and change no output
# (not RI/RV/RG, whose compliance argument nobody here could check, nor :PMU:LOAD and
# :PMU:RPM:CONFIGURE, which have handlers below)
_SETTINGS = frozenset({"BC", ":ERROR:LAST:CLEAR", "IT", "RS", "EC",
                       ":PMU:SAMPLE:RATE", ":PMU:MEASURE:MODE", ":PMU:SOURCE:RANGE"})
# KXCI pages, and the system-mode settings that source nothing, by the page they belong to
PAGES = ("US", "DE", "SS", "SM", "MD", "UL")
_PAGE_SETTINGS = {**dict.fromkeys(("HT", "DT"), "SS"),
                  **dict.fromkeys(("DM", "LI", "WT", "IN", "NR", "XN", "XT", "YA", "YB"), "SM")}
_SYS_NAME = re.compile(r"'[A-Za-z][A-Za-z0-9_]{0,5}'")
VAR1_MAX_POINTS = 1024           # KXCI manual (VR)
VAR2_MAX_POINTS = 32             # GUESS (the emulator's)
MIN_VOLTAGE_STEP = 1e-3          # KXCI sets a voltage start or step below 1 mV to 0 (manual)
# KXCI raises a lower current compliance to 100 pA (with a preamplifier) or 100 nA (without):
# the larger is what the guard must assume
MIN_SWEEP_COMPLIANCE = 1e-7
STATUS_DATA_READY, STATUS_BUSY = 1, 16
_SARB = {f":PMU:SARB:SEQ:{a}": a for a in ("TIME", "STARTV", "STOPV", "MEAS:TYPE", "MEAS:START", "MEAS:STOP")}
_NAME = re.compile(r"^\s*(\*?[A-Za-z]+\??)(.*)$", re.S)


@dataclass
class _Seg:
    t0: float
    t1: float
    v0: float
    v1: float


class KxciGrammar(Grammar[KxciState]):
    """The KXCI commands memlab needs, checked against the bench limits: every SMU level, the
    spread between any two outputs (a device may sit between any two lines), compliance, and
    every PMU test (levels, spreads at every instant, segment widths, pulse widths and energy
    with the current limit set in this session) are proved within the limits from what this
    session set; returning an output to 0 V is always allowed; anything else is refused."""

    def __init__(self, limits: Limits, line_ratios: dict[int, tuple[float, ...]] | None = None):
        self.limits = limits
        # the fractions of a pulse channel's level that reach crossbar lines (a passive
        # divider between channel and lines: only fractions <= 1); absent: the level itself
        self.line_ratios = {ch: tuple(r) for ch, r in (line_ratios or {}).items()}
        self._proved: dict[tuple, dict[int, float]] = {}

    def unknown_state(self) -> KxciState:
        return KxciState()

    def reset_state(self) -> KxciState:
        """After *RST, the PMU outputs switched off and :PMU:INIT 1 (what `initialize` sends)."""
        s = KxciState(levels=dict.fromkeys([*SMU_CHANNELS, *PMU_CHANNELS], 0.0),
                      pmu_on=dict.fromkeys(PMU_CHANNELS, False), page="US", system=SystemSetup(),
                      test_running=False)
        s.pmu = PmuConfig(mode=1)
        return s

    def copy(self, s: KxciState) -> KxciState:
        return KxciState(dict(s.levels), dict(s.compliance), dict(s.pmu_on), s.pmu, s.page, s.system,
                         s.test_running)

    def commands(self, message: str) -> list[str]:
        return [c for c in message.split(";") if c.strip()]

    def doubt(self, a: KxciState, b: KxciState) -> KxciState:
        def merge(x: dict, y: dict) -> dict:   # most commands change nothing of a dict: compare it whole first
            return dict(x) if x == y else {k: v if v == y[k] else None for k, v in x.items()}
        def same(x, y):
            return x if x is y or x == y else None
        return KxciState(merge(a.levels, b.levels), merge(a.compliance, b.compliance), merge(a.pmu_on, b.pmu_on),
                         same(a.pmu, b.pmu), same(a.page, b.page), same(a.system, b.system),
                         same(a.test_running, b.test_running))

    def apply(self, s: KxciState, command: str, where: str) -> None:
        name, args = _split(command)
        text = command.strip()
        if name == "*RST" and not args:
            # SMUs off at 0 V, user mode, no system-mode set-up (GUESS: *RST also stops a running
            # test); the PMU outputs and set-up are left to :PMU:OUTPUT:STATE and :PMU:INIT
            for ch in SMU_CHANNELS:
                s.levels[ch], s.compliance[ch] = 0.0, None
            s.page, s.system, s.test_running = "US", SystemSetup(), False
            return
        if name in _QUERIES or name in _SETTINGS:
            return
        if name in PAGES:
            return self._page(s, name, args, where)
        if name in _PAGE_SETTINGS:
            return self._on_page(s, _PAGE_SETTINGS[name], name, where)
        if name in _SARB:
            return self._sarb(s, _SARB[name], args, where)
        if name == "EX":
            return self._ex(s, text, where)
        handler = {"DV": self._dv, ":PMU:INIT": self._init, ":PMU:MEASURE:RANGE": self._range,
                   ":PMU:SARB:WFM:SEQ:LIST": self._wfm, ":PMU:PULSE:TRAIN": self._train,
                   ":PMU:PULSE:TIMES": self._times, ":PMU:PULSE:BURST:COUNT": self._burst,
                   ":PMU:OUTPUT:STATE": self._output, ":PMU:ABORT": self._abort,
                   ":PMU:EXECUTE": self._execute, ":PMU:LOAD": self._load,
                   ":PMU:RPM:CONFIGURE": self._rpm, "CH": self._ch, "VR": self._vr, "VP": self._vp,
                   "VC": self._vc, "ME": self._me}.get(name)
        if handler is None:
            raise LimitError(f"{where}{name or text!r} is not covered by the bench limits")
        handler(s, args, where)

    # --- SMUs -------------------------------------------------------------------------------

    def _smu(self, token: str, where: str) -> int:
        ch = integer(token, where)
        if ch not in SMU_CHANNELS:
            raise LimitError(f"{where}SMU {ch} is not a channel 1 to 8")
        return ch

    def _dv(self, s, args, where):
        """DVch (off) or DVch,range,V,Icomp."""
        if len(args) == 1:
            s.levels[self._smu(args[0], where)] = 0.0
            return
        if len(args) != 4:
            raise LimitError(f"{where}DV takes a channel, or a channel, range, level and compliance")
        ch = self._smu(args[0], where)
        integer(args[1], where)
        volts, compliance = number(args[2], where), abs(number(args[3], where))
        self.limits.check_compliance(compliance, where)
        if volts != 0:
            self.limits.check_line_voltage(volts, where)
            self._spread(s, ch, [volts], where)
        s.levels[ch], s.compliance[ch] = volts, compliance

    def _spread(self, s: KxciState, ch: int, volts: list[float], where: str, skip=()) -> None:
        """A device may sit between this output and any other: their difference is bounded.
        The largest difference is between extremes, so only the extremes are compared."""
        others = [(other, level) for other, level in s.levels.items() if other != ch and other not in skip]
        for other, level in others:
            if level is None:
                raise LimitError(f"{where}level of channel {other} unknown: cannot bound the voltage across a device")
        if not others or not volts:
            return
        lo, hi = min(volts), max(volts)
        low, high = min(level for _, level in others), max(level for _, level in others)
        if max(hi - low, high - lo) <= self.limits.max_device_voltage:
            return
        for other, level in others:
            for v in (lo, hi):
                if abs(v - level) > self.limits.max_device_voltage:
                    raise LimitError(f"{where}{v:+.4g} V against {level:+.4g} V on channel {other} exceeds "
                                     f"max_device_voltage {self.limits.max_device_voltage} V across a device")

    # --- system mode ------------------------------------------------------------------------

    def _page(self, s: KxciState, name: str, args, where: str) -> None:
        """A page select (SM may carry its display mode: `SM DM1|DM2`)."""
        if args and not (name == "SM" and len(args) == 1 and re.fullmatch(r"DM\s*[12]", args[0].upper())):
            raise LimitError(f"{where}a page select takes no arguments")
        s.page = name

    def _on_page(self, s: KxciState, page: str, name: str, where: str) -> None:
        """KXCI reads a system-mode command on its own page only: on another, or on a page this
        session cannot tell, it would not be the command checked here."""
        if s.page != page:
            raise LimitError(f"{where}{name} belongs to the {page} page; the instrument is on "
                             f"{s.page or 'a page unknown'} in this session")

    def _ch(self, s, args, where):
        """CHch (out of the test) or CHch,'Vname','Iname',mode,function: voltage sources as VAR1,
        VAR2 or constant, and common (mode 3, constant); not current sources nor VAR1'."""
        self._on_page(s, "DE", "CH", where)
        if not args:
            raise LimitError(f"{where}CH takes a channel")
        ch = self._smu(args[0], where)
        setup = s.system
        if len(args) == 1:
            if setup is not None:
                s.system = setup.put("channels", ch, None)
            return
        if len(args) != 5 or not all(_SYS_NAME.fullmatch(a) for a in args[1:3]):
            raise LimitError(f"{where}CH takes a channel, two names of up to 6 characters in quotes, "
                             f"a source mode and a function")
        mode, function = integer(args[3], where), integer(args[4], where)
        if (mode, function) not in {(1, 1), (1, 2), (1, 3), (3, 3)}:
            raise LimitError(f"{where}source mode {mode} with function {function} is not covered by the bench "
                             f"limits (voltage sources as VAR1, VAR2 or constant, and common, only)")
        if setup is not None:
            if function in (1, 2) and any(f == function for k, (_, f) in setup.channels if k != ch):
                raise LimitError(f"{where}a second {'VAR1' if function == 1 else 'VAR2'} channel is not covered")
            s.system = setup.put("channels", ch, (mode, function))

    def _sweep_compliance(self, value: float, where: str) -> None:
        self.limits.check_compliance(max(abs(value), MIN_SWEEP_COMPLIANCE), where)

    def _vr(self, s, args, where):
        """VR1,start,stop,step,compliance: every level of the linear voltage sweep within the limits."""
        self._on_page(s, "SS", "VR", where)
        if len(args) != 5 or integer(args[0], where) != 1:
            raise LimitError(f"{where}only a linear voltage sweep VR1,start,stop,step,compliance is covered")
        start, stop, step, compliance = (number(a, where) for a in args[1:])
        levels = _checked(var1_levels, where, start, stop, step) + [stop]   # the stop level too, should it end there
        for v in (min(levels), max(levels)):
            self.limits.check_line_voltage(v, where)
        self._sweep_compliance(compliance, where)
        if s.system is not None:
            s.system = replace(s.system, var1=(start, stop, step, compliance))

    def _vp(self, s, args, where):
        """VP start,step,points,compliance[,1]: every VAR2 step within the limits."""
        self._on_page(s, "SS", "VP", where)
        if len(args) not in (4, 5) or (len(args) == 5 and integer(args[4], where) != 1):
            raise LimitError(f"{where}VP takes a start, a step, the points and a compliance (one stepper)")
        start, step, compliance = number(args[0], where), number(args[1], where), number(args[3], where)
        points = integer(args[2], where)
        levels = _checked(var2_levels, where, start, step, points)
        for v in (min(levels), max(levels)):
            self.limits.check_line_voltage(v, where)
        self._sweep_compliance(compliance, where)
        if s.system is not None:
            s.system = replace(s.system, var2=(start, step, points, compliance))

    def _vc(self, s, args, where):
        """VCch,V,compliance: a constant voltage within the limits."""
        self._on_page(s, "SS", "VC", where)
        if len(args) != 3:
            raise LimitError(f"{where}VC takes a channel, a level and a compliance")
        ch, volts, compliance = self._smu(args[0], where), number(args[1], where), number(args[2], where)
        self.limits.check_line_voltage(volts, where)
        self._sweep_compliance(compliance, where)
        if s.system is not None:
            s.system = s.system.put("constants", ch, (volts, abs(compliance)))

    def _me(self, s, args, where):
        """ME4 stops a test (always allowed); ME1 and ME3 run the test the pages describe,
        proved first as a whole (every level of every channel against every other output);
        ME2 repeats it until stopped: not covered."""
        self._on_page(s, "MD", "ME", where)
        mode = integer(args[0], where) if len(args) == 1 else None
        if mode == 4:
            if s.test_running is not False:   # where a stopped test leaves its channels is not known
                for ch in (dict(s.system.channels) if s.system is not None else SMU_CHANNELS):
                    s.levels[ch] = None
            s.test_running = False
            return
        if mode not in (1, 3):
            raise LimitError(f"{where}only ME1 and ME3 (one run) and ME4 (stop) are covered")
        if s.test_running is not False:
            raise LimitError(f"{where}a system-mode test may still be running")
        if s.system is None:
            raise LimitError(f"{where}the system-mode set-up is not known in this session")
        plan = self._test_levels(s.system, where)
        for ch, levels in plan.items():
            self._spread(s, ch, levels, where, skip=plan)   # against the outputs outside the test
        extremes = {ch: (min(levels), max(levels)) for ch, levels in plan.items()}
        channels = list(extremes)
        for i, a in enumerate(channels):   # every VAR1 level meets every VAR2 step and every constant
            for b in channels[i + 1:]:
                worst = max(abs(x - y) for x in extremes[a] for y in extremes[b])
                if worst > self.limits.max_device_voltage:
                    raise LimitError(f"{where}{worst:.4g} V between SMUs {a} and {b} during the sweep exceeds "
                                     f"max_device_voltage {self.limits.max_device_voltage} V")
        for ch in plan:
            s.levels[ch] = None   # somewhere in the sweep until the test has ended
        s.test_running = True

    def _test_levels(self, setup: SystemSetup, where: str) -> dict[int, list[float]]:
        """Every level each test channel takes; refused unless there is one VAR1 sweep and every
        part of the test was set in this session."""
        channels = dict(setup.channels)
        if [f for _, f in channels.values()].count(1) != 1 or setup.var1 is None:
            raise LimitError(f"{where}ME without a VAR1 sweep (CH...,1,1 and VR) set in this session is not covered")
        plan = {}
        for ch, (mode, function) in channels.items():
            if mode == 3:
                plan[ch] = [0.0]
            elif function == 1:
                start, stop, step, _ = setup.var1
                plan[ch] = _checked(var1_levels, where, start, stop, step) + [stop]
            elif function == 2:
                if setup.var2 is None:
                    raise LimitError(f"{where}SMU {ch} is VAR2 but no VP was set in this session")
                plan[ch] = _checked(var2_levels, where, *setup.var2[:3])
            else:
                constant = dict(setup.constants).get(ch)
                if constant is None:
                    raise LimitError(f"{where}SMU {ch} is constant but no VC for it was set in this session")
                plan[ch] = [constant[0]]
            for v in (min(plan[ch]), max(plan[ch])):
                self.limits.check_line_voltage(v, where)
        return plan

    # --- PMU set-up -------------------------------------------------------------------------

    def _pulse_channel(self, token: str, where: str) -> int:
        ch = integer(token, where)
        if hardware_channel(ch) not in PMU_CHANNELS or ch < 1:
            raise LimitError(f"{where}pulse channel {ch} is not 1 to {len(PMU_CHANNELS)}")
        return ch

    def _config(self, s: KxciState, where: str) -> PmuConfig:
        if s.pmu is None:
            raise LimitError(f"{where}the PMU was not initialized (:PMU:INIT) in this session")
        return s.pmu

    def _init(self, s, args, where):
        if len(args) != 1 or integer(args[0], where) not in (0, 1):
            raise LimitError(f"{where}:PMU:INIT takes 0 or 1")
        s.pmu = PmuConfig(mode=int(args[0]))

    def _load(self, s, args, where):
        """The PMU corrects its source for the load it is told: told a low load, it raises its
        internal level so the load sees the programmed one, and a high-impedance device would
        see up to twice that. Only the default (1 Mohm, about open circuit) and above."""
        if len(args) != 2:
            raise LimitError(f"{where}:PMU:LOAD takes a channel and a resistance")
        self._pulse_channel(args[0], where)
        if number(args[1], where) < 1e6:
            raise LimitError(f"{where}a load below 1 Mohm would scale the pulse levels above the programmed "
                             f"ones on a high-impedance device")

    def _rpm(self, s, args, where):
        """Only the PMU path: the SMU path (2) would put an SMU's level on the PMU's line."""
        if len(args) != 2 or not re.fullmatch(r"PMU[1-4]-[12]", args[0].upper()) or integer(args[1], where) != 0:
            raise LimitError(f"{where}only :PMU:RPM:CONFIGURE PMUm-c,0 (the pulse path) is covered")

    def _range(self, s, args, where):
        """:PMU:MEASURE:RANGE ch,type[,range]: the current limit of a fixed or limited range."""
        if len(args) not in (2, 3):
            raise LimitError(f"{where}:PMU:MEASURE:RANGE takes a channel, a type and a range")
        ch, kind = self._pulse_channel(args[0], where), integer(args[1], where)
        limit = number(args[2], where) if len(args) == 3 and kind in (1, 2) else None
        s.pmu = self._config(s, where).put("limits", ch, limit)

    def _sarb(self, s, name, args, where):
        if len(args) < 3:
            raise LimitError(f"{where}segment ARB arrays take a channel, a sequence and values")
        config = self._config(s, where)
        ch, seq = self._pulse_channel(args[0], where), integer(args[1], where)
        values = _numbers(tuple(args[2:]))
        if values is None:
            values = tuple(number(a, where) for a in args[2:])   # raises, naming the bad one
        s.pmu = config.put("arrays", (ch, seq, name), values)

    def _wfm(self, s, args, where):
        if len(args) < 3 or len(args) % 2 == 0:
            raise LimitError(f"{where}a sequence list takes a channel and (sequence, loops) pairs")
        ch = self._pulse_channel(args[0], where)
        pairs = tuple((integer(a, where), integer(b, where)) for a, b in zip(args[1::2], args[2::2]))
        s.pmu = self._config(s, where).put("wfm", ch, pairs)

    def _train(self, s, args, where):
        if len(args) != 3:
            raise LimitError(f"{where}:PMU:PULSE:TRAIN takes a channel, a base and an amplitude")
        ch = self._pulse_channel(args[0], where)
        s.pmu = self._config(s, where).put("trains", ch, (number(args[1], where), number(args[2], where)))

    def _times(self, s, args, where):
        if len(args) != 5:
            raise LimitError(f"{where}:PMU:PULSE:TIMES takes a channel, period, width, rise and fall")
        ch = self._pulse_channel(args[0], where)
        s.pmu = self._config(s, where).put("times", ch, tuple(number(a, where) for a in args[1:]))

    def _burst(self, s, args, where):
        if len(args) != 1:
            raise LimitError(f"{where}:PMU:PULSE:BURST:COUNT takes a count")
        s.pmu = replace(self._config(s, where), burst=integer(args[0], where))

    def _output(self, s, args, where):
        """On, the output waits at 0 V for EXECUTE (every waveform the guard passes starts there)."""
        if len(args) != 2 or integer(args[1], where) not in (0, 1):
            raise LimitError(f"{where}:PMU:OUTPUT:STATE takes a channel and 0 or 1")
        ch = hardware_channel(self._pulse_channel(args[0], where))
        s.levels[ch], s.pmu_on[ch] = 0.0, integer(args[1], where) == 1

    def _abort(self, s, args, where):
        for ch in PMU_CHANNELS:
            s.levels[ch], s.pmu_on[ch] = 0.0, False

    # --- memlab's KULT module -------------------------------------------------------------------

    def _ex(self, s: KxciState, text: str, where: str) -> None:
        """EX memlab_kult PulseRead(...) or RampRead(...): the pulse-and-read test the module plays,
        checked like any PMU test (levels through the divider, spreads, widths, energy at its
        current range); a ramp as a whole, as if it never stopped early."""
        m = _EX.match(text)
        module = m.group(2) if m and m.group(1) == KULT_LIBRARY else None
        if module not in KULT_SIGNATURES:
            raise LimitError(f"{where}only the user modules {KULT_LIBRARY} {' and '.join(KULT_SIGNATURES)} are covered")
        count, output = KULT_SIGNATURES[module]
        a = [x.strip() for x in m.group(3).split(",")]
        if len(a) != count or a[output - 1]:
            raise LimitError(f"{where}{module} takes {count} arguments, the output array (argument {output}) "
                             f"left blank")
        where = f"{where}{module}: "
        drive, sense = self._pulse_channel(a[0], where), self._pulse_channel(a[1], where)
        if drive == sense:
            raise LimitError(f"{where}drive and sense are the same channel {drive}")
        if module == KULT_PULSE_READ:
            steps, i_range = self._pulse_read_steps(a, where)
        else:
            steps, i_range = self._ramp_read_steps(a, where)
        if not any(math.isclose(i_range, r, rel_tol=1e-6) for r in PMU_CURRENT_RANGES):
            raise LimitError(f"{where}IRange {i_range:g} A is not a PMU current range")
        self.limits.check_compliance(i_range, where + "IRange: ")
        plans: dict[int, list[_Seg]] = {hardware_channel(drive): [], hardware_channel(sense): []}
        t = 0.0
        for v_drive, v_sense, width in steps:
            top = math.floor((width - SEGMENT_MIN_S) / SEGMENT_RESOLUTION_S + 1e-6) * SEGMENT_RESOLUTION_S
            if not 0 < width <= self.limits.max_pulse_width or top < SEGMENT_MIN_S:
                raise LimitError(f"{where}a step of {width:.4g} s outside "
                                 f"[{2 * SEGMENT_MIN_S:.3g}, {self.limits.max_pulse_width}] s")
            e = SEGMENT_MIN_S
            for hw, v in zip(plans, (v_drive, v_sense)):
                plans[hw] += [_Seg(t, t + e, 0.0, v), _Seg(t + e, t + e + top, v, v),
                              _Seg(t + e + top, t + 2 * e + top, v, 0.0), _Seg(t + 2 * e + top, t + 3 * e + top, 0.0, 0.0)]
            t += 3 * e + top
        self._check_test(s, plans, i_range, where)
        for hw in plans:   # it ends with both outputs off; it set the card up itself
            s.levels[hw], s.pmu_on[hw] = 0.0, False
        s.pmu = None

    @staticmethod
    def _kult_length(n_steps: int, where: str) -> None:
        if n_steps * SEGMENTS_PER_STEP > MAX_CHECKED_SEGMENTS:
            raise LimitError(f"{where}{n_steps} steps, too long to check")

    def _pulse_read_steps(self, a: list[str], where: str):
        """PulseRead's steps: `Writes` times (the write, `ReadsPerWrite` reads); no write: the reads."""
        w_drive, w_sense, w_width, r_drive, r_width = (number(a[k], where) for k in (2, 3, 4, 5, 6))
        reads, writes, i_range = integer(a[7], where), integer(a[8], where), number(a[9], where)
        integer(a[11], where)
        if reads < 1 or writes < 0:
            raise LimitError(f"{where}at least one read, writes >= 0")
        self._kult_length(max(writes, 1) * (reads + (1 if writes else 0)), where)
        steps = []
        for _ in range(max(writes, 1)):
            steps += [(w_drive, w_sense, w_width)] if writes else []
            steps += [(r_drive, 0.0, r_width)] * reads
        return steps, i_range

    def _ramp_read_steps(self, a: list[str], where: str):
        """RampRead's steps, every write of the ramp (DriveStart + k DriveStep, SenseStart + k
        SenseStep for k = 0 .. Writes - 1) each followed by its reads: all of them, as if the
        stop never came (the threshold decides only how much of this the module plays)."""
        d_start, d_step, s_start, s_step, w_width, r_drive, r_width = (number(a[k], where) for k in range(2, 9))
        reads, writes = integer(a[9], where), integer(a[10], where)
        number(a[11], where)
        if integer(a[12], where) not in (0, 1):
            raise LimitError(f"{where}StopRising is 0 or 1")
        i_range = number(a[13], where)
        integer(a[15], where)
        if reads < 1 or writes < 1:
            raise LimitError(f"{where}at least one write and one read per write")
        self._kult_length(writes * (1 + reads), where)
        steps = []
        for k in range(writes):
            steps.append((d_start + k * d_step, s_start + k * s_step, w_width))
            steps += [(r_drive, 0.0, r_width)] * reads
        return steps, i_range

    # --- a PMU test ---------------------------------------------------------------------------

    def _execute(self, s, args, where):
        if args:
            raise LimitError(f"{where}:PMU:EXECUTE takes no arguments")
        config = self._config(s, where)
        if any(on is None for on in s.pmu_on.values()):
            raise LimitError(f"{where}PMU output states unknown: cannot tell which channels would run")
        running = [ch for ch, on in s.pmu_on.items() if on]
        if not running:
            raise LimitError(f"{where}no PMU output is on: nothing set up to execute")
        # the proof depends on nothing but the set-up, which outputs run and the other levels
        # (the limits are the grammar's own): a test proved before is not proved again
        key = (config, tuple(running), tuple(s.levels.items()))
        ends = self._proved.get(key)
        if ends is None:
            ends = self._prove(s, config, running, where)
            if len(self._proved) >= 256:
                self._proved.clear()
            self._proved[key] = ends
        s.levels.update(ends)

    def _prove(self, s: KxciState, config: PmuConfig, running: list[int], where: str) -> dict[int, float]:
        """Check the test the running outputs would play; their levels at its end."""
        plans, limit = {}, 0.0
        for hw in running:
            ch = kxci_channel(hw)
            ch_limit = config.get("limits", ch)
            if ch_limit is None:
                raise LimitError(f"{where}no fixed or limited current range set on pulse channel {ch} in this "
                                 f"session: the current it may carry is unknown")
            self.limits.check_compliance(ch_limit, where + f"pulse channel {ch} current range: ")
            limit = max(limit, ch_limit)
            plans[hw] = self._plan(config, ch, where)
        self._check_test(s, plans, limit, where)
        return {hw: segments[-1].v1 for hw, segments in plans.items()}

    def _plan(self, config: PmuConfig, ch: int, where: str) -> list[_Seg]:
        segments: list[_Seg] = []
        t = 0.0
        if config.mode == 1:
            wfm = config.get("wfm", ch)
            if not wfm:
                raise LimitError(f"{where}no sequence list loaded on pulse channel {ch} in this session")
            for seq, loops in wfm:
                arrays = [config.get("arrays", (ch, seq, k)) for k in ("TIME", "STARTV", "STOPV")]
                if any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:
                    raise LimitError(f"{where}sequence {seq} of pulse channel {ch} not fully loaded in this session")
                if loops < 1 or len(segments) + loops * len(arrays[0]) > MAX_CHECKED_SEGMENTS:
                    raise LimitError(f"{where}sequence list of pulse channel {ch} too long to check")
                for _ in range(loops):
                    for width, v0, v1 in zip(*arrays):
                        if not 0 < width <= self.limits.max_pulse_width:
                            raise LimitError(f"{where}segment of {width:.4g} s outside (0, "
                                             f"{self.limits.max_pulse_width}] s")
                        segments.append(_Seg(t, t + width, v0, v1))
                        t += width
            return segments
        train, times = config.get("trains", ch), config.get("times", ch)
        if train is None or times is None:
            raise LimitError(f"{where}no pulse train loaded on pulse channel {ch} in this session")
        base, top = train
        period, width, rise, fall = times
        if base != 0:
            raise LimitError(f"{where}a pulse train on a non-zero base holds the devices biased for the "
                             f"whole burst: not covered by the bench limits")
        flat = width - (rise + fall) / 2
        if min(rise, fall, flat) <= 0 or period < rise + flat + fall or width > self.limits.max_pulse_width:
            raise LimitError(f"{where}pulse times {times} not provably within max_pulse_width "
                             f"{self.limits.max_pulse_width} s")
        if not 1 <= config.burst <= MAX_CHECKED_SEGMENTS // 4:
            raise LimitError(f"{where}burst of {config.burst} pulses too long to check")
        for _ in range(config.burst):
            segments += [_Seg(t, t + rise, 0.0, top), _Seg(t + rise, t + rise + flat, top, top),
                         _Seg(t + rise + flat, t + rise + flat + fall, top, 0.0)]
            t += rise + flat + fall
            segments.append(_Seg(t, t - (rise + flat + fall) + period, 0.0, 0.0))
            t = segments[-1].t1
        return segments

    def _lines(self, hw: int, v: float) -> list[float]:
        """The levels `v` on pulse channel `hw` puts on crossbar lines."""
        return [r * v for r in self.line_ratios.get(hw, (1.0,))]

    def _check_test(self, s: KxciState, plans: dict[int, list[_Seg]], limit: float, where: str) -> None:
        lim = self.limits
        for hw, segs in plans.items():
            reached = []   # every level the channel's lines reach (a test repeats a few levels: each once)
            for v in sorted({v for seg in segs for v in (seg.v0, seg.v1)}):
                lim.check_line_voltage(v, where)
                lines = self._lines(hw, v)
                for x in lines:
                    lim.check_device_voltage(x, where + "a level against a line at 0 V: ")
                if max(lines) - min(lines) > lim.max_device_voltage:
                    raise LimitError(f"{where}divider outputs of channel {kxci_channel(hw)} "
                                     f"{max(lines) - min(lines):.4g} V apart exceed max_device_voltage")
                reached += lines
            self._spread(s, hw, reached, where, skip=plans)   # against the SMUs and idle PMU channels
        channels = list(plans)
        starts = {hw: [seg.t0 for seg in plans[hw]] for hw in channels}
        cuts = sorted({0.0, *(t for segs in plans.values() for seg in segs for t in (seg.t0, seg.t1))})

        def at(hw: int, t: float) -> list[float]:
            """The channel's level just before and just after t (a jump has two)."""
            segs = plans[hw]
            if t >= segs[-1].t1:
                return [segs[-1].v1]   # held at its last level while the others run on
            k = bisect_right(starts[hw], t) - 1
            seg = segs[k]
            if seg.t0 == t:
                return [seg.v0] + ([segs[k - 1].v1] if k else [0.0])
            return [seg.v0 + (seg.v1 - seg.v0) * (t - seg.t0) / (seg.t1 - seg.t0)]

        # between running channels, at every instant: the waveforms are piecewise linear, so their
        # difference is largest at a cut, on either side of it
        for t in cuts:
            levels = {hw: [x for v in at(hw, t) for x in self._lines(hw, v)] for hw in channels}
            for i, a in enumerate(channels):
                for b in channels[i + 1:]:
                    worst = max(abs(x - y) for x in levels[a] for y in levels[b])
                    if worst > lim.max_device_voltage:
                        raise LimitError(f"{where}{worst:.4g} V between pulse channels {kxci_channel(a)} and "
                                         f"{kxci_channel(b)} at t = {t:.4g} s exceeds max_device_voltage "
                                         f"{lim.max_device_voltage} V")
        # pulses: runs of time with any channel away from 0 V (ramps count half: full width at
        # half maximum); each within max_pulse_width and, at the current limit, max_pulse_energy
        run_width, run_peak = 0.0, 0.0
        for a, b in zip(cuts, cuts[1:]):
            peak, ramp = 0.0, False
            for hw in channels:
                segs = plans[hw]
                if a >= segs[-1].t1:
                    peak = max(peak, abs(segs[-1].v1))
                    continue
                seg = segs[bisect_right(starts[hw], a) - 1]
                peak = max(peak, abs(seg.v0), abs(seg.v1))
                ramp = ramp or seg.v0 != seg.v1
            if peak > 0:
                run_width += (b - a) / 2 if ramp else b - a
                run_peak = max(run_peak, peak)
                self._pulse(run_peak, run_width, limit, where)
            else:
                run_width, run_peak = 0.0, 0.0

    def _pulse(self, peak: float, width: float, limit: float, where: str) -> None:
        if width > self.limits.max_pulse_width * (1 + 1e-12):
            raise LimitError(f"{where}pulse of {width:.4g} s exceeds max_pulse_width {self.limits.max_pulse_width} s")
        energy = abs(peak) * limit * width
        if energy > self.limits.max_pulse_energy:
            raise LimitError(f"{where}pulse energy bound {energy:.3g} J ({peak:.3g} V x {limit:.3g} A x "
                             f"{width:.3g} s) exceeds max_pulse_energy {self.limits.max_pulse_energy} J")


# --- the driver -----------------------------------------------------------------------------------

class K4200A(VisaInstrument, SourceMeter, PulseSource):
    read_termination = "\0"
    write_termination = "\0"
    error_query = ":ERROR:LAST:GET"
    edge_s = SEGMENT_MIN_S                     # every rise and fall: the shortest segment
    max_steps = VALUES_PER_CALL // SEGMENTS_PER_STEP   # one sequence of at most 128 segments per channel
    max_ramp_steps = MAX_CHECKED_SEGMENTS // SEGMENTS_PER_STEP   # a RampRead the guard expands to check


    def __init__(self, resource: str, *, limits: Limits, name: str = "K4200A",
                 line_ratios: dict[int, tuple[float, ...]] | None = None, kult: bool = False, **visa):
        """`kult`: memlab's KULT library (drivers/kult/memlab_pulse_read.md) is built on this
        4200A, so sequences may end early (RampRead); a real 4200A has it only if the lab built it."""
        if not isinstance(kult, bool):
            raise ValueError(f"{name}: option kult is true or false, not {kult!r}")
        self.stops_early = kult
        self.limits = limits
        self.identity = ""
        self.options: list[str] = []
        self.enabled: set[int] = set()
        self.pulses_sent = 0   # PMU tests that left the host (an unconfirmed one included)
        super().__init__(resource, name=name, grammar=KxciGrammar(limits, line_ratios), **visa)

    # --- replies and errors -------------------------------------------------------------------

    def read(self) -> str:
        return super().read().strip("\r\n\0 ")

    def _parse_error(self, reply: str) -> tuple[int, str]:
        text = reply.strip()
        if text == "ACK":
            return NO_ERROR_CODE, ""
        m = _ERROR.match(text)
        if not m:
            raise ReplyError(f"{self.name}: unexpected reply {text!r} to {self.error_query}")
        return int(m.group(2)), m.group(1)

    def _clear_error_queue(self, limit: int = 1) -> None:
        self._expect_ack(":ERROR:LAST:CLEAR")

    def _expect_ack(self, message: str) -> None:
        reply = self.query(message, retries=1)
        if reply != "ACK":
            raise ReplyError(f"{self.name}: {message!r} answered {reply!r}, not ACK")

    def _failed(self, reply: str, message: str) -> InstrumentError | None:
        """The instrument's error for a reply that is not what `message` should get."""
        code, text = self._parse_error(self.query(self.error_query, retries=1))
        if code == NO_ERROR_CODE:
            return None
        self._clear_error_queue()
        return InstrumentError(self.name, code, text, message)

    # --- connect --------------------------------------------------------------------------------

    def initialize(self) -> None:
        """Clear errors, reset, switch every PMU output off and initialize the PMU for segment
        ARB (the guard then knows the instrument's state), then identify it and its cards."""
        self.drain()
        self._expect_ack(":ERROR:LAST:CLEAR")
        self.options = []
        self.send("*RST")
        self.options = self.read_options()
        off = [f":PMU:OUTPUT:STATE {kxci_channel(ch)},0" for ch in self.pulse_channels()]
        self.send(*off, *([":PMU:INIT 1"] if off else []))
        if not off:   # no PMU: its outputs are off as far as anything can tell
            for ch in PMU_CHANNELS:
                self.guard.state.levels[ch], self.guard.state.pmu_on[ch] = 0.0, False
        else:
            for ch in set(PMU_CHANNELS) - set(self.pulse_channels()):
                self.guard.state.levels[ch], self.guard.state.pmu_on[ch] = 0.0, False
        self.enabled.clear()
        self.identity = self.query("*IDN?", retries=1)
        self.send("US")

    def read_options(self) -> list[str]:
        reply = self.query("*OPT?", retries=1)
        cards = [c.strip() for c in reply.split(",") if c.strip()]
        if not cards or not all(re.fullmatch(r"[A-Z]+\d[A-Z0-9-]*", c) for c in cards):
            raise ReplyError(f"{self.name}: *OPT? answered {reply!r}, not a list of cards")
        return cards

    def source_channels(self) -> list[int]:
        return sorted(int(c[3:]) for c in self.options if re.fullmatch(r"SMU\d", c))

    def pulse_channels(self) -> list[int]:
        return [100 * int(c[3:]) + k for c in self.options if re.fullmatch(r"PMU\d", c) for k in (1, 2)]

    def require_smu(self, channel: int) -> None:
        if channel not in self.source_channels():
            raise ValueError(f"{self.name}: no SMU {channel} (cards: {', '.join(self.options) or 'none'})")

    def enable(self, channels: list[int]) -> None:
        """KXCI has no output switch apart from sourcing: an SMU comes on, at 0 V, with a DV."""
        for ch in channels:
            self.require_smu(ch)
        self.send("US", *(self.dv_command(ch, 0.0) for ch in channels))
        self.enabled.update(channels)

    def disable(self, channels: list[int]) -> None:
        """`DVch` alone: the SMU to 0 V and off."""
        self.send("US", *(f"DV{ch}" for ch in channels))
        self.enabled.difference_update(channels)

    # --- SourceMeter ------------------------------------------------------------------------------

    def dv_command(self, channel: int, volts: float, compliance: float | None = None) -> str:
        compliance = self.limits.compliance_current if compliance is None else compliance
        return f"DV{channel},0,{_num(volts)},{_num(compliance)}"

    def set_voltages(self, levels: Levels) -> None:
        pairs = level_pairs(levels)
        for ch, _ in pairs:
            self.require_smu(ch)
        self.send("US", *(self.dv_command(ch, v) for ch, v in pairs))
        self.enabled.update(ch for ch, _ in pairs)

    def measure_current(self, channel: int, *, levels: Levels | None = None,
                        then: Levels | None = None) -> Measurement:
        """One message: the levels, the spot current, the levels after; one reply (the reading).
        A reading confirms the whole message: a failing command ends the message with an error
        reply instead (see simulator/k4200a.py)."""
        self.require_smu(channel)
        before = [self.dv_command(ch, v) for ch, v in level_pairs(levels or {})]
        after = [self.dv_command(ch, v) for ch, v in level_pairs(then or {})]
        message = ";".join(["US", *before, f"TI{channel}", *after])
        for attempt in range(2):
            try:
                reply = self.query(message)
                break
            except TimeoutError:
                error = self._failed("", message)
                if error is not None:
                    raise error
                if attempt:
                    raise
        try:
            reading = parse_reading(reply)
        except ReplyError:
            error = self._failed(reply, message)
            if error is not None:
                raise error from None
            raise
        self.confirm_last()
        if not reading.valid:
            raise ReplyError(f"{self.name}: SMU {channel} reading has status {reading.status!r} "
                             f"({reading.value:g}), not a valid measurement")
        return Measurement(reading.value, reading.status == "C")

    def check_pulse(self, channel: int, base: float, peak: float, width: float) -> None:
        drive, other, steps = self._pulse_plan(channel, base, peak, width)
        self.check_sequence(drive, other, steps)

    def pulse(self, channel: int, base: float, peak: float, width: float) -> Measurement:
        """A PMU pulse (KXCI user mode has no SMU pulse): one segment-ARB step on `channel`,
        the card's other channel held at 0 V, the current measured on `channel` at the top."""
        drive, other, steps = self._pulse_plan(channel, base, peak, width)
        current = self.run_sequence(drive, other, steps, measure_on=drive)[0]
        limit = self._range_for(drive)
        return Measurement(current, abs(current) >= limit * (1 - 1e-6))

    def _pulse_plan(self, channel: int, base: float, peak: float, width: float):
        if channel not in self.pulse_channels():
            raise ValueError(f"{self.name}: KXCI has no pulsed SMU measurement; pulse a PMU channel "
                             f"({self.pulse_channels() or 'none installed'}), not {channel}")
        if base != 0:
            raise LimitError(f"{self.name}: PMU pulses start and end at 0 V (base {base} V asked)")
        other = channel + 1 if channel % 100 == 1 else channel - 1
        return channel, other, [PulseStep(drive=peak, sense=0.0, width=width, measure=True)]

    # --- PulseSource --------------------------------------------------------------------------------

    def _range_for(self, channel: int) -> float:
        """The largest PMU current range within the bench's compliance current (the guard
        bounds pulse energy with it)."""
        fits = [r for r in PMU_CURRENT_RANGES if r >= self.limits.compliance_current * (1 - 1e-12)]
        below = [r for r in PMU_CURRENT_RANGES if r <= self.limits.compliance_current]
        return below[-1] if below else fits[0]

    def sequence_commands(self, drive: int, sense: int, steps: Sequence[PulseStep], *,
                          measure_on: int | None = None) -> list[str]:
        """Set-up of one segment-ARB test: ranges, one sequence per channel (rise, top, fall per
        step; the top measured on `measure_on`, default `sense`), the lists, the outputs on.
        Rendered once per distinct test (a test is checked before it is run, and reads repeat)."""
        key = (drive, sense, tuple(steps), measure_on, tuple(self.options))
        rendered = self.__dict__.setdefault("_rendered", {})
        if key not in rendered:
            if len(rendered) >= 256:
                rendered.clear()
            rendered[key] = self._render_sequence(drive, sense, steps, measure_on)
        return list(rendered[key])

    def _render_sequence(self, drive: int, sense: int, steps: Sequence[PulseStep],
                         measure_on: int | None) -> tuple[str, ...]:
        for ch in (drive, sense):
            if ch not in self.pulse_channels():
                raise ValueError(f"{self.name}: {ch} is not a PMU channel ({self.pulse_channels()})")
        if drive == sense:
            raise ValueError(f"{self.name}: drive and sense are the same channel {drive}")
        if not 1 <= len(steps) <= self.max_steps:
            raise ValueError(f"{self.name}: {len(steps)} steps; one test takes 1 to {self.max_steps}")
        measure_on = sense if measure_on is None else measure_on
        edge = self.edge_s
        times, levels = [], {drive: ([], []), sense: ([], [])}
        kinds = {drive: [], sense: []}
        stops = {drive: [], sense: []}
        for step in steps:
            top = math.floor((step.width - edge) / SEGMENT_RESOLUTION_S + 1e-6) * SEGMENT_RESOLUTION_S
            if top < SEGMENT_MIN_S:
                raise ValueError(f"{self.name}: a step of {step.width:.3g} s is shorter than its edges "
                                 f"plus the {SEGMENT_MIN_S * 1e9:.0f} ns shortest segment")
            times += [edge, round(top, 12), edge, SEGMENT_MIN_S]
            for ch, v in ((drive, step.drive), (sense, step.sense)):
                start, stop = levels[ch]
                start += [0.0, v, v, 0.0]
                stop += [v, v, 0.0, 0.0]
                measured = step.measure and ch == measure_on
                kinds[ch] += [0, 1 if measured else 0, 0, 0]
                stops[ch] += [0.0, round(top, 12) if measured else 0.0, 0.0, 0.0]
        commands = []
        for ch in (drive, sense):
            p = kxci_channel(ch)
            start, stop = levels[ch]
            commands += [f":PMU:MEASURE:RANGE {p},2,{_num(self._range_for(ch))}",
                         f":PMU:SARB:SEQ:TIME {p},1," + ",".join(_num(t) for t in times),
                         f":PMU:SARB:SEQ:STARTV {p},1," + ",".join(_num(v) for v in start),
                         f":PMU:SARB:SEQ:STOPV {p},1," + ",".join(_num(v) for v in stop),
                         f":PMU:SARB:SEQ:MEAS:TYPE {p},1," + ",".join(str(k) for k in kinds[ch]),
                         f":PMU:SARB:SEQ:MEAS:START {p},1," + ",".join("0" for _ in times),
                         f":PMU:SARB:SEQ:MEAS:STOP {p},1," + ",".join(_num(t) for t in stops[ch]),
                         f":PMU:SARB:WFM:SEQ:LIST {p},1,1",
                         f":PMU:OUTPUT:STATE {p},1"]
        # the card's other channels stay off: nothing but these two runs
        return tuple(commands)

    def _arb_init(self) -> list[str]:
        """`:PMU:INIT 1` where the card may not be in segment ARB with this session's set-up (a
        KULT module sets the card up itself: memlab_pulse_read.md), else nothing."""
        pmu = self.guard.state.pmu
        return [] if pmu is not None and pmu.mode == 1 else [":PMU:INIT 1"]

    def check_sequence(self, drive: int, sense: int, steps: Sequence[PulseStep], *,
                       measure_on: int | None = None, stop: Stop | None = None) -> None:
        if stop is not None:
            self._check_stopping(measure_on, sense)
            return self.check_ramp_read(drive, sense, **self.ramp_plan(steps), stop=stop)
        commands = self.sequence_commands(drive, sense, steps, measure_on=measure_on)
        self.guard.check(";".join([*self._arb_init(), *commands, ":PMU:EXECUTE"]))

    def _check_stopping(self, measure_on: int | None, sense: int) -> None:
        if not self.stops_early:
            raise ValueError(f"{self.name}: a sequence that ends early needs memlab's KULT module "
                             f"(the bench's option kult: true, once the lab has built it)")
        if measure_on not in (None, sense):
            raise ValueError(f"{self.name}: RampRead measures the sense channel only")

    def run_sequence(self, drive: int, sense: int, steps: Sequence[PulseStep], *,
                     measure_on: int | None = None, stop: Stop | None = None) -> list[float]:
        """Set-up (one message, confirmed), EXECUTE (counted as it leaves the host, never
        retried), the status, the data of the measured channel. With `stop` (only where the KULT
        module is built: `stops_early`): the steps as one RampRead (`ramp_plan` says which shapes
        it plays, ValueError for any other), the currents of the reads up to the write whose
        last read met the stop."""
        if stop is not None:
            self._check_stopping(measure_on, sense)
            return self.ramp_read(drive, sense, **self.ramp_plan(steps), stop=stop)
        commands = [*self._arb_init(), *self.sequence_commands(drive, sense, steps, measure_on=measure_on)]
        self.guard.check(";".join([*commands, ":PMU:EXECUTE"]))   # the whole test, before anything is sent
        self.send(*commands)
        self.drain()
        with signals_deferred():
            self._awaiting_reply = True
            self.write(":PMU:EXECUTE")
            self.pulses_sent += 1
        try:
            reply = self.read()
            if reply != "ACK":
                error = self._failed(reply, ":PMU:EXECUTE")
                raise error or ReplyError(f"{self.name}: :PMU:EXECUTE answered {reply!r}")
            self.confirm_last()
            self._wait_idle()
        except (TimeoutError, ReplyError, InstrumentError) as exc:
            raise PulseOutcomeUnknown(f"{self.name}: the PMU test was sent but its completion was not "
                                      f"confirmed ({exc}); it may or may not have run") from exc
        measured = measure_on if measure_on is not None else sense
        wanted = sum(1 for s in steps if s.measure)
        return self._data(kxci_channel(measured), wanted) if wanted else []

    def _wait_idle(self, polls: int = 1000) -> None:
        for _ in range(polls):
            status = self.query(":PMU:TEST:STATUS?", retries=1)
            if status == "0":
                return
            if status != "1":
                raise ReplyError(f"{self.name}: :PMU:TEST:STATUS? answered {status!r}")
        raise ReplyError(f"{self.name}: the PMU test did not end within {polls} polls")

    def _data(self, pulse_channel: int, wanted: int) -> list[float]:
        reply = self.query(f":PMU:DATA:GET {pulse_channel},0,{wanted}", retries=1)
        try:
            points = [p.split(",") for p in reply.split(";") if p.strip()]
            currents = [float(p[1]) for p in points if len(p) == 4]
        except ValueError:
            currents = []
        if len(currents) != wanted or len(points) != wanted:
            error = self._failed(reply, f":PMU:DATA:GET {pulse_channel}")
            raise error or ReplyError(f"{self.name}: expected {wanted} PMU points, got {reply!r}")
        return currents

    # --- memlab's KULT module -------------------------------------------------------------------

    def pulse_read_command(self, drive: int, sense: int, *, write: tuple[float, float, float] | None,
                           read: tuple[float, float], reads: int = 1, writes: int = 1) -> str:
        """`EX memlab_kult PulseRead(...)` for PMU channels `drive`, `sense` (100*m + c): `writes`
        times the write (drive level, sense level, width) then `reads` reads (drive level, width;
        sense at 0 V, its current measured); no write: `reads` reads."""
        for ch in (drive, sense):
            if ch not in self.pulse_channels():
                raise ValueError(f"{self.name}: {ch} is not a PMU channel ({self.pulse_channels()})")
        w_drive, w_sense, w_width = write if write is not None else (0.0, 0.0, read[1])
        writes = writes if write is not None else 0
        n_reads = reads * max(writes, 1)
        args = [str(kxci_channel(drive)), str(kxci_channel(sense)), _num(w_drive), _num(w_sense), _num(w_width),
                _num(read[0]), _num(read[1]), str(reads), str(writes), _num(self._range_for(sense)), "",
                str(n_reads)]
        return f"EX {KULT_LIBRARY} {KULT_PULSE_READ}({','.join(args)})"

    def check_pulse_read(self, drive: int, sense: int, **plan) -> None:
        self.guard.check(self.pulse_read_command(drive, sense, **plan))

    def pulse_read(self, drive: int, sense: int, *, write: tuple[float, float, float] | None,
                   read: tuple[float, float], reads: int = 1, writes: int = 1) -> list[float]:
        """Run memlab's KULT module: the currents of the reads on `sense`, in order. Checked whole
        before anything is sent; sent once (counted as it leaves), never retried."""
        command = self.pulse_read_command(drive, sense, write=write, read=read, reads=reads, writes=writes)
        code = self._run_kult(KULT_PULSE_READ, command)
        if code != 0:
            raise PulseOutcomeUnknown(f"{self.name}: {KULT_PULSE_READ} returned {code}, which it never does; "
                                      f"what it played is not known")
        n_reads = reads * (max(writes, 1) if write is not None else 1)
        return self._kult_output(KULT_PULSE_READ, KULT_OUTPUT_PARAM, n_reads)

    def ramp_read_command(self, drive: int, sense: int, *, start: tuple[float, float], step: tuple[float, float],
                          width: float, read: tuple[float, float], reads: int = 1, writes: int, stop: Stop) -> str:
        """`EX memlab_kult RampRead(...)` for PMU channels `drive`, `sense` (100*m + c): up to
        `writes` writes of `width`, the k-th (from 0) at drive level start[0] + k step[0] and sense
        level start[1] + k step[1], each followed by `reads` reads (drive level, width; sense at
        0 V, its current measured), ending after the first write whose last read's |current| is
        at or above (`stop.rising`) or at or below `stop.current`."""
        for ch in (drive, sense):
            if ch not in self.pulse_channels():
                raise ValueError(f"{self.name}: {ch} is not a PMU channel ({self.pulse_channels()})")
        if reads < 1 or writes < 1:
            raise ValueError(f"{self.name}: {KULT_RAMP_READ} takes at least one write and one read per write")
        if not math.isfinite(stop.current):
            raise ValueError(f"{self.name}: a stop at {stop.current} A")
        args = [str(kxci_channel(drive)), str(kxci_channel(sense)), _num(start[0]), _num(step[0]), _num(start[1]),
                _num(step[1]), _num(width), _num(read[0]), _num(read[1]), str(reads), str(writes),
                _num(abs(stop.current)), "1" if stop.rising else "0", _num(self._range_for(sense)), "",
                str(reads * writes)]
        return f"EX {KULT_LIBRARY} {KULT_RAMP_READ}({','.join(args)})"

    def check_ramp_read(self, drive: int, sense: int, **plan) -> None:
        """Would `ramp_read` pass the guard now (the whole ramp, as if it never stopped)? Nothing is sent."""
        self.guard.check(self.ramp_read_command(drive, sense, **plan))

    def ramp_read(self, drive: int, sense: int, *, start: tuple[float, float], step: tuple[float, float],
                  width: float, read: tuple[float, float], reads: int = 1, writes: int, stop: Stop) -> list[float]:
        """Run memlab's RampRead (see `ramp_read_command`): the currents of every read made, in
        order (`reads` per write applied). The whole ramp is checked before anything is sent;
        sent once (counted as it leaves), never retried."""
        command = self.ramp_read_command(drive, sense, start=start, step=step, width=width, read=read,
                                         reads=reads, writes=writes, stop=stop)
        applied = self._run_kult(KULT_RAMP_READ, command)
        if not 1 <= applied <= writes:
            raise PulseOutcomeUnknown(f"{self.name}: {KULT_RAMP_READ} returned {applied} writes applied of at most "
                                      f"{writes}; what it played is not known")
        return self._kult_output(KULT_RAMP_READ, KULT_RAMP_OUTPUT_PARAM, reads * applied)

    def ramp_plan(self, steps: Sequence[PulseStep]) -> dict:
        """The `ramp_read` arguments (without the stop) that play `steps`: writes (not measured)
        of one width whose drive and sense levels step linearly (within 1e-9 V), each followed by
        the same number of identical reads (measured, sense at 0 V). ValueError for anything
        else: a sequence RampRead does not play (the caller can run it another way)."""
        steps = list(steps)
        writes = [k for k, step in enumerate(steps) if not step.measure]
        per = (writes[1] if len(writes) > 1 else len(steps)) - 1
        if not writes or writes[0] != 0 or per < 1 or writes != list(range(0, len(steps), per + 1)) \
                or len(steps) != len(writes) * (per + 1):
            raise ValueError(f"{self.name}: {KULT_RAMP_READ} plays writes each followed by the same number of "
                             f"reads, starting with a write")
        reads = {step for step in steps if step.measure}
        read = next(iter(reads))
        if len(reads) != 1 or read.sense != 0:
            raise ValueError(f"{self.name}: {KULT_RAMP_READ}'s reads are all alike, the sense channel at 0 V")
        ramp = [steps[k] for k in writes]
        if len({w.width for w in ramp}) != 1:
            raise ValueError(f"{self.name}: {KULT_RAMP_READ}'s writes are all of one width")
        n = len(ramp)
        start = (ramp[0].drive, ramp[0].sense)
        step = tuple((getattr(ramp[-1], a) - getattr(ramp[0], a)) / (n - 1) if n > 1 else 0.0 for a in ("drive", "sense"))
        for k, w in enumerate(ramp):
            if max(abs(w.drive - (start[0] + k * step[0])), abs(w.sense - (start[1] + k * step[1]))) \
                    > RAMP_LINEAR_TOLERANCE_V:
                raise ValueError(f"{self.name}: {KULT_RAMP_READ}'s write levels step by a fixed increment; "
                                 f"write {k} ({w.drive:g} V, {w.sense:g} V) is off the ramp")
        return dict(start=start, step=step, width=ramp[0].width, read=(read.drive, read.width), reads=per, writes=n)

    def _run_kult(self, module: str, command: str) -> int:
        """A KULT module call: checked whole first; `UL` unless the instrument is known to be on
        that page already; the `EX` counted as it leaves and never retried; its return value
        (negative: the module refused its arguments, nothing was applied: InstrumentError)."""
        self.guard.check(command)   # the whole test, before anything is sent
        if self.guard.state.page != "UL":
            self.send("UL")
        self.drain()
        with signals_deferred():
            self._awaiting_reply = True
            self.write(command)
            self.pulses_sent += 1
        try:
            reply = self.read()
            m = re.fullmatch(r"RETURN VALUE\s*=\s*([+-]?\d+)", reply)
            if not m:
                error = self._failed(reply, command)
                raise error or ReplyError(f"{self.name}: {module} answered {reply!r}")
        except (TimeoutError, ReplyError, InstrumentError) as exc:
            raise PulseOutcomeUnknown(f"{self.name}: {module} was sent but its completion was not "
                                      f"confirmed ({exc}); it may or may not have run") from exc
        code = int(m.group(1))
        if code < 0:
            # the module checks every argument before it drives anything; the guard keeps
            # assuming the worst of the outputs all the same (fails closed)
            raise InstrumentError(self.name, code, f"{module}: " + KULT_RETURN.get(code, f"returned {code}"), command)
        self.confirm_last()
        return code

    def _kult_output(self, module: str, param: int, size: int) -> list[float]:
        """`GP param size`: the first `size` values of the module's output array (the form
        clients of real 4200As send; the reply's values are separated by ';')."""
        reply = self.query(f"GP {param} {size}", retries=1)
        m = re.fullmatch(r"PARAM VALUE\s*=\s*(.*)", reply)
        try:
            values = [float(v) for v in m.group(1).split(";")] if m else []
        except ValueError:
            values = []
        if len(values) != size or not all(math.isfinite(v) for v in values):
            error = self._failed(reply, f"GP {param} {size}")
            raise error or ReplyError(f"{self.name}: expected {size} currents from {module}, got {reply!r}")
        return values

    # --- system mode: sweeps ------------------------------------------------------------------------

    sweep_integration = 2      # IT2: 1 PLC (the user-mode default too)
    sweep_poll_s = 0.0         # pause between SP polls while a sweep runs (a real bench: e.g. 0.05 s)
    sweep_max_polls = 100_000

    def sweep_commands(self, channel: int, start: float, stop: float, step: float, compliance: float, *,
                       hold: float = 0.0, delay: float = 0.0) -> tuple[list[str], list[int]]:
        """The system-mode set-up of a linear VAR1 voltage sweep on SMU `channel` (its readings
        named V<ch>, I<ch>), every other SMU that is on held as a constant at its level, the rest
        out of the test; and the test's SMUs (the swept one first)."""
        self.require_smu(channel)
        if 0 < abs(start) < MIN_VOLTAGE_STEP or (start != stop and abs(step) < MIN_VOLTAGE_STEP):
            raise ValueError(f"{self.name}: KXCI sets a start or step below {MIN_VOLTAGE_STEP * 1e3:g} mV to 0 "
                             f"(start {start:g} V, step {step:g} V)")
        step = math.copysign(abs(step), stop - start) if stop != start else abs(step)
        var1_levels(start, stop, step)   # a sweep KXCI runs (ValueError otherwise)
        held = sorted(k for k in self.enabled if k != channel)
        commands = ["DE"]
        for k in self.source_channels():
            if k == channel:
                commands.append(f"CH{k},'V{k}','I{k}',1,1")
            else:
                commands.append(f"CH{k},'V{k}','I{k}',1,3" if k in held else f"CH{k}")
        commands += ["SS", f"VR1,{_num(start)},{_num(stop)},{_num(step)},{_num(compliance)}"]
        for k in held:
            level = self.guard.state.levels.get(k)
            if level is None:
                raise LimitError(f"{self.name}: the level of SMU {k} is unknown: it cannot be held through the sweep")
            commands.append(f"VC{k},{_num(level)},{_num(self._compliance_of(k))}")
        commands += [f"HT {_num(hold)}", f"DT {_num(delay)}", f"IT{self.sweep_integration}", "SM", "DM2",
                     f"LI 'V{channel}','I{channel}'", "MD"]
        return commands, [channel, *held]

    def _compliance_of(self, channel: int) -> float:
        return self.guard.state.compliance.get(channel) or self.limits.compliance_current

    def check_sweep(self, channel: int, start: float, stop: float, step: float, compliance: float, **timing) -> None:
        """Would `sweep_iv` pass the guard now? Nothing is sent."""
        commands, _ = self.sweep_commands(channel, start, stop, step, compliance, **timing)
        self.guard.check(";".join([*commands, "ME1"]))

    def sweep_iv(self, channel: int, start: float, stop: float, step: float, compliance: float, *,
                 hold: float = 0.0, delay: float = 0.0) -> list[tuple[float, float]]:
        """A staircase voltage sweep of SMU `channel` from `start` to `stop` in steps of `step`
        (its sign follows the direction), run by the instrument (system mode): the (voltage,
        current) it measured at every step. `hold` s before the first step, `delay` s before
        each measurement. The whole test is proved before anything is sent; ME1 is counted in
        `pulses_sent` as it leaves and never repeated. Afterwards: user mode, the held SMUs at
        their levels again, the swept one at its level from before (if it was on)."""
        commands, channels = self.sweep_commands(channel, start, stop, step, compliance, hold=hold, delay=delay)
        self.guard.check(";".join([*commands, "ME1"]))   # the whole test, before anything is sent
        points = len(var1_levels(start, stop, math.copysign(abs(step), stop - start) if stop != start else step))
        before = {k: self.guard.state.levels.get(k) for k in channels}
        self.send(*commands)
        self._run_system_test("ME1")
        try:
            volts, amps = self.system_data(f"V{channel}"), self.system_data(f"I{channel}")
        finally:
            self._back_to_user_mode(channels, before)
        if len(volts) != points or len(amps) != points:
            raise ReplyError(f"{self.name}: {len(volts)} voltages and {len(amps)} currents for a sweep of {points} points")
        bad = [r for r in (*volts, *amps) if not r.valid]
        if bad:
            raise ReplyError(f"{self.name}: sweep readings with status {sorted({r.status for r in bad})}, "
                             f"not valid measurements")
        return [(v.value, i.value) for v, i in zip(volts, amps)]

    def _run_system_test(self, trigger: str) -> None:
        """The trigger (counted as it leaves the host, never repeated), its ACK, then SP polled
        until the busy bit clears with data ready."""
        self.drain()
        with signals_deferred():
            self._awaiting_reply = True
            self.write(trigger)
            self.pulses_sent += 1
        try:
            reply = self.read()
            if reply != "ACK":
                error = self._failed(reply, trigger)
                raise error or ReplyError(f"{self.name}: {trigger} answered {reply!r}")
            self.confirm_last()
            self._wait_test()
        except (TimeoutError, ReplyError, InstrumentError, InstrumentNotAnswering) as exc:
            raise PulseOutcomeUnknown(f"{self.name}: the sweep was sent but its end was not confirmed ({exc}); "
                                      f"it may have run in part or whole") from exc

    def _wait_test(self) -> None:
        for _ in range(self.sweep_max_polls):
            reply = self.query("SP", retries=1)
            if not reply.isdigit():
                raise ReplyError(f"{self.name}: SP answered {reply!r}, not a status byte")
            status = int(reply)
            if not status & STATUS_BUSY:
                self.guard.state.test_running = False   # the instrument says so (as initialize seeds the reset state)
                if not status & STATUS_DATA_READY:
                    raise ReplyError(f"{self.name}: the test ended without data (status {status})")
                return
            if self.sweep_poll_s:
                time.sleep(self.sweep_poll_s)
        raise ReplyError(f"{self.name}: the test did not end within {self.sweep_max_polls} polls")

    def _back_to_user_mode(self, channels: list[int], before: dict[int, float | None]) -> None:
        """User mode; the test's SMUs off (where the test left them is not assumed), then the
        ones that were on back at their levels."""
        restore = [self.dv_command(k, level, self._compliance_of(k)) for k, level in before.items()
                   if k in self.enabled and level is not None]
        self.send("US", *(f"DV{k}" for k in channels), *restore)

    def system_data(self, name: str) -> list[SystemReading]:
        """Every reading of `name` from the last system-mode test (`DO`)."""
        if not _NAME_TEXT.fullmatch(name):
            raise ValueError(f"{self.name}: {name!r} is not a KXCI name")
        reply = self.query(f"DO '{name}'", retries=1)
        matches = [_SYS_READING.match(f.strip()) for f in reply.split(",")] if reply else []
        if not matches or not all(matches):
            error = self._failed(reply, f"DO '{name}'")
            raise error or ReplyError(f"{self.name}: DO '{name}' answered {reply!r}, not readings")
        return [SystemReading(m.group(1), float(m.group(2))) for m in matches]

    def read_point(self, name: str, index: int) -> float | None:
        """The `index`-th reading (from 1) of `name` (`RD`); None past the last one."""
        if not _NAME_TEXT.fullmatch(name) or index < 1:
            raise ValueError(f"{self.name}: RD of {name!r} at {index}")
        reply = self.query(f"RD '{name}',{int(index)}", retries=1)
        if reply == "0":
            return None
        if not _BARE_READING.fullmatch(reply):
            error = self._failed(reply, f"RD '{name}',{index}")
            raise error or ReplyError(f"{self.name}: RD '{name}',{index} answered {reply!r}, not a reading")
        return float(reply)

    def read_points(self, name: str) -> list[float]:
        """Every reading of `name`, one RD at a time, as Tektronix's KXCI examples read them."""
        values = []
        while (value := self.read_point(name, len(values) + 1)) is not None:
            values.append(value)
            if len(values) > VAR1_MAX_POINTS * VAR2_MAX_POINTS:
                raise ReplyError(f"{self.name}: RD '{name}' does not end")
        return values

    # --- safe state -------------------------------------------------------------------------------

    def safe_state(self) -> None:
        """A system-mode test stopped, every PMU output off, every SMU to 0 V and off (DVch alone)."""
        self.make_safe(self._safe_state)

    def _safe_state(self) -> None:
        self.drain()
        smus = self.source_channels() or list(SMU_CHANNELS)
        pmus = self.pulse_channels()
        # a system-mode test that may still run is stopped first (it takes nothing else)
        stop = ["MD", "ME4"] if self.guard.state.test_running is not False else []
        try:
            self.send(*stop, *([":PMU:ABORT"] + [f":PMU:OUTPUT:STATE {kxci_channel(ch)},0" for ch in pmus] if pmus else []),
                      "US", *(f"DV{ch}" for ch in smus))
        except InstrumentError:
            # a command the instrument refused: send the rest one by one
            for command in [*stop, *(f":PMU:OUTPUT:STATE {kxci_channel(ch)},0" for ch in pmus), "US",
                            *(f"DV{ch}" for ch in smus)]:
                try:
                    self.send(command)
                except InstrumentError:
                    pass
        self.enabled.clear()

    @classmethod
    def _probe(cls, limits: Limits, line_ratios=None) -> "K4200A":
        """A driver with no connection whose guard holds a freshly connected instrument."""
        guard = Guard(KxciGrammar(limits, line_ratios), "K4200A")
        guard.state = guard.grammar.reset_state()
        probe = object.__new__(cls)
        probe.limits, probe.options, probe.guard, probe.name = limits, ["PMU1"], guard, "K4200A"
        return probe

    @classmethod
    def check_pulse_plan(cls, limits: Limits, base: float, peak: float, width: float) -> None:
        """Would a PMU pulse like this pass on a freshly connected instrument? Nothing is sent."""
        probe = cls._probe(limits)
        drive, other, steps = probe._pulse_plan(101, base, peak, width)
        probe.check_sequence(drive, other, steps, measure_on=drive)

    @classmethod
    def check_sequence_plan(cls, limits: Limits, drive: int, sense: int, steps: Sequence[PulseStep],
                            line_ratios=None, **_options) -> None:
        """Would `run_sequence` pass on a freshly connected instrument? Nothing is sent."""
        cls._probe(limits, line_ratios).check_sequence(drive, sense, steps)

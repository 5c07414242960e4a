"""The Keithley 4200A-SCS's KXCI protocol as memlab's guard knows it: the reply formats, the
channel numbering, the system-mode sweep levels, and `KxciGrammar`, which proves every KXCI
message (user mode, system mode, the 4225-PMU's segment ARB, memlab's KULT modules) safe
before it leaves the host. The driver is drivers/k4200a.py."""

from __future__ import annotations

import functools
import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Context

from .errors import LimitError, ReplyError
from .guard import Grammar, integer, number
from .limits import Limits

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
ERROR_REPLY = re.compile(r"^(.*?)\.?\s*\(\s*([+-]?\d+)\s*\)\s*$")


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


def kxci_number(x: float) -> str:
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


SYSTEM_READING = re.compile(r"^([NLVXCT])([+-]\d\.\d+E[+-]\d+)$")
BARE_READING = re.compile(r"^[+-]\d\.\d+E[+-]\d+$")
NAME_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,5}")


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

    def _sweep_source(self, s, levels: list[float], compliance: float, where: str, **setup) -> None:
        """A sweeping source: its extreme levels and its compliance within the limits, then
        kept in the test set-up (`setup`: the set-up field it fills)."""
        for v in (min(levels), max(levels)):
            self.limits.check_line_voltage(v, where)
        self._sweep_compliance(compliance, where)
        if s.system is not None:
            s.system = replace(s.system, **setup)

    def _vr(self, s, args, where):
        """VR1,start,stop,step,compliance: every level of the linear voltage sweep within the limits."""
        self._on_page(s, "SS", "VR", where)
        if len(args) != 5 or integer(args[0], where) != 1:
            raise LimitError(f"{where}only a linear voltage sweep VR1,start,stop,step,compliance is covered")
        start, stop, step, compliance = (number(a, where) for a in args[1:])
        levels = _checked(var1_levels, where, start, stop, step) + [stop]   # the stop level too, should it end there
        self._sweep_source(s, levels, compliance, where, var1=(start, stop, step, compliance))

    def _vp(self, s, args, where):
        """VP start,step,points,compliance[,1]: every VAR2 step within the limits."""
        self._on_page(s, "SS", "VP", where)
        if len(args) not in (4, 5) or (len(args) == 5 and integer(args[4], where) != 1):
            raise LimitError(f"{where}VP takes a start, a step, the points and a compliance (one stepper)")
        start, step, compliance = number(args[0], where), number(args[1], where), number(args[3], where)
        points = integer(args[2], where)
        levels = _checked(var2_levels, where, start, step, points)
        self._sweep_source(s, levels, compliance, where, var2=(start, step, points, compliance))

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

"""Emulated Keysight B1500A semiconductor parameter analyzer: the FLEX text core.

`B1500ACore.handle(message)` takes one received message (terminator stripped) and
returns the reply lines the instrument would send, in order. The TCP framing lives in
`server.py`; the physics lives behind the `hardware` object (`SmuHardware` below), which
this core drives with the full output state of every SMU slot whenever an output changes.

Facts and where they come from (the manual wins over this summary):

* Keysight/Agilent B1500A/B1505A Programming Guide (Edition 11) and the E5260/E5270
  Programming Guide (the same FLEX command set): FMT ASCII formats (12 digits
  `snnn.nnnEsnn`, 13 digits `snnn.nnnnEsnn`, FMT1/5 `ABC`+12 digits, FMT11/15 `ABC`+13,
  FMT21/25 `EEEFG`+13), the status letters (N, T, C, V, X, ...) and the FMT21 status sums
  (1 A/D overflow, 2 oscillation, 4 another unit in compliance, 8 this unit in
  compliance, ...), overflow data 199.999E+99, channel letters A..J, PT limits (hold 0 to
  655.35 s, width 0.5 ms to 2 s, period 0 = auto or 5 ms to 5 s with
  period >= width + 2 ms (width <= 100 ms) or width + 10 ms), DV (`Icomp` omitted = the
  previous value; 0 A not allowed; the output switch must be on), AIT modes, the initial
  SMU setup (0 V, 100 uA compliance), time stamps (100 us resolution, `snn.nnnn` for
  FMT1 so the timer should be reset every 100 s).
* Real-instrument behaviour seen by client code: `ERRX?` answers exactly
  `+0,"No Error."` when the queue is empty (qcodes compares this string); `*CLS` is not
  a B1500 command and queues error 100; `*RST` does not clear the error queue; `ERR?`
  answers four codes, `0,0,0,0` when empty; `UNT?` answers ten `model,rev` pairs.
* Error codes 100, 102, 103, 120, 121, 122, 123, 124 and their texts are the FLEX family's
  (as listed for the E5260/E5270; the B1500 shares them). The codes marked UNVERIFIED in
  `ERROR_MESSAGES` are this emulator's choice: the B1500 error table was not available.

Choices where the instrument's behaviour is not documented here (each is marked GUESS
in the code): a failing command is not executed and the rest of its ';'-joined message
is skipped; a failing query answers nothing (a client times out, then reads `ERRX?`);
current ranges report overflow above 100 % of full scale; only voltage sources are
emulated (DI and sweeps answer error 100 / 120).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol


class SmuHardware(Protocol):
    """What the SMU outputs are connected to (the simulated bench)."""

    def apply(self, outputs: dict[int, tuple[float, float] | None]) -> None: ...

    def advance(self, seconds: float) -> None: ...

    def measure_current(self, slot: int, integration_s: float) -> float: ...

    def measure_voltage(self, slot: int, integration_s: float) -> float: ...

    def pulse(self, slot: int, base: float, peak: float, width: float, hold: float,
              compliance: float) -> float: ...


# ------------------------------------------------------------------------------ errors

ERROR_MESSAGES: dict[int, str] = {
    100: "Undefined GPIB command.",
    102: "Incorrect numeric data syntax.",
    103: "Incorrect terminator position.",          # wrong number of parameters
    120: "Incorrect parameter value.",
    121: "Channel number must be 1 to 10.",          # FLEX code, text adapted to 10 slots
    122: "Number of channels must be corrected.",
    123: "Compliance must be set correctly.",
    124: "Incorrect range value for this channel.",
    # UNVERIFIED codes and texts (the B1500 error table was not available):
    125: "Specified channel is not installed or is not an SMU.",
    200: "Channel output switch must be ON.",
    201: "Measurement mode must be set by MM before XE.",
    202: "Pulse source must be set by PV for the measurement channel.",
    203: "Sweep source must be set by WV before XE.",
    204: "Sampling source or timing must be set before XE.",
    205: "SPGU channel output switch must be ON.",
    206: "SPGU pulse timing does not fit in the pulse period.",
    207: "SPGU must be in PG mode (SIM 0).",
    208: "Specified channel is not an SPGU channel.",
    # the failure `inject_error` emulates (a module that did not carry out a command)
    300: "Hardware error: the module did not carry out the command.",
}
HARDWARE_ERROR = 300   # UNVERIFIED, as above
# commands that only read (spot measurements force nothing new): never fail on injection
_READ_ONLY = frozenset({"TI", "TV", "TTI", "TTV", "TIV", "TTIV", "TSQ"})
NO_ERROR = '+0,"No Error."'
ERROR_QUEUE_DEPTH = 100  # GUESS: deep enough that nothing real is lost


class FlexError(Exception):
    """A command the instrument refuses; `code` goes to the error queue."""

    def __init__(self, code: int):
        super().__init__(f"{code} {ERROR_MESSAGES[code]}")
        self.code = code


# ------------------------------------------------------------------ modules and ranges

# Measurement/output range index -> full scale (Programming Guide range tables).
CURRENT_RANGES = {8: 1e-12, 9: 10e-12, 10: 100e-12, 11: 1e-9, 12: 10e-9, 13: 100e-9,
                  14: 1e-6, 15: 10e-6, 16: 100e-6, 17: 1e-3, 18: 10e-3, 19: 100e-3, 20: 1.0}
VOLTAGE_RANGES = {2: 0.2, 5: 0.5, 11: 2.0, 20: 2.0, 50: 5.0, 12: 20.0, 200: 20.0, 13: 40.0,
                  400: 40.0, 14: 100.0, 1000: 100.0, 15: 200.0, 2000: 200.0}


@dataclass(frozen=True)
class SmuSpec:
    kind: str
    v_ranges: tuple[int, ...]        # output and measurement voltage ranges (0 = auto)
    i_ranges: tuple[int, ...]        # output and measurement current ranges (0 = auto)
    v_max: float = 100.0
    # (|V| up to, max |Icomp|): B1517A/B1511B data-sheet power envelope, from memory: GUESS
    i_limits: tuple[tuple[float, float], ...] = ((20.0, 0.1), (40.0, 0.05), (100.0, 0.02))

    def i_max(self, volts: float) -> float:
        for v_upto, i_max in self.i_limits:
            if abs(volts) <= v_upto:
                return i_max
        return 0.0


_V_RANGES_HR_MP = (0, 5, 11, 20, 50, 12, 200, 13, 400, 14, 1000)
SMU_MODELS: dict[str, SmuSpec] = {
    "B1517A": SmuSpec("HRSMU", _V_RANGES_HR_MP, (0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)),
    "B1511B": SmuSpec("MPSMU", _V_RANGES_HR_MP, (0, 11, 12, 13, 14, 15, 16, 17, 18, 19)),
    "B1511A": SmuSpec("MPSMU", _V_RANGES_HR_MP, (0, 11, 12, 13, 14, 15, 16, 17, 18, 19)),
}
OTHER_MODELS = {"B1520A": "MFCMU", "B1525A": "SPGU", "B1530A": "WGFMU"}
DEFAULT_MODULES = {1: "B1517A", 2: "B1517A", 3: "B1517A", 4: "B1517A"}
DEFAULT_IDN = "Agilent Technologies,B1500A,0,A.06.03.2019.0826"
CHANNEL_LETTERS = "ABCDEFGHIJ"

# Integration time of one measurement, for the hardware call. Table 4-21: the high-speed
# ADC takes 128 samples per power line cycle; the high-resolution ADC's manual mode is
# N x 80 us (from memory). The auto-mode initial values are set by the instrument and are
# not documented: GUESS 6 high-speed samples (about 1 ms) and 1 PLC for high resolution.
LINE_FREQUENCY_HZ = 50.0
HS_SAMPLE_S = 1.0 / (128 * LINE_FREQUENCY_HZ)
HS_AUTO_INITIAL_SAMPLES = 6
HR_MANUAL_UNIT_S = 80e-6
HR_AUTO_INITIAL_S = 1.0 / LINE_FREQUENCY_HZ

SUPPORTED_FMT = (1, 2, 11, 12, 21, 22)  # 3/4/13/14 binary and 5/15/25 comma-terminated: no
COMPLIANCE_TOLERANCE = 1e-6             # |I| >= Icomp (1 - tol) counts as in compliance


# ----------------------------------------------------------------- argument parsing

_NAME = re.compile(r"(\*?[A-Z]+\??)(.*)", re.S)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(E[+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _split(text: str) -> list[str]:
    text = text.strip()
    return [t.strip() for t in text.split(",")] if text else []


def _count(args: list[str], lo: int, hi: int) -> None:
    if not lo <= len(args) <= hi:
        raise FlexError(103)


def _num(token: str) -> float:
    if not _NUMBER.fullmatch(token.upper()):
        raise FlexError(102)
    return float(token)


def _int(token: str) -> int:
    if not _INTEGER.fullmatch(token):
        raise FlexError(102)
    return int(token)


def _choice(value: int, allowed) -> int:
    if value not in allowed:
        raise FlexError(120)
    return value


def _span(value: float, lo: float, hi: float, code: int = 120) -> float:
    if not lo - 1e-15 <= value <= hi + 1e-15:
        raise FlexError(code)
    return value


def _e(x: float) -> str:
    """A number in *LRN? replies: sign, mantissa, E, signed exponent (no letters but E)."""
    return f"{x:+.4E}"


def _g(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else _e(x)


# ------------------------------------------------------------------------- state

@dataclass
class _Channel:
    """One SMU's settings (initial values: Programming Guide IN / initial settings)."""

    enabled: bool = False
    volts: float = 0.0
    v_range: int = 0
    icomp: float = 100e-6
    polarity: int = 0
    i_range: int = 0              # compliance ranging type as last sent (0 = not given)
    sourced: bool = False         # a DV has set this channel since it was enabled
    ri: int = 0                   # measurement ranges: 0 auto, >0 limited auto, <0 fixed
    rv: int = 0
    adc: int = 0                  # AAD: 0 high speed, 1 high resolution, 2 pulsed
    cmm: int = 0                  # CMM: 0 compliance side, 1 current, 2 voltage, 3 force side
    filter: int = 0
    ssr: int = 0
    rm: tuple[int, int] = (1, 50)
    saved: "_Channel | None" = None   # DZ memory for RZ


@dataclass
class _Pulse:
    v_range: int
    base: float
    peak: float
    icomp: float


@dataclass(frozen=True)
class _Sweep:
    """WV (primary) or WSV (synchronous) staircase sweep source."""

    slot: int
    mode: int                  # 1 linear, 2 log, 3 linear two-way, 4 log two-way (WSV: the primary's)
    v_range: int
    start: float
    stop: float
    steps: int                 # WSV: 0 (it follows the primary)
    icomp: float
    pcomp: float | None = None


@dataclass(frozen=True)
class _SamplingSource:
    """MV ch,range,base,bias,Icomp."""

    v_range: int
    base: float
    bias: float
    icomp: float


@dataclass
class _SpguChannel:
    """One B1525A output (initial values: GUESS where the guide was not available)."""

    enabled: bool = False
    mode: int = 0                      # SPM: 0 DC, 1 source 1, 2 source 2, 3 both (3-level)
    levels: dict = field(default_factory=lambda: {0: (0.0, 0.0), 1: (0.0, 0.0), 2: (0.0, 0.0)})
    timing: dict = field(default_factory=lambda: {1: (0.0, 1e-7, 2e-8, 2e-8), 2: (0.0, 1e-7, 2e-8, 2e-8)})
    load: float = 50.0                 # SER: the load the set voltages are meant for
    switch: tuple = (0, 0, 0.0, 1e-7)  # ODSW state, normal, delay, width
    output: float = 0.0                # set voltage now at the output (SPUPD, SPP)


@dataclass
class _Settings:
    fmt: tuple[int, int] = (1, 0)
    mm: tuple[int, tuple[int, ...]] | None = None
    pt: tuple[float, float, float, float] = (0.0, 1e-3, 10e-3, 0.0)  # hold, width, period, tdelay
    pv: dict[int, _Pulse] = field(default_factory=dict)
    ait: dict[int, tuple[int, float]] = field(
        default_factory=lambda: {0: (0, 1), 1: (0, 1), 2: (0, 1)})
    av: tuple[int, int] = (1, 0)
    az: int = 1
    cm: int = 1
    tm: int = 1
    tsc: int = 0
    pad: int = 0
    wt: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    wm: tuple[int, int] = (2, 1)
    sweep: _Sweep | None = None
    sync: _Sweep | None = None
    mt: tuple[float, float, int, float] = (0.0, 2e-3, 1000, 0.0)   # hold bias, interval, points, hold base
    ml: int = 1
    msc: tuple[int, int] = (1, 1)
    mv: dict[int, _SamplingSource] = field(default_factory=dict)
    sim: int = 0
    spper: float = 1e-6
    sprm: tuple[int, float] = (0, 0.0)


@dataclass
class _Reading:
    slot: int
    kind: str                  # "I", "V" or "T"
    value: float
    exponent: int = 0
    overflow: bool = False
    compliance: bool = False   # this channel reached its compliance
    other: bool = False        # another measured channel did


# ---------------------------------------------------------------------------- core

class B1500ACore:
    """The instrument side of a B1500A speaking FLEX, one message at a time."""

    name = "B1500A"
    read_termination = "\r\n"
    write_termination = "\r\n"

    def __init__(self, hardware: SmuHardware, modules: dict[int, str] | None = None,
                 idn: str | None = None, transaction_s: float = 2e-4, settle_s: float = 1e-4):
        modules = dict(DEFAULT_MODULES if modules is None else modules)
        for slot, model in modules.items():
            if not 1 <= slot <= 10:
                raise ValueError(f"B1500A slot {slot} does not exist (1 to 10)")
            if model not in SMU_MODELS and model not in OTHER_MODELS:
                raise ValueError(f"B1500A module {model!r} in slot {slot} is not emulated")
        self.hardware = hardware
        self.modules = modules
        self.idn = idn or DEFAULT_IDN
        self.transaction_s = transaction_s
        self.settle_s = settle_s
        self.smu_slots = sorted(s for s, m in modules.items() if m in SMU_MODELS)
        self.spgu_channels = [slot * 100 + k for slot, m in sorted(modules.items()) if m == "B1525A"
                              for k in (1, 2)]
        self.clock = 0.0           # seconds of instrument time this core has spent
        self._timer_zero = 0.0     # TSR
        self._errors: list[int] = []
        self._failures = 0         # inject_error: commands still to fail
        self._spgu_touched: set[int] = set()
        self._data: list[str] = []   # the data output buffer of the message being handled
        self._applied: dict[int, tuple[float, float] | None] | None = None
        self._handlers: dict[str, Callable[[list[str]], list[str]]] = {
            "*IDN?": self._idn, "*RST": self._rst, "*OPC?": self._opc, "*STB?": self._stb,
            "*LRN?": self._lrn, "UNT?": self._unt, "ERRX?": self._errx, "ERR?": self._err,
            "CN": self._cn, "CL": self._cl, "DZ": self._dz, "RZ": self._rz, "DV": self._dv,
            "RI": self._ri, "RV": self._rv, "AAD": self._aad, "AIT": self._ait, "AV": self._av,
            "AZ": self._az, "FL": self._fl, "CMM": self._cmm, "SSR": self._ssr, "RM": self._rm,
            "CM": self._cm, "TM": self._tm, "PAD": self._pad, "WT": self._wt, "WM": self._wm,
            "FMT": self._fmt, "MM": self._mm, "PT": self._pt, "PV": self._pv, "XE": self._xe,
            "TI": self._ti, "TV": self._tv, "TTI": self._tti, "TTV": self._ttv,
            "TIV": self._tiv, "TTIV": self._ttiv, "TSC": self._tsc, "TSR": self._tsr,
            "TSQ": self._tsq, "PA": self._pa, "AB": self._nothing, "BC": self._bc,
            "WV": self._wv, "WSV": self._wsv, "MT": self._mt, "MV": self._mv, "ML": self._ml,
            "MSC": self._msc,
            "SIM": self._sim, "SIM?": self._sim_q, "SPPER": self._spper, "SPPER?": self._spper_q,
            "SPRM": self._sprm, "SPRM?": self._sprm_q, "SPV": self._spv, "SPV?": self._spv_q,
            "SPT": self._spt, "SPT?": self._spt_q, "SPM": self._spm, "SPM?": self._spm_q,
            "SER": self._ser, "SER?": self._ser_q, "ODSW": self._odsw, "ODSW?": self._odsw_q,
            "SPUPD": self._spupd, "SRP": self._srp, "SPP": self._spp, "SPST?": self._spst_q,
        }
        self.reset()

    @classmethod
    def emulate(cls, hardware: SmuHardware, options: dict, timing) -> "B1500ACore":
        """The core a bench file's instrument entry describes (options: modules by slot)."""
        modules = {int(k): v for k, v in options.get("modules", {}).items()} or None
        return cls(hardware, modules=modules, transaction_s=timing.transaction_s, settle_s=timing.settle_s)

    # --- public API -------------------------------------------------------------------

    def inject_error(self, count: int = 1) -> None:
        """The next `count` commands that change something (not queries or spot readings)
        fail as a hardware failure would: not carried out, the rest of their message skipped,
        error 300 in the ERRX? queue (UNVERIFIED code, see ERROR_MESSAGES)."""
        self._failures += int(count)

    def handle(self, message: str) -> list[str]:
        """Execute one message; a failing command stops the rest of it (GUESS).

        Replies to queries (and high-speed spot readings) go to the query buffer in order;
        the data of a measurement triggered by XE goes to the data output buffer. The
        guide keeps the two apart ("the returned data is always stored in the query
        buffer"), and clients read `*OPC?` sent after XE before the sweep data (pymeasure's
        published B1500 example does): so the query buffer is read first. On a socket the
        instrument cannot wait for the host to read, so the ordering holds within one
        message; across messages each reply goes out when it is ready (GUESS)."""
        self._pass(self.transaction_s)
        replies: list[str] = []
        self._data = []
        for command in message.strip("\r\n").split(";"):
            command = command.strip()
            if not command:
                continue
            match = _NAME.fullmatch(command.upper())
            handler = self._handlers.get(match.group(1)) if match else None
            try:
                if handler is None:
                    raise FlexError(100)
                name = match.group(1)
                if self._failures and not name.endswith("?") and name not in _READ_ONLY:
                    self._failures -= 1
                    raise FlexError(HARDWARE_ERROR)
                replies.extend(handler(_split(match.group(2))))
            except FlexError as exc:
                self._push_error(exc.code)
                break
        return replies + self._data

    def outputs(self) -> dict[int, tuple[float, float] | None]:
        """Every SMU slot: (volts, |current compliance|) when the output switch is on; every
        SPGU channel: (line volts, the most its 50 ohm output can drive into a short)."""
        out = {s: (c.volts, abs(c.icomp)) if c.enabled else None
               for s, c in self.channels.items()}
        for ch, c in self.spgu.items():
            if c.enabled:
                self._spgu_touched.add(ch)
            if ch in self._spgu_touched:   # the others have never been on: leave them out
                out[ch] = self._spgu_output(c, c.output) if c.enabled else None
        return out

    def reset(self) -> None:
        """Like *RST: all outputs off at 0 V, settings to their initial values."""
        self._set_defaults()
        self._commit(force=True)

    @property
    def timer(self) -> float:
        """The time stamp clock (seconds since the last TSR)."""
        return self.clock - self._timer_zero

    # --- plumbing ---------------------------------------------------------------------

    def _set_defaults(self) -> None:
        self.channels = {s: _Channel() for s in self.smu_slots}
        self.spgu = {ch: _SpguChannel() for ch in self.spgu_channels}
        self._spgu_running: float | None = None   # free run: seconds passed, not yet pulsed
        self.settings = _Settings()
        self._last_pulse_start: float | None = None   # no pulse period to keep after *RST

    def _advance(self, seconds: float) -> None:
        if seconds > 0:
            self.hardware.advance(seconds)
            self.clock += seconds

    def _commit(self, force: bool = False) -> None:
        """Tell the hardware the full output state if it changed."""
        now = self.outputs()
        if force or now != self._applied:
            self.hardware.apply(dict(now))
            self._applied = now

    def _push_error(self, code: int) -> None:
        if len(self._errors) < ERROR_QUEUE_DEPTH:
            self._errors.append(code)

    def _slot(self, token: str) -> int:
        """A channel number (1..10, or 101..1001 for a module's first channel) -> slot."""
        ch = _int(token)
        slot = ch // 100 if ch > 100 and ch % 100 == 1 else ch
        if not 1 <= slot <= 10:
            raise FlexError(121)
        return slot

    def _smu(self, token: str) -> int:
        slot = self._slot(token)
        if slot not in self.channels:
            raise FlexError(125)
        return slot

    def _spec(self, slot: int) -> SmuSpec:
        return SMU_MODELS[self.modules[slot]]

    def _smu_list(self, args: list[str]) -> list[int]:
        """CN/CL/DZ/RZ channel lists: none = every SMU; other installed modules are no-ops."""
        if len(args) > 10:
            raise FlexError(122)
        slots = [self._slot(a) for a in args] if args else list(self.smu_slots)
        for slot in slots:
            if slot not in self.modules:
                raise FlexError(125)
        return [s for s in slots if s in self.channels]

    def _enabled(self, slot: int) -> _Channel:
        channel = self.channels[slot]
        if not channel.enabled:
            raise FlexError(200)
        return channel

    def _range(self, slot: int, token: str, kind: str, signed: bool = True) -> int:
        index = _int(token)
        spec = self._spec(slot)
        allowed = spec.i_ranges if kind == "I" else spec.v_ranges
        if (abs(index) if signed else index) not in allowed:
            raise FlexError(124)
        return index

    # --- identity, status, errors -----------------------------------------------------

    def _idn(self, args):
        _count(args, 0, 0)
        return [self.idn]

    def _opc(self, args):
        _count(args, 0, 0)
        return ["1"]

    def _stb(self, args):
        _count(args, 0, 0)
        return [str(16 + (32 if self._errors else 0))]  # bit 4 set ready, bit 5 error

    def _rst(self, args):
        _count(args, 0, 0)
        self.reset()  # the error queue survives *RST
        return []

    def _unt(self, args):
        _count(args, 0, 1)
        if args:
            _choice(_int(args[0]), (0, 1))  # GUESS: mode 1 (with mainframe) answers the same
        return [";".join(f"{self.modules[s]},0" if s in self.modules else "0,0"
                         for s in range(1, 11))]

    def _errx(self, args):
        _count(args, 0, 1)
        code_only = bool(_choice(_int(args[0]), (0, 1))) if args else False
        if not self._errors:
            return ["+0" if code_only else NO_ERROR]
        code = self._errors.pop(0)
        return [f"+{code}" if code_only else f'+{code},"{ERROR_MESSAGES[code]}"']

    def _err(self, args):
        _count(args, 0, 1)
        n = 1 if args and _choice(_int(args[0]), (0, 1)) == 1 else 4
        codes, self._errors = self._errors[:n], self._errors[n:]
        return [",".join(str(c) for c in codes + [0] * (n - len(codes)))]

    # --- outputs ----------------------------------------------------------------------

    def _spgu_split(self, args: list[str]) -> tuple[list[str], list[int]]:
        """CN/CL lists: SPGU channel numbers apart (none given: every SPGU channel, GUESS)."""
        if not args:
            return args, list(self.spgu_channels)
        if len(args) > 10:
            raise FlexError(122)
        rest, spgu = [], []
        for a in args:
            if _INTEGER.fullmatch(a) and int(a) in self.spgu:
                spgu.append(int(a))
            else:
                rest.append(a)
        return rest, spgu

    def _cn(self, args):
        rest, spgu = self._spgu_split(args)
        slots = self._smu_list(rest) if rest or not args else []
        for slot in slots:
            channel = self.channels[slot]
            if not channel.enabled:
                self.channels[slot] = replace(channel, enabled=True, volts=0.0, sourced=False,
                                              saved=None)
        for ch in spgu:
            if not self.spgu[ch].enabled:   # comes on at 0 V; SPUPD puts out the base (GUESS)
                self.spgu[ch].enabled, self.spgu[ch].output = True, 0.0
        self._commit()
        return []

    def _cl(self, args):
        rest, spgu = self._spgu_split(args)
        slots = self._smu_list(rest) if rest or not args else []
        for slot in slots:
            self.channels[slot] = replace(self.channels[slot], enabled=False, volts=0.0,
                                          sourced=False, saved=None)
        for ch in spgu:
            self.spgu[ch].enabled, self.spgu[ch].output = False, 0.0
        if spgu:
            self._spgu_running = None
        self._commit()
        return []

    def _dz(self, args):
        for slot in self._smu_list(args):
            channel = self.channels[slot]
            if channel.enabled:
                self.channels[slot] = replace(channel, volts=0.0, saved=channel)
        self._commit()
        return []

    def _rz(self, args):
        for slot in self._smu_list(args):
            saved = self.channels[slot].saved
            if saved is not None and self.channels[slot].enabled:
                self.channels[slot] = replace(self.channels[slot], volts=saved.volts,
                                              icomp=saved.icomp, v_range=saved.v_range,
                                              saved=None)
        self._commit()
        return []

    def _dv(self, args):
        """DV ch,range,V[,Icomp[,polarity[,Irange]]]; the output switch must be on."""
        _count(args, 3, 6)
        slot = self._smu(args[0])
        v_range = self._range(slot, args[1], "V", signed=False)
        volts = _num(args[2])
        channel = self._enabled(slot)
        icomp = _num(args[3]) if len(args) > 3 else channel.icomp
        polarity = _choice(_int(args[4]), (0, 1)) if len(args) > 4 else 0
        i_range = self._range(slot, args[5], "I", signed=False) if len(args) > 5 else 0
        self._check_source(slot, volts, icomp)
        self.channels[slot] = replace(channel, volts=volts, v_range=v_range, icomp=icomp,
                                      polarity=polarity, i_range=i_range, sourced=True,
                                      saved=None)
        self._commit()
        self._advance(self.settle_s)
        return []

    def _check_source(self, slot: int, volts: float, icomp: float) -> None:
        spec = self._spec(slot)
        _span(abs(volts), 0.0, spec.v_max)
        if icomp == 0 or abs(icomp) > spec.i_max(volts) * (1 + 1e-12):
            raise FlexError(123)

    # --- measurement set-up (stored; ranges and ADC settings shape the readings) -------

    def _ri(self, args):
        _count(args, 2, 2)
        slot = self._smu(args[0])
        self.channels[slot].ri = self._range(slot, args[1], "I")
        return []

    def _rv(self, args):
        _count(args, 2, 2)
        slot = self._smu(args[0])
        self.channels[slot].rv = self._range(slot, args[1], "V")
        return []

    def _aad(self, args):
        _count(args, 2, 2)
        slot = self._smu(args[0])
        self.channels[slot].adc = _choice(_int(args[1]), (0, 1, 2))
        return []

    def _ait(self, args):
        """AIT type,mode[,N] (Table 4-21 ranges of N)."""
        _count(args, 2, 3)
        adc = _choice(_int(args[0]), (0, 1, 2))
        mode = _choice(_int(args[1]), (0, 1, 2) if adc == 1 else (0, 1, 2, 3))
        n = _num(args[2]) if len(args) > 2 else (2e-6 if mode == 3 else 1)
        if mode == 3:
            _span(n, 2e-6, 20e-3)
        else:
            if not float(n).is_integer():
                raise FlexError(120)
            _span(n, 1, 100 if mode == 2 else (127 if adc == 1 else 1023))
            n = int(n)
        self.settings.ait[adc] = (mode, n)
        return []

    def _av(self, args):
        """AV number[,mode]: 4142B-style averaging of the high-speed ADC (1..1023 samples,
        or -1..-100 power line cycles)."""
        _count(args, 1, 2)
        number = _int(args[0])
        mode = _choice(_int(args[1]), (0, 1)) if len(args) > 1 else 0
        if not (1 <= number <= 1023 or -100 <= number <= -1):
            raise FlexError(120)
        self.settings.av = (number, mode)
        self.settings.ait[0] = (mode, number) if number > 0 else (2, -number)
        return []

    def _az(self, args):
        _count(args, 1, 1)
        self.settings.az = _choice(_int(args[0]), (0, 1))
        return []

    def _fl(self, args):
        _count(args, 1, 11)
        mode = _choice(_int(args[0]), (0, 1))
        for slot in self._smu_list(args[1:]):
            self.channels[slot].filter = mode
        return []

    def _per_channel(self, args, attr: str, allowed) -> list[str]:
        _count(args, 2, 2)
        slot = self._smu(args[0])
        setattr(self.channels[slot], attr, _choice(_int(args[1]), allowed))
        return []

    def _cmm(self, args):
        return self._per_channel(args, "cmm", (0, 1, 2, 3))

    def _ssr(self, args):
        return self._per_channel(args, "ssr", (0, 1))

    def _rm(self, args):
        _count(args, 2, 3)
        slot = self._smu(args[0])
        mode = _choice(_int(args[1]), (1, 2, 3))
        rate = int(_span(_int(args[2]), 11, 100)) if len(args) > 2 else 50
        self.channels[slot].rm = (mode, rate)
        return []

    def _setting(self, args, attr: str, allowed) -> list[str]:
        _count(args, 1, 1)
        setattr(self.settings, attr, _choice(_int(args[0]), allowed))
        return []

    def _cm(self, args):
        return self._setting(args, "cm", (0, 1))

    def _tm(self, args):
        return self._setting(args, "tm", (1, 2, 3, 4))

    def _pad(self, args):
        return self._setting(args, "pad", (0, 1))

    def _tsc(self, args):
        return self._setting(args, "tsc", (0, 1))

    def _wt(self, args):
        _count(args, 2, 5)
        values = [_num(a) for a in args]
        _span(values[0], 0, 655.35)
        for v in values[1:]:
            _span(v, 0, 65.535)
        self.settings.wt = tuple(values + [0.0] * (5 - len(values)))
        return []

    def _wm(self, args):
        _count(args, 1, 2)
        abort = _choice(_int(args[0]), (1, 2))
        post = _choice(_int(args[1]), (1, 2)) if len(args) > 1 else 1
        self.settings.wm = (abort, post)
        return []

    def _fmt(self, args):
        _count(args, 1, 2)
        fmt = _int(args[0])
        if fmt not in SUPPORTED_FMT:
            raise FlexError(120)  # also the valid binary / comma formats: not emulated
        mode = _choice(_int(args[1]), range(11)) if len(args) > 1 else 0
        self.settings.fmt = (fmt, mode)
        return []

    def _mm(self, args):
        """MM 1,ch... (spot), 2,ch... (staircase sweep), 3,ch (pulsed spot), 10,ch... (sampling);
        other modes are not emulated."""
        _count(args, 2, 11)
        mode = _choice(_int(args[0]), (1, 2, 3, 10))
        slots = tuple(self._smu(a) for a in args[1:])
        if mode == 3 and len(slots) != 1:
            raise FlexError(122)
        self.settings.mm = (mode, slots)
        return []

    def _pt(self, args):
        """PT hold,width[,period[,tdelay]]: SMU pulse timing (period 0 = automatic)."""
        _count(args, 2, 4)
        hold, width = _num(args[0]), _num(args[1])
        period = _num(args[2]) if len(args) > 2 else 0.0
        tdelay = _num(args[3]) if len(args) > 3 else 0.0
        _span(hold, 0.0, 655.35)
        _span(width, 0.5e-3, 2.0)
        if period != 0:
            _span(period, 5e-3, 5.0)
            if period < width + (2e-3 if width <= 0.1 else 10e-3) - 1e-12:
                raise FlexError(120)
        _span(tdelay, 0.0, width)
        self.settings.pt = (hold, width, period, tdelay)
        return []

    def _pv(self, args):
        """PV ch,range,base,pulse[,Icomp]: a setting; the pulse is forced at XE."""
        _count(args, 4, 5)
        slot = self._smu(args[0])
        v_range = self._range(slot, args[1], "V", signed=False)
        base, peak = _num(args[2]), _num(args[3])
        icomp = _num(args[4]) if len(args) > 4 else self.channels[slot].icomp
        self._check_source(slot, max(base, peak, key=abs), icomp)
        self.settings.pv[slot] = _Pulse(v_range, base, peak, icomp)
        return []

    # --- staircase sweep set-up (WV, WSV) ------------------------------------------------

    def _sweep_compliance(self, slot: int, args: list[str], index: int, volts: float) -> tuple:
        """Icomp (omitted: the channel's present compliance, GUESS as for DV) and Pcomp."""
        icomp = _num(args[index]) if len(args) > index else self.channels[slot].icomp
        self._check_source(slot, volts, icomp)
        pcomp = _num(args[index + 1]) if len(args) > index + 1 else None
        if pcomp is not None:
            _span(pcomp, 0.001, 2.0)   # MPSMU/HRSMU power compliance range
        return icomp, pcomp

    def _wv(self, args):
        """WV ch,mode,range,start,stop,steps[,Icomp[,Pcomp]]: the primary sweep source."""
        _count(args, 6, 8)
        slot = self._smu(args[0])
        mode = _choice(_int(args[1]), (1, 2, 3, 4))
        v_range = self._range(slot, args[2], "V", signed=False)
        start, stop = _num(args[3]), _num(args[4])
        steps = int(_span(_int(args[5]), 1, 10001))
        if mode in (2, 4) and not (start * stop > 0):
            raise FlexError(120)   # a log sweep needs two non-zero values of one polarity
        icomp, pcomp = self._sweep_compliance(slot, args, 6, max(start, stop, key=abs))
        self.settings.sweep = _Sweep(slot, mode, v_range, start, stop, steps, icomp, pcomp)
        if self.settings.sync is not None and self.settings.sync.slot == slot:
            self.settings.sync = None
        return []

    def _wsv(self, args):
        """WSV ch,range,start,stop[,Icomp[,Pcomp]]: a source stepping with the primary."""
        _count(args, 4, 6)
        slot = self._smu(args[0])
        v_range = self._range(slot, args[1], "V", signed=False)
        start, stop = _num(args[2]), _num(args[3])
        if self.settings.sweep is not None and self.settings.sweep.slot == slot:
            raise FlexError(120)   # GUESS: the primary cannot also be its own synchronous source
        icomp, pcomp = self._sweep_compliance(slot, args, 4, max(start, stop, key=abs))
        self.settings.sync = _Sweep(slot, 0, v_range, start, stop, 0, icomp, pcomp)
        return []

    @staticmethod
    def _sweep_values(mode: int, start: float, stop: float, steps: int) -> list[float]:
        """The output of every step; two-way sweeps come back, the stop step twice (GUESS)."""
        if steps == 1:
            one = [start]
        elif mode in (2, 4):
            ratio = stop / start
            one = [start * ratio ** (k / (steps - 1)) for k in range(steps)]
        else:
            one = [start + (stop - start) * k / (steps - 1) for k in range(steps)]
        return one + one[::-1] if mode in (3, 4) else one

    def _staircase_sweep(self, slots) -> str:
        """Programming guide 2-8: start value for the hold time; per step force, wait the
        delay, measure every MM channel in order, keep the step for the step delay; then
        the WM post value (start after an automatic abort). Trigger delays: no triggers here."""
        sweep, sync = self.settings.sweep, self.settings.sync
        if sweep is None:
            raise FlexError(203)
        sources = [sweep] + ([sync] if sync is not None else [])
        for src in sources:
            self._enabled(src.slot)
        if sync is not None and sweep.mode in (2, 4) and not sync.start * sync.stop > 0:
            raise FlexError(120)
        primary = self._sweep_values(sweep.mode, sweep.start, sweep.stop, sweep.steps)
        secondary = ([None] * len(primary) if sync is None else
                     self._sweep_values(sweep.mode, sync.start, sync.stop, sweep.steps))
        hold, delay, step_delay = self.settings.wt[:3]
        abort, post = self.settings.wm
        kinds = [self._kind(s) for s in slots]

        def force(v1, v2):
            self._set_level(sweep.slot, v1, sweep.icomp, sweep.v_range)
            if sync is not None:
                self._set_level(sync.slot, v2, sync.icomp, sync.v_range)
            self._commit()

        force(primary[0], secondary[0])
        self._advance(hold)
        blocks, aborted = [], False
        for k, (v1, v2) in enumerate(zip(primary, secondary)):
            force(v1, v2)
            self._advance(delay)
            started = self.clock
            stamps, readings = [], []
            for slot, kind in zip(slots, kinds):
                stamps.append(self.timer)
                readings.extend(self._read([(slot, kind, None)]))
            self._flag_compliance(readings)
            self._advance(step_delay - (self.clock - started))
            aborted = abort == 2 and any(r.compliance or r.overflow for r in readings)
            last = aborted or k == len(primary) - 1
            fields = self._fields(stamps, readings)
            if self.settings.fmt[1] == 1:
                fields.append(self._source_field(sweep.slot, v1, last))
            blocks.append(",".join(fields))
            if aborted:
                break
        end = 1 if aborted else post
        force(sweep.start if end == 1 else sweep.stop,
              None if sync is None else (sync.start if end == 1 else sync.stop))
        return ",".join(blocks)

    def _set_level(self, slot: int, volts: float, icomp: float, v_range: int) -> None:
        self.channels[slot] = replace(self.channels[slot], volts=volts, icomp=icomp,
                                      v_range=v_range, sourced=True, saved=None)

    def _source_field(self, slot: int, volts: float, last: bool) -> str:
        """Sweep source output data: status W (first or intermediate step) or E (last).
        FMT 21 puts the letter in the three-character status, right-aligned (GUESS), and
        marks output data with a lower-case type letter."""
        letter = "E" if last else "W"
        fmt = self.settings.fmt[0]
        channel = CHANNEL_LETTERS[slot - 1]
        number = format_number(volts, 0, self._digits13)
        if fmt in (1, 11):
            return f"{letter}{channel}V{number}"
        if fmt == 21:
            return f"{letter:>3}{channel}v{number}"
        return number

    # --- sampling (MT, MV, ML, MSC; MM 10) -------------------------------------------------

    def _mt(self, args):
        """MT hold_bias,interval,points[,hold_base] (a negative hold, allowed for intervals
        below 2 ms, counts as no hold here: GUESS)."""
        _count(args, 3, 4)
        hold_bias, interval = _num(args[0]), _num(args[1])
        points = int(_span(_int(args[2]), 1, 100001))
        hold_base = _num(args[3]) if len(args) > 3 else 0.0
        _span(hold_bias, -0.09, 655.35)
        _span(interval, 1e-4, 65.535)
        _span(hold_base, 0.0, 655.35)
        self.settings.mt = (hold_bias, interval, points, hold_base)
        return []

    def _mv(self, args):
        """MV ch,range,base,bias,Icomp: base during the base hold, then bias while sampling."""
        _count(args, 5, 5)
        slot = self._smu(args[0])
        v_range = self._range(slot, args[1], "V", signed=False)
        base, bias, icomp = _num(args[2]), _num(args[3]), _num(args[4])
        self._check_source(slot, max(base, bias, key=abs), icomp)
        self.settings.mv[slot] = _SamplingSource(v_range, base, bias, icomp)
        return []

    def _ml(self, args):
        return self._setting(args, "ml", (1,))   # log sampling is not emulated

    def _msc(self, args):
        _count(args, 1, 2)
        abort = _choice(_int(args[0]), (1, 2))
        post = _choice(_int(args[1]), (1, 2)) if len(args) > 1 else 1
        self.settings.msc = (abort, post)
        return []

    def _sampling(self, slots) -> str:
        hold_bias, interval, points, hold_base = self.settings.mt
        abort, post = self.settings.msc
        sources = dict(self.settings.mv)
        for slot in sources:
            self._enabled(slot)
        for slot, src in sources.items():
            self._set_level(slot, src.base, src.icomp, src.v_range)
        self._commit()
        self._advance(hold_base)
        for slot, src in sources.items():
            self._set_level(slot, src.bias, src.icomp, src.v_range)
        self._commit()
        self._advance(max(hold_bias, 0.0))
        kinds = [self._kind(s) for s in slots]
        blocks = []
        for _ in range(points):
            started = self.clock
            stamps, readings = [], []
            for slot, kind in zip(slots, kinds):
                stamps.append(self.timer)
                readings.extend(self._read([(slot, kind, None)]))
            self._flag_compliance(readings)
            blocks.append(",".join(self._fields(stamps, readings)))
            if abort == 2 and any(r.compliance or r.overflow for r in readings):
                break
            self._advance(interval - (self.clock - started))
        for slot, src in sources.items():
            self._set_level(slot, src.base if post == 1 else src.bias, src.icomp, src.v_range)
        self._commit()
        return ",".join(blocks)

    # --- SPGU (B1525A) -----------------------------------------------------------------

    def _spgu_ch(self, token: str) -> _SpguChannel:
        ch = _int(token)
        if ch not in self.spgu:
            raise FlexError(208)
        return self.spgu[ch]

    @staticmethod
    def _spgu_output(c: _SpguChannel, volts: float) -> tuple[float, float]:
        """The line level for a set voltage: the SPGU sets its source so that the SER load
        sees the set voltage; a crossbar line is far above 50 ohm, so it sees the open
        voltage V (R + 50) / R (GUESS: the device as an open). The current bound is that
        source into a short through the 50 ohm output."""
        line = volts * (c.load + 50.0) / c.load
        return line, abs(line) / 50.0

    def _spgu_setup(self) -> None:
        if self.settings.sim != 0:
            raise FlexError(207)

    def _sim(self, args):
        _count(args, 1, 1)
        self.settings.sim = _choice(_int(args[0]), (0, 1))
        for c in self.spgu.values():   # "also triggers 0 V output of the SPGU channels that are on"
            c.output = 0.0
        self._commit()
        return []

    def _sim_q(self, args):
        _count(args, 0, 0)
        return [str(self.settings.sim)]

    def _spper(self, args):
        _count(args, 1, 1)
        self.settings.spper = _span(_num(args[0]), 2e-8, 10.0)
        return []

    def _spper_q(self, args):
        _count(args, 0, 0)
        return [_e(self.settings.spper)]

    def _sprm(self, args):
        """SPRM mode[,condition]: 0 free run, 1 count (pulses), 2 duration (s)."""
        _count(args, 1, 2)
        mode = _choice(_int(args[0]), (0, 1, 2))
        if mode == 0:
            self.settings.sprm = (0, 0.0)
            return []
        _count(args, 2, 2)
        condition = _num(args[1])
        if mode == 1:
            if not float(condition).is_integer():
                raise FlexError(120)
            _span(condition, 1, 1_000_000)
        else:
            _span(condition, 1e-6, 31_556_926)
        self.settings.sprm = (mode, condition)
        return []

    def _sprm_q(self, args):
        _count(args, 0, 0)
        mode, condition = self.settings.sprm
        return [f"{mode},{_g(condition)}"]

    def _spv(self, args):
        """SPV ch,src,base[,peak] (src 0: the DC level)."""
        _count(args, 3, 4)
        c = self._spgu_ch(args[0])
        self._spgu_setup()
        src = _choice(_int(args[1]), (0, 1, 2))
        base = _num(args[2])
        peak = _num(args[3]) if len(args) > 3 else base
        for v in (base, peak):
            _span(v, -40.0, 40.0)   # B1525A: +-40 V into an open (GUESS: not checked per load)
        c.levels[src] = (base, peak)
        return []

    def _spv_q(self, args):
        _count(args, 2, 2)
        c = self._spgu_ch(args[0])
        base, peak = c.levels[_choice(_int(args[1]), (0, 1, 2))]
        return [f"{_e(base)},{_e(peak)}"]

    def _spt(self, args):
        """SPT ch,src,delay,width,leading[,trailing]."""
        _count(args, 5, 6)
        c = self._spgu_ch(args[0])
        self._spgu_setup()
        src = _choice(_int(args[1]), (1, 2))
        delay, width, lead = _num(args[2]), _num(args[3]), _num(args[4])
        trail = _num(args[5]) if len(args) > 5 else lead
        _span(delay, 0.0, 10.0)
        _span(width, 1e-8, 10.0)
        for edge in (lead, trail):
            _span(edge, 8e-9, 0.4)
        c.timing[src] = (delay, width, lead, trail)
        return []

    def _spt_q(self, args):
        _count(args, 2, 2)
        c = self._spgu_ch(args[0])
        return [",".join(_e(x) for x in c.timing[_choice(_int(args[1]), (1, 2))])]

    def _spm(self, args):
        _count(args, 2, 2)
        c = self._spgu_ch(args[0])
        self._spgu_setup()
        c.mode = _choice(_int(args[1]), (0, 1, 2, 3))
        return []

    def _spm_q(self, args):
        _count(args, 1, 1)
        return [str(self._spgu_ch(args[0]).mode)]

    def _ser(self, args):
        _count(args, 2, 2)
        c = self._spgu_ch(args[0])
        c.load = _span(_num(args[1]), 0.1, 1e6)
        return []

    def _ser_q(self, args):
        _count(args, 1, 1)
        return [_e(self._spgu_ch(args[0]).load)]

    def _odsw(self, args):
        """ODSW ch,state[,normal[,delay,width]]: the pulse switch (kept; not in the physics)."""
        _count(args, 2, 5)
        c = self._spgu_ch(args[0])
        state = _choice(_int(args[1]), (0, 1))
        normal = _choice(_int(args[2]), (0, 1)) if len(args) > 2 else c.switch[1]
        delay = _num(args[3]) if len(args) > 3 else c.switch[2]
        width = _num(args[4]) if len(args) > 4 else c.switch[3]
        c.switch = (state, normal, delay, width)
        return []

    def _odsw_q(self, args):
        _count(args, 1, 1)
        state, normal, delay, width = self._spgu_ch(args[0]).switch
        return [f"{state},{normal},{_e(delay)},{_e(width)}"]

    @staticmethod
    def _spgu_base(c: _SpguChannel) -> float:
        return c.levels[0][0] if c.mode == 0 else c.levels[2 if c.mode == 2 else 1][0]

    def _spupd(self, args):
        """SPUPD [ch...]: the set-up takes effect; the outputs go to their base (DC) level."""
        channels = [self._spgu_ch(a) for a in args] if args else list(self.spgu.values())
        self._spgu_setup()
        for c in channels:
            if c.enabled:
                c.output = self._spgu_base(c)
        self._commit()
        return []

    def _pulsing(self) -> list[tuple[int, _SpguChannel]]:
        return [(ch, c) for ch, c in self.spgu.items() if c.enabled and c.mode != 0]

    def _srp(self, args):
        """Start the SPGU outputs. Count and duration runs are carried out at once (the
        bench's virtual time passes pulse by pulse); a free run goes on, message by
        message, until SPP."""
        _count(args, 0, 0)
        self._spgu_setup()
        active = self._pulsing()
        if not active:
            raise FlexError(205)
        period = self.settings.spper
        for _, c in active:
            for src in self._sources(c):
                delay, width, lead, trail = c.timing[src]
                if delay + lead + width + trail > period * (1 + 1e-9):
                    raise FlexError(206)
        mode, condition = self.settings.sprm
        if mode == 0:
            self._spgu_running = 0.0   # time owed to the free run, not yet pulsed
            return []
        count = int(condition) if mode == 1 else int(condition // period)
        self._spgu_periods(active, count)
        return []

    @staticmethod
    def _sources(c: _SpguChannel) -> tuple[int, ...]:
        return {1: (1,), 2: (2,), 3: (1, 2)}[c.mode]

    def _spgu_periods(self, active, count: int) -> None:
        """`count` pulse periods on every pulsing channel: piecewise-constant segments
        (a pulse is its width at the peak, its edges counted half each way, GUESS)."""
        period = self.settings.spper
        edges = {0.0, period}
        windows = {}
        for ch, c in active:
            for src in self._sources(c):
                delay, width, lead, trail = c.timing[src]
                start = delay + lead / 2
                windows[(ch, src)] = (start, start + width)
                edges.update((start, start + width))
        times = sorted(t for t in edges if 0 <= t <= period)
        for _ in range(count):
            for ch, c in active:
                for src in self._sources(c):
                    base, peak = c.levels[src]
                    line, bound = self._spgu_output(c, peak)
                    self.hardware.note_pulse(line, windows[(ch, src)][1] - windows[(ch, src)][0],
                                             bound)
            for t0, t1 in zip(times, times[1:]):
                mid = (t0 + t1) / 2
                for ch, c in active:
                    level = self._spgu_base(c)
                    for src in self._sources(c):
                        lo, hi = windows[(ch, src)]
                        if lo <= mid < hi:
                            level += c.levels[src][1] - c.levels[src][0]
                    c.output = level
                self._commit()
                self._advance(t1 - t0)
        for _, c in active:
            c.output = self._spgu_base(c)
        self._commit()

    def _pass(self, seconds: float) -> None:
        """Instrument time between commands; in a free run it passes pulse period by period
        (the remainder at the base level, carried to the next message)."""
        if self._spgu_running is None:
            self._advance(seconds)
            return
        active = self._pulsing()
        if not active:
            self._spgu_running = None
            self._advance(seconds)
            return
        owed = self._spgu_running + seconds
        count = int(owed // self.settings.spper)
        self._spgu_periods(active, count)
        self._spgu_running = owed - count * self.settings.spper
        self._advance(0.0)

    def _spp(self, args):
        _count(args, 0, 0)
        self._spgu_running = None
        for c in self.spgu.values():
            if c.enabled:
                c.output = self._spgu_base(c)
        self._commit()
        return []

    def _spst_q(self, args):
        _count(args, 0, 0)
        return ["1" if self._spgu_running is not None else "0"]

    def _bc(self, args):
        _count(args, 0, 0)
        self._data.clear()
        return []

    # --- measurements -----------------------------------------------------------------

    def _xe(self, args):
        """Runs the measurement MM set; its data goes to the data output buffer."""
        _count(args, 0, 0)
        if self.settings.mm is None:
            raise FlexError(201)
        mode, slots = self.settings.mm
        for slot in slots:
            self._enabled(slot)
        if mode == 3:
            self._data.append(self._pulsed_spot(slots[0]))
        elif mode == 2:
            self._data.append(self._staircase_sweep(slots))
        elif mode == 10:
            self._data.append(self._sampling(slots))
        else:
            self._data.append(self._spot_xe(slots))
        return []

    def _spot_xe(self, slots) -> str:
        kinds = [self._kind(s) for s in slots]
        stamps, readings = [], []
        for slot, kind in zip(slots, kinds):
            stamps.append(self.timer)
            readings.extend(self._read([(slot, kind, None)]))
        self._flag_compliance(readings)
        return ",".join(self._fields(stamps, readings))

    def _kind(self, slot: int) -> str:
        """What a voltage-sourcing SMU measures under CMM (0 compliance side, 3 force side)."""
        return "V" if self.channels[slot].cmm in (2, 3) else "I"

    def _fields(self, stamps, readings) -> list[str]:
        fields = []
        for stamp, reading in zip(stamps, readings):
            if self.settings.tsc:
                fields.append(self._time_field(reading.slot, stamp))
            fields.append(self._field(reading))
        return fields

    def _pulsed_spot(self, slot: int) -> str:
        pulse = self.settings.pv.get(slot)
        if pulse is None:
            raise FlexError(202)
        hold, width, period, _ = self.settings.pt
        if period == 0:
            period = 5e-3 if width <= 3e-3 else width + (2e-3 if width <= 0.1 else 10e-3)
        if self._last_pulse_start is not None:  # keep the pulse period between triggers
            rest = period - (self.clock - self._last_pulse_start)
            self._advance(rest - hold)
        stamp = self.timer
        self._last_pulse_start = self.clock
        current = self.hardware.pulse(slot, pulse.base, pulse.peak, width, hold,
                                      abs(pulse.icomp))
        self.clock += hold + width  # the hardware advanced its own clock
        channel = self.channels[slot]
        self.channels[slot] = replace(channel, volts=pulse.base, icomp=pulse.icomp,
                                      v_range=pulse.v_range, saved=None)
        self._commit()
        reading = self._classify(slot, "I", current, None)
        self._flag_compliance([reading])
        fields = [self._time_field(slot, stamp)] if self.settings.tsc else []
        return ",".join(fields + [self._field(reading)])

    def _spot(self, args, kinds: str, timed: bool) -> list[str]:
        """TI/TV/TIV and their time-stamped forms: ch[,range...], one reply line."""
        _count(args, 1, 1 + len(kinds))
        slot = self._smu(args[0])
        ranges = [self._range(slot, tok, kind) for tok, kind in zip(args[1:], kinds)]
        self._enabled(slot)
        stamp = self.timer
        readings = self._read([(slot, kind, ranges[i] if i < len(ranges) else None)
                               for i, kind in enumerate(kinds)])
        self._flag_compliance(readings)
        fields = [self._time_field(slot, stamp)] if timed else []
        return [",".join(fields + [self._field(r) for r in readings])]

    def _ti(self, args):
        return self._spot(args, "I", timed=False)

    def _tv(self, args):
        return self._spot(args, "V", timed=False)

    def _tti(self, args):
        return self._spot(args, "I", timed=True)

    def _ttv(self, args):
        return self._spot(args, "V", timed=True)

    def _tiv(self, args):
        return self._spot(args, "IV", timed=False)

    def _ttiv(self, args):
        return self._spot(args, "IV", timed=True)

    def _tsr(self, args):
        _count(args, 0, 1)
        if args:
            self._smu(args[0])
        self._timer_zero = self.clock
        return []

    def _tsq(self, args):
        _count(args, 0, 0)
        return [self._time_field(None, self.timer)]

    def _pa(self, args):
        _count(args, 0, 1)
        wait = _span(_num(args[0]), -99.9999, 99.9999) if args else -1.0
        self._advance(wait)  # a negative wait (pause until a TM event) passes no time here
        return []

    def _nothing(self, args):
        _count(args, 0, 0)
        return []

    def _integration_s(self, slot: int) -> float:
        adc = self.channels[slot].adc
        mode, n = self.settings.ait[adc]
        if adc == 1:
            return {0: n * HR_AUTO_INITIAL_S, 1: n * HR_MANUAL_UNIT_S}.get(
                mode, n / LINE_FREQUENCY_HZ)
        return {0: n * HS_AUTO_INITIAL_SAMPLES * HS_SAMPLE_S, 1: n * HS_SAMPLE_S,
                2: n / LINE_FREQUENCY_HZ}.get(mode, n)

    def _read(self, requests: list[tuple[int, str, int | None]]) -> list[_Reading]:
        """Measure; the hardware's measure_* advances its own clock by the integration."""
        readings = []
        for slot, kind, range_override in requests:
            integration = self._integration_s(slot)
            if kind == "I":
                value = self.hardware.measure_current(slot, integration)
            else:
                value = self.hardware.measure_voltage(slot, integration)
            self.clock += integration
            readings.append(self._classify(slot, kind, value, range_override))
        return readings

    def _classify(self, slot: int, kind: str, value: float, range_override: int | None):
        """Compliance, measurement range (hence exponent) and overflow of one value."""
        channel = self.channels[slot]
        reading = _Reading(slot, kind, float(value))
        if kind == "I" and abs(value) >= abs(channel.icomp) * (1 - COMPLIANCE_TOLERANCE):
            reading.compliance = True
            reading.value = math.copysign(abs(channel.icomp), value)
        spec = self._spec(slot)
        setting = range_override if range_override is not None else (
            channel.ri if kind == "I" else channel.rv)
        table = CURRENT_RANGES if kind == "I" else VOLTAGE_RANGES
        scales = sorted({table[i] for i in (spec.i_ranges if kind == "I" else spec.v_ranges)
                         if i})
        if setting < 0:
            scales = [table[-setting]]
        elif setting > 0:
            scales = [s for s in scales if s >= table[setting]]
        magnitude = abs(reading.value)
        scale = next((s for s in scales if magnitude <= s * (1 + 1e-9)), None)
        if scale is None or not math.isfinite(reading.value):
            reading.overflow = True  # GUESS: above 100 % of the range's full scale
        elif kind == "I":
            reading.exponent = 3 * math.floor(round(math.log10(scale), 6) / 3)
        return reading

    @staticmethod
    def _flag_compliance(readings: list[_Reading]) -> None:
        in_compliance = {r.slot for r in readings if r.compliance}
        for r in readings:
            r.compliance = r.slot in in_compliance
            r.other = bool(in_compliance - {r.slot})

    # --- output formatting ------------------------------------------------------------

    @property
    def _digits13(self) -> bool:
        return self.settings.fmt[0] >= 11

    def _field(self, r: _Reading) -> str:
        if r.overflow:
            number = "+199.9990E+99" if self._digits13 else "+199.999E+99"
        else:
            number = format_number(r.value, r.exponent, self._digits13)
        letter = "V" if r.overflow else "C" if r.compliance else "T" if r.other else "N"
        code = 1 * r.overflow + 8 * r.compliance + 4 * r.other
        return self._header(letter, code, r.slot, r.kind) + number

    def _time_field(self, slot: int | None, seconds: float) -> str:
        return self._header("N", 0, slot, "T") + format_time(seconds, self._digits13)

    def _header(self, letter: str, code: int, slot: int | None, kind: str) -> str:
        fmt = self.settings.fmt[0]
        channel = "Z" if slot is None else CHANNEL_LETTERS[slot - 1]
        if fmt in (1, 11):
            return f"{letter}{channel}{kind}"
        if fmt == 21:
            return f"{code:03d}{channel}{kind}"
        return ""  # FMT 2, 12, 22: data only

    # --- *LRN? ------------------------------------------------------------------------

    def _lrn(self, args):
        _count(args, 1, 1)
        kind = _int(args[0])
        if 1 <= kind <= 10:
            return [self._lrn_channel(kind)]
        groups = {0: self._lrn_switches, 30: self._lrn_filters, 31: self._lrn_measurement,
                  32: self._lrn_ranges, 33: self._lrn_sweep, 34: self._lrn_pulse,
                  46: self._lrn_cmm, 53: self._lrn_ssr, 54: self._lrn_rm,
                  47: self._lrn_sampling, 55: self._lrn_aad, 56: self._lrn_adc,
                  60: self._lrn_tsc, 110: self._lrn_pad}
        if kind not in groups:
            raise FlexError(120)
        return [groups[kind]()]

    def _lrn_channel(self, slot: int) -> str:
        if slot not in self.channels:
            raise FlexError(125)
        c = self.channels[slot]
        if not c.enabled:
            return f"CL{slot}"
        text = f"DV{slot},{c.v_range},{_e(c.volts)},{_e(c.icomp)},{c.polarity}"
        return text + (f",{c.i_range}" if c.i_range else "")

    def _lrn_switches(self) -> str:
        on = [str(s) for s, c in self.channels.items() if c.enabled]
        on += [str(ch) for ch, c in self.spgu.items() if c.enabled]   # GUESS: SPGU channels too
        return f"CN{','.join(on)}" if on else "CL"

    def _lrn_filters(self) -> str:
        parts = []
        for mode in (0, 1):
            slots = [str(s) for s, c in self.channels.items() if c.filter == mode]
            if slots:
                parts.append(f"FL{mode},{','.join(slots)}")
        return ";".join(parts)

    def _lrn_measurement(self) -> str:
        s = self.settings
        parts = [f"TM{s.tm}", f"AV{s.av[0]},{s.av[1]}", f"CM{s.cm}",
                 f"FMT{s.fmt[0]},{s.fmt[1]}"]
        if s.mm is not None:
            parts.append(f"MM{s.mm[0]},{','.join(str(x) for x in s.mm[1])}")
        return ";".join(parts)

    def _lrn_ranges(self) -> str:
        return ";".join(f"RI{s},{c.ri};RV{s},{c.rv}" for s, c in self.channels.items())

    def _lrn_sweep(self) -> str:
        """WM, WT, then the sweep sources, WV last (GUESS: this order, which qcodes' parser of
        the real reply needs; Icomp always listed)."""
        s = self.settings
        parts = [f"WM{s.wm[0]},{s.wm[1]}", f"WT{','.join(_g(x) for x in s.wt)}"]
        for name, w in (("WSV", s.sync), ("WV", s.sweep)):
            if w is None:
                continue
            head = f"{w.slot},{w.mode}," if name == "WV" else f"{w.slot},"
            tail = f",{w.steps}" if name == "WV" else ""
            text = f"{name}{head}{w.v_range},{_e(w.start)},{_e(w.stop)}{tail},{_e(w.icomp)}"
            parts.append(text + (f",{_e(w.pcomp)}" if w.pcomp is not None else ""))
        return ";".join(parts)

    def _lrn_sampling(self) -> str:
        s = self.settings
        hold_bias, interval, points, hold_base = s.mt
        parts = [f"MT{_g(hold_bias)},{_g(interval)},{points},{_g(hold_base)}", f"ML{s.ml}",
                 f"MSC{s.msc[0]},{s.msc[1]}"]
        for slot, m in sorted(s.mv.items()):
            parts.append(f"MV{slot},{m.v_range},{_e(m.base)},{_e(m.bias)},{_e(m.icomp)}")
        return ";".join(parts)

    def _lrn_pulse(self) -> str:
        parts = ["PT" + ",".join(_g(x) for x in self.settings.pt)]
        for slot, p in sorted(self.settings.pv.items()):
            parts.append(f"PV{slot},{p.v_range},{_e(p.base)},{_e(p.peak)},{_e(p.icomp)}")
        return ";".join(parts)

    def _lrn_cmm(self) -> str:
        return ";".join(f"CMM{s},{c.cmm}" for s, c in self.channels.items())

    def _lrn_ssr(self) -> str:
        return ";".join(f"SSR{s},{c.ssr}" for s, c in self.channels.items())

    def _lrn_rm(self) -> str:
        return ";".join(f"RM{s},{c.rm[0]},{c.rm[1]}" for s, c in self.channels.items())

    def _lrn_aad(self) -> str:
        return ";".join(f"AAD{s},{c.adc}" for s, c in self.channels.items())

    def _lrn_adc(self) -> str:
        ait = ";".join(f"AIT{t},{m},{_g(n)}" for t, (m, n) in sorted(self.settings.ait.items()))
        return f"{ait};AZ{self.settings.az}"

    def _lrn_tsc(self) -> str:
        return f"TSC{self.settings.tsc}"

    def _lrn_pad(self) -> str:
        return f"PAD{self.settings.pad}"


# --------------------------------------------------------------------- number formats

def format_number(value: float, exponent: int, digits13: bool = False) -> str:
    """`snnn.nnnEsnn` (12 digits) or `snnn.nnnnEsnn` (13) with at least `exponent`."""
    decimals = 4 if digits13 else 3
    mantissa = value / 10.0 ** exponent
    while round(abs(mantissa), decimals) >= 1000:
        exponent += 3
        mantissa /= 1000
    sign = "-" if mantissa < 0 and round(abs(mantissa), decimals) > 0 else "+"
    return f"{sign}{abs(mantissa):0{4 + decimals}.{decimals}f}E{exponent:+03d}"


def format_time(seconds: float, digits13: bool = False) -> str:
    """Time data, 100 us resolution: `+snn.nnnnE+00` below 100 s with 12 digits,
    `snnn.nnnnE+00` below 1000 s with 13 digits; coarser beyond."""
    seconds = max(0.0, seconds)
    if digits13 and round(seconds, 4) < 1000:
        return f"+{seconds:08.4f}E+00"
    if not digits13 and round(seconds, 4) < 100:
        return f"+{seconds:07.4f}E+00"
    return format_number(seconds, 0, digits13)

"""Emulated Keithley 4200A-SCS parameter analyzer speaking KXCI on a LAN socket: the text core.

`K4200ACore.handle(message)` takes one received message (its terminator stripped) and returns
the one reply line the instrument sends for it; `server.py` adds the line ending and the NUL.
The physics lives behind `hardware` (the bench's `_SourceHardware`): SMU k drives hardware
channel k, channel c of PMU card m drives hardware channel 100*m + c.

Facts and where they come from:

* KXCI on LAN (4200A-SCS KXCI programming manual as quoted by Tektronix's KXCI examples and
  by client code): every message gets exactly one reply, `ACK` for setters (also for a
  `;`-compound message of setters); the line ending is configurable in KCon (none, LF, CR,
  CR LF) and a NUL follows it on LAN (pyvisa issue 772, pyvisa-py 393/394). Messages end at
  LF, CR or NUL (Tektronix's examples write NUL, others LF).
* `*IDN?` `KEITHLEY INSTRUMENTS,KI4200A,<serial>,V<version>`, `ID` `KI4200A V<version>`,
  `*OPT?` the cards by name (`SMU1,SMU2,SMU3,SMU4,PMU1`), `SP` the status byte in decimal
  (1 data ready, 2 syntax error, 16 busy, 64 service request), `BC` clears the buffer and
  the data-ready bit.
* User mode (`US`): `DVch,range,V,Icomp`, `DIch,range,I,Vcomp`, `DVch`/`DIch` alone turn
  the SMU off (pymeasure's `disable`), `TVch`/`TIch` answer `XYZ+N.NNNNE+NN`: X status (N
  normal, C this channel in compliance, T another channel in compliance, V overflow, X
  oscillation, L interval too short), Y the channel letter (A..H for SMU1..8), Z V or I.
  `RIch,range,comp`, `RVch,range,comp`, `RGch,range`, `IT1..3`, `RS3..7`, `EC0|1`.
* 4225-PMU (`:PMU:` commands, Tektronix KXCI segment-ARB examples and client code citing
  the KXCI manual 4200A-KXCI-907-01 section 7): `:PMU:INIT 0|1` (pulse or segment ARB; clears
  the data and the sequences), `:PMU:RPM:CONFIGURE PMUm-c,mode`, `:PMU:MEASURE:RANGE
  ch,type,range` (type 0 auto, 1 limited, 2 fixed), `:PMU:SOURCE:RANGE ch,10|40`,
  `:PMU:LOAD ch,ohms` (1 to 1e7), `:PMU:SAMPLE:RATE` (1e3 to 200e6), `:PMU:SARB:SEQ:TIME|
  STARTV|STOPV|MEAS:TYPE|MEAS:START|MEAS:STOP ch,seq,v1,...` (at most 128 values per call;
  segments at least 20 ns, 10 ns resolution), `:PMU:SARB:WFM:SEQ:LIST ch,seq,loops,...`,
  `:PMU:OUTPUT:STATE ch,0|1`, `:PMU:EXECUTE`, `:PMU:ABORT`, `:PMU:TEST:STATUS?` (1 running,
  0 idle), `:PMU:DATA:COUNT? ch`, `:PMU:DATA:GET ch[,start,count]` answering `V,I,t,status`
  points joined by `;` (at most 2048 per call). Pulse channels are numbered 1, 2 on PMU1.
* Standard pulse mode: `:PMU:PULSE:TRAIN ch,base,amplitude`, `:PMU:PULSE:TIMES ch,period,
  width,rise,fall`, `:PMU:PULSE:BURST:COUNT n`, `:PMU:MEASURE:MODE m`.
* System mode (4200A-SCS Reference Manual 4200A-901-01 Rev. C, section 9; Tektronix's KXCI
  system-mode examples): pages `DE` (channel definition), `SS` (source set-up), `SM`
  (measurement set-up, also `SM DM1|2`), `MD` (measurement control); a page's commands are
  valid only on that page. `CHch,'V','I',mode,function` (mode 1 V source, 2 I source, 3 common,
  which must be constant; function 1 VAR1, 2 VAR2, 3 constant, 4 VAR1'; `CHch` alone takes the
  channel out of the test), `VR|IR type,start,stop,step,comp` (type 1 linear, 2/3/4 log with
  10/25/50 points a decade; points = int(|stop-start|/step + 1.5), at most 1024; a voltage start
  or step below 1 mV is set to 0; a current compliance below 100 pA is raised to it),
  `VP|IP start,step,points,comp[,stepper]` (up to four VAR2 steppers), `VC|IC ch,value,comp`,
  `HT s`, `DT s`, `IT1..IT3`, `IT4,delay factor,filter factor,aperture PLC`, `RT ratio,ch`,
  `FS offset,ch` (VAR1' = VAR1 x ratio + offset), `DM1` graphics / `DM2` list, `LI 'name',...`,
  `XN|YA|YB 'name',scale,min,max`, `XT min,max`, `WT s`, `IN s`, `NR n` (the time-domain
  sampling test a set-up without VAR1 runs), `ME1` run (data cleared), `ME2` repeat until
  stopped, `ME3` run and append, `ME4` stop. `SP` has the busy bit (16) while a test runs and
  data ready (1) after it. `DO 'name'` answers every reading of that name as
  `X+N.NNNNE+NN` fields joined by commas (X the status: N, L, V, X, C, T), `CHnT` the time
  stamps of channel n. `RD 'name',index` answers the index-th reading (from 1) as a bare
  number and `0` past the last one (Tektronix's examples read it that way; GUESS: the manual
  text for RD could not be read). The sweep runs on the hardware one step at a time: the
  levels applied, the hold (first step of every VAR1 sweep) and delay waited, every test
  channel measured in one integration period.

* User libraries (KULT): `UL` selects the user library page, `EX library module(args)` runs a
  module and answers `RETURN VALUE = n`, `GP n [count]` its output parameter n. Installed here (option
  `kult`, default yes): memlab's own library, modules PulseRead and RampRead, exactly as
  drivers/kult/memlab_pulse_read.md specifies them; each played step by step on the PMU's
  hardware, RampRead's stop decided on the emulated measured current.

Choices not confirmed in a manual are marked GUESS where they are made. The most important:
an invalid command stops the rest of its message, is kept as the last error (`:ERROR:LAST:GET`
answers `<text>. (<code>)`, `No error. (0)` when there is none) and sets the syntax-error bit
of `SP`; the message is answered with that same error text instead of `ACK` (GUESS).
A system-mode test takes real time on the instrument: here it advances by
`sweep_steps_per_message` steps each time a message arrives (GUESS: the emulator's stand-in
for wall time); while it runs only status, identity, error, `MD`, `ME4` and `*RST` (which
stops it) are taken, anything else answers the busy execution error (GUESS). A finished or
stopped test leaves its channels at 0 V and off (GUESS); SMUs not in the test keep their
user-mode output through it (GUESS).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol


class Hardware(Protocol):
    def apply(self, outputs: dict[int, tuple[float, float] | None]) -> None: ...

    def advance(self, seconds: float) -> None: ...

    def measure_current(self, channel: int, integration_s: float) -> float: ...

    def measure_voltage(self, channel: int, integration_s: float) -> float: ...

    def note_pulse(self, peak: float, width: float, compliance: float) -> None: ...


# ---------------------------------------------------------------------------- errors

# GUESS: codes and texts. -992 "KXCI command error" is what two independent client test
# suites expect from :ERROR:LAST:GET after a bad command; the others are this emulator's.
ERRORS = {
    -992: "KXCI command error",
    -993: "Invalid parameter",
    -994: "Instrument not installed",
    -995: "Command not valid in this mode",
    -996: "Test not configured",
    -997: "Data not available",
    # GUESS: the code and text of an execution failure (a busy or faulted card), what
    # `inject_error` makes commands fail with; the manual's own list could not be read
    -998: "Execution error: instrument busy",
}
EXECUTION_ERROR = -998
# commands that change nothing on the instrument: an injected execution error spares them
# (the error stays retrievable and clearable, readings and status stay readable)
READ_ONLY = frozenset({"*IDN?", "ID", "*OPT?", "SP", ":ERROR:LAST:GET", ":ERROR:LAST:CLEAR", "TV", "TI",
                       ":PMU:TEST:STATUS?", ":PMU:DATA:COUNT?", ":PMU:DATA:GET", "GP", "RD", "DO"})
NO_ERROR = "No error. (0)"


class KxciError(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code

    @property
    def text(self) -> str:
        return f"{ERRORS[self.code]}. ({self.code})"


LINE_ENDINGS = {"none": "", "LF": "\n", "CR": "\r", "CRLF": "\r\n"}
DEFAULT_IDN = "KEITHLEY INSTRUMENTS,KI4200A,1489223,V1.14"
STATUS_DATA_READY, STATUS_SYNTAX_ERROR, STATUS_BUSY = 1, 2, 16
MAX_SMUS = 8
MAX_PMUS = 4  # GUESS: as many PMU cards as the chassis has fast slots

# 4200-SMU (medium power): +/-210 V, +/-105 mA
SMU_V_MAX, SMU_I_MAX = 210.0, 0.105
# DV range codes: 0 auto, 1 20 V, 2 200 V, 3 200 V (pymeasure); GUESS 4/5: 200 mV / 2 V with
# a preamplifier, accepted with the 20 V limit
DV_RANGES = {0: 210.0, 1: 21.0, 2: 210.0, 3: 210.0, 4: 21.0, 5: 21.0}
DI_RANGES = {0: 0.105, **{k: 1e-9 * 10 ** (k - 1) * 1.05 for k in range(1, 10)}, 11: 1.05e-12,
             12: 1.05e-11, 13: 1.05e-10}
# IT: integration time in power line cycles (short, normal, long); GUESS 50 Hz mains
LINE_HZ = 50.0
IT_PLC = {1: 0.1, 2: 1.0, 3: 10.0}
COMPLIANCE_TOLERANCE = 1e-6

# PMU (4225-PMU, with or without a 4225-RPM)
PMU_SEGMENT_MIN_S = 20e-9
PMU_SEGMENT_RESOLUTION_S = 10e-9
PMU_MAX_VALUES_PER_CALL = 128
PMU_MAX_POINTS_PER_GET = 2048
PMU_MAX_SEQUENCES = 512          # GUESS
PMU_MAX_SEGMENTS = 2048          # GUESS: segments per channel in one test, all sequences played
PMU_SOURCE_RANGES = {10: 10.0, 40: 40.0}
# current measure ranges (A): RPM 100 nA..10 mA, PMU 10 V: 10 mA, 200 mA; 40 V: 100 uA, 800 mA
PMU_CURRENT_RANGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.2, 0.8)
PMU_AUTO_RANGE = 0.2             # GUESS: what an auto-ranged channel may carry (10 V range)
PMU_MEASURE_MODES = (0, 1, 2, 3)  # GUESS: spot mean discrete, waveform discrete, spot mean average, waveform average
SARB_ARRAYS = ("TIME", "STARTV", "STOPV", "MEAS:TYPE", "MEAS:START", "MEAS:STOP")

# System mode: the page each command belongs to (IT is also a user-mode command)
PAGE_OF = {**dict.fromkeys(("CH", "VS", "VM"), "DE"),
           **dict.fromkeys(("VR", "IR", "VP", "IP", "VC", "IC", "HT", "DT", "RT", "FS"), "SS"),
           **dict.fromkeys(("DM", "LI", "WT", "IN", "NR", "XN", "XT", "YA", "YB"), "SM"), "ME": "MD"}
VAR1_MAX_POINTS = 1024
VAR2_MAX_POINTS = 32             # GUESS
VAR2_MAX_STEPPERS = 4
LOG_POINTS_PER_DECADE = {2: 10, 3: 25, 4: 50}
MIN_VOLTAGE_STEP = 1e-3          # a voltage start or step below this is set to 0 (manual)
MIN_COMPLIANCE_A = 1e-10         # a lower current compliance is raised to this (manual, with preamplifier)
HOLD_MAX_S, DELAY_MAX_S = 655.35, 65.535      # GUESS: the 4145B's ranges
WAIT_MAX_S, INTERVAL_S, MAX_READINGS = 100.0, (0.01, 10.0), 4096   # GUESS (sampling test)
MAX_LISTED = 8                   # GUESS
_SYS_NAME = re.compile(r"'([A-Za-z][A-Za-z0-9_]{0,5})'")   # up to 6 characters (manual)
_STAMP = re.compile(r"CH\dT")
WHILE_RUNNING = frozenset({"SP", "ID", "*IDN?", "*OPT?", ":ERROR:LAST:GET", ":ERROR:LAST:CLEAR", "MD", "*RST"})

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _num(token: str) -> float:
    token = token.strip()
    if not _NUMBER.fullmatch(token):
        raise KxciError(-993)
    value = float(token)
    if not math.isfinite(value):
        raise KxciError(-993)
    return value


_NUMBER_LIST = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:,[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)*")


def _nums(tokens: list[str]) -> list[float]:
    """A list of numbers in one regex pass (a segment-ARB array carries up to 128)."""
    joined = ",".join(t.strip() for t in tokens)
    if not _NUMBER_LIST.fullmatch(joined):
        return [_num(t) for t in tokens]   # raises on the bad one
    values = [float(t) for t in joined.split(",")]
    if not all(math.isfinite(v) for v in values):
        raise KxciError(-993)
    return values


def _int(token: str) -> int:
    token = token.strip()
    if not _INTEGER.fullmatch(token):
        if _NUMBER.fullmatch(token) and float(token).is_integer():
            return int(float(token))   # GUESS: 1.0 where an integer is expected is accepted
        raise KxciError(-993)
    return int(token)


def _args(text: str) -> list[str]:
    text = text.strip()
    return [t.strip() for t in text.split(",")] if text else []


def _count(args: list[str], *allowed: int) -> None:
    if len(args) not in allowed:
        raise KxciError(-993)


def _e(x: float, digits: int = 6) -> str:
    return f"{x:+.{digits - 1}E}"


# ------------------------------------------------------------------------------ state

@dataclass
class _Smu:
    output: tuple[float, float] | None = None   # (volts, |current compliance|) while on
    source: str = "V"                            # V (DV) or I (DI)
    level: float = 0.0                           # the programmed V or I
    compliance: float = 0.0                      # the programmed Icomp or Vcomp
    i_range: float = 0.0                         # RI: fixed measure range (0: auto)
    in_compliance: bool = False


@dataclass
class _PmuChannel:
    range_type: int = 0
    i_range: float = PMU_AUTO_RANGE
    source_range: float = 10.0
    load: float = 1e6
    output_on: bool = False
    level: float = 0.0                           # level of the output while on
    wfm: list[tuple[int, int]] = field(default_factory=list)
    train: tuple[float, float] | None = None     # base, amplitude
    times: tuple[float, float, float, float] | None = None  # period, width, rise, fall
    data: list[tuple[float, float, float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _SysChannel:
    vname: str
    iname: str
    mode: int        # 1 V source, 2 I source, 3 common
    function: int    # 1 VAR1, 2 VAR2, 3 constant, 4 VAR1'

    @property
    def kind(self) -> str:
        return {1: "V", 2: "I", 3: "C"}[self.mode]


@dataclass(frozen=True)
class _Sweep:
    kind: str                    # V or I
    levels: tuple[float, ...]
    compliance: float


@dataclass
class _Point:
    levels: dict[int, tuple[str, float, float]]   # channel -> (V, I or C for common, level, compliance)
    wait: float                                   # hold and delay before the measurement
    late: bool = False                            # sampling interval shorter than the measurement


@dataclass
class _Test:
    points: list[_Point]
    channels: list[int]
    repeat: bool
    t0: float
    next: int = 0


@dataclass
class _Segment:
    t0: float
    t1: float
    v0: float
    v1: float
    measure: tuple[float, float] | None   # absolute (start, stop) of the measure window


# -------------------------------------------------------------------------------- core

# memlab's KULT user library (drivers/kult/memlab_pulse_read.md): return values
KULT_BAD_ARGUMENT, KULT_ARRAY_TOO_SMALL, KULT_TOO_LONG = -1, -2, -3
KULT_MAX_LEVEL_V = 10.0          # the module's levels: the PMU's 10 V source range


class K4200ACore:
    """The instrument side of a 4200A-SCS running KXCI, one message at a time."""

    name = "K4200A"
    read_termination = "\0"
    message_ends = "\n\r\0"

    def __init__(self, hardware: Hardware, *, smus: int = 4, pmus: int = 1, line_ending: str = "LF",
                 idn: str = DEFAULT_IDN, transaction_s: float = 2e-4, settle_s: float = 1e-4,
                 sweep_steps_per_message: int = 4, kult: bool = True):
        if not 1 <= smus <= MAX_SMUS or not 0 <= pmus <= MAX_PMUS:
            raise ValueError(f"4200A: {smus} SMUs and {pmus} PMUs do not fit (1-{MAX_SMUS}, 0-{MAX_PMUS})")
        if line_ending not in LINE_ENDINGS:
            raise ValueError(f"4200A line_ending {line_ending!r}: one of {', '.join(LINE_ENDINGS)}")
        if sweep_steps_per_message < 1:
            raise ValueError(f"4200A sweep_steps_per_message {sweep_steps_per_message}: at least 1")
        self.steps_per_message = sweep_steps_per_message
        self.kult = kult   # memlab's KULT library (drivers/kult/memlab_pulse_read.md) is built on it
        self.hardware = hardware
        self.n_smus, self.n_pmus = smus, pmus
        self.write_termination = LINE_ENDINGS[line_ending] + "\0"
        self.idn = idn
        self.transaction_s, self.settle_s = transaction_s, settle_s
        self.clock = 0.0
        self.last_error: int | None = None
        self.syntax_error = False
        self.data_ready = False
        self.failing = 0   # commands that change something still to fail (inject_error)
        self._applied: dict[int, tuple[float, float] | None] = {}
        self._handlers: dict[str, Callable[[list[str]], str | None]] = {
            "*IDN?": self._idn, "ID": self._id, "*OPT?": self._opt, "*RST": self._rst, "SP": self._sp,
            "BC": self._bc, ":ERROR:LAST:GET": self._error_get, ":ERROR:LAST:CLEAR": self._error_clear,
            "US": self._page("US"), "DE": self._page("DE"), "SS": self._page("SS"), "SM": self._sm,
            "MD": self._page("MD"), "UL": self._page("UL"), "EX": self._ex, "GP": self._gp, "GD": self._gp,
            "CH": self._ch, "VS": self._not_installed, "VM": self._not_installed,
            "VR": self._var1("V"), "IR": self._var1("I"), "VP": self._var2("V"), "IP": self._var2("I"),
            "VC": self._constant("V"), "IC": self._constant("I"), "HT": self._ht, "DT": self._dt,
            "RT": self._ratio, "FS": self._offset, "DM": self._dm, "LI": self._li, "WT": self._wt,
            "IN": self._in, "NR": self._nr, "XN": self._axis, "YA": self._axis, "YB": self._axis,
            "XT": self._xt, "ME": self._me, "RD": self._rd, "DO": self._do,
            "DV": self._dv, "DI": self._di, "TV": self._tv, "TI": self._ti, "RI": self._ri, "RV": self._rv,
            "RG": self._rg, "IT": self._it, "RS": self._rs, "EC": self._ec,
            ":PMU:INIT": self._pmu_init, ":PMU:RPM:CONFIGURE": self._pmu_rpm,
            ":PMU:MEASURE:RANGE": self._pmu_measure_range, ":PMU:MEASURE:MODE": self._pmu_measure_mode,
            ":PMU:SOURCE:RANGE": self._pmu_source_range, ":PMU:LOAD": self._pmu_load,
            ":PMU:SAMPLE:RATE": self._pmu_sample_rate, ":PMU:PULSE:TRAIN": self._pmu_train,
            ":PMU:PULSE:TIMES": self._pmu_times, ":PMU:PULSE:BURST:COUNT": self._pmu_burst,
            ":PMU:SARB:WFM:SEQ:LIST": self._pmu_wfm_list, ":PMU:OUTPUT:STATE": self._pmu_output,
            ":PMU:EXECUTE": self._pmu_execute, ":PMU:ABORT": self._pmu_abort,
            ":PMU:TEST:STATUS?": self._pmu_status, ":PMU:DATA:COUNT?": self._pmu_count,
            ":PMU:DATA:GET": self._pmu_get,
            **{f":PMU:SARB:SEQ:{name}": self._sarb(name) for name in SARB_ARRAYS},
        }
        self.reset()

    @classmethod
    def emulate(cls, hardware: Hardware, options: dict, timing) -> "K4200ACore":
        """The core a bench file's instrument entry describes (options: smus, pmus, line_ending,
        idn, sweep_steps_per_message, kult: whether memlab's KULT library is built on it, default
        yes; the same option tells the driver it may use it)."""
        kult = options.get("kult", True)
        if not isinstance(kult, bool):
            raise ValueError(f"4200A option kult: {kult!r} is not true or false")
        return cls(hardware, smus=int(options.get("smus", 4)), pmus=int(options.get("pmus", 1)),
                   line_ending=str(options.get("line_ending", "LF")), idn=options.get("idn", DEFAULT_IDN),
                   transaction_s=timing.transaction_s, settle_s=timing.settle_s,
                   sweep_steps_per_message=int(options.get("sweep_steps_per_message", 4)), kult=kult)

    # --- public -------------------------------------------------------------------------

    def handle(self, message: str) -> list[str]:
        """Execute one message; exactly one reply line."""
        self._advance(self.transaction_s)
        if self.test is not None:   # the test ran on while the message was on its way
            self._step_test(self.steps_per_message)
        replies: list[str] = []
        for command in message.split(";"):
            command = command.strip()
            if not command:
                continue
            try:
                name, args = self._parse(command)
                if self.test is not None and name not in WHILE_RUNNING and not (name == "ME" and args == ["4"]):
                    raise KxciError(EXECUTION_ERROR)
                page = PAGE_OF.get(name)
                if page is not None and self.page != page:
                    raise KxciError(-995)
                if self.failing and name not in READ_ONLY:
                    self.failing -= 1
                    raise KxciError(EXECUTION_ERROR)
                reply = self._handlers[name](args)
            except KxciError as exc:
                # GUESS: the failing command and the rest of the message are not executed,
                # and the message is answered with the error instead of ACK
                self.last_error, self.syntax_error = exc.code, True
                return [exc.text]
            if reply is not None:
                replies.append(reply)
        # GUESS: several queries in one message answer in one line, joined by ';'
        return [";".join(replies) if replies else "ACK"]

    def inject_error(self, count: int = 1) -> None:
        """The next `count` commands that would change something fail with an execution
        error, as a busy or faulted instrument's do: not executed, the rest of their message
        skipped, the error answered and kept for `:ERROR:LAST:GET` (the bench's `error` fault)."""
        if count < 1:
            raise ValueError(f"4200A inject_error: count {count} is not a positive number of commands")
        self.failing += count

    def reset(self) -> None:
        """*RST: SMUs off at 0 V, PMU outputs off, user mode settings to their defaults."""
        self.page = "US"
        self.smus = {k: _Smu() for k in range(1, self.n_smus + 1)}
        self._system_reset()
        self.integration_plc, self.digits, self.exit_on_compliance = 1.0, 5, False
        self._pmu_reset(mode=0)
        self._commit()

    def outputs(self) -> dict[int, tuple[float, float] | None]:
        out: dict[int, tuple[float, float] | None] = {k: s.output for k, s in self.smus.items()}
        for ch, p in self.pmu.items():
            out[self._pmu_hw(ch)] = (p.level, self._pmu_limit(p)) if p.output_on else None
        return out

    # --- framing helpers --------------------------------------------------------------------

    def _parse(self, command: str) -> tuple[str, list[str]]:
        upper = command.upper()
        if upper.startswith(":"):
            head, _, rest = command.partition(" ")
            name = head.upper()
            if name not in self._handlers:
                raise KxciError(-992)
            return name, _args(rest)
        if upper.startswith("EX ") or upper == "EX":
            return "EX", [command[2:].strip()]
        m = re.fullmatch(r"(\*?[A-Z]+\??)\s*(.*)", upper, re.S)
        if not m or m.group(1) not in self._handlers:
            raise KxciError(-992)
        return m.group(1), _args(command[m.start(2):])

    def _advance(self, seconds: float) -> None:
        if seconds > 0:
            self.hardware.advance(seconds)
            self.clock += seconds

    def _commit(self) -> None:
        """Push every output that changed to the hardware; DC changes settle."""
        now = self.outputs()
        changed = {ch: out for ch, out in now.items() if self._applied.get(ch, "unset") != out}
        if changed:
            self.hardware.apply(changed)
            self._applied.update(changed)
            self._advance(self.settle_s)

    # --- identity and status ----------------------------------------------------------------

    def _idn(self, args):
        _count(args, 0)
        return self.idn

    def _id(self, args):
        _count(args, 0)
        version = self.idn.split(",")[-1].strip()
        return f"KI4200A {version}"

    def _opt(self, args):
        _count(args, 0)
        cards = [f"SMU{k}" for k in range(1, self.n_smus + 1)] + [f"PMU{m}" for m in range(1, self.n_pmus + 1)]
        return ",".join(cards)

    def _rst(self, args):
        _count(args, 0)
        self.reset()
        return None

    def _sp(self, args):
        _count(args, 0)
        return str(STATUS_DATA_READY * self.data_ready + STATUS_SYNTAX_ERROR * self.syntax_error
                   + STATUS_BUSY * (self.test is not None))

    def _bc(self, args):
        """BC: the readings cleared (system-mode data too) and the data-ready bit."""
        _count(args, 0)
        self.data_ready = False
        self.sys_data = {}
        return None

    def _error_get(self, args):
        _count(args, 0)
        return NO_ERROR if self.last_error is None else KxciError(self.last_error).text

    def _error_clear(self, args):
        _count(args, 0)
        self.last_error, self.syntax_error = None, False
        return None

    def _page(self, page: str):
        def select(args):
            _count(args, 0)
            self.page = page
            return None
        return select

    # --- user mode: SMUs ------------------------------------------------------------------------

    def _user_mode(self) -> None:
        if self.page != "US":
            raise KxciError(-995)

    def _smu(self, token: str) -> int:
        ch = _int(token)
        if ch not in self.smus:
            raise KxciError(-994)
        return ch

    def _dv(self, args):
        self._user_mode()
        _count(args, 1, 4)
        ch = self._smu(args[0])
        smu = self.smus[ch]
        if len(args) == 1:   # DVch alone: the SMU off (pymeasure's disable)
            self.smus[ch] = _Smu(i_range=smu.i_range)
            self._commit()
            return None
        v_range, volts, icomp = _int(args[1]), _num(args[2]), _num(args[3])
        if v_range not in DV_RANGES or abs(volts) > DV_RANGES[v_range] or not 0 < abs(icomp) <= SMU_I_MAX:
            raise KxciError(-993)
        smu.source, smu.level, smu.compliance = "V", volts, icomp
        smu.output = (volts, abs(icomp))
        self._commit()
        return None

    def _di(self, args):
        self._user_mode()
        _count(args, 1, 4)
        ch = self._smu(args[0])
        if len(args) == 1:
            self.smus[ch] = _Smu(i_range=self.smus[ch].i_range)
            self._commit()
            return None
        i_range, amps, vcomp = _int(args[1]), _num(args[2]), _num(args[3])
        if i_range not in DI_RANGES or abs(amps) > DI_RANGES[i_range] or not 0 < abs(vcomp) <= SMU_V_MAX:
            raise KxciError(-993)
        self._force_current(ch, amps, vcomp)
        return None

    def _force_current(self, ch: int, amps: float, vcomp: float) -> None:
        """A current source into the bench's resistive network: the output voltage is the
        level that drives the current, probed at 10 mV, clamped at the voltage compliance."""
        smu = self.smus[ch]
        probe = math.copysign(min(0.01, abs(vcomp)), amps or 1.0)
        smu.output = (probe, abs(amps) or 1e-12)
        self._commit()
        conductance = abs(self.hardware.measure_current(ch, 0.0) / probe)
        volts = amps / conductance if conductance > 0 else math.copysign(abs(vcomp), amps or 1.0)
        volts = max(-abs(vcomp), min(abs(vcomp), volts))
        smu.source, smu.level, smu.compliance = "I", amps, vcomp
        smu.output = (volts, abs(amps) or 1e-12)
        self._commit()

    def _integration_s(self) -> float:
        return self.integration_plc / LINE_HZ

    def _reading(self, ch: int, kind: str) -> str:
        smu = self.smus[ch]
        if smu.output is None:
            value, status = 0.0, "N"
        elif kind == "I":
            value = self.hardware.measure_current(ch, self._integration_s())
            self.clock += self._integration_s()
            status = "N"
            if smu.source == "V" and abs(value) >= abs(smu.compliance) * (1 - COMPLIANCE_TOLERANCE):
                value, status = math.copysign(abs(smu.compliance), value), "C"
            elif smu.i_range and abs(value) > smu.i_range * 1.05:
                status = "V"   # GUESS: overflow above 105 % of a fixed range
        else:
            value = self.hardware.measure_voltage(ch, self._integration_s())
            self.clock += self._integration_s()
            status = "N"
            if smu.source == "I" and abs(value) >= abs(smu.compliance) * (1 - COMPLIANCE_TOLERANCE):
                status = "C"
        smu.in_compliance = status == "C"
        if status == "N" and any(s.in_compliance for k, s in self.smus.items() if k != ch):
            status = "T"
        self.data_ready = True
        letter = "ABCDEFGH"[ch - 1]
        return f"{status}{letter}{kind}{_e(value, self.digits)}"

    def _tv(self, args):
        self._user_mode()
        _count(args, 1)
        return self._reading(self._smu(args[0]), "V")

    def _ti(self, args):
        self._user_mode()
        _count(args, 1)
        return self._reading(self._smu(args[0]), "I")

    def _ri(self, args):
        """RIch,range,compliance: a fixed current measure range (0: auto)."""
        self._user_mode()
        _count(args, 3)
        ch, rng, _ = self._smu(args[0]), abs(_num(args[1])), _num(args[2])
        if rng > SMU_I_MAX:
            raise KxciError(-993)
        self.smus[ch].i_range = rng
        return None

    def _rv(self, args):
        self._user_mode()
        _count(args, 3)
        self._smu(args[0])
        if abs(_num(args[1])) > SMU_V_MAX or abs(_num(args[2])) > SMU_V_MAX:
            raise KxciError(-993)
        return None

    def _rg(self, args):
        self._user_mode()
        _count(args, 2)
        self._smu(args[0])
        if abs(_num(args[1])) > SMU_I_MAX:
            raise KxciError(-993)
        return None

    def _it(self, args):
        """IT1..IT3 (short, normal, long); IT4,delay factor,filter factor,aperture (PLC) is the
        custom setting of the system-mode source set-up page (GUESS: its ranges)."""
        _count(args, 1, 4)
        mode = _int(args[0])
        if len(args) == 4:
            if mode != 4:
                raise KxciError(-993)
            if self.page != "SS":
                raise KxciError(-995)
            delay_factor, filter_factor, aperture = (_num(a) for a in args[1:])
            if not (0 <= delay_factor <= 100 and 0 <= filter_factor <= 100 and 0.01 <= aperture <= 10):
                raise KxciError(-993)
            self.integration_plc = aperture
            return None
        if mode not in IT_PLC:
            raise KxciError(-993)
        self.integration_plc = IT_PLC[mode]
        return None

    def _rs(self, args):
        _count(args, 1)
        digits = _int(args[0])
        if not 3 <= digits <= 7:
            raise KxciError(-993)
        self.digits = digits
        return None

    def _ec(self, args):
        _count(args, 1)
        value = _int(args[0])
        if value not in (0, 1):
            raise KxciError(-993)
        self.exit_on_compliance = bool(value)
        return None

    # --- system mode: set-up pages ---------------------------------------------------------------

    def _system_reset(self) -> None:
        self.sys_channels: dict[int, _SysChannel] = {}
        self.var1: _Sweep | None = None
        self.var2: dict[int, _Sweep] = {}                 # stepper index -> its steps
        self.constants: dict[int, tuple[str, float, float]] = {}
        self.ratios: dict[int, float] = {}
        self.offsets: dict[int, float] = {}
        self.hold_s = self.delay_s = 0.0
        self.wait_s, self.interval_s, self.readings = 0.0, INTERVAL_S[0], 1   # GUESS: the defaults
        self.display_mode, self.listed = 1, []
        self.sys_data: dict[str, list[tuple[str, float]]] = {}
        self.test: _Test | None = None

    def _sys_name(self, token: str) -> str:
        m = _SYS_NAME.fullmatch(token.strip())
        if not m or _STAMP.fullmatch(m.group(1).upper()):
            raise KxciError(-993)
        return m.group(1)

    def _not_installed(self, args):
        """VS/VM: every SMU here is configured as a SMU (KCON), none as a voltage source or monitor."""
        raise KxciError(-994)

    def _sm(self, args):
        """SM, or SM DM1|DM2 (the page and its display mode in one command, as Tektronix's examples send)."""
        if args:
            _count(args, 1)
            m = re.fullmatch(r"DM\s*([12])", args[0].upper())
            if not m:
                raise KxciError(-993)
            self.display_mode = int(m.group(1))
        self.page = "SM"
        return None

    def _ch(self, args):
        """CHch (out of the test) or CHch,'Vname','Iname',mode,function."""
        if not args:
            raise KxciError(-993)
        ch = self._smu(args[0])
        if len(args) == 1:
            self.sys_channels.pop(ch, None)
            return None
        _count(args, 5)
        vname, iname = self._sys_name(args[1]), self._sys_name(args[2])
        mode, function = _int(args[3]), _int(args[4])
        if mode not in (1, 2, 3) or function not in (1, 2, 3, 4) or (mode == 3 and function != 3) or vname == iname:
            raise KxciError(-993)
        others = {k: c for k, c in self.sys_channels.items() if k != ch}
        if {vname, iname} & {n for c in others.values() for n in (c.vname, c.iname)}:
            raise KxciError(-993)   # GUESS: a name identifies one channel's data
        if function == 1 and any(c.function == 1 for c in others.values()):
            raise KxciError(-993)   # one VAR1 source
        if function == 2 and sum(c.function == 2 for c in others.values()) >= VAR2_MAX_STEPPERS:
            raise KxciError(-993)
        self.sys_channels.pop(ch, None)   # VAR2 steppers count in the order they are defined
        self.sys_channels[ch] = _SysChannel(vname, iname, mode, function)
        return None

    @staticmethod
    def _source_limits(kind: str) -> tuple[float, float]:
        """(largest level, largest compliance) of a V or I source."""
        return (SMU_V_MAX, SMU_I_MAX) if kind == "V" else (SMU_I_MAX, SMU_V_MAX)

    def _compliance(self, kind: str, value: float) -> float:
        if not 0 < abs(value) <= self._source_limits(kind)[1]:
            raise KxciError(-993)
        return max(abs(value), MIN_COMPLIANCE_A) if kind == "V" else abs(value)

    def _var1(self, kind: str):
        def set_var1(args):
            """VR|IR type,start,stop,step,compliance (a log sweep takes no step)."""
            _count(args, 4, 5)
            sweep_type = _int(args[0])
            if sweep_type not in (1, 2, 3, 4) or (sweep_type == 1 and len(args) != 5):
                raise KxciError(-993)
            start, stop = _num(args[1]), _num(args[2])
            step = _num(args[3]) if sweep_type == 1 else 0.0
            compliance = self._compliance(kind, _num(args[-1]))
            if max(abs(start), abs(stop)) > self._source_limits(kind)[0]:
                raise KxciError(-993)
            if kind == "V":
                start = 0.0 if abs(start) < MIN_VOLTAGE_STEP else start
                step = 0.0 if abs(step) < MIN_VOLTAGE_STEP else step
            if sweep_type == 1:
                levels = self._linear(start, stop, step)
            else:
                levels = self._logarithmic(start, stop, LOG_POINTS_PER_DECADE[sweep_type])
            self.var1 = _Sweep(kind, levels, compliance)
            return None
        return set_var1

    @staticmethod
    def _linear(start: float, stop: float, step: float) -> tuple[float, ...]:
        if start == stop:
            return (start,)
        if step == 0 or (stop - start) * step < 0:
            raise KxciError(-993)   # GUESS: a step away from the stop value is refused
        points = int(abs((stop - start) / step) + 1.5)   # the manual's count
        if points > VAR1_MAX_POINTS:
            raise KxciError(-993)
        return tuple(start + k * step for k in range(points))

    @staticmethod
    def _logarithmic(start: float, stop: float, per_decade: int) -> tuple[float, ...]:
        """GUESS: equal ratios from start, the last point exactly at stop."""
        if start == 0 or stop == 0 or (start > 0) != (stop > 0):
            raise KxciError(-993)
        decades = math.log10(stop / start)
        points = int(round(abs(decades) * per_decade)) + 1
        if points > VAR1_MAX_POINTS:
            raise KxciError(-993)
        if points == 1:
            return (start,)
        levels = [start * 10 ** (decades * k / (points - 1)) for k in range(points)]
        levels[-1] = stop
        return tuple(levels)

    def _var2(self, kind: str):
        def set_var2(args):
            """VP|IP start,step,points,compliance[,stepper]."""
            _count(args, 4, 5)
            start, step, points = _num(args[0]), _num(args[1]), _int(args[2])
            compliance = self._compliance(kind, _num(args[3]))
            stepper = _int(args[4]) if len(args) == 5 else 1
            if not 1 <= points <= VAR2_MAX_POINTS or not 1 <= stepper <= VAR2_MAX_STEPPERS:
                raise KxciError(-993)
            if kind == "V":
                start = 0.0 if abs(start) < MIN_VOLTAGE_STEP else start
                step = 0.0 if abs(step) < MIN_VOLTAGE_STEP else step
            levels = tuple(start + k * step for k in range(points))
            if max(abs(v) for v in levels) > self._source_limits(kind)[0]:
                raise KxciError(-993)
            self.var2[stepper] = _Sweep(kind, levels, compliance)
            return None
        return set_var2

    def _constant(self, kind: str):
        def set_constant(args):
            """VC|IC ch,value,compliance."""
            _count(args, 3)
            ch, value = self._smu(args[0]), _num(args[1])
            compliance = self._compliance(kind, _num(args[2]))
            if abs(value) > self._source_limits(kind)[0]:
                raise KxciError(-993)
            self.constants[ch] = (kind, value, compliance)
            return None
        return set_constant

    def _seconds(self, args, top: float) -> float:
        _count(args, 1)
        value = _num(args[0])
        if not 0 <= value <= top:
            raise KxciError(-993)
        return value

    def _ht(self, args):
        self.hold_s = self._seconds(args, HOLD_MAX_S)
        return None

    def _dt(self, args):
        self.delay_s = self._seconds(args, DELAY_MAX_S)
        return None

    def _ratio(self, args):
        """RT ratio,ch: the VAR1' ratio of a channel (GUESS: the argument order, from Tektronix's example)."""
        _count(args, 2)
        ratio, ch = _num(args[0]), self._smu(args[1])
        if abs(ratio) > 10:
            raise KxciError(-993)
        self.ratios[ch] = ratio
        return None

    def _offset(self, args):
        """FS offset,ch: the VAR1' offset of a channel (GUESS: as RT)."""
        _count(args, 2)
        offset, ch = _num(args[0]), self._smu(args[1])
        if abs(offset) > SMU_V_MAX:
            raise KxciError(-993)
        self.offsets[ch] = offset
        return None

    def _dm(self, args):
        """DM1 graphics, DM2 list display."""
        _count(args, 1)
        mode = _int(args[0])
        if mode not in (1, 2):
            raise KxciError(-993)
        self.display_mode = mode
        return None

    def _li(self, args):
        if not 1 <= len(args) <= MAX_LISTED:
            raise KxciError(-993)
        self.listed = [self._sys_name(a) for a in args]
        return None

    def _wt(self, args):
        """WT s: the wait before the first reading of a sampling (time-domain) test."""
        self.wait_s = self._seconds(args, WAIT_MAX_S)
        return None

    def _in(self, args):
        """IN s: the interval between the readings of a sampling test."""
        _count(args, 1)
        value = _num(args[0])
        if not INTERVAL_S[0] <= value <= INTERVAL_S[1]:
            raise KxciError(-993)
        self.interval_s = value
        return None

    def _nr(self, args):
        """NR n: the number of readings of a sampling test."""
        _count(args, 1)
        value = _int(args[0])
        if not 1 <= value <= MAX_READINGS:
            raise KxciError(-993)
        self.readings = value
        return None

    def _axis(self, args):
        """XN|YA|YB 'name',scale,min,max: a graph axis (the display only)."""
        _count(args, 4)
        self._sys_name(args[0])
        if _int(args[1]) not in (1, 2) or _num(args[2]) >= _num(args[3]):
            raise KxciError(-993)
        return None

    def _xt(self, args):
        _count(args, 2)
        if not 0 <= _num(args[0]) < _num(args[1]):
            raise KxciError(-993)
        return None

    # --- system mode: the test --------------------------------------------------------------------

    def _me(self, args):
        """ME1 run (data cleared), ME2 repeat until ME4, ME3 run and append, ME4 stop."""
        _count(args, 1)
        mode = _int(args[0])
        if mode not in (1, 2, 3, 4):
            raise KxciError(-993)
        if mode == 4:
            if self.test is not None:
                self._end_test(stopped=True)
            return None
        points = self._plan_test()
        channels = list(self.sys_channels)
        if mode != 3:
            self.sys_data = {}
        for ch in channels:
            c = self.sys_channels[ch]
            for name in (c.vname, c.iname, f"CH{ch}T"):
                self.sys_data.setdefault(name, [])
        self.data_ready = False
        self.test = _Test(points, channels, repeat=mode == 2, t0=self.clock)
        return None

    def _plan_test(self) -> list[_Point]:
        """The steps of the test the pages describe; -996 where a part of it is missing."""
        chans = self.sys_channels
        if not chans:
            raise KxciError(-996)
        var1 = [ch for ch, c in chans.items() if c.function == 1]
        steppers = [ch for ch, c in chans.items() if c.function == 2]
        if not var1 and (steppers or any(c.function == 4 for c in chans.values())):
            raise KxciError(-996)
        if var1 and (self.var1 is None or self.var1.kind != chans[var1[0]].kind):
            raise KxciError(-996)
        stepped = {}
        for index, ch in enumerate(steppers, 1):
            sweep = self.var2.get(index)
            if sweep is None or sweep.kind != chans[ch].kind:
                raise KxciError(-996)
            stepped[ch] = sweep
        if len({len(s.levels) for s in stepped.values()}) > 1:
            raise KxciError(-996)   # GUESS: every stepper takes the same number of steps
        for ch, c in chans.items():
            if c.function == 3 and c.mode != 3 and self.constants.get(ch, ("",))[0] != c.kind:
                raise KxciError(-996)
            if c.function == 4 and c.kind != self.var1.kind:
                raise KxciError(-996)

        def levels(v1: float | None, step: int) -> dict[int, tuple[str, float, float]]:
            out = {}
            for ch, c in chans.items():
                if c.mode == 3:
                    out[ch] = ("C", 0.0, SMU_I_MAX)
                elif c.function == 1:
                    out[ch] = (c.kind, v1, self.var1.compliance)
                elif c.function == 2:
                    out[ch] = (c.kind, stepped[ch].levels[step], stepped[ch].compliance)
                elif c.function == 3:
                    out[ch] = self.constants[ch]
                else:
                    level = v1 * self.ratios.get(ch, 1.0) + self.offsets.get(ch, 0.0)
                    if abs(level) > self._source_limits(c.kind)[0]:
                        raise KxciError(-993)
                    out[ch] = (c.kind, level, self.var1.compliance)
            return out

        if not var1:   # a sampling test: the constants held, NR readings IN apart after WT
            integration = self._integration_s()
            rest = max(self.interval_s - integration, 0.0)
            late = self.interval_s < integration
            return [_Point(levels(None, 0), self.wait_s if k == 0 else rest, late and k > 0)
                    for k in range(self.readings)]
        steps = len(next(iter(stepped.values())).levels) if stepped else 1
        return [_Point(levels(v1, j), (self.hold_s if k == 0 else 0.0) + self.delay_s)
                for j in range(steps) for k, v1 in enumerate(self.var1.levels)]

    def _step_test(self, count: int) -> None:
        test = self.test
        for _ in range(count):
            if test.next >= len(test.points):
                break
            self._run_point(test, test.points[test.next])
            test.next += 1
        if test.next >= len(test.points):
            if test.repeat:   # ME2: again from the start, into a cleared buffer
                test.next, test.t0 = 0, self.clock
                self.sys_data = {name: [] for name in self.sys_data}
            else:
                self._end_test(stopped=False)

    def _run_point(self, test: _Test, point: _Point) -> None:
        """One step on the hardware: the levels, the wait, one integration period measuring
        every test channel (GUESS: the SMUs measure in parallel)."""
        for ch, (kind, level, compliance) in point.levels.items():
            if kind != "I":
                self.smus[ch] = _Smu(output=(level, compliance), source="V", level=level, compliance=compliance,
                                     i_range=self.smus[ch].i_range)
        self._commit()
        for ch, (kind, level, compliance) in point.levels.items():
            if kind == "I":
                self._force_current(ch, level, compliance)
        self._advance(point.wait)
        integration = self._integration_s()
        readings = {}
        for k, ch in enumerate(test.channels):
            amps = self.hardware.measure_current(ch, integration if k == 0 else 0.0)
            volts = self.hardware.measure_voltage(ch, 0.0)
            kind, _, compliance = point.levels[ch]
            status = "N"
            if kind != "I" and abs(amps) >= compliance * (1 - COMPLIANCE_TOLERANCE):
                amps, status = math.copysign(compliance, amps), "C"
            elif kind == "I" and abs(volts) >= compliance * (1 - COMPLIANCE_TOLERANCE):
                status = "C"
            readings[ch] = [status, volts, amps]
        self.clock += integration
        stamp = self.clock - test.t0
        if any(r[0] == "C" for r in readings.values()):
            for r in readings.values():
                r[0] = "T" if r[0] == "N" else r[0]
        for ch, (status, volts, amps) in readings.items():
            status = "L" if point.late else status
            c = self.sys_channels[ch]
            self.sys_data[c.vname].append((status, volts))
            self.sys_data[c.iname].append((status, amps))
            self.sys_data[f"CH{ch}T"].append(("N", stamp))

    def _end_test(self, stopped: bool) -> None:
        """The test's channels back at 0 V and off (GUESS); its data ready."""
        test, self.test = self.test, None
        for ch in test.channels:
            self.smus[ch] = _Smu(i_range=self.smus[ch].i_range)
        self._commit()
        self.data_ready = not stopped or any(self.sys_data.values())

    def _readings(self, token: str) -> list[tuple[str, float]]:
        m = _SYS_NAME.fullmatch(token.strip())
        if not m or m.group(1) not in self.sys_data:
            raise KxciError(-997)
        self.data_ready = False   # the data transfer has started (manual: it clears bit B0)
        return self.sys_data[m.group(1)]

    def _do(self, args):
        """DO 'name': every reading of that name, X+N.NNNNE+NN joined by commas."""
        _count(args, 1)
        data = self._readings(args[0])
        if not data:
            raise KxciError(-997)
        return ",".join(f"{status}{_e(value, self.digits)}" for status, value in data)

    def _rd(self, args):
        """RD 'name',index: the index-th reading (from 1) as a bare number, 0 past the last one.
        RD 'name' alone: every reading, joined by commas (GUESS)."""
        _count(args, 1, 2)
        data = self._readings(args[0])
        if len(args) == 1:
            if not data:
                raise KxciError(-997)
            return ",".join(_e(value, self.digits) for _, value in data)
        index = _int(args[1])
        if index < 1:
            raise KxciError(-993)
        return _e(data[index - 1][1], self.digits) if index <= len(data) else "0"

    # --- PMU ------------------------------------------------------------------------------------

    def _pmu_reset(self, mode: int) -> None:
        self.pmu_mode = mode
        self.pmu = {ch: _PmuChannel() for ch in range(1, 2 * self.n_pmus + 1)}
        self.sequences: dict[tuple[int, int], dict[str, list[float]]] = {}
        self.burst_count = 1
        self.measure_mode = 0
        self.sample_rate = 200e6

    def _pmu_hw(self, ch: int) -> int:
        """Pulse channel 1, 2 of PMU1 (GUESS: 3, 4 of PMU2 ...) -> hardware channel 101, 102 ..."""
        return 100 * ((ch + 1) // 2) + (ch - 1) % 2 + 1

    def _pmu_limit(self, p: _PmuChannel) -> float:
        return p.i_range if p.range_type else PMU_AUTO_RANGE

    def _pmu_channel(self, token: str) -> int:
        ch = _int(token)
        if ch not in self.pmu:
            raise KxciError(-994)
        return ch

    def _pmu_init(self, args):
        _count(args, 1)
        mode = _int(args[0])
        if mode not in (0, 1) or not self.pmu:
            raise KxciError(-993 if self.pmu else -994)
        self._pmu_reset(mode)
        self._commit()
        return None

    def _pmu_rpm(self, args):
        _count(args, 2)
        m = re.fullmatch(r"PMU(\d)-([12])", args[0].upper())
        if not m or int(m.group(1)) > self.n_pmus or _int(args[1]) not in (0, 1, 2, 3):
            raise KxciError(-993)
        return None

    def _pmu_measure_range(self, args):
        _count(args, 2, 3)
        p = self.pmu[self._pmu_channel(args[0])]
        kind = _int(args[1])
        if kind not in (0, 1, 2):
            raise KxciError(-993)
        if kind == 0:
            p.range_type, p.i_range = 0, PMU_AUTO_RANGE
            return None
        if len(args) != 3:
            raise KxciError(-993)
        rng = _num(args[2])
        match = [r for r in PMU_CURRENT_RANGES if math.isclose(r, rng, rel_tol=1e-6)]
        if not match:
            raise KxciError(-993)
        p.range_type, p.i_range = kind, match[0]
        return None

    def _pmu_measure_mode(self, args):
        _count(args, 1)
        mode = _int(args[0])
        if mode not in PMU_MEASURE_MODES:
            raise KxciError(-993)
        self.measure_mode = mode
        return None

    def _pmu_source_range(self, args):
        _count(args, 2)
        p = self.pmu[self._pmu_channel(args[0])]
        rng = _int(args[1])
        if rng not in PMU_SOURCE_RANGES:
            raise KxciError(-993)
        p.source_range = PMU_SOURCE_RANGES[rng]
        return None

    def _pmu_load(self, args):
        _count(args, 2)
        p = self.pmu[self._pmu_channel(args[0])]
        load = _num(args[1])
        if not 1.0 <= load <= 1e7:
            raise KxciError(-993)
        p.load = load
        return None

    def _pmu_sample_rate(self, args):
        _count(args, 1)
        rate = _num(args[0])
        if not 1e3 <= rate <= 200e6:
            raise KxciError(-993)
        self.sample_rate = rate
        return None

    def _pmu_train(self, args):
        """:PMU:PULSE:TRAIN ch,base,amplitude (GUESS: amplitude is the pulse top, absolute)."""
        _count(args, 3)
        p = self.pmu[self._pmu_channel(args[0])]
        base, top = _num(args[1]), _num(args[2])
        if max(abs(base), abs(top)) > p.source_range:
            raise KxciError(-993)
        p.train = (base, top)
        return None

    def _pmu_times(self, args):
        """:PMU:PULSE:TIMES ch,period,width,rise,fall; the width is full width at half maximum."""
        _count(args, 5)
        p = self.pmu[self._pmu_channel(args[0])]
        period, width, rise, fall = (_num(a) for a in args[1:])
        if min(rise, fall) < PMU_SEGMENT_MIN_S or width < (rise + fall) / 2 + PMU_SEGMENT_MIN_S \
                or period < width + (rise + fall) / 2 + PMU_SEGMENT_MIN_S or period > 1.0:
            raise KxciError(-993)
        p.times = (period, width, rise, fall)
        return None

    def _pmu_burst(self, args):
        _count(args, 1)
        count = _int(args[0])
        if not 1 <= count <= 10000:
            raise KxciError(-993)
        self.burst_count = count
        return None

    def _sarb(self, name: str):
        def set_array(args):
            if self.pmu_mode != 1:
                raise KxciError(-995)
            if len(args) < 3 or len(args) - 2 > PMU_MAX_VALUES_PER_CALL:
                raise KxciError(-993)
            ch, seq = self._pmu_channel(args[0]), _int(args[1])
            if not 1 <= seq <= PMU_MAX_SEQUENCES:
                raise KxciError(-993)
            values = _nums(args[2:])
            if name == "TIME":
                for t in values:
                    steps = t / PMU_SEGMENT_RESOLUTION_S
                    if t < PMU_SEGMENT_MIN_S * (1 - 1e-9) or abs(steps - round(steps)) > 1e-3:
                        raise KxciError(-993)
            elif name in ("STARTV", "STOPV"):
                if any(abs(v) > self.pmu[ch].source_range for v in values):
                    raise KxciError(-993)
            elif name == "MEAS:TYPE":
                if any(v not in (0, 1, 2, 3, 4) for v in values):
                    raise KxciError(-993)
            self.sequences.setdefault((ch, seq), {})[name] = values
            return None
        return set_array

    def _pmu_wfm_list(self, args):
        if self.pmu_mode != 1:
            raise KxciError(-995)
        if len(args) < 3 or len(args) % 2 == 0:
            raise KxciError(-993)
        ch = self._pmu_channel(args[0])
        pairs = [(_int(s), _int(n)) for s, n in zip(args[1::2], args[2::2])]
        for seq, loops in pairs:
            if (ch, seq) not in self.sequences or not 1 <= loops <= 1e12:
                raise KxciError(-996 if loops >= 1 else -993)
        self.pmu[ch].wfm = pairs
        return None

    def _pmu_output(self, args):
        _count(args, 2)
        p = self.pmu[self._pmu_channel(args[0])]
        state = _int(args[1])
        if state not in (0, 1):
            raise KxciError(-993)
        p.output_on, p.level = bool(state), 0.0
        self._commit()
        return None

    def _pmu_abort(self, args):
        _count(args, 0)
        for p in self.pmu.values():
            p.output_on, p.level = False, 0.0
        self._commit()
        return None

    def _pmu_status(self, args):
        _count(args, 0)
        return "0"   # a test runs to its end within EXECUTE

    def _pmu_count(self, args):
        _count(args, 1)
        return str(len(self.pmu[self._pmu_channel(args[0])].data))

    def _pmu_get(self, args):
        _count(args, 1, 3)
        data = self.pmu[self._pmu_channel(args[0])].data
        start = _int(args[1]) if len(args) > 1 else 0
        count = _int(args[2]) if len(args) > 2 else min(len(data) - start, PMU_MAX_POINTS_PER_GET)
        if start < 0 or count < 0 or count > PMU_MAX_POINTS_PER_GET or start + count > len(data):
            raise KxciError(-997)
        points = data[start:start + count]
        return ";".join(f"{_e(v)},{_e(i)},{_e(t)},{s}" for v, i, t, s in points)

    # --- user libraries (KULT) ------------------------------------------------------------------

    def _ex(self, args):
        """EX library module(arg, ...): run a user module; `RETURN VALUE = n`. Only memlab's
        own library is installed here (drivers/kult/memlab_pulse_read.md documents it), and
        only if the bench says the lab built it (option `kult`)."""
        if self.page != "UL":
            raise KxciError(-995)   # GUESS: EX only on the user library page (after UL)
        m = re.fullmatch(r"(\w+)\s+(\w+)\s*\((.*)\)\s*", args[0], re.S)
        # GUESS: a library or module that is not there answers the command error
        if not m or not self.kult or (m.group(1), m.group(2)) not in KULT_MODULES:
            raise KxciError(-992)
        module = KULT_MODULES[(m.group(1), m.group(2))]
        values = [a.strip() for a in m.group(3).split(",")]
        self.user_outputs = {}
        return f"RETURN VALUE = {module(self, values)}"

    def _gp(self, args):
        """GP n [count]: output parameter n of the last user module run, its first `count` values
        (all without), `PARAM VALUE = v1;v2;...`. Clients that drove a real 4200A send `GP 20 7`
        and split the reply at ';'; GUESS: a comma before the count is taken too, a count past
        the array's size is the data error, and GD answers the same for a double array."""
        if len(args) == 1 and len(args[0].split()) == 2:
            args = args[0].split()
        _count(args, 1, 2)
        values = getattr(self, "user_outputs", {}).get(_int(args[0]))
        if values is None:
            raise KxciError(-997)
        if len(args) == 2:
            count = _int(args[1])
            if not 1 <= count <= len(values):
                raise KxciError(-997)
            values = values[:count]
        return "PARAM VALUE = " + ";".join(_e(v) for v in values)

    def _pulse_read(self, values: list[str]) -> int:
        """memlab_kult PulseRead: see drivers/kult/memlab_pulse_read.md (the same contract)."""
        if len(values) != 12:
            return KULT_BAD_ARGUMENT
        try:
            drive, sense = _int(values[0]), _int(values[1])
            w_drive, w_sense, w_width, r_drive, r_width = (_num(values[k]) for k in (2, 3, 4, 5, 6))
            reads, writes, i_range, size = _int(values[7]), _int(values[8]), _num(values[9]), _int(values[11])
        except KxciError:
            return KULT_BAD_ARGUMENT
        i_range = self._kult_range(i_range)
        if values[10] or not self._kult_channels(drive, sense) or i_range is None or not 1 <= reads \
                or not 0 <= writes or max(abs(w_drive), abs(w_sense), abs(r_drive)) > KULT_MAX_LEVEL_V \
                or not all(self._kult_top(w) for w in ((w_width,) if writes else ()) + (r_width,)):
            return KULT_BAD_ARGUMENT
        steps = []
        for _ in range(max(writes, 1)):
            if writes:
                steps.append((w_drive, w_sense, w_width, False))
            steps += [(r_drive, 0.0, r_width, True)] * reads
        n_reads = sum(1 for step in steps if step[3])
        if size < n_reads:
            return KULT_ARRAY_TOO_SMALL
        if 4 * len(steps) > PMU_MAX_SEGMENTS:
            return KULT_TOO_LONG
        self._kult_start(drive, sense, i_range)
        currents = self._kult_play(drive, sense, steps)
        self._kult_end(drive, sense)
        self.user_outputs = {11: currents}
        return 0

    def _ramp_read(self, values: list[str]) -> int:
        """memlab_kult RampRead: see drivers/kult/memlab_pulse_read.md (the same contract). Each
        write and its reads are played on the hardware before the stop is decided on the last
        read's measured current, so the writes after the stop never happen."""
        if len(values) != 16:
            return KULT_BAD_ARGUMENT
        try:
            drive, sense = _int(values[0]), _int(values[1])
            d_start, d_step, s_start, s_step, w_width, r_drive, r_width = (_num(values[k]) for k in range(2, 9))
            reads, writes = _int(values[9]), _int(values[10])
            stop_current, rising = _num(values[11]), _int(values[12])
            i_range, size = _num(values[13]), _int(values[15])
        except KxciError:
            return KULT_BAD_ARGUMENT
        i_range = self._kult_range(i_range)
        last = writes - 1
        if values[14] or not self._kult_channels(drive, sense) or i_range is None or not 1 <= reads \
                or not 1 <= writes or rising not in (0, 1) or stop_current < 0 \
                or max(abs(d_start), abs(d_start + last * d_step), abs(s_start), abs(s_start + last * s_step),
                       abs(r_drive)) > KULT_MAX_LEVEL_V \
                or not all(self._kult_top(w) for w in (w_width, r_width)):
            return KULT_BAD_ARGUMENT
        if size < reads * writes:
            return KULT_ARRAY_TOO_SMALL
        if 4 * (1 + reads) * writes > PMU_MAX_SEGMENTS:
            return KULT_TOO_LONG
        self._kult_start(drive, sense, i_range)
        currents: list[float] = []
        applied = 0
        for k in range(writes):
            group = [(d_start + k * d_step, s_start + k * s_step, w_width, False)]
            currents += self._kult_play(drive, sense, group + [(r_drive, 0.0, r_width, True)] * reads)
            applied += 1
            level = abs(currents[-1])
            if (level >= stop_current) if rising else (level <= stop_current):
                break
        self._kult_end(drive, sense)
        # the module zeroes its output array before it drives anything: the slots after the
        # last read made stay 0 (GP answers all CurrentsSize of them)
        self.user_outputs = {15: currents + [0.0] * (size - len(currents))}
        return applied

    # the module's building blocks (the card set up as pulse_init does, each step a separate pulse)

    def _kult_channels(self, drive: int, sense: int) -> bool:
        return drive != sense and drive in self.pmu and sense in self.pmu

    @staticmethod
    def _kult_range(i_range: float) -> float | None:
        ranges = [r for r in PMU_CURRENT_RANGES if math.isclose(r, i_range, rel_tol=1e-6)]
        return ranges[0] if ranges else None

    @staticmethod
    def _kult_top(width: float) -> float | None:
        """The flat top of a step of `width` (edges of 20 ns, 10 ns resolution); None: too short."""
        top = math.floor((width - PMU_SEGMENT_MIN_S) / PMU_SEGMENT_RESOLUTION_S + 1e-6) * PMU_SEGMENT_RESOLUTION_S
        return top if top >= PMU_SEGMENT_MIN_S else None

    def _kult_start(self, drive: int, sense: int, i_range: float) -> None:
        # the module sets the card up itself (GUESS: as pulse_init does, it clears the KXCI set-up)
        self._pmu_reset(mode=0)
        for ch in (drive, sense):
            p = self.pmu[ch]
            p.range_type, p.i_range, p.output_on, p.level = 2, i_range, True, 0.0
        self._commit()

    def _kult_play(self, drive: int, sense: int, steps) -> list[float]:
        """Play (drive level, sense level, width, measured) steps, each rise / top / fall / 20 ns
        at 0 V on both channels; the mean sense current over the top of each measured one."""
        plans: dict[int, list[_Segment]] = {drive: [], sense: []}
        t = 0.0
        e = PMU_SEGMENT_MIN_S
        for level_d, level_s, width, measured in steps:
            top = self._kult_top(width)
            for ch, v in ((drive, level_d), (sense, level_s)):
                window = (t + e, t + e + top) if measured and ch == sense else None
                plans[ch] += [_Segment(t, t + e, 0.0, v, None), _Segment(t + e, t + e + top, v, v, window),
                              _Segment(t + e + top, t + 2 * e + top, v, 0.0, None),
                              _Segment(t + 2 * e + top, t + 3 * e + top, 0.0, 0.0, None)]
            t += 3 * e + top
        before = len(self.pmu[sense].data)
        self._run(plans)
        return [i for _, i, _, _ in self.pmu[sense].data[before:]]

    def _kult_end(self, drive: int, sense: int) -> None:
        for ch in (drive, sense):   # the module ends with its outputs off
            self.pmu[ch].output_on, self.pmu[ch].level = False, 0.0
        self._commit()

    # --- a PMU test -----------------------------------------------------------------------------

    def _pmu_execute(self, args):
        _count(args, 0)
        channels = [ch for ch, p in self.pmu.items() if p.output_on]
        if not channels:
            raise KxciError(-996)
        plans = {ch: self._plan(ch) for ch in channels}
        for p in self.pmu.values():
            p.data = []
        self._run(plans)
        return None

    def _plan(self, ch: int) -> list[_Segment]:
        """The segments one channel plays in this test, in absolute time."""
        p = self.pmu[ch]
        segments: list[_Segment] = []
        t = 0.0
        if self.pmu_mode == 1:
            if not p.wfm:
                raise KxciError(-996)
            for seq, loops in p.wfm:
                arrays = self.sequences[(ch, seq)]
                if not all(k in arrays for k in ("TIME", "STARTV", "STOPV")):
                    raise KxciError(-996)
                n = len(arrays["TIME"])
                kinds = arrays.get("MEAS:TYPE", [0.0] * n)
                starts = arrays.get("MEAS:START", [0.0] * n)
                stops = arrays.get("MEAS:STOP", arrays["TIME"])
                if any(len(arrays[k]) != n for k in ("STARTV", "STOPV")) or \
                        not len(kinds) == len(starts) == len(stops) == n:
                    raise KxciError(-996)
                if len(segments) + n * loops > PMU_MAX_SEGMENTS:
                    raise KxciError(-993)
                for _ in range(loops):
                    for k in range(n):
                        width = arrays["TIME"][k]
                        window = None
                        if kinds[k]:
                            lo, hi = starts[k], stops[k]
                            if not 0 <= lo < hi <= width * (1 + 1e-9):
                                raise KxciError(-993)
                            window = (t + lo, t + min(hi, width))
                        segments.append(_Segment(t, t + width, arrays["STARTV"][k], arrays["STOPV"][k], window))
                        t += width
            for a, b in zip(segments, segments[1:]):   # segment ARB waveforms are continuous
                if abs(a.v1 - b.v0) > 1e-9:
                    raise KxciError(-993)
            return segments
        if p.train is None or p.times is None:
            raise KxciError(-996)
        base, top = p.train
        period, width, rise, fall = p.times
        flat = width - (rise + fall) / 2
        for _ in range(self.burst_count):
            top_start = t + rise
            segments += [_Segment(t, t + rise, base, top, None),
                         _Segment(top_start, top_start + flat, top, top, (top_start, top_start + flat)),
                         _Segment(top_start + flat, top_start + flat + fall, top, base, None)]
            t = top_start + flat + fall
            rest = period - (rise + flat + fall)
            segments.append(_Segment(t, t + rest, base, base, None))
            t += rest
        return segments

    def _run(self, plans: dict[int, list[_Segment]]) -> None:
        """Play the channels together on the hardware: the time line is cut at every segment
        and measure-window edge; each piece is held at its mid-point levels (edges are short)."""
        cuts = {0.0}
        for segments in plans.values():
            for s in segments:
                cuts.update((s.t0, s.t1))
                if s.measure:
                    cuts.update(s.measure)
        times = sorted(cuts)
        cursor = {ch: 0 for ch in plans}
        sums: dict[int, dict[int, list[float]]] = {ch: {} for ch in plans}   # segment index -> [∫I dt, T]
        pulse: list[float] | None = None      # [start, peak, limit, weighted width]
        start_clock = self.clock
        limit = max(self._pmu_limit(self.pmu[ch]) for ch in plans)   # the ranges do not change during a test
        for a, b in zip(times, times[1:]):
            mid, dt = (a + b) / 2, b - a
            levels, active, ramp = {}, {}, False
            for ch, segments in plans.items():
                while cursor[ch] < len(segments) and segments[cursor[ch]].t1 <= mid:
                    cursor[ch] += 1
                p = self.pmu[ch]
                if cursor[ch] < len(segments):
                    s = segments[cursor[ch]]
                    frac = (mid - s.t0) / (s.t1 - s.t0) if s.t1 > s.t0 else 0.0
                    p.level = s.v0 + (s.v1 - s.v0) * frac
                    ramp = ramp or s.v0 != s.v1
                    if s.measure and s.measure[0] <= mid <= s.measure[1]:
                        active[ch] = cursor[ch]
                else:
                    p.level = segments[-1].v1 if segments else 0.0
                levels[ch] = p.level
            self._apply_pmu()
            measured = False
            for ch, index in active.items():
                current = self.hardware.measure_current(self._pmu_hw(ch), 0.0 if measured else dt)
                measured = True
                acc = sums[ch].setdefault(index, [0.0, 0.0])
                acc[0] += current * dt
                acc[1] += dt
            if not measured:
                self.hardware.advance(dt)
            # pulses: runs of time with any channel away from 0 V; a ramp counts half its time
            peak = max((abs(v) for v in levels.values()), default=0.0)
            if peak > 0:
                weight = dt / 2 if ramp else dt
                if pulse is None:
                    pulse = [a, peak, limit, weight]
                else:
                    pulse[1], pulse[2], pulse[3] = max(pulse[1], peak), max(pulse[2], limit), pulse[3] + weight
            elif pulse is not None:
                self.hardware.note_pulse(pulse[1], pulse[3], pulse[2])
                pulse = None
        if pulse is not None:
            self.hardware.note_pulse(pulse[1], pulse[3], pulse[2])
        for ch, segments in plans.items():   # the outputs stay on at the last level
            self.pmu[ch].level = segments[-1].v1 if segments else 0.0
        self._apply_pmu()
        self.clock = start_clock + (times[-1] if times else 0.0)
        for ch, segments in plans.items():
            p = self.pmu[ch]
            for index in sorted(sums[ch]):
                integral, span = sums[ch][index]
                s = segments[index]
                level = (s.v0 + s.v1) / 2
                mean = integral / span if span else 0.0
                status = 0
                if abs(mean) > self._pmu_limit(p) * 1.05:
                    status = 1   # GUESS: a status word, 1 = over range
                p.data.append((level, mean, s.measure[0], status))
        self.data_ready = True

    def _apply_pmu(self) -> None:
        outputs = {self._pmu_hw(ch): (p.level, self._pmu_limit(p)) for ch, p in self.pmu.items() if p.output_on}
        changed = {ch: out for ch, out in outputs.items() if self._applied.get(ch) != out}
        if changed:
            self.hardware.apply(changed)
            self._applied.update(changed)


KULT_MODULES = {("memlab_kult", "PulseRead"): K4200ACore._pulse_read,
                ("memlab_kult", "RampRead"): K4200ACore._ramp_read}

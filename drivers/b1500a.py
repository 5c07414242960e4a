"""Keysight B1500A semiconductor parameter analyzer (FLEX command set) over VISA.

Written from the B1500 programming guide's FLEX conventions: CR LF framing, several
commands joined with ';' in one message, `ERRX?` for the error queue, data in `FMT 1`
(3 header letters, 12-character number). Every message passes the guard with `FlexGrammar`
before it leaves the host, whichever method built it.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Context

from .errors import InstrumentError, InstrumentNotAnswering, LimitError, PulseOutcomeUnknown, ReplyError
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
SPGU_MODEL = "B1525A"
SPGU_OUTPUT_OHM = 50.0      # B1525A output impedance: with no compliance, it bounds the current
SWEEP_MAX_STEPS = 10001
ALL_SPGU = frozenset(slot * 100 + k for slot in SLOTS for k in (1, 2))

_ERROR_REPLY = re.compile(r'^[+-]?\d+\s*,\s*".*"$')
_REPLYING = frozenset({"XE", "TI", "TV", "TTI", "TTV", "TIV", "TTIV", "TSQ"})


def _answers(command: str) -> bool:
    """Whether a FLEX command puts a reply line in the output buffer."""
    m = re.match(r"\s*(\*?[A-Za-z]+\??)", command)
    return bool(m) and (m.group(1).endswith("?") or m.group(1).upper() in _REPLYING)
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
    sweep: tuple | None = None          # WV: slot, mode, start, stop, steps, compliance
    sync: tuple | None = None           # WSV: slot, start, stop, compliance
    wm: tuple[int, int] | None = None   # WM abort, post
    mt: tuple | None = None             # MT set in this session
    mv: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # MV: base, bias, Icomp
    msc: tuple[int, int] | None = None
    spgu: dict[int, "SpguSetup"] = field(default_factory=dict)   # SPGU channels set up in this session
    spgu_levels: dict[int, float | None] = field(default_factory=dict)  # their line levels (others: 0 V)
    spgu_on: set[int] = field(default_factory=set)  # SPGU channels switched on in this session
    sim: int | None = None
    period: float | None = None
    sprm: tuple[int, float] | None = None


@dataclass
class SpguSetup:
    """What this session set on one SPGU channel (None: not set)."""

    mode: int | None = None
    load: float | None = None
    levels: dict[int, tuple[float, float]] = field(default_factory=dict)     # SPV source -> base, peak
    timing: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)  # SPT
    # a message that may have changed this channel was not confirmed: what is not set here is
    # unknown (not as the reset left it) and must be set again before the channel puts it out
    doubted: bool = False

    @property
    def pristine(self) -> bool:
        """As the connect reset left it: DC at 0 V."""
        return self == SpguSetup()


_NAME = re.compile(r"^\s*(\*?[A-Za-z]+\??)(.*)$", re.S)
_QUERIES = frozenset({"*IDN?", "*OPC?", "*STB?", "*LRN?", "UNT?", "ERRX?", "ERR?", "SPST?", "SPV?",
                      "SPT?", "SPM?", "SER?", "SPRM?", "SPPER?", "SIM?", "ODSW?"})
# settings that source nothing and change no output
_SETTINGS = frozenset({"FMT", "AV", "AIT", "AAD", "AZ", "FL", "CMM", "RI", "RV", "TSC", "TSR", "BC", "WT",
                       "ODSW"})
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
        return copy.deepcopy(s)

    def commands(self, message: str) -> list[str]:
        return [c for c in message.split(";") if c.strip()]

    def apply(self, s: FlexState, command: str, where: str) -> None:
        m = _NAME.match(command)
        name = m.group(1).upper() if m else ""
        rest = m.group(2).strip() if m else ""
        if name == "*RST" and not rest:
            s.__dict__.update(self.reset_state().__dict__)
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

    def _switch_list(self, args: list[str], where: str) -> tuple[list[int], list[int]]:
        """CN/CL/DZ lists: SMU slots and SPGU channels (slot x 100 + 1 or 2); none: all."""
        if not args:
            return list(SLOTS), None
        slots, spgu = [], []
        for a in args:
            ch = integer(a, where)
            (spgu if ch > 100 else slots).append(self._spgu_ch(a, where) if ch > 100 else self._slot(a, where))
        return slots, spgu

    def _cn(self, s, args, where):
        """Output switch on: a channel that was off comes on at 0 V (the level CL and *RST
        left in the state); one already on keeps its level."""
        _, spgu = self._switch_list(args, where)
        s.spgu_on.update(ALL_SPGU if spgu is None else spgu)

    def _cl(self, s, args, where):          # output switch off, 0 V
        slots, spgu = self._switch_list(args, where)
        for slot in slots:
            s.levels[slot] = 0.0
        for ch in (spgu if spgu is not None else list(s.spgu_levels)):
            s.spgu_levels[ch] = 0.0
        if spgu is None:
            s.spgu_on.clear()
        else:
            s.spgu_on.difference_update(spgu)

    def _dz(self, s, args, where):          # SMU outputs to 0 V (settings kept for RZ, which is refused)
        slots, _ = self._switch_list(args, where)
        for slot in slots:
            s.levels[slot] = 0.0

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
        """MM 1,ch... (spot), 2,ch... (the staircase sweep set in this session), 3,ch (pulsed
        spot with the PV set in this session) or 10,ch... (sampling with the MT set)."""
        if len(args) < 2:
            raise LimitError(f"{where}MM takes a mode and channels")
        mode, slots = integer(args[0], where), tuple(self._slot(a, where) for a in args[1:])
        if mode == 3:
            if len(slots) != 1 or slots[0] not in s.pulses:
                raise LimitError(f"{where}a pulsed spot measurement needs one channel with a PV set in "
                                 f"this session")
        elif mode == 2:
            if s.sweep is None:
                raise LimitError(f"{where}measurement mode 2 would run a sweep nobody set up in this session "
                                 f"(a staircase sweep needs a WV of this session)")
        elif mode == 10:
            if s.mt is None:
                raise LimitError(f"{where}measurement mode 10 would run a sweep nobody set up in this session "
                                 f"(a sampling measurement needs an MT of this session)")
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
        elif mode == 2:
            self._run_sweep(s, where)
        elif mode == 10:
            self._run_sampling(s, where)

    # --- staircase sweep ------------------------------------------------------------------

    def _sweep_compliance(self, s, slot, args, index, where) -> float:
        if len(args) > index:
            compliance = number(args[index], where)
        else:
            compliance = s.compliance[slot]
            if compliance is None:
                raise LimitError(f"{where}sweep compliance of SMU {slot} not set in this session: give Icomp")
        self.limits.check_compliance(compliance, where)
        if len(args) > index + 1:
            number(args[index + 1], where)   # power compliance: only ever lowers the output
        return compliance

    def _wv(self, s, args, where):
        """WV ch,mode,range,start,stop,steps[,Icomp[,Pcomp]]"""
        if not 6 <= len(args) <= 8:
            raise LimitError(f"{where}WV takes 6 to 8 arguments")
        slot = self._slot(args[0], where)
        mode, _ = integer(args[1], where), integer(args[2], where)
        start, stop, steps = number(args[3], where), number(args[4], where), integer(args[5], where)
        if mode not in (1, 2, 3, 4):
            raise LimitError(f"{where}sweep mode {mode} is not a linear or log sweep")
        if not 1 <= steps <= SWEEP_MAX_STEPS:
            raise LimitError(f"{where}{steps} sweep steps outside 1 to {SWEEP_MAX_STEPS}")
        if mode in (2, 4) and not start * stop > 0:
            raise LimitError(f"{where}a log sweep needs a start and a stop of one polarity")
        for v in (start, stop):
            self.limits.check_line_voltage(v, where)
        compliance = self._sweep_compliance(s, slot, args, 6, where)
        s.sweep = (slot, mode, start, stop, steps, compliance)
        if s.sync is not None and s.sync[0] == slot:
            s.sync = None

    def _wsv(self, s, args, where):
        """WSV ch,range,start,stop[,Icomp[,Pcomp]]"""
        if not 4 <= len(args) <= 6:
            raise LimitError(f"{where}WSV takes 4 to 6 arguments")
        slot = self._slot(args[0], where)
        integer(args[1], where)
        start, stop = number(args[2], where), number(args[3], where)
        for v in (start, stop):
            self.limits.check_line_voltage(v, where)
        s.sync = (slot, start, stop, self._sweep_compliance(s, slot, args, 4, where))

    def _wm(self, s, args, where):
        if not 1 <= len(args) <= 2:
            raise LimitError(f"{where}WM takes 1 or 2 arguments")
        abort = integer(args[0], where)
        post = integer(args[1], where) if len(args) > 1 else 1
        if abort not in (1, 2) or post not in (1, 2):
            raise LimitError(f"{where}WM {abort},{post} is not a known abort/post setting")
        s.wm = (abort, post)

    @staticmethod
    def sweep_steps(mode: int, start: float, stop: float, steps: int) -> list[float]:
        """Every step's output (two-way sweeps come back); the guard checks each of them."""
        if steps == 1:
            one = [start]
        elif mode in (2, 4):
            one = [start * (stop / start) ** (k / (steps - 1)) for k in range(steps)]
        else:
            one = [start + (stop - start) * k / (steps - 1) for k in range(steps)]
        return one + one[::-1] if mode in (3, 4) else one

    def _run_sweep(self, s, where):
        slot, mode, start, stop, steps, compliance = s.sweep
        primary = self.sweep_steps(mode, start, stop, steps)
        sync = s.sync if s.sync is not None and s.sync[0] != slot else None
        secondary = self.sweep_steps(mode, sync[1], sync[2], steps) if sync else [None] * len(primary)
        if sync and mode in (2, 4) and not sync[1] * sync[2] > 0:
            raise LimitError(f"{where}a log sweep's synchronous source needs one polarity")
        saved = dict(s.levels)
        try:
            for v1, v2 in zip(primary, secondary):
                self.limits.check_line_voltage(v1, where)
                if sync:
                    self.limits.check_line_voltage(v2, where)
                    s.levels[sync[0]] = v2
                self._spread(s, slot, v1, where)
                if sync:
                    s.levels[slot] = v1
                    self._spread(s, sync[0], v2, where)
        finally:
            s.levels = saved
        # after the sweep: the post value, or the start value after an automatic abort
        if s.wm is None:
            possible = {1, 2}
        else:
            abort, post = s.wm
            possible = {post, 1} if abort == 2 else {post}
        sources = [(slot, start, stop, compliance)] + ([sync] if sync else [])
        for src_slot, first, last, comp in sources:
            values = {first if p == 1 else last for p in possible}
            s.levels[src_slot] = values.pop() if len(values) == 1 else None
            s.compliance[src_slot] = comp

    # --- sampling -------------------------------------------------------------------------

    def _mt(self, s, args, where):
        """MT hold_bias,interval,points[,hold_base]"""
        if not 3 <= len(args) <= 4:
            raise LimitError(f"{where}MT takes 3 or 4 arguments")
        values = [number(a, where) for a in args[:2]] + [integer(args[2], where)] + [
            number(a, where) for a in args[3:]]
        if values[1] <= 0 or values[2] < 1 or any(v < 0 for v in values[3:]):
            raise LimitError(f"{where}sampling interval, points or base hold out of range")
        s.mt = tuple(values)

    def _mv(self, s, args, where):
        """MV ch,range,base,bias,Icomp"""
        if len(args) != 5:
            raise LimitError(f"{where}MV takes 5 arguments")
        slot = self._slot(args[0], where)
        integer(args[1], where)
        base, bias, compliance = (number(a, where) for a in args[2:])
        for v in (base, bias):
            self.limits.check_line_voltage(v, where)
        self.limits.check_compliance(compliance, where)
        s.mv[slot] = (base, bias, compliance)

    def _msc(self, s, args, where):
        if not 1 <= len(args) <= 2:
            raise LimitError(f"{where}MSC takes 1 or 2 arguments")
        abort = integer(args[0], where)
        post = integer(args[1], where) if len(args) > 1 else 1
        if abort not in (1, 2) or post not in (1, 2):
            raise LimitError(f"{where}MSC {abort},{post} is not a known abort/post setting")
        s.msc = (abort, post)

    def _ml(self, s, args, where):
        if len(args) != 1 or integer(args[0], where) != 1:
            raise LimitError(f"{where}only linear sampling (ML 1) is covered")

    def _run_sampling(self, s, where):
        for phase in (0, 1):    # every MV source at its base, then every one at its bias
            for slot, levels in s.mv.items():
                s.levels[slot] = levels[phase]
            for slot, levels in s.mv.items():
                self._spread(s, slot, levels[phase], where)
        post = None if s.msc is None else s.msc[1]
        for slot, (base, bias, compliance) in s.mv.items():
            s.levels[slot] = base if (post == 1 or base == bias) else bias if post == 2 else None
            s.compliance[slot] = compliance

    # --- SPGU (B1525A): no compliance, a 50 ohm output ----------------------------------------

    def _spgu_ch(self, token: str, where: str) -> int:
        ch = integer(token, where)
        if ch // 100 not in SLOTS or ch % 100 not in (1, 2):
            raise LimitError(f"{where}{ch} is not an SPGU channel (slot x 100 + 1 or 2)")
        return ch

    def _setup(self, s, token, where) -> tuple[int, SpguSetup]:
        ch = self._spgu_ch(token, where)
        return ch, s.spgu.setdefault(ch, SpguSetup())

    def _sim(self, s, args, where):
        if len(args) != 1 or integer(args[0], where) != 0:
            raise LimitError(f"{where}only the SPGU's pulse generator mode (SIM 0) is covered")
        s.sim = 0
        for ch in s.spgu_levels:
            s.spgu_levels[ch] = 0.0    # SIM also puts 0 V on the SPGU outputs that are on

    def _spper(self, s, args, where):
        if len(args) != 1:
            raise LimitError(f"{where}SPPER takes 1 argument")
        period = number(args[0], where)
        if not period > 0:
            raise LimitError(f"{where}SPGU period {period} s is not positive")
        s.period = period

    def _sprm(self, s, args, where):
        mode = integer(args[0], where) if args else None
        if mode not in (1, 2) or len(args) != 2:
            raise LimitError(f"{where}only a counted (SPRM 1,n) or timed (SPRM 2,s) SPGU run is covered: "
                             f"a free run has no end the guard can see")
        condition = number(args[1], where)
        if not condition > 0:
            raise LimitError(f"{where}SPRM condition {condition} is not positive")
        s.sprm = (mode, condition)

    def _spv(self, s, args, where):
        """SPV ch,src,base[,peak]: kept until SPUPD/SRP, where the load makes it a line level."""
        if not 3 <= len(args) <= 4:
            raise LimitError(f"{where}SPV takes 3 or 4 arguments")
        ch, setup = self._setup(s, args[0], where)
        src = integer(args[1], where)
        base = number(args[2], where)
        peak = number(args[3], where) if len(args) > 3 else base
        if src not in (0, 1, 2):
            raise LimitError(f"{where}SPGU signal source {src} is not 0, 1 or 2")
        for v in (base, peak):
            self.limits.check_line_voltage(v, where)   # the line sees at least the set voltage
        setup.levels[src] = (base, peak)

    def _spt(self, s, args, where):
        """SPT ch,src,delay,width,leading[,trailing]"""
        if not 5 <= len(args) <= 6:
            raise LimitError(f"{where}SPT takes 5 or 6 arguments")
        ch, setup = self._setup(s, args[0], where)
        src = integer(args[1], where)
        delay, width, lead = (number(a, where) for a in args[2:5])
        trail = number(args[5], where) if len(args) > 5 else lead
        if src not in (1, 2) or min(delay, lead, trail) < 0 or not width > 0:
            raise LimitError(f"{where}SPGU timing out of range")
        setup.timing[src] = (delay, width, lead, trail)

    def _spm(self, s, args, where):
        if len(args) != 2:
            raise LimitError(f"{where}SPM takes 2 arguments")
        ch, setup = self._setup(s, args[0], where)
        mode = integer(args[1], where)
        if mode not in (0, 1, 2, 3):
            raise LimitError(f"{where}SPGU output mode {mode} is not 0 to 3")
        setup.mode = mode

    def _ser(self, s, args, where):
        if len(args) != 2:
            raise LimitError(f"{where}SER takes 2 arguments")
        ch, setup = self._setup(s, args[0], where)
        load = number(args[1], where)
        if not load > 0:
            raise LimitError(f"{where}SPGU load {load} ohm is not positive")
        setup.load = load

    def _line(self, setup: SpguSetup, volts: float) -> float:
        """What a crossbar line sees: the SPGU sets its source for the SER load; a device is
        far above 50 ohm, so the line gets up to the open voltage V (R + 50) / R."""
        return volts * (setup.load + SPGU_OUTPUT_OHM) / setup.load

    def _ready(self, s, ch, setup, where, pulses: bool) -> tuple[int, ...]:
        missing = [what for what, ok in (("SPM", setup.mode is not None), ("SER", setup.load is not None))
                   if not ok]
        sources = () if setup.mode in (None, 0) else {1: (1,), 2: (2,), 3: (1, 2)}[setup.mode]
        needed = sources if pulses else ((0,) if setup.mode == 0 else sources[:1])
        missing += [f"SPV source {src}" for src in needed if src not in setup.levels]
        if pulses:
            missing += [f"SPT source {src}" for src in sources if src not in setup.timing]
        if missing:
            raise LimitError(f"{where}SPGU channel {ch}: {', '.join(missing)} not set in this session")
        return sources

    def _base_line(self, setup: SpguSetup) -> float:
        src = 0 if setup.mode == 0 else (2 if setup.mode == 2 else 1)
        return self._line(setup, setup.levels[src][0])

    def _dc_level(self, s, ch, line, where):
        """A level the SPGU holds: the line limits, the spread, and its short-circuit current
        (no compliance: |V| / 50 ohm) within the compliance limit."""
        self.limits.check_line_voltage(line, where)
        if abs(line) / SPGU_OUTPUT_OHM > self.limits.compliance_current:
            raise LimitError(f"{where}SPGU channel {ch} holding {line:+.4g} V could drive "
                             f"{abs(line) / SPGU_OUTPUT_OHM:.3g} A through its 50 ohm output: above "
                             f"compliance_current {self.limits.compliance_current} A")
        self._spread(s, ch, line, where)

    def _spupd(self, s, args, where):
        channels = [self._spgu_ch(a, where) for a in args] if args else list(s.spgu)
        for ch in channels:
            setup = s.spgu.setdefault(ch, SpguSetup())
            if setup.pristine:
                continue    # as the connect reset left it: DC at 0 V
            self._ready(s, ch, setup, where, pulses=False)
            line = self._base_line(setup)
            self._dc_level(s, ch, line, where)
            s.spgu_levels[ch] = line

    def pulse_windows(self, setup: SpguSetup, sources) -> dict[int, tuple[float, float]]:
        """(start, end) of each source's pulse in its period, edges included in full (worst case)."""
        return {src: (setup.timing[src][0], sum(setup.timing[src])) for src in sources}

    def _srp(self, s, args, where):
        if args:
            raise LimitError(f"{where}SRP takes no arguments")
        missing = [n for n, v in (("SIM 0", s.sim), ("SPPER", s.period), ("SPRM", s.sprm)) if v is None]
        if missing:
            raise LimitError(f"{where}SPGU run needs {', '.join(missing)} set in this session")
        pulsing = {}
        for ch in sorted(s.spgu_on):
            setup = s.spgu.get(ch)
            if setup is None or setup.pristine:
                continue    # as the connect reset left it: DC at 0 V
            if setup.mode is None and setup.doubted:
                raise LimitError(f"{where}SPGU channel {ch}: output mode unknown after a message that was not "
                                 f"confirmed (SPM again)")
            if setup.mode in (None, 0):
                # a DC channel may put out its DC level as the run starts (a doubted one: unknown
                # unless set again)
                if 0 in setup.levels or setup.doubted:
                    self._ready(s, ch, replace(setup, mode=0), where, pulses=False)
                    line = self._line(setup, setup.levels[0][0])
                    self._dc_level(s, ch, line, where)
                    s.spgu_levels[ch] = line
                continue
            pulsing[ch] = (setup, self._ready(s, ch, setup, where, pulses=True))
        if not pulsing:
            raise LimitError(f"{where}no SPGU channel switched on and set up for pulses in this session")
        # every combination of pulse tops the channels may be at together
        levels = {}
        for ch, (setup, sources) in pulsing.items():
            base = self._base_line(setup)
            self._dc_level(s, ch, base, where)
            tops = {base}
            for src in sources:
                delay, width, lead, trail = setup.timing[src]
                if delay + lead + width + trail > s.period * (1 + 1e-9):
                    raise LimitError(f"{where}SPGU channel {ch} source {src}: its pulse does not fit in "
                                     f"the {s.period:.4g} s period")
                span = width + lead + trail
                if span > self.limits.max_pulse_width:
                    raise LimitError(f"{where}SPGU pulse {span:.4g} s (width and edges) exceeds "
                                     f"max_pulse_width {self.limits.max_pulse_width} s")
                top = self._line(setup, setup.levels[src][1] - setup.levels[src][0]) + base
                tops.add(top)
            if len(sources) == 2:
                tops.add(base + sum(self._line(setup, setup.levels[k][1] - setup.levels[k][0]) for k in sources))
            for top in tops:
                self.limits.check_line_voltage(top, where)
                span = max(sum(setup.timing[k][1:]) for k in sources)
                energy = top * top / SPGU_OUTPUT_OHM * span
                if energy > self.limits.max_pulse_energy:
                    raise LimitError(f"{where}SPGU pulse energy bound {energy:.3g} J ({top:+.4g} V into a short "
                                     f"through 50 ohm for {span:.4g} s) exceeds max_pulse_energy "
                                     f"{self.limits.max_pulse_energy} J")
            levels[ch] = tops
        saved = dict(s.spgu_levels)
        try:
            for ch, tops in levels.items():
                others = {o: t for o, t in levels.items() if o != ch}
                for combo in _combinations(others):
                    s.spgu_levels.update(combo)
                    for top in tops:
                        self._spread(s, ch, top, where)
        finally:
            s.spgu_levels = saved
        for ch, (setup, _) in pulsing.items():
            s.spgu_levels[ch] = self._base_line(setup)

    def _spp(self, s, args, where):
        if args:
            raise LimitError(f"{where}SPP takes no arguments")

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
        """A device may sit between this output and any other: their difference is bounded
        (SPGU channels this session never set up are at 0 V, like the reset left them)."""
        for other, level in [*s.levels.items(), *s.spgu_levels.items()]:
            if other == slot:
                continue
            what = "SMU" if other in SLOTS else "SPGU channel"
            if level is None:
                raise LimitError(f"{where}level of {what} {other} unknown: cannot bound the voltage across a device")
            if abs(volts - level) > self.limits.max_device_voltage:
                raise LimitError(f"{where}{volts:+.4g} V against {level:+.4g} V on {what} {other} exceeds "
                                 f"max_device_voltage {self.limits.max_device_voltage} V across a device")

    def doubt(self, before: FlexState, after: FlexState) -> FlexState:
        same = lambda a, b: copy.deepcopy(a) if a == b else None  # noqa: E731
        return FlexState(
            levels={k: same(before.levels[k], after.levels[k]) for k in SLOTS},
            compliance={k: same(before.compliance[k], after.compliance[k]) for k in SLOTS},
            width=None if None in (before.width, after.width) else max(before.width, after.width),
            pulses={k: v for k, v in after.pulses.items() if before.pulses.get(k) == v},
            mode=same(before.mode, after.mode),
            sweep=same(before.sweep, after.sweep), sync=same(before.sync, after.sync),
            wm=same(before.wm, after.wm), mt=same(before.mt, after.mt),
            mv={k: v for k, v in after.mv.items() if before.mv.get(k) == v},
            msc=same(before.msc, after.msc),
            spgu={k: _doubt_setup(before.spgu.get(k), after.spgu.get(k)) for k in set(before.spgu) | set(after.spgu)},
            spgu_levels={k: same(before.spgu_levels.get(k, 0.0), after.spgu_levels.get(k, 0.0))
                         for k in set(before.spgu_levels) | set(after.spgu_levels)},
            spgu_on=before.spgu_on | after.spgu_on,   # on in either: may be on
            sim=same(before.sim, after.sim), period=same(before.period, after.period),
            sprm=same(before.sprm, after.sprm))


def _doubt_setup(a: SpguSetup | None, b: SpguSetup | None) -> SpguSetup:
    """One SPGU channel after a message that may or may not have run: what differs is unknown.
    (Dropping the channel would read as the reset's DC 0 V: a pulse set-up nobody checked.)"""
    a, b = a or SpguSetup(), b or SpguSetup()
    if a == b:
        return copy.deepcopy(a)
    same = lambda x, y: copy.deepcopy(x) if x == y else None  # noqa: E731
    return SpguSetup(mode=same(a.mode, b.mode), load=same(a.load, b.load),
                     levels={k: v for k, v in b.levels.items() if a.levels.get(k) == v},
                     timing={k: v for k, v in b.timing.items() if a.timing.get(k) == v}, doubted=True)


def _combinations(levels: dict[int, set[float]]):
    """Every assignment of one level per channel."""
    items = list(levels.items())
    if not items:
        yield {}
        return
    (ch, values), rest = items[0], dict(items[1:])
    for v in values:
        for combo in _combinations(rest):
            yield {ch: v, **combo}


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

    def write(self, message: str) -> None:
        """As VisaInstrument.write; a message that makes the analyzer answer (a query, a
        measurement, XE) leaves a reply owed, so that the next query drains whatever of it a
        caller of this raw path did not read (else that query would take it for its own,
        and confirm to the guard a message the instrument may not have carried out)."""
        super().write(message)
        if any(_answers(c) for c in message.split(";")):
            self._awaiting_reply = True

    def _parse_error(self, reply: str) -> tuple[int, str]:
        try:
            return super()._parse_error(reply)
        except ReplyError:
            self._awaiting_reply = True   # out of step: the error query's own answer may follow
            raise

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

    # --- staircase sweep and SPGU pulses --------------------------------------------------

    def staircase_sweep(self, channel: int, start: float, stop: float, steps: int,
                        compliance: float | None = None, *, mode: int = 1, hold: float = 0.0,
                        delay: float = 0.0, step_delay: float = 0.0,
                        abort: bool = False) -> tuple[list[float], list[float]]:
        """A voltage staircase sweep on one SMU measuring its own current (MM 2): the
        (voltages, currents) of every step, as the instrument reports them. The channel is
        returned to 0 V afterwards. Not repeated on failure (a sweep stresses the device)."""
        self.require_smu(channel)
        compliance = self.limits.compliance_current if compliance is None else compliance
        if channel not in self.enabled:
            self.enable([channel])
        self.send("FMT 1,1", f"WT {_num(hold)},{_num(delay)},{_num(step_delay)}",
                  f"WM {2 if abort else 1},1",
                  f"WV {channel},{mode},0,{_num(start)},{_num(stop)},{int(steps)},{_num(compliance)}",
                  f"MM 2,{channel}")
        try:
            reply = self._run_and_confirm("XE")
        finally:
            self.send(f"DV {channel},0,0", "FMT 1,0")
        fields = parse_fields(reply)
        volts = [f.value for f in fields if f.status in ("W", "E")]
        amps = [f.value for f in fields if f.status not in ("W", "E")]
        if len(volts) != len(amps) or not volts:
            raise ReplyError(f"{self.name}: sweep data does not pair sources and readings: {reply!r}")
        return volts, amps

    def _run_and_confirm(self, message: str) -> str:
        """Send a measurement trigger with the error query in the same message: the error
        reply (query buffer) and the data (output buffer) are told apart by their form, so
        either order works; the guard takes the new state once the error queue is clean."""
        self.drain()
        self._awaiting_reply = True
        self.write(f"{message};{self.error_query}")
        try:
            first = self.read()
        except TimeoutError:
            self.check_errors()   # a refused trigger skips the error query: ask on its own
            raise
        if _ERROR_REPLY.match(first.strip()):
            self._raise_on_error(first, message)
            self._awaiting_reply = True
            data = self.read()
        else:
            data = first
            self._awaiting_reply = True
            self._raise_on_error(self.read(), message)
        self.confirm_last()
        return data

    def spgu_pulses(self, channel: int, base: float, peak: float, width: float, period: float,
                    count: int, *, edge: float = 2e-8, delay: float = 0.0, load: float = 1e6,
                    poll_s: float = 0.0) -> None:
        """`count` SPGU pulses of `width` (s, at the peak) every `period` on SPGU channel
        `channel` (slot x 100 + 1 or 2), then back at `base`. Counted in `pulses_sent` when
        SRP leaves the host; never repeated: after a failure the outcome is unknown."""
        if self.modules.get(channel // 100) != SPGU_MODEL or channel % 100 not in (1, 2):
            found = ", ".join(f"{s}: {m}" for s, m in sorted(self.modules.items())) or "none"
            raise ValueError(f"{self.name}: channel {channel} is not an SPGU channel (modules: {found})")
        self.send(f"CN {channel}", "SIM 0", f"SPPER {_num(period)}", f"SPRM 1,{int(count)}",
                  f"SER {channel},{_num(load)}", f"SPM {channel},1",
                  f"SPT {channel},1,{_num(delay)},{_num(width)},{_num(edge)},{_num(edge)}",
                  f"SPV {channel},1,{_num(base)},{_num(peak)}", f"SPUPD {channel}")
        self.drain()
        with signals_deferred():
            self._awaiting_reply = True
            self.write(f"SRP;{self.error_query}")
            self.pulses_sent += int(count)
        try:
            self._raise_on_error(self.read(), "SRP")
            self.confirm_last()
            while self.query("SPST?", retries=1).strip() != "0":
                if poll_s:
                    time.sleep(poll_s)
        except (TimeoutError, ReplyError, InstrumentNotAnswering) as exc:
            raise PulseOutcomeUnknown(f"{self.name}: SPGU run on {channel} not confirmed; the pulses "
                                      f"may or may not have been applied ({exc})") from exc

    def safe_state(self) -> None:
        """SPGU outputs stopped, all SMU outputs to 0 V, then every channel disabled (CL also
        zeroes them)."""
        self.make_safe(self._safe_state)

    def _safe_state(self) -> None:
        self.drain()
        # only outputs that may be away from 0 V (as far as the guard knows) are zeroed first
        biased = [slot for slot in sorted(self.enabled) if self.guard.state.levels.get(slot) != 0.0]
        try:
            if SPGU_MODEL in self.modules.values():
                self.send("SPP")
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

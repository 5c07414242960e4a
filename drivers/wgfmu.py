"""Keysight B1530A WGFMU (waveform generator / fast measurement unit) through Keysight's
instrument library: a `PulseSource` that runs whole pulse-and-read sequences on two channels.

The library is a C API, not a message protocol, so the guard cannot read what leaves the
host. Instead every library call the driver makes is first rendered as a text command
(`addVector pulse0,1e-08,0.5`: the function name without `WGFMU_`, then its input
arguments as the library receives them: floats in Python's shortest round-trip form) and
checked by `WgfmuGrammar` with the common `Guard`. Refused: LimitError, the library is not
called. The binding and the header's constants are in `wgfmu_api.py`.
"""

from __future__ import annotations

import ctypes
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from . import wgfmu_api as api
from .errors import DriverError, InstrumentError, InstrumentNotAnswering, LimitError, PulseOutcomeUnknown
from .guard import Grammar, Guard, integer, number
from .interfaces import PulseSource, PulseStep
from .limits import Limits
from .signals import signals_deferred
from .wgfmu_api import load_library  # noqa: F401  (the binding, re-exported)

TICK = 1e-8                   # the WGFMU's time resolution: vectors and events in 10 ns steps
MAX_DELTA_TIME = 10995.11627775   # s, the longest vector (instrument library reference)
# GUESS: 2048 vectors per channel (the pattern's initial point included) is what the B1530A's
# sequencer memory holds; not confirmed in the manuals at hand.
MAX_VECTORS = 2048
VECTORS_PER_STEP = 3          # rise, flat, fall
MAX_AVERAGING_S = 20e-3       # setMeasureEvent: averaging time 0 or 10 ns to 20 ms
MAX_EXPANDED_POINTS = 200_000 # the guard refuses sequences whose loops it cannot afford to expand
_NAME_TEXT = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _ticks(seconds: float, where: str) -> int:
    """A time in whole 10 ns ticks; anything else is refused (how the library would round it
    is not documented, and rounding up would widen a pulse)."""
    n = round(seconds / TICK)
    if not math.isfinite(seconds) or abs(seconds - n * TICK) > 1e-6 * TICK:
        raise LimitError(f"{where}time {seconds!r} s is not a whole number of 10 ns")
    return n


# --- the guard's grammar ------------------------------------------------------------------------

@dataclass
class ChannelState:
    """One WGFMU channel as far as this session knows (None: unknown)."""

    level: float | None = None         # output voltage while no sequence runs
    connected: bool | None = None
    mode: int | None = None            # operation mode set since the last clear
    measure_mode: int | None = None
    current_range: float | None = None # A: the current limit the energy bound uses


Points = tuple[tuple[int, float], ...]   # (time in ticks, volts), the first at tick 0


@dataclass
class WgfmuState:
    channels: dict[int, ChannelState]
    patterns: dict[str, Points] = field(default_factory=dict)   # patterns whose content is known
    # each channel's sequence (pattern name, loops); None until a clear in this session
    sequences: dict[int, tuple[tuple[str, int], ...]] | None = None
    running: frozenset[int] = frozenset()   # executed, completion not yet confirmed by a wait


_QUERIES = frozenset({
    "getStatus", "getChannelStatus", "getMeasureValueSize", "getMeasureValues", "getMeasureValue",
    "getCompletedMeasureEventSize", "getErrorSize", "getError", "getErrorSummarySize", "getErrorSummary",
    "getWarningSummarySize", "getWarningSummary", "getWarningLevel", "getChannelIdSize", "getChannelIds",
    "getOperationMode", "getForceVoltageRange", "getMeasureMode", "getMeasureVoltageRange",
    "getMeasureCurrentRange", "getForceDelay", "getMeasureDelay", "isMeasureEnabled",
    "getInterpolatedForceValue", "getForceValueSize", "getForceValues", "getForceValue",
    "getMeasureTimeSize", "getMeasureTimes", "getMeasureTime", "getPatternForceValueSize",
    "getPatternForceValues", "getPatternForceValue", "getPatternInterpolatedForceValue",
    "setTimeout", "setWarningLevel", "treatWarningsAsErrors",
    "dcmeasureValue", "dcmeasureAveragedValue",
})
_FORCE_RANGES = frozenset({api.FORCE_VOLTAGE_RANGE_AUTO, api.FORCE_VOLTAGE_RANGE_3V, api.FORCE_VOLTAGE_RANGE_5V,
                           api.FORCE_VOLTAGE_RANGE_10V_NEGATIVE, api.FORCE_VOLTAGE_RANGE_10V_POSITIVE})


class WgfmuGrammar(Grammar[WgfmuState]):
    """The library calls memlab needs, checked against the bench limits.

    A level anywhere in a pattern is within max_line_voltage and max_device_voltage (a
    device may sit between that line and a grounded one); when a sequence is updated or
    executed, the difference between any two channels stays within max_device_voltage at
    every instant (the waveforms are piecewise linear: the extremes are at the vectors), every
    excursion away from 0 V, of a channel or of a difference, lasts at most max_pulse_width
    and its |V| x current range x duration is at most max_pulse_energy. Only patterns built
    and sequences added in this session run, only in Fast IV mode with the current
    measurement and its range set in this session (PG mode's 50 ohm output and SMU mode are
    not bounded by a range: refused). Every sequence starts and ends at 0 V (the level the
    channel then keeps). A DC level other than 0 V is refused (it has no width); forcing
    0 V, disconnecting and aborting are always allowed."""

    def __init__(self, limits: Limits, channels: Sequence[int],
                 line_ratios: dict[int, tuple[float, ...]] | None = None):
        self.limits = limits
        self.channel_ids = tuple(channels)
        # the fractions of a channel's level that reach crossbar lines (a passive divider
        # between channel and lines: fractions <= 1); absent: the level itself
        self.line_ratios = {ch: tuple((line_ratios or {}).get(ch, (1.0,))) for ch in self.channel_ids}
        self.max_level = min(limits.max_line_voltage, limits.max_device_voltage)

    def unknown_state(self) -> WgfmuState:
        return WgfmuState({ch: ChannelState() for ch in self.channel_ids})

    def copy(self, s: WgfmuState) -> WgfmuState:
        return WgfmuState({ch: replace(c) for ch, c in s.channels.items()}, dict(s.patterns),
                          None if s.sequences is None else dict(s.sequences), s.running)

    def doubt(self, a: WgfmuState, b: WgfmuState) -> WgfmuState:
        same = lambda x, y: x if x == y else None  # noqa: E731
        channels = {ch: ChannelState(*(same(getattr(a.channels[ch], f), getattr(b.channels[ch], f))
                                       for f in ("level", "connected", "mode", "measure_mode", "current_range")))
                    for ch in self.channel_ids}
        patterns = {k: v for k, v in b.patterns.items() if a.patterns.get(k) == v}
        return WgfmuState(channels, patterns, a.sequences if a.sequences == b.sequences else None,
                          a.running | b.running)

    def commands(self, message: str) -> list[str]:
        return [c for c in message.split(";") if c.strip()]

    def apply(self, s: WgfmuState, command: str, where: str) -> None:
        name, _, rest = command.strip().partition(" ")
        args = [a.strip() for a in rest.split(",")] if rest.strip() else []
        if name in _QUERIES:
            return
        handler = getattr(self, f"_{name}", None) if name.isalnum() else None
        if handler is None:
            raise LimitError(f"{where}{name or command.strip()!r} is not covered by the bench limits")
        handler(s, args, where)

    # --- argument parsing -----------------------------------------------------------------

    @staticmethod
    def _arity(args: list[str], n: int, where: str) -> None:
        if len(args) != n:
            raise LimitError(f"{where}takes {n} argument{'s' * (n != 1)}, got {len(args)}")

    def _channel(self, s: WgfmuState, token: str, where: str) -> ChannelState:
        ch = integer(token, where)
        if ch not in s.channels:
            raise LimitError(f"{where}channel {ch} is not one of this bench's WGFMU channels {self.channel_ids}")
        return s.channels[ch]

    @staticmethod
    def _name(token: str, where: str) -> str:
        if not _NAME_TEXT.fullmatch(token):
            raise LimitError(f"{where}name {token!r} is not 1-64 letters, digits, '_', '.' or '-'")
        return token

    def _level(self, token: str, where: str) -> float:
        volts = number(token, where)
        if not abs(volts) <= self.max_level:
            raise LimitError(f"{where}{volts:+.4g} V exceeds the {self.max_level} V a line may carry "
                             f"(max_line_voltage {self.limits.max_line_voltage} V, max_device_voltage "
                             f"{self.limits.max_device_voltage} V against a grounded line)")
        return volts

    def _delta(self, token: str, where: str) -> int:
        dt = number(token, where)
        if not TICK * (1 - 1e-9) <= dt <= MAX_DELTA_TIME:
            raise LimitError(f"{where}vector time {dt!r} s outside [1e-08, {MAX_DELTA_TIME}] s")
        return _ticks(dt, where)

    def _pattern(self, s: WgfmuState, token: str, where: str) -> str:
        name = self._name(token, where)
        if name not in s.patterns:
            raise LimitError(f"{where}pattern {name!r} was not built in this session (its content is unknown)")
        return name

    # --- session and channels -------------------------------------------------------------

    def _openSession(self, s, args, where):
        self._arity(args, 1, where)
        fresh = self.unknown_state()   # a new session: nothing known until initialize and clear
        s.channels, s.patterns, s.sequences = fresh.channels, fresh.patterns, fresh.sequences

    def _closeSession(self, s, args, where):
        """Another program may take the instrument after this: nothing is known any more. Only
        with both outputs known to be disconnected: after it, nothing here could disconnect them."""
        self._arity(args, 0, where)
        live = [ch for ch, c in s.channels.items() if c.connected is not False]
        if live:
            raise LimitError(f"{where}channel(s) {live} may still be connected: disconnect them (safe_state) "
                             f"before closing the session")
        fresh = self.unknown_state()
        s.channels, s.patterns, s.sequences = fresh.channels, fresh.patterns, fresh.sequences

    def _initialize(self, s, args, where):
        """Resets every WGFMU channel: outputs at 0 V and disconnected. The library's
        software setup (patterns, sequences, channel settings) is not cleared."""
        self._arity(args, 0, where)
        for c in s.channels.values():
            c.level, c.connected = 0.0, False
        s.running = frozenset()

    def _clear(self, s, args, where):
        """The library's software setup is cleared: no pattern, no sequence. The channel
        settings it holds are taken as unknown from here (GUESS: whether clear also returns
        them to defaults is not stated)."""
        self._arity(args, 0, where)
        s.patterns, s.sequences = {}, {}
        for c in s.channels.values():
            c.mode = c.measure_mode = c.current_range = None

    def _setOperationMode(self, s, args, where):
        self._arity(args, 2, where)
        c, mode = self._channel(s, args[0], where), integer(args[1], where)
        if mode not in (api.OPERATION_MODE_FASTIV, api.OPERATION_MODE_DC):
            raise LimitError(f"{where}operation mode {mode}: only Fast IV ({api.OPERATION_MODE_FASTIV}) and DC "
                             f"({api.OPERATION_MODE_DC}) are bounded by a current range")
        c.mode = mode

    def _setForceVoltageRange(self, s, args, where):
        self._arity(args, 2, where)
        self._channel(s, args[0], where)
        if integer(args[1], where) not in _FORCE_RANGES:
            raise LimitError(f"{where}unknown force voltage range {args[1]}")

    def _setMeasureMode(self, s, args, where):
        self._arity(args, 2, where)
        c, mode = self._channel(s, args[0], where), integer(args[1], where)
        if mode not in (api.MEASURE_MODE_VOLTAGE, api.MEASURE_MODE_CURRENT):
            raise LimitError(f"{where}unknown measure mode {mode}")
        c.measure_mode = mode

    def _setMeasureVoltageRange(self, s, args, where):
        self._arity(args, 2, where)
        self._channel(s, args[0], where)
        if integer(args[1], where) not in (api.MEASURE_VOLTAGE_RANGE_5V, api.MEASURE_VOLTAGE_RANGE_10V):
            raise LimitError(f"{where}unknown measure voltage range {args[1]}")

    def _setMeasureCurrentRange(self, s, args, where):
        self._arity(args, 2, where)
        c, code = self._channel(s, args[0], where), integer(args[1], where)
        if code not in api.CURRENT_RANGES:
            raise LimitError(f"{where}unknown measure current range {code}")
        amps = api.CURRENT_RANGES[code]
        if amps > self.limits.compliance_current:
            raise LimitError(f"{where}current range {amps:g} A exceeds compliance_current "
                             f"{self.limits.compliance_current} A")
        c.current_range = amps

    def _setMeasureEnabled(self, s, args, where):
        self._arity(args, 2, where)
        self._channel(s, args[0], where)
        if integer(args[1], where) not in (api.MEASURE_ENABLED_DISABLE, api.MEASURE_ENABLED_ENABLE):
            raise LimitError(f"{where}unknown measure enabled value {args[1]}")

    def _setForceDelay(self, s, args, where):
        """A delay shifts one channel against the other: only 0 keeps the checked timing."""
        self._arity(args, 2, where)
        self._channel(s, args[0], where)
        if number(args[1], where) != 0:
            raise LimitError(f"{where}a channel delay would shift the waveforms the guard checked")

    _setMeasureDelay = _setForceDelay

    def _connect(self, s, args, where):
        self._arity(args, 1, where)
        c = self._channel(s, args[0], where)
        if c.level is None:
            raise LimitError(f"{where}output level unknown: force 0 V (or initialize) before connecting")
        c.connected = True

    def _disconnect(self, s, args, where):
        self._arity(args, 1, where)
        self._channel(s, args[0], where).connected = False

    def _dcforceVoltage(self, s, args, where):
        self._arity(args, 2, where)
        c, volts = self._channel(s, args[0], where), number(args[1], where)
        if volts != 0:
            raise LimitError(f"{where}a DC level of {volts:+.4g} V has no width: only 0 V may be forced")
        c.level = 0.0

    def _abort(self, s, args, where):
        """The sequencers stop and the outputs keep whatever level they had."""
        self._arity(args, 0, where)
        for c in s.channels.values():
            c.level = None
        s.running = frozenset()

    def _abortChannel(self, s, args, where):
        self._arity(args, 1, where)
        self._channel(s, args[0], where).level = None
        s.running = s.running - {integer(args[0], where)}

    # --- patterns and sequences ---------------------------------------------------------------

    def _createPattern(self, s, args, where):
        self._arity(args, 2, where)
        name = self._name(args[0], where)
        if name in s.patterns:
            raise LimitError(f"{where}pattern {name!r} already exists")
        s.patterns[name] = ((0, self._level(args[1], where)),)

    def _addVector(self, s, args, where):
        self._arity(args, 3, where)
        name = self._pattern(s, args[0], where)
        self._append(s, name, [(self._delta(args[1], where), self._level(args[2], where))])

    def _addVectors(self, s, args, where):
        """addVectors pattern,dt1,...,dtn,v1,...,vn,n"""
        if len(args) < 4:
            raise LimitError(f"{where}takes a pattern, times, voltages and their count")
        name, n = self._pattern(s, args[0], where), integer(args[-1], where)
        if n < 1 or len(args) != 2 * n + 2:
            raise LimitError(f"{where}count {n} does not match the {len(args) - 2} values given")
        deltas = [self._delta(a, where) for a in args[1:n + 1]]
        levels = [self._level(a, where) for a in args[n + 1:2 * n + 1]]
        self._append(s, name, list(zip(deltas, levels)))

    def _append(self, s, name, vectors):
        points = list(s.patterns[name])
        t = points[-1][0]
        for dt, v in vectors:
            t += dt
            points.append((t, v))
        s.patterns[name] = tuple(points)

    def _setMeasureEvent(self, s, args, where):
        """Measures only; checked for well-formed arguments."""
        self._arity(args, 7, where)
        self._name(args[0], where)
        self._name(args[1], where)
        number(args[2], where)
        integer(args[3], where)
        number(args[4], where)
        number(args[5], where)
        integer(args[6], where)

    def _addSequence(self, s, args, where):
        self._arity(args, 3, where)
        ch = integer(args[0], where)
        self._channel(s, args[0], where)
        if s.sequences is None:
            raise LimitError(f"{where}the library's sequences are unknown until it is cleared in this session")
        name = self._pattern(s, args[1], where)
        loops = number(args[2], where)
        if loops != int(loops) or not 1 <= loops <= MAX_EXPANDED_POINTS:
            raise LimitError(f"{where}loop count {args[2]} is not a whole number from 1 to {MAX_EXPANDED_POINTS}")
        s.sequences[ch] = s.sequences.get(ch, ()) + ((name, int(loops)),)
        self._waveform(s, ch, where)   # refuse now what could never be expanded

    # --- running ----------------------------------------------------------------------------------

    def _update(self, s, args, where):
        self._arity(args, 0, where)
        self._check_run(s, where)

    def _updateChannel(self, s, args, where):
        self._arity(args, 1, where)
        self._channel(s, args[0], where)
        self._check_run(s, where)

    def _execute(self, s, args, where):
        """While the sequencers run, the levels follow the patterns (unknown to a state)."""
        self._arity(args, 0, where)
        running = self._check_run(s, where)
        for ch in running:
            s.channels[ch].level = None
        s.running = frozenset(running)

    def _waitUntilCompleted(self, s, args, where):
        """Confirmed: every sequence has ended, at 0 V, which the channels keep."""
        self._arity(args, 0, where)
        for ch in s.running:
            s.channels[ch].level = 0.0
        s.running = frozenset()

    def _check_run(self, s: WgfmuState, where: str) -> list[int]:
        if s.sequences is None:
            raise LimitError(f"{where}the library's sequences are unknown until it is cleared in this session")
        running = [ch for ch in self.channel_ids if s.sequences.get(ch)]
        for ch, c in s.channels.items():
            if c.level is None:
                raise LimitError(f"{where}output level of channel {ch} unknown: force 0 V (or initialize) first")
        waves = {}
        for ch in running:
            c = s.channels[ch]
            if c.mode != api.OPERATION_MODE_FASTIV:
                raise LimitError(f"{where}channel {ch} would run without Fast IV mode set in this session")
            if c.measure_mode != api.MEASURE_MODE_CURRENT or c.current_range is None:
                raise LimitError(f"{where}channel {ch}: its current measurement and range (the current limit) "
                                 f"were not set in this session")
            waves[ch] = self._waveform(s, ch, where)
            if waves[ch][0][1] != 0 or waves[ch][-1][1] != 0:
                raise LimitError(f"{where}channel {ch}: a sequence must start and end at 0 V (it then holds "
                                 f"that level)")
            for start, end, peak in _excursions(waves[ch]):
                self._pulse(peak, end - start, c.current_range, f"{where}channel {ch}: ")
        for ch in running:   # a channel's divider outputs against each other
            ratios = self.line_ratios[ch]
            spread = (max(ratios) - min(ratios)) * max(abs(v) for _, v in waves[ch])
            if spread > self.limits.max_device_voltage:
                raise LimitError(f"{where}divider outputs of channel {ch} up to {spread:.4g} V apart: exceeds "
                                 f"max_device_voltage {self.limits.max_device_voltage} V across a device")
        for i, a in enumerate(running):
            for b in running[i + 1:]:
                diff = _difference(waves[a], waves[b])
                worst = max(abs(v) for ra in self.line_ratios[a] for rb in self.line_ratios[b]
                            for _, v in _difference(_scaled(waves[a], ra), _scaled(waves[b], rb)))
                if worst > self.limits.max_device_voltage:
                    raise LimitError(f"{where}lines of channels {a} and {b} differ by up to {worst:.4g} V: exceeds "
                                     f"max_device_voltage {self.limits.max_device_voltage} V across a device")
                current = max(s.channels[a].current_range, s.channels[b].current_range)
                for start, end, peak in _excursions(diff):
                    self._pulse(peak, end - start, current, f"{where}channels {a}-{b}: ")
        return running

    def _pulse(self, peak: float, ticks: int, current: float, where: str) -> None:
        width = ticks * TICK
        if width > self.limits.max_pulse_width * (1 + 1e-12):
            raise LimitError(f"{where}{peak:.4g} V for {width:.4g} s exceeds max_pulse_width "
                             f"{self.limits.max_pulse_width} s")
        energy = peak * current * width
        if energy > self.limits.max_pulse_energy:
            raise LimitError(f"{where}pulse energy bound {energy:.3g} J ({peak:.4g} V x {current:g} A x "
                             f"{width:.4g} s) exceeds max_pulse_energy {self.limits.max_pulse_energy} J")

    def _waveform(self, s: WgfmuState, ch: int, where: str) -> Points:
        """The channel's whole sequence as (tick, volts) from its start."""
        points: list[tuple[int, float]] = []
        offset = 0
        for name, loops in s.sequences.get(ch, ()):
            pattern = s.patterns.get(name)
            if pattern is None:
                raise LimitError(f"{where}channel {ch}: pattern {name!r} is no longer known")
            if len(points) + loops * len(pattern) > MAX_EXPANDED_POINTS:
                raise LimitError(f"{where}channel {ch}: sequence too long to check ({MAX_EXPANDED_POINTS} points)")
            for _ in range(loops):
                points.extend((offset + t, v) for t, v in pattern)
                offset += pattern[-1][0]
        return tuple(points)


def _scaled(points: Points, ratio: float) -> Points:
    return tuple((t, ratio * v) for t, v in points)


def _excursions(points: Points) -> list[tuple[int, int, float]]:
    """(start tick, end tick, peak |V|) of every stretch away from 0 V: from the last vector
    at 0 V before it to the first one after (linear ramps only touch 0 at a vector)."""
    found, start, peak = [], 0, 0.0
    for t, v in points:
        if v == 0:
            if peak:
                found.append((start, t, peak))
            start, peak = t, 0.0
        else:
            peak = max(peak, abs(v))
    return found


def _at(points: Points, ticks: list[int], t: int) -> tuple[float, float]:
    """(value just before, value just after) tick t; a level holds after the last vector."""
    i, j = bisect_left(ticks, t), bisect_right(ticks, t)
    if i < j:
        return points[i][1], points[j - 1][1]
    if i == len(points):
        return points[-1][1], points[-1][1]
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    v = v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return v, v


def _difference(a: Points, b: Points) -> Points:
    """a - b at every vector of either (both sides of a step), itself piecewise linear."""
    ta, tb = [t for t, _ in a], [t for t, _ in b]
    out = []
    for t in sorted(set(ta) | set(tb)):
        (a0, a1), (b0, b1) = _at(a, ta, t), _at(b, tb, t)
        out.append((t, a0 - b0))
        if (a1 - b1) != (a0 - b0):
            out.append((t, a1 - b1))
    return tuple(out)


# --- the driver ---------------------------------------------------------------------------------

def _render(value) -> str:
    if isinstance(value, bool):
        raise TypeError("a WGFMU library argument is never a bool")
    if isinstance(value, (list, tuple)):
        return ",".join(_render(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    return str(value)


def _c_arg(value):
    if isinstance(value, str):
        return value.encode("ascii", errors="replace")
    if isinstance(value, (list, tuple)):
        return (ctypes.c_double * len(value))(*(float(v) for v in value))
    return value


def _by_reference(out):
    return out if isinstance(out, ctypes.Array) else ctypes.byref(out)


class WGFMU(PulseSource):
    """Two WGFMU channels (default 101 on the drive line, 102 on the sense line) running
    pulse-and-read sequences: one pattern per channel per `run_sequence`, each step a flat
    segment between `edge_s` ramps from and back to 0 V, the current of each measuring step
    averaged on the sense channel over its flat part (the value returned is the current
    out of the sense channel: negative when it sinks the device current, as an SMU reports)."""

    PATTERNS = ("memlab_drive", "memlab_sense")
    uses_vendor_library = True   # reached through Keysight's library, not a VISA session of ours

    def __init__(self, address: str, *, limits: Limits, library=None, library_path: str | None = None,
                 channels: Sequence[int] = (101, 102), name: str = "WGFMU",
                 current_range: float | None = None, edge_s: float = 1e-8,
                 line_ratios: dict[int, tuple[float, ...]] | None = None):
        self.address, self.limits, self.name = address, limits, name
        self.resource_name = address
        self.identity = "Keysight B1530A WGFMU (instrument library)"
        self.channels = tuple(channels)
        if current_range is None:   # the largest range the compliance limit admits
            fitting = [a for a in api.CURRENT_RANGES.values() if a <= limits.compliance_current]
            if not fitting:
                raise ValueError(f"{name}: no WGFMU current range within compliance_current "
                                 f"{limits.compliance_current} A (the smallest is 1 uA)")
            current_range = max(fitting)
        codes = {a: c for c, a in api.CURRENT_RANGES.items()}
        if current_range not in codes:
            raise ValueError(f"{name}: current range {current_range} A is not one of {sorted(codes)}")
        self.current_range, self._range_code = current_range, codes[current_range]
        if _ticks_or_none(edge_s) is None or edge_s < TICK:
            raise ValueError(f"{name}: edge_s {edge_s} is not a whole number of 10 ns")
        self.edge_s = edge_s
        self.max_steps = (MAX_VECTORS - 1) // VECTORS_PER_STEP
        self.pulses_sent = 0
        self.round_trips = 0   # times the host waited for the instrument: one per sequence run
        self.guard = Guard(WgfmuGrammar(limits, self.channels, line_ratios), name)
        self.lib = library if library is not None else load_library(library_path)
        self._session = False

    # --- every library call -----------------------------------------------------------------

    def call(self, function: str, *args, out: Sequence = (), retries: int = 0, check: bool = True,
             counts_pulse: bool = False) -> int:
        """`WGFMU_<function>(*args, *out)` once the guard has accepted its text form. Inputs
        are str (const char*), int, float or a list of floats (double*); `out` holds the
        ctypes objects the library writes (passed by reference, arrays as they are). A
        COMMUNICATION_ERROR is retried `retries` times (read-only calls only). Returns the
        library's code; if `check`, a non-zero one raises InstrumentError."""
        text = f"{function} {_render(list(args))}" if args else function
        change = self.guard.check(text)
        fn = getattr(self.lib, f"WGFMU_{function}", None)
        if fn is None:
            raise InstrumentError(self.name, api.FUNCTION_NOT_SUPPORTED_ERROR,
                                  f"the library has no WGFMU_{function}", command=text)
        cargs = [_c_arg(a) for a in args] + [_by_reference(o) for o in out]
        for attempt in range(retries + 1):
            try:
                if counts_pulse:
                    with signals_deferred():   # the count never misses a sequence that left the host
                        self.pulses_sent += 1
                        rc = fn(*cargs)
                else:
                    rc = fn(*cargs)
            except Exception as exc:
                self.guard.state = change.uncertain
                raise InstrumentNotAnswering(f"{self.name}: library call {text!r} failed: {exc!r}") from exc
            if rc != api.COMMUNICATION_ERROR or attempt == retries:
                break
        if rc == api.NO_ERROR:
            self.guard.state = change.after
            return rc
        self.guard.state = change.uncertain
        if check:
            raise self._error(rc, text)
        return rc

    def _error(self, code: int, command: str) -> InstrumentError:
        name = api.ERROR_NAMES.get(code, "unknown WGFMU error code")
        summary = self.error_summary()
        return InstrumentError(self.name, code, f"{name}: {summary}" if summary else name, command=command)

    def error_summary(self) -> str:
        """The library's summary of every error since the last clear ('' if none, or if even
        that cannot be read)."""
        size = ctypes.c_int(0)
        try:
            if self.call("getErrorSummarySize", out=[size], check=False) or size.value <= 0:
                return ""
            buffer = ctypes.create_string_buffer(size.value + 1)
            length = ctypes.c_int(len(buffer))
            if self.call("getErrorSummary", out=[buffer, length], check=False):
                return ""
        except DriverError:
            return ""
        return buffer.value.decode("ascii", errors="replace").strip()

    # --- PulseSource ------------------------------------------------------------------------

    def initialize(self) -> None:
        """Open the session, reset the channels (the guard then knows their state), clear the
        library's patterns and sequences, set Fast IV mode and ranges, connect."""
        if self._session:
            self.close()
        self.call("openSession", self.address)
        self._session = True
        self.call("initialize")
        self.call("clear")
        for name, args in self._channel_setup():
            self.call(name, *args)
        for ch in self.channels:
            self.call("connect", ch)

    def pulse_channels(self) -> list[int]:
        return list(self.channels)

    def _force_range(self) -> int:
        v = self.limits.max_line_voltage
        return (api.FORCE_VOLTAGE_RANGE_3V if v <= 3 else api.FORCE_VOLTAGE_RANGE_5V if v <= 5
                else api.FORCE_VOLTAGE_RANGE_AUTO)

    def _channel_setup(self) -> list[tuple[str, tuple]]:
        calls = []
        for ch in self.channels:
            calls += [("setOperationMode", (ch, api.OPERATION_MODE_FASTIV)),
                      ("setForceVoltageRange", (ch, self._force_range())),
                      ("setMeasureMode", (ch, api.MEASURE_MODE_CURRENT)),
                      ("setMeasureCurrentRange", (ch, self._range_code))]
        return calls

    def _plan(self, drive: int, sense: int, steps: Sequence[PulseStep]) -> tuple[list[tuple[str, tuple]], int]:
        """The calls that set up and fire one run (up to execute), and its measure events."""
        for ch, role in ((drive, "drive"), (sense, "sense")):
            if ch not in self.channels:
                raise ValueError(f"{self.name}: {role} channel {ch} is not one of {self.channels}")
        if drive == sense:
            raise ValueError(f"{self.name}: drive and sense are both channel {drive}")
        if not steps:
            raise ValueError(f"{self.name}: an empty sequence")
        if len(steps) > self.max_steps:
            raise ValueError(f"{self.name}: {len(steps)} steps exceed the {self.max_steps} one sequence holds "
                             f"({MAX_VECTORS} vectors per channel, {VECTORS_PER_STEP} per step)")
        edge = self.edge_s
        times: list[float] = []
        levels = {drive: [], sense: []}
        events: list[tuple] = []
        t = 0
        edge_ticks = round(edge / TICK)
        for k, step in enumerate(steps):
            if not (math.isfinite(step.drive) and math.isfinite(step.sense) and math.isfinite(step.width)):
                raise ValueError(f"{self.name}: step {k} is not finite: {step}")
            if not step.width > 0:
                raise ValueError(f"{self.name}: step {k} has width {step.width} s")
            flat = max(1, round(step.width / TICK))   # widths in whole 10 ns (at least one)
            times += [edge, flat * TICK, edge]
            levels[drive] += [float(step.drive), float(step.drive), 0.0]
            levels[sense] += [float(step.sense), float(step.sense), 0.0]
            if step.measure:
                points = math.ceil(flat * TICK / MAX_AVERAGING_S - 1e-9)
                interval = flat // points
                events.append((f"m{k}", (t + edge_ticks) * TICK, points, interval * TICK, interval * TICK))
            t += 2 * edge_ticks + flat
        n = len(times)
        calls = [("clear", ()), *self._channel_setup()]
        calls += [("connect", (ch,)) for ch in (drive, sense) if self.guard.state.channels[ch].connected is not True]
        for ch, pattern in ((drive, self.PATTERNS[0]), (sense, self.PATTERNS[1])):
            calls += [("createPattern", (pattern, 0.0)), ("addVectors", (pattern, times, levels[ch], n))]
        calls += [("setMeasureEvent", (self.PATTERNS[1], name, start, points, interval, average,
                                       api.MEASURE_EVENT_DATA_AVERAGED))
                  for name, start, points, interval, average in events]
        calls += [("addSequence", (drive, self.PATTERNS[0], 1.0)), ("addSequence", (sense, self.PATTERNS[1], 1.0)),
                  ("execute", ())]
        return calls, len(events)

    def check_sequence(self, drive: int, sense: int, steps: Sequence[PulseStep]) -> None:
        calls, _ = self._plan(drive, sense, steps)
        self.guard.check(";".join(f"{name} {_render(list(args))}" if args else name for name, args in calls))

    @classmethod
    def check_sequence_plan(cls, limits: Limits, drive: int, sense: int, steps: Sequence[PulseStep],
                            channels: Sequence[int] = (101, 102), line_ratios=None, **_options) -> None:
        """Would `run_sequence` pass right after connecting? Nothing is called: the driver
        talks to a library that accepts everything and does nothing."""
        probe = cls("preflight", limits=limits, library=_AcceptsEverything(), channels=channels,
                    line_ratios=line_ratios)
        probe.initialize()
        probe.check_sequence(drive, sense, steps)

    def run_sequence(self, drive: int, sense: int, steps: Sequence[PulseStep], *, stop=None) -> list[float]:
        """One execute for the whole sequence; never retried. A WGFMU sequence is planned whole:
        it cannot end early (`stop`)."""
        if stop is not None:
            raise ValueError(f"{self.name}: a WGFMU sequence cannot end early")
        self.check_sequence(drive, sense, steps)   # the whole plan, before the first call
        calls, n_events = self._plan(drive, sense, steps)
        for name, args in calls[:-1]:
            self.call(name, *args)
        self.round_trips += 1
        try:
            self.call("execute", counts_pulse=True)
            self.call("waitUntilCompleted")
            status, elapsed, total = ctypes.c_int(), ctypes.c_double(), ctypes.c_double()
            self.call("getStatus", out=[status, elapsed, total], retries=1)
            # GUESS: DONE = finished with data still to read; COMPLETED = finished and read
            if status.value not in (api.STATUS_COMPLETED, api.STATUS_DONE):
                raise PulseOutcomeUnknown(f"{self.name}: sequence status after waiting is "
                                          f"{api.STATUS_NAMES.get(status.value, status.value)}, not completed")
            return self._read_values(sense, n_events)
        except (DriverError, OSError) as exc:
            if isinstance(exc, PulseOutcomeUnknown):
                raise
            raise PulseOutcomeUnknown(f"{self.name}: the sequence was sent but its completion and "
                                      f"measurements were not confirmed: {exc}") from exc

    def _read_values(self, sense: int, n_events: int) -> list[float]:
        if not n_events:
            return []
        measured, total = ctypes.c_int(), ctypes.c_int()
        self.call("getMeasureValueSize", sense, out=[measured, total], retries=1)
        if measured.value != n_events or total.value != n_events:
            raise PulseOutcomeUnknown(f"{self.name}: {measured.value} of {total.value} values measured on "
                                      f"channel {sense}, {n_events} measuring steps expected")
        size = ctypes.c_int(n_events)
        times, values = (ctypes.c_double * n_events)(), (ctypes.c_double * n_events)()
        self.call("getMeasureValues", sense, 0, out=[size, times, values], retries=1)
        if size.value != n_events:
            raise PulseOutcomeUnknown(f"{self.name}: {size.value} values read, {n_events} expected")
        return list(values)

    def safe_state(self) -> None:
        """Sequencers stopped, both outputs forced to 0 V and disconnected. Every step is tried
        whatever failed before it; the first failure is raised at the end."""
        if not self._session:
            return
        failures: list[DriverError] = []
        with signals_deferred():
            steps = [("abort", ())]
            for ch in self.channels:
                steps += [("setOperationMode", (ch, api.OPERATION_MODE_DC)), ("dcforceVoltage", (ch, 0.0)),
                          ("disconnect", (ch,))]
            for name, args in steps:
                try:
                    self.call(name, *args)
                except DriverError as exc:
                    failures.append(exc)
        if failures:
            raise failures[0]

    def close(self) -> None:
        try:
            self.safe_state()
        finally:
            if self._session:
                try:   # refused while an output may be connected: the session stays for another safe_state
                    self.call("closeSession", check=False)
                    self._session = False
                except LimitError:
                    pass


def _ticks_or_none(seconds: float) -> int | None:
    try:
        return _ticks(seconds, "")
    except LimitError:
        return None


class _AcceptsEverything:
    """Every WGFMU_ call succeeds and does nothing (for checking plans with the guard)."""

    def __getattr__(self, name: str):
        if not name.startswith("WGFMU_"):
            raise AttributeError(name)
        return lambda *args: api.NO_ERROR

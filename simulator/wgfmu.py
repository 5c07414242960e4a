"""An emulated Keysight B1530A WGFMU instrument library: the functions of `wgfmu.h`, called
as a ctypes binding of wgfmu.dll is called (names `WGFMU_*`; strings as bytes; ints and
floats; results written through ctypes objects passed by reference or as arrays; an int
return code, 0 or one of the library's negative error codes), driving the source hardware
of an emulated bench.

Written from the instrument library's reference: the library keeps a software setup
(channel settings, patterns of vectors, measure events, sequences) that `update` or
`execute` sends to the channels; `execute` runs every channel's sequencer, and each channel
keeps its last level afterwards; measured values are read back per channel. Here
`execute` runs the whole sequence at once on the hardware (segment by segment in virtual
time) and `waitUntilCompleted` returns at once. Details the reference does not state are
marked GUESS.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field

TICK = 1e-8                     # 10 ns: the resolution of vector and event times
MAX_DELTA_TIME = 10995.11627775
MAX_VOLTS = 10.0
# GUESS: the sequencer memory holds 2048 vectors per channel (initial points included)
MAX_VECTORS = 2048
MAX_EXPANDED = 200_000          # the emulator's own limit on loops x vectors it will play
MAX_INTERVAL = 1.34217728       # s, setMeasureEvent sampling interval
MAX_AVERAGING = 20e-3           # s, setMeasureEvent averaging time
# GUESS: in PG mode the output is 50 ohm: the current it can push is 10 V / 50 ohm
PG_CURRENT = 0.2

ERRORS = {-1: "WGFMU_PARAMETER_OUT_OF_RANGE_ERROR", -2: "WGFMU_ILLEGAL_STRING_ERROR", -3: "WGFMU_CONTEXT_ERROR",
          -4: "WGFMU_FUNCTION_NOT_SUPPORTED_ERROR", -5: "WGFMU_COMMUNICATION_ERROR", -6: "WGFMU_FW_ERROR",
          -7: "WGFMU_LIBRARY_ERROR", -8: "WGFMU_ERROR", -9: "WGFMU_CHANNEL_NOT_FOUND_ERROR",
          -10: "WGFMU_PATTERN_NOT_FOUND_ERROR", -11: "WGFMU_EVENT_NOT_FOUND_ERROR",
          -12: "WGFMU_PATTERN_ALREADY_EXISTS_ERROR", -13: "WGFMU_SEQUENCER_NOT_RUNNING_ERROR",
          -14: "WGFMU_RESULT_NOT_READY_ERROR", -15: "WGFMU_RESULT_OUT_OF_DATE"}
OUT_OF_RANGE, ILLEGAL_STRING, CONTEXT, NOT_SUPPORTED, COMMUNICATION = -1, -2, -3, -4, -5
CHANNEL_NOT_FOUND, PATTERN_NOT_FOUND, PATTERN_EXISTS, NOT_RUNNING, NOT_READY = -9, -10, -12, -13, -14

DC, FASTIV, PG, SMU = 2000, 2001, 2002, 2003
FORCE_RANGES = {3000: MAX_VOLTS, 3001: 3.0, 3002: 5.0, 3003: MAX_VOLTS, 3004: MAX_VOLTS}   # code -> |V| max
MEASURE_VOLTAGE, MEASURE_CURRENT = 4000, 4001
VOLTAGE_RANGES = (5001, 5002)
CURRENT_RANGES = {6001: 1e-6, 6002: 1e-5, 6003: 1e-4, 6004: 1e-3, 6005: 1e-2}
AVERAGED, RAW = 12000, 12001
COMPLETED, DONE, RUNNING, IDLE = 10000, 10001, 10002, 10006


class _Fail(Exception):
    def __init__(self, code: int, message: str):
        self.code, self.message = code, message


@dataclass
class _Channel:
    # software setup (GUESS: these defaults, which `clear` restores)
    mode: int = FASTIV
    force_range: int = 3000
    measure_mode: int = MEASURE_VOLTAGE
    voltage_range: int = 5002
    current_range: int = 6004
    # hardware
    connected: bool = False
    level: float = 0.0

    def reset_setup(self) -> None:
        fresh = _Channel()
        self.mode, self.force_range, self.measure_mode = fresh.mode, fresh.force_range, fresh.measure_mode
        self.voltage_range, self.current_range = fresh.voltage_range, fresh.current_range

    @property
    def current_limit(self) -> float:
        return PG_CURRENT if self.mode == PG else CURRENT_RANGES[self.current_range]


@dataclass
class _Event:
    name: str
    start: int          # ticks from the pattern's start
    points: int
    interval: int       # ticks
    averaging: int      # ticks (0: one instantaneous sample per point)
    raw: bool

    @property
    def end(self) -> int:
        return self.start + (self.points - 1) * self.interval + self.averaging


@dataclass
class _Pattern:
    points: list[tuple[int, float]]   # (tick, volts) from the pattern's start
    events: list[_Event] = field(default_factory=list)


def _write(ref, value) -> None:
    """Store through an out-parameter: byref(x), pointer(x) or x itself."""
    target = getattr(ref, "_obj", ref)
    if isinstance(target, ctypes._Pointer):
        target = target.contents
    target.value = value


def _array(ref):
    target = getattr(ref, "_obj", ref)
    return target


def _read(ref):
    target = getattr(ref, "_obj", ref)
    if isinstance(target, ctypes._Pointer):
        target = target.contents
    return target.value


def _text(raw) -> str:
    if isinstance(raw, ctypes.c_char_p):
        raw = raw.value
    if not isinstance(raw, bytes) or not raw:
        raise _Fail(ILLEGAL_STRING, f"{raw!r} is not a name")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Fail(ILLEGAL_STRING, f"{raw!r} is not an ASCII name") from None


def _ticks(seconds, lo: float, hi: float, what: str) -> int:
    seconds = float(seconds)
    if not (math.isfinite(seconds) and lo <= seconds <= hi):
        raise _Fail(OUT_OF_RANGE, f"{what} {seconds!r} s outside [{lo:g}, {hi:g}] s")
    return round(seconds / TICK)   # GUESS: times are rounded to the nearest 10 ns


def _api(needs_session: bool = True, bus: bool = False):
    """Error handling shared by every library function: an exception becomes its code,
    and its message goes to the error queue and summary. A `bus` function reaches the
    instrument (the others only build the library's own tables until update/execute): each
    call costs one transaction of instrument time."""
    def wrap(fn):
        name = f"WGFMU_{fn.__name__.removeprefix('_f_')}"

        def call(self, *args):
            fault = self.faults.pop(name, None)
            if bus and self.transaction_s and self.session is not None:
                self.hardware.advance(self.transaction_s)
            try:
                if fault is not None and not fault[1]:
                    raise _Fail(fault[0], "injected fault")
                if needs_session and self.session is None:
                    raise _Fail(CONTEXT, "no session is open")
                try:
                    fn(self, *args)
                except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
                    raise _Fail(OUT_OF_RANGE, f"bad argument: {exc}") from None
                if fault is not None:
                    raise _Fail(fault[0], "injected fault")
                return 0
            except _Fail as failure:
                self._log.add(f"{name}: {failure.message} ({ERRORS.get(failure.code, failure.code)})")
                return failure.code
        call.__name__ = name
        return call
    return wrap


class EmulatedWgfmuLibrary:
    """The WGFMU library of one B1500 with WGFMU channels `channels`, on `hardware`."""

    def __init__(self, hardware, *, channels=(101, 102), address_prefix: str | None = None,
                 transaction_s: float = 0.0):
        self.hardware = hardware
        self.transaction_s = transaction_s   # instrument time per call that reaches the instrument
        self.executions = 0                  # sequences run (what a test compares the journal with)
        self.channel_ids = tuple(channels)
        self.address_prefix = address_prefix
        self.session: str | None = None
        self.timeout_s = 100.0
        self.faults: dict[str, tuple[int, bool]] = {}
        self._channels = {ch: _Channel() for ch in self.channel_ids}
        self._patterns: dict[str, _Pattern] = {}
        self._sequences: dict[int, list[tuple[str, int]]] = {ch: [] for ch in self.channel_ids}
        self._log = _ErrorLog()
        self._results: dict[int, list[tuple[float, float]]] = {}
        self._fetched: set[int] = set()   # channels whose values have all been read
        self._status, self._elapsed, self._total = IDLE, 0.0, 0.0

    @classmethod
    def emulate(cls, hardware, options: dict, timing) -> "EmulatedWgfmuLibrary":
        """The library a bench file's instrument entry describes (options: channels)."""
        return cls(hardware, channels=tuple(options.get("channels", (101, 102))),
                   transaction_s=timing.transaction_s)

    def fail_next(self, function: str, code: int, *, after: bool = False) -> None:
        """The next call of `function` returns `code`: instead of running, or (`after`) once
        it has run (its outcome then real but unreported)."""
        self.faults[function] = (code, after)

    def __getattr__(self, name: str):
        if name.startswith("WGFMU_"):   # the rest of the header: not emulated
            def unsupported(*args):
                self._log.add(f"{name}: not supported by the emulated library ({ERRORS[NOT_SUPPORTED]})")
                return NOT_SUPPORTED
            return unsupported
        raise AttributeError(name)

    def _channel(self, ch) -> _Channel:
        if not isinstance(ch, int) or ch not in self._channels:
            raise _Fail(CHANNEL_NOT_FOUND, f"channel {ch!r} not found")
        return self._channels[ch]

    def _pattern(self, name) -> _Pattern:
        text = _text(name)
        if text not in self._patterns:
            raise _Fail(PATTERN_NOT_FOUND, f"pattern {text!r} not found")
        return self._patterns[text]

    def _output(self, ch: int) -> None:
        c = self._channels[ch]
        self.hardware.apply({ch: (c.level, c.current_limit) if c.connected else None})

    # --- Common - Initialize -------------------------------------------------------------

    @_api(needs_session=False)
    def _f_openSession(self, address):
        text = _text(address)
        if self.session is not None:
            raise _Fail(CONTEXT, f"a session to {self.session!r} is already open")   # GUESS
        if self.address_prefix is not None and not text.startswith(self.address_prefix):
            raise _Fail(COMMUNICATION, f"no B1500 answers at {text!r}")
        self.session = text

    @_api()
    def _f_closeSession(self):
        self.session = None

    @_api(bus=True)
    def _f_initialize(self):
        """Resets the channels: outputs off at 0 V (GUESS: disconnected)."""
        for ch, c in self._channels.items():
            c.level, c.connected = 0.0, False
            self._output(ch)
        self._results, self._fetched = {}, set()
        self._status = IDLE

    @_api(needs_session=False)
    def _f_setTimeout(self, seconds):
        if not float(seconds) >= 1:
            raise _Fail(OUT_OF_RANGE, f"timeout {seconds} s below 1 s")
        self.timeout_s = float(seconds)

    @_api()
    def _f_getChannelIdSize(self, size):
        _write(size, len(self.channel_ids))

    @_api()
    def _f_getChannelIds(self, ids, size):
        n = _read(size)
        for i, ch in enumerate(self.channel_ids[:n]):
            _array(ids)[i] = ch
        _write(size, min(n, len(self.channel_ids)))

    # --- Common - Error and Warning ------------------------------------------------------

    @_api(needs_session=False)
    def _f_getErrorSize(self, size):
        _write(size, len(self._log.pending[0]) + 1 if self._log.pending else 0)

    @_api(needs_session=False)
    def _f_getError(self, buffer, size):
        text = self._log.pending.pop(0) if self._log.pending else ""
        self._copy_text(text, buffer, size)

    @_api(needs_session=False)
    def _f_getErrorSummarySize(self, size):
        text = self._summary_text()
        # GUESS: the size counts the terminating NUL; 0 when there is no error
        _write(size, len(text) + 1 if text else 0)

    @_api(needs_session=False)
    def _f_getErrorSummary(self, buffer, size):
        self._copy_text(self._summary_text(), buffer, size)

    def _summary_text(self) -> str:
        return "\n".join(self._log.summary)

    @staticmethod
    def _copy_text(text: str, buffer, size) -> None:
        capacity = _read(size)
        data = text.encode("ascii", errors="replace")[:max(capacity - 1, 0)] + b"\0"
        if capacity > 0:
            ctypes.memmove(_array(buffer), data, len(data))
        _write(size, len(data))

    # --- Common - Setup ---------------------------------------------------------------------

    @_api()
    def _f_setOperationMode(self, ch, mode):
        c = self._channel(ch)
        if mode not in (DC, FASTIV, PG, SMU):
            raise _Fail(OUT_OF_RANGE, f"operation mode {mode}")
        c.mode = mode

    @_api()
    def _f_getOperationMode(self, ch, mode):
        _write(mode, self._channel(ch).mode)

    @_api()
    def _f_setForceVoltageRange(self, ch, code):
        c = self._channel(ch)
        if code not in FORCE_RANGES:
            raise _Fail(OUT_OF_RANGE, f"force voltage range {code}")
        c.force_range = code

    @_api()
    def _f_setMeasureMode(self, ch, mode):
        c = self._channel(ch)
        if mode not in (MEASURE_VOLTAGE, MEASURE_CURRENT):
            raise _Fail(OUT_OF_RANGE, f"measure mode {mode}")
        c.measure_mode = mode

    @_api()
    def _f_getMeasureMode(self, ch, mode):
        _write(mode, self._channel(ch).measure_mode)

    @_api()
    def _f_setMeasureVoltageRange(self, ch, code):
        c = self._channel(ch)
        if code not in VOLTAGE_RANGES:
            raise _Fail(OUT_OF_RANGE, f"measure voltage range {code}")
        c.voltage_range = code

    @_api()
    def _f_setMeasureCurrentRange(self, ch, code):
        c = self._channel(ch)
        if code not in CURRENT_RANGES:
            raise _Fail(OUT_OF_RANGE, f"measure current range {code}")
        c.current_range = code

    @_api()
    def _f_getMeasureCurrentRange(self, ch, code):
        _write(code, self._channel(ch).current_range)

    @_api()
    def _f_setForceDelay(self, ch, delay):
        self._channel(ch)
        if not abs(float(delay)) <= 50e-9:
            raise _Fail(OUT_OF_RANGE, f"delay {delay} s outside +/-50 ns")
        # GUESS: the emulator plays no delay (the driver never sets one)

    _f_setMeasureDelay = _f_setForceDelay

    # --- Common - Measurement ----------------------------------------------------------------

    @_api(bus=True)
    def _f_connect(self, ch):
        self._channel(ch).connected = True
        self._output(ch)

    @_api(bus=True)
    def _f_disconnect(self, ch):
        self._channel(ch).connected = False
        self._output(ch)

    # --- WGFMU - Initialize, patterns, events, sequences ------------------------------------

    @_api(needs_session=False)
    def _f_clear(self):
        """The software setup: patterns, sequences, errors and (GUESS) channel settings.
        The hardware is not changed."""
        self._patterns = {}
        self._sequences = {ch: [] for ch in self.channel_ids}
        self._log = _ErrorLog()
        for c in self._channels.values():
            c.reset_setup()

    def _volts(self, value) -> float:
        volts = float(value)
        if not (math.isfinite(volts) and abs(volts) <= MAX_VOLTS):
            raise _Fail(OUT_OF_RANGE, f"voltage {value!r} outside +/-{MAX_VOLTS} V")
        return volts

    @_api(needs_session=False)
    def _f_createPattern(self, name, initial):
        text = _text(name)
        if text in self._patterns:
            raise _Fail(PATTERN_EXISTS, f"pattern {text!r} already exists")
        self._patterns[text] = _Pattern([(0, self._volts(initial))])

    @_api(needs_session=False)
    def _f_addVector(self, name, delta, volts):
        pattern = self._pattern(name)
        dt = _ticks(delta, TICK, MAX_DELTA_TIME, "incremental time")
        pattern.points.append((pattern.points[-1][0] + dt, self._volts(volts)))

    @_api(needs_session=False)
    def _f_addVectors(self, name, deltas, volts, size):
        pattern = self._pattern(name)
        if not isinstance(size, int) or size < 1:
            raise _Fail(OUT_OF_RANGE, f"size {size!r}")
        dts, vs = _array(deltas), _array(volts)
        new = [(_ticks(dts[i], TICK, MAX_DELTA_TIME, "incremental time"), self._volts(vs[i])) for i in range(size)]
        t = pattern.points[-1][0]
        for dt, v in new:   # all or nothing
            t += dt
            pattern.points.append((t, v))

    @_api(needs_session=False)
    def _f_setMeasureEvent(self, pattern_name, event_name, time, points, interval, averaging, raw):
        pattern = self._pattern(pattern_name)
        name = _text(event_name)
        if any(e.name == name for e in pattern.events):
            raise _Fail(OUT_OF_RANGE, f"event {name!r} already in the pattern")   # GUESS: the code
        if not isinstance(points, int) or points < 1:
            raise _Fail(OUT_OF_RANGE, f"measurement points {points!r}")
        start = _ticks(time, 0.0, MAX_DELTA_TIME * MAX_VECTORS, "event time")
        step = _ticks(interval, TICK, MAX_INTERVAL, "sampling interval")
        average = 0 if float(averaging) == 0 else _ticks(averaging, TICK, MAX_AVERAGING, "averaging time")
        if average > step:
            raise _Fail(OUT_OF_RANGE, "averaging time longer than the sampling interval")   # GUESS
        if raw not in (AVERAGED, RAW):
            raise _Fail(OUT_OF_RANGE, f"raw data mode {raw}")
        pattern.events.append(_Event(name, start, points, step, average, raw == RAW))

    @_api()
    def _f_addSequence(self, ch, name, loops):
        self._channel(ch)
        self._pattern(name)
        count = float(loops)
        if count != int(count) or not 1 <= count <= 1e12:   # GUESS: whole counts from 1
            raise _Fail(OUT_OF_RANGE, f"loop count {loops}")
        self._sequences[ch].append((_text(name), int(count)))

    @_api()
    def _f_addSequences(self, ch, names, loops, size):
        self._channel(ch)
        entries = []
        for i in range(size):
            self._pattern(_array(names)[i])
            count = float(_array(loops)[i])
            if count != int(count) or not 1 <= count <= 1e12:
                raise _Fail(OUT_OF_RANGE, f"loop count {count}")
            entries.append((_text(_array(names)[i]), int(count)))
        self._sequences[ch].extend(entries)

    # --- WGFMU - Measurement ---------------------------------------------------------------

    def _compile(self, ch: int):
        """The channel's sequence as (tick, volts) points and sampling windows (start, end,
        event index); and its events (the value slots), checked against the memory."""
        vectors = sum(len(self._patterns[name].points) for name, _ in self._sequences[ch])
        if vectors > MAX_VECTORS:
            raise _Fail(OUT_OF_RANGE, f"channel {ch}: {vectors} vectors exceed the {MAX_VECTORS} "
                                      f"the sequencer holds")
        points: list[tuple[int, float]] = []
        windows: list[tuple[int, int, int]] = []
        events: list[_Event] = []
        offset = 0
        for name, loops in self._sequences[ch]:
            pattern = self._patterns[name]
            length = pattern.points[-1][0]
            for e in pattern.events:
                if e.end > length:
                    raise _Fail(OUT_OF_RANGE, f"event {e.name!r} ends after pattern {name!r}")
            if len(points) + loops * len(pattern.points) > MAX_EXPANDED:
                raise _Fail(NOT_SUPPORTED, f"channel {ch}: the emulator plays at most {MAX_EXPANDED} vectors")
            for _ in range(loops):
                points.extend((offset + t, v) for t, v in pattern.points)
                for e in pattern.events:
                    events.append(e)
                    for k in range(e.points):
                        s = offset + e.start + k * e.interval
                        windows.append((s, s + e.averaging, len(events) - 1))
                offset += length
        return points, windows, events

    @_api(bus=True)
    def _f_update(self):
        for ch in self.channel_ids:
            self._compile(ch)

    @_api(bus=True)
    def _f_updateChannel(self, ch):
        self._channel(ch)
        self._compile(ch)

    @_api(bus=True)
    def _f_execute(self):
        runs = {}
        for ch, c in self._channels.items():
            if self._sequences[ch] and c.mode in (FASTIV, PG):
                runs[ch] = self._compile(ch)
        self._status = RUNNING
        self._results, self._fetched = {}, set()
        self.executions += 1
        total = self._play(runs)
        self._status = DONE if any(events for _, _, events in runs.values()) else COMPLETED
        self._elapsed = self._total = total

    @_api(bus=True)
    def _f_abort(self):
        if self._status in (RUNNING, DONE):
            self._status = 10003   # ABORT_COMPLETED (the sequence already ran to its end here)

    @_api(bus=True)
    def _f_waitUntilCompleted(self):
        if self._status == IDLE:
            raise _Fail(NOT_RUNNING, "nothing was executed")   # GUESS: the code

    @_api(bus=True)
    def _f_getStatus(self, status, elapsed, total):
        _write(status, self._status)
        _write(elapsed, self._elapsed)
        _write(total, self._total)

    @_api(bus=True)
    def _f_getChannelStatus(self, ch, status, elapsed, total):
        self._channel(ch)
        _write(status, self._status)
        _write(elapsed, self._elapsed)
        _write(total, self._total)

    @_api(bus=True)
    def _f_getMeasureValueSize(self, ch, measured, total):
        self._channel(ch)
        n = len(self._results.get(ch, []))
        _write(measured, n)
        _write(total, n)

    @_api(bus=True)
    def _f_getMeasureValues(self, ch, offset, size, times, values):
        self._channel(ch)
        if ch not in self._results:
            raise _Fail(NOT_READY, f"channel {ch}: no measured values")
        data, n = self._results[ch], _read(size)
        if not (isinstance(offset, int) and 0 <= offset and n >= 0 and offset + n <= len(data)):
            raise _Fail(OUT_OF_RANGE, f"values {offset}..{offset + n - 1} of {len(data)}")
        for i in range(n):
            _array(times)[i], _array(values)[i] = data[offset + i]
        _write(size, n)
        if offset + n == len(data):
            self._fetched.add(ch)
            if self._fetched >= set(self._results):
                self._status = COMPLETED

    @_api(bus=True)
    def _f_getMeasureValue(self, ch, index, time, value):
        self._channel(ch)
        data = self._results.get(ch)
        if data is None:
            raise _Fail(NOT_READY, f"channel {ch}: no measured values")
        if not (isinstance(index, int) and 0 <= index < len(data)):
            raise _Fail(OUT_OF_RANGE, f"index {index} of {len(data)}")
        _write(time, data[index][0])
        _write(value, data[index][1])

    @_api()
    def _f_getInterpolatedForceValue(self, ch, time, value):
        self._channel(ch)
        points = self._compile(ch)[0] or [(0, self._channels[ch].level)]
        _write(value, _value_at(points, float(time) / TICK))

    # --- DC - Measure ------------------------------------------------------------------------

    @_api(bus=True)
    def _f_dcforceVoltage(self, ch, volts):
        c = self._channel(ch)
        if c.mode != DC:
            raise _Fail(CONTEXT, f"channel {ch} is not in the DC mode")   # GUESS
        volts = self._volts(volts)
        if abs(volts) > FORCE_RANGES[c.force_range]:
            raise _Fail(OUT_OF_RANGE, f"{volts} V outside the force range")
        c.level = volts
        self._output(ch)

    @_api(bus=True)
    def _f_dcmeasureValue(self, ch, value):
        c = self._channel(ch)
        if c.mode != DC:
            raise _Fail(CONTEXT, f"channel {ch} is not in the DC mode")
        _write(value, self._sample(ch, 0.0))

    def _sample(self, ch: int, seconds: float) -> float:
        c = self._channels[ch]
        if not c.connected:   # the output relay is open: nothing to measure, time still passes
            self.hardware.advance(seconds)
            return 0.0
        if c.measure_mode == MEASURE_VOLTAGE:
            return self.hardware.measure_voltage(ch, seconds)
        limit = c.current_limit
        # GUESS: readings saturate at the full scale of the range
        return max(-limit, min(limit, self.hardware.measure_current(ch, seconds)))

    # --- playing the waveforms on the hardware ----------------------------------------------

    def _play(self, runs: dict) -> float:
        """Every running channel's waveform, interval by interval between all vectors and
        sampling windows: each interval at the channels' mean levels over it (exact on
        flat parts, the midpoint of a ramp), sampled where a window covers it."""
        if not runs:
            return 0.0
        cuts = {0}
        for points, windows, _ in runs.values():
            cuts.update(t for t, _ in points)
            for s, e, _ in windows:
                cuts.update((s, e))
        cuts = sorted(cuts)
        sums = {ch: [[0.0, 0.0, 0] for _ in windows] for ch, (_, windows, _) in runs.items()}
        order = {ch: sorted(range(len(w)), key=lambda i, w=w: w[i][0]) for ch, (_, w, _) in runs.items()}
        nxt = dict.fromkeys(runs, 0)
        active: dict[int, list[int]] = {ch: [] for ch in runs}
        for a, b in zip(cuts, cuts[1:] + [None]):
            end = a if b is None else b
            mid = a if b is None else (a + b) / 2
            outputs = {}
            for ch, (points, _, _) in runs.items():
                c = self._channels[ch]
                c.level = _value_at(points, mid)
                outputs[ch] = (c.level, c.current_limit) if c.connected else None
            self.hardware.apply(outputs)
            measuring = []
            for ch, (_, windows, _) in runs.items():
                while nxt[ch] < len(order[ch]) and windows[order[ch][nxt[ch]]][0] == a:
                    active[ch].append(order[ch][nxt[ch]])
                    nxt[ch] += 1
                for w in [w for w in active[ch] if windows[w][1] == windows[w][0]]:   # instantaneous
                    sums[ch][w] = [self._sample(ch, 0.0), 1.0, 1]
                active[ch] = [w for w in active[ch] if windows[w][1] > a]
                if active[ch]:
                    measuring.append(ch)
            dt = (end - a) * TICK
            for n, ch in enumerate(measuring):   # the first sample lets the time pass
                current = self._sample(ch, dt if n == 0 else 0.0)
                for w in active[ch]:
                    sums[ch][w][0] += current * dt
                    sums[ch][w][1] += dt
            if not measuring and dt > 0:
                self.hardware.advance(dt)
            for ch in runs:
                active[ch] = [w for w in active[ch] if runs[ch][1][w][1] > end]
        for ch, (points, windows, events) in runs.items():
            c = self._channels[ch]
            if c.connected:
                for peak, width in _excursions(points):
                    self.hardware.note_pulse(peak, width * TICK, c.current_limit)
            self._results[ch] = self._values(windows, events, sums[ch])
        return cuts[-1] * TICK

    @staticmethod
    def _values(windows, events, sums) -> list[tuple[float, float]]:
        """(time, value) per sampling point (RAW) or per event (AVERAGED); a point's time is
        the middle of its averaging window, an event's the middle of the event."""
        per_event: dict[int, list[tuple[float, float]]] = {}
        for (s, e, k), (total, seconds, count) in zip(windows, sums):
            value = total / seconds if seconds else 0.0
            per_event.setdefault(k, []).append(((s + e) / 2 * TICK, value))
        out = []
        for k in sorted(per_event):
            samples = per_event[k]
            if events[k].raw:
                out.extend(samples)
            else:
                first, last = _window_span(windows, k)
                out.append(((first + last) / 2 * TICK, sum(v for _, v in samples) / len(samples)))
        return out


def _window_span(windows, k: int) -> tuple[int, int]:
    starts = [s for s, _, j in windows if j == k]
    ends = [e for _, e, j in windows if j == k]
    return min(starts), max(ends)


def _value_at(points: list[tuple[int, float]], t: float) -> float:
    """The piecewise-linear waveform at tick t (not at a step: the later level there)."""
    if t >= points[-1][0]:
        return points[-1][1]
    lo, hi = 0, len(points) - 1
    while hi - lo > 1:   # the last point at or before t
        m = (lo + hi) // 2
        if points[m][0] <= t:
            lo = m
        else:
            hi = m
    (t0, v0), (t1, v1) = points[lo], points[lo + 1]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def _excursions(points) -> list[tuple[float, int]]:
    """(peak |V|, ticks) of each stretch of a waveform away from 0 V, counted as pulses."""
    found, start, peak = [], 0, 0.0
    for t, v in points:
        if v == 0:
            if peak > 0:
                found.append((peak, t - start))
            start, peak = t, 0.0
        else:
            peak = max(peak, abs(v))
    if peak > 0:   # still away from 0 V at the end: held until something changes it
        found.append((peak, points[-1][0] - start))
    return found


@dataclass
class _ErrorLog:
    """The library's error messages: the summary keeps every one until clear (GUESS: one
    line each, "function: message (code name)"); getError takes the oldest not yet taken."""

    summary: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.summary.append(text)
        self.pending.append(text)


# the library's function names, without the `_f_` prefix of their definitions
for _name in [n for n in vars(EmulatedWgfmuLibrary) if n.startswith("_f_")]:
    setattr(EmulatedWgfmuLibrary, f"WGFMU_{_name[3:]}", getattr(EmulatedWgfmuLibrary, _name))

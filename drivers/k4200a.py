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

import math
import re
import time
from collections.abc import Sequence

from .errors import InstrumentError, InstrumentNotAnswering, LimitError, PulseOutcomeUnknown, ReplyError
from .guard import Guard
from .interfaces import Levels, Measurement, PulseSource, PulseStep, SourceMeter, Stop, level_pairs
from .kxci import (BARE_READING, ERROR_REPLY, KULT_LIBRARY, KULT_OUTPUT_PARAM, KULT_PULSE_READ,
                   KULT_RAMP_OUTPUT_PARAM, KULT_RAMP_READ, KULT_RETURN, MAX_CHECKED_SEGMENTS, MIN_VOLTAGE_STEP,
                   NAME_TEXT, NO_ERROR_CODE, PMU_CHANNELS, PMU_CURRENT_RANGES, RAMP_LINEAR_TOLERANCE_V,
                   SEGMENT_MIN_S, SEGMENT_RESOLUTION_S, SEGMENTS_PER_STEP, SMU_CHANNELS, STATUS_BUSY,
                   STATUS_DATA_READY, SYSTEM_READING, VALUES_PER_CALL, VAR1_MAX_POINTS, VAR2_MAX_POINTS,
                   KxciGrammar, SystemReading, kxci_channel, kxci_number, parse_reading, var1_levels)
from .limits import Limits
from .signals import signals_deferred
from .visa import VisaInstrument


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
        m = ERROR_REPLY.match(text)
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
        return f"DV{channel},0,{kxci_number(volts)},{kxci_number(compliance)}"

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
            commands += [f":PMU:MEASURE:RANGE {p},2,{kxci_number(self._range_for(ch))}",
                         f":PMU:SARB:SEQ:TIME {p},1," + ",".join(kxci_number(t) for t in times),
                         f":PMU:SARB:SEQ:STARTV {p},1," + ",".join(kxci_number(v) for v in start),
                         f":PMU:SARB:SEQ:STOPV {p},1," + ",".join(kxci_number(v) for v in stop),
                         f":PMU:SARB:SEQ:MEAS:TYPE {p},1," + ",".join(str(k) for k in kinds[ch]),
                         f":PMU:SARB:SEQ:MEAS:START {p},1," + ",".join("0" for _ in times),
                         f":PMU:SARB:SEQ:MEAS:STOP {p},1," + ",".join(kxci_number(t) for t in stops[ch]),
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
        self._send_once(":PMU:EXECUTE")
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
        args = [str(kxci_channel(drive)), str(kxci_channel(sense)), kxci_number(w_drive), kxci_number(w_sense), kxci_number(w_width),
                kxci_number(read[0]), kxci_number(read[1]), str(reads), str(writes), kxci_number(self._range_for(sense)), "",
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
        args = [str(kxci_channel(drive)), str(kxci_channel(sense)), kxci_number(start[0]), kxci_number(step[0]), kxci_number(start[1]),
                kxci_number(step[1]), kxci_number(width), kxci_number(read[0]), kxci_number(read[1]), str(reads), str(writes),
                kxci_number(abs(stop.current)), "1" if stop.rising else "0", kxci_number(self._range_for(sense)), "",
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
        self._send_once(command)
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
        commands += ["SS", f"VR1,{kxci_number(start)},{kxci_number(stop)},{kxci_number(step)},{kxci_number(compliance)}"]
        for k in held:
            level = self.guard.state.levels.get(k)
            if level is None:
                raise LimitError(f"{self.name}: the level of SMU {k} is unknown: it cannot be held through the sweep")
            commands.append(f"VC{k},{kxci_number(level)},{kxci_number(self._compliance_of(k))}")
        commands += [f"HT {kxci_number(hold)}", f"DT {kxci_number(delay)}", f"IT{self.sweep_integration}", "SM", "DM2",
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

    def _send_once(self, message: str) -> None:
        """A message that applies pulses: sent once, counted as it leaves the host (never
        retried); its reply is read by the caller."""
        self.drain()
        with signals_deferred():
            self._awaiting_reply = True
            self.write(message)
            self.pulses_sent += 1

    def _run_system_test(self, trigger: str) -> None:
        """The trigger (counted as it leaves the host, never repeated), its ACK, then SP polled
        until the busy bit clears with data ready."""
        self._send_once(trigger)
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
        if not NAME_TEXT.fullmatch(name):
            raise ValueError(f"{self.name}: {name!r} is not a KXCI name")
        reply = self.query(f"DO '{name}'", retries=1)
        matches = [SYSTEM_READING.match(f.strip()) for f in reply.split(",")] if reply else []
        if not matches or not all(matches):
            error = self._failed(reply, f"DO '{name}'")
            raise error or ReplyError(f"{self.name}: DO '{name}' answered {reply!r}, not readings")
        return [SystemReading(m.group(1), float(m.group(2))) for m in matches]

    def read_point(self, name: str, index: int) -> float | None:
        """The `index`-th reading (from 1) of `name` (`RD`); None past the last one."""
        if not NAME_TEXT.fullmatch(name) or index < 1:
            raise ValueError(f"{self.name}: RD of {name!r} at {index}")
        reply = self.query(f"RD '{name}',{int(index)}", retries=1)
        if reply == "0":
            return None
        if not BARE_READING.fullmatch(reply):
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

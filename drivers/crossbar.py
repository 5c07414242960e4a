"""The crossbar access layer over instruments: "read device (r, c)" and "pulse (r, c) with
the V/3 scheme" become switch-matrix routes and source commands.

Four source channels play four bias roles, each cabled to one switch input:
`drive` (selected row), `sense` (selected column, held at 0 V, measures), `row_third`
(unselected rows) and `col_two_thirds` (unselected columns). Every line is always connected
to the source of its role, so moving to the next device in the same row changes only the
relays of the two columns involved. Relays only move while every source is at 0 V.

A bench may also have a fast pulse source (a 4225-PMU, a B1530A WGFMU) whose two channels
reach the crossbar through their own switch inputs (`Wiring.pulse`): its drive channel on the
selected row, its sense channel on the selected column, the unselected rows on the
`row_third` source held at 0 V, and the unselected columns either on `col_two_thirds` at
0 V or on a passive divider output of the drive channel. Reads and pulses then run as
pulse-and-read sequences with no relay moving between them (see `_fast_levels`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InstrumentNotAnswering, LimitError
from .interfaces import _why, Crossbar, Pulse, PulseSource, PulseStep, Read, Scheme, SourceMeter, Stop, SwitchMatrix
from .limits import Limits

ROLES = ("drive", "sense", "row_third", "col_two_thirds")
BIAS_STEPS = 3  # nine level changes: one message under the B1500's 250-character guideline


class RoleWiring(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: int = Field(description="source channel (B1500 slot) playing this role")
    switch_input: int = Field(ge=1, description="switch-matrix input port its cable goes to")


class PulseRole(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: int = Field(description="pulse-source channel (e.g. 101 for a PMU's or WGFMU's first)")
    switch_input: int = Field(ge=1, description="switch-matrix input port its cable goes to")
    ratio: float = Field(1.0, gt=0, le=1, description="passive divider between channel and cable (1: none)")


class PulseWiring(BaseModel):
    """The fast pulse source's cables. `unselected_columns`, if given, is a divider output of
    the drive channel at half the drive cable's ratio (a V/3 divider board: 2/3 and 1/3)."""

    model_config = ConfigDict(extra="forbid")

    drive: PulseRole
    sense: PulseRole
    unselected_columns: PulseRole | None = None

    @model_validator(mode="after")
    def _divider(self) -> "PulseWiring":
        if self.sense.ratio != 1:
            raise ValueError("sense.ratio: the sense channel measures its line directly (ratio 1)")
        if self.sense.channel == self.drive.channel:
            raise ValueError("sense.channel: the drive and sense channels must differ")
        u = self.unselected_columns
        if u is not None:
            if u.channel != self.drive.channel:
                raise ValueError("unselected_columns.channel: a divider output of the drive channel "
                                 f"({self.drive.channel}), so the two follow one pulse")
            if abs(2 * u.ratio - self.drive.ratio) > 1e-3 * self.drive.ratio:
                raise ValueError(f"unselected_columns.ratio: half the drive's ({self.drive.ratio / 2:.4g}), "
                                 f"so that every half-selected device sees V/3")
        return self


class Wiring(BaseModel):
    """Switch output port of every row and column line, and the bias roles."""

    model_config = ConfigDict(extra="forbid")

    rows: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    columns: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    drive: RoleWiring
    sense: RoleWiring
    row_third: RoleWiring
    col_two_thirds: RoleWiring
    pulse: PulseWiring | None = None

    @model_validator(mode="after")
    def _distinct(self) -> "Wiring":
        seen: dict[int, str] = {}
        for kind, ports in (("rows", self.rows), ("columns", self.columns)):
            for i, port in enumerate(ports):
                here = f"{kind}[{i}]"
                if port in seen:
                    raise ValueError(f"{here}: switch port {port} is already used by {seen[port]}")
                seen[port] = here
        for attr in ("channel", "switch_input"):
            used: dict[int, str] = {}
            for role in ROLES:
                value = getattr(getattr(self, role), attr)
                if value in used:
                    raise ValueError(f"{role}.{attr}: {value} is already used by {used[value]}")
                used[value] = role
        if self.pulse is not None:
            inputs = {self.role(role).switch_input: role for role in ROLES}
            for name in ("drive", "sense", "unselected_columns"):
                cable = getattr(self.pulse, name)
                if cable is None:
                    continue
                if cable.switch_input in inputs:
                    raise ValueError(f"pulse.{name}.switch_input: {cable.switch_input} is already used by "
                                     f"{inputs[cable.switch_input]}")
                inputs[cable.switch_input] = f"pulse.{name}"
        return self

    def role(self, name: str) -> RoleWiring:
        return getattr(self, name)


def fast_levels(p: PulseWiring, voltage: float, scheme: Scheme | None) -> tuple[float, float] | None:
    """(drive channel, sense channel) levels of the fast pulse source that put `voltage` across the selected
    device, or None if the fast path cannot make the scheme. The unselected rows are at
    0 V, so every level is the V/3 (V/2) scheme shifted down by V/3 (V/2): under V/3 the
    selected row at 2V/3, the unselected columns at V/3 (the divider's second output),
    the selected column at -V/3; under V/2 the rows at +/-V/2 and the unselected columns
    on an SMU at 0 V. A read (scheme None) holds the sense column at 0 V with the
    unselected rows, so only the selected device's current reaches it."""
    if scheme is None:
        return voltage / p.drive.ratio, 0.0
    if scheme is Scheme.V3 and p.unselected_columns is not None:
        return (2 * voltage / 3) / p.drive.ratio, -voltage / 3
    if scheme is Scheme.V2:
        return (voltage / 2) / p.drive.ratio, -voltage / 2
    return None


class InstrumentCrossbar(Crossbar):
    """`pulser`: a fast pulse source cabled as `wiring.pulse` (None: SMU spot pulses only).
    `fast=False` keeps every read and pulse on the SMUs; `keep_routes=False` opens every
    relay whenever the device changes (the naive ordering bench-time benchmarks compare
    against)."""

    def __init__(self, source: SourceMeter, switch: SwitchMatrix, wiring: Wiring, limits: Limits,
                 *, read_voltage: float = 0.2, pulser: PulseSource | None = None,
                 read_width: float = 1e-6, fast: bool = True, keep_routes: bool = True):
        super().__init__()
        self.source, self.switch, self.wiring, self.limits = source, switch, wiring, limits
        self.rows, self.cols = len(wiring.rows), len(wiring.columns)
        limits.check_device_voltage(read_voltage, "read voltage: ")
        self.read_voltage = read_voltage
        if (pulser is None) != (wiring.pulse is None):
            raise ValueError("a pulse source needs wiring.pulse, and wiring.pulse a pulse source")
        self.pulser, self.read_width, self.keep_routes = pulser, read_width, keep_routes
        self.fast = fast and pulser is not None
        self._ch = {role: wiring.role(role).channel for role in ROLES}
        self._in = {role: wiring.role(role).switch_input for role in ROLES}
        self._levels_unknown = False  # set when returning a source to 0 V may have failed
        self.relay_ops = 0            # relays closed or opened by this crossbar
        self.reconnects = 0
        self._device: tuple[int, int] | None = None   # the device the relays are routed to

    @property
    def round_trips(self) -> int:
        """Times the host has waited for an instrument, over every instrument."""
        return sum(getattr(inst, "round_trips", 0) for inst in self.instruments)

    @property
    def instruments(self) -> list:
        """Every instrument this crossbar drives, sources before switches."""
        pulser = [self.pulser] if self.pulser is not None and self.pulser is not self.source else []
        return [self.source, *pulser, self.switch]

    def connect(self) -> "InstrumentCrossbar":
        """Initialize the instruments and leave every role channel enabled at 0 V, relays open."""
        for inst in self.instruments:
            inst.initialize()
        missing = [f"{role} (channel {ch})" for role, ch in self._ch.items()
                   if ch not in self.source.source_channels()]
        if missing:
            raise ValueError(f"{self.source.name} has no source channel for: {', '.join(missing)}")
        if self.pulser is not None:
            have = self.pulser.pulse_channels()
            p = self.wiring.pulse
            missing = [f"pulse.{role} (channel {cable.channel})" for role, cable in
                       (("drive", p.drive), ("sense", p.sense)) if cable.channel not in have]
            if missing:
                raise ValueError(f"{self.pulser.name} has no pulse channel for: {', '.join(missing)} "
                                 f"(it has {', '.join(map(str, have)) or 'none'})")
        self.check_wiring(*self.switch.size())
        # A previous session may have died energized (SIGKILL, power cut): sources off
        # first, then relays, before anything is switched on.
        self.source.safe_state()
        if self.pulser is not None and self.pulser is not self.source:
            self.pulser.safe_state()
        self.switch.open_all()
        channels = list(self._ch.values())
        self.source.enable(channels)
        self.source.set_voltages({ch: 0.0 for ch in channels})
        return self

    def check_wiring(self, inputs: int, outputs: int) -> None:
        """Every line and role within the switch's ports (as the instrument reports them)."""
        w = self.wiring
        for kind, ports in (("rows", w.rows), ("columns", w.columns)):
            for i, port in enumerate(ports):
                if port > outputs:
                    raise ValueError(f"wiring.{kind}[{i}]: switch output port {port}, but "
                                     f"{self.switch.name} has {outputs} output ports")
        cables = {role: self._in[role] for role in ROLES}
        if w.pulse is not None:
            cables |= {f"pulse.{name}": cable.switch_input for name in ("drive", "sense", "unselected_columns")
                       if (cable := getattr(w.pulse, name)) is not None}
        for role, port in cables.items():
            if port > inputs:
                raise ValueError(f"wiring.{role}.switch_input: input port {port}, but {self.switch.name} has {inputs} input ports")

    def pulses_sent(self) -> int:
        return sum(getattr(inst, "pulses_sent", 0) for inst in self.instruments)

    @property
    def max_batch(self) -> int:
        """Pulse-and-read pairs one transaction carries on the fast path (1: none)."""
        if not self.fast:
            return 1
        return (self.pulser.max_ramp_steps if self.pulser.stops_early else self.pulser.max_steps) // 2

    def recover(self) -> None:
        """After a dropped connection: every instrument to its safe state first (a driver
        whose link is gone reconnects for it), then connected again as at the start. The
        operation that failed is not repeated: its caller reads the device and decides."""
        self.reconnects += 1
        self.safe_state()
        self.connect()

    def _recovering(self, operation, *args):
        try:
            return operation(*args)
        except InstrumentNotAnswering as exc:
            try:
                self.recover()
            except Exception as again:
                exc.add_note(f"reconnecting failed: {again}")
            raise

    # --- routing ------------------------------------------------------------------------

    def _route(self, row: int, col: int, fast: bool = False, scheme: Scheme | None = None) -> None:
        if self._levels_unknown:  # never move relays under a level that may still be on
            self.source.set_voltages({ch: 0.0 for ch in self._ch.values()})
            self._levels_unknown = False
        w, inp = self.wiring, self._in
        if fast:
            p = w.pulse
            sel_row, sel_col = p.drive.switch_input, p.sense.switch_input
            # V/2 wants the unselected columns at 0 V: on the SMU held there, not on the divider
            divided = p.unselected_columns is not None and scheme is not Scheme.V2
            other_col = (p.unselected_columns if divided else w.col_two_thirds).switch_input
        else:
            sel_row, sel_col, other_col = inp["drive"], inp["sense"], inp["col_two_thirds"]
        wanted = {(sel_row if r == row else inp["row_third"], port) for r, port in enumerate(w.rows)}
        wanted |= {(sel_col if c == col else other_col, port) for c, port in enumerate(w.columns)}
        closed = set(self.switch.closed)
        stale = closed - wanted
        if not self.keep_routes and self._device != (row, col):
            stale = closed
        self._device = (row, col)
        self.switch.disconnect(stale)  # break before make
        self.relay_ops += len(stale)
        self.relay_ops += len(wanted - (closed - stale))
        self.switch.connect(wanted)

    # --- the fast path ------------------------------------------------------------------

    def _fast_levels(self, voltage: float, scheme: Scheme | None) -> tuple[float, float] | None:
        return fast_levels(self.wiring.pulse, voltage, scheme)

    def _fast_steps(self, voltages, width: float, scheme: Scheme, reads: int = 1,
                    stop: Stop | None = None, then_reads: int = 0) -> list[PulseStep] | None:
        """Each pulse followed by `reads` read steps (ending at `stop`), then `then_reads` more;
        None if the fast path cannot do it."""
        read = self._fast_levels(self.read_voltage, None)
        steps = []
        for v in voltages:
            levels = self._fast_levels(v, scheme) if v is not None else None
            if v is not None:
                if levels is None:
                    return None
                steps.append(PulseStep(*levels, width))
            steps += [PulseStep(*read, self.read_width, measure=True)] * reads
        steps += [PulseStep(*read, self.read_width, measure=True)] * then_reads
        if len(steps) > (self.pulser.max_ramp_steps if stop else self.pulser.max_steps):
            return None
        channels = self.wiring.pulse.drive.channel, self.wiring.pulse.sense.channel
        until = {"stop": stop} if stop else {}
        try:
            self.pulser.check_sequence(*channels, steps, **until)
        except ValueError:
            return None   # a sequence this pulse source cannot make (e.g. its timing): the SMUs will try
        except LimitError:
            # after a failed message its guard may not know the levels: from the safe state,
            # again; refused still, it is the limits, and the caller is told
            self.pulser.safe_state()
            self.pulser.check_sequence(*channels, steps, **until)
        return steps

    def _run_fast(self, row: int, col: int, steps: list[PulseStep], scheme: Scheme | None = None,
                  stop: Stop | None = None) -> list[float]:
        """Conductances read by the measuring steps (up to the one that met `stop`)."""
        self._route(row, col, fast=True, scheme=scheme)
        p = self.wiring.pulse
        currents = self.pulser.run_sequence(p.drive.channel, p.sense.channel, steps,
                                            **({"stop": stop} if stop else {}))
        return [-i / self.read_voltage for i in currents]   # the sense channel sinks the device current

    def _read(self, row: int, col: int, v: float) -> Read:
        return self._recovering(self._read_once, row, col, v)

    def _read_once(self, row: int, col: int, v: float) -> Read:
        self.limits.check_device_voltage(v, f"read of ({row}, {col}): ")
        if self.fast and v == self.read_voltage and (steps := self._fast_steps([None], 0, Scheme.V3)):
            g = self._run_fast(row, col, steps)[0]
            return Read(row, col, v, g * v, g)
        return self._smu_read(row, col, v)

    def _smu_read(self, row: int, col: int, v: float) -> Read:
        self._route(row, col)
        ch = self._ch
        self._levels_unknown = True
        try:  # the drive goes back to 0 V in the read's own transaction; on any failure, again
            m = self.source.measure_current(ch["sense"], levels={ch["drive"]: v}, then={ch["drive"]: 0.0})
        except BaseException:
            self._zero({ch["drive"]: 0.0})
            raise
        self._levels_unknown = False
        current = -m.value  # the sense SMU sinks the device current
        return Read(row, col, v, current, current / v)

    @property
    def stops_early(self) -> bool:
        """On the fast path, where the pulse source can end a sequence at a threshold (the
        one-at-a-time path always can)."""
        return not self.fast or self.pulser.stops_early

    def pulse_and_read(self, row: int, col: int, voltages: Sequence[float], width: float,
                       scheme: Scheme | str = Scheme.V3, reads: int = 1, *, then_reads: int = 0,
                       stop_above: float | None = None, stop_below: float | None = None) -> list[list[float]]:
        """On the fast path, one sequence (journaled as one `sequence` operation)."""
        scheme = Scheme(scheme)
        stop = None
        if self._stopping(stop_above, stop_below, then_reads) and voltages:
            # the sense channel sinks the device current: compared in magnitude
            rising = stop_above is not None
            stop = Stop((stop_above if rising else stop_below) * self.read_voltage, rising)
        steps = None
        if self.fast and (stop is None or self.pulser.stops_early):
            self._check_device(row, col)
            for v in voltages:
                self.limits.check_device_voltage(v, f"pulse on ({row}, {col}): ")
            steps = self._fast_steps(list(voltages) or [None], width, scheme, reads, stop, then_reads)
        if steps is None:
            return super().pulse_and_read(row, col, voltages, width, scheme, reads, then_reads=then_reads,
                                          stop_above=stop_above, stop_below=stop_below)
        fields = {"row": row, "col": col, "voltages": list(voltages), "width": width, "scheme": str(scheme),
                  "reads": reads, **({"then_reads": then_reads} if then_reads else {}),
                  **({"stop_above": stop_above} if stop_above is not None else {}),
                  **({"stop_below": stop_below} if stop_below is not None else {})}
        try:
            self._begin("sequence", fields)
            g = self._recovering(self._run_fast, row, col, steps, scheme, stop)
        except BaseException as exc:
            self.settle(_why(exc))
            raise
        grouped, tail = g[:len(g) - then_reads], g[len(g) - then_reads:]
        self._end("sequence", {**fields, "conductances": g, "applied": len(grouped) // reads if voltages else 0})
        groups = [grouped[k * reads:(k + 1) * reads] for k in range(max(1, math.ceil(len(grouped) / reads)))]
        return groups + [tail] if then_reads else groups

    def _pulse(self, row: int, col: int, voltage: float, width: float, scheme: Scheme) -> Pulse:
        return self._recovering(self._pulse_once, row, col, voltage, width, scheme)

    def _pulse_once(self, row: int, col: int, voltage: float, width: float, scheme: Scheme) -> Pulse:
        self.limits.check_device_voltage(voltage, f"pulse on ({row}, {col}): ")
        if self.fast and (steps := self._fast_steps([voltage], width, scheme, reads=0)):
            self._run_fast(row, col, steps, scheme)
            return Pulse(row, col, voltage, width, str(scheme), float("nan"), False)
        return self._smu_pulse(row, col, voltage, width, scheme)

    def _smu_pulse(self, row: int, col: int, voltage: float, width: float, scheme: Scheme) -> Pulse:
        ch = self._ch
        if scheme is Scheme.V3:
            row_bias, col_bias = voltage / 3, 2 * voltage / 3
        else:
            row_bias = col_bias = voltage / 2
        # the whole pulse (width, energy, instrument limits) is checked before anything is
        # routed or biased for it
        self.source.check_pulse(ch["drive"], row_bias, voltage, width)
        self._route(row, col)
        up = self._staircase(row_bias, col_bias)
        try:  # a failure (or Ctrl-C) while the biases come up must bring them down too
            self.source.set_voltages(up)
            m = self.source.pulse(ch["drive"], row_bias, voltage, width)
        finally:
            try:
                self._zero(self._staircase(row_bias, col_bias, down=True))
            except LimitError:
                # after a failed message the guard no longer knows the levels, and refuses a
                # staircase it cannot bound: every bias straight to 0 V, which it always allows
                self._zero({c: 0.0 for c in ch.values()})
        return Pulse(row, col, voltage, width, str(scheme), m.value, m.compliance)

    def _staircase(self, row_bias: float, col_bias: float, down: bool = False) -> list[tuple[int, float]]:
        """Bias levels in BIAS_STEPS interleaved steps: up rows then columns, down columns
        then rows. Sources change one after another, so between two changes some device
        sees the difference; in small steps no device sees more than the final half-select
        stress, nor (under V/2) more than V/(2 * BIAS_STEPS) where it should see nothing."""
        rows = (self._ch["row_third"], self._ch["drive"])
        col = self._ch["col_two_thirds"]
        steps = []
        for k in range(1, BIAS_STEPS + 1):
            if down:
                f = (BIAS_STEPS - k) / BIAS_STEPS
                steps += [(col, f * col_bias)] + [(ch, f * row_bias) for ch in rows[::-1]]
            else:
                f = k / BIAS_STEPS
                steps += [(ch, f * row_bias) for ch in rows] + [(col, f * col_bias)]
        return steps

    def _zero(self, levels) -> None:
        self._levels_unknown = True
        self.source.set_voltages(levels)
        self._levels_unknown = False

    def safe_state(self) -> None:
        """Sources to 0 V and off, then every relay open; each is attempted whatever fails."""
        problems = []
        for inst in self.instruments:
            try:
                inst.safe_state()
            except Exception as exc:
                problems.append(exc)
        if problems:
            raise problems[0]

    def close(self) -> None:
        try:
            self.settle()
            self.safe_state()
        finally:
            for inst in self.instruments:
                inst.close()

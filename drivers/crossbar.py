"""The crossbar access layer over instruments: "read device (r, c)" and "pulse (r, c) with
the V/3 scheme" become switch-matrix routes and source commands.

Four source channels play four bias roles, each cabled to one switch input:
`drive` (selected row), `sense` (selected column, held at 0 V, measures), `row_third`
(unselected rows) and `col_two_thirds` (unselected columns). Every line is always connected
to the source of its role, so moving to the next device in the same row changes only the
relays of the two columns involved. Relays only move while every source is at 0 V.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import LimitError
from .interfaces import Crossbar, Pulse, Read, Scheme, SourceMeter, SwitchMatrix
from .limits import Limits

ROLES = ("drive", "sense", "row_third", "col_two_thirds")
BIAS_STEPS = 3  # nine level changes: one message under the B1500's 250-character guideline


class RoleWiring(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: int = Field(description="source channel (B1500 slot) playing this role")
    switch_input: int = Field(ge=1, description="switch-matrix input port its cable goes to")


class Wiring(BaseModel):
    """Switch output port of every row and column line, and the bias roles."""

    model_config = ConfigDict(extra="forbid")

    rows: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    columns: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    drive: RoleWiring
    sense: RoleWiring
    row_third: RoleWiring
    col_two_thirds: RoleWiring

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
        return self

    def role(self, name: str) -> RoleWiring:
        return getattr(self, name)


class InstrumentCrossbar(Crossbar):
    def __init__(self, source: SourceMeter, switch: SwitchMatrix, wiring: Wiring, limits: Limits,
                 *, read_voltage: float = 0.2):
        super().__init__()
        self.source, self.switch, self.wiring, self.limits = source, switch, wiring, limits
        self.rows, self.cols = len(wiring.rows), len(wiring.columns)
        limits.check_device_voltage(read_voltage, "read voltage: ")
        self.read_voltage = read_voltage
        self._ch = {role: wiring.role(role).channel for role in ROLES}
        self._in = {role: wiring.role(role).switch_input for role in ROLES}
        self._levels_unknown = False  # set when returning a source to 0 V may have failed

    def connect(self) -> "InstrumentCrossbar":
        """Initialize both instruments and leave every role channel enabled at 0 V, relays open."""
        self.source.initialize()
        self.switch.initialize()
        missing = [f"{role} (channel {ch})" for role, ch in self._ch.items()
                   if ch not in self.source.source_channels()]
        if missing:
            raise ValueError(f"{self.source.name} has no source channel for: {', '.join(missing)}")
        self.check_wiring(*self.switch.size())
        # A previous session may have died energized (SIGKILL, power cut): sources off
        # first, then relays, before anything is switched on.
        self.source.safe_state()
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
        for role in ROLES:
            if self._in[role] > inputs:
                raise ValueError(f"wiring.{role}.switch_input: input port {self._in[role]}, but "
                                 f"{self.switch.name} has {inputs} input ports")

    def pulses_sent(self) -> int:
        return self.source.pulses_sent

    def _route(self, row: int, col: int) -> None:
        if self._levels_unknown:  # never move relays under a level that may still be on
            self.source.set_voltages({ch: 0.0 for ch in self._ch.values()})
            self._levels_unknown = False
        w, inp = self.wiring, self._in
        wanted = {(inp["drive"] if r == row else inp["row_third"], port) for r, port in enumerate(w.rows)}
        wanted |= {(inp["sense"] if c == col else inp["col_two_thirds"], port)
                   for c, port in enumerate(w.columns)}
        stale = set(self.switch.closed) - wanted
        self.switch.disconnect(stale)  # break before make
        self.switch.connect(wanted)

    def _read(self, row: int, col: int, v: float) -> Read:
        self.limits.check_device_voltage(v, f"read of ({row}, {col}): ")
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

    def _pulse(self, row: int, col: int, voltage: float, width: float, scheme: Scheme) -> Pulse:
        self.limits.check_device_voltage(voltage, f"pulse on ({row}, {col}): ")
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
        """Sources to 0 V and off, then every relay open; both are attempted whatever fails."""
        try:
            self.source.safe_state()
        finally:
            self.switch.safe_state()

    def close(self) -> None:
        try:
            self.settle()
            self.safe_state()
        finally:
            self.source.close()
            self.switch.close()

"""What an emulated bench is made of, as validated data: the emulated instruments, the
cables from source channels to switch inputs, line resistance and instrument timing. No
physics here (and no torch): bench files load these without starting a simulator."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

InstrumentType = Literal["keysight_b1500a", "keysight_e5250a", "keithley_4200a", "keithley_707b",
                         "keysight_b1530a"]


class EmulatedInstrument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: InstrumentType
    port: int = Field(0, ge=0, le=65535, description="TCP port on 127.0.0.1; 0 picks a free one")
    options: dict = {}


class CableToSwitch(BaseModel):
    """A source channel's cable to a switch-matrix input port."""

    model_config = ConfigDict(extra="forbid")

    instrument: str
    channel: int
    input: int
    ratio: float = Field(1.0, gt=0, le=1, description="passive divider between the channel and the cable")


class LineResistance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    word: float = Field(0.0, ge=0, description="ohm per word-line segment between crosspoints")
    bit: float = Field(0.0, ge=0, description="ohm per bit-line segment between crosspoints")


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transaction_s: float = Field(2e-4, ge=0, description="instrument time per message")
    settle_s: float = Field(1e-4, ge=0, description="source settling after a DC change")
    relay_settle_s: float = Field(3e-3, ge=0, description="switch relay operate and settle time")


class FaultSpec(BaseModel):
    """A fault an emulated instrument shows, from its `after`-th message received on:
    `slow` (every reply `seconds` late), `timeout` (one reply `seconds` late: beyond a
    client's timeout), `drop` (the connection closed, the message unanswered), `garble`
    (`count` replies corrupted), `error` (`count` commands fail with the instrument's own
    execution error), `hang` (it stops answering, for good)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["slow", "timeout", "drop", "garble", "error", "hang"]
    after: int = Field(0, ge=0, description="messages received before the fault starts")
    seconds: float = Field(1.0, gt=0, description="slow, timeout: how late")
    count: int = Field(1, ge=1, description="garble, error: how many")

    @classmethod
    def parse(cls, text: str) -> tuple[str, "FaultSpec"]:
        """'INSTRUMENT:KIND[@AFTER][=VALUE]', e.g. 'analyzer:timeout@40=6' or 'switch:drop@12'."""
        name, sep, rest = text.partition(":")
        if not sep or not name:
            raise ValueError(f"{text!r}: a fault is INSTRUMENT:KIND[@AFTER][=VALUE]")
        rest, _, value = rest.partition("=")
        kind, _, after = rest.partition("@")
        data: dict = {"kind": kind, "after": after or 0}
        if value:
            data["count" if kind in ("garble", "error") else "seconds"] = value
        return name, cls.model_validate(data)


class SimBenchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = Field(ge=1)
    cols: int = Field(ge=1)
    preset: str = "tio2-passive"
    seed: int = 0
    instruments: list[EmulatedInstrument]
    switch: str
    row_ports: list[int]
    col_ports: list[int]
    cables: list[CableToSwitch]
    timing: Timing = Timing()
    line_resistance: LineResistance = LineResistance()
    faults: dict[str, list[FaultSpec]] = {}

    @model_validator(mode="after")
    def _consistent(self) -> "SimBenchSpec":
        names = {i.name for i in self.instruments}
        if self.switch not in names:
            raise ValueError(f"switch {self.switch!r} is not among the instruments")
        if len(self.row_ports) != self.rows or len(self.col_ports) != self.cols:
            raise ValueError("one switch output port per row and per column is needed")
        for name in self.faults:
            if name not in names:
                raise ValueError(f"faults.{name}: no emulated instrument of that name ({', '.join(sorted(names))})")
        return self

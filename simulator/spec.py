"""What an emulated bench is made of, as validated data: the emulated instruments, the
cables from source channels to switch inputs, line resistance and instrument timing. No
physics here (and no torch): bench files load these without starting a simulator."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

InstrumentType = Literal["keysight_b1500a", "keysight_e5250a"]


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


class LineResistance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    word: float = Field(0.0, ge=0, description="ohm per word-line segment between crosspoints")
    bit: float = Field(0.0, ge=0, description="ohm per bit-line segment between crosspoints")


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transaction_s: float = Field(2e-4, ge=0, description="instrument time per message")
    settle_s: float = Field(1e-4, ge=0, description="source settling after a DC change")
    relay_settle_s: float = Field(3e-3, ge=0, description="switch relay operate and settle time")


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

    @model_validator(mode="after")
    def _consistent(self) -> "SimBenchSpec":
        names = {i.name for i in self.instruments}
        if self.switch not in names:
            raise ValueError(f"switch {self.switch!r} is not among the instruments")
        if len(self.row_ports) != self.rows or len(self.col_ports) != self.cols:
            raise ValueError("one switch output port per row and per column is needed")
        return self

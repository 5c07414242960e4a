"""The direct simulator backend: the crossbar interface of `drivers.interfaces` on the
simulator's physics, with no instruments and no wire. Same protocols, same trainers, large
arrays, and every operation still costs virtual bench time."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from drivers.interfaces import Crossbar, Pulse, Read, Scheme
from simulator.circuit import solve_crossbar
from simulator.crossbar import CrossbarArray
from simulator.device import DevicePreset, load_preset


class Waveform(BaseModel):
    """How the modelled bench applies operations, in time. The defaults are a pulse
    generator with a V/3 divider (Keithley 4225-PMU style): every line is pulsed at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read_time: float = Field(10e-6, gt=0, description="read voltage held for the measurement (s)")
    unselected: Literal["grounded", "floating"] = Field(
        "grounded", description="unselected lines during a read: grounded, or floating (sneak paths)")
    r_word: float = Field(0.0, ge=0, description="word-line resistance per segment (ohm)")
    r_bit: float = Field(0.0, ge=0, description="bit-line resistance per segment (ohm)")
    bias_dwell: float = Field(0.0, ge=0, description="half-select biases stand this long before and "
                                                    "after each pulse (s); 0 for a divider")
    overhead: float = Field(1e-3, ge=0, description="instrument and host time per operation (s)")


class SimulatedCrossbar(Crossbar):
    def __init__(self, array: CrossbarArray, waveform: Waveform = Waveform(), *,
                 read_voltage: float | None = None):
        super().__init__()
        self.array, self.waveform = array, waveform
        self.rows, self.cols = array.rows, array.cols
        self.read_voltage = read_voltage or array.preset.read.voltage
        self._pulses = 0

    @classmethod
    def from_preset(cls, preset: str | DevicePreset, rows: int, cols: int, seed: int = 0,
                    waveform: Waveform = Waveform(), dtype: torch.dtype = torch.float64) -> "SimulatedCrossbar":
        preset = load_preset(preset) if isinstance(preset, str) else preset
        return cls(CrossbarArray(rows, cols, preset, seed=seed, dtype=dtype), waveform)

    @property
    def bench_time(self) -> float:
        return self.array.clock

    def _read(self, row: int, col: int, v: float) -> Read:
        a, w = self.array, self.waveform
        # the read voltage is far below every switching and drift threshold: time only
        a.advance(w.overhead + w.read_time)
        if w.unselected == "grounded" and not (w.r_word or w.r_bit):
            g = a.sample(a.flat_index(row, col))
            current = float(a.device_currents(g, torch.tensor(v, dtype=a.dtype)))
        else:  # the sense column also collects sneak currents, or lines drop voltage
            v_rows = np.full(self.rows, np.nan if w.unselected == "floating" else 0.0)
            v_cols = np.full(self.cols, np.nan if w.unselected == "floating" else 0.0)
            v_rows[row], v_cols[col] = v, 0.0
            sol = solve_crossbar(a.sample().numpy(), v_rows, v_cols, r_word=w.r_word, r_bit=w.r_bit)
            current = -float(sol.col_currents[col])
        return Read(row, col, v, current, current / v)

    def read_all(self):
        """The whole map in one vectorized draw (recorded as one operation), costing the bench
        time of reading every device in turn."""
        a = self.array
        a.advance(self.rows * self.cols * (self.waveform.overhead + self.waveform.read_time))
        g = a.sample().numpy()
        self._record("read_map", {"devices": self.rows * self.cols})
        return g

    def pulses_sent(self) -> int:
        return self._pulses

    def _pulse(self, row: int, col: int, voltage: float, width: float, scheme: Scheme) -> Pulse:
        a = self.array
        self._pulses += 1
        if a.preset.architecture == "1t1r":  # the access transistors isolate every other device
            v = torch.zeros(self.rows, self.cols, dtype=a.dtype)
            v[row, col] = voltage
            a.apply(v, width)
        else:
            row_bias, col_bias = (voltage / 3, 2 * voltage / 3) if scheme is Scheme.V3 else (voltage / 2,) * 2
            v_rows = torch.full((self.rows,), row_bias, dtype=a.dtype)
            v_cols = torch.full((self.cols,), col_bias, dtype=a.dtype)
            v_cols[col] = 0.0
            dwell = self.waveform.bias_dwell
            if dwell:
                self._hold(v_rows, v_cols, dwell)
            v_rows[row] = voltage
            self._hold(v_rows, v_cols, width)
            if dwell:
                v_rows[row] = row_bias
                self._hold(v_rows, v_cols, dwell)
        a.advance(self.waveform.overhead)
        return Pulse(row, col, voltage, width, str(scheme), float("nan"), False)

    def vmm(self, volts: np.ndarray, rows: list[int], cols: list[int]) -> np.ndarray:
        """All lines driven at once: one read-noise draw per device, the devices' I-V."""
        a = self.array
        volts = np.atleast_2d(volts)
        idx = (torch.tensor(rows)[:, None] * self.cols + torch.tensor(cols)[None, :]).reshape(-1)
        a.advance(self.waveform.overhead + self.waveform.read_time)
        g = a.sample(idx).view(len(rows), len(cols))
        f = a.preset.read_current(torch.ones((), dtype=a.dtype), torch.as_tensor(volts, dtype=a.dtype))
        self._record("vmm", {"rows": len(rows), "cols": len(cols), "vectors": len(volts)})
        return (f @ g.T).numpy()

    def _hold(self, v_rows: torch.Tensor, v_cols: torch.Tensor, duration: float) -> None:
        a, w = self.array, self.waveform
        if w.r_word or w.r_bit:  # devices far from the drivers see less than the line voltage
            sol = solve_crossbar(a.conductance().numpy(), v_rows.numpy(), v_cols.numpy(), r_word=w.r_word,
                                 r_bit=w.r_bit)
            a.apply(torch.from_numpy(sol.v_word - sol.v_bit), duration)
        else:
            a.apply_lines(v_rows, v_cols, duration)

    def safe_state(self) -> None:
        """Nothing is energized between operations."""

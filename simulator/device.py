"""Device model presets: how one memristive device responds to a voltage over time.

A preset is configuration, not code (as aihwkit's device presets are): the physics in
`crossbar.py` reads these numbers and nothing else. Presets live as YAML files in
`simulator/presets/`.

Switching model (closed form per pulse, after the exponential voltage-time dependence of
TiO2 and HfO2 devices): a voltage V across a device for a time t moves its conductance
towards a bound with rate k(V) = rate * exp((|V| - v_c) / v_0):

    SET   (V > 0):  G' = G + (g_max - G) * (1 - exp(-k t))
    RESET (V < 0):  G' = G - (G - g_min) * (1 - exp(-k t))

so the response depends on amplitude, polarity, width and present state, saturates softly
at the bounds, and is small but non-zero below the switching voltage: half-select stress
under V/3 and V/2 schemes comes out of the same formula.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESET_DIR = Path(__file__).parent / "presets"


class SwitchingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v_c: float = Field(gt=0, description="characteristic voltage magnitude (V) at which k = rate")
    v_0: float = Field(gt=0, description="voltage per e-fold of the switching rate (V)")
    rate: float = Field(gt=0, description="switching rate at |V| = v_c (1/s)")


class Spread(BaseModel):
    """Device-to-device spread, drawn once per device."""

    model_config = ConfigDict(extra="forbid")

    bounds_rel: float = Field(0.05, ge=0, description="relative sd of g_min and g_max")
    v_c: float = Field(0.05, ge=0, description="sd of the characteristic voltages (V)")
    rate_log: float = Field(0.3, ge=0, description="sd of log(rate)")


class ReadNoise(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relative: float = Field(0.002, ge=0, description="sd as a fraction of G, per read")
    absolute: float = Field(5e-8, ge=0, description="sd in siemens, per read")


class StuckFaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lrs_fraction: float = Field(0.005, ge=0, le=1)
    hrs_fraction: float = Field(0.005, ge=0, le=1)
    lrs_mean: float = Field(573e-6, gt=0, description="stuck-at-LRS conductance mean (S)")
    lrs_sd: float = Field(99e-6, ge=0)
    hrs_low: float = Field(10e-6, gt=0, description="stuck-at-HRS conductance, uniform low (S)")
    hrs_high: float = Field(100e-6, gt=0)

    @model_validator(mode="after")
    def _fractions(self) -> "StuckFaults":
        if self.lrs_fraction + self.hrs_fraction > 1:
            raise ValueError("stuck fractions add up to more than 1")
        if self.hrs_low > self.hrs_high:
            raise ValueError("hrs_low must not exceed hrs_high")
        return self


class DevicePreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    g_min: float = Field(gt=0, description="lower conductance bound (S)")
    g_max: float = Field(gt=0, description="upper conductance bound (S)")
    g_initial: tuple[float, float] = Field(description="initial conductance range (S), uniform")
    set: SwitchingParams
    reset: SwitchingParams
    cycle_noise: float = Field(0.3, ge=0, description="relative sd of each change (cycle to cycle)")
    spread: Spread = Spread()
    read_noise: ReadNoise = ReadNoise()
    stuck: StuckFaults = StuckFaults()

    @model_validator(mode="after")
    def _bounds(self) -> "DevicePreset":
        if not self.g_min < self.g_max:
            raise ValueError("g_min must be below g_max")
        lo, hi = self.g_initial
        if not self.g_min <= lo <= hi <= self.g_max:
            raise ValueError("g_initial must lie within [g_min, g_max]")
        return self


def load_preset(name_or_path: str | Path) -> DevicePreset:
    """A preset by name (a file in simulator/presets) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"unknown device preset {str(name_or_path)!r} (known: {', '.join(known)})")
    return DevicePreset.model_validate(yaml.safe_load(path.read_text()))

"""Device model presets: how memristive devices respond to voltage over time.

A preset is configuration, not code (as aihwkit's device presets are): the physics in
`crossbar.py` reads these numbers and nothing else. Presets live as YAML files in
`simulator/presets/`.

Switching (closed form per pulse): a voltage V across a device for a time t moves its
conductance towards a bound with a rate k(V) that grows steeply with |V| (`Switching`):

    SET   (V > 0):  G' = G + f (g_max - G) (1 - exp(-k t))
    RESET (V < 0):  G' = G - f (G - g_min) (1 - exp(-k t))

so the response depends on amplitude, polarity, width and present state and saturates
softly at the bounds; f is the device's fault factor (1 on average, negative for a
discordant device, 0 when stuck). A fraction of each switching change is volatile and
relaxes with a time constant. Below the switching voltages, every stress above a small
threshold also adds a slow drift (mean and random parts, scaled by a per-device
sensitivity): the half-select disturbance of V/3 and V/2 schemes comes out of these laws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESET_DIR = Path(__file__).parent / "presets"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Switching(_Model):
    """k(V) = rate * exp(-barrier * (1 - |V| / v_c) ** 2) below v_c, and `rate` above: a
    field-lowered barrier. The rate is very steep in V far below v_c (reads and half-select
    stress barely move a device) and gentler near the switching voltages (write-verify can
    step finely)."""

    v_c: float = Field(gt=0, description="voltage magnitude at which the barrier vanishes (V)")
    barrier: float = Field(gt=0, description="barrier height at 0 V, in units of kT")
    rate: float = Field(gt=0, description="switching rate at |V| >= v_c (1/s)")

    def voltage_for(self, moved: float, width: float) -> float:
        """The |V| at which a pulse of `width` moves a device `moved` of the way to its bound."""
        k = -math.log1p(-moved) / width
        return self.v_c * (1 - math.sqrt(math.log(self.rate / k) / self.barrier))


class Relaxation(_Model):
    fraction: float = Field(0.0, ge=0, le=1, description="volatile part of each switching change")
    tau: float = Field(1.0, gt=0, description="relaxation time constant of the volatile part (s)")


class Drift(_Model):
    """Sub-threshold drift. Each stress with |V| above `threshold` adds a dose
    d = sensitivity * (|V| - threshold) / 1 V * (t / 1 us) ** width_exponent to the device.
    With D_set, D_reset the doses of each polarity collected since the device last switched
    and D their sum, it has drifted by

        (set_rate * D_set - reset_rate * D_reset) * D ** (mean_exponent - 1)
        + noise * zeta * D ** noise_exponent

    where zeta (mean 0, sd 1, skewness set by `skew`) is drawn anew at each switching event.
    The drift is a function of the doses alone, so it does not matter when it is realized."""

    threshold: float = Field(0.3, ge=0, description="stress below this magnitude causes no drift (V)")
    width_exponent: float = Field(0.5, ge=0, le=1)
    set_rate: float = Field(0.0, ge=0, description="mean change per unit SET-polarity dose (S)")
    reset_rate: float = Field(0.0, ge=0, description="mean change per unit RESET-polarity dose (S)")
    mean_exponent: float = Field(1.0, gt=0, le=1)
    noise: float = Field(0.0, ge=0, description="sd of the random part at unit dose (S)")
    noise_exponent: float = Field(0.5, gt=0, le=1)
    skew: float = Field(0.0, ge=0, le=2, description="0 = Gaussian random part; larger = heavier "
                                                    "tail towards lower conductance")
    sensitivity_sd: float = Field(0.0, ge=0, description="sd of log(sensitivity); mean sensitivity is 1")


class ReadModel(_Model):
    nonlinearity: float = Field(0.0, ge=0, description="a in I = G sinh(aV)/a, normalized at the read "
                                                       "voltage (1/V); 0 = ohmic")
    voltage: float = Field(0.2, gt=0, description="read voltage at which G is defined (V)")
    noise_relative: float = Field(0.002, ge=0, description="sd as a fraction of G, per read")
    noise_absolute: float = Field(5e-8, ge=0, description="sd in siemens, per read")


class Spread(_Model):
    """Device-to-device spread, drawn once per device."""

    bounds_rel: float = Field(0.05, ge=0, description="relative sd of g_min and g_max")
    v_c: float = Field(0.04, ge=0, description="sd of the characteristic voltages (V)")


class FactorDistribution(_Model):
    """A normal distribution clipped to [low, high]."""

    mean: float
    sd: float = Field(ge=0)
    low: float
    high: float

    @model_validator(mode="after")
    def _order(self) -> "FactorDistribution":
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


class Distribution(_Model):
    """A conductance distribution (S): normal (mean, sd), log-normal (median, sigma of ln G),
    uniform or log-uniform (low, high). Without `kind`, the fields given decide (low/high
    alone means log-uniform)."""

    kind: Literal["normal", "lognormal", "uniform", "loguniform"]
    mean: float | None = None
    sd: float | None = Field(None, ge=0)
    median: float | None = Field(None, gt=0)
    sigma: float | None = Field(None, ge=0)
    low: float | None = Field(None, gt=0)
    high: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _infer_kind(cls, data):
        if isinstance(data, dict) and "kind" not in data:
            kind = "normal" if "mean" in data else "lognormal" if "median" in data else "loguniform"
            data = {**data, "kind": kind}
        return data

    @model_validator(mode="after")
    def _fields(self) -> "Distribution":
        need = {"normal": ("mean", "sd"), "lognormal": ("median", "sigma"),
                "uniform": ("low", "high"), "loguniform": ("low", "high")}[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} distribution needs {', '.join(missing)}")
        if self.kind.endswith("uniform") and self.low > self.high:
            raise ValueError("low must not exceed high")
        return self

    def sample(self, normal, uniform):
        """Draws from standard-normal and standard-uniform tensors of the wanted shape."""
        if self.kind == "normal":
            return (self.mean + self.sd * normal).clamp(min=1e-12)
        if self.kind == "lognormal":
            return self.median * (self.sigma * normal).exp()
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * uniform
        return (math.log(self.low) + (math.log(self.high) - math.log(self.low)) * uniform).exp()


class Faults(_Model):
    """Which devices are stuck or respond the wrong way, drawn once per device."""

    stuck_lrs: float = Field(0.0, ge=0, le=1, description="fraction stuck at LRS")
    stuck_hrs: float = Field(0.0, ge=0, le=1, description="fraction stuck at HRS")
    discordant: float = Field(0.0, ge=0, le=1, description="fraction whose response has the wrong sign")
    concordant_factor: FactorDistribution = FactorDistribution(mean=1, sd=0.0, low=0.1, high=2)
    discordant_factor: FactorDistribution = FactorDistribution(mean=-1, sd=0.5, low=-2, high=-0.1)
    lrs_conductance: Distribution = Distribution(kind="normal", mean=573e-6, sd=99e-6)
    hrs_conductance: Distribution = Distribution(kind="uniform", low=10e-6, high=100e-6)

    @model_validator(mode="after")
    def _fractions(self) -> "Faults":
        if self.stuck_lrs + self.stuck_hrs + self.discordant > 1:
            raise ValueError("stuck and discordant fractions add up to more than 1")
        return self


class DevicePreset(_Model):
    name: str
    description: str = ""
    architecture: Literal["passive", "1t1r"] = Field(
        "passive", description="1t1r: a transistor isolates unselected devices (no half-select stress)")
    g_min: float = Field(gt=0, description="lower conductance bound (S)")
    g_max: float = Field(gt=0, description="upper conductance bound (S)")
    g_initial: tuple[float, float] = Field(description="initial conductance range (S), uniform")
    set: Switching
    reset: Switching
    cycle_noise: float = Field(0.3, ge=0, description="relative sd of each switching change")
    program_noise: float = Field(0.01, ge=0, description="in-the-loop programming noise: sd G * this / 3, "
                                                        "clipped at +/- G * this")
    relaxation: Relaxation = Relaxation()
    drift: Drift = Drift()
    read: ReadModel = ReadModel()
    spread: Spread = Spread()
    faults: Faults = Faults()

    @model_validator(mode="after")
    def _bounds(self) -> "DevicePreset":
        if not self.g_min < self.g_max:
            raise ValueError("g_min must be below g_max")
        lo, hi = self.g_initial
        if not self.g_min <= lo <= hi <= self.g_max:
            raise ValueError("g_initial must lie within [g_min, g_max]")
        return self

    def with_faults(self, **fractions: float) -> "DevicePreset":
        """The same preset with other fault fractions (stuck_lrs, stuck_hrs, discordant)."""
        return self.model_copy(update={"faults": self.faults.model_copy(update=fractions)})

    def read_current(self, g, v):
        """Current through devices of conductance g (at the read voltage) under voltage v."""
        a = self.read.nonlinearity
        if a == 0:
            return g * v
        norm = self.read.voltage * a / math.sinh(a * self.read.voltage)
        return g * norm * _sinh(a * v) / a


def _sinh(x):
    return x.sinh() if hasattr(x, "sinh") else math.sinh(x)


def load_preset(name_or_path: str | Path) -> DevicePreset:
    """A preset by name (a file in simulator/presets) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(f"unknown device preset {str(name_or_path)!r} (known: {', '.join(preset_names())})")
    return DevicePreset.model_validate(yaml.safe_load(path.read_text()))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))

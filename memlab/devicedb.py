"""The device database: what characterization learned about a crossbar technology, in one
versioned file with its provenance. Hardware-aware training consumes exactly this.

- tuning imprecision: relative sd of a tuned device as a linear function of the target
  conductance, and the relative offset (mean, sd) of where tuning lands;
- V/3 disturbance: conductance changes keyed by how many devices were programmed after;
- stuck devices: fractions and conductance distributions;
- read noise.

`DeviceDatabase.tio2_measured()` is the instance built from the shipped TiO2 measurements
and published fits; `from_surveys` builds one from the project's own survey results.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simulator.device import Distribution

FORMAT = "memlab-device-database/1"
DATA = Path(__file__).parent / "data" / "tio2-passive-crossbar"


class Imprecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sigma_slope_pct_per_us: float = Field(description="sd % of target = slope * G[uS] + intercept")
    sigma_intercept_pct: float
    offset_mean_pct: float = 0.0
    offset_sd_pct: float = 0.0

    def sigma_pct(self, g_us):
        return self.sigma_slope_pct_per_us * g_us + self.sigma_intercept_pct


class StuckModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lrs_fraction: float = Field(ge=0, le=1)
    hrs_fraction: float = Field(ge=0, le=1)
    lrs: Distribution
    hrs: Distribution


class DeviceDatabase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    name: str
    provenance: str
    g_range: tuple[float, float] = Field(description="programmable conductance range (S)")
    imprecision: Imprecision
    disturbance: dict[int, list[float]] = Field(description="key -> conductance changes (S)")
    stuck: StuckModel
    read_noise_relative: float = 0.0
    read_noise_absolute: float = 0.0

    @classmethod
    @cache
    def tio2_measured(cls) -> "DeviceDatabase":
        samples = json.loads((DATA / "v3_disturbance_delta_g.json").read_text())["samples"]
        return cls(
            name="tio2-passive measured",
            provenance="Drolet et al. 2023 (Universite de Sherbrooke, MIT licence): V/3 disturbance "
                       "database and dead-crossbar maps in memlab/data/tio2-passive-crossbar; tuning "
                       "imprecision and offset, stuck fractions (0.5 % + 0.5 %) and stuck conductances "
                       "are the published fits used in their training.",
            g_range=(100e-6, 500e-6),
            imprecision=Imprecision(sigma_slope_pct_per_us=-6.24e-4, sigma_intercept_pct=0.691,
                                    offset_mean_pct=-0.589, offset_sd_pct=0.339),
            disturbance={int(k): v for k, v in samples.items() if v},
            stuck=StuckModel(lrs_fraction=0.005, hrs_fraction=0.005,
                             lrs=Distribution(kind="normal", mean=573e-6, sd=99e-6),
                             hrs=Distribution(kind="uniform", low=10e-6, high=100e-6)),
            read_noise_relative=0.001, read_noise_absolute=5e-7)

    @classmethod
    def from_surveys(cls, name: str, provenance: str, disturbance: dict[int, np.ndarray],
                     errors_by_level: dict[float, np.ndarray], stuck: StuckModel,
                     g_range: tuple[float, float], read_noise: tuple[float, float] = (0.0, 0.0)) -> "DeviceDatabase":
        """From the surveys' results (`protocols.surveys`): fits the imprecision line."""
        levels = np.array(sorted(errors_by_level), dtype=float)
        sd_pct = np.array([np.std(errors_by_level[g]) * 100 for g in levels])
        slope, intercept = np.polyfit(levels * 1e6, sd_pct, 1)
        offsets = np.concatenate([np.asarray(errors_by_level[g]) for g in levels]) * 100
        return cls(name=name, provenance=provenance, g_range=g_range,
                   imprecision=Imprecision(sigma_slope_pct_per_us=float(slope), sigma_intercept_pct=float(intercept),
                                           offset_mean_pct=float(offsets.mean()), offset_sd_pct=float(offsets.std())),
                   disturbance={int(k): [float(x) for x in v] for k, v in disturbance.items() if len(v)},
                   stuck=stuck, read_noise_relative=read_noise[0], read_noise_absolute=read_noise[1])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DeviceDatabase":
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format {data.get('format')!r})")
        return cls.model_validate(data)

    def disturbance_table(self, max_key: int) -> tuple[np.ndarray, np.ndarray]:
        """(samples padded into a [max_key + 1, n] array, counts per key). Keys beyond the
        database's reach borrow the largest key that has samples."""
        keys = sorted(self.disturbance)
        width = max(len(v) for v in self.disturbance.values())
        table = np.zeros((max_key + 1, width))
        counts = np.zeros(max_key + 1, dtype=int)
        for k in range(1, max_key + 1):
            src = max((key for key in keys if key <= k), default=keys[0])
            v = self.disturbance[src]
            table[k, :len(v)] = v
            counts[k] = len(v)
        return table, counts

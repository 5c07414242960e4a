"""Write-verify tuning of a whole array to a target conductance map.

Devices are programmed row by row (the order that moves the fewest relays). Programming a
device disturbs the ones already tuned (V/3 half-select stress), so after the pass the
array is read back, and devices that drifted out of tolerance are touched up in further
passes. Failed devices (a cap was hit) are not retried: pulsing them harder is what the
caps exist to prevent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.interfaces import Crossbar
from drivers.write_verify import TuneParams, TuneResult


class TuneArrayParams(BaseModel):
    """`tolerance` is what the array must meet when read back at the end; each device is
    tuned to the narrower band `tune.tolerance`, leaving room for the drift that later
    devices' programming causes and for read noise."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.01, gt=0, lt=1, description="acceptance tolerance of the final read-back")
    tune: TuneParams = TuneParams(tolerance=0.006)
    touch_up_passes: int = Field(3, ge=0, description="re-tuning passes for devices that drifted")
    verify_reads: int = Field(3, ge=1, description="reads averaged per device in each read-back")

    @model_validator(mode="after")
    def _band_inside_tolerance(self) -> "TuneArrayParams":
        if self.tune.tolerance > self.tolerance:
            raise ValueError(f"tune.tolerance {self.tune.tolerance} must not exceed tolerance {self.tolerance}")
        return self

    def with_tolerance(self, tolerance: float, guard: float = 0.6) -> "TuneArrayParams":
        """Same parameters for another acceptance tolerance, tuning band `guard` times it."""
        data = self.model_dump()
        data["tolerance"], data["tune"]["tolerance"] = tolerance, guard * tolerance
        return TuneArrayParams.model_validate(data)   # validated: model_copy would not check


@dataclass
class ArrayTuneResult:
    targets: np.ndarray                      # S; NaN = not targeted
    final: np.ndarray                        # verification read map (S); NaN where not targeted
    results: dict[tuple[int, int], TuneResult] = field(default_factory=dict)
    pulses: np.ndarray | None = None         # pulses per device over all passes
    passes: int = 0

    def in_tolerance(self, tolerance: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.abs(self.final / self.targets - 1) <= tolerance

    @property
    def stuck(self) -> list[TuneResult]:
        return [r for r in self.results.values() if r.stuck]

    @property
    def failed(self) -> list[TuneResult]:
        return [r for r in self.results.values() if not r.tuned]


Progress = Callable[[str, int, int, TuneResult], None]


def tune_array(xbar: Crossbar, targets: np.ndarray, params: TuneArrayParams | None = None,
               *, progress: Progress | None = None) -> ArrayTuneResult:
    params = params or TuneArrayParams()
    targets = np.asarray(targets, dtype=float)
    if targets.shape != (xbar.rows, xbar.cols):
        raise ValueError(f"target map is {targets.shape}, the crossbar is {xbar.rows}x{xbar.cols}")
    if np.any(targets[np.isfinite(targets)] <= 0):
        raise ValueError("target conductances must be positive (NaN leaves a device alone)")
    devices = [(r, c) for r in range(xbar.rows) for c in range(xbar.cols) if np.isfinite(targets[r, c])]
    out = ArrayTuneResult(targets=targets, final=np.full(targets.shape, np.nan),
                          pulses=np.zeros(targets.shape, dtype=int))
    tol = params.tolerance

    todo = devices
    for n in range(params.touch_up_passes + 1):
        label = "tune" if n == 0 else f"touch-up {n}"
        for k, (r, c) in enumerate(todo, start=1):
            result = xbar.tune(r, c, float(targets[r, c]), params.tune)
            out.results[(r, c)] = result
            out.pulses[r, c] += result.pulses
            if progress:
                progress(label, k, len(todo), result)
        out.passes = n + 1
        for r, c in devices:   # one sequence per device where the crossbar runs them
            out.final[r, c] = np.mean(xbar.pulse_and_read(r, c, [], 0.0, reads=params.verify_reads)[0])
        ok = out.in_tolerance(tol)
        todo = [(r, c) for r, c in devices if not ok[r, c] and out.results[(r, c)].tuned]
        if not todo:
            break
    return out


def checkerboard(rows: int, cols: int, low: float, high: float) -> np.ndarray:
    """Two-level checkerboard target map (S)."""
    board = (np.add.outer(np.arange(rows), np.arange(cols)) % 2).astype(float)
    return np.where(board == 0, low, high)

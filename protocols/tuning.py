"""Write-verify tuning of a whole array to a target conductance map.

Devices are programmed row by row (the order that moves the fewest relays). Programming a
device disturbs the ones already tuned (V/3 half-select stress), so after the pass the
array is read back, and devices that drifted out of tolerance are touched up in further
passes. Failed devices (a cap was hit) are not retried: pulsing them harder is what the
caps exist to prevent.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from drivers.interfaces import Crossbar
from drivers.write_verify import TuneParams, TuneResult

from .base import Outcome, PlanError, Protocol


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


def reporting(step) -> Progress:
    """tune_array's progress as steps of a progress display: a touch-up pass starts the count
    again over the devices it re-tunes."""
    def report(label: str, k: int, n: int, r: TuneResult) -> None:
        state = "ok" if r.tuned else ("STUCK" if r.stuck else "FAILED")
        step(f"{label} ({r.row},{r.col}) {r.conductance * 1e6:.1f} uS {state} {r.pulses} pulses",
             total=n, restart=k == 1 and label != "tune")
    return report


def checkerboard(rows: int, cols: int, low: float, high: float) -> np.ndarray:
    """Two-level checkerboard target map (S)."""
    board = (np.add.outer(np.arange(rows), np.arange(cols)) % 2).astype(float)
    return np.where(board == 0, low, high)


class TargetMap(BaseModel):
    """Exactly one of: a two-level checkerboard, one level for every device, or a map file
    (.csv in uS, .npy in S; an empty cell or NaN leaves a device alone)."""

    model_config = ConfigDict(extra="forbid")

    checkerboard_uS: tuple[float, float] | None = None
    uniform_uS: float | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "TargetMap":
        given = [k for k in ("checkerboard_uS", "uniform_uS", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of checkerboard_uS, uniform_uS, file"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    def resolve(self, rows: int, cols: int) -> tuple[np.ndarray, str, str]:
        """(map in S, where it came from, the unit it was written in)."""
        if self.checkerboard_uS is not None:
            low, high = self.checkerboard_uS
            return checkerboard(rows, cols, low * 1e-6, high * 1e-6), "targets.checkerboard_uS", "uS"
        if self.uniform_uS is not None:
            return np.full((rows, cols), self.uniform_uS * 1e-6), "targets.uniform_uS", "uS"
        targets, unit = load_targets(self.file)
        return targets, f"targets.file {self.file}", unit


class TuneProtocol(Protocol):
    """Write-verify tuning of the targeted devices, every parameter exposed: `tune` fields
    override the bench file's tuning section, which overrides the defaults."""

    protocol: Literal["tune"] = "tune"
    targets: TargetMap
    tolerance: float = Field(0.01, gt=0, lt=1, description="acceptance tolerance of the final read-back")
    tune: TuneParams = Field(default_factory=TuneParams, description="write-verify parameters "
                             "(tune.tolerance: 0.6 x tolerance unless given)")
    touch_up_passes: int = Field(3, ge=0)
    verify_reads: int = Field(3, ge=1)
    _plan: tuple | None = PrivateAttr(None)   # (TuneArrayParams, targets), set by check

    def relative_to(self, folder) -> "TuneProtocol":
        if self.targets.file is None or Path(self.targets.file).is_absolute():
            return self
        return self.model_copy(update={"targets": self.targets.model_copy(
            update={"file": str(Path(folder) / self.targets.file)})})

    def array_params(self, config) -> TuneArrayParams:
        tune = config.tune_params(**self.tune.model_dump(exclude_unset=True))
        if "tolerance" not in self.tune.model_fields_set:
            tune = tune.model_copy(update={"tolerance": 0.6 * self.tolerance})
        return TuneArrayParams(tolerance=self.tolerance, tune=tune, touch_up_passes=self.touch_up_passes,
                               verify_reads=self.verify_reads)

    def check(self, config) -> None:
        self.tuning_plan(config)

    def tuning_plan(self, config):
        try:
            params = self.array_params(config)
        except ValueError as exc:   # pydantic's ValidationError is one
            raise PlanError(f"tune: {' '.join(str(exc).split())}") from None
        targets, source, unit = self.targets.resolve(config.rows, config.cols)
        self._plan = (params, targets)
        return targets, params.tune, source, unit

    def steps(self, config) -> int:
        targets = self._plan[1] if self._plan else self.targets.resolve(config.rows, config.cols)[0]
        return int(np.isfinite(targets).sum())

    def run(self, xbar: Crossbar, step) -> Outcome:
        params, targets = self._plan
        result = tune_array(xbar, targets, params, progress=reporting(step))
        return Outcome(summarize(result, params.tolerance),
                       {"targets": result.targets, "final": result.final, "pulses": result.pulses})


def load_targets(path: str | Path) -> tuple[np.ndarray, str]:
    """A target map and the unit it was written in: .npy in siemens ('S'), or .csv in
    microsiemens ('uS'; an empty cell or nan leaves a device alone). Returns siemens."""
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise PlanError(f"{path}: target maps are .npy (siemens) or .csv (microsiemens)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the target map ({exc.strerror})") from None
    if path.suffix == ".npy":
        try:
            targets = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise PlanError(f"{path}: not a .npy array file ({' '.join(str(exc).split())})") from None
        if targets.dtype.kind not in "iuf":
            raise PlanError(f"{path}: holds {targets.dtype} values, not conductances")
        if targets.ndim != 2:
            raise PlanError(f"{path}: a target map is 2-D (rows x columns), this one has shape {targets.shape}")
        return targets.astype(float), "S"
    try:
        lines = list(csv.reader(data.decode("utf-8-sig").splitlines()))
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: not a text file (byte {exc.start})") from None
    rows, width = [], None
    for n, cells in enumerate(lines, start=1):
        if len(cells) <= 1 and not "".join(cells).strip():
            continue   # a blank line (a line of empty cells is a row left alone)
        if width is not None and len(cells) != width:
            raise PlanError(f"{path}: line {n} has {len(cells)} cells, the lines before it {width}")
        width = len(cells)
        row = []
        for k, cell in enumerate(cells, start=1):
            try:
                row.append(float(cell) if cell.strip() else np.nan)
            except ValueError:
                raise PlanError(f"{path}: line {n}, column {k}: {cell.strip()!r} is not a number") from None
        rows.append(row)
    if not rows:
        raise PlanError(f"{path}: no target values")
    return np.array(rows) * 1e-6, "uS"


def summarize(result: ArrayTuneResult, tolerance: float) -> dict:
    targeted = np.isfinite(result.targets)
    ok = result.in_tolerance(tolerance) & targeted
    stuck = {(r.row, r.col) for r in result.stuck}
    non_stuck = targeted.copy()
    for r, c in stuck:
        non_stuck[r, c] = False
    n_non_stuck = int(non_stuck.sum())
    return {
        "devices": int(targeted.sum()),
        "devices_in_tolerance": int(ok.sum()),
        "tolerance": tolerance,
        "non_stuck_devices": n_non_stuck,
        "fraction_in_tolerance_non_stuck": float((ok & non_stuck).sum() / n_non_stuck) if n_non_stuck else 0.0,
        "stuck_devices": [_device(r) for r in result.stuck],
        "failed_devices": [_device(r) for r in result.failed],
        "out_of_tolerance_devices": [
            {"row": int(r), "col": int(c), "target_uS": round(float(result.targets[r, c]) * 1e6, 2),
             "final_uS": round(float(result.final[r, c]) * 1e6, 2)}
            for r, c in zip(*np.nonzero(targeted & ~ok))],
        "pulses_per_device": round(float(result.pulses[targeted].mean()), 2),
        "pulses_per_device_max": int(result.pulses[targeted].max()),
        "passes": result.passes,
    }


def _device(r: TuneResult) -> dict:
    return {"row": r.row, "col": r.col, "conductance_uS": round(r.conductance * 1e6, 2),
            "reason": r.reason}

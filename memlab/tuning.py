"""The tuning job: check the plan, tune a bench's crossbar to a target map, recording every
operation in the run store as it happens, and summarize what came out."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drivers.write_verify import TuneResult
from protocols.tuning import ArrayTuneResult, TuneArrayParams, tune_array

from .bench import open_crossbar
from .benchlock import note_run
from .config import BenchConfig
from .preflight import PlanError, check_tuning
from .store import RunStore


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


def print_progress(label: str, k: int, n: int, result: TuneResult) -> None:
    """One updating line on a terminal; every eighth device (and any failure) otherwise."""
    state = "ok" if result.tuned else ("STUCK" if result.stuck else "FAILED")
    line = (f"{label}: {k}/{n} devices, ({result.row},{result.col}) {result.conductance * 1e6:7.1f} uS "
            f"{state:6s} {result.pulses:3d} pulses")
    if sys.stderr.isatty():
        print("\r" + line, end="" if k < n else "\n", file=sys.stderr, flush=True)
    elif k % 8 == 0 or k == n or not result.tuned:
        print(line, file=sys.stderr, flush=True)


def run_tuning(config: BenchConfig, targets: np.ndarray, params: TuneArrayParams, store: RunStore,
               *, kind: str = "tune", progress: Callable | None = print_progress,
               bench_clock: Callable[[], float] | None = None, source: str = "targets",
               unit: str = "S") -> dict:
    """Check the plan, tune, record, plot; returns the summary (also stored with the run).
    The run is created once the bench is connected and checked: a plan refused by the
    preflight, a bench in use or one that does not answer leaves no run behind."""
    from .plots import plot_tuning

    check_tuning(config, targets, params.tune, source=source, unit=unit)
    started = time.monotonic()
    with open_crossbar(config) as xbar:
        run = store.start_run(kind, params={"tuning": params.model_dump(mode="json"),
                                            "targets_shape": list(targets.shape)},
                              bench={**config.model_dump(mode="json"),
                                     "identities": {i.name: i.identity for i in xbar.instruments}})
        with run:
            note_run(config, run.id)
            run.save_array("targets", targets)
            run.record("connect", **{i.name: i.identity for i in xbar.instruments})
            xbar.journal = run.journal(bench_clock)
            trips, relays, clock0 = xbar.round_trips, xbar.relay_ops, bench_clock() if bench_clock else None
            result = tune_array(xbar, targets, params, progress=progress)
            n = max(1, int(np.isfinite(targets).sum()))
            run.save_array("final", result.final)
            run.save_array("pulses", result.pulses)
            summary = summarize(result, params.tolerance)
            summary.update(run_id=run.id, run_path=str(run.path), database=str(store.db_path),
                           wall_time_s=round(time.monotonic() - started, 2))
            summary["per_device"] = {"round_trips": round((xbar.round_trips - trips) / n, 2),
                                     "relay_ops": round((xbar.relay_ops - relays) / n, 2)}
            if bench_clock is not None:
                summary["bench_time_s"] = round(bench_clock(), 3)
                summary["per_device"]["bench_s"] = round((bench_clock() - clock0) / n, 5)
            plot_tuning(result, params.tolerance, run.path / "tuning.png")
            summary["plot"] = str(run.path / "tuning.png")
            run.set_summary(summary)
    return summary


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

"""The tuning job: tune a bench's crossbar to a target map, recording every operation in
the run store as it happens, and summarize what came out."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drivers.write_verify import TuneResult
from protocols.tuning import ArrayTuneResult, TuneArrayParams, tune_array

from .bench import open_crossbar
from .config import BenchConfig
from .plots import plot_tuning
from .store import RunStore


def load_targets(path: str | Path) -> np.ndarray:
    """A target map: .npy in siemens, or .csv in microsiemens (empty or nan = leave alone)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path).astype(float)
    if path.suffix == ".csv":
        rows = [[float(x) if x.strip() else np.nan for x in line.split(",")]
                for line in path.read_text().splitlines() if line.strip()]
        return np.array(rows) * 1e-6
    raise ValueError(f"{path}: target maps are .npy (siemens) or .csv (microsiemens)")


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
               bench_clock: Callable[[], float] | None = None) -> dict:
    """Tune, record, plot; returns the summary (also stored with the run)."""
    started = time.monotonic()
    run = store.start_run(kind, params={"tuning": params.model_dump(mode="json"),
                                        "targets_shape": list(targets.shape)},
                          bench=config.model_dump(mode="json"))
    with run:
        run.save_array("targets", targets)
        with open_crossbar(config) as xbar:
            run.record("connect", source=xbar.source.identity, switch=xbar.switch.identity)
            clock = bench_clock or (lambda: None)
            xbar.recorders.append(lambda op, fields: run.record(op, bench_time=clock(), **fields))
            result = tune_array(xbar, targets, params, progress=progress)
        run.save_array("final", result.final)
        run.save_array("pulses", result.pulses)
        summary = summarize(result, params.tolerance)
        summary.update(run_path=str(run.path), database=str(store.db_path),
                       wall_time_s=round(time.monotonic() - started, 2))
        if bench_clock is not None:
            summary["bench_time_s"] = round(bench_clock(), 3)
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

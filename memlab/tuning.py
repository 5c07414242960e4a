"""The tuning job: check the plan, tune a bench's crossbar to a target map, recording every
operation in the run store as it happens, and summarize what came out."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from protocols.tuning import TuneArrayParams, load_targets, reporting, summarize, tune_array  # noqa: F401

from .config import BenchConfig
from .preflight import check_tuning
from .progress import StepProgress
from .protocol_run import recorded_run
from .store import RunStore


def run_tuning(config: BenchConfig, targets: np.ndarray, params: TuneArrayParams, store: RunStore,
               *, kind: str = "tune", progress: bool = True,
               bench_clock: Callable[[], float] | None = None, source: str = "targets",
               unit: str = "S") -> dict:
    """Check the plan, tune, record, plot; returns the summary (also stored with the run).
    The run is created once the bench is connected and checked: a plan refused by the
    preflight, a bench in use or one that does not answer leaves no run behind."""
    from .plots import plot_tuning

    check_tuning(config, targets, params.tune, source=source, unit=unit)
    started = time.monotonic()
    params_json = {"tuning": params.model_dump(mode="json"), "targets_shape": list(targets.shape)}
    with recorded_run(config, store, kind, params_json, bench_clock) as (xbar, run):
        run.save_array("targets", targets)
        trips, relays, clock0 = xbar.round_trips, xbar.relay_ops, bench_clock() if bench_clock else None
        if progress:
            with StepProgress(kind, int(np.isfinite(targets).sum())) as step:
                result = tune_array(xbar, targets, params, progress=reporting(step))
        else:
            result = tune_array(xbar, targets, params)
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

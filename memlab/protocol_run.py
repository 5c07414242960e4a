"""Running a protocol: check the whole plan against the bench before connecting, then run it
on the bench's crossbar with every operation recorded in the run store as it happens, keep
its arrays, plot, and summarize. A plan refused by the preflight, a bench in use or one
that does not answer leaves no run behind."""

from __future__ import annotations

import time
from collections.abc import Callable

from protocols.base import Protocol

from .bench import open_crossbar
from .benchlock import note_run
from .config import BenchConfig
from .preflight import check_protocol
from .progress import StepProgress
from .store import RunStore


def run_protocol(config: BenchConfig, protocol: Protocol, store: RunStore, *,
                 bench_clock: Callable[[], float] | None = None, checked: bool = False) -> dict:
    from .plots import plot_run

    if not checked:
        check_protocol(config, protocol)
    started = time.monotonic()
    with open_crossbar(config) as xbar:
        run = store.start_run(protocol.protocol, params=protocol.model_dump(mode="json"),
                              bench={**config.model_dump(mode="json"),
                                     "identities": {i.name: i.identity for i in xbar.instruments}})
        with run:
            note_run(config, run.id)
            run.record("connect", **{i.name: i.identity for i in xbar.instruments})
            xbar.journal = run.journal(bench_clock)
            with StepProgress(protocol.protocol, protocol.steps(config)) as step:
                outcome = protocol.run(xbar, step)
            for name, array in outcome.arrays.items():
                run.save_array(name, array)
            plots = [str(p.resolve()) for p in plot_run(protocol.protocol, outcome.arrays, outcome.summary, run.path)]
            summary = {**outcome.summary, "protocol": protocol.protocol, "run_id": run.id,
                       "run_path": str(run.path.resolve()), "status": "completed", "plots": plots,
                       "wall_time_s": round(time.monotonic() - started, 2)}
            if bench_clock is not None:
                summary["bench_time_s"] = round(bench_clock(), 3)
            run.set_summary(summary)
    return summary

"""Running a protocol: check the whole plan against the bench before connecting, then run it
on the bench's crossbar with every operation recorded in the run store as it happens, keep
its arrays, plot, and summarize. A plan refused by the preflight, a bench in use or one
that does not answer leaves no run behind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from protocols.base import PlanError, Protocol
from protocols.registry import EXAMPLES, PROTOCOLS, shipped

from .bench import open_crossbar
from .benchlock import note_run
from .config import BenchConfig, describe, load_mapping
from .preflight import check_protocol
from .progress import StepProgress
from .store import RunStore


def load_protocol(name_or_path: str) -> Protocol:
    """A protocol from a YAML file or a shipped example's name; one line naming the file and
    the field if it is not a valid protocol. Files it names are relative to its folder."""
    path = Path(name_or_path)
    if not path.exists():
        if not (EXAMPLES / f"{name_or_path}.yaml").exists():
            raise PlanError(f"{name_or_path}: no such protocol file or shipped protocol "
                            f"(shipped: {', '.join(shipped())})")
        path = EXAMPLES / f"{name_or_path}.yaml"
    known = ", ".join(PROTOCOLS)
    data = load_mapping(path, f"a protocol file is a YAML mapping whose `protocol` is one of {known}",
                        error=PlanError)
    if "protocol" not in data:
        raise PlanError(f"{path}: a protocol file is a YAML mapping whose `protocol` is one of {known}")
    kind = PROTOCOLS.get(data["protocol"])
    if kind is None:
        raise PlanError(f"{path}: protocol: unknown protocol {data['protocol']!r} (known: {known})")
    try:
        return kind.model_validate(data).relative_to(path.parent)
    except ValidationError as exc:
        raise PlanError(f"{path}: {describe(exc)}") from None


@contextlib.contextmanager
def recorded_run(config: BenchConfig, store: RunStore, kind: str, params: dict,
                 bench_clock: Callable[[], float] | None = None):
    """(crossbar, run): the bench connected and checked, then a run started with the bench's
    snapshot and its instruments' identities, every operation journaled into it. Leaving
    it ends the run (completed, or failed or interrupted with the error) with the bench in
    its safe state."""
    with open_crossbar(config) as xbar:
        identities = {i.name: i.identity for i in xbar.instruments}
        run = store.start_run(kind, params=params, bench={**config.model_dump(mode="json"), "identities": identities})
        with run:
            note_run(config, run.id)
            run.record("connect", **identities)
            xbar.journal = run.journal(bench_clock)
            yield xbar, run


def run_protocol(config: BenchConfig, protocol: Protocol, store: RunStore, *,
                 bench_clock: Callable[[], float] | None = None, checked: bool = False) -> dict:
    from .plots import plot_run

    if not checked:
        check_protocol(config, protocol)
    started = time.monotonic()
    with recorded_run(config, store, protocol.protocol, protocol.model_dump(mode="json"), bench_clock) as (xbar, run):
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

"""The run store against the instruments: every operation the instruments carried out is in
the store, recorded as intended before it was sent. (Interrupted and killed runs:
test_interruptions.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from memlab.store import RunStore
from memlab.tuning import run_tuning
from protocols.tuning import TuneArrayParams, checkerboard


def _executed(bench, command: str) -> int:
    """How many times the analyzer executed and answered `command` (XE = a pulse, TI = a read)."""
    answered = 0
    log = bench.servers["analyzer"].log
    for k, entry in enumerate(log):
        if entry.direction == ">" and any(p.strip().startswith(command) for p in entry.text.split(";")):
            if k + 1 < len(log) and log[k + 1].direction == "<":
                answered += 1
    return answered


def test_store_holds_every_pulse_and_read(emulation, tmp_path):
    bench, live = emulation
    targets = np.full((8, 8), np.nan)
    targets[:2] = checkerboard(2, 8, 150e-6, 400e-6)
    summary = run_tuning(live, targets, TuneArrayParams(), RunStore(tmp_path), progress=None,
                         bench_clock=lambda: bench.clock)
    run = RunStore(tmp_path).get_run(summary["run_path"].rsplit("/", 1)[-1])
    pulses, reads = run.operations("pulse"), run.operations("read")
    assert len(pulses) == _executed(bench, "XE") > 0
    assert len(reads) == _executed(bench, "TI") > 0
    for op in pulses:
        assert op["row"] in (0, 1) and 0 <= op["col"] < 8
        assert 0.5 <= abs(op["voltage"]) <= 2.4 and op["width"] == 1e-3
        assert op["current"] is not None and op["extra"]["scheme"] == "v3"
        assert op["bench_time"] > 0 and op["t_wall"] > 0
    for op in reads:
        assert op["voltage"] == pytest.approx(0.2)
        assert op["conductance"] == pytest.approx(op["current"] / 0.2)
    bench_times = [op["bench_time"] for op in run.operations()[1:]]
    assert bench_times == sorted(bench_times)
    assert not [op for op in run.operations() if op["op"] not in ("connect", "read", "pulse")]

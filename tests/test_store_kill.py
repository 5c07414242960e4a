"""The run store against the instruments: every operation the instruments carried out is in
the store, even when the tuning process is killed with SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import time

import numpy as np
import pytest
from helpers import memlab_cli, received

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


def _operations(db, run_id=None) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM operations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize("kill_after", [5, 150])
def test_sigkill_mid_tuning_loses_no_executed_operation(emulation, tmp_path, kill_after):
    bench, live = emulation
    bench_file = tmp_path / "bench.yaml"
    bench_file.write_text(live.to_yaml())
    store = tmp_path / "store"
    child = memlab_cli("tune", str(bench_file), "--checkerboard", "150", "400", "--store", str(store))
    try:
        deadline = time.monotonic() + 60
        while _operations(store / "memlab.sqlite") < kill_after:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "tuning made no progress"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL

    with bench.lock:  # the instruments have stopped moving: the child is gone
        xe, ti = _executed(bench, "XE"), _executed(bench, "TI")
    with sqlite3.connect(store / "memlab.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (info,) = RunStore(store).runs()
    assert info["status"] == "running"  # nobody could mark it: the process died
    run = RunStore(store).get_run(info["id"])
    ops = run.operations()
    assert [op["seq"] for op in ops] == list(range(1, len(ops) + 1))
    pulses, reads = len(run.operations("pulse")), len(run.operations("read"))
    # at most the one operation in flight when the process died is missing
    assert xe - 1 <= pulses <= xe
    assert ti - 1 <= reads <= ti
    assert (xe - pulses) + (ti - reads) <= 1

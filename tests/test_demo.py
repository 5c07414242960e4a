"""`memlab demo`, end to end, as the README runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import memlab_cli

from memlab.store import RunStore

KEYS = {"devices", "devices_in_tolerance", "stuck_devices", "failed_devices", "pulses_per_device", "run_path"}


@pytest.mark.timeout(900)   # the whole demo: a few minutes on a loaded 2-core machine
def test_demo_tunes_the_checkerboard(tmp_path):
    out = tmp_path / "demo.json"
    child = memlab_cli("demo", "--json", str(out), "--store", str(tmp_path / "store"))
    stdout, stderr = child.communicate(timeout=240)
    assert child.returncode == 0, stderr
    summary = json.loads(out.read_text())
    assert KEYS <= summary.keys()
    assert summary["devices"] == 64

    stuck = {(d["row"], d["col"]) for d in summary["stuck_devices"]}
    truth = {tuple(d) for d in summary["simulator_truth"]["stuck_devices"]}
    assert stuck == truth  # the tuner recognised exactly the stuck devices
    assert summary["fraction_in_tolerance_non_stuck"] >= 0.95
    assert summary["simulator_truth"]["fraction_in_tolerance_non_stuck"] >= 0.95
    assert summary["devices_in_tolerance"] >= 0.95 * (64 - len(stuck))
    assert summary["simulator_truth"]["hazards"] == []
    assert 1 <= summary["pulses_per_device"] <= summary["pulses_per_device_max"]
    per_device = summary["per_device"]   # one round trip per pulse and per read at least, on SMUs
    assert per_device["round_trips"] >= summary["pulses_per_device"] and per_device["relay_ops"] > 0
    assert 0 < per_device["bench_s"] * 64 <= summary["bench_time_s"]

    run_path = Path(summary["run_path"])
    assert (run_path / "summary.json").exists() and (run_path / "tuning.png").stat().st_size > 10_000
    (info,) = RunStore(tmp_path / "store").runs()
    assert info["status"] == "completed" and info["kind"] == "demo"
    run = RunStore(tmp_path / "store").get_run(info["id"])
    assert len(run.operations("pulse")) == round(summary["pulses_per_device"] * 64)
    assert run.load_array("final").shape == (8, 8)
    for line in ("devices", "in tolerance", "pulses per device", "run data"):
        assert line in stdout


FAST_BENCHES = ["sim-4200-707b", "sim-b1500-wgfmu-e5250"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("bench", FAST_BENCHES)
def test_demo_on_every_shipped_bench(tmp_path, bench):
    """`memlab demo --bench NAME`: the same criterion on the benches with a fast pulse source,
    where reads and pulses run as pulse-and-read sequences (journaled as `sequence`)."""
    out = tmp_path / "demo.json"
    child = memlab_cli("demo", "--bench", bench, "--json", str(out), "--store", str(tmp_path / "store"))
    stdout, stderr = child.communicate(timeout=1100)
    assert child.returncode == 0, stderr
    summary = json.loads(out.read_text())
    assert summary["simulator_truth"]["fraction_in_tolerance_non_stuck"] >= 0.95
    assert summary["simulator_truth"]["hazards"] == []
    (info,) = RunStore(tmp_path / "store").runs()
    run = RunStore(tmp_path / "store").get_run(info["id"])
    journaled = len(run.operations("pulse")) + sum(op["extra"]["applied"] for op in run.operations("sequence"))
    assert journaled == round(summary["pulses_per_device"] * 64)

"""Protocols from their files, through `memlab run` on the emulated benches: what they
record, the plots they write, and the one-line refusals of bad files (no run left behind)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memlab.store import RunStore
from protocols.registry import EXAMPLES, PROTOCOLS, shipped

BENCH = "sim-b1500-wgfmu-e5250"   # 8x8, the fastest shipped bench to emulate


def memlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from memlab.cli import main; raise SystemExit(main())", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=900)


def _png(path: str) -> bool:
    data = Path(path).read_bytes()
    return data.startswith(b"\x89PNG") and len(data) > 1000


def test_every_protocol_has_an_example_file_and_is_listed(tmp_path):
    assert set(shipped()) >= set(PROTOCOLS)
    out = memlab("run", "--list", cwd=tmp_path)
    assert out.returncode == 0
    for name, line in shipped().items():
        assert f"{name}" in out.stdout and line in out.stdout


def test_read_map_from_its_example_records_every_read_and_plots(tmp_path):
    out = memlab("run", "read-map", "--bench", BENCH, "--simulate", "--store", "store",
                 "--json", "s.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "completed" and summary["devices"] == 64
    assert summary["run_id"] in out.stderr.splitlines()[0]   # announced at the start
    assert all(_png(p) for p in summary["plots"]) and summary["plots"]
    run = RunStore(tmp_path / "store").get_run(summary["run_id"])
    sequences = run.operations("sequence")
    assert len(run.operations("read")) + sum(len(op["extra"]["conductances"]) for op in sequences) == 64 * 3
    assert run.info()["status"] == "completed"
    g = run.load_array("conductance")
    assert g.shape == (8, 8) and np.isfinite(g).all()
    assert summary["conductance_uS"]["min"] == pytest.approx(float(g.min()) * 1e6, abs=1e-3)
    listing = memlab("runs", "--store", "store", "--kind", "read-map", cwd=tmp_path).stdout.splitlines()
    assert len(listing) == 2 and "bench" in listing[0] and "result" in listing[0]
    row = listing[1]
    assert summary["run_id"] in row and "completed" in row and BENCH in row and "64 devices" in row
    assert len(memlab("runs", "--store", "store", "--kind", "tune", cwd=tmp_path).stdout.splitlines()) == 1
    assert len(memlab("runs", "--store", "store", "--status", "failed", cwd=tmp_path).stdout.splitlines()) == 1
    shown = memlab("runs", "--store", "store", "show", summary["run_id"], cwd=tmp_path).stdout
    assert "status     completed" in shown and "reads: 3" in shown and "operations " in shown
    assert "Agilent Technologies,B1500A" in shown and "software   python" in shown and "memlab " in shown
    assert "arrays     conductance, read_spread" in shown
    missing = memlab("runs", "--store", "store", "show", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr
    _exports_round_trip(tmp_path, run)
    plot = Path(summary["plots"][0])
    plot.unlink()
    again = memlab("runs", "--store", "store", "plot", summary["run_id"], cwd=tmp_path)
    assert again.returncode == 0 and _png(str(plot)) and str(plot.name) in again.stdout


def _exports_round_trip(tmp_path: Path, run) -> None:
    """HDF5 and CSV exports give back exactly the stored numbers."""
    import csv

    import h5py

    from memlab.export import read_hdf5_operations

    for fmt in ("hdf5", "csv"):
        out = memlab("runs", "--store", "store", "export", run.id, "--format", fmt, "--out", f"x.{fmt}", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    stored = run.operations()
    assert read_hdf5_operations(tmp_path / "x.hdf5", run.id) == stored
    with h5py.File(tmp_path / "x.hdf5") as f:
        assert np.array_equal(f[run.id]["arrays"]["conductance"][()], run.load_array("conductance"), equal_nan=True)
        assert json.loads(f[run.id].attrs["params"])["reads"] == 3
    with open(tmp_path / "x.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(stored)
    for row, op in zip(rows, stored):
        for key in ("seq", "row", "col", "voltage", "current", "conductance", "bench_time", "t_wall"):
            assert (float(row[key]) if row[key] else None) == (None if op[key] is None else float(op[key]))


def test_tune_from_a_file_reaches_its_targets_and_plots(tmp_path):
    targets = np.full((8, 8), np.nan)
    targets[0, :3] = [150, 400, 250]
    (tmp_path / "plans").mkdir()
    np.savetxt(tmp_path / "plans" / "t.csv", targets, delimiter=",", fmt="%g")
    (tmp_path / "plans" / "t.yaml").write_text("protocol: tune\ntargets: {file: t.csv}\ntolerance: 0.01\n"
                                               "tune: {max_pulses: 600}\n")   # the map: beside the file
    out = memlab("run", "plans/t.yaml", "--bench", BENCH, "--simulate", "--store", "store", "--json", "s.json",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["devices"] == 3 and summary["devices_in_tolerance"] == 3
    assert all(_png(p) for p in summary["plots"])
    run = RunStore(tmp_path / "store").get_run(summary["run_id"])
    assert run.info()["params"]["tune"]["max_pulses"] == 600
    assert run.operations("sequence")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_shipped_tune_example_runs(tmp_path):
    out = memlab("run", "tune", "--bench", BENCH, "--simulate", "--store", "store", "--json", "s.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["fraction_in_tolerance_non_stuck"] >= 0.95
    assert all(_png(p) for p in summary["plots"])


BAD = [
    ("protocol: nonsense\n", "unknown protocol 'nonsense'"),
    ("reads: 3\n", "`protocol` is one of"),
    ("- a list\n", "a YAML mapping"),
    ("protocol: read-map\nreads: 0\n", "reads: Input should be greater than or equal to 1"),
    ("protocol: read-map\nreads: [1]\n", "reads: "),
    ("protocol: read-map\nspeed: 3\n", "speed: Extra inputs are not permitted"),
    ("protocol: read-map\ndevices: [[0, 9]]\n", "devices.0: device [0, 9] is outside the 8x8 crossbar"),
    ("protocol: read-map\ndevices: [[-1, 0]]\n", "rows and columns count from 0"),
    ("protocol: read-map\ndevices: [[1, 1], [1, 1]]\n", "listed twice"),
    ("protocol: read-map\nunselected: floating\n", "unselected: Input should be 'grounded'"),
    ("protocol: read-map\nreads: 3\n  bad indent: [\n", "not valid YAML"),
    ("protocol: tune\n", "targets: Field required"),
    ("protocol: tune\ntargets: {}\n", "give exactly one of"),
    ("protocol: tune\ntargets: {uniform_uS: 150, file: x.csv}\n", "(got uniform_uS, file)"),
    ("protocol: tune\ntargets: {uniform_uS: 5000}\n", "outside the conductance window"),
    ("protocol: tune\ntargets: {uniform_uS: -5}\n", "a target conductance is a positive number"),
    ("protocol: tune\ntargets: {file: missing.csv}\n", "missing.csv: cannot read the target map"),
    ("protocol: tune\ntargets: {uniform_uS: 150}\ntune: {width: -1e-4}\n", "tune.width: Input should be greater than 0"),
    ("protocol: tune\ntargets: {uniform_uS: 150}\ntune: {set_stop: 4.0}\n", "tune.set_stop: +4 V pulse"),
    ("protocol: tune\ntargets: {uniform_uS: 150}\ntune: {reset_stop: -3.5}\n", "tune.reset_stop: -3.5 V pulse"),
    ("protocol: tune\ntargets: {uniform_uS: 150}\ntune: {width: 0.5}\n", "tune.set_start"),
    ("protocol: tune\ntargets: {uniform_uS: 150}\ntolerance: 2\n", "tolerance: Input should be less than 1"),
    ("protocol: tune\ntargets: {uniform_uS: 150}\ntune: {set_start: 1.6, set_stop: 1.5}\n",
     "set_start must not exceed set_stop"),
    ("protocol: tune\ntargets: {checkerboard_uS: [150]}\n", "targets.checkerboard_uS"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[f"bad{k}" for k in range(len(BAD))])
def test_a_bad_protocol_file_is_refused_in_one_line_naming_it_and_leaves_no_run(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    out = memlab("run", "p.yaml", "--bench", BENCH, "--simulate", "--store", "store", cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memlab: error: p.yaml: "), lines
    assert message in lines[0], lines[0]
    assert not (tmp_path / "store").exists() or not RunStore(tmp_path / "store").runs()


def test_the_examples_folder_holds_only_valid_protocols():
    from memlab.protocol_run import load_protocol

    for path in EXAMPLES.glob("*.yaml"):
        assert load_protocol(str(path)).protocol in PROTOCOLS


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_a_line_per_step_off_a_terminal_and_a_bar_with_an_eta_on_one():
    from memlab.progress import StepProgress

    plain = _Stream(tty=False)
    with StepProgress("survey", 3, stream=plain) as step:
        for k in range(3):
            step(f"device {k}")
    lines = plain.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["survey: 1/3 device 0", "survey: 2/3 device 1",
                                                        "survey: 3/3 device 2"]
    bar = _Stream(tty=True)
    with StepProgress("survey", 2, stream=bar) as step:
        step("first")
        step("again", total=4, restart=True)
    text = bar.getvalue()
    assert "ETA" in text and "1/4" in text and "again" in text

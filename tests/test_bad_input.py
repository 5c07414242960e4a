"""Bad input is refused before connecting: one line naming the field, file or cell, exit
code 1 (2 for a command line argparse cannot parse), nothing sent to any instrument and no
run created. The bench file points at live emulated instruments, so a refusal that came too
late would show in their logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from drivers.write_verify import TuneParams
from helpers import received
from memlab.cli import main
from memlab.config import load_bench
from memlab.preflight import check_ramps
from memlab.store import RunStore
from protocols.tuning import TuneArrayParams


def _npy(array):
    def write(path: Path) -> Path:
        np.save(path, array)
        return path
    return write


def _text(text: str | bytes):
    def write(path: Path) -> Path:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path
    return write


GOOD_CSV = "\n".join(",".join(["200"] * 8) for _ in range(8))
RAGGED = "\n".join(",".join(["200"] * (8 if r != 3 else 7)) for r in range(8))
WORD = GOOD_CSV.replace("200", "two hundred", 1)
IN_SIEMENS = "\n".join(",".join(["0.0002"] * 8) for _ in range(8))

# (id, extra command line with FILE standing for the written file, the file, bench changes, fragments)
TUNE_CASES = [
    ("tolerance-zero", ["--uniform", "200", "--tolerance", "0"], None, {}, ["--tolerance: 0 is not", "(0, 1)"]),
    ("tolerance-negative", ["--uniform", "200", "--tolerance", "-0.01"], None, {}, ["--tolerance: -0.01"]),
    ("tolerance-nan", ["--uniform", "200", "--tolerance", "nan"], None, {}, ["--tolerance: nan"]),
    ("tolerance-above-one", ["--uniform", "200", "--tolerance", "1.5"], None, {}, ["--tolerance: 1.5"]),
    ("tolerance-not-a-number", ["--uniform", "200", "--tolerance", "abc"], None, {},
     ["--tolerance", "invalid float value: 'abc'"]),
    ("uniform-zero", ["--uniform", "0"], None, {}, ["--uniform: cell (0, 0) = 0 uS", "positive"]),
    ("uniform-negative", ["--uniform", "-100"], None, {}, ["--uniform: cell (0, 0) = -100 uS"]),
    ("uniform-nan-everywhere", ["--uniform", "inf"], None, {}, ["--uniform: cell (0, 0) = inf uS"]),
    ("uniform-in-siemens", ["--uniform", "0.0002"], None, {},
     ["--uniform: cell (0, 0) = 0.0002 uS", "outside the conductance window 40-600 uS",
      "did you mean 200 uS"]),
    ("uniform-huge", ["--uniform", "2e8"], None, {}, ["outside the conductance window"]),
    ("uniform-below-window", ["--uniform", "5"], None, {}, ["cell (0, 0) = 5 uS", "40-600 uS"]),
    ("checkerboard-high-out", ["--checkerboard", "150", "4000"], None, {}, ["--checkerboard: cell (0, 1) = 4000 uS"]),
    ("checkerboard-one-value", ["--checkerboard", "150"], None, {}, ["--checkerboard", "expected 2 arguments"]),
    ("no-targets", [], None, {}, ["one of the arguments --checkerboard --uniform --targets is required"]),
    ("two-kinds-of-targets", ["--uniform", "200", "--checkerboard", "1", "2"], None, {}, ["not allowed with"]),
    ("unknown-option", ["--uniform", "200", "--voltage", "3"], None, {}, ["unrecognized arguments: --voltage 3"]),
    ("json-in-a-missing-folder", ["--uniform", "200", "--json", "/nonexistent/folder/out.json"], None, {},
     ["--json /nonexistent/folder/out.json: folder /nonexistent/folder does not exist"]),
    # target files
    ("npy-in-wrong-unit", ["--targets", "FILE"], ("t.npy", _npy(np.full((8, 8), 200.0))), {},
     ["t.npy: cell (0, 0) = 200 S", "40-600 uS", ".npy maps are in siemens: did you mean 200 uS = 0.0002 S?"]),
    ("npy-wrong-shape", ["--targets", "FILE"], ("t.npy", _npy(np.full((4, 4), 2e-4))), {},
     ["t.npy: the target map is 4x4, the crossbar is 8x8"]),
    ("npy-one-dimensional", ["--targets", "FILE"], ("t.npy", _npy(np.full(64, 2e-4))), {},
     ["t.npy: a target map is 2-D", "(64,)"]),
    ("npy-of-text", ["--targets", "FILE"], ("t.npy", _npy(np.full((8, 8), "abc"))), {},
     ["t.npy: holds <U3 values, not conductances"]),
    ("npy-not-an-array", ["--targets", "FILE"], ("t.npy", _text("200,200\n")), {}, ["t.npy: not a .npy array file"]),
    ("npy-negative-cell", ["--targets", "FILE"],
     ("t.npy", _npy(np.where(np.eye(8, dtype=bool), -2e-4, 2e-4))), {}, ["t.npy: cell (0, 0) = -0.0002 S", "positive"]),
    ("npy-infinite-cell", ["--targets", "FILE"], ("t.npy", _npy(np.where(np.eye(8)[::-1] > 0, np.inf, 2e-4))), {},
     ["t.npy: cell (0, 7) = inf S"]),
    ("csv-ragged", ["--targets", "FILE"], ("t.csv", _text(RAGGED)), {}, ["t.csv: line 4 has 7 cells, the lines before it 8"]),
    ("csv-word", ["--targets", "FILE"], ("t.csv", _text(WORD)), {}, ["t.csv: line 1, column 1: 'two hundred' is not a number"]),
    ("csv-in-siemens", ["--targets", "FILE"], ("t.csv", _text(IN_SIEMENS)), {},
     ["t.csv: cell (0, 0) = 0.0002 uS", "in microsiemens: did you mean 200 uS?"]),
    ("csv-empty", ["--targets", "FILE"], ("t.csv", _text("\n\n")), {}, ["t.csv: no target values"]),
    ("csv-seven-rows", ["--targets", "FILE"], ("t.csv", _text("\n".join(GOOD_CSV.splitlines()[:7]))), {},
     ["t.csv: the target map is 7x8, the crossbar is 8x8"]),
    ("csv-binary", ["--targets", "FILE"], ("t.csv", _text(b"\xff\xfe\x00\x81")), {}, ["t.csv: not a text file"]),
    ("targets-txt", ["--targets", "FILE"], ("t.txt", _text(GOOD_CSV)), {}, ["t.txt: target maps are .npy"]),
    ("targets-missing", ["--targets", "/nonexistent/t.csv"], None, {}, ["/nonexistent/t.csv: cannot read the target map"]),
    # parameter files
    ("params-not-yaml", ["--uniform", "200", "--params", "FILE"], ("p.yaml", _text("tune: {width: [1e-3\n")), {},
     ["p.yaml: not valid YAML", "line"]),
    ("params-a-list", ["--uniform", "200", "--params", "FILE"], ("p.yaml", _text("- 1\n- 2\n")), {},
     ["p.yaml: a parameter file is a YAML mapping"]),
    ("params-unknown-field", ["--uniform", "200", "--params", "FILE"], ("p.yaml", _text("tolerence: 0.01\n")), {},
     ["p.yaml: tolerence: Extra inputs are not permitted"]),
    ("params-tolerance", ["--uniform", "200", "--params", "FILE"], ("p.yaml", _text("tolerance: 1.5\n")), {},
     ["p.yaml: tolerance: Input should be less than 1"]),
    ("params-set-stop-above-limit", ["--uniform", "200", "--params", "FILE"],
     ("p.yaml", _text("tune: {set_stop: 3.0}\n")), {}, ["tune.set_stop: +3 V pulse", "exceeds max_device_voltage 2.5 V"]),
    ("params-reset-stop-above-limit", ["--uniform", "200", "--params", "FILE"],
     ("p.yaml", _text("tune: {reset_stop: -2.7}\n")), {}, ["tune.reset_stop: -2.7 V pulse"]),
    ("params-width-above-limit", ["--uniform", "200", "--params", "FILE"],
     ("p.yaml", _text("tune: {width: 0.02}\n")), {}, ["tune.set_start", "pulse width 0.02 s outside (0, 0.01] s"]),
    ("params-width-below-smu", ["--uniform", "200", "--params", "FILE"],
     ("p.yaml", _text("tune: {width: 1.0e-4}\n")), {}, ["SMU pulses are at least 0.5 ms wide"]),
    ("params-ramp-upside-down", ["--uniform", "200", "--params", "FILE"],
     ("p.yaml", _text("tune: {set_start: 1.2, set_stop: 1.0}\n")), {}, ["p.yaml: tune: set_start must not exceed set_stop"]),
    ("params-band-wider-than-tolerance", ["--uniform", "200", "--params", "FILE"],
     ("p.yaml", _text("tolerance: 0.01\ntune: {tolerance: 0.02}\n")), {}, ["tune.tolerance 0.02 must not exceed tolerance 0.01"]),
    ("params-missing", ["--uniform", "200", "--params", "/nonexistent/p.yaml"], None, {},
     ["/nonexistent/p.yaml: cannot read the file"]),
    # bench limits the plan does not fit
    ("limit-below-the-ramp", ["--uniform", "200"], None, {"max_device_voltage": 1.2, "max_line_voltage": 1.2},
     ["tune.set_stop: +1.5 V pulse", "max_"]),
    ("energy-limit-below-the-ramp", ["--uniform", "200"], None, {"max_pulse_energy": 5e-6},
     ["tune.set_start: +0.7 V pulse", "max_pulse_energy 5e-06 J"]),
    ("width-limit-below-the-ramp", ["--uniform", "200"], None, {"max_pulse_width": 5e-4},
     ["tune.set_start", "pulse width 0.001 s outside (0, 0.0005] s"]),
]


def bench_with(tmp_path: Path, live, limits: dict) -> Path:
    data = yaml.safe_load(live.to_yaml())
    data["limits"].update(limits)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("case_id, extra, file, limits, fragments", TUNE_CASES, ids=[c[0] for c in TUNE_CASES])
def test_bad_tune_input_is_refused_before_connecting(emulation, tmp_path, capsys, case_id, extra, file,
                                                     limits, fragments):
    bench, live = emulation
    bench_path = bench_with(tmp_path, live, limits)
    if file is not None:
        name, write = file
        target = write(tmp_path / name)
        extra = [str(target) if a == "FILE" else a for a in extra]
    store = tmp_path / "runs"
    code = run_main(["tune", str(bench_path), *extra, "--store", str(store)])
    assert code == (2 if case_id in ARGPARSE else 1)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memlab: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err and out == ""
    assert received(bench, "analyzer") == [] and received(bench, "switch") == []
    assert not store.exists() or RunStore(store).runs() == []


ARGPARSE = {"tolerance-not-a-number", "checkerboard-one-value", "no-targets", "two-kinds-of-targets",
            "unknown-option"}


def run_main(argv: list[str]) -> int:
    """memlab's exit code: argparse exits (code 2) instead of returning."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_the_corpus_is_large_enough():
    assert len(TUNE_CASES) >= 30


def test_wiring_beyond_the_switch_as_it_reports_itself_is_refused_before_any_pulse(emulation, tmp_path, capsys):
    """Port 30 is within an E5250A mainframe's 48 but beyond the 24 of the two cards this one
    reports at connect: refused then, before anything is energized, and no run is created."""
    bench, live = emulation
    data = yaml.safe_load(live.to_yaml())
    data["wiring"]["columns"][7] = 30
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    store = tmp_path / "runs"
    assert main(["tune", str(path), "--uniform", "200", "--store", str(store)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("memlab: error: wiring.columns[7]: switch output port 30, but switch has 24"), err
    assert len(err.splitlines()) == 1
    assert "XE" not in received(bench, "analyzer")
    assert not any(c.startswith(("DV", "PV")) and ",0,0" not in c for c in received(bench, "analyzer"))
    assert not any(":CLOS " in c for c in received(bench, "switch"))
    assert RunStore(store).runs() == []


def test_the_shipped_limits_and_the_default_tuning_agree():
    """The defaults of a bench file's limits admit the default tuning ramps, and so does the
    shipped bench."""
    bench = load_bench("sim-b1500-e5250")
    check_ramps(bench, TuneArrayParams().tune)
    check_ramps(bench.model_copy(update={"limits": type(bench.limits)()}), TuneParams())
    check_ramps(bench.model_copy(update={"limits": type(bench.limits)()}), TuneArrayParams().tune)

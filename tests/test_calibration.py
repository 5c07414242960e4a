"""`memlab sim calibrate`: the simulated TiO2 crossbar against the measured database and the
published tuning-imprecision fit (acceptance figures of the simulator issue).

The default run surveys 3 simulated arrays (the first 3 of the 20 the acceptance run
surveys, same seed) and checks each figure against its acceptance bound widened by the
sampling error of the smaller sample; the acceptance itself, every bound on all 20 arrays,
is the slow test at the end (`make reproduce`)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from memlab.cli import main

KEYS = ("1", "5", "10", "20", "40")
LEVELS = ("100", "200", "300", "400", "500")
ARRAYS = 3

# the survey of the fixture: about 30 s on an idle 2-core machine, 80 s with two busy processes beside it
pytestmark = pytest.mark.timeout(900)


def run_calibrate(folder, arrays: int) -> tuple[dict, str]:
    """`memlab sim calibrate --arrays N --json ... --database-out ...`, in-process."""
    out = folder / "calibration.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sim", "calibrate", "--arrays", str(arrays), "--json", str(out),
                     "--database-out", str(folder / "simulated-db.json")])
    assert code == 0
    return json.loads(out.read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return run_calibrate(tmp_path_factory.mktemp("calibration"), ARRAYS)


def mean_bound(d: dict) -> float:
    """The acceptance bound on the simulated mean at a key."""
    return max(0.3 * abs(d["meas_mean"]), 0.5e-6, 2.5 * d["meas_sem"])


def test_json_has_the_agreed_shape(calibration):
    result, _ = calibration
    assert result["arrays"] == ARRAYS
    assert set(result["disturbance"]) == set(KEYS)
    for d in result["disturbance"].values():
        assert {"sim_mean", "meas_mean", "sim_std", "meas_std", "ks"} <= d.keys()
        assert abs(d["meas_mean"]) < 1e-4 and 1e-6 < d["meas_std"] < 1e-4  # siemens
    assert set(result["tuning_sigma_pct"]) == set(LEVELS)
    for t in result["tuning_sigma_pct"].values():
        assert {"sim", "published"} <= t.keys()


def test_measured_side_is_the_shipped_database(calibration):
    result, _ = calibration
    d = result["disturbance"]
    assert d["1"]["meas_mean"] == pytest.approx(-0.37e-6, abs=0.01e-6)
    assert d["10"]["meas_std"] == pytest.approx(12.1e-6, abs=0.1e-6)
    assert d["40"]["meas_n"] == 70
    assert result["tuning_sigma_pct"]["300"]["published"] == pytest.approx(-6.24e-4 * 300 + 0.691)


def test_disturbance_matches_the_measurements(calibration):
    """At each key, the simulated mean within the acceptance bound plus 2.5 standard errors
    of the simulated mean (about 190 samples at key 1, 70 at key 40); the KS statistic at keys
    1, 5 and 10 below 0.2 plus its 95 % sampling fluctuation. (The skew of a few hundred
    samples of this heavy-tailed change swings through zero: the slow test checks it on 20
    arrays.) Checked over seeds 0-4 of the 3-array survey: the worst mean used 0.75 of the
    widened bound (key 20, seed 2; 0.27 at seed 0, the one run here), and the largest KS at
    keys 1-10 was 0.154 (seed 2; the bound is about 0.30)."""
    result, _ = calibration
    for key in KEYS:
        d = result["disturbance"][key]
        sampling = 2.5 * d["sim_std"] / math.sqrt(d["sim_n"])
        assert abs(d["sim_mean"] - d["meas_mean"]) <= mean_bound(d) + sampling, (key, d)
        if key in ("1", "5", "10"):
            n, m = d["sim_n"], d["meas_n"]
            assert d["ks"] < 0.2 + 1.36 * math.sqrt((n + m) / (n * m)), (key, d)


def test_tuning_imprecision_matches_the_published_fit(calibration):
    """The sigma at each level within 25 % of the published fit plus three standard errors of
    a standard deviation of the n (about 38) errors at that level: the bare 25 % fails on
    3 arrays (500 uS at seed 0: 0.502 against 0.379). Checked over seeds 0-4 of the 3-array
    survey: the worst used 0.69 of the widened bound (300 uS, seed 3; 0.46 at seed 0)."""
    result, _ = calibration
    for level in LEVELS:
        t = result["tuning_sigma_pct"][level]
        sampling = 3 * t["sim"] / math.sqrt(2 * (t["n"] - 1))
        assert abs(t["sim"] - t["published"]) <= 0.25 * t["published"] + sampling, (level, t)


def test_table_is_printed_beside_the_measurements(calibration):
    result, stdout = calibration
    assert f"({ARRAYS} simulated 8x8 arrays per survey)" in stdout
    assert "sim mean meas mean" in stdout and "published" in stdout
    d = result["disturbance"]["10"]
    assert f"{d['sim_mean'] * 1e6:9.2f} {d['meas_mean'] * 1e6:9.2f}" in stdout
    # the acceptance line says what the checks say, naming any figure out of bounds
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert len(result["checks"]) == 5 + 3 * 2 + 5
    if failed:
        assert "acceptance: OUT OF BOUNDS: " + ", ".join(failed) in stdout
    else:
        assert "acceptance: all figures within bounds" in stdout


def test_the_surveys_become_a_device_database(calibration):
    """The simulated surveys as a database file: the same disturbance samples and an
    imprecision line fitted through the same sigmas."""
    from memlab.devicedb import DeviceDatabase

    result, stdout = calibration
    db = DeviceDatabase.load(result["database"])
    assert f"device database: {result['database']}" in stdout
    for key in KEYS:
        d = result["disturbance"][key]
        samples = db.disturbance[int(key)]
        assert len(samples) == d["sim_n"]
        assert sum(samples) / len(samples) == pytest.approx(d["sim_mean"], rel=1e-9)
    # the imprecision line: the least-squares line through the survey's sigmas
    sims = [result["tuning_sigma_pct"][level]["sim"] for level in LEVELS]
    slope, intercept = np.polyfit([int(level) for level in LEVELS], sims, 1)
    for level in LEVELS:
        assert db.imprecision.sigma_pct(int(level)) == pytest.approx(slope * int(level) + intercept, rel=1e-6)
    assert db.stuck.lrs_fraction == 0.005 and db.g_range == (100e-6, 500e-6)
    assert (db.read_noise_relative, db.read_noise_absolute) == (0.001, 5e-7)


def test_a_train_job_uses_the_database_file(calibration, tmp_path):
    """`database:` in a job (relative to the job file) is what hardware-aware training draws from."""
    import shutil

    from memlab.cli import main
    from memlab.store import RunStore
    from memlab.train import load_job

    result, _ = calibration
    shutil.copy(result["database"], tmp_path / "db.json")
    job = tmp_path / "job.yaml"
    job.write_text("method: hardware_aware\ndatabase: db.json\nconfig: {epochs: 5}\nevaluate: {transfers: 20}\n")
    assert load_job(job).device_database().name == "tio2-passive simulated"
    assert main(["train", str(job), "--store", str(tmp_path / "runs")]) == 0
    store = RunStore(tmp_path / "runs")
    (run,) = store.runs()
    assert run["status"] == "completed"
    assert store.get_run(run["id"]).info()["params"]["database"] == str(tmp_path / "db.json")
    (tmp_path / "bad.yaml").write_text("method: hardware_aware\ndatabase: missing.json\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_calibration_acceptance_on_20_arrays(tmp_path):
    """The acceptance figures of the simulator issue, on the 20 arrays `memlab sim calibrate`
    surveys by default: every bound unwidened, the skew at keys 1, 5 and 10 negative."""
    result, stdout = run_calibrate(tmp_path, 20)
    assert result["arrays"] == 20
    for key in KEYS:
        d = result["disturbance"][key]
        assert abs(d["sim_mean"] - d["meas_mean"]) <= mean_bound(d), (key, d)
        if key in ("1", "5", "10"):
            assert d["sim_skew"] < 0 and d["ks"] < 0.2, (key, d)
    for level in LEVELS:
        t = result["tuning_sigma_pct"][level]
        assert abs(t["sim"] - t["published"]) <= 0.25 * t["published"], (level, t)
    assert all(result["checks"].values()), result["checks"]
    assert "acceptance: all figures within bounds" in stdout

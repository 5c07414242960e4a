"""`memlab sim calibrate`: the simulated TiO2 crossbar against the measured database and the
published tuning-imprecision fit (acceptance figures of the simulator issue)."""

from __future__ import annotations

import json

import pytest
from helpers import memlab_cli

KEYS = ("1", "5", "10", "20", "40")
LEVELS = ("100", "200", "300", "400", "500")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    out = folder / "calibration.json"
    child = memlab_cli("sim", "calibrate", "--json", str(out), "--database-out", str(folder / "simulated-db.json"))
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr
    return json.loads(out.read_text()), stdout


def test_json_has_the_agreed_shape(calibration):
    result, _ = calibration
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
    result, _ = calibration
    for key in KEYS:
        d = result["disturbance"][key]
        allowed = max(0.3 * abs(d["meas_mean"]), 0.5e-6, 2.5 * d["meas_sem"])
        assert abs(d["sim_mean"] - d["meas_mean"]) <= allowed, (key, d)
        if key in ("1", "5", "10"):
            assert d["sim_skew"] < 0 and d["ks"] < 0.2, (key, d)


def test_tuning_imprecision_matches_the_published_fit(calibration):
    result, _ = calibration
    for level in LEVELS:
        t = result["tuning_sigma_pct"][level]
        assert abs(t["sim"] - t["published"]) <= 0.25 * t["published"], (level, t)


def test_table_is_printed_beside_the_measurements(calibration):
    result, stdout = calibration
    assert "sim mean meas mean" in stdout and "published" in stdout
    assert "acceptance: all figures within bounds" in stdout
    assert all(result["checks"].values())


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
    for level in LEVELS:
        fitted = db.imprecision.sigma_pct(int(level))
        assert fitted == pytest.approx(result["tuning_sigma_pct"][level]["sim"], abs=0.08)
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

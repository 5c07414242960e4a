"""`memlab reproduce` and `memlab train`: the commands, the JSON shapes, the stored runs.
Quick versions run by default; the full reproductions are marked slow (`make reproduce`)."""

from __future__ import annotations

import json

import pytest

from memlab.cli import main
from memlab.store import RunStore

SHAPES = {
    "moons": lambda r: set(r["hardware_aware"]) == set(r["regular"]) == {"100", "95", "90", "80"}
    and r["transfers"] > 0,
    "mat-mnist": lambda r: set(r["regular"]) == set(r["noise_injection"]) == {"0", "5", "10", "15", "20", "30"}
    and all(len(v) == 2 for v in r["regular"].values()) and r["train_images"] > 0 and r["test_images"] == 2000,
    "fault-pruning": lambda r: all(len(r[k]) == 2 for k in ("fault_free", "pruning", "freezing", "unpruned")),
    "bench-loop": lambda r: {"in_the_loop_accuracy", "ex_situ_accuracy", "operations"} <= set(r),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_quick_reproduction_writes_its_table_json_and_run(name, tmp_path, capsys):
    out = tmp_path / f"{name}.json"
    assert main(["reproduce", name, "--quick", "--json", str(out), "--store", str(tmp_path / "runs")]) == 0
    result = json.loads(out.read_text())
    assert SHAPES[name](result), result
    printed = capsys.readouterr().out
    assert "published" in printed.lower() or name == "bench-loop"
    runs = RunStore(tmp_path / "runs").runs()
    kinds = {r["kind"]: r for r in runs}
    assert kinds[f"reproduce-{name}"]["status"] == "completed"
    if name == "bench-loop":   # one run, holding every operation and the bench it ran on
        assert len(runs) == 1
        stored = RunStore(tmp_path / "runs").get_run(runs[0]["id"])
        assert len(stored.operations()) == result["operations"] > 0
        assert stored.info()["bench"]["instruments"].keys() == {"analyzer", "switch"}


def test_bench_loop_goes_through_the_instruments_and_the_store(tmp_path):
    from memlab.training.bench_loop import reproduce_bench_loop

    r = reproduce_bench_loop(epochs=1, n_train=32, n_test=40, store=str(tmp_path))
    run = next(x for x in RunStore(tmp_path).runs() if x["kind"] == "bench-loop")
    ops = RunStore(tmp_path).get_run(run["id"]).operations()
    assert r["operations"] == len(ops) > 100
    assert {"read", "pulse"} <= {op["op"] for op in ops}
    assert all(op["bench_time"] is not None for op in ops)
    assert 0 <= r["in_the_loop_accuracy"] <= 100 and 0 <= r["ex_situ_accuracy"] <= 100


def test_train_jobs_validate(tmp_path):
    from memlab.train import load_job

    for name in ("noise-injection", "hardware-aware", "in-the-loop"):
        assert load_job(name).method.replace("_", "-") == name
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: magic\n")
    assert main(["train", str(bad)]) == 1


def test_train_hardware_aware_job(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("method: hardware_aware\nconfig: {epochs: 20}\nevaluate: {transfers: 50}\n")
    assert main(["train", str(job), "--store", str(tmp_path / "runs"), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary["hardware_aware"]) == {"100", "95", "90", "80"}
    (run,) = RunStore(tmp_path / "runs").runs()
    assert run["kind"] == "train-hardware-aware" and run["status"] == "completed"


@pytest.mark.slow
def test_moons_reproduces_the_published_figure(tmp_path):
    out = tmp_path / "moons.json"
    assert main(["reproduce", "moons", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["transfers"] == 10_000
    assert r["hardware_aware"]["95"] >= 79.5
    assert r["regular"]["95"] <= r["hardware_aware"]["95"] - 30


@pytest.mark.slow
def test_mat_mnist_reproduces_the_published_gap(tmp_path):
    out = tmp_path / "mat.json"
    assert main(["reproduce", "mat-mnist", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["noise_injection"]["20"][0] >= r["regular"]["20"][0] + 15
    assert r["noise_injection"]["0"][0] >= r["regular"]["0"][0] - 2


@pytest.mark.slow
def test_fault_pruning_reproduces_the_published_result(tmp_path):
    out = tmp_path / "fp.json"
    assert main(["reproduce", "fault-pruning", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["pruning"][0] >= r["fault_free"][0] - 3
    assert r["pruning"][0] >= r["unpruned"][0] + 10


@pytest.mark.slow
def test_bench_loop_full(tmp_path):
    out = tmp_path / "bl.json"
    assert main(["reproduce", "bench-loop", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["in_the_loop_accuracy"] > 75 and r["operations"] > 1000


def test_train_in_the_loop_job_keeps_the_pruned_map_of_every_epoch(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("method: in_the_loop\nconfig: {mode: prune, epochs: 2}\n")
    assert main(["train", str(job), "--store", str(tmp_path / "runs")]) == 0
    store = RunStore(tmp_path / "runs")
    (run,) = store.runs()
    stored = store.get_run(run["id"])
    names = sorted(p.stem for p in stored.path.glob("removed_epoch*.npy"))
    assert names == [f"removed_epoch{e:03d}_layer{k}" for e in (1, 2) for k in (0, 1)]
    maps = [stored.load_array(n) for n in names]
    assert maps[0].shape == (784, 128) and maps[0].dtype == bool
    assert (stored.path / "connectivity.png").stat().st_size > 0
    table = (stored.path / "table.txt").read_text().splitlines()
    assert table[1].split() == ["epoch", "test", "accuracy", "%", "connectivity", "%"] and len(table) == 4

"""`memlab reproduce` and `memlab train`: the commands, the JSON shapes, the stored runs.
Quick versions run by default; the full reproductions are marked slow (`make reproduce`)."""

from __future__ import annotations

import json

import pytest

from helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from memlab.cli import main
from memlab.store import RunStore
from memlab.training.moons import PUBLISHED

SHAPES = {
    "moons": lambda r: set(r["hardware_aware"]) == set(r["regular"]) == {"100", "95", "90", "80"}
    and all(len(v) == 2 for v in (*r["hardware_aware"].values(), *r["regular"].values()))
    and all(len(v) == r["seeds"] for k in ("hardware_aware", "regular") for v in r["per_seed"][k]["table"].values())
    and r["transfers"] > 0,
    "mat-mnist": lambda r: set(r["regular"]) == set(r["noise_injection"]) == {"0", "5", "10", "15", "20", "30"}
    and all(len(v) == 2 for v in r["regular"].values()) and r["train_images"] > 0 and r["test_images"] == 2000,
    "fault-pruning": lambda r: all(len(r[k]) == 2 for k in ("fault_free", "pruning", "freezing", "unpruned"))
    and all(len(v) == r["seeds"] for v in r["per_seed"].values()),
    "bench-loop": lambda r: {"in_the_loop_accuracy", "ex_situ_accuracy", "operations"} <= set(r),
}


def quick(name: str, tmp_path, capsys) -> tuple[dict, str, list[dict]]:
    """`memlab reproduce NAME --quick`: its JSON (checked for its shape), printed table, runs."""
    out = tmp_path / f"{name}.json"
    assert main(["reproduce", name, "--quick", "--json", str(out), "--store", str(tmp_path / "runs")]) == 0
    result = json.loads(out.read_text())
    assert SHAPES[name](result), result
    printed = capsys.readouterr().out
    assert "published" in printed.lower() or name == "bench-loop"
    runs = RunStore(tmp_path / "runs").runs()
    kinds = {r["kind"]: r for r in runs}
    assert kinds[f"reproduce-{name}"]["status"] == "completed"
    return result, printed, runs


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["mat-mnist", "fault-pruning"])
def test_quick_reproduction_writes_its_table_json_and_run(name, tmp_path, capsys):
    quick(name, tmp_path, capsys)


@pytest.mark.timeout(900)
def test_quick_moons_is_the_headline_check(tmp_path, capsys):
    """Hardware-aware training beats regular training at the 95 % column after simulated
    transfer (Drolet et al.: 79.5 against 18.5 %). The quick reproduction: training seed 0,
    1,000 simulated transfers of each network (transfer seed 0), the full training.
    Checked over training seeds 0-7 (transfer seed = training seed, 1,000 transfers):
    hardware-aware 79.5 78.0 79.5 79.0 78.0 79.5 79.0 78.5, regular 8.0 20.5 18.5 12.5 40.5 24.5
    2.0 14.5; the gap is at least 37.5 points (seed 4), 71.5 at seed 0. (With 10,000 transfers
    the regular network's 95 % column at seed 4 reaches 52.0, 26.0 under hardware-aware: the
    column swings with the seed, the test runs seed 0.)"""
    r, printed, _ = quick("moons", tmp_path, capsys)
    assert r["seeds"] == 1 and r["transfers"] == 1000 and r["training_seeds"] == [0]
    ha, reg = r["hardware_aware"]["95"], r["regular"]["95"]
    assert ha[1] == reg[1] == 0.0                   # one seed: no spread
    assert ha[0] >= reg[0] + 25, (ha, reg)
    assert ha[0] >= 70, ha
    assert r["software_accuracy"]["regular"][0] > r["software_accuracy"]["hardware_aware"][0]  # robust, not better
    assert "mean ± sd over 1 training seed (0)" in printed and "79.5" in printed and "18.5" in printed
    assert "hardware-aware (published)" in printed


@pytest.mark.timeout(900)
def test_quick_bench_loop_goes_through_the_instruments_and_the_store(tmp_path, capsys):
    r, _, runs = quick("bench-loop", tmp_path, capsys)
    assert len(runs) == 1        # one run, holding every operation and the bench it ran on
    stored = RunStore(tmp_path / "runs").get_run(runs[0]["id"])
    ops = stored.operations()
    assert len(ops) == r["operations"] > 100
    assert {"read", "pulse"} <= {op["op"] for op in ops}
    assert all(op["bench_time"] is not None for op in ops)
    assert stored.info()["bench"]["instruments"].keys() == {"analyzer", "switch"}
    assert 0 <= r["in_the_loop_accuracy"] <= 100 and 0 <= r["ex_situ_accuracy"] <= 100


def test_seeds_reach_the_reproduction_or_are_refused(tmp_path, monkeypatch, capsys):
    from memlab import reproduce

    seen = []

    def fake(seeds: int = 5, epochs: int = 3) -> dict:
        seen.append((seeds, epochs))
        return {"seeds": seeds}

    rep = reproduce.Reproduction(fake, lambda result, out: print("table", file=out), None, {"seeds": 1, "epochs": 1},
                                 "a stand-in")
    monkeypatch.setitem(reproduce.REPRODUCTIONS, "moons", lambda: rep)
    store = ["--store", str(tmp_path / "runs")]
    assert main(["reproduce", "moons", *store]) == 0
    assert main(["reproduce", "moons", "--seeds", "3", *store]) == 0
    assert main(["reproduce", "moons", "--quick", "--seeds", "2", *store]) == 0   # wins over the quick one
    assert seen == [(5, 3), (3, 3), (2, 1)]
    assert main(["reproduce", "moons", "--seeds", "0", *store]) == 1
    assert main(["reproduce", "bench-loop", "--seeds", "2", *store]) == 1
    err = capsys.readouterr().err
    assert "at least 1" in err and "'bench-loop' has no training seeds" in err
    assert len(seen) == 3 and len(RunStore(tmp_path / "runs").runs()) == 3


def test_train_jobs_validate(tmp_path):
    from memlab.train import load_job

    for name in ("noise-injection", "hardware-aware", "in-the-loop"):
        assert load_job(name).method.replace("_", "-") == name
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: magic\n")
    assert main(["train", str(bad)]) == 1


def test_train_hardware_aware_job(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("method: hardware_aware\nconfig: {epochs: 20}\nevaluate: {transfers: 5}\n")
    assert main(["train", str(job), "--store", str(tmp_path / "runs"), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary["hardware_aware"]) == {"100", "95", "90", "80"}
    (run,) = RunStore(tmp_path / "runs").runs()
    assert run["kind"] == "train-hardware-aware" and run["status"] == "completed"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_moons_reproduces_the_published_figure(tmp_path):
    out = tmp_path / "moons.json"
    assert main(["reproduce", "moons", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["transfers"] == 10_000 and r["seeds"] == 5
    # judged on the means over training seeds 0-4. Measured (README): 78.9 ± 0.7 (79.5 79.0 79.5
    # 78.5 78.0) against the published 79.5: seeds 0 and 2 land on it, the mean is 0.6 points
    # short, and the README says so. This reproduction holds within a point of the paper;
    # beating it is memlab's own method's job. Regular training: 23.9 ± 16.8 (10.0 to 52.0).
    ha, reg = r["hardware_aware"]["95"][0], r["regular"]["95"][0]
    per_seed = {k: r["per_seed"][k]["table"]["95"] for k in ("hardware_aware", "regular")}
    assert ha >= PUBLISHED["hardware_aware"]["95"] - 1.0, per_seed
    assert reg <= ha - 30, per_seed


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mat_mnist_reproduces_the_published_gap(tmp_path):
    out = tmp_path / "mat.json"
    assert main(["reproduce", "mat-mnist", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["noise_injection"]["20"][0] >= r["regular"]["20"][0] + 15
    assert r["noise_injection"]["0"][0] >= r["regular"]["0"][0] - 2


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fault_pruning_reproduces_the_published_result(tmp_path):
    out = tmp_path / "fp.json"
    assert main(["reproduce", "fault-pruning", "--json", str(out), "--store", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert r["pruning"][0] >= r["fault_free"][0] - 3
    assert r["pruning"][0] >= r["unpruned"][0] + 10


@pytest.mark.slow
@pytest.mark.timeout(3600)
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

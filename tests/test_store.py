"""Tests for memlab.store: operations, arrays, statuses, export, concurrency, SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from memlab.store import ChecksumError, OPERATION_COLUMNS, RunStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "store")
    yield s
    s.close()


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------------------- basics

def test_layout_and_wal(tmp_path):
    root = tmp_path / "new" / "store"
    with RunStore(root) as s:
        run = s.start_run("demo", {"n": 1})
        assert (root / "memlab.sqlite").exists()
        assert run.path == root / "runs" / run.id and run.path.is_dir()
        assert run.store is s
    con = sqlite3.connect(root / "memlab.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_run_id_is_readable_and_sortable(store):
    a = store.start_run("tune", {})
    b = store.start_run("demo", {})
    date, clock, kind, tag = a.id.split("-")
    assert len(date) == 8 and len(clock) == 6 and kind == "tune" and len(tag) == 4
    assert b.id.split("-")[2] == "demo"
    assert a.id[:15] <= b.id[:15]
    with pytest.raises(ValueError, match="kind"):
        store.start_run("../evil", {})


def test_params_and_bench_json_accept_numpy_and_paths(store):
    params = {"target": np.float32(5e-5), "n": np.int64(3), "flag": np.bool_(True),
              "levels": np.linspace(0, 1, 3), "out": Path("/tmp/x"), "rows": (1, 2),
              np.int64(7): "numpy key"}
    bench = {"smu": {"idn": "Keysight B1500A"}, "limits": {"vmax": np.float64(3.0)}}
    run = store.start_run("tune", params, bench)
    info = store.get_run(run.id).info()
    assert info["params"] == {"target": pytest.approx(5e-5), "n": 3, "flag": True,
                              "levels": [0.0, 0.5, 1.0], "out": "/tmp/x", "rows": [1, 2],
                              "7": "numpy key"}
    assert info["bench"] == {"smu": {"idn": "Keysight B1500A"}, "limits": {"vmax": 3.0}}
    assert info["status"] == "running" and info["finished"] is None
    assert store.start_run("demo", {}).info()["bench"] is None


def test_record_round_trip_all_columns_and_extras(store):
    run = store.start_run("tune", {})
    t0 = time.time()
    seq = run.record("pulse", row=np.int64(3), col=4, voltage=np.float32(-1.25), width=1e-6,
                     current=2.5e-6, conductance=1.0e-4, bench_time=0.0123,
                     polarity="reset", attempt=np.int32(2), targets=np.array([1.0, 2.0]))
    assert seq == 1
    run.record("read")
    ops = run.operations()
    assert [list(o) for o in ops] == [list(OPERATION_COLUMNS)] * 2
    o = ops[0]
    assert o["run_id"] == run.id and o["seq"] == 1 and o["op"] == "pulse"
    assert t0 - 1 <= o["t_wall"] <= time.time() + 1
    assert (o["row"], o["col"]) == (3, 4) and isinstance(o["row"], int)
    assert o["voltage"] == -1.25 and o["width"] == 1e-6 and o["current"] == 2.5e-6
    assert o["conductance"] == 1.0e-4 and o["bench_time"] == 0.0123
    assert o["extra"] == {"polarity": "reset", "attempt": 2, "targets": [1.0, 2.0]}
    raw = sqlite3.connect(store.db_path).execute(
        "SELECT extra FROM operations WHERE run_id = ? AND seq = 1", (run.id,)).fetchone()[0]
    assert json.loads(raw) == o["extra"]          # stored as JSON text
    empty = ops[1]
    assert empty["seq"] == 2 and empty["op"] == "read" and empty["extra"] is None
    assert all(empty[k] is None for k in ("row", "col", "voltage", "width", "current",
                                           "conductance", "bench_time"))
    assert [o["seq"] for o in run.operations(op="read")] == [2]
    assert run.operations(op="nothing") == []


def test_record_rejects_bad_values(store):
    run = store.start_run("tune", {})
    with pytest.raises(TypeError, match="row"):
        run.record("read", row=1.5)
    with pytest.raises(TypeError, match="voltage"):
        run.record("read", voltage="high")
    with pytest.raises(ValueError):
        run.record("")
    assert run.operations() == []
    assert run.record("read") == 1                # nothing half-recorded


def test_sequence_numbers_per_run_and_after_reopen(tmp_path):
    root = tmp_path / "s"
    with RunStore(root) as s:
        a, b = s.start_run("tune", {}), s.start_run("tune", {})
        assert [a.record("read") for _ in range(3)] == [1, 2, 3]
        assert [b.record("read") for _ in range(2)] == [1, 2]
        assert a.record("pulse") == 4
        a_id = a.id
    with RunStore(root) as s:
        a = s.get_run(a_id)
        assert a.record("read") == 5
        assert [o["seq"] for o in a.operations()] == [1, 2, 3, 4, 5]
        listing = {r["id"]: r for r in s.runs()}
        assert listing[a_id]["n_operations"] == 5
        assert set(listing[a_id]) == {"id", "kind", "status", "started", "finished", "pid",
                                      "n_operations", "bench", "summary"}
        assert listing[a_id]["bench"] is None and listing[a_id]["summary"] is None
        with pytest.raises(KeyError):
            s.get_run("20000101-000000-none-0000")


def test_record_is_visible_to_another_connection_immediately(store):
    run = store.start_run("tune", {})
    other = sqlite3.connect(store.db_path)
    for i in range(1, 4):
        assert run.record("read", row=i) == i
        assert other.execute("SELECT COUNT(*) FROM operations").fetchone()[0] == i
    other.close()


# ---------------------------------------------------------------------------- summary & arrays

def test_summary(store):
    run = store.start_run("tune", {})
    run.set_summary({"tuned": np.int64(60), "failed": [np.int64(3)], "rms": np.float32(0.5)})
    expected = {"tuned": 60, "failed": [3], "rms": 0.5}
    assert run.info()["summary"] == expected
    assert json.loads((run.path / "summary.json").read_text()) == expected
    run.set_summary({"tuned": 61})
    assert json.loads((run.path / "summary.json").read_text()) == {"tuned": 61}


def test_arrays_round_trip_and_tamper_detection(store):
    run = store.start_run("tune", {})
    g = np.random.default_rng(0).uniform(1e-4, 5e-4, (16, 16))
    mask = np.zeros((4, 4), dtype=bool)
    p = run.save_array("conductance", g)
    assert p == run.path / "conductance.npy" and p.exists()
    run.save_array("stuck", mask)
    np.testing.assert_array_equal(run.load_array("conductance"), g)
    np.testing.assert_array_equal(run.load_array("stuck"), mask)
    meta = {a["name"]: a for a in run.arrays()}
    assert meta["conductance"]["shape"] == (16, 16) and len(meta["conductance"]["sha256"]) == 64
    # re-saving replaces file and checksum
    run.save_array("conductance", g * 2)
    np.testing.assert_array_equal(run.load_array("conductance"), g * 2)
    # tamper: flip one byte of the data
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="conductance"):
        run.load_array("conductance")
    np.testing.assert_array_equal(run.load_array("stuck"), mask)
    with pytest.raises(KeyError):
        run.load_array("missing")
    with pytest.raises(ValueError):
        run.save_array("../outside", g)
    with pytest.raises(TypeError):
        run.save_array("objects", np.array([{}, None], dtype=object))


# ---------------------------------------------------------------------------- statuses

def test_status_normal_exit(store):
    with store.start_run("demo", {}) as run:
        run.record("read")
        assert run.status == "running"
    info = run.info()
    assert info["status"] == "completed" and info["finished"] >= info["started"]
    assert info["error"] is None


def test_status_exception_is_failed_and_not_swallowed(store):
    with pytest.raises(ValueError, match="bad reply"):
        with store.start_run("demo", {}) as run:
            run.record("read")
            raise ValueError("bad reply from SMU1")
    info = run.info()
    assert info["status"] == "failed" and info["finished"] is not None
    assert "ValueError" in info["error"] and "bad reply from SMU1" in info["error"]
    assert len(run.operations()) == 1


def test_status_keyboard_interrupt_is_interrupted(store):
    with pytest.raises(KeyboardInterrupt):
        with store.start_run("demo", {}) as run:
            run.record("pulse")
            raise KeyboardInterrupt
    assert run.info()["status"] == "interrupted"
    assert "KeyboardInterrupt" in run.info()["error"]


def test_status_other_base_exception_is_interrupted(store):
    class Terminated(BaseException):      # what a SIGTERM handler might raise
        pass

    with pytest.raises(Terminated):
        with store.start_run("demo", {}) as run:
            raise Terminated("SIGTERM")
    assert run.status == "interrupted"
    with pytest.raises(SystemExit):
        with store.start_run("demo", {}) as run2:
            sys.exit(3)
    assert run2.status == "interrupted"


def test_explicit_finish_is_kept_by_context_manager(store):
    with store.start_run("demo", {}) as run:
        run.finish("failed", error="device 3,4 did not tune")
    assert run.info()["status"] == "failed"
    assert run.info()["error"] == "device 3,4 did not tune"
    with pytest.raises(ValueError):
        run.finish("done")
    statuses = {r["id"]: r["status"] for r in store.runs()}
    assert statuses[run.id] == "failed"


# ---------------------------------------------------------------------------- export

def test_export_csv(store, tmp_path):
    run = store.start_run("tune", {})
    run.record("read", row=0, col=1, voltage=0.2, current=1.5e-6, conductance=7.5e-6,
               bench_time=0.001)
    run.record("pulse", row=0, col=1, voltage=1.1, width=1e-6, polarity="set")
    out = run.export_csv(tmp_path / "ops.csv")
    assert out == tmp_path / "ops.csv"
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(OPERATION_COLUMNS)
    assert len(rows) == 3
    r1 = dict(zip(rows[0], rows[1]))
    assert r1["run_id"] == run.id and r1["seq"] == "1" and r1["op"] == "read"
    assert (r1["row"], r1["col"]) == ("0", "1")
    assert float(r1["current"]) == 1.5e-6 and float(r1["conductance"]) == 7.5e-6
    assert r1["width"] == "" and r1["extra"] == ""
    r2 = dict(zip(rows[0], rows[2]))
    assert r2["seq"] == "2" and float(r2["width"]) == 1e-6
    assert json.loads(r2["extra"]) == {"polarity": "set"}


# ---------------------------------------------------------------------------- concurrency

WRITER = textwrap.dedent("""
    import sys
    from memlab.store import RunStore
    root, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = RunStore(root)
    with store.start_run(kind, {"n": n}) as run:
        print(run.id, flush=True)
        for i in range(n):
            assert run.record("read", row=i % 16, col=i // 16, current=i * 1e-9) == i + 1
    store.close()
""")


def test_readers_while_writers_write(tmp_path):
    root = tmp_path / "shared"
    RunStore(root).close()                          # create schema first
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 3000
    writers = [subprocess.Popen([sys.executable, str(script), str(root), kind, str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_child_env())
               for kind in ("writera", "writerb")]
    errors: list[BaseException] = []
    seen: list[list[int]] = [[], []]

    def reader(k):
        try:
            with RunStore(root) as s:               # its own connection
                while any(w.poll() is None for w in writers):
                    total = sum(r["n_operations"] for r in s.runs())
                    seen[k].append(total)
                    for r in s.runs():
                        seqs = [o["seq"] for o in s.get_run(r["id"]).operations()]
                        assert seqs == list(range(1, len(seqs) + 1))
        except BaseException as e:                  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    outs = [w.communicate(timeout=120) for w in writers]
    for t in threads:
        t.join(timeout=60)
    for w, (out, err) in zip(writers, outs):
        assert w.returncode == 0, err
    assert not errors, errors
    for totals in seen:
        assert totals == sorted(totals)             # readers never see rows disappear
    assert any(0 < t < 2 * n for t in seen[0] + seen[1]), "readers never overlapped writers"
    with RunStore(root) as s:
        runs = {r["kind"]: r for r in s.runs()}
        assert {k: (r["status"], r["n_operations"]) for k, r in runs.items()} == {
            "writera": ("completed", n), "writerb": ("completed", n)}


# ---------------------------------------------------------------------------- SIGKILL

KILLED_CHILD = textwrap.dedent("""
    import sys
    from memlab.store import RunStore
    store = RunStore(sys.argv[1])
    run = store.start_run("killtest", {})
    print(run.id, flush=True)
    i = 0
    while True:
        i += 1
        seq = run.record("pulse", row=i % 32, col=(i // 32) % 32, voltage=0.001 * i,
                         width=1e-6, current=1e-9 * i, conductance=1e-5 + 1e-9 * i,
                         bench_time=0.5 * i, i=i)
        print(seq, flush=True)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("acks_before_kill", [1, 200, 3000])
def test_sigkill_loses_no_acknowledged_operation(tmp_path, acks_before_kill):
    root = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_child_env())
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read()
        acked = [int(proc.stdout.readline()) for _ in range(acks_before_kill)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # lines printed before the kill but not read yet were acknowledged too
    acked += [int(line) for line in proc.stdout.read().splitlines(keepends=True)
              if line.endswith("\n")]
    proc.stdout.close()
    proc.stderr.close()
    assert acked == list(range(1, len(acked) + 1))

    with RunStore(root) as s:
        con = sqlite3.connect(s.db_path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        run = s.get_run(run_id)
        assert run.status == "running"              # nobody got to mark it
        ops = {o["seq"]: o for o in run.operations()}
        assert len(ops) >= len(acked)
        assert sorted(ops) == list(range(1, len(ops) + 1))
        for seq in acked:
            o = ops[seq]
            i = o["extra"]["i"]
            assert i == seq
            assert o["op"] == "pulse" and (o["row"], o["col"]) == (i % 32, (i // 32) % 32)
            assert o["voltage"] == 0.001 * i and o["width"] == 1e-6
            assert o["current"] == 1e-9 * i and o["conductance"] == 1e-5 + 1e-9 * i
            assert o["bench_time"] == 0.5 * i
        # and the store is usable: the run can be continued and marked
        assert run.record("read") == len(ops) + 1
        run.finish("interrupted", error="killed")
        assert {r["id"]: r["status"] for r in s.runs()}[run_id] == "interrupted"


def test_a_store_of_schema_2_gains_the_software_column(tmp_path):
    with RunStore(tmp_path) as s:
        old = s.start_run("tune", {}).id
    db = sqlite3.connect(tmp_path / "memlab.sqlite")
    db.execute("ALTER TABLE runs DROP COLUMN software")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with RunStore(tmp_path) as s:
        assert s.get_run(old).info()["software"] is None
        new = s.start_run("tune", {})
        assert new.info()["software"]["python"]

"""Every way a tune can end early, from the CLI and from a plain script using
`open_crossbar`: SIGINT, SIGTERM, SIGHUP, SIGQUIT at random points, SIGKILL, a pulse whose
reply is lost. Each must end with every source at 0 V and disabled and every relay open (in
the emulators' own state and logs), the run marked interrupted and named, and the store's
count of pulses equal to the pulses the analyzer received (a pulse whose outcome is unknown
included). The emulators live in this process, so they outlive the one that is stopped.
"""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import after_message, assert_safe, memlab_cli, received, wait_until

from memlab.bench import open_crossbar
from memlab.cli import main
from memlab.store import RunStore
from protocols.tuning import TuneArrayParams, checkerboard, tune_array
from test_safety import assert_within_limits, with_timeout

EXIT_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
# (signal, pulses the analyzer has received before it is sent, extra delay): drawn once
# from a seeded generator so that the points are arbitrary but the same on every run
_rng = random.Random(8)
POINTS = [(sig, _rng.randint(2, 40), round(_rng.uniform(0, 0.03), 4)) for sig in EXIT_SIGNALS for _ in range(2)]


def store_pulses(store) -> tuple[int, list[dict]]:
    """(pulses the store says were sent or may have been, every operation)."""
    (info,) = RunStore(store).runs()
    ops = RunStore(store).get_run(info["id"]).operations()
    return sum(op["op"] in ("pulse", "pulse_unknown") for op in ops), ops


def analyzer_pulses(bench) -> int:
    return received(bench, "analyzer").count("XE")


def bench_file(tmp_path, live, timeout_s: float = 5.0):   # the shipped timeout: a loaded machine is slow
    path = tmp_path / "bench.yaml"
    path.write_text(with_timeout(live, timeout_s).to_yaml())
    return path


def stop_after_pulses(bench, proc, signum: int, pulses: int, delay: float) -> tuple[str, str]:
    """Send `signum` once the analyzer has received `pulses` pulses and `delay` more seconds
    have passed; the process's output. It is killed if it outlives the test."""
    try:
        wait_until(lambda: analyzer_pulses(bench) >= pulses, f"{pulses} pulses", alive=proc)
        time.sleep(delay)   # lands anywhere in the operation under way
        proc.send_signal(signum)
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_interrupted_and_counted(bench, live, store, run_id: str, pulses: int) -> None:
    """Safe bench, the run interrupted, and the store's pulses the analyzer's."""
    assert_safe(bench)
    assert_within_limits(bench, live.limits)
    (info,) = RunStore(store).runs()
    assert (info["id"], info["status"]) == (run_id, "interrupted")
    n, ops = store_pulses(store)
    assert n == analyzer_pulses(bench) >= pulses
    assert not [op for op in ops if op["op"].endswith("_intended")]   # every operation decided


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum, pulses, delay", POINTS,
                         ids=[f"{signal.Signals(s).name}-{p}" for s, p, _ in POINTS])
def test_a_signal_to_memlab_tune(emulation, tmp_path, signum, pulses, delay):
    bench, live = emulation
    store = tmp_path / "runs"
    proc = memlab_cli("tune", str(bench_file(tmp_path, live)), "--checkerboard", "150", "400",
                      "--store", str(store))
    out, err = stop_after_pulses(bench, proc, signum, pulses, delay)
    assert proc.returncode == 128 + signum, err
    run_id = re.search(r"memlab: run (\S+) started", err).group(1)
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"memlab: {'interrupted' if signum == signal.SIGINT else 'terminated'} ({name})"), last
    assert f"run {run_id} marked interrupted" in last and "the bench was put in its safe state" in last, last
    assert "Traceback" not in err
    assert_interrupted_and_counted(bench, live, store, run_id, pulses)


SCRIPT = textwrap.dedent("""
    import sys
    from memlab.bench import open_crossbar
    from memlab.config import load_bench
    from memlab.store import RunStore
    from protocols.tuning import checkerboard, tune_array

    config, store = load_bench(sys.argv[1]), RunStore(sys.argv[2])
    with open_crossbar(config) as xbar:
        with store.start_run("script", {}) as run:
            print(run.id, flush=True)
            xbar.journal = run.journal()
            tune_array(xbar, checkerboard(8, 8, 150e-6, 400e-6))
""")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum, pulses, delay", POINTS[::2],
                         ids=[f"{signal.Signals(s).name}-{p}" for s, p, _ in POINTS[::2]])
def test_a_signal_to_a_script_using_open_crossbar(emulation, tmp_path, signum, pulses, delay):
    """A library user installs no handler: open_crossbar does, for its lifetime."""
    bench, live = emulation
    script = tmp_path / "tune.py"
    script.write_text(SCRIPT)
    store = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(script), str(bench_file(tmp_path, live)), str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = stop_after_pulses(bench, proc, signum, pulses, delay)
    run_id = out.split()[0]
    expected = "KeyboardInterrupt" if signum == signal.SIGINT else f"Terminated: {signal.Signals(signum).name}"
    assert expected in err and f"run {run_id} marked interrupted" in err, err
    assert proc.returncode != 0
    assert_interrupted_and_counted(bench, live, store, run_id, pulses)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pulses", [1, 25])
def test_sigkill_leaves_the_operation_in_flight_as_intended(emulation, tmp_path, pulses):
    """SIGKILL cannot be caught: the store holds every operation the instruments carried out
    (the one in flight as intended), `memlab runs` shows the run as crashed, and the next
    connection starts from the safe state."""
    bench, live = emulation
    store = tmp_path / "runs"
    path = bench_file(tmp_path, live)
    proc = memlab_cli("tune", str(path), "--checkerboard", "150", "400", "--store", str(store))
    stop_after_pulses(bench, proc, signal.SIGKILL, pulses, 0.0)
    assert proc.returncode == -signal.SIGKILL
    with bench.lock:   # nothing moves any more
        sent = analyzer_pulses(bench)
    with sqlite3.connect(store / "memlab.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, ops = store_pulses(store)
    in_flight = [op for op in ops if op["op"].endswith("_intended")]
    assert len(in_flight) <= 1 and all(op["seq"] == len(ops) for op in in_flight)
    undecided = sum(op["op"] == "pulse_intended" for op in in_flight)
    assert n <= sent <= n + undecided
    (info,) = RunStore(store).runs()
    assert info["status"] == "crashed"
    code = main(["runs", "--store", str(store)])
    assert code == 0
    # the bench was left energized; the next session makes it safe before anything else
    assert main(["bench", "check", str(path)]) == 0
    assert_safe(bench)


T = 0.3   # s: the VISA timeout of the session whose pulse reply goes wrong


@pytest.mark.parametrize("fault", [{"lose_next_reply": True}, {"delay_next_s": T + 0.1}, {"garble_next": 1}],
                         ids=["lost", "late", "garbled"])
def test_a_pulse_whose_reply_is_lost_is_in_the_store_as_unknown(emulation, tmp_path, fault):
    """The 5th pulse is carried out but its reply never comes, comes after the timeout, or
    comes garbled: the tuner re-reads the device and decides again (never repeats the pulse
    blindly), and the store holds the pulse as `pulse_unknown`, so its count equals the
    analyzer's."""
    bench, live = emulation
    server = bench.servers["analyzer"]
    targets = np.full((8, 8), np.nan)
    targets[2, :3] = checkerboard(1, 3, 150e-6, 400e-6)
    pulses = []

    def lose_the_fifth_reply(op, fields):
        pulses.append(op) if op == "pulse" else None
        if op == "pulse" and len(pulses) == 4:
            after_message(server, r"^XE$", **fault)   # carried out; its reply goes wrong

    store = RunStore(tmp_path / "runs")
    with open_crossbar(with_timeout(live, T)) as xbar:
        with store.start_run("tune", {}) as run:
            xbar.journal = run.journal(lambda: bench.clock)
            xbar.recorders.append(lose_the_fifth_reply)
            result = tune_array(xbar, targets, TuneArrayParams())
    n, ops = store_pulses(tmp_path / "runs")
    unknown = [op for op in ops if op["op"] == "pulse_unknown"]
    assert len(unknown) == 1 and "may or may not have been applied" in unknown[0]["extra"]["error"]
    assert n == analyzer_pulses(bench)
    following = ops[ops.index(unknown[0]) + 1]
    assert following["op"] == "read" and (following["row"], following["col"]) == (unknown[0]["row"],
                                                                                  unknown[0]["col"])
    assert any("may or may not" in f for r in result.results.values() for f in r.failures)
    assert_safe(bench)

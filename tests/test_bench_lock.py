"""One owner per bench: a second process (or thread) that opens a bench in use gets one line
naming the holder and touches no instrument; the first goes on unharmed; a crash frees it."""

from __future__ import annotations

import os
import re
import signal
import threading

import pytest
from helpers import assert_safe, memlab_cli, received, wait_until

from memlab.bench import open_crossbar
from memlab.benchlock import BenchBusy, resource_key
from memlab.store import RunStore

HOLDER = re.compile(r"memlab: error: bench sim-b1500-e5250 is in use: \w+ \(TCPIP::127\.0\.0\.1::\d+::SOCKET\) "
                    r"is held by pid (\d+) \((.*)\)(, run (\S+))?, since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


def one_error_line(err: str) -> re.Match:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    m = HOLDER.match(lines[0])
    assert m, lines[0]
    return m


@pytest.mark.timeout(600)
def test_a_second_tune_or_bench_check_is_refused_and_the_first_completes(emulation, tmp_path):
    bench, live = emulation
    path = tmp_path / "bench.yaml"
    path.write_text(live.to_yaml())
    store = tmp_path / "runs"
    targets = tmp_path / "two-rows.csv"   # a short tune: two rows of the 8x8 crossbar
    targets.write_text("\n".join(",".join(["200" if r < 2 else ""] * 8) for r in range(8)))
    first = memlab_cli("tune", str(path), "--targets", str(targets), "--store", str(store))
    try:
        wait_until(lambda: received(bench, "analyzer").count("XE") >= 5, "the first tune to pulse", alive=first)
        run_id = RunStore(store).runs()[0]["id"]
        for argv in (["tune", str(path), "--uniform", "200", "--store", str(store)], ["bench", "check", str(path)]):
            second = memlab_cli(*argv)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 1, err
            m = one_error_line(err)
            assert int(m.group(1)) == first.pid
            assert m.group(2).startswith("memlab tune ") and m.group(4) == run_id
            assert first.poll() is None   # refused while the first was still tuning: nobody waited
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert [(r["id"], r["status"]) for r in RunStore(store).runs()] == [(run_id, "completed")]
    assert "in tolerance" in out
    assert bench.hazards == []
    assert_safe(bench)


def test_a_process_refused_touches_no_instrument(emulation, tmp_path):
    """This test process holds the bench; a child's `bench check` is refused and the
    emulators receive nothing from it."""
    bench, live = emulation
    path = tmp_path / "bench.yaml"
    path.write_text(live.to_yaml())
    with open_crossbar(live) as xbar:
        xbar.read(0, 0)
        before = {name: len(bench.servers[name].received()) for name in bench.servers}
        child = memlab_cli("bench", "check", str(path))
        out, err = child.communicate(timeout=120)
        after = {name: len(bench.servers[name].received()) for name in bench.servers}
    assert child.returncode == 1
    m = one_error_line(err)
    assert int(m.group(1)) == os.getpid() and m.group(3) is None
    assert after == before


@pytest.mark.parametrize("where", ["same thread", "another thread"])
def test_a_second_opening_in_this_process_is_refused(emulation, where):
    """It would reset the instruments under the first session."""
    bench, live = emulation
    with open_crossbar(live) as xbar:
        xbar.read(0, 0)
        if where == "same thread":
            outcome = _try_open(live)
        else:
            box = []
            thread = threading.Thread(target=lambda: box.append(_try_open(live)))
            thread.start()
            thread.join(60)
            (outcome,) = box
        xbar.read(0, 1)                      # the first session is unharmed
    assert "is held by this process: pid" in outcome, outcome
    with open_crossbar(live) as xbar:        # released on exit
        xbar.read(2, 2)
    assert_safe(bench)


def _try_open(live) -> str:
    try:
        with open_crossbar(live):
            return "opened"
    except BenchBusy as exc:
        return str(exc)


def test_a_killed_holder_frees_the_bench(emulation, tmp_path):
    bench, live = emulation
    path = tmp_path / "bench.yaml"
    path.write_text(live.to_yaml())
    holder = memlab_cli("tune", str(path), "--uniform", "200", "--store", str(tmp_path / "runs"))
    try:
        wait_until(lambda: received(bench, "analyzer").count("XE") >= 2, "the holder to pulse", alive=holder)
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    with open_crossbar(live) as xbar:        # the kernel released its lock with the process
        xbar.read(0, 0)
    assert_safe(bench)


def test_resources_spelt_differently_are_one_instrument():
    assert resource_key("tcpip0::10.0.0.5::5025::socket") == resource_key("TCPIP::10.0.0.5::5025::SOCKET")
    assert resource_key("TCPIP::10.0.0.5::5025::SOCKET") != resource_key("TCPIP::10.0.0.6::5025::SOCKET")

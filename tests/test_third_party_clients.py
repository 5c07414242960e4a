"""Unmodified third-party clients against `memlab sim serve` (a child process).

Acceptance criterion 3 of the foundation issue: with pymeasure installed as a test-only
dependency, its `AgilentB1500` driver identifies the modules, enables a channel, forces a
voltage and reads a spot current from the emulated B1500A. The switch is driven with a
plain pyvisa session. Nothing of the simulator is used here: everything goes over the
wire, and the physical check compares with what memlab's own drivers read through the
bench file that `memlab sim serve --write-bench` wrote.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time

import pytest
import pyvisa
import yaml

from helpers import memlab_cli

pymeasure_b1500 = pytest.importorskip("pymeasure.instruments.agilent.agilentB1500")

IDN = "Agilent Technologies,B1500A,0,A.06.03.2019.0826"
V_READ = 0.2


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`memlab sim serve sim-b1500-e5250` as a child: ({name: resource}, bench file)."""
    bench_file = tmp_path_factory.mktemp("serve") / "live-bench.yaml"
    proc = memlab_cli("sim", "serve", "sim-b1500-e5250", "--write-bench", str(bench_file))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        resources = {}
        deadline = time.monotonic() + 30
        while len(resources) < 2:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("memlab sim serve printed no resources within 30 s")
            if line is None:
                pytest.fail(f"memlab sim serve exited with {proc.wait()}: {proc.stderr.read()}")
            name, resource = line.split()
            resources[name] = resource
        while not bench_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield resources, bench_file
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("memlab sim serve did not exit on SIGTERM")
        stderr = proc.stderr.read()
        assert code == 0, stderr
    # the instruments are gone with it
    for resource in resources.values():
        port = int(resource.split("::")[2])
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))


@pytest.fixture
def b1500(served):
    resources, _ = served
    b = pymeasure_b1500.AgilentB1500(resources["analyzer"], visa_library="@py", timeout=5000)
    yield b
    b.adapter.close()


@pytest.fixture
def switch(served):
    resources, _ = served
    rm = pyvisa.ResourceManager("@py")
    sw = rm.open_resource(resources["switch"], read_termination="\n", write_termination="\n", timeout=5000)
    yield sw
    sw.write(":ROUT:OPEN:CARD ALL")
    assert sw.query(":SYST:ERR?") == '0,"No error"'
    sw.close()


def test_served_resources_match_the_written_bench_file(served):
    resources, bench_file = served
    bench = yaml.safe_load(bench_file.read_text())
    assert set(resources) == {"analyzer", "switch"}
    assert {name: inst["resource"] for name, inst in bench["instruments"].items()} == resources
    assert all(r.startswith("TCPIP::127.0.0.1::") and r.endswith("::SOCKET") for r in resources.values())


def test_pymeasure_agilent_b1500_reads_a_physical_spot_current(served, b1500, switch):
    assert b1500.id == IDN
    assert b1500.query_modules() == {1: "HRSMU", 2: "HRSMU", 3: "HRSMU", 4: "HRSMU"}
    b1500.initialize_all_smus()
    assert [smu.name for smu in b1500.smu_references] == ["SMU1", "SMU2", "SMU3", "SMU4"]
    b1500.data_format(1)
    smu1, smu2 = b1500.smu1, b1500.smu2

    # SMU 1 (input 1) to row 0 (output port 1), SMU 2 (input 2) to column 0 (port 9)
    switch.write(":ROUT:CLOS (@00101,00209)")
    assert switch.query(":SYST:ERR?") == '0,"No error"'
    assert switch.query(":ROUT:CLOS:CARD? 0") == "(@00101,00209)"

    smu1.enable()
    smu2.enable()
    assert b1500.query_learn(0) == {"CN": ["1", "2"]}
    smu1.force("Voltage", "Auto Ranging", V_READ, 0.01)
    smu2.force("Voltage", "Auto Ranging", 0, 0.01)
    b1500.meas_mode("SPOT", smu1)
    b1500.send_trigger()
    ((status, channel, name, current),) = b1500.read_channels(1)
    assert b1500.read_bytes(1) == b"\n"  # read_channels takes 16 bytes and leaves the LF of CR LF
    assert (status, channel, name) == ("N", "SMU1", "Current (A)")

    b1500.check_errors()
    assert b1500.query_learn(1) == {"DV1": ["0", "+2.0000E-01", "+1.0000E-02", "0"]}
    assert b1500.query_learn(31)["MM"] == ["1", "1"]
    assert b1500.query_learn(31)["FMT"] == ["1", "0"]
    smu1.disable()
    smu2.disable()
    b1500.check_errors()
    assert b1500.query_learn(1) == {"CL": "1"}
    assert b1500.query_learn(0) == {}  # "CL": every channel off
    switch.write(":ROUT:OPEN:CARD ALL")
    assert switch.query(":ROUT:CLOS:CARD? 0") == "(@)"

    # A plausible device: 0.2 V across a 10 uS .. 1 mS device, plus sneak paths.
    assert 0 < current
    assert V_READ * 10e-6 < current < V_READ * 8 * 1e-3
    # With the other lines floating, the current is at least the selected device's (0.2 V
    # across it) and at most what row 0's devices would carry with 0.2 V across each.
    # memlab's drivers read row 0 through the same served instruments (one line at a time,
    # the rest held at 0 V).
    from memlab.bench import open_crossbar
    from memlab.config import load_bench

    _, bench_file = served
    with open_crossbar(load_bench(bench_file)) as xbar:
        row = [xbar.read(0, c).conductance for c in range(xbar.cols)]
    quantum = 2e-9
    assert current >= 0.98 * V_READ * row[0] - quantum, (current, row)
    assert current <= 1.02 * V_READ * sum(row) + quantum, (current, row)
    assert current > 1.02 * V_READ * row[0], "the floating lines should add sneak current"


def test_pymeasure_check_errors_over_the_wire(b1500):
    b1500.initialize_all_smus()
    b1500.check_errors()
    with pytest.raises(OSError, match=r"Agilent B1500 Error \+200: Channel output switch must be ON"):
        b1500.smu3.force("Voltage", "Auto Ranging", 0.1, 0.01)  # smu3 is not enabled
    b1500.check_errors()  # pymeasure read the one error: the queue is empty again


def test_qcodes_keysight_b1500_reads_a_physical_spot_current(served, switch, tmp_path, monkeypatch):
    """QCoDeS's KeysightB1500 finds the four SMUs from UNT?, forces with DV and reads a spot
    current with TI; the current is the device's (0.2 V across it) plus sneak paths."""
    monkeypatch.setenv("QCODES_USER_PATH", str(tmp_path))   # qcodes keeps its logs out of $HOME
    qcodes_b1500 = pytest.importorskip("qcodes.instrument_drivers.Keysight")
    from qcodes.instrument_drivers.Keysight.keysightb1500 import constants

    resources, bench_file = served
    b = qcodes_b1500.KeysightB1500("b1500_memlab", resources["analyzer"], visalib="@py")
    try:
        assert b.IDN()["model"] == "B1500A"
        assert sorted(int(slot) for slot in b.by_slot) == [1, 2, 3, 4]
        assert [type(m).__name__ for m in b.by_kind[constants.ModuleKind.SMU]] == ["KeysightB1517A"] * 4
        smu1, smu2 = b.by_slot[1], b.by_slot[2]
        switch.write(":ROUT:CLOS (@00101,00209)")           # SMU 1 to row 0, SMU 2 to column 0
        b.enable_channels([1, 2])
        for smu in (smu1, smu2):
            smu.source_config(output_range=constants.VOutputRange.AUTO, compliance=0.01)
        smu2.voltage(0.0)
        smu1.voltage(V_READ)
        current = smu1.current()
        assert smu1.current.measurement_status == constants.MeasurementStatus.N
        assert b.ask("ERRX?").startswith("+0,")
        b.disable_channels([1, 2])
        assert b.ask("*LRN? 0") == "CL"
    finally:
        b.close()
    switch.write(":ROUT:OPEN:CARD ALL")

    from memlab.bench import open_crossbar
    from memlab.config import load_bench

    with open_crossbar(load_bench(bench_file)) as xbar:
        row = [xbar.read(0, c).conductance for c in range(xbar.cols)]
    quantum = 2e-9
    assert 0.98 * V_READ * row[0] - quantum <= current <= 1.02 * V_READ * sum(row) + quantum, (current, row)

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


def _row0_conductances(bench_file) -> list[float]:
    """Row 0 as memlab's own drivers read it through the same served instruments."""
    from memlab.bench import open_crossbar
    from memlab.config import load_bench

    with open_crossbar(load_bench(bench_file)) as xbar:
        return [xbar.read(0, c).conductance for c in range(xbar.cols)]


def _plausible(volts, amps, row) -> None:
    """Each step: at least the selected device's current, at most row 0's with every device
    at the step voltage (the floating lines add sneak paths, never more)."""
    quantum = 2e-9
    for v, i in zip(volts, amps):
        assert 0.98 * v * row[0] - quantum <= i <= 1.02 * v * sum(row) + quantum, (v, i, row)


def test_pymeasure_staircase_sweep_in_fmt21_with_source_data(served, b1500, switch):
    """pymeasure's own sweep calls, its FMT 21 fixed-width reader (19 bytes a field) and
    the source data (status W/E, type v); `*OPC?` sent with XE is answered before the data."""
    _, bench_file = served
    b1500.initialize_all_smus()
    b1500.data_format(21, mode=1)
    smu1, smu2 = b1500.smu1, b1500.smu2
    switch.write(":ROUT:CLOS (@00101,00209)")
    for smu in (smu1, smu2):
        smu.enable()
        smu.meas_op_mode = "COMPLIANCE_SIDE"
    smu2.force("Voltage", "Auto Ranging", 0, 0.01)
    b1500.meas_mode("STAIRCASE_SWEEP", smu1)
    b1500.adc_setup("HSADC", "AUTO")
    b1500.sweep_timing(0, 0.001, step_delay=0.002)
    b1500.sweep_auto_abort(False, post="START")
    smu1.staircase_sweep_source("VOLTAGE", "LINEAR_SINGLE", "Auto Ranging", 0.05, 0.2, 4, 0.01)
    settings = b1500.query_learn(33)
    assert settings["WV1"] == ["1", "0", "+5.0000E-02", "+2.0000E-01", "4", "+1.0000E-02"]
    assert settings["WM"] == ["1", "1"] and settings["WT"][1] == "+1.0000E-03"
    b1500.check_errors()
    b1500.clear_buffer()
    b1500.clear_timer()
    b1500.write("XE;*OPC?")
    assert b1500.read() == "1"        # the query buffer is read before the data output buffer
    steps = [b1500.read_channels(2) for _ in range(4)]
    assert b1500.read_bytes(1) == b"\n"
    volts, amps = [], []
    for k, ((status_i, ch_i, name_i, i), (status_v, ch_v, name_v, v)) in enumerate(steps):
        assert (status_i, ch_i, name_i) == ("000", "SMU1", "Current Measurement (A)")
        assert (status_v.strip(), ch_v, name_v) == ("E" if k == 3 else "W", "SMU1", "Voltage Output (V)")
        volts.append(v)
        amps.append(i)
    assert volts == pytest.approx([0.05, 0.1, 0.15, 0.2])
    b1500.check_errors()
    assert b1500.query_learn(1)["DV1"][1] == "+5.0000E-02"   # WM post: back at the start value
    smu1.force("Voltage", "Auto Ranging", 0, 0.01)
    smu1.disable()
    smu2.disable()
    b1500.check_errors()   # a query: the writes before it have been carried out
    switch.write(":ROUT:OPEN:CARD ALL")
    _plausible(volts, amps, _row0_conductances(bench_file))


def test_qcodes_keysight_b1500_staircase_sweep(served, switch, tmp_path, monkeypatch):
    """QCoDeS's own sweep set-up (AV, FL, DV, CMM, RI, WT, WM, WV, TSR, each followed by its
    ERRX? check) and its IV sweep parameter, which parses *LRN? 31/33 with its regexes and
    reads the data in FMT 1,1."""
    monkeypatch.setenv("QCODES_USER_PATH", str(tmp_path))
    qcodes_b1500 = pytest.importorskip("qcodes.instrument_drivers.Keysight")
    from qcodes.instrument_drivers.Keysight.keysightb1500 import constants

    resources, bench_file = served
    b = qcodes_b1500.KeysightB1500("b1500_sweep", resources["analyzer"], visalib="@py")
    try:
        smu1, smu2 = b.by_slot[1], b.by_slot[2]
        switch.write(":ROUT:CLOS (@00101,00209)")
        b.enable_channels([1, 2])
        smu2.source_config(output_range=constants.VOutputRange.AUTO, compliance=0.01)
        smu2.voltage(0.0)
        smu1.setup_staircase_sweep(v_start=0.05, v_end=0.2, n_steps=4, i_comp=1e-3,
                                   i_meas_range=constants.IMeasRange.MIN_1uA,
                                   post_sweep_voltage_val=constants.WMDCV.Post.START,
                                   abort_enabled=constants.Abort.DISABLED)
        assert smu1.iv_sweep.sweep_steps() == 4 and smu1.iv_sweep.sweep_end() == 0.2
        assert smu1.iv_sweep.current_compliance() == 1e-3
        b.set_measurement_mode(mode=constants.MM.Mode.STAIRCASE_SWEEP, channels=(smu1.channels[0],))
        b.run_iv_staircase_sweep.set_names_labels_and_units()
        (amps,) = b.run_iv_staircase_sweep()
        volts = list(b.run_iv_staircase_sweep.source_voltage.value)
        assert volts == pytest.approx([0.05, 0.1, 0.15, 0.2])
        assert b.run_iv_staircase_sweep.param1.status == ["N"] * 4
        assert b.run_iv_staircase_sweep.source_voltage.status == ["W", "W", "W", "E"]
        assert b.get_response_format_and_mode()["format"] == constants.FMT.Format(1)
        smu1.voltage(0.0)
        b.disable_channels([1, 2])
    finally:
        b.close()
    switch.write(":ROUT:OPEN:CARD ALL")
    _plausible(volts, list(amps), _row0_conductances(bench_file))


def test_pymeasure_spgu_set_up_reads_back_and_pulses_the_device():
    """pymeasure's SPGU classes against an emulated B1525A (in slot 5, channel 501 cabled to
    row 0 through the switch): every setter read back through its getter, then a counted
    run whose pulses the bench sees one by one, at the line level the 1 Mohm load setting
    gives."""
    from simulator.bench import CableToSwitch, EmulatedInstrument, SimBenchSpec, SimulatedBench

    spec = SimBenchSpec(
        rows=1, cols=1, seed=2, switch="switch", row_ports=[1], col_ports=[2],
        instruments=[EmulatedInstrument(name="analyzer", type="keysight_b1500a",
                                        options={"modules": {1: "B1517A", 5: "B1525A"}}),
                     EmulatedInstrument(name="switch", type="keysight_e5250a", options={"cards": 1})],
        cables=[CableToSwitch(instrument="analyzer", channel=501, input=1),
                CableToSwitch(instrument="analyzer", channel=1, input=2)])
    with SimulatedBench(spec) as sim:
        sim.cores["switch"].handle(":ROUT:CLOS (@00101,00202)")
        b = pymeasure_b1500.AgilentB1500(sim.resources["analyzer"], visa_library="@py", timeout=5000)
        try:
            assert b.query_modules() == {1: "HRSMU", 5: "SPGU"}
            b.initialize_all_smus()
            b.initialize_all_spgus()
            b.smu1.enable()
            b.smu1.force("Voltage", "Auto Ranging", 0, 0.01)    # the column at 0 V
            spgu = b.spgu5
            ch = spgu.ch1
            spgu.operation_mode = pymeasure_b1500.SPGUOperationMode.PG
            spgu.period = 1e-5
            spgu.set_output_mode(pymeasure_b1500.SPGUOutputMode.COUNT, 10)
            ch.enabled = True
            ch.load_impedance = 1e6
            ch.output_mode = pymeasure_b1500.SPGUChannelOutputMode.SIGNAL_SOURCE_1
            ch.set_pulse_timings(source=1, delay=0, width=1e-6, rise_time=2e-8)
            ch.set_output_voltage(source=1, base_voltage=0, peak_voltage=1.5)
            ch.apply_setup()
            b.check_errors()
            assert spgu.operation_mode == pymeasure_b1500.SPGUOperationMode.PG
            assert spgu.period == pytest.approx(1e-5)
            assert spgu.get_output_mode() == (pymeasure_b1500.SPGUOutputMode.COUNT, 10.0)
            assert ch.load_impedance == pytest.approx(1e6)
            assert ch.output_mode == pymeasure_b1500.SPGUChannelOutputMode.SIGNAL_SOURCE_1
            assert ch.get_pulse_timings(1) == pytest.approx((0, 1e-6, 2e-8, 2e-8))
            assert ch.get_output_voltage(1) == pytest.approx((0.0, 1.5))
            g0 = float(sim.conductances()[0, 0])
            spgu.output = True
            assert spgu.complete is True
            b.check_errors()
            assert sim.exposure.pulses == 10 and sim.exposure.pulse_width == pytest.approx(1e-6)
            assert sim.exposure.line_voltage == pytest.approx(1.5 * (1e6 + 50) / 1e6)
            assert float(sim.conductances()[0, 0]) != g0
            spgu.output = False
            ch.enabled = False
            b.smu1.disable()
            b.check_errors()   # a query: the writes before it have been carried out
            assert all(v is None for v in sim.source_outputs().values())
        finally:
            b.adapter.close()


def test_sim_serve_lends_the_wgfmu_library_to_another_process(tmp_path):
    """The WGFMU bench served by a child: this process opens it from the written bench file
    (the emulated library reached over its socket) and tunes a device on the WGFMU."""
    from memlab.bench import open_crossbar
    from memlab.config import load_bench

    bench_file = tmp_path / "live.yaml"
    proc = memlab_cli("sim", "serve", "sim-b1500-wgfmu-e5250", "--write-bench", str(bench_file))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        served = dict(lines.get(timeout=30).split() for _ in range(3))
        assert served["wgfmu"].startswith("EMULATED::tcp://127.0.0.1:")
        config = load_bench(bench_file)   # written whole before the resources were printed
        with open_crossbar(config) as xbar:
            g0 = xbar.read(1, 1).conductance
            result = xbar.tune(1, 1, 1.3 * g0, config.tune_params(tolerance=0.02, reads_to_accept=3))
            sequences = xbar.pulser.pulses_sent
        assert result.tuned and abs(result.conductance / (1.3 * g0) - 1) <= 0.02
        assert sequences >= 2   # reads and pulses ran as WGFMU sequences, in the other process
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    assert code == 0, proc.stderr.read()


def test_a_lent_library_outlives_a_client_that_died(tmp_path):
    """A client that vanished without closing its session does not lock the next one out."""
    import ctypes

    from drivers.wgfmu_remote import RemoteWgfmuLibrary
    from simulator.wgfmu import EmulatedWgfmuLibrary
    from simulator.wgfmu_server import LibraryServer

    class NoHardware:
        def apply(self, outputs): pass
        def advance(self, seconds): pass
        def measure_current(self, slot, integration_s): return 0.0
        def note_pulse(self, *a): pass

    server = LibraryServer(EmulatedWgfmuLibrary(NoHardware()), "wgfmu")
    try:
        first = RemoteWgfmuLibrary(server.host, server.port)
        assert first.WGFMU_openSession(b"GPIB0::17::INSTR") == 0
        first.close()   # gone without closeSession
        second = RemoteWgfmuLibrary(server.host, server.port)
        for _ in range(100):
            if second.WGFMU_openSession(b"GPIB0::17::INSTR") == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the first client's session was never closed")
        size = ctypes.c_int()
        assert second.WGFMU_getChannelIdSize(ctypes.byref(size)) == 0 and size.value == 2
        ids = (ctypes.c_int * 2)()
        assert second.WGFMU_getChannelIds(ids, ctypes.byref(size)) == 0 and list(ids) == [101, 102]
        second.close()
    finally:
        server.stop()

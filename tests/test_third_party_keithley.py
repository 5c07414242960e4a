"""pymeasure's `Keithley4200`, unmodified, against the emulated 4200A-SCS over pyvisa-py: the
independent check that the emulator speaks KXCI as a real client expects (NUL-terminated
messages and replies, ACK for setters, `NAI+...` readings), and that what it reads agrees
with the simulated devices."""

from __future__ import annotations

import pytest
import pyvisa
import torch

from helpers import one_torch_thread  # noqa: F401
from simulator.bench import SimulatedBench
from test_k4200a_emulator import bench_spec

keithley = pytest.importorskip("pymeasure.instruments.keithley.keithley4200")
from pymeasure.adapters import VISAAdapter  # noqa: E402

OTHERS = "(@00302,00303,00304,00406,00407,00408)"   # SMU3/SMU4 hold the other lines at 0 V


@pytest.fixture(params=["LF", "CRLF"])
def rig(request):
    with SimulatedBench(bench_spec(line_ending=request.param)) as bench:
        adapter = VISAAdapter(bench.resources["analyzer"], visa_library="@py",
                              read_termination="\0", write_termination="\0", timeout=5000)
        inst = keithley.Keithley4200(adapter)
        switch = pyvisa.ResourceManager("@py").open_resource(
            bench.resources["switch"], read_termination="\n", write_termination="\n")
        switch.write(f":ROUT:CLOS (@00101,00205);:ROUT:CLOS {OTHERS}")
        assert switch.query(":SYST:ERR?").startswith("0")
        yield bench, inst
        for ch in (1, 2, 3, 4):
            getattr(inst, f"smu{ch}").disable()
        switch.write(":ROUT:OPEN:CARD ALL")
        adapter.close()
        switch.close()


def test_identify_options_and_status(rig):
    _, inst = rig
    assert inst.id.startswith("KI4200A V")
    assert inst.options == ["SMU1", "SMU2", "SMU3", "SMU4", "PMU1"]
    assert all(hasattr(inst, f"smu{ch}") for ch in (1, 2, 3, 4)) and not hasattr(inst, "smu5")
    inst.clear()
    assert inst.status == keithley.StatusCode.NONE


def test_force_voltage_measure_current_and_voltage(rig):
    bench, inst = rig
    for ch in (2, 3, 4):
        getattr(inst, f"smu{ch}").voltage_setpoint = (0, 0, 1e-2)
    inst.smu1.voltage_setpoint = (0, 0.2, 1e-2)
    g = float(bench.conductances()[0, 0])
    assert inst.smu1.voltage == pytest.approx(0.2)
    assert inst.smu2.current == pytest.approx(-0.2 * g, rel=0.05)
    assert inst.status & keithley.StatusCode.DATA_READY
    row = float(bench.conductances()[0, :].sum())
    assert inst.smu1.current == pytest.approx(0.2 * row, rel=0.05)


def test_force_current_measure_voltage(rig):
    bench, inst = rig
    for ch in (2, 3, 4):
        getattr(inst, f"smu{ch}").voltage_setpoint = (0, 0, 1e-2)
    inst.smu1.current_setpoint = (0, 5e-6, 1.0)
    v = torch.zeros(4, 4, dtype=torch.float64)
    v[0, :] = inst.smu1.voltage
    current = float(bench.array.device_currents(bench.conductances(), v)[0].sum())
    assert current == pytest.approx(5e-6, rel=0.05)


def test_a_refused_setting_is_reported_as_pymeasure_expects(rig):
    _, inst = rig
    with pytest.raises(ValueError, match="Expected 'ACK'"):
        inst.smu1.voltage_setpoint = (0, 500, 1e-2)     # beyond the SMU's 210 V
    assert inst.status & keithley.StatusCode.SYNTAX_ERROR

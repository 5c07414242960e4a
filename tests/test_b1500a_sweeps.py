"""The B1500A's staircase sweep, sampling and SPGU pulses through pyvisa-py over loopback,
against a 2x2 crossbar: what the driver reads agrees with the simulator's physics, what the
guard refuses never reaches the instrument, and the bench's exposure stays in the limits."""

from __future__ import annotations

import pytest

from drivers.b1500a import B1500A, FlexGrammar, parse_fields
from drivers.errors import LimitError
from drivers.guard import Guard
from drivers.limits import Limits
from simulator.bench import CableToSwitch, EmulatedInstrument, SimBenchSpec, SimulatedBench

from helpers import received

LIMITS = Limits(max_line_voltage=2.5, max_device_voltage=2.5, compliance_current=0.01,
                max_pulse_width=1e-3, max_pulse_energy=1e-4)
QUANTUM = 2e-9   # FMT 1 resolution of the 1 mA range


@pytest.fixture
def rig():
    """SMU 1 on row 0, SMU 2 on both columns, SPGU channel 501 on row 1 (switch inputs 1, 2, 3):
    every column held, so no sneak path adds to row 0's current."""
    spec = SimBenchSpec(
        rows=2, cols=2, seed=5, switch="switch", row_ports=[1, 2], col_ports=[3, 4],
        instruments=[EmulatedInstrument(name="analyzer", type="keysight_b1500a",
                                        options={"modules": {1: "B1517A", 2: "B1517A", 5: "B1525A"}}),
                     EmulatedInstrument(name="switch", type="keysight_e5250a", options={"cards": 1})],
        cables=[CableToSwitch(instrument="analyzer", channel=1, input=1),
                CableToSwitch(instrument="analyzer", channel=2, input=2),
                CableToSwitch(instrument="analyzer", channel=501, input=3)])
    with SimulatedBench(spec) as sim:
        sim.cores["switch"].handle(":ROUT:CLOS (@00101,00203,00204,00302)")   # the wiring, set by hand
        b = B1500A(sim.resources["analyzer"], limits=LIMITS, timeout_s=5)
        b.initialize()
        b.enable([1, 2])
        b.send(b.dv_command(2, 0.0))
        yield sim, b
        b.safe_state()
        b.close()


def test_staircase_sweep_reads_each_step_of_the_device(rig):
    sim, b = rig
    volts, amps = b.staircase_sweep(1, 0.0, 0.2, 5, compliance=1e-3, delay=1e-3)
    assert volts == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    g = float(sim.conductances()[0].sum())   # row 0's two devices; 0.2 V is far below switching
    noise = sim.array.preset.read
    for v, i in zip(volts, amps):
        sd = (noise.noise_relative * g + noise.noise_absolute) * v
        assert abs(i - v * g) <= 5 * sd + QUANTUM, (v, i, g)
    cmds = received(sim, "analyzer")
    assert "WV 1,1,0,0,0.2,5,0.001" in cmds and "MM 2,1" in cmds and cmds.count("XE") == 1
    assert sim.source_outputs()[("analyzer", 1)] == (0.0, 1e-3)   # back at 0 V after the sweep
    assert sim.exposure.line_voltage == pytest.approx(0.2)


def test_two_way_sweep_comes_back(rig):
    _, b = rig
    volts, amps = b.staircase_sweep(1, 0.1, 0.3, 3, compliance=1e-3, mode=3)
    assert volts == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.2, 0.1])
    assert all(i > 0 for i in amps)


def test_sweep_compliance_is_reported(rig):
    _, b = rig
    volts, amps = b.staircase_sweep(1, 0.0, 1.0, 3, compliance=1e-6)
    assert amps[-1] == pytest.approx(1e-6)    # a 1 V step through a >10 uS device hits 1 uA


@pytest.mark.parametrize("message, why", [
    ("WV 1,1,0,0,3.0,5,1E-3", "exceeds max_line_voltage"),
    ("WV 1,1,0,0,1,5,0.5", "compliance"),
    ("WV 1,2,0,0,1,5,1E-3", "log sweep"),
    ("WV 1,1,0,0,1,20000,1E-3", "sweep steps"),
    ("WI 1,1,0,0,1E-3,5,1", "not covered"),
    ("MM 2,1", "nobody set up"),
])
def test_unsafe_sweeps_are_refused_on_the_host(rig, message, why):
    sim, b = rig
    before = len(sim.servers["analyzer"].received())
    with pytest.raises(LimitError, match=why):
        b.write(message)
    assert len(sim.servers["analyzer"].received()) == before


def test_sweep_spread_against_another_output_is_checked_at_every_step():
    """SMU 2 at -2 V: a sweep of SMU 1 to +1 V passes 2.5 V across a device at its last
    steps (the endpoints of a two-way log sweep are checked like every other step)."""
    guard = Guard(FlexGrammar(LIMITS), "B1500A")
    guard.state = guard.grammar.reset_state()
    guard.state = guard.check("CN 1,2;DV 2,0,-2,1E-3;WV 1,1,0,0,0.4,3,1E-3;MM 2,1;XE").after
    with pytest.raises(LimitError, match="max_device_voltage"):
        guard.check("WV 1,1,0,0,1.0,3,1E-3;MM 2,1;XE")
    with pytest.raises(LimitError, match="max_device_voltage"):
        guard.check("WV 1,4,0,0.1,0.6,7,1E-3;MM 2,1;XE")
    # a synchronous source stepping the other way is checked step by step too
    with pytest.raises(LimitError, match="max_device_voltage"):
        guard.check("DV 2,0,0,1E-3;WV 1,1,0,0,1.5,4,1E-3;WSV 2,0,0,-1.5,1E-3;MM 2,1;XE")
    change = guard.check("DV 2,0,0,1E-3;WV 1,1,0,0,1.2,4,1E-3;WSV 2,0,0,-1.2,1E-3;WM 1,2;MM 2,1;XE")
    assert change.after.levels[1] == pytest.approx(1.2) and change.after.levels[2] == pytest.approx(-1.2)
    guard.state = guard.check("DV 2,0,0,1E-3").after
    # with the automatic abort on, the sweep may end at its start or its post value: unknown
    change = guard.check("WV 1,1,0,0,1.2,4,1E-3;WM 2,2;MM 2,1;XE")
    assert change.after.levels[1] is None


def test_sampling_holds_the_bias_and_samples_the_current(rig):
    sim, b = rig
    g = float(sim.conductances()[0].sum())
    b.send("FMT 1,0", "MT 0,0.002,4,0", "MV 1,0,0,0.2,1E-3", "MM 10,1")
    fields = parse_fields(b.query("XE"))
    b.check_errors()
    assert len(fields) == 4 and all(f.channel == 1 and f.kind == "I" for f in fields)
    for f in fields:
        assert abs(f.value - 0.2 * g) <= 0.01 * 0.2 * g + QUANTUM
    b.send("DV 1,0,0")
    with pytest.raises(LimitError, match="exceeds max_line_voltage"):
        b.write("MV 1,0,0,2.6,1E-3")


def test_spgu_pulses_reach_the_device_and_are_counted(rig):
    sim, b = rig
    before = sim.exposure.pulses
    g0 = float(sim.conductances()[1, 1])
    b.spgu_pulses(501, 0.0, 2.0, 1e-6, 1e-5, 50)
    assert b.pulses_sent == 50 and sim.exposure.pulses == before + 50
    assert sim.exposure.pulse_width == pytest.approx(1e-6)
    assert sim.exposure.line_voltage == pytest.approx(2.0 * (1e6 + 50) / 1e6)
    assert float(sim.conductances()[1, 1]) != g0      # 2 V pulses moved the device
    assert sim.source_outputs()[("analyzer", 501)] == (0.0, 0.0)   # back at the base level
    cmds = received(sim, "analyzer")
    assert cmds.count("SRP") == 1 and "SPST?" in cmds


@pytest.mark.parametrize("setup, why", [
    ("SPV 501,1,0,2.6", "exceeds max_line_voltage"),
    ("SPRM 0", "free run"),
    ("SIM 1", "SIM 0"),
    ("CN 501;SIM 0;SPPER 1E-2;SPRM 1,5;SER 501,1E6;SPM 501,1;SPT 501,1,0,2E-3,2E-8;SPV 501,1,0,1;SRP",
     "max_pulse_width"),
    # the default 50 ohm load doubles the set voltage on a high-impedance line
    ("CN 501;SIM 0;SPPER 1E-5;SPRM 1,5;SER 501,50;SPM 501,1;SPT 501,1,0,1E-6,2E-8;SPV 501,1,0,1.5;SRP",
     "exceeds max_line_voltage"),
    ("CN 501;SIM 0;SPPER 1E-3;SPRM 1,5;SER 501,1E6;SPM 501,1;SPT 501,1,0,9E-4,2E-8;SPV 501,1,0,2.4;SRP",
     "pulse energy"),
    ("CN 501;SIM 0;SPPER 1E-5;SPRM 1,5;SER 501,1E6;SPM 501,1;SPV 501,1,0,1;SRP", "SPT source 1 not set"),
    ("CN 501;SIM 0;SPPER 1E-5;SPRM 1,5;SER 501,1E6;SPM 501,1;SPT 501,1,0,1E-6,2E-8;SPV 501,1,0.8,1;SPUPD 501",
     "compliance_current"),
    ("SRP", "needs SIM 0, SPPER, SPRM"),
])
def test_unsafe_spgu_set_ups_are_refused_on_the_host(rig, setup, why):
    sim, b = rig
    before = len(sim.servers["analyzer"].received())
    with pytest.raises(LimitError, match=why):
        b.write(setup)
    assert len(sim.servers["analyzer"].received()) == before
    assert sim.exposure.pulses == 0


def test_spgu_pulse_spread_against_an_smu_is_checked(rig):
    sim, b = rig
    b.send("DV 2,0,-1,1E-3")
    with pytest.raises(LimitError, match="max_device_voltage"):
        b.spgu_pulses(501, 0.0, 2.0, 1e-6, 1e-5, 3)
    assert "SRP" not in received(sim, "analyzer") and b.pulses_sent == 0


def test_safe_state_stops_the_spgu_and_switches_everything_off(rig):
    sim, b = rig
    b.spgu_pulses(501, 0.1, 1.0, 1e-6, 1e-5, 2)
    b.safe_state()
    cmds = received(sim, "analyzer")
    assert cmds.index("SPP") < len(cmds) - cmds[::-1].index("CL") - 1
    assert all(v is None for v in sim.source_outputs().values())

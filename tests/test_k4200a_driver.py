"""memlab's K4200A driver through pyvisa-py against the emulated 4200A-SCS on a simulated bench
(an E5250A routes the SMUs and the PMU to a 4x4 crossbar): readings agree with the physics,
the guard refuses before anything is sent, errors carry the instrument's code and message,
PMU tests run once and are counted, and the safe state is reached, from the command log."""

from __future__ import annotations

import re

import pytest
import torch

from drivers.e5250a import E5250A
from drivers.errors import InstrumentError, LimitError, PulseOutcomeUnknown
from drivers.interfaces import PulseStep
from drivers.k4200a import K4200A
from drivers.limits import Limits
from helpers import after_message, one_torch_thread  # noqa: F401
from simulator.bench import SimulatedBench
from test_k4200a_emulator import bench_spec

LIMITS = Limits(max_line_voltage=2.0, max_device_voltage=1.5, compliance_current=1e-3,
                max_pulse_width=1e-3, max_pulse_energy=1e-6)
OTHERS = [(3, 2), (3, 3), (3, 4), (4, 6), (4, 7), (4, 8)]   # SMU3/SMU4 hold the other lines at 0 V


@pytest.fixture
def rig():
    with SimulatedBench(bench_spec()) as bench:
        k = K4200A(bench.resources["analyzer"], limits=LIMITS, name="analyzer", timeout_s=2)
        sw = E5250A(bench.resources["switch"], name="switch", timeout_s=2)
        k.initialize()
        sw.initialize()
        k.enable([1, 2, 3, 4])
        try:
            yield bench, k, sw
        finally:
            k.safe_state()
            sw.safe_state()
            k.close()
            sw.close()


def log(bench) -> list[str]:
    return bench.servers["analyzer"].received()


def test_connect_resets_identifies_and_lists_the_channels(rig):
    bench, k, _ = rig
    assert k.identity.startswith("KEITHLEY INSTRUMENTS,KI4200A,")
    assert k.source_channels() == [1, 2, 3, 4] and k.pulse_channels() == [101, 102]
    first = [m for m in log(bench) if "*RST" in m]
    assert first and ":PMU:INIT 1" in " ".join(log(bench)[log(bench).index(first[0]):])


def test_spot_current_is_g_times_v_in_one_round_trip(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    g = float(bench.conductances()[0, 0])
    before = len(log(bench))
    m = k.measure_current(2, levels={1: 0.2}, then={1: 0.0})
    assert len(log(bench)) == before + 1
    assert m.value == pytest.approx(-0.2 * g, rel=0.05) and not m.compliance
    assert bench.source_outputs()[("analyzer", 1)] == (0.0, LIMITS.compliance_current)


def test_set_voltages_puts_several_levels_in_one_message(rig):
    bench, k, sw = rig
    before = len(log(bench))
    k.set_voltages({1: 0.5, 3: 0.25, 4: -0.5})
    assert len(log(bench)) == before + 1
    out = bench.source_outputs()
    assert out[("analyzer", 1)][0] == 0.5 and out[("analyzer", 4)][0] == -0.5


@pytest.mark.parametrize("call", [
    lambda k: k.set_voltages({1: 2.5}),                  # over max_line_voltage
    lambda k: k.set_voltages({1: 1.0, 2: -1.0}),         # 2 V between two outputs
    lambda k: k.measure_current(2, levels={1: 1.6}),     # 1.6 V across the device on SMU2's line
    lambda k: k.write("DV1,0,0.5,0.1"),                  # compliance over the limit
    lambda k: k.write("DI1,0,1e-3,1"),                   # a current source: its voltage is not bounded
    lambda k: k.write("RI1,1e-3,0.1"),
    lambda k: k.write(":PMU:LOAD 1,50"),
    lambda k: k.write("US;DV1,0,0.1,1e-3\nDV1,0,5,1e-3"),  # a terminator inside a message
    lambda k: k.check_sequence(101, 102, [PulseStep(1.8, 0, 1e-6)]),   # over max_device_voltage
    lambda k: k.run_sequence(101, 102, [PulseStep(1.0, 0, 2e-3)]),     # over max_pulse_width
    lambda k: k.run_sequence(101, 102, [PulseStep(1.0, -0.8, 1e-6)]),  # 1.8 V drive - sense
    lambda k: k.run_sequence(101, 102, [PulseStep(1.5, 0, 8e-4)]),     # 1.5 V x 1 mA x 0.8 ms > 1 uJ
    lambda k: k.write(":PMU:EXECUTE"),                   # nothing loaded in this session
])
def test_the_guard_refuses_before_anything_is_sent(rig, call):
    bench, k, _ = rig
    before = list(log(bench))
    with pytest.raises(LimitError):
        call(k)
    assert log(bench) == before


def test_a_pmu_test_loaded_before_the_connect_reset_is_not_executed(rig):
    bench, k, _ = rig
    k.run_sequence(101, 102, [PulseStep(0.3, 0, 1e-6)])
    k.initialize()                                      # :PMU:INIT forgets what was loaded
    with pytest.raises(LimitError, match="range|loaded"):
        k.write(":PMU:OUTPUT:STATE 1,1;:PMU:OUTPUT:STATE 2,1;:PMU:EXECUTE")


def test_an_instrument_error_is_raised_with_its_code_and_message(rig):
    _, k, _ = rig
    with pytest.raises(InstrumentError) as info:
        k.send("US", "DV5,0,0.1,1e-3")                  # the guard knows no reason to refuse SMU5
    assert info.value.code == -994 and info.value.message == "Instrument not installed"
    k.send("US")                                        # the error was cleared
    with pytest.raises(InstrumentError) as info:
        k.measure_current(1, levels=[(5, 0.0)])
    assert info.value.code == -994


def test_a_pulse_and_read_sequence_is_one_pmu_test_and_reads_g_times_v(rig):
    bench, k, sw = rig
    sw.connect([(5, 1), (6, 5), *OTHERS])
    g = float(bench.conductances()[0, 0])
    before, sent = len(log(bench)), k.pulses_sent
    steps = [PulseStep(0.2, 0, 2e-6, measure=True), PulseStep(0.2, 0, 1e-6, measure=True)]
    currents = k.run_sequence(101, 102, steps)
    assert currents == [pytest.approx(-0.2 * g, rel=0.05)] * 2
    new = log(bench)[before:]
    assert [m for m in new if ":PMU:EXECUTE" in m] == [":PMU:EXECUTE"]
    assert len(new) <= 4                                # set-up, execute, status, data
    assert k.pulses_sent == sent + 1
    assert bench.exposure.pulses == 2
    assert bench.exposure.pulse_width == pytest.approx(2e-6)   # the step's width, edges included


def test_a_pmu_pulse_changes_the_device_and_reports_the_current_at_its_top(rig):
    bench, k, sw = rig
    sw.connect([(5, 1), (6, 5), *OTHERS])
    v = torch.zeros(4, 4, dtype=torch.float64)
    v[0, :] = 1.2                                       # row 0 at the peak, every column at 0 V

    def row_current() -> float:                         # the devices' own (non-linear) I-V
        return float(bench.array.device_currents(bench.conductances(), v)[0].sum())

    g0, before = float(bench.conductances()[0, 0]), row_current()
    m = k.pulse(101, 0.0, 1.2, 2e-4)                    # a SET pulse: the mean current on its top
    assert float(bench.conductances()[0, 0]) > g0
    assert before * 0.95 < m.value < row_current() * 1.05
    assert m.compliance == (m.value >= LIMITS.compliance_current)
    with pytest.raises(ValueError, match="PMU"):
        k.check_pulse(1, 0.0, 1.0, 1e-3)                # no SMU pulse over KXCI


def test_a_lost_execute_reply_is_an_unknown_outcome_and_is_not_retried(rig):
    bench, k, sw = rig
    server = bench.servers["analyzer"]
    after_message(server, r"^:PMU:EXECUTE$", lose_next_reply=True)   # it runs; its ACK is lost
    k.set_timeout(0.3)
    sent = k.pulses_sent
    with pytest.raises(PulseOutcomeUnknown):
        k.run_sequence(101, 102, [PulseStep(0.3, 0, 1e-6, measure=True)])
    assert k.pulses_sent == sent + 1
    assert sum(m == ":PMU:EXECUTE" for m in log(bench)) == 1
    assert bench.exposure.pulses == 1                   # it did run
    k.set_timeout(2)


def test_safe_state_switches_everything_off_and_the_log_ends_that_way(rig):
    bench, k, sw = rig
    sw.connect([(5, 1), (6, 5), (1, 2)])
    k.set_voltages({1: 0.4})
    k.run_sequence(101, 102, [PulseStep(0.3, 0, 1e-6)])
    k.safe_state()
    assert all(v is None for v in bench.source_outputs().values())
    last = log(bench)[-1].split(";")
    assert {":PMU:OUTPUT:STATE 1,0", ":PMU:OUTPUT:STATE 2,0", "DV1", "DV2", "DV3", "DV4"} <= set(last)


def test_safe_state_works_after_a_dropped_connection(rig):
    bench, k, _ = rig
    k.set_voltages({1: 0.4})
    bench.servers["analyzer"].faults.drop_next = True
    k.safe_state()
    assert all(v is None for v in bench.source_outputs().values())
    assert re.fullmatch(r".*DV1;DV2;DV3;DV4;:ERROR:LAST:GET", log(bench)[-1])


def test_preflight_check_of_a_pulse_plan_sends_nothing():
    K4200A.check_pulse_plan(LIMITS, 0.0, 1.0, 1e-3)     # 1 uJ: at the limit
    with pytest.raises(LimitError):
        K4200A.check_pulse_plan(LIMITS, 0.0, 1.5, 1e-3)


def test_an_injected_execution_error_is_raised_with_its_code_and_not_retried(rig):
    bench, k, _ = rig
    bench.cores["analyzer"].inject_error(1)
    before = len(log(bench))
    with pytest.raises(InstrumentError) as info:
        k.set_voltages({1: 0.3})
    assert (info.value.code, info.value.message) == (-998, "Execution error: instrument busy")
    new = log(bench)[before:]
    assert sum("DV1,0,0.3" in m for m in new) == 1              # sent once, not repeated
    assert new[-1] == ":ERROR:LAST:CLEAR"                        # the error cleared, nothing else sent
    assert bench.source_outputs()[("analyzer", 1)] == (0.0, LIMITS.compliance_current)
    assert k.guard.state.levels[1] is None                       # the level is unknown until told again
    k.set_voltages({1: 0.3})                                     # the caller decides to send it again
    assert bench.source_outputs()[("analyzer", 1)] == (0.3, LIMITS.compliance_current)


def test_an_execution_error_on_a_pmu_test_set_up_sends_no_execute(rig):
    bench, k, sw = rig
    bench.cores["analyzer"].inject_error(1)
    before, sent = len(log(bench)), k.pulses_sent
    with pytest.raises(InstrumentError) as info:
        k.run_sequence(101, 102, [PulseStep(0.3, 0, 1e-6, measure=True)])
    assert info.value.code == -998
    assert not any(":PMU:EXECUTE" in m for m in log(bench)[before:])
    assert k.pulses_sent == sent and bench.exposure.pulses == 0
    with pytest.raises(LimitError):                              # what the failed set-up left is unknown
        k.write(":PMU:EXECUTE")


def test_an_execution_error_on_a_read_raises_it_and_the_read_is_not_repeated(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    bench.cores["analyzer"].inject_error(1)
    before = len(log(bench))
    with pytest.raises(InstrumentError) as info:
        k.measure_current(2, levels={1: 0.2}, then={1: 0.0})
    assert info.value.code == -998
    assert sum("TI2" in m for m in log(bench)[before:]) == 1


def test_the_kult_pulse_read_module_writes_then_reads_g_times_v(rig):
    bench, k, sw = rig
    sw.connect([(5, 1), (6, 5), *OTHERS])
    g0 = float(bench.conductances()[0, 0])
    before, sent = len(log(bench)), k.pulses_sent
    currents = k.pulse_read(101, 102, write=None, read=(0.2, 1e-6), reads=2)
    assert currents == [pytest.approx(-0.2 * g0, rel=0.05)] * 2
    currents = k.pulse_read(101, 102, write=(1.2, 0.0, 2e-4), read=(0.2, 1e-6), reads=1, writes=3)
    g = [float(-i / 0.2) for i in currents]
    assert g[0] > g0 * 1.01 and g[0] < g[1] < g[2]              # each SET pulse raises the conductance
    assert g[2] == pytest.approx(float(bench.conductances()[0, 0]), rel=0.05)
    new = log(bench)[before:]
    assert sum(m.startswith("EX memlab_kult PulseRead(") for m in new) == 2 and k.pulses_sent == sent + 2
    assert bench.exposure.pulses == 2 + 3 + 3                    # every read and write a separate pulse
    assert all(v is None for key, v in bench.source_outputs().items() if key[1] > 100)   # outputs off after
    k.run_sequence(101, 102, [PulseStep(0.2, 0, 1e-6, measure=True)])   # segment ARB set up again


@pytest.mark.parametrize("plan", [
    dict(write=(1.8, 0.0, 1e-4), read=(0.2, 1e-6)),              # over max_device_voltage
    dict(write=(1.0, -0.8, 1e-4), read=(0.2, 1e-6)),             # 1.8 V between drive and sense
    dict(write=(1.0, 0.0, 2e-3), read=(0.2, 1e-6)),              # over max_pulse_width
    dict(write=(1.5, 0.0, 8e-4), read=(0.2, 1e-6)),              # 1.5 V x 1 mA x 0.8 ms > 1 uJ
    dict(write=None, read=(0.2, 1e-6), reads=300),               # too long to check
])
def test_the_guard_checks_the_kult_module_like_any_pulse(rig, plan):
    bench, k, _ = rig
    before = list(log(bench))
    with pytest.raises(LimitError):
        k.pulse_read(101, 102, **plan)
    assert log(bench) == before


@pytest.mark.parametrize("message", [
    "EX memlab_kult PulseRead(1,2,0.5,0,1e-4,0.2,1e-6,1,1,1e-1,,1)",      # IRange over the compliance
    "EX memlab_kult PulseRead(1,2,0.5,0,1e-4,0.2,1e-6,1,1,1e-3,5,1)",     # the output slot not blank
    "EX memlab_kult Other(1,2,0.5,0,1e-4,0.2,1e-6,1,1,1e-3,,1)",          # a module nobody checked
    "EX memlab_kult PulseRead(1,2,0.5,0,1e-4,0.2,1e-6,1,1,1e-3,,1",       # unbalanced
])
def test_the_guard_refuses_kult_calls_it_cannot_prove(rig, message):
    bench, k, _ = rig
    with pytest.raises(LimitError):
        k.write(message)


def test_the_guard_bounds_the_kult_module_through_the_divider():
    probe = K4200A._probe(LIMITS, {101: (2 / 3, 1 / 3)})
    plan = dict(write=(2.0, 0.0, 1e-4), read=(0.3, 1e-6))
    probe.check_pulse_read(101, 102, **plan)                     # 2 V on the channel, 1.33 V on the lines
    with pytest.raises(LimitError):
        K4200A._probe(LIMITS).check_pulse_read(101, 102, **plan)


def test_a_lost_kult_reply_is_an_unknown_outcome_and_is_not_retried(rig):
    bench, k, sw = rig
    after_message(bench.servers["analyzer"], r"^EX ", lose_next_reply=True)
    k.set_timeout(0.3)
    with pytest.raises(PulseOutcomeUnknown):
        k.pulse_read(101, 102, write=(0.5, 0.0, 1e-5), read=(0.2, 1e-6))
    assert sum(m.startswith("EX ") for m in log(bench)) == 1
    k.set_timeout(2)
    with pytest.raises(LimitError):                              # the PMU set-up is unknown now
        k.write(":PMU:OUTPUT:STATE 1,1;:PMU:EXECUTE")

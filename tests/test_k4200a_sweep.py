"""System-mode sweeps through memlab's K4200A driver (pyvisa-py over loopback) against the
emulated 4200A-SCS on a simulated 4x4 crossbar: the swept I-V agrees with the devices' physics,
a sweep beyond the limits is refused before anything is sent, the data replies are parsed
exactly, a sweep whose reply is lost is an unknown outcome and is not sent again, a hysteresis
loop is four sweeps in a row, and user mode and the safe state work afterwards."""

from __future__ import annotations

import re

import pytest
import torch

from drivers.errors import InstrumentError, LimitError, PulseOutcomeUnknown
from drivers.interfaces import PulseStep
from helpers import after_message, assert_safe, one_torch_thread  # noqa: F401
from test_k4200a_driver import LIMITS, OTHERS, log, rig  # noqa: F401  (rig: the fixture)

SWEEP = (0.0, 0.2, 0.05)                 # a read-range sweep: far below switching
INTEGRATION_S = 1 / 50                   # IT2: 1 PLC at the emulator's 50 Hz


def triggers(bench) -> list[str]:
    return [m for m in log(bench) if re.search(r"(^|;)ME[123]$", m)]


def row_current(bench, g: torch.Tensor, volts: float) -> tuple[float, float]:
    """Row 0's current with row 0 at `volts` and every other line at 0 V, and its read-noise sd."""
    v = torch.zeros(4, 4, dtype=torch.float64)
    v[0, :] = volts
    noise = bench.array.preset.read
    sd = float(((noise.noise_relative * g[0] + noise.noise_absolute) * abs(volts)).sum())
    return float(bench.array.device_currents(g, v)[0].sum()), sd


def test_a_read_range_sweep_measures_g_times_v_at_every_step(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])   # SMU1 on row 0, SMU2 on column 0, SMU3/4 on the rest
    g = bench.conductances()
    before, sent, start = len(log(bench)), k.pulses_sent, bench.clock
    points = k.sweep_iv(1, *SWEEP, 1e-3, delay=1e-3)
    volts = [v for v, _ in points]
    assert volts == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2], abs=1e-12)
    for v, i in points:
        expected, sd = row_current(bench, g, v)
        assert abs(i - expected) <= 5 * sd + 1e-4 * abs(expected) + 1e-15, (v, i, expected)
        assert i == pytest.approx(float(g[0].sum()) * v, rel=0.02)          # I = G V (sinh law: < 2 % off)
    device = [r.value for r in k.system_data("I2")]                         # column 0: device (0, 0) alone
    assert device == pytest.approx([-float(g[0, 0]) * v for v in volts], rel=0.02, abs=1e-12)
    assert float(bench.conductances()[0, 0]) == pytest.approx(float(g[0, 0]), rel=1e-3)   # a read: no change
    assert bench.clock - start >= 5 * (1e-3 + INTEGRATION_S)
    new = log(bench)[before:]
    assert sum(m == "ME1" for m in new) == 1 and k.pulses_sent == sent + 1
    assert "VR1,0,0.2,0.05,0.001" in new[0].split(";")
    assert bench.exposure.line_voltage == pytest.approx(0.2) and bench.exposure.pulses == 0
    # user mode again, every SMU back on at 0 V
    assert all(bench.source_outputs()[("analyzer", ch)] == (0.0, LIMITS.compliance_current) for ch in (1, 2, 3, 4))


def test_the_other_smus_that_are_on_are_held_through_the_sweep_and_after_it(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    k.set_voltages({3: 0.3, 4: -0.2})
    k.sweep_iv(1, 0.0, 0.4, 0.2, 1e-3)
    assert [r.value for r in k.system_data("V3")] == [0.3] * 3
    assert [r.value for r in k.system_data("V4")] == [-0.2] * 3
    out = bench.source_outputs()
    assert out[("analyzer", 3)][0] == 0.3 and out[("analyzer", 4)][0] == -0.2 and out[("analyzer", 1)][0] == 0.0


def test_rd_and_do_replies_are_parsed_exactly(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    points = k.sweep_iv(1, *SWEEP, 1e-3)
    do = k.query("DO 'I1'")
    assert re.fullmatch(r"N[+-]\d\.\d{4}E[+-]\d\d(,N[+-]\d\.\d{4}E[+-]\d\d){4}", do)
    assert [float(f[1:]) for f in do.split(",")] == [i for _, i in points]
    assert k.read_points("I1") == [i for _, i in points]                    # RD, one by one: the same numbers
    assert k.read_point("V1", 5) == 0.2 and k.read_point("V1", 6) is None   # past the last: "0"
    assert k.query("RD 'V1',6") == "0"
    with pytest.raises(InstrumentError) as info:
        k.system_data("NONE")
    assert info.value.code == -997


@pytest.mark.parametrize("levels, sweep", [
    ({}, (0.0, 2.5, 0.5, 1e-3)),                  # over max_line_voltage
    ({}, (0.0, 1.3, 0.8, 1e-3)),                  # its last step is 1.6 V, beyond the stop: over 1.5 V
    ({}, (0.0, 0.2, 0.1, 1e-2)),                  # compliance over the limit
    ({}, (0.0, 1.6, 0.4, 1e-3)),                  # 1.6 V against SMU2 at 0 V: over max_device_voltage
    ({2: -0.5}, (0.0, 1.2, 0.3, 1e-3)),           # 1.7 V against SMU2 at -0.5 V
])
def test_a_sweep_beyond_the_limits_is_refused_before_anything_is_sent(rig, levels, sweep):
    bench, k, _ = rig
    k.set_voltages(levels)
    before, sent = list(log(bench)), k.pulses_sent
    with pytest.raises(LimitError):
        k.sweep_iv(1, *sweep)
    assert log(bench) == before and k.pulses_sent == sent


@pytest.mark.parametrize("message", [
    "MD;ME1",                                           # no sweep defined in this session
    "DE;CH1,'V1','I1',1,1;SS;VC2,0,1e-3;MD;ME1",        # VAR1 without VR
    "DE;CH1,'V1','I1',1,1;CH2,'V2','I2',1,3;SS;VR1,0,0.2,0.1,1e-3;MD;ME1",   # SMU2 constant without VC
    "DE;CH1,'V1','I1',1,1;SS;VR1,0,0.2,0.1,1e-3;MD;ME2",  # repeated until stopped
    "DE;CH1,'V1','I1',2,1",                             # a current source
    "DE;CH1,'V1','I1',1,4",                             # VAR1'
    "SS;VR2,0.1,1,1e-3",                                # a log sweep
    "VR1,0,0.2,0.1,1e-3",                               # on the user-mode page: not a VR KXCI would take
    "SS;VR1,0,1,0.0005,1e-3",                           # below 1 mV the step is 0
    "DE;CH1,'V1','I1',1,1;SS;VR1,0,1.6,0.4,1e-3;MD;ME1",  # 1.6 V against SMU2 at 0 V
    "SS;VC2,2.5,1e-3",
    "SM;XX 1",
])
def test_the_guard_refuses_system_mode_messages_it_cannot_prove(rig, message):
    bench, k, _ = rig
    before = list(log(bench))
    with pytest.raises(LimitError):
        k.write(message)
    assert log(bench) == before


def test_a_lost_me_reply_is_an_unknown_outcome_and_is_not_sent_again(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    after_message(bench.servers["analyzer"], r"^ME1$", lose_next_reply=True)   # it runs; its ACK is lost
    k.set_timeout(0.3)
    sent = k.pulses_sent
    with pytest.raises(PulseOutcomeUnknown):
        k.sweep_iv(1, *SWEEP, 1e-3)
    assert k.pulses_sent == sent + 1 and len(triggers(bench)) == 1
    with pytest.raises(LimitError):                      # SMU1's level is not known now
        k.set_voltages({2: 0.1})
    k.set_timeout(2)
    k.safe_state()                                       # stops the test, everything off
    assert log(bench)[-1].startswith("MD;ME4;")
    assert all(v is None for v in bench.source_outputs().values())
    assert len(triggers(bench)) == 1, "the sweep was not sent again"
    k.enable([1, 2, 3, 4])
    assert len(k.sweep_iv(1, *SWEEP, 1e-3)) == 5         # and the next one works


def test_a_lost_status_reply_is_asked_again_and_the_sweep_is_not_repeated(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    after_message(bench.servers["analyzer"], r"^SP$", lose_next_reply=True)    # the first poll's reply
    k.set_timeout(0.3)
    points = k.sweep_iv(1, *SWEEP, 1e-3)
    k.set_timeout(2)
    assert len(points) == 5 and len(triggers(bench)) == 1
    assert sum(m == "SP" for m in log(bench)) == 2          # 5 steps, 4 a message: the lost poll, then its retry


def test_an_instrument_error_in_the_set_up_sends_no_me(rig):
    bench, k, _ = rig
    bench.cores["analyzer"].inject_error(1)
    before, sent = len(log(bench)), k.pulses_sent
    with pytest.raises(InstrumentError) as info:
        k.sweep_iv(1, *SWEEP, 1e-3)
    assert info.value.code == -998
    assert not triggers(bench)[before:] and k.pulses_sent == sent
    with pytest.raises(LimitError):                      # what the failed set-up left is unknown
        k.write("MD;ME1")


def test_a_hysteresis_loop_is_four_sweeps_in_a_row_and_switches_the_device(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    g0, sent = float(bench.conductances()[0, 0]), k.pulses_sent
    branches, devices, g = [], [], []
    for start, stop in [(0.0, 1.4), (1.4, 0.0), (0.0, -1.4), (-1.4, 0.0)]:   # 0 -> +V -> 0 -> -V -> 0
        branches.append(k.sweep_iv(1, start, stop, 0.2, 1e-3, delay=1e-3))
        devices.append([-r.value for r in k.system_data("I2")])           # device (0, 0)'s own current
        g.append(float(bench.conductances()[0, 0]))
    up = [round(0.2 * n, 9) for n in range(8)]
    assert [v for v, _ in branches[0]] == pytest.approx(up, abs=1e-9)
    assert [v for v, _ in branches[1]] == pytest.approx(up[::-1], abs=1e-9)
    assert [v for v, _ in branches[2]] == pytest.approx([-v for v in up], abs=1e-9)
    assert [v for v, _ in branches[3]] == pytest.approx([-v for v in up[::-1]], abs=1e-9)
    assert g[1] > 2 * g0, "positive half: SET"
    assert g[3] < g[1] / 2, "negative half: RESET"
    assert devices[1][4] > 2 * devices[0][3], "at +0.6 V the way back carries more than the way out"
    assert abs(devices[3][4]) < abs(devices[2][3]) / 2, "at -0.6 V the way back carries less"
    assert all(abs(b[0][1]) < 1e-12 or abs(b[-1][1]) < 1e-12 for b in branches), "pinched at 0 V"
    assert k.pulses_sent == sent + 4 and len(triggers(bench)) == 4
    e = bench.exposure
    assert e.line_voltage == pytest.approx(1.4) and e.device_voltage <= LIMITS.max_device_voltage
    assert e.compliance <= LIMITS.compliance_current


def test_user_mode_and_the_pmu_work_after_a_sweep_and_the_safe_state_ends_it_all(rig):
    bench, k, sw = rig
    sw.connect([(1, 1), (2, 5), *OTHERS])
    k.sweep_iv(1, *SWEEP, 1e-3)
    g = float(bench.conductances()[0, 0])
    assert k.measure_current(2, levels={1: 0.2}, then={1: 0.0}).value == pytest.approx(-0.2 * g, rel=0.05)
    sw.disconnect([(1, 1), (2, 5)])
    sw.connect([(5, 1), (6, 5)])
    assert k.run_sequence(101, 102, [PulseStep(0.2, 0, 1e-6, measure=True)]) == [pytest.approx(-0.2 * g, rel=0.05)]
    k.safe_state()
    sw.safe_state()
    assert_safe(bench)
    last = max(i for i, m in enumerate(log(bench)) if "DV1" in m.split(";"))
    assert not any(re.search(r"(^|;)ME[123]\b", m) for m in log(bench)[last:])

"""memlab's KULT module RampRead (drivers/kult/memlab_pulse_read.md): a write-verify ramp that
ends at the first write whose last read crosses a threshold. Through pyvisa-py against the
emulated 4200A-SCS on a simulated 4x4 crossbar (the PMU routed to device (0, 0)): the ramp stops
at the right write by the device's own physics and the writes after it never reach the bench,
the guard proves the whole ramp before anything is sent, a lost reply is an unknown outcome that
is not sent again, sequences RampRead cannot play are refused with ValueError, a ramp costs two
round trips, and the shipped 4200A bench file tunes a device through it."""

from __future__ import annotations

import pytest

from drivers.e5250a import E5250A
from drivers.errors import LimitError, PulseOutcomeUnknown
from drivers.interfaces import PulseStep, Stop
from drivers.k4200a import K4200A
from drivers.limits import Limits
from helpers import after_message, assert_safe, one_torch_thread  # noqa: F401  (a fixture)
from simulator.bench import Exposure, SimulatedBench
from test_k4200a_driver import LIMITS, OTHERS, log
from test_k4200a_emulator import Wire, bench_spec, route

READ_V = 0.2
READ = PulseStep(READ_V, 0.0, 1e-6, measure=True)
PMU_ROUTE = [(5, 1), (6, 5), *OTHERS]          # PMU ch 1 on row 0, ch 2 on column 0, SMU3/4 on the rest


def ramp(first: float, step: float, writes: int, *, reads: int = 1, width: float = 1e-4,
         sense: tuple[float, float] = (0.0, 0.0)) -> list[PulseStep]:
    """Write k at first + k step (the sense channel at sense[0] + k sense[1]), each followed by its reads."""
    steps = []
    for k in range(writes):
        steps += [PulseStep(first + k * step, sense[0] + k * sense[1], width)] + [READ] * reads
    return steps


def open_rig(bench, *, kult: bool = True, limits: Limits = LIMITS):
    k = K4200A(bench.resources["analyzer"], limits=limits, name="analyzer", timeout_s=2, kult=kult)
    sw = E5250A(bench.resources["switch"], name="switch", timeout_s=2)
    k.initialize()
    sw.initialize()
    k.enable([1, 2, 3, 4])
    return k, sw


@pytest.fixture
def rig():
    with SimulatedBench(bench_spec()) as bench:
        k, sw = open_rig(bench)
        try:
            yield bench, k, sw
        finally:
            k.safe_state()
            sw.safe_state()
            k.close()
            sw.close()


def exs(bench) -> list[str]:
    return [m for m in log(bench) if m.startswith("EX ")]


@pytest.mark.parametrize("rising, first, step, factor, reads", [
    (True, 0.9, 0.03, 1.15, 1),       # a SET ramp until G >= 1.15 G0
    (True, 0.9, 0.03, 1.15, 2),       # two reads per write: the second decides
    (False, -1.0, -0.03, 0.9, 1),     # a RESET ramp until G <= 0.9 G0
])
def test_a_ramp_stops_at_the_first_write_whose_last_read_crosses_the_threshold(rig, rising, first, step, factor, reads):
    bench, k, sw = rig
    sw.connect(PMU_ROUTE)
    g0 = float(bench.conductances()[0, 0])
    threshold = factor * g0
    writes = 16                                   # the whole ramp would go far past the threshold
    with bench.lock:
        bench.exposure = Exposure()
    sent = k.pulses_sent
    currents = k.run_sequence(101, 102, ramp(first, step, writes, reads=reads), stop=Stop(threshold * READ_V, rising))
    g = [-i / READ_V for i in currents]           # the sense channel sinks the device current
    applied = len(g) // reads
    assert len(g) == applied * reads and 2 <= applied < writes     # it stopped, and not at once
    last_reads = g[reads - 1::reads]              # the read that decides, write by write
    crossed = [(x >= threshold) if rising else (x <= threshold) for x in last_reads]
    assert crossed == [False] * (applied - 1) + [True]
    # the physics: the device is where the last read says, and the bench saw exactly the writes
    # up to the stop (each write and each read a separate pulse), the last one the highest
    assert float(bench.conductances()[0, 0]) == pytest.approx(g[-1], rel=0.03)
    assert bench.exposure.pulses == applied * (1 + reads)
    assert bench.exposure.line_voltage == pytest.approx(abs(first + (applied - 1) * step), abs=1e-9)
    assert len(exs(bench)) == 1 and k.pulses_sent == sent + 1
    assert all(v is None for key, v in bench.source_outputs().items() if key[1] > 100)   # outputs off after


def test_a_ramp_that_never_crosses_plays_every_write(rig):
    bench, k, sw = rig
    sw.connect(PMU_ROUTE)
    with bench.lock:
        bench.exposure = Exposure()
    currents = k.run_sequence(101, 102, ramp(0.3, 0.01, 5), stop=Stop(1.0, True))   # 1 A: never
    assert len(currents) == 5 and bench.exposure.pulses == 10
    assert bench.exposure.line_voltage == pytest.approx(0.34, abs=1e-9)


def test_a_ramp_costs_two_round_trips_and_the_segment_arb_works_around_it(rig):
    bench, k, sw = rig
    sw.connect(PMU_ROUTE)
    never = Stop(1.0, True)
    trips = k.round_trips
    k.run_sequence(101, 102, ramp(0.3, 0.01, 3), stop=never)
    assert k.round_trips - trips == 3                  # UL, EX, GP
    trips = k.round_trips
    k.run_sequence(101, 102, ramp(0.3, 0.01, 3), stop=never)
    assert k.round_trips - trips == 2                  # still on the user library page: EX, GP
    g = float(bench.conductances()[0, 0])
    current = k.run_sequence(101, 102, [READ])[0]      # segment ARB again: :PMU:INIT 1 in its set-up
    assert -current / READ_V == pytest.approx(g, rel=0.03)
    assert log(bench)[-4].startswith(":PMU:INIT 1;")
    trips = k.round_trips
    k.run_sequence(101, 102, ramp(0.3, 0.01, 3), stop=never)
    assert k.round_trips - trips == 2                  # the PMU test did not change the page
    k.measure_current(2)                               # user mode (US) ...
    trips = k.round_trips
    k.run_sequence(101, 102, ramp(0.3, 0.01, 3), stop=never)
    assert k.round_trips - trips == 3                  # ... so UL again
    assert log(bench)[-3:] == ["UL;:ERROR:LAST:GET", exs(bench)[-1], "GP 15 3"]


@pytest.mark.parametrize("steps", [
    ramp(0.9, 0.05, 16),                               # the last write at 1.65 V > max_device_voltage
    ramp(0.5, 0.0, 4, sense=(-0.3, -0.3)),             # the last write 1.4 V on the sense: 2.6 V apart
    ramp(0.5, 0.1, 4, width=2e-3),                     # over max_pulse_width
    ramp(1.4, 0.01, 3, width=8e-4),                    # 1.42 V x 1 mA x 0.8 ms > 1 uJ
    ramp(0.2, 0.0, 200),                               # too long to check
])
def test_the_guard_refuses_the_whole_ramp_before_anything_is_sent(rig, steps):
    bench, k, sw = rig
    sw.connect(PMU_ROUTE)
    before = list(log(bench))
    with pytest.raises(LimitError):
        k.run_sequence(101, 102, steps, stop=Stop(1e-9, True))   # would stop at the first read
    with pytest.raises(LimitError):
        k.check_sequence(101, 102, steps, stop=Stop(1e-9, True))
    assert log(bench) == before


def test_the_same_ramp_is_refused_only_for_its_last_write():
    probe = K4200A._probe(LIMITS)
    probe.stops_early = True
    probe.check_sequence(101, 102, ramp(0.9, 0.05, 13), stop=Stop(1e-5, True))   # up to 1.50 V
    with pytest.raises(LimitError, match="1.55"):
        probe.check_sequence(101, 102, ramp(0.9, 0.05, 14), stop=Stop(1e-5, True))
    divided = K4200A._probe(LIMITS, {101: (2 / 3, 1 / 3)})      # through a V/3 divider: 2/3 reaches a line
    divided.stops_early = True
    divided.check_sequence(101, 102, ramp(1.5, 0.05, 11), stop=Stop(1e-5, True))  # 2.0 V on the channel
    with pytest.raises(LimitError):
        divided.check_sequence(101, 102, ramp(1.5, 0.05, 12), stop=Stop(1e-5, True))


@pytest.mark.parametrize("message", [
    "EX memlab_kult RampRead(1,2,0.5,0.1,0,0,1e-4,0.2,1e-6,1,12,1e-5,1,1e-3,,12)",   # the 12th write at 1.6 V
    "EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-4,0.2,1e-6,1,3,1e-5,2,1e-3,,3)",       # StopRising 2
    "EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-4,0.2,1e-6,1,3,1e-5,1,1e-1,,3)",       # IRange over compliance
    "EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-4,0.2,1e-6,1,3,1e-5,1,1e-3,5,3)",      # the output slot filled
    "EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-4,0.2,1e-6,1,3,1e-5,1,1e-3,)",         # 15 arguments
    "EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-4,0.2,1e-6,1,0,1e-5,1,1e-3,,3)",       # no write
    "EX memlab_kult RampRead(1,1,0.5,0,0,0,1e-4,0.2,1e-6,1,3,1e-5,1,1e-3,,3)",       # one channel
    "EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-4,0.2,1e-6,1,1000000000,1e-5,1,1e-3,,3)",   # too long to check
])
def test_the_guard_refuses_raw_ramp_calls_it_cannot_prove(rig, message):
    bench, k, _ = rig
    k.guard.check("EX memlab_kult RampRead(1,2,0.5,0.1,0,0,1e-4,0.2,1e-6,1,11,1e-5,1,1e-3,,11)")   # to 1.5 V: fine
    before = list(log(bench))
    with pytest.raises(LimitError):
        k.write(message)
    assert log(bench) == before


def test_a_lost_reply_to_ex_is_an_unknown_outcome_and_nothing_is_sent_again(rig):
    bench, k, sw = rig
    sw.connect(PMU_ROUTE)
    k.run_sequence(101, 102, ramp(0.3, 0.01, 2), stop=Stop(1.0, True))   # on the UL page already
    after_message(bench.servers["analyzer"], r"^EX ", lose_next_reply=True)
    k.set_timeout(0.3)
    before, sent = len(log(bench)), k.pulses_sent
    with bench.lock:
        bench.exposure = Exposure()
    with pytest.raises(PulseOutcomeUnknown):
        k.run_sequence(101, 102, ramp(0.9, 0.03, 8), stop=Stop(1.0, True))
    new = log(bench)[before:]
    assert [m for m in new if m.startswith("EX ")] == new[:1] and k.pulses_sent == sent + 1
    assert not any(m.startswith("GP") for m in new)
    assert bench.exposure.pulses == 16                 # it did run: the outcome was unknown, not absent
    k.set_timeout(2)
    g = float(bench.conductances()[0, 0])              # the caller re-reads the device, and decides
    assert -k.run_sequence(101, 102, [READ])[0] / READ_V == pytest.approx(g, rel=0.03)
    assert len(exs(bench)) == 2


def test_an_instrument_error_on_ex_is_an_unknown_outcome_and_is_not_repeated(rig):
    bench, k, sw = rig
    k.send("UL")
    bench.servers["analyzer"].core.inject_error()      # the next command that changes something: EX
    sent = k.pulses_sent
    with pytest.raises(PulseOutcomeUnknown, match="-998"):
        k.run_sequence(101, 102, ramp(0.3, 0.01, 2), stop=Stop(1.0, True))
    assert len(exs(bench)) == 1 and k.pulses_sent == sent + 1


@pytest.mark.parametrize("steps", [
    [READ, PulseStep(0.5, 0, 1e-4), READ],                                   # a read first
    [PulseStep(0.5, 0, 1e-4), READ, READ, PulseStep(0.6, 0, 1e-4), READ],     # reads per write vary
    [PulseStep(0.5, 0, 1e-4), READ, PulseStep(0.6, 0, 2e-4), READ],           # write widths vary
    [PulseStep(0.5, 0, 1e-4), READ, PulseStep(0.6, 0, 1e-4), READ, PulseStep(0.8, 0, 1e-4), READ],   # not linear
    [PulseStep(0.5, 0, 1e-4), READ, PulseStep(0.6, 0, 1e-4), PulseStep(0.2, 0, 2e-6, measure=True)],  # reads differ
    [PulseStep(0.5, 0, 1e-4), PulseStep(0.2, 0.1, 1e-6, measure=True)],       # a read with the sense off 0 V
    [PulseStep(0.5, 0, 1e-4)],                                                # no read
    [READ, READ],                                                             # no write
])
def test_sequences_ramp_read_cannot_play_are_value_errors_and_send_nothing(rig, steps):
    bench, k, _ = rig
    before = list(log(bench))
    with pytest.raises(ValueError):
        k.run_sequence(101, 102, steps, stop=Stop(1e-5, True))
    with pytest.raises(ValueError):
        k.check_sequence(101, 102, steps, stop=Stop(1e-5, True))
    assert log(bench) == before


def test_write_levels_within_a_nanovolt_of_a_ramp_are_a_ramp(rig):
    _, k, _ = rig
    steps = ramp(0.5, 0.01, 4)
    steps[2] = PulseStep(steps[2].drive + 5e-10, 0.0, 1e-4)
    plan = k.ramp_plan(steps)
    assert plan["start"] == (0.5, 0.0) and plan["step"][0] == pytest.approx(0.01) and plan["writes"] == 4
    steps[2] = PulseStep(steps[2].drive + 2e-9, 0.0, 1e-4)
    with pytest.raises(ValueError):
        k.ramp_plan(steps)


def test_without_the_kult_option_a_stop_is_a_value_error_and_nothing_is_sent():
    with SimulatedBench(bench_spec()) as bench:
        k, sw = open_rig(bench, kult=False)
        try:
            assert not k.stops_early
            before = list(log(bench))
            with pytest.raises(ValueError, match="kult"):
                k.run_sequence(101, 102, ramp(0.3, 0.01, 2), stop=Stop(1e-5, True))
            assert log(bench) == before
        finally:
            k.safe_state()
            sw.safe_state()
            k.close()
            sw.close()
    with pytest.raises(ValueError):
        K4200A("TCPIP::127.0.0.1::1::SOCKET", limits=LIMITS, kult="yes")


# --- the emulated module, raw over the socket ---------------------------------------------------------

@pytest.fixture
def wire_rig(request):
    with SimulatedBench(bench_spec(**getattr(request, "param", {}))) as bench:
        wire = Wire(bench.servers["analyzer"])
        switch = Wire(bench.servers["switch"], end=b"\n")
        yield bench, wire, switch
        wire.close()
        switch.close()


def ramp_ex(start="0.3", step="0.01", writes="4", stop="1", rising="1", size="4", reads="1", irange="1e-3",
            blank="") -> str:
    return (f"EX memlab_kult RampRead(1,2,{start},{step},0,0,1e-4,0.2,1e-6,{reads},{writes},{stop},{rising},"
            f"{irange},{blank},{size})")


def values(reply: str) -> list[float]:
    assert reply.startswith("PARAM VALUE = "), reply
    return [float(v) for v in reply.removeprefix("PARAM VALUE = ").split(";")]


def test_the_emulated_ramp_returns_the_writes_applied_and_zeroes_the_rest(wire_rig):
    bench, wire, switch = wire_rig
    route(switch, *PMU_ROUTE)
    g = float(bench.conductances()[0, 0])
    assert wire.text("US;DV3,0,0,1e-3;DV4,0,0,1e-3") == "ACK"
    assert wire.text(ramp_ex()) == "Command not valid in this mode. (-995)"    # not on the UL page
    assert wire.text("UL") == "ACK"
    assert wire.text(ramp_ex(size="6")) == "RETURN VALUE = 4"                  # 1 A: never stops
    currents = values(wire.text("GP 15"))                                     # the whole array
    assert currents[:4] == [pytest.approx(-0.2 * g, rel=0.05)] * 4 and currents[4:] == [0.0, 0.0]
    assert values(wire.text("GP 15 2")) == currents[:2]
    assert wire.text("GP 15 7") == "Data not available. (-997)"
    assert bench.exposure.pulses == 8
    assert wire.text(ramp_ex(stop="0")) == "RETURN VALUE = 1"                  # |I| >= 0 at once
    assert wire.text(ramp_ex(stop="1", rising="0")) == "RETURN VALUE = 1"      # |I| <= 1 A at once
    assert bench.exposure.pulses == 12


@pytest.mark.parametrize("call, code", [
    (ramp_ex(rising="2"), -1), (ramp_ex(writes="0", size="1"), -1), (ramp_ex(blank="5"), -1),
    (ramp_ex(start="5", step="1", writes="7", size="7"), -1),      # the 7th write at 11 V
    (ramp_ex(irange="5e-3"), -1), (ramp_ex(stop="-1"), -1), (ramp_ex(size="3"), -2),
    (ramp_ex(writes="300", size="300"), -3),
])
def test_the_emulated_ramp_refuses_bad_arguments_before_it_drives_anything(wire_rig, call, code):
    bench, wire, _ = wire_rig
    assert wire.text("UL") == "ACK"
    assert wire.text(call) == f"RETURN VALUE = {code}"
    assert bench.exposure.pulses == 0
    assert wire.text(ramp_ex(start="5", step="1", writes="6", size="6")) == "RETURN VALUE = 6"   # 10 V is the top


@pytest.mark.parametrize("wire_rig", [{"kult": False}], indirect=True)
def test_a_4200a_without_the_library_answers_ex_with_the_command_error(wire_rig):
    _, wire, _ = wire_rig
    assert wire.text("UL") == "ACK"
    assert wire.text(ramp_ex()) == "KXCI command error. (-992)"


# --- the shipped bench file ------------------------------------------------------------------------

def test_the_shipped_4200a_bench_tunes_through_ramp_read_and_ends_safe():
    from memlab.bench import emulate, open_crossbar
    from memlab.config import load_bench

    config = load_bench("sim-4200-707b")
    bench, live = emulate(config)
    try:
        with open_crossbar(live) as xbar:
            assert xbar.pulser.stops_early and xbar.stops_early
            g0 = xbar.read(2, 3).conductance
            result = xbar.tune(2, 3, 1.4 * g0, config.tune_params())
            truth = float(bench.conductances()[2, 3])
        assert result.tuned and truth == pytest.approx(1.4 * g0, rel=0.03)
        ramps = [m for m in log_of(bench) if m.startswith("EX ")]
        assert ramps and all(m.startswith("EX memlab_kult RampRead(") for m in ramps)
        assert len(ramps) < result.pulses                  # several writes per round trip
        assert_safe(bench)
    finally:
        bench.stop()


def log_of(bench) -> list[str]:
    return [part.strip() for m in bench.servers["analyzer"].received() for part in m.split(";")]

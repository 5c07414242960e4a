"""Property (the B1500A's sweeps, sampling and SPGU): whatever a caller sends through the
B1500A driver's raw path (`write`, `send`, `query`) or its methods (`staircase_sweep`,
`spgu_pulses`, levels, the safe state), with any bench limits and in any order, the
simulated hardware is never exposed beyond the limits, no message the guard refused
reaches the emulated analyzer, and its log passes the checker of test_guard_property.py
(written from the FLEX commands, independently of the driver's grammar).

The bench: a 2x2 crossbar; SMUs 1-3 on switch inputs 1-3, the B1525A's channels 501 and
502 on inputs 4 and 5; a random action may route any input to any line (the switch's
guard refuses joins)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from drivers.b1500a import B1500A
from drivers.e5250a import E5250A
from drivers.errors import DriverError, InstrumentError, LimitError
from drivers.limits import Limits
from helpers import received, recording_writes
from simulator.bench import CableToSwitch, EmulatedInstrument, Exposure, SimBenchSpec, SimulatedBench
from test_guard_property import Message, Rel, check_analyzer_log, msg, resolve

EXAMPLES = int(os.environ.get("MEMLAB_GUARD_EXAMPLES", "15"))
# short: a refused command makes the B1500 skip the rest of its message, the error query
# included, and the driver waits out its timeout before asking the error queue alone
TIMEOUT_S = 0.1
EPS = 1e-9
SPGU_OUTPUT_OHM = 50.0
SPGU = (501, 502)
INPUTS = {1: 1, 2: 2, 3: 3, 501: 4, 502: 5}   # source channel -> switch input


def bench_spec() -> SimBenchSpec:
    return SimBenchSpec(
        rows=2, cols=2, seed=11, switch="switch", row_ports=[1, 2], col_ports=[3, 4],
        instruments=[EmulatedInstrument(name="analyzer", type="keysight_b1500a",
                                        options={"modules": {1: "B1517A", 2: "B1517A", 3: "B1517A",
                                                             5: "B1525A"}}),
                     EmulatedInstrument(name="switch", type="keysight_e5250a", options={"cards": 1})],
        cables=[CableToSwitch(instrument="analyzer", channel=ch, input=inp) for ch, inp in INPUTS.items()])


@pytest.fixture(scope="module")
def emulated():
    with SimulatedBench(bench_spec()) as bench:
        yield bench


# --- strategies -------------------------------------------------------------------------------

# pulse widths from what an SPGU does (a microsecond) to what an SMU does (a millisecond)
limits_st = st.builds(
    Limits,
    max_line_voltage=st.floats(0.3, 3.0),
    max_device_voltage=st.floats(0.3, 3.0),
    compliance_current=st.floats(1e-4, 0.02),
    max_pulse_width=st.floats(1e-6, 1e-3),
    max_pulse_energy=st.floats(1e-10, 1e-5),
)

@dataclass(frozen=True)
class Level(Rel):
    """Rel, and S: the SPGU pulse top at which a pulse of max_pulse_width into a short through
    the 50 ohm output has `factor` x max_pulse_energy."""

    def value(self, limits: Limits) -> float:
        if self.kind == "S":
            return self.factor * math.sqrt(SPGU_OUTPUT_OHM * limits.max_pulse_energy / limits.max_pulse_width)
        return super().value(limits)


edge = st.sampled_from([1.0, -1.0, 0.999, 1.001, 1.05, -1.05, 0.5, 1 / 3, 0.0, 1.5, -2.0])
factor = st.one_of(edge, st.floats(-1.3, 1.3))
positive = st.one_of(st.sampled_from([1.0, 0.999, 1.001, 1.05, 0.5, 0.1, 2.0]), st.floats(0.01, 1.3))
# most levels inside the limits, so that whole set-ups get through and the edges are probed
# where it counts, at the trigger
inside = st.builds(Level, st.sampled_from(["V", "L", "S"]), st.floats(-0.99, 0.99))
rel_volts = st.one_of(inside, st.builds(Level, st.sampled_from(["V", "V", "L", "P", "S"]), factor))
rel_amps = st.builds(Rel, st.just("I"), positive)
rel_width = st.builds(Rel, st.just("W"), positive)
amps = st.one_of(rel_amps, st.sampled_from(["0", "-1e-3", "0.5", "abc"]))
bad = st.sampled_from(["nan", "inf", "abc", "1e400", "", "--1"])
smu = st.one_of(st.sampled_from(["1", "2", "3", "1", "2"]), st.sampled_from(["0", "4", "11", "501", "a"]))
spch = st.sampled_from(["501", "502", "501", "101", "503", "5"])
spgu_or_smu = st.one_of(smu, spch)
sweep_mode = st.sampled_from(["1", "2", "3", "4", "1", "5"])
steps = st.sampled_from(["1", "2", "3", "5", "11", "0", "10002"])
hold = st.sampled_from(["0", "0", "1e-3", "0.05", "-1"])
# SPGU periods and run lengths kept to tens of periods: the emulator plays every one
period = st.one_of(st.builds(Rel, st.just("W"), st.sampled_from([1.2, 2.0, 5.0])),
                   st.sampled_from(["1e-5", "1e-4", "1e-3", "1e-8"]))
run = st.sampled_from(["1,1", "1,3", "1,20", "2,1e-4", "0", "1,0"])
spgu_edge = st.sampled_from(["2e-8", "1e-8", "2e-8", "0"])
load = st.sampled_from(["50", "1e6", "1e6", "1e3", "0"])

command = st.one_of(
    msg("DV ", smu, ",0,", st.one_of(rel_volts, bad), ",", amps),
    msg(st.sampled_from(["CN ", "CL ", "CN ", "DZ "]), spgu_or_smu),
    # staircase sweep
    msg("WV ", smu, ",", sweep_mode, ",0,", rel_volts, ",", rel_volts, ",", steps, ",", amps),
    msg("WV ", smu, ",", sweep_mode, ",0,", rel_volts, ",", st.one_of(rel_volts, bad), ",", steps),
    msg("WV ", smu, ",1,0,", rel_volts, ",", rel_volts, ",", steps, ",", rel_amps, ",", st.sampled_from(["0.01", "5"])),
    msg("WSV ", smu, ",0,", rel_volts, ",", rel_volts, ",", amps),
    msg("WT ", hold, ",", hold, st.sampled_from(["", ",0", ",1e-3,0,0"])),
    msg("WM ", st.sampled_from(["1", "2", "3"]), ",", st.sampled_from(["1", "2"])),
    msg("MM ", st.sampled_from(["2", "10", "1", "3", "4", "16"]), ",", smu),
    # sampling
    msg("MT ", hold, ",", st.sampled_from(["1e-3", "2e-3", "0"]), ",", st.sampled_from(["1", "3", "0"]), ",", hold),
    msg("MV ", smu, ",0,", rel_volts, ",", rel_volts, ",", amps),
    msg("MSC ", st.sampled_from(["1", "2", "3"]), st.sampled_from(["", ",1", ",2"])),
    # SPGU
    msg("SPPER ", period),
    msg("SPRM ", run),
    msg("SER ", spch, ",", load),
    msg("SPM ", spch, ",", st.sampled_from(["0", "1", "2", "3", "1"])),
    msg("SPT ", spch, ",", st.sampled_from(["1", "2"]), ",", st.sampled_from(["0", "1e-7"]), ",",
        st.one_of(rel_width, st.sampled_from(["1e-6", "1e-3"])), ",", spgu_edge, ",", spgu_edge),
    msg("SPV ", spch, ",", st.sampled_from(["0", "1", "2"]), ",", rel_volts, ",", rel_volts),
    msg("SPUPD ", spch),
    msg("ODSW ", spch, ",", st.sampled_from(["0", "1"])),
    st.sampled_from(["XE", "XE", "SRP", "SRP", "SPP", "SPUPD", "SIM 0", "SIM 1", "ML 1", "ML 2", "*RST", "CL",
                     "SPST?", "SPV? 501,1", "SPT? 501,1", "SPRM?", "*LRN? 33", "*LRN? 47", "*OPC?", "ERRX?",
                     "FMT 1,1", "FMT 21,1", "FMT 1,0", "WI 1,1,0,0,1e-3,5,1", "SPRM 0", "XYZ"]),
)


def joined(n: int) -> st.SearchStrategy:
    return st.lists(command, min_size=1, max_size=n).map(
        lambda cs: Message(tuple(p for k, c in enumerate(cs)
                                 for p in ((";",) if k else ()) + (c.parts if isinstance(c, Message) else (c,)))))


def _sweep_setup(ch, mode, start, stop, n, icomp, abort, post, other):
    return Message((f"CN {ch};WT 0,1e-3;WM {abort},{post};WV {ch},{mode},0,", start, ",", stop, f",{n},", icomp,
                    f";WSV {other},0,", start, ",", stop, ",", icomp, f";MM 2,{ch};XE"))


def _spgu_setup(ch, mode, width, edge_, per, count, ld, base, peak):
    return Message((f"CN {ch};SIM 0;SPPER ", per, f";SPRM 1,{count};SER {ch},{ld};SPM {ch},{mode};SPT {ch},1,0,",
                    width, f",{edge_},{edge_};SPT {ch},2,0,", width, f",{edge_};SPV {ch},1,", base, ",", peak,
                    f";SPV {ch},2,", base, ",", peak, f";SPUPD {ch};SRP"))


def _sampling_setup(ch, base, bias, icomp, points, post, other):
    return Message((f"CN {ch},{other};MT 1e-3,2e-3,{points},1e-3;MV {ch},0,", base, ",", bias, ",", icomp,
                    f";MV {other},0,", base, ",", base, ",", icomp, f";MSC 1,{post};MM 10,{ch};XE"))


# whole set-ups with their triggers: the messages likeliest to put energy into a device
sweep_setup = st.builds(_sweep_setup, st.sampled_from([1, 2, 3]), sweep_mode, rel_volts, rel_volts,
                        st.sampled_from([1, 3, 6]), rel_amps, st.sampled_from([1, 2]), st.sampled_from([1, 2]),
                        st.sampled_from([1, 2, 3]))
spgu_setup = st.builds(_spgu_setup, st.sampled_from(SPGU), st.sampled_from([1, 2, 3]), rel_width, spgu_edge,
                       period, st.sampled_from([1, 2, 10]), load, st.one_of(st.just("0"), rel_volts), rel_volts)
sampling_setup = st.builds(_sampling_setup, st.sampled_from([1, 2, 3]), rel_volts, rel_volts, rel_amps,
                           st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.sampled_from([1, 2, 3]))
TERMINATORS = st.sampled_from(["\n", "\r", "\r\n", "\x00"])
raw = st.one_of(joined(4), joined(2), sweep_setup, spgu_setup, sweep_setup, spgu_setup, sampling_setup, st.builds(
    lambda m, t, tail: Message(m.parts + (t, tail)), st.one_of(joined(3), spgu_setup), TERMINATORS,
    st.sampled_from(["WV 1,1,0,0,20,3,0.01;MM 2,1;XE", "SPV 501,1,0,30;SRP", "MV 1,0,0,20,0.01;MM 10,1;XE"])))

volts = st.one_of(inside, rel_volts, st.sampled_from([0.0, 0.2, 20.0]))
action = st.one_of(
    st.tuples(st.sampled_from(["write", "send", "query"]), raw),
    st.tuples(st.just("staircase_sweep"), st.sampled_from([1, 2, 3, 1, 5, 501]), volts, volts,
              st.sampled_from([1, 2, 4, 0, 10002]), st.one_of(st.none(), rel_amps),
              st.sampled_from([1, 2, 3, 4, 1, 7]), st.booleans()),
    st.tuples(st.just("spgu_pulses"), st.sampled_from([501, 502, 501, 1, 601]),
              st.one_of(st.just(0.0), rel_volts), volts, st.one_of(rel_width, st.sampled_from([1e-6, 2e-3])),
              period, st.sampled_from([1, 3, 10, 0]), st.sampled_from([2e-8, 1e-8]), st.sampled_from([1e6, 50.0])),
    st.tuples(st.just("set_voltages"), st.dictionaries(st.sampled_from([1, 2, 3]), volts, max_size=3)),
    st.tuples(st.just("enable"), st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3)),
    st.tuples(st.sampled_from(["safe_state", "check_errors", "route"])),
    st.tuples(st.sampled_from(["connect", "disconnect"]),
              st.lists(st.tuples(st.sampled_from(list(INPUTS.values())), st.integers(1, 4)), max_size=4)),
)
# every source on a line of its own: SMU 1 and SPGU 501 on the rows, SMU 2 and SMU 3 on the columns
ROUTE = [(1, 1), (4, 2), (2, 3), (3, 4)]


def _spgu_pulses(b: B1500A, ch, base, peak, width, per, count, edge_, ld):
    b.spgu_pulses(ch, base, peak, width, per, count, edge=edge_, load=ld)


def run_action(b: B1500A, sw: E5250A, act, limits: Limits) -> None:
    kind, *args = resolve(act, limits)
    args = [float(a) if kind == "spgu_pulses" and isinstance(a, str) else a for a in args]
    calls = {"write": b.write, "send": b.send, "query": b.query,
             "staircase_sweep": lambda ch, v0, v1, n, ic, mode, abort: b.staircase_sweep(
                 ch, v0, v1, n, ic, mode=mode, delay=1e-3, abort=abort),
             "spgu_pulses": lambda *a: _spgu_pulses(b, *a),
             "set_voltages": b.set_voltages, "enable": b.enable,
             "safe_state": b.safe_state, "check_errors": b.check_errors, "route": lambda: sw.connect(ROUTE),
             "connect": sw.connect, "disconnect": sw.disconnect}
    try:
        calls[kind](*args)
        event(f"{kind} went through")
    except (DriverError, ValueError, IndexError) as exc:
        event(f"{kind} refused: {type(exc).__name__}")


class SmuCompliance:
    """The largest compliance of an energized SMU output (slots 1-10), from what the analyzer
    core applies to the bench. The SPGU has no compliance: its currents are bounded through
    its 50 ohm output, as pulse energy (the exposure) and as line levels."""

    def __init__(self, bench: SimulatedBench):
        self.worst = 0.0
        self._set_outputs = bench._set_outputs
        bench._set_outputs = self

    def __call__(self, instrument, outputs):
        for ch, out in outputs.items():
            if ch <= 10 and out is not None and out[0] != 0:
                self.worst = max(self.worst, abs(out[1]))
        self._set_outputs(instrument, outputs)


# --- the property -----------------------------------------------------------------------------------

def check_exposure(e: Exposure, limits: Limits) -> None:
    assert e.line_voltage <= limits.max_line_voltage + EPS, (e, limits)
    assert e.device_voltage <= limits.max_device_voltage + EPS, (e, limits)
    assert e.pulse_width <= limits.max_pulse_width * (1 + 1e-9), (e, limits)
    assert e.pulse_energy <= limits.max_pulse_energy * (1 + 1e-9), (e, limits)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(limits=limits_st, actions=st.lists(action, max_size=10))
def test_nothing_outside_the_limits_reaches_the_b1500a(emulated, limits, actions):
    bench = emulated
    server = bench.servers["analyzer"]
    b = B1500A(bench.resources["analyzer"], name="analyzer", limits=limits, timeout_s=5)
    sw = E5250A(bench.resources["switch"], name="switch", timeout_s=5)
    refused, accepted = recording_writes(b)   # the methods' own messages pass there too
    smu = SmuCompliance(bench)
    try:
        b.initialize()
        sw.initialize()
        b.set_timeout(TIMEOUT_S)
        start = len(server.received())
        with bench.lock:
            bench.exposure = Exposure()
            bench.hazards.clear()
        smu.worst = 0.0
        for act in actions:
            run_action(b, sw, act, limits)
    finally:
        bench._set_outputs = smu._set_outputs
        b.set_timeout(5)
        for inst in (b, sw):
            try:
                inst.safe_state()
            except DriverError:
                pass
            inst.close()
    e = bench.exposure
    target(e.device_voltage / limits.max_device_voltage, label="device voltage / limit")
    target(e.pulse_energy / limits.max_pulse_energy, label="pulse energy / limit")
    event(f"pulses applied: {min(e.pulses, 3)}{'+' if e.pulses >= 3 else ''}")
    check_exposure(e, limits)
    assert smu.worst <= limits.compliance_current + EPS, (smu.worst, limits)
    assert bench.hazards == []
    with bench.lock:   # a connection's thread may still be logging
        log = server.received()[start:]
        outputs = bench.source_outputs()
    assert not (set(log) & refused) - accepted, "a refused message reached the instrument"
    check_analyzer_log([c.strip() for m in log for c in m.split(";") if c.strip()], limits)
    assert all(v is None for v in outputs.values()), outputs


@pytest.fixture
def analyzer(emulated):
    limits = Limits(max_line_voltage=2.5, max_device_voltage=2.5, compliance_current=0.01,
                    max_pulse_width=1e-3, max_pulse_energy=1e-4)
    b = B1500A(emulated.resources["analyzer"], name="analyzer", limits=limits, timeout_s=5)
    b.initialize()
    yield b
    b.safe_state()
    b.close()


def test_an_spgu_set_up_the_instrument_did_not_confirm_is_not_taken_for_the_reset(emulated, analyzer):
    """Found by the property: a set-up message whose last command the SPGU refuses (an edge
    below its 8 ns minimum) leaves channel 502 set for 5 ms pulses. The guard must not read
    the unconfirmed channel as the reset's DC 0 V when another channel's run starts."""
    b = analyzer
    with pytest.raises(InstrumentError):
        b.send("CN 502", "SER 502,1E6", "SPM 502,1", "SPV 502,1,0,1", "SPT 502,1,0,5E-3,2E-8", "SPT 502,2,0,1E-6,0")
    assert emulated.cores["analyzer"].spgu[502].timing[1][1] == 5e-3     # it did take the wide pulse
    before = len(emulated.servers["analyzer"].received())
    with pytest.raises(LimitError, match="SPGU channel 502"):
        b.spgu_pulses(501, 0.0, 1.0, 1e-6, 1e-2, 1)
    assert "SRP" not in emulated.servers["analyzer"].received()[before:]
    b.send("SPM 502,0", "SER 502,1E6", "SPV 502,0,0")   # set again, and confirmed: the run may start
    b.spgu_pulses(501, 0.0, 1.0, 1e-6, 1e-2, 1)
    assert b.pulses_sent == 1


def test_a_reply_left_unread_on_the_raw_path_does_not_put_the_driver_out_of_step(emulated, analyzer):
    """Found by the property: a sampling run written with `write` and never read. The next
    query must not take its data for its own answer (it would then take the answer to its
    error query for the next message's, and confirm messages not yet carried out)."""
    b = analyzer
    b.write("CN 1;MT 0,2E-3,1,0;MV 1,0,0,0.2,1E-3;MM 10,1;XE")
    b.set_voltages({})                    # an error query alone: it reads its own answer
    b.send("CL")
    with emulated.lock:
        assert all(v is None for v in emulated.source_outputs().values())


def test_the_property_is_not_vacuous(emulated):
    """Past the guard, the same checks see a breach: a sweep above the line limit and an
    SPGU pulse beyond the width and energy limits, straight to the socket."""
    bench = emulated
    limits = Limits(max_line_voltage=1.0, max_device_voltage=1.0, compliance_current=1e-3,
                    max_pulse_width=1e-6, max_pulse_energy=1e-9)
    b = B1500A(bench.resources["analyzer"], name="analyzer", limits=limits, timeout_s=5)
    sw = E5250A(bench.resources["switch"], name="switch", timeout_s=5)
    try:
        b.initialize()
        sw.initialize()
        sw.connect(ROUTE)
        start = len(received(bench, "analyzer"))
        with bench.lock:
            bench.exposure = Exposure()
        sweep = "CN 1;WV 1,1,0,0,2,3,1E-3;MM 2,1;XE"
        with pytest.raises(LimitError):
            b.write(sweep)
        b._res.write(sweep)                       # past the guard
        assert len(b._res.read().split(",")) == 3
        assert bench.exposure.line_voltage == pytest.approx(2.0)
        with pytest.raises(AssertionError):
            check_exposure(bench.exposure, limits)
        spgu_start = len(received(bench, "analyzer"))
        b._res.write("DV 1,0,0;CN 501;SIM 0;SPPER 1E-4;SPRM 1,2;SER 501,1E6;SPM 501,1;"
                     "SPT 501,1,0,5E-6,2E-8,2E-8;SPV 501,1,0,0.9;SPUPD 501;SRP;ERRX?")
        assert b._res.read() == '+0,"No Error."'
        e = bench.exposure
        assert e.pulses == 2 and e.pulse_width > limits.max_pulse_width and e.pulse_energy > limits.max_pulse_energy
        with pytest.raises(AssertionError):
            check_analyzer_log(received(bench, "analyzer")[start:], limits)
        with pytest.raises(AssertionError):    # the SPGU run alone
            check_analyzer_log(received(bench, "analyzer")[spgu_start:], limits)
    finally:
        b.safe_state()
        sw.safe_state()
        b.close()
        sw.close()

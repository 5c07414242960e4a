"""Property (steps 1 and 2 of the 4200A): whatever a caller sends through the K4200A driver's
raw path (`write`, `send`, `query`: KXCI user mode, system mode's pages and sweeps, the PMU's
segment ARB and memlab's KULT modules PulseRead and RampRead by `EX`) or its public methods (SMU
levels and reads, system-mode sweeps, PMU pulses, pulse-and-read sequences, those that end early
through RampRead, and the KULT modules, the safe state),
with any bench limits and in any order, the
simulated hardware is never exposed beyond the limits, and no message the guard refused
reaches the emulated instrument. Modelled on test_guard_property.py; the log checker here is
written from the KXCI commands, independently of the driver's grammar."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from drivers.e5250a import E5250A
from drivers.errors import DriverError
from drivers.interfaces import PulseStep, Stop
from drivers.k4200a import K4200A
from drivers.limits import Limits
from helpers import one_torch_thread, recording_writes  # noqa: F401  (one_torch_thread: a fixture)
from simulator.bench import Exposure, SimulatedBench
from test_k4200a_emulator import bench_spec

EXAMPLES = int(os.environ.get("MEMLAB_GUARD_EXAMPLES", "30"))
TIMEOUT_S = 0.3
EPS = 1e-9


@pytest.fixture(scope="module")
def emulated():
    with SimulatedBench(bench_spec()) as bench:
        yield bench


limits_st = st.builds(
    Limits,
    max_line_voltage=st.floats(0.3, 3.0),
    max_device_voltage=st.floats(0.3, 3.0),
    compliance_current=st.floats(1e-4, 0.02),
    max_pulse_width=st.floats(2e-6, 0.02),
    max_pulse_energy=st.floats(1e-10, 1e-4),
)


@dataclass(frozen=True)
class Rel:
    """A number relative to the example's limits: V device, L line, I compliance, W width,
    P the peak at which a pulse at the compliance and width limits has `factor` x the energy."""

    kind: str
    factor: float

    def value(self, limits: Limits) -> float:
        scale = {"V": limits.max_device_voltage, "L": limits.max_line_voltage, "I": limits.compliance_current,
                 "W": limits.max_pulse_width,
                 "P": limits.max_pulse_energy / (limits.compliance_current * limits.max_pulse_width)}
        return self.factor * scale[self.kind]


@dataclass(frozen=True)
class Message:
    parts: tuple


def resolve(x, limits: Limits):
    if isinstance(x, Rel):
        return x.value(limits)
    if isinstance(x, Message):
        return "".join(f"{resolve(p, limits):.6g}" if isinstance(p, Rel) else resolve(p, limits) for p in x.parts)
    if isinstance(x, PulseStep):
        return PulseStep(resolve(x.drive, limits), resolve(x.sense, limits), resolve(x.width, limits), x.measure)
    if isinstance(x, (list, tuple)):
        return type(x)(resolve(v, limits) for v in x)
    if isinstance(x, dict):
        return {k: resolve(v, limits) for k, v in x.items()}
    return x


edge = st.sampled_from([1.0, -1.0, 0.999, 1.001, 1.05, -1.05, 0.5, 0.0, 1.5, -2.0])
factor = st.one_of(edge, st.floats(-1.3, 1.3))
positive = st.one_of(st.sampled_from([1.0, 0.999, 1.001, 1.05, 0.5, 0.1, 0.01, 2.0]), st.floats(0.001, 1.3))
rel_volts = st.builds(Rel, st.sampled_from(["V", "V", "L", "P"]), factor)
rel_amps = st.builds(Rel, st.just("I"), positive)
rel_width = st.builds(Rel, st.just("W"), positive)
grid_width = st.sampled_from(["2e-8", "1e-6", "1e-5", "0.001", "0.02"])
bad = st.sampled_from(["nan", "inf", "abc", "1e400", "", "--1", "0x10"])
smu = st.one_of(st.integers(1, 4).map(str), st.sampled_from(["0", "5", "9", "a", ""]))
pch = st.sampled_from(["1", "2", "1", "2", "3", "0"])


def msg(*parts) -> st.SearchStrategy:
    return st.tuples(*(p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts)).map(Message)


def values(element, n=(1, 4)) -> st.SearchStrategy:
    return st.lists(element, min_size=n[0], max_size=n[1]).map(
        lambda vs: Message(tuple(p for k, v in enumerate(vs) for p in (((",",) if k else ()) + (v,)))))


command = st.one_of(
    msg("DV", smu, ",0,", st.one_of(rel_volts, bad), ",", st.one_of(rel_amps, bad)),
    msg("DV", smu),
    msg(":PMU:SARB:SEQ:", st.sampled_from(["TIME", "TIME"]), " ", pch, ",1,",
        values(st.one_of(rel_width, grid_width))),
    msg(":PMU:SARB:SEQ:", st.sampled_from(["STARTV", "STOPV"]), " ", pch, ",1,", values(rel_volts)),
    msg(":PMU:MEASURE:RANGE ", pch, ",", st.sampled_from(["0", "1", "2"]), ",",
        st.one_of(rel_amps, st.sampled_from(["1e-4", "1e-3", "0.01", "0.2"]))),
    msg(":PMU:PULSE:TRAIN ", pch, ",", st.one_of(st.just("0"), rel_volts), ",", rel_volts),
    msg(":PMU:PULSE:TIMES ", pch, ",", rel_width, ",", rel_width, ",1e-7,1e-7"),
    msg(":PMU:OUTPUT:STATE ", pch, ",", st.sampled_from(["0", "1", "1"])),
    msg(":PMU:SARB:WFM:SEQ:LIST ", pch, ",1,", st.sampled_from(["1", "2", "1000"])),
    st.sampled_from([":PMU:EXECUTE", ":PMU:EXECUTE", ":PMU:INIT 1", ":PMU:INIT 0", ":PMU:ABORT", "*RST", "US", "DE",
                     ":PMU:PULSE:BURST:COUNT 3", ":PMU:LOAD 1,50", ":PMU:LOAD 1,1e6", ":PMU:RPM:CONFIGURE PMU1-1,2",
                     ":PMU:RPM:CONFIGURE PMU1-2,0", "DI1,0,1e-3,5", "RI1,1e-3,0.5", "TI1", "TV2", "SP", "*OPT?",
                     ":ERROR:LAST:GET", ":ERROR:LAST:CLEAR", "XYZ 1", ":PMU:DATA:GET 2", "BC"]),
)

# system mode: the pages' commands one by one, any of them on any page
sys_name = st.sampled_from(["'V1'", "'I1'", "'V2'", "'I2'", "'TOOLONGX'", "V3", "'A'"])
rel_step = st.one_of(st.builds(Rel, st.just("V"), st.floats(-1.0, 1.0)), st.sampled_from(["0.1", "0.0005", "0"]))
system_command = st.one_of(
    msg("CH", smu, ",", sys_name, ",", sys_name, ",", st.sampled_from(["1", "2", "3"]), ",",
        st.sampled_from(["1", "2", "3", "4"])),
    msg("CH", smu),
    msg("VR", st.sampled_from(["1", "1", "2"]), ",", rel_volts, ",", rel_volts, ",", rel_step, ",",
        st.one_of(rel_amps, bad)),
    msg("VP ", rel_volts, ",", rel_step, ",", st.sampled_from(["1", "3", "40"]), ",", rel_amps),
    msg("VC", smu, ",", st.one_of(rel_volts, bad), ",", st.one_of(rel_amps, bad)),
    msg("ME", st.sampled_from(["1", "1", "2", "3", "4"])),
    st.sampled_from(["DE", "SS", "SM", "MD", "SM DM2", "DM1", "LI 'V1','I1'", "HT 0.01", "DT 0.001", "IT1",
                     "IT4,1,1,0.01", "WT 0.1", "IN 0.01", "NR 3", "RD 'I1',1", "DO 'V1'", "RT 1,2", "FS 0.5,2",
                     "IR1,0,1e-6,1e-7,1", "IC2,1e-6,1", "VS1", "XN 'V1',1,0,1"]),
)
command = st.one_of(command, system_command)


def joined(n: int) -> st.SearchStrategy:
    return st.lists(command, min_size=1, max_size=n).map(
        lambda cs: Message(tuple(p for k, c in enumerate(cs)
                                 for p in ((";",) if k else ()) + (c.parts if isinstance(c, Message) else (c,)))))


# a whole segment-ARB test on both channels, the likeliest message to put energy into a device
arb = msg(":PMU:MEASURE:RANGE 1,2,", st.sampled_from(["1e-4", "1e-3", "0.01"]), ";:PMU:MEASURE:RANGE 2,2,1e-4",
          ";:PMU:SARB:SEQ:TIME 1,1,2e-8,", st.one_of(rel_width, grid_width), ",2e-8",
          ";:PMU:SARB:SEQ:STARTV 1,1,0,", rel_volts, ",", rel_volts,
          ";:PMU:SARB:SEQ:STOPV 1,1,", rel_volts, ",", rel_volts, ",0",
          ";:PMU:SARB:SEQ:TIME 2,1,2e-8,", st.one_of(rel_width, grid_width), ",2e-8",
          ";:PMU:SARB:SEQ:STARTV 2,1,0,", rel_volts, ",", rel_volts,
          ";:PMU:SARB:SEQ:STOPV 2,1,", rel_volts, ",", rel_volts, ",0",
          ";:PMU:SARB:WFM:SEQ:LIST 1,1,1;:PMU:SARB:WFM:SEQ:LIST 2,1,", st.sampled_from(["1", "3"]),
          ";:PMU:OUTPUT:STATE 1,1;:PMU:OUTPUT:STATE 2,", st.sampled_from(["0", "1"]), ";:PMU:EXECUTE")
# memlab's KULT module called by hand (drivers/kult/memlab_pulse_read.md): it plays its own test
kult = msg(st.sampled_from(["UL;", ""]), "EX memlab_kult PulseRead(", st.sampled_from(["1,2", "2,1", "1,1", "1,3"]),
           ",", rel_volts, ",", st.one_of(st.just("0"), rel_volts), ",", st.one_of(rel_width, grid_width), ",",
           rel_volts, ",", st.sampled_from(["1e-6", "2e-8", "1e-5"]), ",", st.sampled_from(["1", "2"]), ",",
           st.sampled_from(["0", "1", "3"]), ",", st.one_of(rel_amps, st.sampled_from(["1e-4", "1e-3", "0.01", "0.2"])),
           st.sampled_from([",,", ",5,"]), st.sampled_from(["8", "1"]), st.sampled_from([")", ""]),
           st.sampled_from(["", ";GP 11", ";US"]))
# RampRead by hand: a ramp whose later writes may pass the limits while its first ones do not
ramp_step = st.one_of(st.just("0"), st.builds(Rel, st.sampled_from(["V", "L"]), st.floats(-0.4, 0.4)))
ramp_kult = msg(st.sampled_from(["UL;", "UL;", ""]), "EX memlab_kult RampRead(", st.sampled_from(["1,2", "2,1", "1,1", "1,3"]),
                ",", rel_volts, ",", ramp_step, ",", st.one_of(st.just("0"), rel_volts), ",", ramp_step, ",",
                st.one_of(rel_width, grid_width), ",", rel_volts, ",", st.sampled_from(["1e-6", "2e-8", "1e-5"]), ",",
                st.sampled_from(["1", "2"]), ",", st.sampled_from(["1", "3", "8", "0"]), ",",
                st.sampled_from(["0", "1e-6", "1e-5", "1", "-1", "inf"]), ",", st.sampled_from(["1", "0", "2"]), ",",
                st.one_of(rel_amps, st.sampled_from(["1e-4", "1e-3", "0.01", "0.2"])),
                st.sampled_from([",,", ",5,"]), st.sampled_from(["16", "1"]), st.sampled_from([")", ""]),
                st.sampled_from(["", ";GP 15 1", ";US"]))
# a whole system-mode sweep, the likeliest raw message to hold a device at a level
near = st.builds(Rel, st.sampled_from(["V", "L"]), st.one_of(edge, st.floats(-1.05, 1.05)))
second = st.one_of(msg("CH2,'V2','I2',1,3;SS;VC2,", st.one_of(st.just("0"), near), ",", rel_amps),
                   msg("CH2,'V2','I2',3,3;SS"),
                   msg("CH2,'V2','I2',1,2;SS;VP ", near, ",", rel_step, ",2,", rel_amps))
sweep = msg("DE;CH1,'V1','I1',1,1;", second, ";VR1,", near, ",", near, ",", rel_step, ",", rel_amps,
            ";HT 0;DT 0.001;SM;DM2;MD;ME", st.sampled_from(["1", "1", "3", "2"]))
TERMINATORS = st.sampled_from(["\n", "\r", "\r\n", "\x00"])
raw = st.one_of(joined(4), joined(4), arb, kult, kult, ramp_kult, ramp_kult, sweep, sweep, st.builds(
    lambda m, t, tail: Message(m.parts + (t, tail)), joined(3), TERMINATORS,
    st.sampled_from(["DV1,0,20,0.1", ":PMU:LOAD 1,50", ":PMU:OUTPUT:STATE 1,1;:PMU:EXECUTE"])))

volts = st.one_of(rel_volts, st.sampled_from([0.0, 0.2, 20.0]))
step = st.builds(PulseStep, volts, st.one_of(st.just(0.0), rel_volts),
                 st.one_of(rel_width, st.sampled_from([1e-6, 1e-7, 5e-5])), st.booleans())
step = st.one_of(step, st.builds(PulseStep, st.builds(Rel, st.just("V"), st.floats(-0.5, 0.5)), st.just(0.0),
                                  st.sampled_from([1e-6, 2e-6]), st.just(True)))
levels = st.dictionaries(st.integers(1, 4), volts, max_size=4)
routes = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 8)), max_size=6)

action = st.one_of(
    st.tuples(st.sampled_from(["write", "send", "query"]), raw),
    st.tuples(st.just("set_voltages"), levels),
    st.tuples(st.just("measure_current"), st.integers(1, 4), levels),
    st.tuples(st.just("run_sequence"), st.sampled_from([(101, 102), (102, 101), (101, 101), (1, 102)]),
              st.lists(step, min_size=1, max_size=4)),
    st.tuples(st.just("check_sequence"), st.sampled_from([(101, 102)]), st.lists(step, min_size=1, max_size=3)),
    st.tuples(st.just("pulse"), st.sampled_from([101, 102, 1]), volts, rel_width),
    # a write-verify ramp that ends early (RampRead): first write, drive and sense increments, width;
    # the read; reads per write; writes; the stop
    st.tuples(st.just("ramp"), st.sampled_from([(101, 102), (102, 101), (101, 101)]),
              st.tuples(volts, st.builds(Rel, st.just("V"), st.floats(-0.3, 0.3)), st.one_of(st.just(0.0), rel_volts),
                        st.builds(Rel, st.just("V"), st.floats(-0.2, 0.2)), st.one_of(rel_width, st.sampled_from([1e-6, 5e-5]))),
              st.tuples(st.builds(Rel, st.just("V"), st.floats(-0.5, 0.5)), st.sampled_from([1e-6, 2e-6])),
              st.integers(1, 2), st.integers(1, 8), st.tuples(st.sampled_from([0.0, 1e-6, 1e-5, 1.0]), st.booleans())),
    st.tuples(st.just("pulse_read"), st.sampled_from([(101, 102), (102, 101), (101, 101)]),
              st.one_of(st.none(), st.tuples(volts, st.one_of(st.just(0.0), rel_volts), rel_width)),
              st.tuples(volts, st.sampled_from([1e-6, 1e-5])), st.integers(1, 3), st.integers(0, 3)),
    *[st.tuples(st.sampled_from(["sweep_iv", "routed_sweep"]), st.sampled_from([1, 1, 2, 4, 5]), volts, volts,
                st.one_of(st.builds(Rel, st.just("V"), st.floats(0.05, 1.0)), st.sampled_from([0.1, 0.0005])),
                st.one_of(rel_amps, st.just(Rel("I", 1.0))))] * 2,
    st.tuples(st.sampled_from(["safe_state", "enable"])),
    st.tuples(st.sampled_from(["connect", "disconnect"]), routes),
    st.tuples(st.just("route")),
)
# every source on a line of its own: SMU1/PMU ch 1 on rows, SMU2/PMU ch 2 on columns
ROUTE = [(1, 1), (2, 5), (5, 2), (6, 6), (3, 3), (4, 7)]


def run_action(k: K4200A, sw: E5250A, act, limits: Limits) -> None:
    kind, *args = resolve(act, limits)
    calls = {"write": k.write, "send": k.send, "query": k.query, "set_voltages": k.set_voltages,
             "measure_current": lambda ch, lv: k.measure_current(ch, levels=lv, then={c: 0.0 for c in lv}),
             "run_sequence": lambda pair, steps: k.run_sequence(*pair, steps),
             "check_sequence": lambda pair, steps: k.check_sequence(*pair, steps),
             "pulse": lambda ch, v, w: k.pulse(ch, 0.0, v, w), "safe_state": k.safe_state,
             "pulse_read": lambda pair, write, read, reads, writes: k.pulse_read(
                 *pair, write=write, read=read, reads=reads, writes=writes),
             "ramp": lambda pair, write, read, reads, writes, stop: k.run_sequence(*pair, [
                 step for j in range(writes)
                 for step in [PulseStep(write[0] + j * write[1], write[2] + j * write[3], write[4])]
                 + [PulseStep(read[0], 0.0, read[1], measure=True)] * reads], stop=Stop(*stop)),
             "enable": lambda: k.enable([1, 2, 3, 4]),
             "sweep_iv": lambda ch, start, stop, step, comp: k.sweep_iv(ch, start, stop, step, comp, delay=1e-3),
             # every SMU on its own line, all of them on: a device between the swept line and each other
             "routed_sweep": lambda *sweep: (sw.connect(ROUTE), k.enable([1, 2, 3, 4]),
                                             k.sweep_iv(*sweep, delay=1e-3)),
             "connect": lambda r: sw.connect(r), "disconnect": lambda r: sw.disconnect(r),
             "route": lambda: sw.connect(ROUTE)}
    try:
        calls[kind](*args)
        event(f"{kind} went through")
    except (DriverError, ValueError, IndexError) as exc:
        event(f"{kind} refused: {type(exc).__name__}")


# --- the log checker (from the KXCI commands, not from the driver) ----------------------------

SAFE = {"*IDN?", "ID", "*OPT?", "*RST", "SP", "BC", ":ERROR:LAST:GET", ":ERROR:LAST:CLEAR", "US", "DE", "SS", "SM",
        "MD", "UL", "IT", "RS", "EC", "DV", "TV", "TI", ":PMU:INIT", ":PMU:RPM:CONFIGURE", ":PMU:MEASURE:RANGE",
        ":PMU:MEASURE:MODE", ":PMU:SOURCE:RANGE", ":PMU:LOAD", ":PMU:SAMPLE:RATE", ":PMU:PULSE:TRAIN",
        ":PMU:PULSE:TIMES", ":PMU:PULSE:BURST:COUNT", ":PMU:SARB:SEQ:TIME", ":PMU:SARB:SEQ:STARTV",
        ":PMU:SARB:SEQ:STOPV", ":PMU:SARB:SEQ:MEAS:TYPE", ":PMU:SARB:SEQ:MEAS:START", ":PMU:SARB:SEQ:MEAS:STOP",
        ":PMU:SARB:WFM:SEQ:LIST", ":PMU:OUTPUT:STATE", ":PMU:EXECUTE", ":PMU:ABORT", ":PMU:TEST:STATUS?",
        ":PMU:DATA:COUNT?", ":PMU:DATA:GET", "EX", "GP", "GD",
        # system mode: the pages' set-up (sourcing nothing until ME), the test, its data
        "CH", "VR", "VP", "VC", "HT", "DT", "DM", "LI", "WT", "IN", "NR", "XN", "XT", "YA", "YB", "ME", "RD", "DO"}
COVERED_CHANNELS = {("1", "1"), ("1", "2"), ("1", "3"), ("3", "3")}   # voltage sources and common


def _sweep_levels(start: float, stop: float, step: float) -> list[float]:
    """What KXCI's VR plays (manual: below 1 mV a start or step is 0; int(|span|/step + 1.5) points)."""
    start = 0.0 if abs(start) < 1e-3 else start
    step = 0.0 if abs(step) < 1e-3 else step
    if start == stop:
        return [start]
    points = int(abs((stop - start) / step) + 1.5) if step else 1
    return [start + k * step for k in range(min(points, 1025))] + [stop]


def check_log(messages: list[str], limits: Limits) -> None:
    for message in messages:
        for cmd in (c.strip() for c in message.split(";") if c.strip()):
            if cmd.startswith(":"):
                name, _, rest = cmd.partition(" ")
            else:
                m = re.match(r"(\*?[A-Z]+\??)(.*)$", cmd)
                assert m, cmd
                name, rest = m.groups()
            assert name in SAFE, f"unchecked command reached the 4200A: {cmd!r}"
            args = [a.strip() for a in rest.split(",")] if rest.strip() else []
            if name == "DV" and len(args) > 1:
                assert abs(float(args[2])) <= limits.max_line_voltage + EPS, cmd
                assert abs(float(args[3])) <= limits.compliance_current + EPS, cmd
            elif name in (":PMU:SARB:SEQ:STARTV", ":PMU:SARB:SEQ:STOPV", ":PMU:PULSE:TRAIN"):
                # a set-up array may hold anything: only EXECUTE plays it, and the exposure says what it did
                pass
            elif name == "EX":
                # the module's levels and widths show in the exposure; its current range bounds the energy
                m = re.fullmatch(r"memlab_kult (PulseRead|RampRead)\((.*)\)", rest.strip())
                assert m, f"an unchecked user module reached the 4200A: {cmd!r}"
                kult_args = m.group(2).split(",")
                i_range, output = (9, 10) if m.group(1) == "PulseRead" else (13, 14)
                assert float(kult_args[i_range]) <= limits.compliance_current + EPS and kult_args[output] == "", cmd
            elif name == ":PMU:LOAD":
                assert float(args[1]) >= 1e6, cmd
            elif name == "CH" and len(args) > 1:
                assert (args[3], args[4]) in COVERED_CHANNELS, f"a current source or VAR1' reached the 4200A: {cmd!r}"
            elif name == "VR":
                assert args[0] == "1", f"a log sweep reached the 4200A: {cmd!r}"
                levels = _sweep_levels(*(float(a) for a in args[1:4]))
                assert max(abs(v) for v in levels) <= limits.max_line_voltage + EPS, cmd
                assert abs(float(args[4])) <= limits.compliance_current + EPS, cmd
            elif name == "VP":
                start, step, points = float(args[0]), float(args[1]), int(args[2])
                assert max(abs(start + k * step) for k in range(points)) <= limits.max_line_voltage + EPS, cmd
                assert abs(float(args[3])) <= limits.compliance_current + EPS, cmd
            elif name == "VC":
                assert abs(float(args[1])) <= limits.max_line_voltage + EPS, cmd
                assert abs(float(args[2])) <= limits.compliance_current + EPS, cmd
            elif name == "ME":
                assert args[0] in ("1", "3", "4"), f"a repeating test reached the 4200A: {cmd!r}"
            elif name == ":PMU:RPM:CONFIGURE":
                assert args[1] == "0", cmd


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(limits=limits_st, actions=st.lists(action, max_size=12))
def test_nothing_outside_the_limits_reaches_the_4200a(emulated, limits, actions):
    bench = emulated
    server = bench.servers["analyzer"]
    k = K4200A(bench.resources["analyzer"], name="analyzer", limits=limits, timeout_s=5, kult=True)
    sw = E5250A(bench.resources["switch"], name="switch", timeout_s=5)
    refused, accepted = recording_writes(k)   # the methods' own messages pass there too
    try:
        k.initialize()
        sw.initialize()
        k.set_timeout(TIMEOUT_S)
        start = len(server.received())
        with bench.lock:
            bench.exposure = Exposure()
            bench.hazards.clear()
        for act in actions:
            run_action(k, sw, act, limits)
    finally:
        k.set_timeout(5)
        for inst in (k, sw):
            try:
                inst.safe_state()
            except DriverError:
                pass
            inst.close()
    e = bench.exposure
    target(e.device_voltage / limits.max_device_voltage, label="device voltage / limit")
    target(e.pulse_energy / limits.max_pulse_energy, label="pulse energy / limit")
    event(f"pulses applied: {min(e.pulses, 3)}{'+' if e.pulses >= 3 else ''}")
    received = server.received()[start:]
    tests = sum(bool(re.search(r"(^|;)\s*ME\s*[13]\b", m)) for m in received)
    event(f"system-mode tests run: {min(tests, 2)}{'+' if tests >= 2 else ''}")
    assert e.line_voltage <= limits.max_line_voltage + EPS, (e, limits)
    assert e.device_voltage <= limits.max_device_voltage + EPS, (e, limits)
    assert e.compliance <= limits.compliance_current + EPS, (e, limits)
    assert e.pulse_width <= limits.max_pulse_width * (1 + 1e-9), (e, limits)
    assert e.pulse_energy <= limits.max_pulse_energy * (1 + 1e-9), (e, limits)
    assert bench.hazards == []
    check_log(received, limits)
    assert not (set(received) & refused) - accepted, "a refused message reached the instrument"
    assert all(v is None for v in bench.source_outputs().values())


def test_the_property_is_not_vacuous(emulated):
    """Past the guard, the same checks see a breach: the exposure and the log checker."""
    bench = emulated
    limits = Limits(max_line_voltage=1.0, max_device_voltage=1.0, max_pulse_width=1e-5, max_pulse_energy=1e-9)
    k = K4200A(bench.resources["analyzer"], name="analyzer", limits=limits, timeout_s=2)
    try:
        k.initialize()
        with bench.lock:
            bench.exposure = Exposure()
        k._res.write(":PMU:MEASURE:RANGE 1,2,0.01;:PMU:SARB:SEQ:TIME 1,1,2e-8,1e-4,2e-8;"
                     ":PMU:SARB:SEQ:STARTV 1,1,0,2,2;:PMU:SARB:SEQ:STOPV 1,1,2,2,0;:PMU:SARB:WFM:SEQ:LIST 1,1,1;"
                     ":PMU:OUTPUT:STATE 1,1;:PMU:EXECUTE")            # straight to the socket
        assert k.read() == "ACK"
        e = bench.exposure
        assert e.line_voltage == pytest.approx(2.0) and e.pulse_width > limits.max_pulse_width
        assert e.pulse_energy > limits.max_pulse_energy
        with bench.lock:
            bench.exposure = Exposure()
        k._res.write("DE;CH1,'V1','I1',1,1;SS;VR1,0,1.5,0.5,0.01;MD;ME1")   # a system-mode sweep, straight
        assert k.read() == "ACK"
        while int(k._res.query("SP").strip("\r\n\0")) & 16:                  # it runs while polled
            pass
        assert limits.max_line_voltage < bench.exposure.line_voltage == pytest.approx(1.5)
        with bench.lock:
            bench.exposure = Exposure()
        k._res.write("UL;EX memlab_kult RampRead(1,2,0.5,0.5,0,0,1e-6,0.2,1e-6,1,3,1,1,1e-3,,3)")   # its 3rd write
        assert k.read() == "RETURN VALUE = 3"
        assert limits.max_line_voltage < bench.exposure.line_voltage == pytest.approx(1.5)
        with pytest.raises(AssertionError):
            check_log(["US;DV1,0,2,0.01"], limits)
        with pytest.raises(AssertionError):
            check_log(["DI1,0,1e-3,5"], limits)
        with pytest.raises(AssertionError):
            check_log(["SS;VR1,0,1.5,0.5,1e-3"], limits)   # its last step at 1.5 V
        with pytest.raises(AssertionError):
            check_log(["MD;ME2"], limits)
        with pytest.raises(AssertionError):
            check_log(["UL;EX memlab_kult RampRead(1,2,0.5,0,0,0,1e-6,0.2,1e-6,1,3,1,1,0.2,,3)"], limits)   # IRange
    finally:
        k.safe_state()
        k.close()

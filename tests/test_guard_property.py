"""Property: whatever a caller sends through any public method of the drivers (the analyzer,
the switch, the crossbar layer), with any bench limits and in any interleaving, nothing
outside the limits reaches the emulated instruments, and no switch output ever joins two
inputs.

Each example draws limits, connects fresh drivers to one emulated bench (the connect reset
included), runs a random sequence of actions, some of them hand-written messages built from
each instrument's grammar (with terminators slipped inside, unknown commands, bad numbers),
and then checks two independent records: what the emulated hardware was exposed to (source
levels, device voltages, pulses: `SimulatedBench.exposure`, `hazards`) and the emulators'
command logs, parsed here without the drivers' code.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from drivers.b1500a import B1500A
from drivers.crossbar import InstrumentCrossbar
from drivers.e5250a import E5250A
from drivers.errors import DriverError
from drivers.limits import Limits
from helpers import received
from memlab.bench import emulate
from memlab.config import load_bench
from simulator.bench import Exposure

EXAMPLES = int(os.environ.get("MEMLAB_GUARD_EXAMPLES", "40"))
# short: many random messages end in an instrument error, after which the B1500 skips the
# rest of the message (its error query included) and the driver waits out its timeout
TIMEOUT_S = 0.08
EPS = 1e-9


@pytest.fixture(scope="module")
def emulated():
    config = load_bench("sim-b1500-e5250")
    bench, live = emulate(config)
    yield bench, live
    bench.stop()


# --- strategies -------------------------------------------------------------------------------

limits_st = st.builds(
    Limits,
    max_line_voltage=st.floats(0.3, 3.0),
    max_device_voltage=st.floats(0.3, 3.0),
    compliance_current=st.floats(1e-4, 0.02),
    max_pulse_width=st.floats(0.6e-3, 0.02),
    max_pulse_energy=st.floats(1e-7, 1e-3),
)

@dataclass(frozen=True)
class Rel:
    """A number relative to the example's limits, so that values land near the edges whatever
    limits were drawn: V x max_device_voltage, L x max_line_voltage, I x compliance_current,
    W x max_pulse_width, P: the peak at which a pulse at the compliance and width limits has
    `factor` x max_pulse_energy."""

    kind: str
    factor: float

    def value(self, limits: Limits) -> float:
        scale = {"V": limits.max_device_voltage, "L": limits.max_line_voltage,
                 "I": limits.compliance_current, "W": limits.max_pulse_width,
                 "P": limits.max_pulse_energy / (limits.compliance_current * limits.max_pulse_width)}
        return self.factor * scale[self.kind]


def resolve(x, limits: Limits):
    """Rel values to numbers, message parts to text, recursively."""
    if isinstance(x, Rel):
        return x.value(limits)
    if isinstance(x, Message):
        return "".join(f"{p.value(limits):.6g}" if isinstance(p, Rel) else p for p in x.parts)
    if isinstance(x, dict):
        return {k: resolve(v, limits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(resolve(v, limits) for v in x)
    return x


@dataclass(frozen=True)
class Message:
    parts: tuple


edge = st.sampled_from([1.0, -1.0, 0.999, 1.001, 1.05, -1.05, 0.5, 1 / 3, 2 / 3, 0.0, 1.5, -2.0])
factor = st.one_of(edge, st.floats(-1.3, 1.3))
positive = st.one_of(st.sampled_from([1.0, 0.999, 1.001, 1.05, 0.5, 0.1, 2.0, 0.0, -1.0]), st.floats(0, 1.3))
rel_volts = st.builds(Rel, st.sampled_from(["V", "V", "L", "P"]), factor)
rel_amps = st.builds(Rel, st.just("I"), positive)
rel_width = st.builds(Rel, st.just("W"), positive)
volts = st.one_of(rel_volts, st.sampled_from([0.0, 0.2, 20.0, -50.0]))
seconds = st.one_of(rel_width, st.sampled_from([5e-4, 1e-3, 0.0, 3.0]))
bad_number = st.sampled_from(["nan", "inf", "abc", "1e400", "0x10", "", "1,5", "--1"])
number = st.one_of(rel_volts, rel_amps, rel_width, bad_number)
slot = st.one_of(st.integers(1, 4).map(str), st.sampled_from(["0", "7", "11", "101", "a", ""]))


def msg(*parts) -> st.SearchStrategy:
    """A message strategy from literal text and strategies of numbers or text."""
    return st.tuples(*(p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts)).map(Message)


b1500_command = st.one_of(
    msg("DV ", slot, ",0,", st.one_of(rel_volts, number), ",", st.one_of(rel_amps, number)),
    msg("DV", slot, ",0,", st.one_of(rel_volts, number)),
    msg("PV ", slot, ",0,", rel_volts, ",", st.one_of(rel_volts, number), ",", st.one_of(rel_amps, number)),
    msg("PV ", slot, ", 0, ", rel_volts, ", ", rel_volts),
    msg("PT 0,", st.one_of(rel_width, number), ",", st.one_of(rel_width, st.just("0"))),
    msg("PT ", rel_width, ",", rel_width),
    msg("MM ", st.sampled_from(["1", "2", "3", "3", "4", "10", "16"]), ",", slot),
    msg(st.sampled_from(["CN ", "CL ", "DZ "]), slot),
    msg(st.sampled_from(["XE", "XE", "CN", "CL", "*RST", "DZ", "RZ 1", "DI 1,0,1e-3,2", "WV 1,1,0,0,2.5,11",
                         "WT 0,0", "WM 2,1", "TDV 1,0,50,0.1", "SPV 101,1,0,2.5", "SRP", "ERRX?", "UNT?",
                         "*IDN?", "TI 1,0", "TV 2", "FMT 1,0", "AAD 1,1", "XYZ 1", "*CLS", "*TRG",
                         "WSV 2,0,0,0.5,1e-3", "MM 2,1", "MT 0,0.002,3", "MV 1,0,0,0.2,1e-3", "MSC 1,1",
                         "MM 10,1", "SPP", "SPST?", "ODSW 101,0"])),
)
# a whole pulsed spot set-up with its trigger, the likeliest to put energy into a device
b1500_pulse = msg("CN ", slot, ";PT 0,", rel_width, ";PV ", slot, ",0,", rel_volts, ",", rel_volts, ",", rel_amps,
                  ";MM 3,", slot, ";XE")

channel = st.builds(lambda c, i, o: f"{c}{i:02d}{o:02d}", st.sampled_from([0, 0, 0, 1]),
                    st.integers(1, 5), st.integers(1, 18))
channel_list = st.one_of(st.lists(channel, min_size=1, max_size=5).map(lambda cs: "(@" + ",".join(cs) + ")"),
                         st.sampled_from(["(@00101:00105)", "(@)", "ALL", "0", "(@1)"]))
switch_command = st.one_of(
    st.builds(lambda h, c: f"{h} {c}", st.sampled_from([":ROUT:CLOS", ":CLOS", ":ROUTE:CLOSE:LIST", "ROUT:CLOS",
                                                         ":ROUT:OPEN", ":OPEN"]), channel_list),
    st.sampled_from([":ROUT:OPEN:CARD ALL", ":ROUT:OPEN:CARD 1", ":ROUT:FUNC NCON", ":ROUT:FUNC ACON",
                     ":ROUT:CONN:RULE ALL,SROU", ":ROUT:CONN:SEQ ALL,MBBR", "*RST", ":SYST:ERR?",
                     ":ROUT:CLOS:CARD? 0", ":SYST:CPON ALL", "*TST?", "*IDN?", ":ROUT:CLOS:CARD 0"]),
)


def joined(command_st, n: int) -> st.SearchStrategy:
    return st.lists(command_st, min_size=1, max_size=n).map(
        lambda cs: Message(tuple(p for k, c in enumerate(cs)
                                 for p in ((";",) if k else ()) + (c.parts if isinstance(c, Message) else (c,)))))


TERMINATORS = st.sampled_from(["\n", "\r", "\r\n", "\x00"])


def with_terminator(message_st, tails):
    """A message with a CR, LF or NUL slipped inside it, followed by a dangerous tail."""
    return st.builds(lambda a, t, b: Message(a.parts + (t, b)), message_st, TERMINATORS, st.sampled_from(tails))


b1500_message = st.one_of(joined(b1500_command, 4), b1500_pulse)
switch_message = joined(switch_command, 3)
raw = st.one_of(b1500_message, b1500_message, with_terminator(
    b1500_message, ["DV 1,0,20,0.1", "CN;DV 2,0,-20,0.1", "PT 0,2,5;PV 1,0,0,50,0.1;MM 3,1;XE"]))
raw_switch = st.one_of(switch_message, with_terminator(switch_message, [":ROUT:CLOS (@00101,00201)"]))
routes = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 16)), max_size=6)
levels = st.dictionaries(st.integers(1, 4), volts, max_size=4)

action = st.one_of(
    st.tuples(st.sampled_from(["write", "send", "query"]), raw),
    st.tuples(st.sampled_from(["sw_write", "sw_send"]), raw_switch),
    st.tuples(st.just("set_voltages"), levels),
    st.tuples(st.just("measure_current"), st.integers(1, 4), levels),
    st.tuples(st.just("pulse"), st.integers(1, 4), volts, volts, seconds),
    st.tuples(st.just("check_pulse"), st.integers(1, 4), volts, volts, seconds),
    st.tuples(st.sampled_from(["enable", "disable"]), st.lists(st.integers(1, 4), min_size=1, max_size=4)),
    st.tuples(st.sampled_from(["trigger_pulse", "safe_state", "check_errors", "open_all", "sw_safe_state"])),
    st.tuples(st.sampled_from(["connect", "disconnect"]), routes),
    st.tuples(st.just("xbar_pulse"), st.integers(0, 7), st.integers(0, 7), volts, seconds,
              st.sampled_from(["v3", "v2"])),
    st.tuples(st.just("xbar_pulse"), st.integers(0, 7), st.integers(0, 7), rel_volts, rel_width,
              st.sampled_from(["v3", "v2"])),
    st.tuples(st.just("xbar_read"), st.integers(0, 7), st.integers(0, 7), volts),
)


def run_action(xbar: InstrumentCrossbar, act: tuple, limits: Limits) -> None:
    src, sw = xbar.source, xbar.switch
    kind, *args = resolve(act, limits)
    calls = {
        "write": src.write, "send": src.send, "query": src.query, "sw_write": sw.write, "sw_send": sw.send,
        "set_voltages": src.set_voltages,
        "measure_current": lambda ch, lv: src.measure_current(ch, levels=lv, then={k: 0.0 for k in lv}),
        "pulse": src.pulse, "check_pulse": src.check_pulse,
        "enable": src.enable, "disable": src.disable,
        "trigger_pulse": src.trigger_pulse, "safe_state": src.safe_state, "check_errors": src.check_errors,
        "open_all": sw.open_all, "sw_safe_state": sw.safe_state,
        "connect": sw.connect, "disconnect": sw.disconnect,
        "xbar_pulse": xbar.pulse, "xbar_read": xbar.read,
    }
    try:
        calls[kind](*args)
    except (DriverError, ValueError, IndexError):
        pass   # refused on the host, or the instrument's own error: either way, safe is all we check


# --- the log checker (written here, independent of the drivers' grammars) ------------------------

ANALYZER_SAFE = {"*RST", "*IDN?", "*OPC?", "*STB?", "*LRN?", "UNT?", "ERRX?", "ERR?", "FMT", "AV", "AIT",
                 "AAD", "AZ", "FL", "CMM", "RI", "RV", "TSC", "TSR", "BC", "CN", "CL", "DZ", "DV", "PT", "PV",
                 "MM", "XE", "TI", "TV", "TTI", "TTV", "TIV", "TTIV",
                 # staircase sweep and sampling
                 "WT", "WM", "WV", "WSV", "MT", "MV", "ML", "MSC",
                 # SPGU (B1525A) and its queries
                 "SIM", "SPPER", "SPRM", "SPV", "SPT", "SPM", "SER", "SPUPD", "SRP", "SPP", "ODSW",
                 "SPST?", "SPV?", "SPT?", "SPM?", "SER?", "SPRM?", "SPPER?", "SIM?", "ODSW?"}
SPGU_OUTPUT_OHM = 50.0   # B1525A output impedance (programming guide, SER)


@dataclass
class _SpguSeen:
    """What the log has set on one SPGU channel since the check began (None: not seen)."""

    on: bool = False
    mode: int = 0         # SPM: 0 DC (the reset's), 1 or 2 one pulse source, 3 both
    load: float | None = None
    levels: dict = field(default_factory=dict)   # source -> (base, peak)
    timing: dict = field(default_factory=dict)   # source -> (delay, width, leading, trailing)


def _spgu_channel_list(args: list[float]) -> list[int] | None:
    """The SPGU channels (slot x 100 + 1 or 2) of a CN/CL list; None: a bare CN/CL (all)."""
    return None if not args else [int(a) for a in args if a > 100]


def _check_spgu_run(seen: dict[int, _SpguSeen], limits: Limits, cmd: str, pulses: bool,
                    only: list[int] | None = None) -> None:
    """At SPUPD (`only` its channels, if it names any) or SRP: every SPGU channel that is on
    puts out what the log set on it. Its
    line sees the open voltage of a source set for the SER load, V (R + 50) / R; it has no
    compliance, so a level held and a pulse's energy are bounded by the current into a
    short through the 50 ohm output."""
    for ch, c in seen.items():
        if not c.on or (only is not None and ch not in only):
            continue
        sources = {0: (0,), 1: (1,), 2: (2,), 3: (1, 2)}[c.mode]
        for src in sources:
            if src not in c.levels:
                continue    # still at the reset's 0 V
            assert c.load is not None, f"SPGU {ch} puts out a level for a load never set: {cmd!r}"
            scale = (c.load + SPGU_OUTPUT_OHM) / c.load
            base, peak = (scale * v for v in c.levels[src])
            assert abs(base) <= limits.max_line_voltage + EPS, (cmd, ch, base)
            # a level held: nothing but the 50 ohm output limits its current
            assert abs(base) / SPGU_OUTPUT_OHM <= limits.compliance_current + EPS, (cmd, ch, base)
            if not pulses or src == 0:
                continue
            assert abs(peak) <= limits.max_line_voltage + EPS, (cmd, ch, peak)
            assert src in c.timing, f"SPGU {ch} pulses with timing never set: {cmd!r}"
            delay, width, lead, trail = c.timing[src]
            span = width + lead + trail
            assert span <= limits.max_pulse_width * (1 + 1e-9), (cmd, ch, span)
            assert peak * peak / SPGU_OUTPUT_OHM * span <= limits.max_pulse_energy * (1 + 1e-9), (cmd, ch)


def check_analyzer_log(commands: list[str], limits: Limits) -> None:
    """Every command is one the checker knows, and every level, compliance and pulse it sets
    is within the limits (the SPGU's: from what the log set on its channels)."""
    spgu: dict[int, _SpguSeen] = {}
    all_on = False   # a bare CN switched on every SPGU channel, those not named yet too

    def channel(ch: float) -> _SpguSeen:
        return spgu.setdefault(int(ch), _SpguSeen(on=all_on))

    for cmd in commands:
        m = re.match(r"(\*?[A-Z]+\??)\s*(.*)$", cmd.upper())
        assert m and m.group(1) in ANALYZER_SAFE, f"unchecked command reached the analyzer: {cmd!r}"
        name, rest = m.groups()
        args = [float(a) for a in rest.split(",")] if rest.strip() else []
        assert all(math.isfinite(a) for a in args), cmd

        def line(*indices):
            for k in indices:
                assert abs(args[k]) <= limits.max_line_voltage + EPS, cmd

        def compliance(k):
            if len(args) > k:
                assert 0 < abs(args[k]) <= limits.compliance_current + EPS, cmd

        if name == "*RST":
            spgu.clear()
            all_on = False
        elif name == "DV":
            line(2)
            if len(args) > 3 and args[2] != 0:
                assert 0 < args[3] <= limits.compliance_current + EPS, cmd
        elif name == "PV":
            line(2, 3)
            compliance(4)
        elif name == "PT":
            assert 0 < args[1] <= limits.max_pulse_width + EPS, cmd
        elif name == "MM":
            assert args[0] in (1, 2, 3, 10), cmd
        elif name == "WV":          # WV ch,mode,range,start,stop,steps[,Icomp[,Pcomp]]
            line(3, 4)
            compliance(6)
        elif name == "WSV":         # WSV ch,range,start,stop[,Icomp[,Pcomp]]
            line(2, 3)
            compliance(4)
        elif name == "MV":          # MV ch,range,base,bias,Icomp
            line(2, 3)
            compliance(4)
        elif name in ("CN", "CL"):
            listed = _spgu_channel_list(args)
            if listed is None:
                all_on = name == "CN"
            for ch in (list(spgu) if listed is None else listed):
                channel(ch).on = name == "CN"
        elif name == "SIM":
            assert args == [0], f"only the pulse generator mode is checked: {cmd!r}"
        elif name == "SPRM":        # a free run (mode 0) has no end
            assert args and args[0] in (1, 2), cmd
        elif name == "SPV":         # SPV ch,src,base[,peak]
            line(*range(2, len(args)))
            channel(args[0]).levels[int(args[1])] = (args[2], args[-1])
        elif name == "SPT":         # SPT ch,src,delay,width,leading[,trailing]
            channel(args[0]).timing[int(args[1])] = tuple(args[2:5]) + (args[5] if len(args) > 5 else args[4],)
        elif name == "SPM":
            channel(args[0]).mode = int(args[1])
        elif name == "SER":
            assert args[1] > 0, cmd
            channel(args[0]).load = args[1]
        elif name in ("SPUPD", "SRP"):
            _check_spgu_run(spgu, limits, cmd, pulses=name == "SRP",
                            only=[int(a) for a in args] if args else None)


def check_switch_log(commands: list[str]) -> None:
    """Only relay, configuration and status commands, and no channel range (whose expansion
    nobody checked); the joins themselves are checked on the hardware (`hazards`)."""
    for cmd in commands:
        head, _, rest = cmd.upper().partition(" ")
        assert re.fullmatch(r"(:ROUTE?)?:(CLOSE?|OPEN|FUNC(TION)?|CONN(ECTION)?)(:[A-Z]+)?\??|\*RST|\*IDN\?|"
                            r":SYST(EM)?:(ERR(OR)?|CTYP(E)?)\?", head), cmd
        assert ":" not in rest, cmd


# --- the property -----------------------------------------------------------------------------------

@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(limits=limits_st, actions=st.lists(action, max_size=14))
def test_nothing_outside_the_limits_reaches_an_instrument(emulated, limits, actions):
    bench, live = emulated
    resources = live.instruments
    src = B1500A(resources["analyzer"].resource, name="analyzer", limits=limits, timeout_s=5)
    sw = E5250A(resources["switch"].resource, name="switch", timeout_s=5)
    read_voltage = min(0.2, limits.max_device_voltage, limits.max_line_voltage)
    xbar = InstrumentCrossbar(src, sw, live.wiring, limits, read_voltage=read_voltage)
    try:
        xbar.connect()   # the reset and the safe start are part of what is checked
        for inst in (src, sw):
            inst.set_timeout(TIMEOUT_S)
        start = {name: len(received(bench, name)) for name in ("analyzer", "switch")}
        with bench.lock:
            bench.exposure = Exposure()
            bench.hazards.clear()
        for act in actions:
            run_action(xbar, act, limits)
    finally:
        for inst in (src, sw):
            inst.set_timeout(5)
        try:
            xbar.close()
        except (DriverError, RuntimeError):
            pass
    e = bench.exposure
    # steer the search towards the edges of the limits, where a breach would be
    target(e.device_voltage / limits.max_device_voltage, label="device voltage / limit")
    target(e.pulse_energy / limits.max_pulse_energy, label="pulse energy / limit")
    event(f"pulses applied: {min(e.pulses, 3)}{'+' if e.pulses >= 3 else ''}")
    event(f"device voltage reached {round(e.device_voltage / limits.max_device_voltage, 1) * 100:.0f} % of the limit")
    assert e.line_voltage <= limits.max_line_voltage + EPS, (e, limits)
    assert e.device_voltage <= limits.max_device_voltage + EPS, (e, limits)
    assert e.compliance <= limits.compliance_current + EPS, (e, limits)
    assert e.pulse_width <= limits.max_pulse_width + EPS, (e, limits)
    assert e.pulse_energy <= limits.max_pulse_energy * (1 + 1e-9), (e, limits)
    assert bench.hazards == []
    check_analyzer_log(received(bench, "analyzer")[start["analyzer"]:], limits)
    check_switch_log(received(bench, "switch")[start["switch"]:])


def test_the_log_checker_accepts_sweeps_sampling_and_spgu_within_the_limits_only():
    limits = Limits(max_line_voltage=1.0, max_device_voltage=1.0, compliance_current=1e-3,
                    max_pulse_width=1e-5, max_pulse_energy=1e-6)
    spgu = ["CN 101", "SIM 0", "SPPER 1E-4", "SPRM 1,3", "SER 101,1E6", "SPM 101,1",
            "SPT 101,1,0,1E-6,2E-8,2E-8", "SPV 101,1,0,0.9", "SPUPD 101", "SRP", "SPST?", "SPP"]
    fine = ["WT 0,0,0", "WM 1,1", "WV 1,1,0,0,1,5,1E-3", "WSV 2,0,0,-1,1E-3", "MM 2,1", "XE", "MT 0,0.002,3,0",
            "MV 1,0,0,0.9,1E-3", "MSC 1,1", "ML 1", "MM 10,1", "XE", "ODSW 101,0", *spgu, "*LRN? 33"]
    check_analyzer_log(fine, limits)
    for breach in (["WV 1,1,0,0,1.2,5,1E-3"], ["WV 1,1,0,0,1,5,2E-3"], ["WSV 2,0,-1.5,0,1E-3"],
                   ["MV 1,0,0,1.1,1E-3"], ["MV 1,0,0,0.5,0.1"], ["MM 4,1"], ["SPRM 0"], ["SIM 1"],
                   ["SPV 101,1,0,1.2"],
                   [s.replace("SER 101,1E6", "SER 101,50") for s in spgu],           # 1.8 V on the line
                   [s.replace("1E-6,2E-8", "2E-5,2E-8") for s in spgu],              # too wide
                   [s.replace("SPV 101,1,0,0.9", "SPV 101,1,0.9,0.9") for s in spgu][:9],  # DC from the SPGU
                   [s for s in spgu if not s.startswith("SER")]):                    # load unknown
        with pytest.raises(AssertionError):
            check_analyzer_log(breach, limits)


def test_the_property_is_not_vacuous(emulated):
    """The same checks do fail when a message bypasses the guard: the checker can see a breach."""
    bench, live = emulated
    limits = Limits(max_line_voltage=1.0, max_device_voltage=1.0)
    src = B1500A(live.instruments["analyzer"].resource, name="analyzer", limits=limits, timeout_s=TIMEOUT_S)
    try:
        src.initialize()
        with bench.lock:
            bench.exposure = Exposure()
        src._res.write("CN 1;DV 1,0,2,0.01")   # straight to the socket, past the guard
        assert src._res.query("ERRX?").startswith("+0")
        assert bench.exposure.line_voltage == pytest.approx(2.0)
        with pytest.raises(AssertionError):
            check_analyzer_log(["CN 1", "DV 1,0,2,0.01"], limits)
    finally:
        src.safe_state()
        src.close()

"""Property: whatever a caller sends to either switch driver (the E5250A over SCPI, the 707B
over TSP), as hand-written messages or through its methods, in any order, no switch output
ever has two inputs on it, and a message the guard refuses never reaches the instrument.

Each example connects fresh drivers to two emulated benches (the connect reset included),
runs a random sequence of actions on both, and checks two independent records: the
benches' hardware (`SimulatedBench.hazards`, fed by every relay change the emulators make)
and the emulators' command logs (nothing new after a refusal).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from drivers.e5250a import E5250A
from drivers.errors import DriverError, LimitError
from drivers.k707b import K707B
from helpers import one_torch_thread  # noqa: F401  (fixture)
from simulator.bench import SimulatedBench
from simulator.spec import EmulatedInstrument, SimBenchSpec

EXAMPLES = int(os.environ.get("MEMLAB_GUARD_EXAMPLES", "30"))
TIMEOUT_S = 0.08   # an E5250A command error discards the error query: the driver waits this out
KINDS = {"e5250a": ("keysight_e5250a", E5250A), "k707b": ("keithley_707b", K707B)}


@pytest.fixture(scope="module")
def benches():
    """One bench per switch: 8 word lines on outputs 1-8, 16 bit lines on outputs 9-24, so
    that a join on any output of two cards is seen by the hardware."""
    out = {}
    for kind, (type_, _) in KINDS.items():
        spec = SimBenchSpec(rows=8, cols=16, seed=2, switch="switch", row_ports=list(range(1, 9)),
                            col_ports=list(range(9, 25)), cables=[],
                            instruments=[EmulatedInstrument(name="switch", type=type_, options={"cards": 2})])
        out[kind] = SimulatedBench(spec).start()
    yield out
    for bench in out.values():
        bench.stop()


# --- E5250A messages ----------------------------------------------------------------------------

scpi_channel = st.builds(lambda c, i, o: f"{c}{i:02d}{o:02d}", st.sampled_from([0, 0, 0, 1]),
                         st.integers(1, 4), st.integers(1, 26))
scpi_list = st.one_of(st.lists(scpi_channel, min_size=1, max_size=4).map(lambda cs: "(@" + ",".join(cs) + ")"),
                      st.sampled_from(["(@00101:00303)", "(@)", "ALL", "(@1)"]))
scpi_command = st.one_of(
    st.builds(lambda h, c: f"{h} {c}", st.sampled_from([":ROUT:CLOS", ":CLOS", ":ROUTE:CLOSE:LIST", "CLOS",
                                                         ":ROUT:OPEN", ":OPEN"]), scpi_list),
    st.builds(lambda h, card, v: f"{h} {card},{v}", st.sampled_from([":ROUT:CONN:RULE", ":CONN:RULE"]),
              st.sampled_from(["ALL", "0", "1"]), st.sampled_from(["FREE", "SROU", "SROUTE"])),
    st.builds(lambda h, card, v: f"{h} {card},{v}", st.sampled_from([":ROUT:CONN:SEQ", ":CONN:SEQUENCE"]),
              st.sampled_from(["ALL", "0"]), st.sampled_from(["BBM", "MBBR", "NSEQ"])),
    st.sampled_from([":ROUT:OPEN:CARD ALL", ":OPEN:CARD 1", ":ROUT:FUNC NCON", ":ROUT:FUNC ACON", "*RST", "*CLS",
                     "*ESR?", ":SYST:ERR?", ":CLOS:CARD? 0", ":SYST:CPON ALL", ":SYST:CTYP? 1", "*TST?"]),
)

# --- 707B messages -------------------------------------------------------------------------------

tsp_channel = st.builds(lambda s, r, c: f"{s}{r}{c:02d}", st.sampled_from([1, 1, 2, 3]),
                        st.sampled_from("ABCDh"), st.integers(1, 13))
tsp_item = st.one_of(tsp_channel, st.builds(lambda a, b: f"{a}:{b}", tsp_channel, tsp_channel),
                     st.sampled_from(["allslots", "slot1", "Chans", ""]))
tsp_list = st.lists(tsp_item, min_size=1, max_size=3).map(",".join)
tsp_statement = st.one_of(
    st.builds(lambda f, q, items: f"channel.{f}({q}{items}{q})",
              st.sampled_from(["close", "close", "open", "exclusiveclose", "reset"]), st.sampled_from(['"', "'"]),
              tsp_list),
    st.sampled_from(['channel.exclusiveclose("")', 'print(channel.getclose("allslots"))', "print(errorqueue.next())",
                     "errorqueue.clear()", "print(errorqueue.count)", "*RST", "*IDN?", "*OPC?",
                     "for i = 1, 9 do channel.close('1A0' .. i) end", 'channel.close"1B01"',
                     'channel.close("1A01") -- and more', "reset()", 'print(slot[1].idn)']),
)


def joined(command_st, separator: str, n: int) -> st.SearchStrategy:
    return st.lists(command_st, min_size=1, max_size=n).map(separator.join)


def with_terminator(message_st, tail: str) -> st.SearchStrategy:
    return st.builds(lambda a, t: f"{a}{t}{tail}", message_st, st.sampled_from(["\n", "\r", "\r\n", "\x00"]))


scpi_message = st.one_of(joined(scpi_command, ";", 3), with_terminator(joined(scpi_command, ";", 2),
                                                                        ":ROUT:CLOS (@00101,00201)"))
tsp_message = st.one_of(joined(tsp_statement, " ", 3), joined(tsp_statement, ";", 2),
                        with_terminator(tsp_statement, 'channel.close("1A01,1B01")'))
routes = st.one_of(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 26)), max_size=6),
                   # one input per output: a connect that can succeed, and later ones that join
                   st.dictionaries(st.integers(1, 26), st.integers(1, 4), max_size=8).map(
                       lambda d: [(i, o) for o, i in d.items()]))

action = st.one_of(
    st.tuples(st.just("e5250a"), st.sampled_from(["write", "send", "query"]), scpi_message),
    st.tuples(st.just("k707b"), st.sampled_from(["write", "send", "query"]), tsp_message),
    st.tuples(st.sampled_from(list(KINDS)), st.sampled_from(["connect", "connect", "disconnect"]), routes),
    st.tuples(st.sampled_from(list(KINDS)), st.just("connect"), routes),
    st.tuples(st.sampled_from(list(KINDS)), st.sampled_from(["open_all", "safe_state", "initialize"])),
)


def run(drivers: dict, benches: dict, act: tuple) -> str:
    """Carry out one action; the outcome, and if the guard refused it, proof nothing was sent."""
    kind, method, *args = act
    server = benches[kind].servers["switch"]
    before = len(server.received())
    try:
        getattr(drivers[kind], method)(*args)
    except LimitError:
        assert server.received()[before:] == [], f"{kind}.{method}{tuple(args)} was refused, yet sent"
        return "refused"
    except (DriverError, ValueError):
        return "failed"   # the instrument's own error, a timeout, a garbled or unexpected reply
    return "done"


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(actions=st.lists(action, max_size=12))
def test_no_switch_output_ever_joins_two_inputs(benches, actions):
    drivers = {}
    try:
        for kind, (_, cls) in KINDS.items():
            drivers[kind] = cls(benches[kind].resources["switch"], name="switch", timeout_s=5)
            drivers[kind].initialize()
            drivers[kind].set_timeout(TIMEOUT_S)
        for bench in benches.values():
            with bench.lock:
                bench.hazards.clear()
        most = 0
        for act in actions:
            event(run(drivers, benches, act))
            most = max(most, *(len(b.closed_relays()) for b in benches.values()))
        event(f"most relays closed at once: {min(most, 5)}{'+' if most >= 5 else ''}")
    finally:
        for driver in drivers.values():
            driver.set_timeout(0.5)   # a reply still owed is waited for this long, not 5 s
            try:
                driver.safe_state()
            except DriverError:
                pass
            driver.close()
    for kind, bench in benches.items():
        assert bench.hazards == [], (kind, bench.hazards)
        assert bench.closed_relays() == frozenset(), kind   # and safe_state really opened everything


@pytest.mark.parametrize("kind, message", [
    ("e5250a", ":ROUT:CLOS (@00101,00201)"),
    ("k707b", 'channel.close("1A01,1B01")'),
])
def test_the_property_is_not_vacuous(benches, kind, message):
    """The same check does fail when a message bypasses the guard."""
    bench = benches[kind]
    driver = KINDS[kind][1](bench.resources["switch"], name="switch", timeout_s=5)
    try:
        driver.initialize()
        with pytest.raises(LimitError):
            driver.send(message)
        with bench.lock:
            bench.hazards.clear()
        driver._res.write(message)   # straight to the socket, past the guard
        driver.query(driver.error_query)
        assert bench.hazards == ["inputs [1, 2] connected together on output port 1"]
    finally:
        with bench.lock:
            bench.hazards.clear()
        driver.safe_state()
        driver.close()

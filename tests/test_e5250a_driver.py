"""E5250A driver additions against the emulated mainframe, through pyvisa-py on loopback:
the optional :ROUT prefix, *CLS / *ESR?, card queries, and the connection rule and sequence
(set explicitly at connect; make-before-break combinations refused by the guard)."""

from __future__ import annotations

import pytest
import pyvisa

from drivers.e5250a import E5250A
from drivers.errors import InstrumentError, LimitError
from helpers import one_torch_thread  # noqa: F401  (fixture)
from simulator.bench import SimulatedBench
from simulator.spec import EmulatedInstrument, SimBenchSpec

T = 0.5


@pytest.fixture
def bench():
    spec = SimBenchSpec(rows=2, cols=2, seed=1, switch="switch", row_ports=[1, 2], col_ports=[3, 4], cables=[],
                        instruments=[EmulatedInstrument(name="switch", type="keysight_e5250a", options={"cards": 2})])
    b = SimulatedBench(spec).start()
    yield b
    b.stop()


@pytest.fixture
def switch(bench):
    s = E5250A(bench.resources["switch"], name="switch", timeout_s=T)
    s.initialize()
    yield s
    s.close()


def since(bench, start: int) -> list[str]:
    return bench.servers["switch"].received()[start:]


def count(bench) -> int:
    return len(bench.servers["switch"].received())


def raw_session(bench):
    rm = pyvisa.ResourceManager("@py")
    return rm.open_resource(bench.resources["switch"], read_termination="\n", write_termination="\n", timeout=2000)


def test_initialize_sets_free_and_bbm_after_the_reset(bench):
    other = raw_session(bench)
    try:
        other.write(":ROUT:CONN:RULE 0,SROU;:ROUT:CONN:SEQ 0,MBBR;:CLOS (@00101)")
        assert other.query(":SYST:ERR?") == '0,"No error"'
    finally:
        other.close()
    s = E5250A(bench.resources["switch"], timeout_s=T)
    try:
        start = count(bench)
        s.initialize()
        sent = since(bench, start)
        assert sent[0] == "*RST;:SYST:ERR?"
        assert ":ROUT:FUNC ACON;:ROUT:CONN:RULE ALL,FREE;:ROUT:CONN:SEQ ALL,BBM;:SYST:ERR?" in sent[1:]
        assert s.connection_settings() == ("FREE", "BBM")
        assert (s.guard.state.rule, s.guard.state.sequence) == ("FREE", "BBM")
        assert s.closed == set() == set(bench.closed_relays())
    finally:
        s.close()


@pytest.mark.parametrize("message, route", [
    (":CLOS (@00101)", (1, 1)),
    (":ROUT:CLOS (@00101)", (1, 1)),
    (":ROUTE:CLOSE:LIST (@00101)", (1, 1)),
    (":clos:list (@00224)", (2, 24)),
])
def test_the_route_prefix_is_optional_on_the_raw_path(bench, switch, message, route):
    switch.send(message)
    assert bench.cores["switch"].closed == {route} == switch.closed
    switch.send(":OPEN:CARD ALL")
    assert bench.cores["switch"].closed == frozenset() == switch.closed


def test_headers_that_need_the_path_are_refused_unsent(bench, switch):
    start = count(bench)
    for message in ("CLOS (@00101)", ":ROUT:CONN:RULE ALL,FREE;SEQ ALL,BBM", ":CLOS (@00101:00103)"):
        with pytest.raises(LimitError):
            switch.send(message)
    assert since(bench, start) == []


def test_event_status_and_clear_status(bench, switch):
    assert switch.event_status() == 128   # power on, kept through *RST (status, not a setting)
    assert switch.event_status() == 0     # reading clears it
    with pytest.raises(InstrumentError) as info:
        switch.connect([(1, 30)])   # two cards: outputs 1..24
    assert info.value.code == -222
    assert switch.event_status() == 16   # execution error
    switch.send(":ROUT:CLOS (@00101)")
    bench.cores["switch"].handle(":FOO")   # an error the driver did not cause (front panel, other session)
    switch.clear_status()
    assert switch.event_status() == 0
    assert switch.query(":SYST:ERR?") == '0,"No error"'


def test_card_queries(bench, switch):
    assert switch.card_types() == {1: "E5252A", 2: "E5252A"}
    assert switch.size() == (10, 24)
    assert switch.query(":SYST:CTYP? 3") == "NONE"
    switch.connect([(3, 13), (1, 2)])
    assert switch.query(":ROUT:CLOS:CARD? 0") == "(@00102,00313)"
    assert switch.read_closed() == {(3, 13), (1, 2)}


def test_make_before_break_combinations_are_refused(bench, switch):
    start = count(bench)
    switch.send(":ROUT:CONN:SEQ ALL,MBBR")   # under the FREE rule nothing is ever displaced
    with pytest.raises(LimitError, match="could make a route before breaking"):
        switch.send(":ROUT:CONN:RULE ALL,SROU")
    switch.send(":ROUT:CONN:SEQ ALL,BBM;:ROUT:CONN:RULE ALL,SROU")   # break before make: allowed
    for message in (":ROUT:CONN:SEQ ALL,MBBR", ":ROUT:CONN:SEQ 0,NSEQUENCE"):
        with pytest.raises(LimitError, match="could make a route before breaking"):
            switch.send(message)
    assert [m for m in since(bench, start) if "SEQ" in m or "RULE" in m] == [
        ":ROUT:CONN:SEQ ALL,MBBR;:SYST:ERR?", ":ROUT:CONN:SEQ ALL,BBM;:ROUT:CONN:RULE ALL,SROU;:SYST:ERR?"]
    assert switch.connection_settings() == ("SROU", "BBM")


def test_closes_need_rule_and_sequence_set_in_this_session(bench, switch):
    switch.send("*RST")
    with pytest.raises(LimitError, match="not known in this session"):
        switch.send(":ROUT:FUNC ACON;:ROUT:CLOS (@00101)")
    switch.send(":ROUT:FUNC ACON;:ROUT:CONN:RULE ALL,FREE;:ROUT:CONN:SEQ ALL,BBM")
    switch.send(":ROUT:CLOS (@00101)")
    with pytest.raises(InstrumentError):
        switch.send(":ROUT:CONN:RULE 1,FREE")   # card 1 does not exist in auto configuration...
    with pytest.raises(LimitError, match="not known in this session"):
        switch.connect([(2, 2)])                # ...and the guard no longer knows the frame's rule
    switch.send(":ROUT:CONN:RULE ALL,FREE")
    switch.connect([(2, 2)])
    assert bench.cores["switch"].closed == {(1, 1), (2, 2)}


def test_what_the_refusal_prevents(bench):
    """Past the guard, single route with make-before-break joins two inputs on a line."""
    other = raw_session(bench)
    try:
        other.write(":ROUT:CONN:RULE 0,SROU;:ROUT:CONN:SEQ 0,MBBR;:ROUT:CLOS (@00103);:ROUT:CLOS (@00203)")
        assert other.query(":SYST:ERR?") == '0,"No error"'
    finally:
        other.close()
    assert bench.closed_relays() == {(2, 3)}
    assert bench.hazards == ["inputs [1, 2] connected together on output port 3"]

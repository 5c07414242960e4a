"""The K707B driver against the emulated 707B on a loopback socket, through pyvisa-py, on a
small simulated bench (so that the relays' effect on the hardware is seen too)."""

from __future__ import annotations

import pytest
import pyvisa

from drivers.errors import InstrumentError, LimitError, ReplyError
from drivers.k707b import K707B, TspGrammar, channel_name
from helpers import one_torch_thread  # noqa: F401  (fixture)
from simulator.bench import SimulatedBench
from simulator.spec import EmulatedInstrument, SimBenchSpec

ERRQ = 'print("ERRQ", errorqueue.next())'
T = 0.5  # s: the emulator answers at once; only the fault tests wait this long


def make_bench(cards: int = 2) -> SimulatedBench:
    spec = SimBenchSpec(rows=2, cols=3, seed=1, switch="switch", row_ports=[1, 2], col_ports=[13, 14, 15],
                        instruments=[EmulatedInstrument(name="switch", type="keithley_707b",
                                                        options={"cards": cards})], cables=[])
    return SimulatedBench(spec).start()


@pytest.fixture
def bench():
    b = make_bench()
    yield b
    b.stop()


@pytest.fixture
def switch(bench):
    s = K707B(bench.resources["switch"], name="switch", timeout_s=T)
    s.initialize()
    yield s
    s.close()


def since(bench, start: int) -> list[str]:
    return bench.servers["switch"].received()[start:]


def count(bench) -> int:
    return len(bench.servers["switch"].received())


def test_channel_names_follow_the_port_convention():
    assert channel_name((1, 1)) == "1A01"
    assert channel_name((8, 12)) == "1H12"
    assert channel_name((2, 13)) == "2B01"
    assert channel_name((3, 72)) == "6C12"
    for bad in ((0, 1), (9, 1), (1, 0), (1, 73)):
        with pytest.raises(LimitError):
            channel_name(bad)


def test_initialize_resets_identifies_and_reads_the_relays(bench):
    rm = pyvisa.ResourceManager("@py")
    other = rm.open_resource(bench.resources["switch"], read_termination="\n", write_termination="\n", timeout=2000)
    try:
        other.write('channel.close("1A01,2B02")')   # left closed by another program
        assert other.query('print(channel.getclose("allslots"))') == "1A01;2B02"
    finally:
        other.close()
    s = K707B(bench.resources["switch"], timeout_s=T)
    try:
        assert s.closed == set()
        with pytest.raises(LimitError, match=r"not known in this session \(\*RST first\)"):
            s.connect([(1, 1)])   # before the reset the relays are unknown
        start = count(bench)
        s.initialize()
        assert since(bench, start) == ["*RST", ERRQ, "*IDN?",
                                       'print(channel.getclose("allslots"))']
        assert s.identity.startswith("Keithley Instruments Inc., Model 707B")
        assert s.closed == set() == set(bench.closed_relays())
    finally:
        s.close()


def test_size_and_cards_come_from_the_instrument():
    for cards, outputs in ((1, 12), (2, 24), (6, 72)):
        b = make_bench(cards)
        try:
            s = K707B(b.resources["switch"], timeout_s=T)
            assert s.card_types() == {n: "7174A" for n in range(1, cards + 1)}
            assert s.size() == (8, outputs)
            s.close()
        finally:
            b.stop()


def test_connect_disconnect_open_all_in_one_message_each(bench, switch):
    core = bench.cores["switch"]
    start = count(bench)
    switch.connect([(1, 13), (2, 14), (2, 15), (1, 1)])
    assert since(bench, start) == ['channel.close("1A01,2A01,2B02,2B03")', ERRQ]
    assert core.closed == {(1, 13), (2, 14), (2, 15), (1, 1)} == switch.closed == bench.closed_relays()
    start = count(bench)
    switch.connect([(1, 13), (3, 2)])   # (1, 13) is closed already: only (3, 2) is sent
    switch.disconnect([(2, 14), (5, 5)])   # (5, 5) was never closed
    assert since(bench, start) == ['channel.close("1C02")', ERRQ,
                                   'channel.open("2B02")', ERRQ]
    assert core.closed == {(1, 13), (2, 15), (1, 1), (3, 2)} == switch.closed
    switch.open_all()
    assert core.closed == frozenset() and switch.closed == set() and bench.closed_relays() == frozenset()


def test_a_long_connect_is_split_and_refused_as_a_whole():
    b = make_bench(6)
    try:
        s = K707B(b.resources["switch"], timeout_s=T)
        s.initialize()
        s.connect([(2, 48)])
        received = b.servers["switch"].received
        start = len(received())
        with pytest.raises(LimitError, match="inputs 1 and 2 together on output 48"):
            s.connect([(1, o) for o in range(1, 49)])   # the last of 48 routes joins two inputs
        assert received()[start:] == []
        wanted = {(1, o) for o in range(1, 48)} | {(3, o) for o in range(49, 61)}
        s.connect(wanted)
        closes = [m for m in received()[start:] if m.startswith("channel.close")]
        assert [m.count(",") + 1 for m in closes] == [48, 11]
        assert b.cores["switch"].closed == wanted | {(2, 48)} == s.closed
        s.close()
    finally:
        b.stop()


def test_two_inputs_on_one_output_are_refused_without_sending(bench, switch):
    switch.connect([(1, 13)])
    start = count(bench)
    with pytest.raises(LimitError, match="inputs 1 and 2 together on output 13"):
        switch.connect([(2, 13)])
    with pytest.raises(LimitError, match="output 14"):
        switch.connect([(3, 14), (4, 14)])
    assert since(bench, start) == []
    assert bench.cores["switch"].closed == {(1, 13)} == switch.closed
    assert not bench.hazards


@pytest.mark.parametrize("message, why", [
    ('channel.close("2B01")', "together on output 13"),
    ("channel.close('2A01:2B01')", "together on output 13"),
    ('channel.close("1A01") channel.close("1B01")', "together on output 1"),
    ('channel.exclusiveclose("2B01")', "together on output 13"),   # the old relay may still be closed
    ('channel.close("allslots")', "whole slot"),
    ('channel.close("Chans")', "channel patterns are not checked"),
    ('channel.close("1A05:1A01")', "backwards"),
    ('channel.close("")', "empty"),
    ("for i = 1, 12 do channel.close('1B' .. i) end", "not a TSP statement"),
    ('channel.close("1B01") -- comment', "not a TSP statement"),
    ('Channel.close("1C01")', "not a TSP statement"),
    ('channel.pattern.setimage("1B01", "p")', "not a TSP statement"),
    ("*TST?", "not a common command"),
    ('*RST; channel.close("1A01")', "not a common command"),
])
def test_the_grammar_refuses_what_it_cannot_prove_safe(bench, switch, message, why):
    switch.connect([(1, 13)])
    start = count(bench)
    for send in (switch.write, switch.send):
        with pytest.raises(LimitError, match=why):
            send(message)
    assert since(bench, start) == []
    assert not bench.hazards


def test_a_range_is_checked_in_both_of_its_readings(bench, switch):
    """`1A11:1B02` is A11, A12, B01, B02 in channel order (no column twice) but the rectangle
    A..B x 02..11 read from its corners, which puts rows A and B on the same columns."""
    start = count(bench)
    with pytest.raises(LimitError, match="inputs 1 and 2 together on output 2"):
        switch.send('channel.close("1A11:1B02")')
    with pytest.raises(LimitError, match="inputs 1 and 2 together on output 2"):
        switch.send('channel.exclusiveclose("1A11:1B02")')
    assert since(bench, start) == []
    switch.connect([(2, 3)])   # B03; A01:A05 is one row, the same in both readings
    with pytest.raises(LimitError, match="inputs 1 and 2 together on output 3"):
        switch.send('channel.close("1A01:1A05")')
    with pytest.raises(LimitError, match="inputs 1 and 2 together on output 3"):
        switch.send('channel.exclusiveclose("1A01:1A05")')   # the instrument may make before it breaks
    switch.send('channel.close("1A04:1A05")')
    assert bench.cores["switch"].closed == {(2, 3), (1, 4), (1, 5)} == switch.closed


def test_raw_statements_the_grammar_can_prove_safe_are_sent_and_tracked(bench, switch):
    switch.send('channel.close("1A01, 1A02")')
    switch.send("channel.exclusiveclose('1A02,1A12,1B03')")
    assert switch.closed == {(1, 2), (1, 12), (2, 3)} == bench.cores["switch"].closed
    switch.send('channel.open("1A11:1B02")')   # A11, A12, B01, B02; only A11 and B02 under both readings
    assert bench.cores["switch"].closed == {(1, 2), (2, 3)}
    assert switch.closed == {(1, 2), (1, 12), (2, 3)}   # A12 may still be closed, as far as the guard can tell
    # what a sent message prints comes before the error queue's answer, and is skipped
    switch.send('channel.reset("allslots")', "print(errorqueue.count)", 'print(channel.getclose("slot1"))')
    assert switch.query('print(channel.getclose("slot1"))') == "1A02;1B03"
    switch.send('channel.exclusiveclose("")')
    assert switch.closed == set() == bench.cores["switch"].closed


def test_instrument_error_names_code_and_message_and_clears_the_queue(bench, switch):
    with pytest.raises(InstrumentError) as info:
        switch.connect([(1, 30)])   # slot 3 is empty
    err = info.value
    assert (err.instrument, err.code) == ("switch", -222)
    assert "3A06" in err.message and 'channel.close("3A06")' in err.command
    assert switch.query("print(errorqueue.count)") == "0.00000e+00"
    assert (1, 30) in switch.closed   # not confirmed: counted as possibly closed
    assert bench.cores["switch"].closed == frozenset()


def test_a_lost_error_query_reply_is_asked_again(bench, switch):
    bench.servers["switch"].faults.lose_next_reply = True
    start = count(bench)
    switch.connect([(1, 1)])
    assert since(bench, start) == ['channel.close("1A01")', ERRQ, ERRQ]
    assert switch.closed == {(1, 1)}


def test_read_only_queries_are_retried_once_and_garbage_is_reported(bench, switch):
    switch.connect([(1, 1)])
    server = bench.servers["switch"]
    server.faults.lose_next_reply = True
    assert switch.read_closed() == {(1, 1)}
    assert server.received()[-2:] == ['print(channel.getclose("allslots"))'] * 2
    server.faults.garble_next = 1          # a garbled reply to a read-only query: asked again
    assert switch.read_closed() == {(1, 1)}
    server.faults.garble_next = 2          # garbled twice: the bounded retry gives up, and says so
    with pytest.raises(ReplyError):
        switch.read_closed()


def test_safe_state_opens_every_relay_even_after_a_dropped_connection(bench, switch):
    switch.connect([(1, 13), (2, 14)])
    start = count(bench)
    switch.safe_state()
    assert since(bench, start) == ['channel.open("allslots")', ERRQ]
    switch.connect([(1, 13), (2, 14)])
    bench.servers["switch"].faults.drop_next = True
    switch.safe_state()
    assert bench.closed_relays() == frozenset() and switch.closed == set()


def test_grammar_state_is_unknown_until_reset():
    g = TspGrammar()
    s = g.unknown_state()
    g.apply(s, 'channel.open("1A01")', "")
    assert s.closed is None
    g.apply(s, "*rst", "")
    assert s.closed == set()
    assert g.doubt(s, g.unknown_state()).closed is None

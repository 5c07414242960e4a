"""The 707B TSP core: what it prints, the relays it closes, its channel lists and errors;
and the same core served on a socket, spoken to with raw pyvisa (no 707B client exists on
PyPI), with CR or LF ending a message."""

import ast
from pathlib import Path

import pytest
import pyvisa

import simulator.k707b as k707b
from simulator.k707b import K707BCore
from simulator.server import InstrumentServer


@pytest.fixture
def changes():
    return []


@pytest.fixture
def core(changes):
    return K707BCore(cards=2, on_change=changes.append)


def one(core, message):
    (reply,) = core.handle(message)
    return reply


def errors(core):
    """Every queued error as (code, message), read the way a client does."""
    out = []
    while True:
        code, message, severity, node = one(core, "print(errorqueue.next())").split("\t")
        if float(code) == 0:
            assert (message, float(severity)) == ("Queue Is Empty", 0)
            return out
        assert (float(severity), float(node)) == (20, 1)
        out.append((int(float(code)), message))


def codes(core):
    return [code for code, _ in errors(core)]


def closed(core):
    return one(core, 'print(channel.getclose("allslots"))')


# ---------------------------------------------------------------- identity, printing


def test_framing_attributes():
    assert (K707BCore.read_termination, K707BCore.write_termination, K707BCore.message_ends) == ("\n", "\n", "\r\n")


def test_common_commands(core):
    assert one(core, "*IDN?").startswith("Keithley Instruments Inc., Model 707B, ")
    assert core.handle("*OPC?") == ["1"]
    assert core.handle("*RST") == []
    assert errors(core) == []


def test_nothing_is_answered_unless_printed(core):
    assert core.handle('channel.close("1A01")') == []
    assert core.handle("errorqueue.next()") == []
    assert core.handle('channel.getclose("allslots")') == []


def test_print_formats_numbers_and_separates_values_with_tabs(core):
    assert one(core, "print(errorqueue.count)") == "0.00000e+00"
    core.handle("bogus()")
    core.handle("bogus()")
    assert one(core, "print(errorqueue.count)") == "2.00000e+00"
    assert one(core, 'print("a", 1, nil, true)') == "a\t1.00000e+00\tnil\ttrue"


def test_several_statements_print_one_line_each(core):
    assert core.handle('channel.close("1A01"); print(channel.getclose("allslots")) print(errorqueue.count)') == [
        "1A01", "0.00000e+00"]


def test_slot_idn_reports_installed_cards(core):
    assert one(core, "print(slot[1].idn)").startswith("7174A,")
    assert one(core, "print(slot[2].idn)").startswith("7174A,")
    assert one(core, "print(slot[3].idn)") == k707b.EMPTY_SLOT_IDN


# ---------------------------------------------------------------- relays


def test_close_reports_rows_as_inputs_and_slot_columns_as_outputs(core, changes):
    core.handle('channel.close("1A01,1H12,2B03")')
    assert core.closed == {(1, 1), (8, 12), (2, 15)}
    assert changes == [frozenset({(1, 1), (8, 12), (2, 15)})]
    assert closed(core) == "1A01;1H12;2B03"


def test_getclose_sorts_and_says_nil_when_nothing_is_closed(core):
    assert closed(core) == "nil"
    core.handle('channel.close("2A01, 1C03, 1A05")')
    assert closed(core) == "1A05;1C03;2A01"
    assert one(core, 'print(channel.getclose("slot2"))') == "2A01"
    assert one(core, 'print(channel.getclose("1A01:1A12"))') == "1A05"


def test_range_runs_in_channel_order(core):
    core.handle('channel.close("1A01:1A05, 1C03")')   # the manual's example
    assert closed(core) == "1A01;1A02;1A03;1A04;1A05;1C03"
    core.handle('channel.exclusiveclose("1A11:1B02")')   # GUESS: slot, row, column order
    assert closed(core) == "1A11;1A12;1B01;1B02"
    core.handle('channel.exclusiveclose("1A01:1H12")')
    assert len(core.closed) == 96


def test_close_appends_open_removes_and_allslots_opens_everything(core, changes):
    core.handle('channel.close("1A01")')
    core.handle('channel.close("1B02")')
    assert core.closed == {(1, 1), (2, 2)}
    core.handle('channel.open("1A01")')
    assert core.closed == {(2, 2)}
    core.handle('channel.close("2A01")')
    core.handle('channel.open("slot2")')
    assert core.closed == {(2, 2)}
    core.handle('channel.open("allslots")')
    assert core.closed == frozenset()
    assert changes[-1] == frozenset() and len(changes) == 6


def test_exclusiveclose_opens_the_others_and_empty_opens_all(core):
    core.handle('channel.close("1A01,1B02")')
    core.handle('channel.exclusiveclose("1B02,2C03")')
    assert core.closed == {(2, 2), (3, 15)}
    core.handle('channel.exclusiveclose("")')
    assert core.closed == frozenset()
    assert errors(core) == []


def test_rst_and_reset_open_everything(core):
    core.handle('channel.close("1A01")')
    core.handle("*RST")
    assert core.closed == frozenset()
    core.handle('channel.close("1A01") reset()')
    assert core.closed == frozenset()


def test_on_change_only_on_a_change(core, changes):
    core.handle('channel.open("allslots")')
    core.handle('channel.close("1A01")')
    core.handle('channel.close("1A01")')
    assert changes == [frozenset({(1, 1)})]


def test_call_with_a_string_literal_argument(core):
    core.handle('channel.close"1A02"')   # Lua's f"str" call
    assert core.closed == {(1, 2)}


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("statement, code", [
    ('channel.close("")', -224),            # an empty channel list
    ('channel.open("")', -224),
    ('channel.close("allslots")', -224),    # close takes no slots (manual)
    ('channel.close("slot1")', -224),
    ('channel.exclusiveclose("allslots")', -224),
    ('channel.close("1A01,,1A02")', -224),
    ('channel.close("1A05:1A01")', -224),   # a range runs upwards
    ('channel.close("Chans")', -224),       # no such channel pattern
    ('channel.close("1I01")', -224),        # no row I
    ('channel.close("3A01")', -222),        # slot 3 is empty
    ('channel.close("1A13")', -222),        # 12 columns
    ('channel.close("1A00")', -222),
    ('channel.open("slot4")', -222),
    ("channel.close()", -286),
    ("channel.close(1)", -286),
    ("channel.shut('1A01')", -286),
    ("print(nothing.here)", -286),
    ("for i = 1, 3 do channel.close('1A01') end", -285),
    ("x = 1", -285),
    ("channel.close('1A01') -- comment", -285),
    ("*FOO", -285),
])
def test_error_codes(core, statement, code):
    assert core.handle(statement) == []
    assert codes(core) == [code]
    assert core.closed == frozenset()


def test_error_messages_are_tsp_style(core):
    core.handle("channel.shut('1A01')")
    core.handle("for")
    assert errors(core) == [
        (-286, "TSP Runtime error at line 1: attempt to call field 'shut' (a nil value)"),
        (-285, "TSP Syntax error at line 1: unexpected symbol near 'for'")]


def test_a_bad_channel_closes_nothing_of_its_list(core, changes):
    core.handle('channel.close("1A01,3A01")')
    assert core.closed == frozenset() and changes == []


def test_an_error_aborts_the_rest_of_the_chunk(core):
    assert core.handle('channel.close("1A01") channel.close("9Z99") print(errorqueue.count)') == []
    assert core.closed == {(1, 1)}
    assert codes(core) == [-224]


def test_a_syntax_error_runs_nothing(core):
    assert core.handle('channel.close("1A01") print(errorqueue.count) )') == []
    assert core.closed == frozenset()
    assert codes(core) == [-285]


def test_errorqueue_clear_and_cls(core):
    core.handle("bogus()")
    core.handle("errorqueue.clear()")
    assert errors(core) == []
    core.handle("bogus()")
    core.handle("*CLS")
    assert errors(core) == []


def test_one_card_frame():
    c = K707BCore(cards=1)
    c.handle('channel.close("2A01")')
    assert codes(c) == [-222]
    c.handle('channel.close("1H12")')
    assert c.closed == {(8, 12)}


def test_constructor_and_emulate_check_the_card_count(changes):
    with pytest.raises(ValueError):
        K707BCore(cards=0)
    with pytest.raises(ValueError):
        K707BCore(cards=7)
    c = K707BCore.emulate(changes.append, {"cards": 6}, None)
    c.handle('channel.close("6H12")')
    assert changes == [frozenset({(8, 72)})]
    assert K707BCore.emulate(changes.append, {}, None).cards == 2


def test_simulator_module_imports_only_stdlib():
    tree = ast.parse(Path(k707b.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "typing", "re"}


# ---------------------------------------------------------------- on a socket, through pyvisa


@pytest.fixture
def served(changes):
    server = InstrumentServer(K707BCore(cards=2, on_change=changes.append), "707B").start()
    rm = pyvisa.ResourceManager("@py")
    res = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    yield server, res
    res.close()
    server.stop()


def test_through_pyvisa_raw(served, changes):
    server, res = served
    assert "Model 707B" in res.query("*IDN?")
    res.write('channel.close("1A01,2H12")')
    assert res.query('print(channel.getclose("allslots"))') == "1A01;2H12"
    assert changes == [frozenset({(1, 1), (8, 24)})]
    code, message = res.query("print(errorqueue.next())").split("\t")[:2]
    assert (float(code), message) == (0, "Queue Is Empty")
    assert server.received()[1] == 'channel.close("1A01,2H12")'


def test_cr_alone_ends_a_message(served):
    server, res = served
    res.write_raw(b'channel.close("1B02")\rprint(channel.getclose("allslots"))\r')
    assert res.read() == "1B02"
    res.write_raw(b"*OPC?\r\n")
    assert res.read() == "1"
    assert server.received() == ['channel.close("1B02")', 'print(channel.getclose("allslots"))', "*OPC?"]

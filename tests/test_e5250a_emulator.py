"""The E5250A text core: exact replies, relay state, connection rules and SCPI errors."""

import ast
from pathlib import Path

import pytest

import simulator.e5250a as e5250a
from simulator.e5250a import E5250ACore


@pytest.fixture
def changes():
    return []


@pytest.fixture
def core(changes):
    c = E5250ACore(cards=2, on_change=changes.append)
    c.handle("*CLS")  # drop the power-on bit so *ESR? starts at 0
    return c


def one(core, message):
    (reply,) = core.handle(message)
    return reply


def errors(core):
    out = []
    while (reply := one(core, ":SYST:ERR?")) != '0,"No error"':
        out.append(reply)
    return out


# ---------------------------------------------------------------- identity and status


def test_class_attributes():
    assert E5250ACore.name == "E5250A"
    assert E5250ACore.read_termination == "\n"
    assert E5250ACore.write_termination == "\n"


def test_idn_default_and_override():
    assert one(E5250ACore(), "*IDN?") == "Agilent Technologies,E5250A,0,B.01.02"
    assert one(E5250ACore(idn="X,Y,1,2"), "*idn?") == "X,Y,1,2"


def test_opc_tst_and_empty_error_queue(core):
    assert core.handle("*OPC?") == ["1"]
    assert core.handle("*TST?") == ["0"]
    assert core.handle(":SYST:ERR?") == ['0,"No error"']
    assert core.handle("SYSTEM:ERROR:NEXT?") == ['0,"No error"']


def test_esr_power_on_then_cleared_on_read():
    c = E5250ACore()
    assert one(c, "*ESR?") == "128"
    assert one(c, "*ESR?") == "0"


def test_esr_bits_for_command_and_execution_errors_and_opc(core):
    core.handle(":ROUT:CLOSX (@00101)")
    assert one(core, "*ESR?") == "32"
    core.handle(":ROUT:CLOS (@01101)")
    assert one(core, "*ESR?") == "16"
    core.handle("*OPC")
    assert one(core, "*ESR?") == "1"


def test_cls_clears_queue_and_esr(core):
    core.handle(":FOO")
    core.handle("*CLS")
    assert one(core, "*ESR?") == "0"
    assert errors(core) == []


def test_card_type():
    c = E5250ACore(cards=2)
    assert c.handle(":SYST:CTYP? 1;:SYST:CTYP? 2;:SYST:CTYP? 3;:SYST:CTYP? 4") == [
        "E5252A", "E5252A", "NONE", "NONE"]
    c.handle(":SYST:CTYP? 5")
    assert errors(c) == ['-222,"Data out of range"']


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("command", [
    ":ROUTe:CLOSe (@00105)",
    ":ROUT:CLOS (@00105)",
    "ROUT:CLOS (@00105)",
    ":rout:clos:list (@00105)",
    "CLOS (@00105)",
    ":CLOSE:LIST (@00105)",
    "  :Rout:Clos   ( @ 00105 )  ",
    "\t:ROUT:CLOS\t(@00105)",
])
def test_header_forms_and_whitespace(core, command):
    assert core.handle(command) == []
    assert core.closed == {(1, 5)}
    assert errors(core) == []


def test_semicolon_joined_with_relative_path(core):
    replies = core.handle(":ROUT:CONN:RULE 0,SROU;SEQ 0,MBBR;RULE? 0;SEQ? 0;*OPC?;:ROUT:CLOS? (@00101)")
    assert replies == ["SROU", "MBBR", "1", "0"]
    assert errors(core) == []


def test_relative_path_after_root_optional_header(core):
    assert core.handle("CLOS (@00101);OPEN (@00101);CLOS? (@00101)") == ["0"]
    assert core.handle(":ROUT:CLOS (@00102);CLOS? (@00102)") == ["1"]


def test_path_resets_at_each_message(core):
    core.handle(":ROUT:CONN:RULE 0,SROU")
    assert core.handle("SEQ? 0") == []  # root-level SEQ does not exist
    assert errors(core) == ['-113,"Undefined header"']


def test_trailing_and_empty_units_are_ignored(core):
    assert core.handle("*OPC?;;*OPC?;") == ["1", "1"]
    assert errors(core) == []


# ---------------------------------------------------------------- relays, auto configuration


def test_close_open_single_channels_auto(core, changes):
    core.handle(":ROUT:CLOS (@00101,01024)")  # card 2's output 12 is output 24 in auto mode
    assert core.closed == {(1, 1), (10, 24)}
    assert one(core, ":ROUT:CLOS? (@00101,00102,01024)") == "1,0,1"
    assert one(core, ":ROUT:OPEN? (@00101,00102,01024)") == "0,1,0"
    assert one(core, ":ROUT:CLOS:CARD? 0") == "(@00101,01024)"
    core.handle(":ROUT:OPEN (@00101)")
    assert core.closed == {(10, 24)}
    assert changes == [frozenset({(1, 1), (10, 24)}), frozenset({(10, 24)})]


def test_range_closes_rectangle_auto(core):
    core.handle(":ROUT:CLOS (@00211:00313)")
    assert core.closed == {(2, 11), (2, 12), (2, 13), (3, 11), (3, 12), (3, 13)}
    assert one(core, ":ROUT:CLOS? (@00211:00312)") == "1,1,1,1"
    core.handle(":ROUT:OPEN (@00312:00213)")  # corners in either order
    assert core.closed == {(2, 11), (3, 11)}
    assert one(core, ":ROUT:CLOS:CARD? 0") == "(@00211,00311)"


def test_empty_card_query_and_list(core):
    assert one(core, ":ROUT:CLOS:CARD? 0") == "(@)"
    assert core.handle(":ROUT:CLOS (@)") == []
    assert core.closed == frozenset()


def test_open_card(core, changes):
    core.handle(":ROUT:CLOS (@00101,00224)")
    core.handle(":ROUT:OPEN:CARD 0")
    assert core.closed == frozenset()
    core.handle(":ROUT:CLOS (@00101);:ROUT:OPEN:CARD ALL")
    assert core.closed == frozenset()
    assert len(changes) == 4


def test_on_change_not_called_without_change(core, changes):
    core.handle(":ROUT:OPEN (@00101)")
    core.handle(":ROUT:CLOS (@00101)")
    core.handle(":ROUT:CLOS (@00101)")
    core.handle(":ROUT:OPEN:CARD ALL;:ROUT:OPEN:CARD ALL")
    assert changes == [frozenset({(1, 1)}), frozenset()]


def test_invalid_channel_leaves_state_untouched(core, changes):
    core.handle(":ROUT:CLOS (@00101,01101)")
    assert core.closed == frozenset()
    assert changes == []
    assert errors(core) == ['-222,"Data out of range"']


# ---------------------------------------------------------------- normal configuration


def test_function_switches_configuration(core, changes):
    assert one(core, ":ROUT:FUNC?") == "ACON"
    core.handle(":ROUT:CLOS (@00101)")
    core.handle(":ROUT:FUNC NCON")  # renumbering opens every relay
    assert core.closed == frozenset()
    assert changes[-1] == frozenset()
    assert one(core, ":ROUT:FUNC?") == "NCON"
    core.handle(":ROUT:FUNC ACONFIG")
    assert one(core, ":ROUT:FUNC?") == "ACON"


def test_close_open_in_normal_configuration(core, changes):
    core.handle(":ROUT:FUNC NCON")
    core.handle(":ROUT:CLOS (@10101,20512)")
    assert core.closed == {(1, 1), (5, 24)}  # reported in auto numbering
    assert one(core, ":ROUT:CLOS? (@10101,20512,10512)") == "1,1,0"
    assert one(core, ":ROUT:CLOS:CARD? 1") == "(@10101)"
    assert one(core, ":ROUT:CLOS:CARD? 2") == "(@20512)"
    core.handle(":ROUT:CLOS (@20301:20402)")
    assert one(core, ":ROUT:CLOS:CARD? 2") == "(@20301,20302,20401,20402,20512)"
    core.handle(":ROUT:OPEN:CARD 2")
    assert core.closed == {(1, 1)}
    assert changes[-1] == frozenset({(1, 1)})


def test_card_digit_must_match_mode(core):
    core.handle(":ROUT:CLOS (@10101)")  # card 1 in auto mode
    core.handle(":ROUT:FUNC NCON;:ROUT:CLOS (@00101)")  # card 0 in normal mode
    core.handle(":ROUT:CLOS (@10101:20101)")  # a range across cards
    assert core.closed == frozenset()
    assert errors(core) == ['-222,"Data out of range"'] * 3


# ---------------------------------------------------------------- connection rules


def test_defaults_free_and_bbm(core):
    assert core.handle(":ROUT:CONN:RULE? 0;:ROUT:CONN:SEQ? 0") == ["FREE", "BBM"]


def test_free_allows_multiple_connections(core):
    core.handle(":ROUT:CLOS (@00101,00102,00202)")
    assert core.closed == {(1, 1), (1, 2), (2, 2)}


def test_single_route_displaces_existing_connections(core, changes):
    core.handle(":ROUT:CONN:RULE 0,SROUTE")
    core.handle(":ROUT:CLOS (@00101)")
    core.handle(":ROUT:CLOS (@00124)")  # same input, other card: auto mode is one card
    assert core.closed == {(1, 24)}
    core.handle(":ROUT:CLOS (@00224)")  # same output, other input
    assert core.closed == {(2, 24)}
    core.handle(":ROUT:CLOS (@00303,00304)")  # later channels in a list win
    assert core.closed == {(2, 24), (3, 4)}
    assert changes == [frozenset({(1, 1)}), frozenset({(1, 24)}), frozenset({(2, 24)}),
                       frozenset({(2, 24), (3, 4)})]


def test_make_before_break_joins_two_inputs_for_a_moment(core, changes):
    """Single route with MBBR (or NSEQ): the new route is made while the displaced one still
    holds the output, and the bench sees that moment; BBM breaks first."""
    core.handle(":ROUT:CONN:RULE 0,SROU;:ROUT:CONN:SEQ 0,MBBR;:ROUT:CLOS (@00101)")
    core.handle(":ROUT:CLOS (@00201)")
    assert changes == [frozenset({(1, 1)}), frozenset({(1, 1), (2, 1)}), frozenset({(2, 1)})]
    core.handle(":ROUT:CONN:SEQ 0,NSEQ;:ROUT:CLOS (@00202)")   # input 2 moves: displaced too
    assert changes[-2:] == [frozenset({(2, 1), (2, 2)}), frozenset({(2, 2)})]
    core.handle(":ROUT:CONN:SEQ 0,BBM;:ROUT:CLOS (@00302)")
    assert changes[-1] == frozenset({(3, 2)}) and len(changes) == 6


def test_rule_change_keeps_existing_connections(core):
    core.handle(":ROUT:CLOS (@00101,00102);:ROUT:CONN:RULE ALL,SROU")
    assert core.closed == {(1, 1), (1, 2)}


def test_single_route_is_per_card_in_normal_configuration(core):
    core.handle(":ROUT:FUNC NCON;:ROUT:CONN:RULE ALL,SROU")
    assert core.handle(":ROUT:CONN:RULE? 1;:ROUT:CONN:RULE? 2") == ["SROU", "SROU"]
    core.handle(":ROUT:CLOS (@10101,20101)")  # one path per card
    assert core.closed == {(1, 1), (1, 13)}
    core.handle(":ROUT:CLOS (@10102)")
    assert core.closed == {(1, 2), (1, 13)}


def test_rule_per_card_in_normal_configuration(core):
    core.handle(":ROUT:FUNC NCON;:ROUT:CONN:RULE 2,SROU;:ROUT:CONN:SEQ 1,NSEQ")
    assert core.handle(":ROUT:CONN:RULE? 1;:ROUT:CONN:RULE? 2;:ROUT:CONN:SEQ? 1;:ROUT:CONN:SEQ? 2") == [
        "FREE", "SROU", "NSEQ", "BBM"]
    core.handle(":ROUT:CLOS (@10101,10102,20101,20102)")
    assert core.closed == {(1, 1), (1, 2), (1, 14)}


def test_sequence_spellings(core):
    for spelling, answer in [("MBBREAK", "MBBR"), ("nseq", "NSEQ"), ("NSEQUENCE", "NSEQ"), ("bbm", "BBM")]:
        core.handle(f":ROUT:CONN:SEQ ALL,{spelling}")
        assert one(core, ":ROUT:CONN:SEQ? 0") == answer


# ---------------------------------------------------------------- reset


def test_rst_opens_everything_and_restores_defaults(core, changes):
    core.handle(":ROUT:FUNC NCON;:ROUT:CONN:RULE ALL,SROU;:ROUT:CONN:SEQ ALL,MBBR")
    core.handle(":ROUT:CLOS (@10101,20512)")
    core.handle(":FOO")  # an error in the queue survives *RST
    core.handle("*RST")
    assert core.closed == frozenset()
    assert changes[-1] == frozenset()
    assert core.handle(":ROUT:FUNC?;:ROUT:CONN:RULE? 0;:ROUT:CONN:SEQ? 0") == ["ACON", "FREE", "BBM"]
    assert errors(core) == ['-113,"Undefined header"']


def test_reset_method_calls_on_change_only_when_something_was_closed(core, changes):
    core.reset()
    assert changes == []
    core.handle(":ROUT:CLOS (@00101)")
    core.reset()
    assert changes == [frozenset({(1, 1)}), frozenset()]


def test_cpon_opens_card_and_restores_its_settings(core):
    core.handle(":ROUT:FUNC NCON;:ROUT:CONN:RULE ALL,SROU;:ROUT:CLOS (@10101,20101)")
    core.handle(":SYST:CPON 1")
    assert core.closed == {(1, 13)}
    assert core.handle(":ROUT:CONN:RULE? 1;:ROUT:CONN:RULE? 2") == ["FREE", "SROU"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("message, code", [
    (":ROUT:CLOS:CARD 0", '-100,"Command error"'),  # query-only header sent as a command
    (":ROUT:OPEN:CARD? 0", '-100,"Command error"'),  # command-only header sent as a query
    ("*IDN", '-100,"Command error"'),
    (":ROUT:CLOS (@00101", '-102,"Syntax error"'),
    (":ROUT:CLOS 00101", '-102,"Syntax error"'),
    (":ROUT:CLOS (@0101)", '-102,"Syntax error"'),
    (":ROUT:CLOS(@00101)", '-102,"Syntax error"'),
    (":ROUT::CLOS (@00101)", '-102,"Syntax error"'),
    (":ROUT:CONN:RULE 0,", '-102,"Syntax error"'),
    ("*RST 1", '-108,"Parameter not allowed"'),
    (":ROUT:CONN:RULE 0,FREE,1", '-108,"Parameter not allowed"'),
    (":SYST:ERR? 1", '-108,"Parameter not allowed"'),
    (":ROUT:CLOS", '-109,"Missing parameter"'),
    (":ROUT:CONN:RULE 0", '-109,"Missing parameter"'),
    (":ROUT:CLOS:CARD?", '-109,"Missing parameter"'),
    (":ROUT:CLOSX (@00101)", '-113,"Undefined header"'),
    (":ROUTE:CLO (@00101)", '-113,"Undefined header"'),
    ("*FOO", '-113,"Undefined header"'),
    (":ROUT:CLOS (@01101)", '-222,"Data out of range"'),  # input 11
    (":ROUT:CLOS (@00001)", '-222,"Data out of range"'),  # input 0
    (":ROUT:CLOS (@00125)", '-222,"Data out of range"'),  # output 25 with two cards
    (":ROUT:CONN:RULE 1,FREE", '-222,"Data out of range"'),  # card 1 in auto mode
    (":ROUT:CONN:RULE 0,BOGUS", '-224,"Illegal parameter value"'),
    (":ROUT:FUNC XCON", '-224,"Illegal parameter value"'),
    (":ROUT:CONN:RULE? ALL", '-224,"Illegal parameter value"'),
])
def test_error_codes(core, message, code):
    assert core.handle(message) == []
    assert errors(core) == [code]


def test_output_13_on_one_card_frame():
    c = E5250ACore(cards=1)
    c.handle(":ROUT:CLOS (@00113)")
    assert errors(c) == ['-222,"Data out of range"']
    c.handle(":ROUT:CLOS (@00112)")
    assert c.closed == {(1, 12)}


def test_card_not_installed():
    c = E5250ACore(cards=2)
    c.handle(":ROUT:FUNC NCON;:ROUT:CLOS (@30101);:ROUT:OPEN:CARD 3;:ROUT:CLOS:CARD? 3")
    assert errors(c) == ['-222,"Data out of range"'] * 3


def test_error_queue_is_fifo(core):
    core.handle(":FOO")
    core.handle(":ROUT:CLOS (@01101)")
    assert core.handle(":SYST:ERR?;:SYST:ERR?;:SYST:ERR?") == [
        '-113,"Undefined header"', '-222,"Data out of range"', '0,"No error"']


def test_queue_overflow(core):
    for _ in range(e5250a.ERROR_QUEUE_LENGTH + 5):
        core.handle(":FOO")
    queue = errors(core)
    assert len(queue) == e5250a.ERROR_QUEUE_LENGTH
    assert queue[:-1] == ['-113,"Undefined header"'] * (e5250a.ERROR_QUEUE_LENGTH - 1)
    assert queue[-1] == '-350,"Queue overflow"'


def test_command_error_discards_rest_of_message(core):
    assert core.handle(":ROUT:CLOS (@00101);:FOO;:ROUT:CLOS (@00102);*OPC?") == []
    assert core.closed == {(1, 1)}
    assert errors(core) == ['-113,"Undefined header"']


def test_execution_error_skips_only_its_command(core):
    assert core.handle(":ROUT:CLOS (@01101);:ROUT:CLOS (@00102);*OPC?") == ["1"]
    assert core.closed == {(1, 2)}
    assert errors(core) == ['-222,"Data out of range"']


def test_failed_query_gives_no_reply_but_later_queries_answer(core):
    assert core.handle(":ROUT:CLOS? (@01101);*OPC?") == ["1"]
    core.handle(":FOO")
    assert core.handle("*IDN?") == ["Agilent Technologies,E5250A,0,B.01.02"]


def test_constructor_checks_card_count():
    with pytest.raises(ValueError):
        E5250ACore(cards=0)
    with pytest.raises(ValueError):
        E5250ACore(cards=5)


def test_four_cards_auto_numbering():
    c = E5250ACore(cards=4)
    c.handle(":ROUT:CLOS (@01048)")
    assert c.closed == {(10, 48)}
    assert one(c, ":ROUT:CLOS:CARD? 0") == "(@01048)"


def test_simulator_module_imports_only_stdlib():
    tree = ast.parse(Path(e5250a.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "typing"}

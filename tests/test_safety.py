"""Safety (DESIGN.md section 7), proven from the emulators' command logs.

1. A command outside the bench's limits is refused on the host: the emulator never
   receives it (nor anything sent on its behalf, such as the bias set-up of a pulse).
2. After an exception, a Ctrl-C or a SIGTERM in the middle of tuning, every source ends at
   0 V and disabled and every relay open (`helpers.assert_safe`).

Everything talks to the emulated instruments through pyvisa-py over loopback sockets; the
faults (garbled replies, dropped connections, hung instruments) are the emulators' own.
"""

from __future__ import annotations

import _thread
import itertools
import re
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest

from drivers.b1500a import B1500A
from drivers.errors import DriverError, LimitError
from helpers import assert_safe, memlab_cli, received
from memlab.bench import open_crossbar
from protocols.tuning import TuneArrayParams, checkerboard, tune_array

TARGETS = checkerboard(8, 8, 150e-6, 400e-6)
PARAMS = TuneArrayParams()
ONE_FAILURE = PARAMS.model_copy(update={"tune": PARAMS.tune.model_copy(update={"max_failures": 1})})


# --- helpers --------------------------------------------------------------------------------

def with_timeout(config, seconds: float):
    """The bench with every instrument's VISA timeout set to `seconds`."""
    instruments = {name: inst.model_copy(update={"timeout_s": seconds})
                   for name, inst in config.instruments.items()}
    return config.model_copy(update={"instruments": instruments})


def logs(bench) -> dict[str, list[str]]:
    return {name: received(bench, name) for name in bench.servers}


def sent_since(bench, before: dict[str, list[str]]) -> dict[str, list[str]]:
    """What each instrument received after the `logs(bench)` snapshot `before`."""
    return {name: cmds[len(before[name]):] for name, cmds in logs(bench).items()}


NOTHING = {"analyzer": [], "switch": []}


def assert_within_limits(bench, limits) -> None:
    """No command the analyzer ever received exceeds the bench limits, and the switch never
    connected two inputs together."""
    for cmd in received(bench, "analyzer"):
        head, _, rest = cmd.partition(" ")
        args = [float(a) for a in rest.split(",")] if rest else []
        if head == "DV":
            assert abs(args[2]) <= limits.max_line_voltage, cmd
            if len(args) > 3:
                assert 0 < args[3] <= limits.compliance_current, cmd
        elif head == "PV":
            assert max(abs(args[2]), abs(args[3])) <= limits.max_line_voltage, cmd
            assert 0 < args[4] <= limits.compliance_current, cmd
        elif head == "PT":
            assert args[1] <= limits.max_pulse_width, cmd
    assert bench.hazards == []


def assert_sources_off(bench) -> None:
    """Every source output off, and nothing switched one on after the analyzer's last CL."""
    assert all(v is None for v in bench.source_outputs().values()), bench.source_outputs()
    cmds = received(bench, "analyzer")
    last_cl = max(i for i, c in enumerate(cmds) if c == "CL")
    assert not any(c.startswith(("CN", "DV", "PV", "XE")) for c in cmds[last_cl:]), cmds[last_cl:]


def last_route_command(bench) -> str:
    """The switch's last relay command (':ROUT:CLOS ...', ':ROUT:OPEN ...')."""
    return [c for c in received(bench, "switch") if c.upper().startswith((":ROUT:CLOS ", ":ROUT:OPEN"))][-1]


def on_operation(n: int, action):
    """A crossbar recorder that runs `action` when the n-th operation has been recorded."""
    count = itertools.count(1)

    def recorder(op, fields):
        if next(count) == n:
            action()
    return recorder


def energized(bench) -> bool:
    """Some source output is on, and some relay closed (the bench is not trivially safe)."""
    return any(v is not None for v in bench.source_outputs().values()) and bool(bench.closed_relays())


FAST_TIMEOUT = 1.0   # short, but far beyond any reply of a busy machine's emulator (0.3 s was not)


@pytest.fixture
def fast(emulation):
    """The emulated bench, with short VISA timeouts (a hung instrument is noticed quickly)."""
    bench, live = emulation
    return bench, with_timeout(live, FAST_TIMEOUT)


# --- 1. limits: refused before they are sent -----------------------------------------------------

@pytest.mark.parametrize("voltage", [2.6, -2.6, 10.0])
def test_pulse_above_max_device_voltage_is_never_sent(emulation, xbar, voltage):
    bench, live = emulation
    xbar.read(2, 3)
    before = logs(bench)
    with pytest.raises(LimitError, match="max_device_voltage"):
        xbar.pulse(2, 3, voltage, 1e-3)
    assert sent_since(bench, before) == NOTHING
    with pytest.raises(LimitError, match="max_line_voltage"):  # straight at the source, too
        xbar.source.pulse(1, 0.0, voltage, 1e-3)
    assert sent_since(bench, before) == NOTHING
    assert_within_limits(bench, live.limits)


@pytest.mark.parametrize("levels", [{3: 2.6}, {1: 0.5, 3: -2.51}, {4: 0.0, 2: 1e3}])
def test_dc_level_above_max_line_voltage_is_never_sent(emulation, xbar, levels):
    """Not even the in-limit levels that come before the bad one in the same call."""
    bench, live = emulation
    before = logs(bench)
    outputs = bench.source_outputs()
    with pytest.raises(LimitError, match="max_line_voltage"):
        xbar.source.set_voltages(levels)
    with pytest.raises(LimitError, match="max_line_voltage"):
        xbar.source.measure_current(2, levels=levels)
    assert sent_since(bench, before) == NOTHING
    assert bench.source_outputs() == outputs
    assert_within_limits(bench, live.limits)


@pytest.mark.parametrize("message", ["DV 1,0,50", "DV1,0,0.2,0.5", "CN 1;DV 3, 0, -2.6, 1e-3",
                                     "PT 0,0.02,0.03;PV 1,0,0,1.0,0.01;MM 3,1", "PV 1,0,0,2.6",
                                     "DI 1,0,1e-3,2", "DV 1,0,abc"])
def test_raw_messages_pass_the_limit_guard_too(emulation, xbar, message):
    """Even a hand-written message, bypassing the command builders, is checked on the host."""
    bench, _ = emulation
    before = logs(bench)
    with pytest.raises(LimitError):
        xbar.source.send(message)
    with pytest.raises(LimitError):
        xbar.source.write(message)
    assert sent_since(bench, before) == NOTHING


@pytest.mark.parametrize("terminator", ["\n", "\r", "\r\n", "\x00"])
def test_a_terminator_inside_a_message_is_refused(emulation, xbar, terminator):
    """`CN` then a line end then `DV 1,0,20,0.1`: the instrument would run the second part
    as a message of its own (20 V, 100 mA on a 2.5 V / 10 mA bench)."""
    bench, _ = emulation
    before = logs(bench)
    for send in (xbar.source.write, xbar.source.send, xbar.source.query):
        with pytest.raises(LimitError, match="inside a message"):
            send(f"CN{terminator}DV 1,0,20,0.1")
    with pytest.raises(LimitError, match="inside a message"):
        xbar.switch.send(f":ROUT:OPEN:CARD ALL{terminator}:ROUT:CLOS (@00101,00201)")
    assert sent_since(bench, before) == NOTHING


def test_measurement_modes_need_a_set_up_of_this_session(emulation, xbar):
    """MM 3 needs a PV of this session on its channel, XE an MM of this session, and no
    sweep mode runs at all: the instrument may hold another program's sweep."""
    bench, _ = emulation
    src = xbar.source
    before = logs(bench)
    with pytest.raises(LimitError, match="no measurement mode set up in this session"):
        src.write("XE")                   # connect reset the instrument: no mode is ours yet
    with pytest.raises(LimitError, match="needs one channel with a PV set in this session"):
        src.send("MM 3,1")
    for mode in (2, 4, 10, 16):
        with pytest.raises(LimitError, match=f"measurement mode {mode} would run a sweep"):
            src.send(f"MM {mode},1")
    assert sent_since(bench, before) == NOTHING
    src.send("PT 0,0.001,0.005;PV 1,0,0,0.5,0.01;MM 3,1")   # now XE would be a checked pulse
    assert src.guard.state.mode == (3, (1,))


def test_two_outputs_never_further_apart_than_a_device_may_see(emulation, xbar):
    """A device may sit between any two lines: +2 V on one SMU and -2 V on another would put
    4 V across it on a 2.5 V bench, whichever messages set them (CN on a channel already on
    keeps its level)."""
    bench, live = emulation
    src = xbar.source
    src.send("DV 1,0,2,0.01")
    src.send("CN 1")
    before = logs(bench)
    with pytest.raises(LimitError, match=r"-2 V against \+2 V on SMU 1 exceeds max_device_voltage"):
        src.send("DV 3,0,-2,0.01")
    with pytest.raises(LimitError, match="max_device_voltage"):
        src.send("PT 0,0.001,0.005;PV 4,0,0,-1,0.01;MM 3,4;XE")
    assert sent_since(bench, before) == NOTHING
    src.send("DV 1,0,0,0.01;DV 3,0,-2,0.01")   # 1 back to 0 V first: now 2 V apart at most
    assert bench.exposure.device_voltage <= live.limits.max_device_voltage


def test_a_hand_written_switch_close_joining_two_bias_inputs_is_never_sent(emulation, xbar):
    bench, _ = emulation
    xbar.read(0, 0)                       # drive (input 1) on row port 1, row_third (3) on port 2
    before = logs(bench)
    for message in (":ROUT:CLOS (@00301)", ":CLOS (@00102)", ":ROUTE:CLOSE:LIST (@00401,00501)",
                    ":ROUT:CLOS (@00520,00620)"):
        with pytest.raises(LimitError, match="together on output"):
            xbar.switch.send(message)
        with pytest.raises(LimitError, match="together on output"):
            xbar.switch.write(message)
    for message in (":ROUT:CLOS (@00101:00105)", ":ROUT:FUNC NCON;:ROUT:CLOS (@00520)", "*TST?",
                    ":SYST:CPON ALL"):
        with pytest.raises(LimitError):
            xbar.switch.send(message)
    assert sent_since(bench, before) == NOTHING
    assert bench.hazards == []


@pytest.mark.parametrize("message", ["TDV 1,0,50,0.1", "WI 1,1,0,0,1e-3,11,2", "RZ 1", "DI 1,0,1e-3,2"])
def test_commands_the_limits_do_not_cover_are_never_sent(emulation, xbar, message):
    bench, _ = emulation
    before = logs(bench)
    with pytest.raises(LimitError, match="not covered by the bench limits"):
        xbar.source.send(message)
    assert sent_since(bench, before) == NOTHING


def test_pulse_energy_is_checked_across_messages(emulation, xbar):
    """A pulse set up in pieces (PT in one message, PV in the next) is still checked: 2.5 V
    x 10 mA x 10 ms = 250 uJ > 100 uJ, whichever part comes last."""
    bench, _ = emulation
    src = xbar.source
    src.enable([1])
    src.send("PT 0,0.01,0.015")
    before = logs(bench)
    with pytest.raises(LimitError, match="max_pulse_energy"):
        src.send("PV 1,0,0,2.5,0.01")
    assert sent_since(bench, before) == NOTHING
    src.send("PV 1,0,0,0.5,0.01")          # 50 uJ with the 10 ms width: fine
    with pytest.raises(LimitError, match="max_pulse_energy"):
        src.send("PT 0,0.01,0.015;PV 1,0,0,2.5,0.01")
    src.send("*RST")   # the width the instrument now holds is not one this session set
    with pytest.raises(LimitError, match=r"max_pulse_energy .*pulse width unknown: counted as max_pulse_width"):
        src.send("PV 1,0,0,2.5,0.01")      # 2.5 V x 10 mA x 10 ms (the longest allowed)
    src.send("PT 0,0.001,0.005;PV 1,0,0,2.5,0.01")   # with a width of its own: 25 uJ
    assert sent_since(bench, before)["analyzer"][-2:] == ["PV 1,0,0,2.5,0.01", "ERRX?"]


@pytest.mark.parametrize("compliance", [0.02, 0.1, 0.0, -1e-3])
def test_compliance_outside_the_limit_is_never_sent(emulation, xbar, compliance):
    bench, live = emulation
    before = logs(bench)
    src = xbar.source
    with pytest.raises(LimitError, match="compliance"):
        src.send(src.dv_command(1, 0.1, compliance=compliance))
    with pytest.raises(LimitError, match="compliance"):
        src.send(*src.pulse_commands(1, 0.0, 1.0, 1e-3, compliance=compliance))
    assert sent_since(bench, before) == NOTHING
    assert_within_limits(bench, live.limits)


@pytest.mark.parametrize("voltage, width, match", [
    (1.0, 0.02, "pulse width"),          # longer than max_pulse_width (10 ms)
    (2.0, 8e-3, "max_pulse_energy"),     # 2 V x 10 mA x 8 ms = 160 uJ > 100 uJ
    (-2.4, 9e-3, "max_pulse_energy"),
    (1.0, 0.0, "pulse width"),
])
def test_too_long_or_too_energetic_pulse_sends_nothing(emulation, xbar, voltage, width, match):
    """Refused before the crossbar routes the device or biases the lines for it."""
    bench, live = emulation
    xbar.read(0, 0)
    before = logs(bench)
    with pytest.raises(LimitError, match=match):
        xbar.pulse(5, 6, voltage, width)
    assert sent_since(bench, before) == NOTHING
    with pytest.raises(LimitError, match=match):
        xbar.source.pulse(1, 0.0, voltage, width)
    assert sent_since(bench, before) == NOTHING
    assert_within_limits(bench, live.limits)


def test_switch_close_that_would_short_two_inputs_is_never_sent(emulation, xbar):
    bench, live = emulation
    xbar.read(0, 0)  # drive (input 1) on row port 1, row_third (input 3) on rows 2..8, ...
    relays = bench.closed_relays()
    assert (1, 1) in relays and (3, 2) in relays
    before = logs(bench)
    with pytest.raises(LimitError, match="inputs 1 and 3 together on output 1"):
        xbar.switch.connect({(3, 1)})
    with pytest.raises(LimitError, match="together on output 20"):
        xbar.switch.connect({(5, 20), (6, 20)})  # two new routes onto one free output
    with pytest.raises(LimitError, match="inputs 3 and 4 together on output 2$"):
        xbar.switch.connect({(7, 24), (4, 2)})   # one harmless route, one short: neither goes
    assert sent_since(bench, before) == NOTHING
    assert bench.closed_relays() == relays
    assert_within_limits(bench, live.limits)


def test_short_protection_holds_after_a_failed_close(fast):
    """A close whose confirmation comes back garbled may have happened: the switch driver
    must count those relays as closed, or a later route could connect two inputs together."""
    bench, live = fast
    with open_crossbar(live) as xbar:
        xbar.read(0, 0)
        xbar.switch.disconnect({(2, 9), (4, 10)})        # sense off column 0, 2V/3 off column 1
        bench.servers["switch"].faults.garble_next = 1   # the reply to the next close
        with pytest.raises(DriverError, match="garbled"):
            xbar.read(0, 1)                              # closes (2, 10) and (4, 9)
        assert {(2, 10), (4, 9)} <= bench.closed_relays()
        xbar.read(0, 0)                                  # wants (2, 9) and (4, 10) back
        assert bench.hazards == []
    assert_safe(bench)


def test_tuning_with_amplitudes_beyond_the_limits_stops_before_the_pulse(emulation):
    bench, live = emulation
    params = TuneArrayParams.model_validate(
        {"tune": {"set_start": 2.6, "set_stop": 3.0, "reset_start": -2.6, "reset_stop": -3.0}})
    with pytest.raises(LimitError, match="max_device_voltage"):
        with open_crossbar(live) as xbar:
            tune_array(xbar, TARGETS, params)
    assert not any(c.startswith(("PV", "XE")) for c in received(bench, "analyzer"))
    assert_within_limits(bench, live.limits)
    assert_safe(bench)


# --- 2. exceptions mid-tuning, from the emulators themselves ---------------------------------------

@pytest.mark.parametrize("instrument, after_ops", [("analyzer", 25), ("switch", 40)])
def test_garbled_replies_mid_tuning_end_in_the_safe_state(fast, instrument, after_ops):
    bench, live = fast
    state = {}

    def garble():
        state["energized"] = energized(bench)
        bench.servers[instrument].faults.garble_next = 10**6  # garbage from now on

    with pytest.raises(DriverError, match=rf"3 instrument failures in a row; last: .*{instrument}: garbled"):
        with open_crossbar(live) as xbar:
            xbar.recorders.append(on_operation(after_ops, garble))
            tune_array(xbar, TARGETS, PARAMS)
    assert state["energized"]
    assert_safe(bench)
    assert_within_limits(bench, live.limits)


def test_a_few_garbled_replies_are_retried_and_tuning_goes_on(emulation):
    """With the shipped 5 s timeouts: a garbled reply was read in full, so nothing waits for
    a reply still owed after it."""
    bench, live = emulation
    assert live.instruments["analyzer"].timeout_s == 5
    targets = np.full((8, 8), np.nan)
    targets[1, 1:3] = 300e-6

    def garble():
        bench.servers["analyzer"].faults.garble_next = 2  # e.g. a read's reply and its clean-up's

    with open_crossbar(live) as xbar:
        xbar.recorders.append(on_operation(5, garble))
        result = tune_array(xbar, targets, PARAMS)
    failures = [f for r in result.results.values() for f in r.failures]
    assert 1 <= len(failures) <= 2 and all("garbled" in f for f in failures), failures
    assert all(r.tuned for r in result.results.values())
    assert_safe(bench)


def test_a_pulse_that_fails_while_biasing_leaves_every_line_at_0v(fast):
    """The reply to the bias set-up of a pulse comes back garbled: the tuner counts a failure
    and reads the device again, and by then every source is back at 0 V (no half-select
    stress left on the array, no relay moved under bias, no read skewed by the biases)."""
    bench, live = fast
    g0 = float(bench.conductances()[0, 0])
    targets = np.full((8, 8), np.nan)
    targets[0, 0] = 2 * g0  # far from where the device is: the tuner pulses after its first read
    seen = []

    def recorder(op, fields):
        seen.append((op, bench.source_outputs()))
        if len(seen) == 1:  # next analyzer reply: the bias set-up's ERRX?
            bench.servers["analyzer"].faults.garble_next = 1

    with open_crossbar(live) as xbar:
        xbar.recorders.append(recorder)
        result = xbar.tune(0, 0, float(targets[0, 0]),
                           PARAMS.tune.model_copy(update={"max_pulses": 3}))
    assert len(result.failures) == 1 and "pulse +0.70 V" in result.failures[0], result.failures
    assert seen[1][0] == "pulse_not_sent"   # the XE never left: the set-up failed first
    op, outputs = seen[2]
    assert op == "read"
    assert all(out is not None and out[0] == 0.0 for out in outputs.values()), outputs
    assert_safe(bench)
    assert_within_limits(bench, live.limits)


@pytest.mark.parametrize("instrument, after_ops", [("analyzer", 25), ("switch", 40), ("switch", 3)])
def test_dropped_connection_mid_tuning_is_reconnected_after_the_safe_state(fast, instrument, after_ops):
    """The instrument closes the link on its next message: the operation fails, a new
    session puts the bench in its safe state before anything else, the instruments are
    connected again, and tuning goes on (re-reading the device, never repeating a pulse)."""
    bench, live = fast
    state = {}

    def drop():
        state["energized"] = energized(bench)
        state["dropped_at"] = len(bench.servers[instrument].received())
        bench.servers[instrument].faults.drop_next = True

    targets = np.full((8, 8), np.nan)
    targets[1, :4] = targets[2, 2] = 300e-6    # a few devices: across a row and to the next
    with open_crossbar(live) as xbar:
        xbar.recorders.append(on_operation(after_ops, drop))
        result = tune_array(xbar, targets, PARAMS.model_copy(update={"touch_up_passes": 0}))
        assert xbar.reconnects == 1
    assert state["energized"] and result.results
    # The server closed the old connection: what it received after the dropped message came
    # over a new one, and it begins with the safe state, before the reset of the reconnect.
    after = [c for message in bench.servers[instrument].received()[state["dropped_at"] + 1:]
             for c in message.split(";")]
    safe = "CL" if instrument == "analyzer" else ":ROUT:OPEN:CARD ALL"
    assert safe in after and "*RST" in after and after.index(safe) < after.index("*RST"), after[:12]
    assert_safe(bench)
    assert_within_limits(bench, live.limits)


def tune_until_instrument_hangs(fast, name: str) -> int:
    """Tune until the 30th operation, when instrument `name` stops answering: the error must
    name it and its resource, and come within seconds. Returns how many messages it had
    received when it hung."""
    bench, live = fast
    resource = live.instruments[name].resource
    at = {}

    def hang():
        at[name] = len(received(bench, name))
        bench.servers[name].faults.mute = True

    with pytest.raises(DriverError, match=re.escape(f"{name} at {resource}: no reply within {FAST_TIMEOUT} s")):
        with open_crossbar(live) as xbar:
            xbar.recorders.append(on_operation(30, hang))
            tune_array(xbar, TARGETS, ONE_FAILURE)
    return at[name]


def test_hung_switch_mid_tuning_still_leaves_no_source_energized(fast):
    """A switch that stops answering cannot open its relays, but the sources are turned off,
    the error names the switch and its resource, and nothing waits for minutes."""
    bench, live = fast
    hung_at = tune_until_instrument_hangs(fast, "switch")
    assert_sources_off(bench)
    assert ":ROUT:OPEN:CARD ALL" in received(bench, "switch")[hung_at:]  # tried: received, not done
    assert bench.closed_relays()
    assert_within_limits(bench, live.limits)


def test_hung_source_mid_tuning_is_cut_off_by_the_switch(fast):
    """A source that stops answering cannot be turned off, so every relay is opened: the
    crossbar is isolated from it."""
    bench, live = fast
    hung_at = tune_until_instrument_hangs(fast, "analyzer")
    assert bench.closed_relays() == frozenset()
    assert last_route_command(bench) == ":ROUT:OPEN:CARD ALL"
    assert "CL" in received(bench, "analyzer")[hung_at:]  # tried: received, not done
    assert any(v is not None for v in bench.source_outputs().values())
    assert_within_limits(bench, live.limits)


@pytest.mark.parametrize("op, nth", [("read", 1), ("read", 17), ("pulse", 1), ("pulse", 9)])
def test_exception_from_a_recorder_mid_tuning(emulation, op, nth):
    """An ordinary Python error in the middle of tuning (here from a recorder, as a full
    disk would raise from the run store) propagates unchanged, and the bench ends safe."""
    bench, live = emulation
    state = {"count": 0}

    def recorder(kind, fields):
        if kind == op:
            state["count"] += 1
            if state["count"] == nth:
                state["energized"] = energized(bench)
                raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with open_crossbar(live) as xbar:
            xbar.recorders.append(recorder)
            tune_array(xbar, TARGETS, PARAMS)
    assert state["energized"]
    assert_safe(bench)
    assert_within_limits(bench, live.limits)


# --- 3. Ctrl-C at arbitrary moments ----------------------------------------------------------------

def _interrupt(how: str) -> None:
    if how == "interrupt_main":
        _thread.interrupt_main()
    else:  # a real SIGINT, delivered to the main thread (interrupts a blocking select/recv)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


DELAYS = [0.013, 0.041, 0.087, 0.16, 0.27, 0.43]


@pytest.mark.parametrize("how", ["interrupt_main", "SIGINT"])
@pytest.mark.parametrize("delay", DELAYS)
def test_ctrl_c_at_any_moment_mid_tuning(emulation, delay, how):
    """The analyzer answers 3 ms late, so many interrupts land in a read with a reply still
    owed; the safe state (on the same sessions) must discard it and complete."""
    bench, live = emulation
    bench.servers["analyzer"].faults.reply_delay_s = 0.003
    timer = threading.Timer(delay, _interrupt, args=(how,))
    try:
        with pytest.raises(KeyboardInterrupt):
            with open_crossbar(live) as xbar:
                timer.start()
                tune_array(xbar, TARGETS, PARAMS)
    finally:
        timer.cancel()
    assert_safe(bench)
    assert_within_limits(bench, live.limits)


@pytest.mark.parametrize("delay", DELAYS[::2])
def test_after_ctrl_c_the_same_sessions_still_answer_correctly(emulation, delay):
    """Ctrl-C caught inside the bench: the next reads on the same sessions get their own
    replies (no late reply from the interrupted command is taken for theirs), and the safe
    state at the end is confirmed without a problem (open_crossbar raises otherwise)."""
    bench, live = emulation
    bench.servers["analyzer"].faults.reply_delay_s = 0.003
    timer = threading.Timer(delay, _interrupt, args=("SIGINT",))
    with open_crossbar(live) as xbar:
        try:
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                tune_array(xbar, TARGETS, PARAMS)
        finally:
            timer.cancel()
        bench.servers["analyzer"].faults.reset()
        for r, c in [(7, 7), (3, 4)]:
            g_true = float(bench.conductances()[r, c])
            assert xbar.read(r, c).conductance == pytest.approx(g_true, rel=0.05, abs=0.05e-6)
        assert xbar.source.query("*IDN?").startswith("Agilent Technologies,B1500A")
    assert_safe(bench)
    assert_within_limits(bench, live.limits)


def test_late_reply_of_an_interrupted_query_is_drained(emulation, xbar):
    bench, _ = emulation
    bench.servers["analyzer"].faults.reply_delay_s = 0.6  # a slow measurement, say
    timer = threading.Timer(0.1, _interrupt, args=("SIGINT",))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            xbar.source.query("UNT?")
    finally:
        timer.cancel()
    bench.servers["analyzer"].faults.reset()
    assert xbar.source.query("*IDN?").startswith("Agilent Technologies,B1500A")
    assert xbar.source.query("ERRX?") == '+0,"No Error."'


def test_a_second_ctrl_c_during_the_safe_state_does_not_stop_it(emulation, mocker):
    """A Ctrl-C while the bench is being made safe (after a first failure) is held until
    every instrument is safe, then delivered. The emulators cannot raise a signal at that
    exact moment, so the source's safe_state is wrapped (pytest-mock) to raise SIGINT just
    before it runs; without the deferral the KeyboardInterrupt would skip both safe states."""
    bench, live = emulation
    original = B1500A.safe_state
    armed = threading.Event()

    def signal_then_safe(self):
        if armed.is_set():
            signal.raise_signal(signal.SIGINT)
        original(self)

    mocker.patch.object(B1500A, "safe_state", autospec=True, side_effect=signal_then_safe)
    with pytest.raises(KeyboardInterrupt) as info:
        with open_crossbar(live) as xbar:
            xbar.read(1, 1)
            assert energized(bench)
            armed.set()
            raise RuntimeError("first failure")
    assert isinstance(info.value.__context__, RuntimeError)
    assert_safe(bench)

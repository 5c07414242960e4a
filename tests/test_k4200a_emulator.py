"""The emulated 4200A-SCS (KXCI on a LAN socket) seen through a raw TCP socket: framing, one
reply per message, identity, user-mode SMUs and their readings, errors, the 4225-PMU shaping
its waveforms on the simulated bench, and system mode's pages, sweeps and data (DO, RD)."""

from __future__ import annotations

import re
import socket

import pytest
import torch

from helpers import one_torch_thread  # noqa: F401
from simulator.bench import SimulatedBench
from simulator.spec import SimBenchSpec

READING = re.compile(r"^[NCTVXL][A-H][VI][+-]\d\.\d{4}E[+-]\d\d$")


def bench_spec(**options) -> SimBenchSpec:
    """A 4x4 crossbar: SMU1-4 on switch inputs 1-4, PMU1's channels 101, 102 on inputs 5, 6."""
    return SimBenchSpec(
        rows=4, cols=4, seed=3, switch="switch", row_ports=[1, 2, 3, 4], col_ports=[5, 6, 7, 8],
        instruments=[{"name": "analyzer", "type": "keithley_4200a", "options": options},
                     {"name": "switch", "type": "keysight_e5250a", "options": {"cards": 1}}],
        cables=[{"instrument": "analyzer", "channel": ch, "input": inp}
                for ch, inp in [(1, 1), (2, 2), (3, 3), (4, 4), (101, 5), (102, 6)]])


class Wire:
    """A raw socket to one emulated instrument; `ask` returns the reply bytes up to the NUL."""

    def __init__(self, server, end: bytes = b"\0"):
        self.sock = socket.create_connection((server.host, server.port), timeout=5)
        self.end, self.buffer = end, b""

    def ask(self, message: str, end: bytes | None = None) -> bytes:
        self.sock.sendall(message.encode() + (self.end if end is None else end))
        while b"\0" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buffer += chunk
        reply, self.buffer = self.buffer.split(b"\0", 1)
        return reply

    def text(self, message: str) -> str:
        return self.ask(message).decode().strip("\r\n")

    def close(self):
        self.sock.close()


@pytest.fixture
def rig(request):
    options = getattr(request, "param", {})
    with SimulatedBench(bench_spec(**options)) as bench:
        wire = Wire(bench.servers["analyzer"])
        switch = Wire(bench.servers["switch"], end=b"\n")
        yield bench, wire, switch
        wire.close()
        switch.close()


# SMU3 on the other rows, SMU4 on the other columns: held at 0 V, no sneak paths
GROUND_THE_REST = ((3, 2), (3, 3), (3, 4), (4, 6), (4, 7), (4, 8))


def route(switch: Wire, *pairs) -> None:
    """Close relays with raw E5250A SCPI (its replies end at LF, not NUL: no reply expected)."""
    switch.sock.sendall((":ROUT:CLOS (@" + ",".join(f"0{i:02d}{o:02d}" for i, o in pairs) + ")\n").encode())
    switch.sock.sendall(b"*OPC?\n")
    data = b""
    while not data.endswith(b"\n"):
        data += switch.sock.recv(100)


@pytest.mark.parametrize("rig, ending", [({"line_ending": "LF"}, b"\n"), ({"line_ending": "CR"}, b"\r"),
                                         ({"line_ending": "CRLF"}, b"\r\n"), ({"line_ending": "none"}, b"")],
                         indirect=["rig"])
def test_every_reply_ends_with_the_line_ending_then_a_nul(rig, ending):
    _, wire, _ = rig
    assert wire.ask("US;DV1,0,0.1,1e-3;DV1") == b"ACK" + ending   # a compound message: one ACK
    assert wire.ask("SP") == b"0" + ending
    assert wire.buffer == b"", "exactly one reply per message"


def test_messages_end_at_lf_cr_or_nul(rig):
    _, wire, _ = rig
    assert wire.ask("ID", end=b"\n").startswith(b"KI4200A V")
    assert wire.ask("*IDN?", end=b"\r").startswith(b"KEITHLEY INSTRUMENTS,KI4200A,")
    assert wire.ask("*OPT?", end=b"\0") == b"SMU1,SMU2,SMU3,SMU4,PMU1\n"


@pytest.mark.parametrize("rig", [{"smus": 2, "pmus": 2}], indirect=True)
def test_options_list_the_cards_the_bench_file_gives(rig):
    _, wire, _ = rig
    assert wire.text("*OPT?") == "SMU1,SMU2,PMU1,PMU2"
    assert wire.text("US;DV3,0,0.1,1e-3").endswith("(-994)")   # no SMU3


def test_an_invalid_command_is_an_error_and_the_rest_of_its_message_does_not_run(rig):
    bench, wire, _ = rig
    reply = wire.text("US;XYZ 1;DV1,0,0.5,1e-3")
    assert reply == "KXCI command error. (-992)"
    assert bench.source_outputs().get(("analyzer", 1)) is None, "DV after the bad command ran"
    assert int(wire.text("SP")) & 2, "syntax error bit"
    assert wire.text(":ERROR:LAST:GET") == "KXCI command error. (-992)"
    assert wire.text(":ERROR:LAST:CLEAR") == "ACK"
    assert wire.text(":ERROR:LAST:GET") == "No error. (0)"
    assert wire.text("SP") == "0"


@pytest.mark.parametrize("command", ["DV1,0,250,1e-3", "DV1,0,1,0.2", "DV1,0,1,0", "DV1,9,1,1e-3", "DV1,0,abc,1e-3",
                                     "DV1,0,1", "DV0,0,1,1e-3", "TI9", "IT7", "RS9"])
def test_out_of_range_or_malformed_user_mode_commands_are_refused(rig, command):
    bench, wire, _ = rig
    assert re.fullmatch(r".+\. \(-99\d\)", wire.text("US;" + command))
    assert all(v is None for v in bench.source_outputs().values())


def test_user_mode_outside_its_page_is_an_error(rig):
    _, wire, _ = rig
    assert wire.text("DE;DV1,0,0.1,1e-3") == "Command not valid in this mode. (-995)"
    assert wire.text("US;DV1,0,0.1,1e-3") == "ACK"


def test_spot_current_is_the_device_current_and_compliance_shows_in_the_status(rig):
    bench, wire, switch = rig
    route(switch, (1, 1), (2, 5), *GROUND_THE_REST)   # SMU1 on row 0, SMU2 on column 0
    g = float(bench.conductances()[0, 0])
    assert wire.text("US;DV3,0,0,1e-3;DV4,0,0,1e-3;DV2,0,0,1e-3;DV1,0,0.2,1e-3") == "ACK"
    reply = wire.text("TI2")
    assert READING.match(reply) and reply.startswith("NBI")
    assert float(reply[3:]) == pytest.approx(-0.2 * g, rel=0.05)   # into the DUT from SMU2: negative
    row = float(bench.conductances()[0, :].sum())
    assert float(wire.text("TI1")[3:]) == pytest.approx(0.2 * row, rel=0.05)
    assert wire.text("TV1") == "NAV+2.0000E-01"
    wire.text("DV1,0,0.2,1e-6")                      # a compliance far below the device current
    reply = wire.text("TI1")
    assert reply == "CAI+1.0000E-06"
    assert wire.text("TI2").startswith("TBI"), "another channel is in compliance"
    assert int(wire.text("SP")) & 1, "data ready"
    assert wire.text("BC") == "ACK" and wire.text("SP") == "0"


def test_rs_sets_the_digits_of_a_reading(rig):
    _, wire, _ = rig
    wire.text("US;DV1,0,0.125,1e-3;RS7")
    assert wire.text("TV1") == "NAV+1.250000E-01"


def test_dv_alone_switches_the_smu_off_and_rst_switches_all_off(rig):
    bench, wire, _ = rig
    wire.text("US;DV1,0,0.3,1e-3;DV2,0,-0.1,1e-3")
    assert bench.source_outputs()[("analyzer", 1)] == (0.3, 1e-3)
    wire.text("DV1")
    assert bench.source_outputs()[("analyzer", 1)] is None
    wire.text("*RST")
    assert all(v is None for v in bench.source_outputs().values())


def test_di_forces_a_current_through_the_device(rig):
    bench, wire, switch = rig
    route(switch, (1, 1), (2, 5), *GROUND_THE_REST)
    row = float(bench.conductances()[0, :].sum())   # row 0 sees every column at 0 V
    wire.text("US;DV3,0,0,1e-3;DV4,0,0,1e-3;DV2,0,0,1e-3;DI1,0,2e-6,1")
    assert float(wire.text("TV1")[3:]) == pytest.approx(2e-6 / row, rel=0.05)
    wire.text("DI1,0,1e-3,0.5")                      # needs far more than 0.5 V: clamped, in compliance
    assert wire.text("TV1") == "CAV+5.0000E-01"


# --- the PMU ------------------------------------------------------------------------------------

def sarb(wire: Wire, ch: int, times, start, stop, kinds=None, mstart=None, mstop=None) -> None:
    n = len(times)
    arrays = {"TIME": times, "STARTV": start, "STOPV": stop, "MEAS:TYPE": kinds or [0] * n,
              "MEAS:START": mstart or [0] * n, "MEAS:STOP": mstop or [0] * n}
    for name, values in arrays.items():
        assert wire.text(f":PMU:SARB:SEQ:{name} {ch}, 1, " + ", ".join(f"{v:g}" for v in values)) == "ACK"


def test_segment_arb_shapes_the_pulse_on_the_bench_and_measures_the_read(rig):
    bench, wire, switch = rig
    route(switch, (5, 1), (6, 5), *GROUND_THE_REST)   # PMU ch 1 on row 0, ch 2 on column 0
    g = float(bench.conductances()[0, 0])
    assert wire.text("US;DV3,0,0,1e-3;DV4,0,0,1e-3;:PMU:INIT 1;:PMU:RPM:CONFIGURE PMU1-1, 0;:PMU:MEASURE:RANGE 2, 2, 1e-3") == "ACK"
    times = [2e-8, 1e-6, 2e-8, 1e-6]
    sarb(wire, 1, times, [0, 0.2, 0.2, 0], [0.2, 0.2, 0, 0])
    sarb(wire, 2, times, [0] * 4, [0] * 4, kinds=[0, 1, 0, 0], mstop=[0, 1e-6, 0, 0])
    for ch in (1, 2):
        assert wire.text(f":PMU:SARB:WFM:SEQ:LIST {ch}, 1, 1;:PMU:OUTPUT:STATE {ch}, 1") == "ACK"
    start_clock = bench.clock
    assert wire.text(":PMU:EXECUTE") == "ACK"
    assert bench.clock - start_clock >= sum(times)
    assert wire.text(":PMU:TEST:STATUS?") == "0"
    e = bench.exposure
    assert e.pulses == 1
    assert e.pulse_width == pytest.approx(1e-6 + 2e-8)   # full width at half maximum
    assert e.line_voltage == pytest.approx(0.2)
    assert wire.text(":PMU:DATA:COUNT? 2") == "1" and wire.text(":PMU:DATA:COUNT? 1") == "0"
    v, i, t, status = wire.text(":PMU:DATA:GET 2").split(",")
    assert float(v) == 0 and status == "0" and float(t) == pytest.approx(2e-8)
    assert float(i) == pytest.approx(-0.2 * g, rel=0.05)
    assert wire.text(":PMU:DATA:GET 2, 0, 2") == "Data not available. (-997)"
    assert wire.text(":PMU:OUTPUT:STATE 1, 0;:PMU:OUTPUT:STATE 2, 0") == "ACK"
    assert bench.source_outputs()[("analyzer", 101)] is None


def test_segment_arb_refuses_what_the_instrument_refuses(rig):
    _, wire, _ = rig
    assert wire.text(":PMU:INIT 1") == "ACK"
    assert wire.text(":PMU:SARB:SEQ:TIME 1, 1, 1e-8").endswith("(-993)")          # under 20 ns
    assert wire.text(":PMU:SARB:SEQ:TIME 1, 1, 25e-9").endswith("(-993)")         # not on the 10 ns grid
    assert wire.text(":PMU:SARB:SEQ:STARTV 1, 1, 11").endswith("(-993)")          # beyond the 10 V range
    assert wire.text(":PMU:SARB:SEQ:TIME 1, 1, " + ",".join(["1e-6"] * 129)).endswith("(-993)")
    assert wire.text(":PMU:SARB:WFM:SEQ:LIST 1, 7, 1").endswith("(-996)")         # no sequence 7
    assert wire.text(":PMU:EXECUTE").endswith("(-996)")                           # no output on
    sarb(wire, 1, [1e-6, 1e-6], [0, 1], [0.5, 1])                                # a jump at 0.5 -> 1 V
    wire.text(":PMU:SARB:WFM:SEQ:LIST 1, 1, 1;:PMU:OUTPUT:STATE 1, 1")
    assert wire.text(":PMU:EXECUTE").endswith("(-993)")


def test_a_pulse_train_gives_one_pulse_per_burst_count(rig):
    bench, wire, switch = rig
    route(switch, (5, 1), (6, 5))
    assert wire.text(":PMU:INIT 0;:PMU:MEASURE:RANGE 1, 2, 1e-2;:PMU:PULSE:TRAIN 1, 0, 0.5;"
                     ":PMU:PULSE:TIMES 1, 1e-5, 2e-6, 1e-7, 1e-7;:PMU:PULSE:BURST:COUNT 5;"
                     ":PMU:OUTPUT:STATE 1, 1;:PMU:EXECUTE") == "ACK"
    e = bench.exposure
    assert e.pulses == 5
    assert e.pulse_width == pytest.approx(2e-6)
    assert e.pulse_energy == pytest.approx(0.5 * 1e-2 * 2e-6)
    assert wire.text(":PMU:DATA:COUNT? 1") == "5"


def test_an_injected_execution_error_fails_only_commands_that_change_something(rig):
    bench, wire, _ = rig
    bench.cores["analyzer"].inject_error(2)
    assert wire.text("*IDN?").startswith("KEITHLEY")             # queries still answer
    busy = "Execution error: instrument busy. (-998)"
    assert wire.text("US;DV1,0,0.3,1e-3") == busy               # US fails; the DV after it does not run
    assert wire.text(":ERROR:LAST:GET") == busy
    assert bench.source_outputs()[("analyzer", 1)] is None
    assert wire.text("DV1,0,0.3,1e-3") == busy                  # the second one
    assert wire.text(":ERROR:LAST:CLEAR;US;DV1,0,0.3,1e-3") == "ACK"   # then it works again
    assert bench.source_outputs()[("analyzer", 1)] == (0.3, 1e-3)


def test_the_bench_error_fault_reaches_the_4200a_after_its_message_count():
    spec = SimBenchSpec(**{**bench_spec().model_dump(), "faults": {"analyzer": [{"kind": "error", "after": 1}]}})
    with SimulatedBench(spec) as bench:
        wire = Wire(bench.servers["analyzer"])
        try:
            assert wire.text("US") == "ACK"                        # the first message is spared
            assert wire.text("US").endswith("(-998)")
            assert wire.text("US") == "ACK"
        finally:
            wire.close()


def test_the_kult_module_runs_on_the_user_library_page_and_returns_its_reads(rig):
    bench, wire, switch = rig
    route(switch, (5, 1), (6, 5), *GROUND_THE_REST)
    g = float(bench.conductances()[0, 0])
    ex = "EX memlab_kult PulseRead(1,2,0,0,1e-6,0.2,1e-6,3,0,1e-3,,3)"
    assert wire.text("US;DV3,0,0,1e-3;DV4,0,0,1e-3") == "ACK"   # the other lines held at 0 V
    assert wire.text(ex) == "Command not valid in this mode. (-995)"   # not on the US page
    assert wire.text("UL") == "ACK"
    assert wire.text(ex) == "RETURN VALUE = 0"
    reply = wire.text("GP 11")
    assert reply.startswith("PARAM VALUE = ")
    currents = [float(v) for v in reply.removeprefix("PARAM VALUE = ").split(";")]
    assert currents == [pytest.approx(-0.2 * g, rel=0.05)] * 3
    assert bench.exposure.pulses == 3
    assert wire.text("EX memlab_kult PulseRead(1,2,0,0,1e-6,0.2,1e-6,3,0,1e-3,,2)") == "RETURN VALUE = -2"
    assert wire.text("EX memlab_kult PulseRead(1,2,0,0,1e-6,0.2,1e-6,3,0,5e-3,,3)") == "RETURN VALUE = -1"
    assert bench.exposure.pulses == 3                           # a refused call drives nothing
    assert wire.text("EX memlab_kult Nothing(1)") == "KXCI command error. (-992)"


# --- system mode ------------------------------------------------------------------------------------

SYS_READING = re.compile(r"^[NLVXCT][+-]\d\.\d{4}E[+-]\d\d$")
BARE = re.compile(r"^[+-]\d\.\d{4}E[+-]\d\d$")


def define_sweep(wire: Wire, sweep: str = "VR1, 0, 0.2, 0.05, 1e-3", *, others: str = "1, 3",
                 timing: str = "HT 0.05;DT 0.001;IT2") -> None:
    """SMU1 as VAR1 (V1, I1), SMU2 (V2, I2) and SMU3, SMU4 constant at 0 V, on their pages."""
    assert wire.text("DE;CH1, 'V1', 'I1', 1, 1;CH2, 'V2', 'I2', " + others +
                     ";CH3, 'V3', 'I3', 1, 3;CH4, 'V4', 'I4', 1, 3") == "ACK"
    assert wire.text(f"SS;{sweep};VC2, 0, 1e-3;VC3, 0, 1e-3;VC4, 0, 1e-3;{timing}") == "ACK"
    assert wire.text("SM DM2;LI 'V1','I1';MD") == "ACK"


def run(wire: Wire, trigger: str = "ME1") -> list[int]:
    """The trigger, then SP until the busy bit clears: every status seen."""
    assert wire.text(trigger) == "ACK"
    seen = [int(wire.text("SP"))]
    while seen[-1] & 16:
        seen.append(int(wire.text("SP")))
    return seen


def readings(wire: Wire, name: str) -> list[tuple[str, float]]:
    reply = wire.text(f"DO '{name}'")
    fields = reply.split(",")
    assert all(SYS_READING.match(f) for f in fields), reply
    return [(f[0], float(f[1:])) for f in fields]


@pytest.mark.parametrize("message, code", [
    ("US;CH1, 'V1', 'I1', 1, 1", -995),      # a channel definition off the DE page
    ("DE;VR1, 0, 1, 0.1, 1e-3", -995),       # a source set-up off the SS page
    ("SS;ME1", -995),                        # a test started off the MD page
    ("MD;LI 'V1'", -995),
    ("DE;DV1,0,0.1,1e-3", -995),             # user mode in system mode
    ("SS;IT4,1,1,0.5;US;IT4,1,1,0.5", -995),  # the custom integration is the SS page's
])
def test_system_mode_commands_are_taken_on_their_own_page_only(rig, message, code):
    bench, wire, _ = rig
    assert wire.text(message).endswith(f"({code})")
    assert all(v is None for v in bench.source_outputs().values())


def test_a_var1_sweep_runs_step_by_step_on_the_hardware_busy_until_its_data_is_ready(rig):
    bench, wire, switch = rig
    route(switch, (1, 1), (2, 5), *GROUND_THE_REST)   # SMU1 on row 0, SMU2 on column 0
    g = bench.conductances()
    define_sweep(wire)
    start = bench.clock
    seen = run(wire)
    assert seen[0] == 16 and seen[-1] == 1, "busy while it runs, data ready after"   # 5 points, 4 a message
    integration = 1 / 50
    assert bench.clock - start >= 0.05 + 5 * (0.001 + integration)   # the hold, then delay and integration a step
    volts = readings(wire, "V1")
    assert [v for _, v in volts] == [0.0, 0.05, 0.1, 0.15, 0.2] and {s for s, _ in volts} == {"N"}
    v = torch.zeros(4, 4, dtype=torch.float64)
    for (_, level), (_, i1), (_, i2) in zip(volts, readings(wire, "I1"), readings(wire, "I2")):
        v[0, :] = level
        device = bench.array.device_currents(g, v)
        assert i1 == pytest.approx(float(device[0].sum()), rel=0.01, abs=1e-9)   # row 0: every column at 0 V
        assert i2 == pytest.approx(-float(device[0, 0]), rel=0.01, abs=1e-9)     # column 0: only device (0, 0)
    assert [v for _, v in readings(wire, "V2")] == [0.0] * 5
    stamps = [t for _, t in readings(wire, "CH1T")]
    assert all(b - a >= 0.001 + integration for a, b in zip(stamps, stamps[1:]))
    assert bench.exposure.line_voltage == pytest.approx(0.2) and bench.exposure.pulses == 0
    assert all(out is None for out in bench.source_outputs().values()), "the test's SMUs end at 0 V, off"


def test_rd_answers_one_bare_reading_by_index_and_0_past_the_last(rig):
    _, wire, _ = rig
    define_sweep(wire)
    run(wire)
    currents = readings(wire, "I1")
    for index, (_, value) in enumerate(currents, 1):
        reply = wire.text(f"RD 'I1', {index}")
        assert BARE.match(reply) and float(reply) == value
    assert wire.text(f"RD 'I1', {len(currents) + 1}") == "0"
    assert wire.text("RD 'I1'") == ",".join(f"{v:+.4E}" for _, v in currents)
    assert wire.text("RD 'I1', 0").endswith("(-993)")
    assert wire.text("DO 'NOPE'") == "Data not available. (-997)"


def test_while_a_test_runs_only_status_and_stop_are_taken(rig):
    bench, wire, _ = rig
    define_sweep(wire, "VR1, 0, 1, 0.05, 1e-3")     # 21 points: several messages' worth
    assert wire.text("ME1") == "ACK"
    assert wire.text("US;DV1,0,0.5,1e-3") == "Execution error: instrument busy. (-998)"
    assert wire.text("DO 'V1'").endswith("(-998)")
    assert int(wire.text("SP")) & 16
    assert bench.source_outputs()[("analyzer", 1)][0] > 0, "SMU1 is somewhere in the sweep"
    assert wire.text("ME4") == "ACK"                 # stopped part way
    assert not int(wire.text("SP")) & 16
    done = readings(wire, "V1")
    assert 0 < len(done) < 21
    assert all(out is None for out in bench.source_outputs().values())
    assert wire.text("US;DV1,0,0.1,1e-3") == "ACK"  # user mode again


def test_rst_stops_a_running_test_and_forgets_the_set_up(rig):
    bench, wire, _ = rig
    define_sweep(wire, "VR1, 0, 1, 0.05, 1e-3")
    assert wire.text("ME1") == "ACK"
    assert wire.text("*RST") == "ACK"
    assert all(out is None for out in bench.source_outputs().values())
    assert wire.text("MD;ME1") == "Test not configured. (-996)"


def test_var2_steps_every_var1_sweep_with_its_hold(rig):
    _, wire, _ = rig
    define_sweep(wire, "VR1, 0, 0.2, 0.1, 1e-3;VP -0.1, 0.05, 3, 1e-3", others="1, 2")
    run(wire)
    assert [v for _, v in readings(wire, "V1")] == pytest.approx([0.0, 0.1, 0.2] * 3)
    assert [v for _, v in readings(wire, "V2")] == pytest.approx([-0.1] * 3 + [-0.05] * 3 + [0.0] * 3)
    stamps = [t for _, t in readings(wire, "CH1T")]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert gaps[2] > gaps[1] + 0.04 and gaps[5] > gaps[4] + 0.04, "the 50 ms hold before each VAR1 sweep"


def test_compliance_shows_in_the_status_of_every_reading_of_the_step(rig):
    bench, wire, switch = rig
    route(switch, (1, 1), (2, 5), *GROUND_THE_REST)
    define_sweep(wire, "VR1, 0, 0.2, 0.1, 1e-6")    # 1 uA: far below row 0's current
    run(wire)
    assert readings(wire, "I1") == [("N", 0.0), ("C", 1e-6), ("C", 1e-6)]
    assert [s for s, _ in readings(wire, "I2")] == ["N", "T", "T"]


def test_me3_appends_and_bc_clears_the_readings(rig):
    _, wire, _ = rig
    define_sweep(wire, "VR1, 0, 0.1, 0.1, 1e-3")
    run(wire)
    run(wire, "ME3")
    assert [v for _, v in readings(wire, "V1")] == [0.0, 0.1, 0.0, 0.1]
    run(wire)                                       # ME1: a cleared buffer
    assert len(readings(wire, "V1")) == 2
    assert wire.text("BC") == "ACK" and wire.text("DO 'V1'").endswith("(-997)")


def test_a_set_up_without_var1_is_a_sampling_test(rig):
    _, wire, _ = rig
    assert wire.text("DE;CH1, 'V1', 'I1', 1, 3;SS;VC1, 0.1, 1e-3;IT1;SM;WT 0.5;IN 0.05;NR 4;MD") == "ACK"
    run(wire)
    assert readings(wire, "V1") == [("N", 0.1)] * 4
    stamps = [t for _, t in readings(wire, "CH1T")]
    assert stamps[0] >= 0.5 and [b - a for a, b in zip(stamps, stamps[1:])] == pytest.approx([0.05] * 3, rel=0.05)
    assert wire.text("SS;IT2;SM;IN 0.01;MD") == "ACK"   # a 20 ms reading does not fit in 10 ms
    run(wire)
    assert [s for s, _ in readings(wire, "V1")] == ["N", "L", "L", "L"]


@pytest.mark.parametrize("message, code", [
    ("DE;CH1, 'V1', 'I1', 3, 1", -993),             # common must be constant
    ("DE;CH1, 'V1', 'V1', 1, 1", -993),             # one name for two readings
    ("DE;CH1, 'TOOLONG', 'I1', 1, 1", -993),        # names of at most 6 characters
    ("DE;CH1, V1, 'I1', 1, 1", -993),               # in quotes
    ("DE;CH9, 'V9', 'I9', 1, 1", -994),             # no SMU9
    ("DE;CH1, 'V1', 'I1', 1, 1;CH2, 'V2', 'I2', 1, 1", -993),   # a second VAR1
    ("DE;VS1", -994),                               # no SMU is configured as a voltage source
    ("SS;VR1, 0, 1, -0.1, 1e-3", -993),             # a step away from the stop
    ("SS;VR1, 0, 1, 0.0005, 1e-3", -993),           # below 1 mV a step is 0
    ("SS;VR1, 0, 100, 0.01, 1e-3", -993),           # over 1024 points
    ("SS;VR1, 0, 250, 1, 1e-3", -993),              # beyond the SMU's 210 V
    ("SS;VR1, 0, 1, 0.1, 0.2", -993),               # beyond its 105 mA
    ("SS;VR1, 0, 1, 0.1", -993),
    ("SS;VP 0, 1, 40, 1e-3", -993),
    ("SS;VC1, 0, 0", -993),
    ("SS;HT -1", -993),
    ("SM;NR 0", -993),
    ("SM;DM3", -993),
    ("MD;ME5", -993),
    ("MD;ME1", -996),                               # nothing defined
    ("DE;CH1, 'V1', 'I1', 1, 1;MD;ME1", -996),      # VAR1 without VR
    ("DE;CH1, 'V1', 'I1', 1, 3;MD;ME1", -996),      # constant without VC
    ("DE;CH1, 'V1', 'I1', 2, 1;SS;VR1, 0, 1, 0.1, 1e-3;MD;ME1", -996),   # a current source swept by VR
])
def test_illegal_system_mode_set_ups_answer_the_instruments_error(rig, message, code):
    bench, wire, _ = rig
    assert wire.text(message).endswith(f"({code})")
    assert wire.text(":ERROR:LAST:GET").endswith(f"({code})")
    assert all(out is None for out in bench.source_outputs().values())


def test_a_current_sweep_forces_its_current_through_the_device(rig):
    bench, wire, switch = rig
    route(switch, (1, 1), (2, 5), *GROUND_THE_REST)
    row = float(bench.conductances()[0, :].sum())
    assert wire.text("DE;CH1, 'V1', 'I1', 2, 1;CH2, 'V2', 'I2', 1, 3;CH3, 'V3', 'I3', 1, 3;"
                     "CH4, 'V4', 'I4', 1, 3;SS;IR1, 1e-6, 3e-6, 1e-6, 1;VC2, 0, 1e-3;VC3, 0, 1e-3;"
                     "VC4, 0, 1e-3;MD") == "ACK"
    run(wire)
    assert [v for _, v in readings(wire, "V1")] == pytest.approx([1e-6 / row, 2e-6 / row, 3e-6 / row], rel=0.05)

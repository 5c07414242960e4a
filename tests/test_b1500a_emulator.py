"""The B1500A FLEX text core: exact replies, field widths, errors, outputs, pymeasure."""

import ast
import re
from pathlib import Path

import pytest

import simulator.b1500a as b1500a
from simulator.b1500a import NO_ERROR, B1500ACore, format_number, format_time

LRN_REGEX = r"(?P<command>[A-Z]+)(?P<parameter>[0-9,\+\-\.E]+)"  # pymeasure's QueryLearn


class FakeHardware:
    """Records every call; measurements return what the test put in `currents`/`voltages`."""

    def __init__(self):
        self.calls = []
        self.currents = {}
        self.voltages = {}
        self.pulse_current = 0.0

    def apply(self, outputs):
        self.calls.append(("apply", dict(outputs)))

    def advance(self, seconds):
        self.calls.append(("advance", seconds))

    def measure_current(self, slot, integration_s):
        self.calls.append(("measure_current", slot, integration_s))
        return self.currents.get(slot, 0.0)

    def measure_voltage(self, slot, integration_s):
        self.calls.append(("measure_voltage", slot, integration_s))
        return self.voltages.get(slot, 0.0)

    def pulse(self, slot, base, peak, width, hold, compliance):
        self.calls.append(("pulse", slot, base, peak, width, hold, compliance))
        return self.pulse_current

    def named(self, name):
        return [c for c in self.calls if c[0] == name]

    def applied(self):
        return [c[1] for c in self.named("apply")]


OFF = {1: None, 2: None, 3: None, 4: None}


@pytest.fixture
def hw():
    return FakeHardware()


@pytest.fixture
def core(hw):
    c = B1500ACore(hw)
    hw.calls.clear()
    return c


def one(core, message):
    (reply,) = core.handle(message)
    return reply


def errors(core):
    out = []
    while (reply := one(core, "ERRX?")) != '+0,"No Error."':
        out.append(reply)
    return out


def error_codes(core):
    return [int(e.split(",")[0]) for e in errors(core)]


# ------------------------------------------------------------------ identity and modules


def test_class_attributes():
    assert B1500ACore.name == "B1500A"
    assert B1500ACore.read_termination == "\r\n" and B1500ACore.write_termination == "\r\n"


def test_idn_opc_and_overridden_idn(core, hw):
    assert core.handle("*IDN?") == ["Agilent Technologies,B1500A,0,A.06.03.2019.0826"]
    assert core.handle("*OPC?") == ["1"]
    assert B1500ACore(hw, idn="Keysight,B1500A,MY1,X").handle("*IDN?") == ["Keysight,B1500A,MY1,X"]


def test_unt_with_and_without_argument(core):
    expected = "B1517A,0;B1517A,0;B1517A,0;B1517A,0;0,0;0,0;0,0;0,0;0,0;0,0"
    assert core.handle("UNT?") == [expected]
    assert core.handle("UNT? 0") == [expected]
    assert core.handle("UNT?0") == [expected]
    assert len(expected.split(";")) == 10


def test_unt_lists_non_smu_modules_smus_and_spgu_channels_are_sources(hw):
    core = B1500ACore(hw, modules={1: "B1511B", 2: "B1517A", 5: "B1525A", 6: "B1530A"})
    assert one(core, "UNT?") == "B1511B,0;B1517A,0;0,0;0,0;B1525A,0;B1530A,0;0,0;0,0;0,0;0,0"
    assert core.outputs() == {1: None, 2: None}   # SPGU channels that were never on are left out
    assert core.handle("CN") == [] and errors(core) == []
    assert core.outputs() == {1: (0.0, 100e-6), 2: (0.0, 100e-6), 501: (0.0, 0.0), 502: (0.0, 0.0)}


def test_bad_module_table_is_refused(hw):
    with pytest.raises(ValueError):
        B1500ACore(hw, modules={11: "B1517A"})
    with pytest.raises(ValueError):
        B1500ACore(hw, modules={1: "B1234Z"})


def test_power_on_applies_all_outputs_off(hw):
    B1500ACore(hw)
    assert hw.applied() == [OFF]


# ------------------------------------------------------------------------- errors


def test_errx_exact_when_empty_and_err_four_zeros(core):
    assert core.handle("ERRX?") == ['+0,"No Error."']
    assert core.handle("ERR?") == ["0,0,0,0"]


def test_cls_is_an_undefined_command(core):
    assert core.handle("*CLS") == []
    assert core.handle("ERRX?") == ['+100,"Undefined GPIB command."']
    assert core.handle("ERRX?") == ['+0,"No Error."']


def test_error_queue_is_fifo_and_err_reads_four_codes(core):
    for message in ("FOO", "DV 1,0", "DV 11,0,0", "CN 1;DV 1,0,0,0"):
        core.handle(message)
    assert core.handle("ERR?") == ["100,103,121,123"]
    core.handle("FOO;BAR")  # the second command is skipped after the first fails
    assert core.handle("ERRX? 1") == ["+100"]
    assert core.handle("ERRX?") == ['+0,"No Error."']


def test_rst_keeps_the_error_queue(core):
    core.handle("FOO")
    core.handle("*RST")
    assert error_codes(core) == [100]


def test_stb_error_bit(core):
    assert core.handle("*STB?") == ["16"]
    core.handle("FOO")
    assert core.handle("*STB?") == ["48"]


@pytest.mark.parametrize("message, code", [
    ("XYZ 1", 100),
    ("DI 1,0,1E-6", 100),              # current sources are not emulated
    ("DV 1,0,0.2x", 102),
    ("DV 1,0,", 102),
    ("DV 1,0", 103),
    ("DV 1,0,0.2,1E-3,0,0,7", 103),
    ("DV 1,0,150", 120),
    ("DV 1,0,0.2,1E-3,2", 120),
    ("DV 0,0,0.2", 121),
    ("DV 11,0,0.2", 121),
    ("DV 5,0,0.2", 125),
    ("DV 1,3,0.2", 124),
    ("DV 1,0,0.2,0", 123),
    ("DV 1,0,0.2,0.2", 123),
    ("DV 1,0,50,0.05", 123),           # 20 mA at most above 40 V
    ("DV 1,0,0.2,1E-3,0,3", 124),
])
def test_refused_dv_has_no_effect(core, hw, message, code):
    core.handle("CN 1")
    hw.calls.clear()
    assert core.handle(message) == []
    assert error_codes(core) == [code]
    assert hw.applied() == []
    assert core.outputs()[1] == (0.0, 100e-6)


def test_dv_on_a_disabled_channel_is_refused(core, hw):
    assert core.handle("DV 1,0,0.2,1E-3") == []
    assert error_codes(core) == [200]
    assert hw.applied() == [] and core.outputs() == OFF
    core.handle("CN 1")
    assert core.outputs()[1] == (0.0, 100e-6)  # the refused DV left nothing behind


def test_failing_command_skips_the_rest_of_the_message(core, hw):
    assert core.handle("CN 1;DV 1,0,150;DV 1,0,0.3") == []
    assert error_codes(core) == [120]
    assert core.outputs()[1] == (0.0, 100e-6)
    assert all(v is None or v[0] == 0.0 for a in hw.applied() for v in a.values())


def test_failing_query_answers_nothing_but_earlier_replies_stay(core):
    assert core.handle("*OPC?;*LRN? 99;*IDN?") == ["1"]
    assert core.handle("UNT? 5") == []
    assert error_codes(core) == [120, 120]


def test_measurement_errors(core, hw):
    assert core.handle("XE") == []
    assert core.handle("TI 1") == []            # output switch off
    core.handle("MM 1,1")
    assert core.handle("XE") == []
    assert core.handle("MM 1,6") == []
    assert core.handle("TI 1,7") == []          # no such current range
    assert error_codes(core) == [201, 200, 200, 125, 124]
    assert hw.named("measure_current") == []


# ------------------------------------------------------------------- outputs and apply


def test_apply_on_cn_dv_cl_rst(core, hw):
    core.handle("CN 1,2")
    core.handle("DV 1,0,0.2,0.001")
    core.handle("DV 2,0,-0.1")
    core.handle("CL 2")
    core.handle("*RST")
    assert hw.applied() == [
        {1: (0.0, 100e-6), 2: (0.0, 100e-6), 3: None, 4: None},
        {1: (0.2, 1e-3), 2: (0.0, 100e-6), 3: None, 4: None},
        {1: (0.2, 1e-3), 2: (-0.1, 100e-6), 3: None, 4: None},
        {1: (0.2, 1e-3), 2: None, 3: None, 4: None},
        OFF,
    ]
    assert core.outputs() == OFF


def test_bare_cn_and_cl_cover_all_smus(core, hw):
    core.handle("CN")
    assert core.outputs() == {s: (0.0, 100e-6) for s in (1, 2, 3, 4)}
    core.handle("CL")
    assert core.outputs() == OFF


def test_unchanged_outputs_do_not_call_apply(core, hw):
    core.handle("CN 1")
    core.handle("CN 1")
    core.handle("DV 1,0,0.2,1E-3")
    core.handle("DV 1,0,0.2,1E-3")
    assert len(hw.applied()) == 2


def test_dv_compliance_defaults_to_the_previous_value(core):
    core.handle("CN 1;DV 1,0,0.2,0.01;DV 1,0,0.3")
    assert core.outputs()[1] == (0.3, 0.01)


def test_negative_manual_polarity_compliance_is_passed_as_a_magnitude(core):
    core.handle("CN 1;DV 1,0,0.2,-1E-3,1")
    assert core.outputs()[1] == (0.2, 1e-3)


def test_cl_sets_zero_volts(core):
    core.handle("CN 1;DV 1,0,1.0,1E-3;CL 1;CN 1")
    assert core.outputs()[1] == (0.0, 1e-3)


def test_dz_and_rz(core):
    core.handle("CN 1;DV 1,0,1.0,1E-3;DZ 1")
    assert core.outputs()[1] == (0.0, 1e-3)
    core.handle("RZ 1")
    assert core.outputs()[1] == (1.0, 1e-3)


@pytest.mark.parametrize("message", [
    "DV 1, 0, 0.2, 0.001", "DV1,0,0.2,0.001", "DV 1,0,0.2,1E-3", "dv 1 , 0 , .2 , 1e-3",
    "DV 101,0,+0.2,0.001",
])
def test_parsing_variants(core, message):
    core.handle("CN 1")
    core.handle(message)
    assert errors(core) == []
    assert core.outputs()[1] == pytest.approx((0.2, 1e-3))


def test_timing_transaction_and_settle(core, hw):
    core.handle("CN 1;DV 1,0,0.2,1E-3")
    assert hw.named("advance") == [("advance", 2e-4), ("advance", 1e-4)]
    core.handle("")
    assert hw.named("advance")[-1] == ("advance", 2e-4)


# ------------------------------------------------------------------------ data format


def test_number_formats():
    assert format_number(5e-12, -9) == "+000.005E-09"
    assert format_number(-1.5e-6, -6) == "-001.500E-06"
    assert format_number(1.5, 0) == "+001.500E+00"
    assert format_number(-1.5, 0, digits13=True) == "-001.5000E+00"
    assert format_number(2500.0, 0) == "+002.500E+03"   # a mantissa never overflows
    assert format_number(-1e-15, -9) == "+000.000E-09"  # no negative zero
    assert format_time(1.5) == "+01.5000E+00"
    assert format_time(1.5, digits13=True) == "+001.5000E+00"
    assert format_time(123.45678) == "+123.457E+00"
    for text in ("+000.005E-09", "+01.5000E+00", "+123.457E+00"):
        assert len(text) == 12


@pytest.fixture
def on(core, hw):
    core.handle("CN 1,2;DV 1,0,0.2,1E-3;DV 2,0,0.1,1E-3")
    return core


def test_fmt1_current_voltage_and_ranges(on, hw):
    hw.currents[1] = 5e-12
    assert on.handle("TI 1") == ["NAI+005.000E-12"]      # auto: the 10 pA range
    assert on.handle("TI 1,-11") == ["NAI+000.005E-09"]  # fixed 1 nA range
    on.handle("RI 1,-11")
    assert on.handle("TI 1") == ["NAI+000.005E-09"]
    hw.currents[1] = -1.5e-6
    assert on.handle("TI 1") == ["VAI+199.999E+99"]      # beyond the fixed 1 nA range
    on.handle("RI 1,0")
    assert on.handle("TI 1") == ["NAI-001.500E-06"]
    on.handle("RI 1,17")                                 # limited auto: 1 mA and up
    assert on.handle("TI 1") == ["NAI-000.002E-03"]
    hw.voltages[1] = 1.5
    assert on.handle("TV 1") == ["NAV+001.500E+00"]
    hw.voltages[2] = -0.25
    assert on.handle("TV 2") == ["NBV-000.250E+00"]


def test_fmt1_fields_are_15_characters_plus_separator(on, hw):
    hw.currents.update({1: -2.5e-9, 2: 3e-4})
    on.handle("MM 1,1,2")
    (line,) = on.handle("XE")
    assert line == "NAI-002.500E-09,NBI+000.300E-03"
    assert len(line) + 1 == 2 * 16


def test_fmt11_and_fmt21_widths(on, hw):
    hw.currents.update({1: -2.5e-9, 2: 3e-4})
    on.handle("MM 1,1,2")
    on.handle("FMT 11")
    (line,) = on.handle("XE")
    assert line == "NAI-002.5000E-09,NBI+000.3000E-03"
    assert len(line) + 1 == 2 * 17
    on.handle("FMT 21,0")
    (line,) = on.handle("XE")
    assert line == "000AI-002.5000E-09,000BI+000.3000E-03"
    assert len(line) + 1 == 2 * 19
    on.handle("FMT 2")
    assert on.handle("XE") == ["-002.500E-09,+000.300E-03"]


def test_compliance_this_channel_c_other_channel_t(on, hw):
    hw.currents.update({1: 5e-3, 2: 1e-6})   # channel 1 pushes past its 1 mA compliance
    on.handle("MM 1,1,2")
    assert on.handle("XE") == ["CAI+001.000E-03,TBI+001.000E-06"]
    on.handle("FMT 21")
    assert on.handle("XE") == ["008AI+001.0000E-03,004BI+001.0000E-06"]
    hw.currents[2] = -2e-3                   # both in compliance
    assert on.handle("XE") == ["012AI+001.0000E-03,012BI-001.0000E-03"]


def test_compliance_in_tiv_marks_the_voltage_too(on, hw):
    hw.currents[1] = -1e-3
    hw.voltages[1] = 0.15
    assert on.handle("TIV 1") == ["CAI-001.000E-03,CAV+000.150E+00"]


def test_overflow_in_fmt21(on, hw):
    hw.currents[1] = 5e-9
    on.handle("FMT 21;RI 1,-11")
    assert on.handle("TI 1") == ["001AI+199.9990E+99"]


def test_cmm_voltage_measurement_in_spot_mode(on, hw):
    hw.voltages[2] = 0.1
    on.handle("CMM 2,2;MM 1,2")
    assert on.handle("XE") == ["NBV+000.100E+00"]


def test_time_stamps(on, hw):
    on.handle("TSR")
    hw.currents[1] = 1e-9
    (line,) = on.handle("TTI 1")
    time_field, data = line.split(",")
    assert re.fullmatch(r"NAT\+\d\d\.\d{4}E\+00", time_field) and data == "NAI+001.000E-09"
    assert 0 < float(time_field[3:]) < 0.01
    on.handle("TSC 1;MM 1,1")
    (line,) = on.handle("XE")
    assert re.fullmatch(r"NAT\+\d\d\.\d{4}E\+00,NAI\+001\.000E-09", line)
    assert re.fullmatch(r"NZT\+\d\d\.\d{4}E\+00", one(on, "TSQ"))


def test_integration_time_follows_ait_and_aad(on, hw):
    on.handle("TI 1")
    default = hw.named("measure_current")[-1][2]
    assert 0.5e-3 < default < 2e-3
    on.handle("AAD 1,1;AIT 1,2,3")
    on.handle("TI 1")
    assert hw.named("measure_current")[-1] == ("measure_current", 1, pytest.approx(3 / 50))
    on.handle("AIT 1,1,10")
    on.handle("TI 1")
    assert hw.named("measure_current")[-1][2] == pytest.approx(10 * 80e-6)
    on.handle("AIT 1,3,1E-3")                      # no measurement-time mode for high res
    on.handle("AIT 0,1,2000")
    assert error_codes(on) == [120, 120]


# ---------------------------------------------------------------------- pulsed spot


@pytest.mark.parametrize("message", [
    "PT 0,0.1E-3",          # width below 0.5 ms
    "PT 0,2.5",             # width above 2 s
    "PT 0,4E-3,5E-3",       # period < width + 2 ms
    "PT 0,0.2,0.205",       # period < width + 10 ms for widths above 100 ms
    "PT 0,1E-3,6",          # period above 5 s
    "PT 0,1E-3,4E-3",       # period below 5 ms
    "PT 700,1E-3",          # hold above 655.35 s
    "PT 0,1E-3,5E-3,2E-3",  # trigger delay longer than the width
])
def test_pulse_timing_out_of_range_is_refused(on, hw, message):
    on.handle("PV 1,0,0,1.5,1E-3;MM 3,1")
    assert on.handle(message + ";XE") == []
    assert error_codes(on) == [120]
    assert hw.named("pulse") == []


def test_pulsed_spot(on, hw):
    hw.calls.clear()
    hw.pulse_current = 2.5e-4
    on.handle("PT 0.01,1E-3,5E-3;PV 1,0,0.05,1.5,1E-3;MM 3,1")
    assert hw.applied() == []                     # PV is a setting, nothing is forced yet
    assert on.handle("XE") == ["NAI+000.250E-03"]
    assert hw.named("pulse") == [("pulse", 1, 0.05, 1.5, 1e-3, 0.01, 1e-3)]
    assert on.outputs()[1] == (0.05, 1e-3)        # the channel stays at the base value
    assert hw.applied()[-1][1] == (0.05, 1e-3)


def test_pulsed_spot_compliance_and_validation(on, hw):
    hw.pulse_current = -3e-3
    on.handle("PT 0,1E-3;PV 1,0,0,-1.5,1E-3;MM 3,1")
    assert on.handle("XE") == ["CAI-001.000E-03"]
    assert on.handle("MM 3,1,2") == []
    on.handle("MM 3,2")
    assert on.handle("XE") == []                  # no PV for channel 2
    assert on.handle("PV 1,0,0,150") == []
    assert on.handle("PV 1,0,0,1,0") == []
    assert error_codes(on) == [122, 202, 120, 123]
    assert len(hw.named("pulse")) == 1


def test_pulse_period_is_kept_between_triggers(on, hw):
    on.handle("PT 0,1E-3,0.5;PV 1,0,0,1,1E-3;MM 3,1")
    on.handle("XE")
    hw.calls.clear()
    on.handle("XE")
    waited = sum(c[1] for c in hw.named("advance"))
    assert waited == pytest.approx(0.5 - 1e-3, abs=1e-3)


# ----------------------------------------------------------------------------- *LRN?


def lrn(core, kind):
    return dict(
        (m.group("command") + (m.group("parameter").split(",")[0] if m.group("command") in
                               ("DV", "RI", "RV", "PV", "AAD", "CMM") else ""),
         m.group("parameter"))
        for m in re.finditer(LRN_REGEX, one(core, f"*LRN? {kind}")))


def test_lrn_output_switches(core):
    assert one(core, "*LRN? 0") == "CL"
    core.handle("CN 1,2")
    assert one(core, "*LRN? 0") == "CN1,2"


def test_lrn_channel_settings_parse_with_pymeasure_regex(core):
    assert one(core, "*LRN? 1") == "CL1"
    core.handle("CN 1;DV 1,0,0.2,0.1")
    reply = one(core, "*LRN? 1")
    assert reply == "DV1,0,+2.0000E-01,+1.0000E-01,0"
    (match,) = re.findall(LRN_REGEX, reply)
    assert match == ("DV", "1,0,+2.0000E-01,+1.0000E-01,0")
    assert [float(x) for x in match[1].split(",")[2:4]] == [0.2, 0.1]
    assert core.handle("*LRN? 5") == [] and error_codes(core) == [125]


def test_lrn_31_measurement_settings(core):
    assert one(core, "*LRN? 31") == "TM1;AV1,0;CM1;FMT1,0"
    core.handle("FMT 21,0;MM 3,1")
    reply = one(core, "*LRN? 31")
    assert reply == "TM1;AV1,0;CM1;FMT21,0;MM3,1"
    assert dict(re.findall(LRN_REGEX, reply)) == {
        "TM": "1", "AV": "1,0", "CM": "1", "FMT": "21,0", "MM": "3,1"}


@pytest.mark.parametrize("kind", [0, 1, 30, 31, 32, 33, 34, 46, 53, 54, 55, 56, 60, 110])
def test_every_lrn_reply_is_fully_covered_by_the_regex(core, kind):
    core.handle("CN 1;DV 1,0,0.2,1E-3;RI 1,-14;PT 0,1E-3;PV 1,0,0,1,1E-3;MM 1,1,2")
    reply = one(core, f"*LRN? {kind}")
    assert re.sub(LRN_REGEX, "", reply).strip(";") == ""


def test_lrn_ranges(core):
    core.handle("RI 1,-14;RV 2,12")
    got = lrn(core, 32)
    assert got["RI1"] == "1,-14" and got["RV2"] == "2,12" and got["RI3"] == "3,0"


# ------------------------------------------------- staircase sweep, sampling, SPGU, *OPC?


def sweep(core, hw, fmt: str, steps: int = 3) -> str:
    core.handle(f"CN 1;FMT {fmt};WM 1,1;WV 1,1,0,0,0.2,{steps},1E-3;MM 2,1")
    hw.calls.clear()
    (data,) = core.handle("XE")
    return data


@pytest.mark.parametrize("fmt, size, source", [
    ("1,1", 16, ["WAV+000.000E+00", "WAV+000.100E+00", "EAV+000.200E+00"]),
    ("11,1", 17, ["WAV+000.0000E+00", "WAV+000.1000E+00", "EAV+000.2000E+00"]),
    # GUESS (as the emulator): FMT 21 puts the W/E letter right-aligned in the status digits
    ("21,1", 19, ["  WAv+000.0000E+00", "  WAv+000.1000E+00", "  EAv+000.2000E+00"]),
])
def test_sweep_data_pairs_each_reading_with_its_source_value_at_exact_widths(core, hw, fmt, size, source):
    """Programming guide: per step the measured channels, then (FMT mode 1) the sweep source's
    output, status W for the first and intermediate steps and E for the last; pymeasure reads
    fixed byte counts (16/17/19 with the separator), so every field has the same width."""
    hw.currents[1] = 2.5e-6
    fields = sweep(core, hw, fmt).split(",")
    assert fields[1::2] == source
    reading = {"1,1": "NAI+002.500E-06", "11,1": "NAI+002.5000E-06", "21,1": "000AI+002.5000E-06"}[fmt]
    assert fields[0::2] == [reading] * 3
    assert {len(f) + 1 for f in fields} == {size}
    assert [c[1][1] for c in hw.named("apply")] == [(0.0, 1e-3), (0.1, 1e-3), (0.2, 1e-3), (0.0, 1e-3)]
    assert error_codes(core) == []


def test_sweep_without_source_output_and_with_two_measured_channels(core, hw):
    hw.currents.update({1: 1e-6, 2: -2e-6})
    core.handle("CN 1,2;DV 2,0,0,1E-3;FMT 1,0;WV 1,1,0,0.1,0.3,2,1E-3;MM 2,1,2")
    assert core.handle("XE") == ["NAI+001.000E-06,NBI-002.000E-06,NAI+001.000E-06,NBI-002.000E-06"]


def test_sweep_automatic_abort_stops_at_compliance_and_returns_to_the_start(core, hw):
    hw.currents[1] = 5e-3                         # past the 1 mA compliance at every step
    core.handle("CN 1;FMT 1,1;WM 2,2;WV 1,1,0,0.1,0.5,5,1E-3;MM 2,1")
    assert core.handle("XE") == ["CAI+001.000E-03,EAV+000.100E+00"]   # one step, marked last
    assert core.outputs()[1] == (0.1, 1e-3)       # abort: the start value, not the post (stop) value
    hw.currents[1] = 1e-6
    core.handle("XE")
    assert core.outputs()[1] == (0.5, 1e-3)       # WM 2,2 without an abort: the stop value


def test_two_way_and_log_sweeps(core, hw):
    core.handle("CN 1;FMT 1,1;WV 1,3,0,0,0.2,3,1E-3;MM 2,1")
    (data,) = core.handle("XE")
    assert [f[3:] for f in data.split(",")[1::2]] == [
        "+000.000E+00", "+000.100E+00", "+000.200E+00", "+000.200E+00", "+000.100E+00", "+000.000E+00"]
    core.handle("WV 1,2,0,0.01,1,3,1E-3")
    (data,) = core.handle("XE")
    assert [float(f[3:]) for f in data.split(",")[1::2]] == pytest.approx([0.01, 0.1, 1.0])
    core.handle("WV 1,2,0,0,1,3,1E-3")           # a log sweep cannot start at 0 V
    assert error_codes(core) == [120]


def test_lrn_33_reports_the_sweep_set_up_as_qcodes_parses_it(core):
    from qcodes.instrument_drivers.Keysight.keysightb1500.KeysightB1517A import KeysightB1500IVSweeper as Sweeper

    core.handle("CN 1,2;WT 0.1,0.01,0.002;WM 2,2;WV 1,3,0,0,1.5,11,1E-3,0.01;WSV 2,0,0,-1,2E-3")
    reply = one(core, "*LRN? 33")
    assert reply == ("WM2,2;WT+1.0000E-01,+1.0000E-02,+2.0000E-03,0,0;"
                     "WSV2,0,+0.0000E+00,-1.0000E+00,+2.0000E-03;"
                     "WV1,3,0,+0.0000E+00,+1.5000E+00,11,+1.0000E-03,+1.0000E-02")
    assert re.sub(LRN_REGEX, "", reply).strip(";") == ""
    steps = Sweeper._get_sweep_steps_parser(reply)
    assert (int(steps["chan"]), int(steps["sweep_mode"]), float(steps["sweep_end"]),
            int(steps["sweep_steps"])) == (1, 3, 1.5, 11)
    assert Sweeper._get_sweep_delays_parser(reply) == {
        "hold_time": 0.1, "delay": 0.01, "step_delay": 0.002, "trigger_delay": 0.0, "measure_delay": 0.0}


@pytest.mark.parametrize("kind, setup", [
    (33, "CN 1,2;WT 0.1,0.01,0.002;WM 2,2;WV 1,3,0,0,1.5,11,1E-3,0.01;WSV 2,0,0,-1,2E-3"),
    (47, "CN 1,2;MT 0.1,2E-3,5,0.05;ML 1;MSC 2,2;MV 1,0,0,0.2,1E-3;MV 2,0,0.1,-0.3,2E-3"),
])
def test_lrn_replies_are_commands_that_restore_the_settings(hw, kind, setup):
    """*LRN? answers command names with their parameters: sent back to a reset instrument,
    they give the same settings (the use the guide makes of it)."""
    first = B1500ACore(hw)
    first.handle(setup)
    reply = one(first, f"*LRN? {kind}")
    second = B1500ACore(hw)
    second.handle("CN 1,2;" + reply)
    assert errors(second) == []
    assert one(second, f"*LRN? {kind}") == reply


def test_lrn_47_sampling_settings(core):
    assert one(core, "*LRN? 47") == "MT0,+2.0000E-03,1000,0;ML1;MSC1,1"
    core.handle("CN 1;MT 0.1,2E-3,5,0.05;MSC 2,2;MV 1,0,0,0.2,1E-3")
    assert one(core, "*LRN? 47") == ("MT+1.0000E-01,+2.0000E-03,5,+5.0000E-02;ML1;MSC2,2;"
                                     "MV1,0,+0.0000E+00,+2.0000E-01,+1.0000E-03")


def test_sampling_mm10_samples_at_the_interval_then_returns_to_base(core, hw):
    """MM 10: the base value for the base hold, the bias for the bias hold, then one reading
    per interval; MSC post 1 returns the source to its base value."""
    hw.currents[1] = 3e-6
    core.handle("CN 1;TSC 1;MT 0.01,0.002,3,0.02;MV 1,0,0.05,0.2,1E-3;MM 10,1;TSR")
    hw.calls.clear()
    (data,) = core.handle("XE")
    fields = data.split(",")
    assert fields[1::2] == ["NAI+003.000E-06"] * 3
    stamps = [float(f[3:]) for f in fields[0::2]]
    assert all(f.startswith("NAT") and len(f) == 15 for f in fields[0::2])
    assert [b - a for a, b in zip(stamps, stamps[1:])] == pytest.approx([0.002, 0.002], abs=1e-4)
    assert [c[1][1] for c in hw.named("apply")] == [(0.05, 1e-3), (0.2, 1e-3), (0.05, 1e-3)]
    waits = [c[1] for c in hw.named("advance")]
    assert 0.02 in waits and 0.01 in waits         # base hold, then bias hold


def test_sampling_abort_at_compliance_and_post_bias(core, hw):
    hw.currents[1] = 5e-3
    core.handle("CN 1;MT 0,0.002,5;MSC 2,2;MV 1,0,0,0.2,1E-3;MM 10,1")
    assert core.handle("XE") == ["CAI+001.000E-03"]
    assert core.outputs()[1] == (0.2, 1e-3)      # post 2: left at the bias
    core.handle("MV 1,0,0,150,1E-3")             # beyond the SMU's 100 V
    core.handle("MM 10,3")                       # slot 3 holds an SMU that is off
    assert core.handle("XE") == []
    assert error_codes(core) == [120, 200]


@pytest.fixture
def spgu(hw):
    hw.note_pulse = lambda peak, width, compliance: hw.calls.append(("note_pulse", peak, width, compliance))
    c = B1500ACore(hw, modules={1: "B1517A", 5: "B1525A"})
    hw.calls.clear()
    return c


def test_spgu_queries_answer_what_was_set(spgu):
    spgu.handle("CN 501;SIM 0;SPPER 1E-5;SPRM 1,20;SER 501,1E6;SPM 501,3;SPT 501,1,1E-7,1E-6,2E-8,3E-8;"
                "SPV 501,1,0.1,1.5;SPV 501,2,0,-0.5;ODSW 501,1,0,1E-7,2E-6")
    assert errors(spgu) == []
    assert spgu.handle("SPV? 501,1;SPV? 501,2;SPT? 501,1;SPM? 501;SER? 501;SPRM?;SPPER?;SIM?;ODSW? 501") == [
        "+1.0000E-01,+1.5000E+00", "+0.0000E+00,-5.0000E-01", "+1.0000E-07,+1.0000E-06,+2.0000E-08,+3.0000E-08",
        "3", "+1.0000E+06", "1,20", "+1.0000E-05", "0", "1,0,+1.0000E-07,+2.0000E-06"]
    assert spgu.handle("SPV? 502,0") == ["+0.0000E+00,+0.0000E+00"]   # the other channel, as reset
    assert spgu.handle("SPV? 101,1") == [] and error_codes(spgu) == [208]


def test_spgu_status_idle_after_a_counted_run_busy_in_a_free_run(spgu, hw):
    spgu.handle("CN 501;SIM 0;SPPER 1E-5;SPRM 1,4;SER 501,1E6;SPM 501,1;SPT 501,1,0,1E-6,2E-8;SPV 501,1,0,1")
    assert spgu.handle("SRP;SPST?") == ["0"]        # a counted run is over when SRP is done
    assert len(hw.named("note_pulse")) == 4
    spgu.handle("SPRM 0;SRP")
    assert spgu.handle("SPST?") == ["1"]
    spgu.handle("SPP")
    assert spgu.handle("SPST?") == ["0"]
    assert spgu.outputs()[501] == (0.0, 0.0)        # SPP: back at the base level
    assert error_codes(spgu) == []


def test_spgu_refuses_a_pulse_that_does_not_fit_the_period_and_a_run_with_nothing_on(spgu, hw):
    spgu.handle("SIM 0;SPPER 1E-6;SPRM 1,1;SPM 501,1;SPT 501,1,0,1E-6,2E-8")
    assert spgu.handle("SRP;SPST?") == [] and error_codes(spgu) == [205]   # 501 is off
    spgu.handle("CN 501;SRP")
    assert error_codes(spgu) == [206] and hw.named("note_pulse") == []


@pytest.mark.parametrize("message, first", [("XE;*OPC?", "1"), ("XE;ERRX?", NO_ERROR), ("XE;*OPC?;ERRX?", "1")])
def test_query_replies_come_before_the_data_of_an_xe_in_the_same_message(on, hw, message, first):
    """The guide keeps query replies (query buffer) apart from measurement data (data output
    buffer); clients read `*OPC?` sent after XE before the sweep data. GUESS: on a socket,
    within one message the query buffer goes out first."""
    hw.currents[1] = 1e-6
    on.handle("FMT 1,1;WV 1,1,0,0,0.2,2,1E-3;MM 2,1")
    replies = on.handle(message)
    assert replies[0] == first
    assert replies[-1] == "NAI+001.000E-06,WAV+000.000E+00,NAI+001.000E-06,EAV+000.200E+00"
    assert len(replies) == message.count("?") + 1
    assert on.handle("XE") == replies[-1:] and on.handle("*OPC?") == ["1"]   # one message each: in order


# ---------------------------------------------------------- pymeasure, unmodified


class CoreAdapter:
    """A pymeasure Adapter that feeds the core and buffers its bytes like a socket."""

    def __new__(cls, core):
        from pymeasure.adapters import Adapter

        class _Adapter(Adapter):
            def __init__(self, core):
                super().__init__()
                self.core, self.buffer, self.sent = core, b"", []

            def _write(self, command, **kwargs):
                self.sent.append(command)
                for line in self.core.handle(command):
                    self.buffer += (line + "\r\n").encode()

            def _read(self, **kwargs):
                text, sep, rest = self.buffer.partition(b"\r\n")
                assert sep, "the instrument has nothing to send (a real client would time out)"
                self.buffer = rest
                return text.decode()

            def _read_bytes(self, count, break_on_termchar=False, **kwargs):
                data, self.buffer = self.buffer[:count], self.buffer[count:]
                return data

            def flush_read_buffer(self):
                self.buffer = b""

        return _Adapter(core)


def test_pymeasure_agilent_b1500_spot_measurement(core, hw):
    from pymeasure.instruments.agilent.agilentB1500 import AgilentB1500

    adapter = CoreAdapter(core)
    b1500 = AgilentB1500(adapter)
    b1500.initialize_all_smus()
    b1500.data_format(1)
    smu = b1500.smu1
    smu.enable()
    smu.force("Voltage", "Auto Ranging", 0.2, 0.01)
    b1500.meas_mode("SPOT", smu)
    smu.meas_range_current = "1 uA limited auto ranging"
    hw.currents[1] = 2e-6
    b1500.send_trigger()
    ((status, channel, name, value),) = b1500.read_channels(1)
    assert (status, channel, name) == ("N", "SMU1", "Current (A)")
    assert value == pytest.approx(2e-6)
    assert adapter.sent[:3] == ["UNT?", "FMT 1, 0", "ERRX?"]
    assert "DV 1, 0, 0.2, 0.01" in adapter.sent and "MM 1, 1" in adapter.sent
    assert "RI 1, 14" in adapter.sent
    assert core.outputs()[1] == (0.2, 0.01)
    adapter.flush_read_buffer()  # read_channels leaves the LF of the CR LF behind
    assert b1500.query_learn(31)["MM"] == ["1", "1"]
    assert b1500.query_learn(1)["DV1"][1:3] == ["+2.0000E-01", "+1.0000E-02"]
    assert b1500.query_meas_settings()["Measurement Channels"] == "SMU1"
    assert smu.series_resistor is False and int(smu.meas_op_mode.value) == 0
    b1500.check_errors()
    smu.disable()
    assert core.outputs()[1] is None


def test_pymeasure_check_errors_raises_on_an_instrument_error(core):
    from pymeasure.instruments.agilent.agilentB1500 import AgilentB1500

    b1500 = AgilentB1500(CoreAdapter(core))
    b1500.initialize_all_smus()
    with pytest.raises(OSError, match=r"Agilent B1500 Error \+200: Channel output switch"):
        b1500.smu1.force("Voltage", "Auto Ranging", 0.2, 0.01)  # output switch is off


# -------------------------------------------------------------------- architecture


def test_simulator_module_imports_only_stdlib_and_numpy():
    tree = ast.parse(Path(b1500a.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "math", "re", "dataclasses", "typing", "numpy"}

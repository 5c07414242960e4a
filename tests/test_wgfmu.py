"""The B1530A WGFMU driver against the emulated instrument library on a simulated bench.

The bench: a 2x2 crossbar behind an E5250A; WGFMU channel 101 (drive) and 102 (sense) are
cabled to switch inputs 1 and 2, and an SMU of an emulated B1500 on input 3 holds every
other line at 0 V (so a read sees only the routed device). Routes and the grounding SMU
are set through the emulators' cores, in-process; the WGFMU library is in-process by design.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import numpy as np
import pytest

from drivers import wgfmu_api as api
from drivers.errors import InstrumentError, LimitError, PulseOutcomeUnknown
from drivers.interfaces import PulseStep
from drivers.limits import Limits
from drivers.wgfmu import WGFMU, load_library
from helpers import one_torch_thread  # noqa: F401
from simulator.bench import SimulatedBench, _SourceHardware
from simulator.spec import CableToSwitch, EmulatedInstrument, SimBenchSpec
from simulator.wgfmu import EmulatedWgfmuLibrary

DRIVE, SENSE = 101, 102
ROW_PORTS, COL_PORTS = [1, 2], [3, 4]
ADDRESS = "GPIB0::17::INSTR"


def bench_spec(seed: int = 5) -> SimBenchSpec:
    return SimBenchSpec(
        rows=2, cols=2, seed=seed, switch="switch", row_ports=ROW_PORTS, col_ports=COL_PORTS,
        instruments=[EmulatedInstrument(name="switch", type="keysight_e5250a", options={"cards": 1}),
                     EmulatedInstrument(name="analyzer", type="keysight_b1500a", options={"modules": {1: "B1517A"}})],
        cables=[CableToSwitch(instrument="wgfmu", channel=DRIVE, input=1),
                CableToSwitch(instrument="wgfmu", channel=SENSE, input=2),
                CableToSwitch(instrument="analyzer", channel=1, input=3)])


def route(bench: SimulatedBench, row: int, col: int) -> None:
    """Drive on `row`, sense on `col`, every other line grounded by the SMU."""
    others = [p for i, p in enumerate(ROW_PORTS) if i != row] + [p for j, p in enumerate(COL_PORTS) if j != col]
    routes = [f"001{ROW_PORTS[row]:02d}", f"002{COL_PORTS[col]:02d}", *(f"003{p:02d}" for p in others)]
    switch = bench.cores["switch"]
    assert switch.handle(f":ROUT:OPEN:CARD ALL;:ROUT:CONN:RULE ALL,FREE;:ROUT:CLOS (@{','.join(routes)});"
                         ":SYST:ERR?") == ['0,"No error"']
    assert bench.cores["analyzer"].handle("CN 1;DV 1,0,0,0.01;ERRX?") == ['+0,"No Error."']


class RecordingLibrary:
    """The emulated library with every call written down (name, arguments)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        target = getattr(self.inner, name)
        if not name.startswith("WGFMU_"):
            return target

        def recorded(*args):
            self.calls.append((name, args))
            return target(*args)
        return recorded

    def names(self, since: int = 0) -> list[str]:
        return [name for name, _ in self.calls[since:]]


@pytest.fixture
def rig():
    bench = SimulatedBench(bench_spec())
    lib = RecordingLibrary(EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu")))
    wg = WGFMU(ADDRESS, limits=Limits(), library=lib)
    wg.initialize()
    yield bench, lib, wg
    wg.close()


def read_step(volts: float = 0.2) -> PulseStep:
    return PulseStep(volts, 0.0, 1e-6, measure=True)


# --- physics -------------------------------------------------------------------------------------

def test_a_read_step_measures_g_times_v_of_the_routed_device(rig):
    bench, lib, wg = rig
    for row, col in [(0, 0), (1, 1), (0, 1)]:
        route(bench, row, col)
        g = float(bench.conductances()[row, col])
        start = len(lib.calls)
        current = wg.run_sequence(DRIVE, SENSE, [read_step(0.2)])
        sd = bench.array.read_noise_sd(g) * 0.2
        # the sense channel sinks the device current: it reads -G x V
        assert abs(-current[0] - 0.2 * g) <= 5 * sd, (row, col, current, g)
        # averaged over the flat part only: after the 10 ns rise, for the 1 us of the step
        events = [args for name, args in lib.calls[start:] if name == "WGFMU_setMeasureEvent"]
        assert len(events) == 1
        pattern, _, t0, points, interval, averaging, mode = events[0]
        assert pattern == b"memlab_sense" and mode == api.MEASURE_EVENT_DATA_AVERAGED
        assert (t0, points) == (pytest.approx(1e-8), 1)
        assert interval == pytest.approx(1e-6) and averaging == pytest.approx(1e-6)
    assert bench.hazards == []


def test_a_write_pulse_changes_the_device_as_the_simulators_own_pulse_would(rig):
    bench, _, wg = rig
    twin = SimulatedBench(bench_spec())   # the same devices, pulsed by the bench's own pulse
    for b in (bench, twin):
        route(b, 1, 0)
    before = bench.conductances().numpy()
    np.testing.assert_array_equal(before, twin.conductances().numpy())
    wg.run_sequence(DRIVE, SENSE, [PulseStep(1.0, 0.0, 1e-3)])
    hardware = _SourceHardware(twin, "wgfmu")
    hardware.apply({SENSE: (0.0, 0.01)})
    hardware.pulse(DRIVE, 0.0, 1.0, 1e-3, 0.0, 0.01)
    hardware.apply({DRIVE: None, SENSE: None})
    after, expected = bench.conductances().numpy(), twin.conductances().numpy()
    change = expected[1, 0] - before[1, 0]
    assert change / before[1, 0] > 0.02, "the pulse should switch the device noticeably"
    # the WGFMU's 10 ns edges (at half the level) are the only difference
    assert abs(after[1, 0] - expected[1, 0]) < 0.01 * abs(change)
    # the other device on the driven row (its column grounded) gets the same pulse
    assert np.all(np.abs(after - expected) <= 0.05 * np.abs(expected - before) + 1e-12)
    assert abs(after[1, 1] - before[1, 1]) > 0.02 * before[1, 1]
    assert bench.exposure.pulse_width == pytest.approx(1e-3 + 2e-8)
    assert bench.exposure.pulse_energy == pytest.approx(1.0 * 0.01 * (1e-3 + 2e-8))


def test_many_pulse_and_read_pairs_run_in_one_execute(rig):
    bench, lib, wg = rig
    route(bench, 0, 1)
    steps = []
    for _ in range(20):
        steps += [PulseStep(1.2, 0.0, 1e-6), read_step(0.2)]
    start, sent, pulses = len(lib.calls), wg.pulses_sent, bench.exposure.pulses
    currents = wg.run_sequence(DRIVE, SENSE, steps)
    assert lib.names(start).count("WGFMU_execute") == 1
    assert lib.names(start).count("WGFMU_createPattern") == 2   # one pattern per channel
    assert wg.pulses_sent == sent + 1
    assert bench.exposure.pulses == pulses + 40   # 20 writes and 20 reads on the drive line
    assert len(currents) == 20
    g = float(bench.conductances()[0, 1])
    sd = bench.array.read_noise_sd(g) * 0.2
    assert abs(-currents[-1] - 0.2 * g) <= 5 * sd
    assert -currents[-1] > -currents[0] + 5 * sd, "SET pulses between the reads raise the conductance"


# --- the guard ---------------------------------------------------------------------------------

@pytest.fixture
def tight():
    bench = SimulatedBench(bench_spec())
    route(bench, 0, 0)
    lib = RecordingLibrary(EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu")))
    limits = Limits(max_line_voltage=1.2, max_device_voltage=1.0, compliance_current=1e-3,
                    max_pulse_width=1e-4, max_pulse_energy=5e-8)
    wg = WGFMU(ADDRESS, limits=limits, library=lib)
    wg.initialize()
    yield bench, lib, wg
    wg.close()


@pytest.mark.parametrize("steps, match", [
    ([PulseStep(1.1, 0.0, 1e-6)], "1.1 V exceeds"),                       # beyond max_device_voltage
    ([PulseStep(0.8, -0.8, 1e-6)], "differ by up to 1.6 V"),              # each line fine, the device not
    ([PulseStep(0.5, 0.0, 2e-4)], "max_pulse_width"),
    ([PulseStep(1.0, 0.0, 8e-5)], "pulse energy"),                        # 1 V x 1 mA x 80 us = 80 nJ
    # the device sees 0.05 V, but a device from either line to a grounded one would not
    ([PulseStep(0.2, 0.0, 1e-6), PulseStep(0.6, 0.55, 9e-5)], "pulse energy"),
])
def test_refused_sequences_never_reach_the_library(tight, steps, match):
    bench, lib, wg = tight
    start, sent = len(lib.calls), wg.pulses_sent
    with pytest.raises(LimitError, match=match):
        wg.check_sequence(DRIVE, SENSE, steps)
    with pytest.raises(LimitError, match=match):
        wg.run_sequence(DRIVE, SENSE, steps)
    assert len(lib.calls) == start and wg.pulses_sent == sent
    assert bench.exposure.pulses == 0


def test_refused_raw_calls_never_reach_the_library(tight):
    _, lib, wg = tight
    start = len(lib.calls)
    refused = [
        ("setOperationMode", (DRIVE, api.OPERATION_MODE_PG)),          # 50 ohm output: no current range
        ("setOperationMode", (DRIVE, api.OPERATION_MODE_SMU)),
        ("setMeasureCurrentRange", (DRIVE, api.MEASURE_CURRENT_RANGE_10MA)),   # above compliance_current
        ("dcforceVoltage", (DRIVE, 0.5)),                               # a DC level has no width
        ("addSequence", (DRIVE, "never_built", 1.0)),
        ("addVector", ("never_built", 1e-8, 0.1)),
        ("createPattern", ("p", 1.5)),
        ("createPattern", ("a name", 0.0)),
        ("setForceDelay", (DRIVE, 1e-8)),
        ("doSelfTest", ()),
        ("execute", ("now",)),
        ("connect", (103,)),
    ]
    for name, args in refused:
        with pytest.raises(LimitError):
            wg.call(name, *args)
    assert len(lib.calls) == start
    # a pattern that does not end at 0 V would hold its last level: refused at execute
    wg.call("clear")
    for name, args in wg._channel_setup():
        wg.call(name, *args)
    wg.call("createPattern", "p", 0.0)
    wg.call("addVector", "p", 1e-8, 0.3)
    wg.call("addSequence", DRIVE, "p", 1.0)
    start = len(lib.calls)
    with pytest.raises(LimitError, match="start and end at 0 V"):
        wg.call("execute")
    with pytest.raises(LimitError, match="not a whole number of 10 ns"):
        wg.call("addVector", "p", 1.5e-8, 0.0)   # not a whole number of 10 ns: how it rounds is unknown
    assert len(lib.calls) == start


def test_nothing_runs_before_the_session_has_cleared_the_library():
    bench = SimulatedBench(bench_spec())
    lib = RecordingLibrary(EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu")))
    wg = WGFMU(ADDRESS, limits=Limits(), library=lib)
    wg.call("openSession", ADDRESS)
    wg._session = True
    for name, args in [("connect", (DRIVE,)), ("execute", ()), ("addSequence", (DRIVE, "p", 1.0))]:
        with pytest.raises(LimitError, match="unknown"):
            wg.call(name, *args)
    assert lib.names() == ["WGFMU_openSession"]
    wg.close()


# --- failures -------------------------------------------------------------------------------

def test_library_errors_surface_with_their_code_name_and_summary():
    bench = SimulatedBench(bench_spec())
    wg = WGFMU(ADDRESS, limits=Limits(), library=EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu")),
               channels=(101, 103))
    with pytest.raises(InstrumentError) as error:
        wg.initialize()
    assert error.value.code == api.CHANNEL_NOT_FOUND_ERROR == -9
    assert "WGFMU_CHANNEL_NOT_FOUND_ERROR" in error.value.message
    assert "channel 103 not found" in error.value.message   # the library's own error summary
    assert error.value.command == "setOperationMode 103,2001"
    with pytest.raises(InstrumentError, match="channel 103 not found"):
        wg.close()   # channel 101 is still made safe; the failure on 103 is reported
    assert bench.source_outputs()[("wgfmu", 101)] is None


def test_a_query_before_any_run_reports_result_not_ready(rig):
    _, _, wg = rig
    size, times, values = ctypes.c_int(1), (ctypes.c_double * 1)(), (ctypes.c_double * 1)()
    with pytest.raises(InstrumentError) as error:
        wg.call("getMeasureValues", SENSE, 0, out=[size, times, values])
    assert error.value.code == api.RESULT_NOT_READY_ERROR
    assert "WGFMU_RESULT_NOT_READY_ERROR" in str(error.value)


def test_an_unconfirmed_run_is_pulse_outcome_unknown_and_never_retried(rig):
    bench, lib, wg = rig
    route(bench, 0, 0)
    lib.inner.fail_next("WGFMU_waitUntilCompleted", api.COMMUNICATION_ERROR)
    start, sent = len(lib.calls), wg.pulses_sent
    with pytest.raises(PulseOutcomeUnknown) as error:
        wg.run_sequence(DRIVE, SENSE, [PulseStep(0.5, 0.0, 1e-6), read_step()])
    assert error.value.__cause__.code == api.COMMUNICATION_ERROR
    assert lib.names(start).count("WGFMU_execute") == 1
    assert lib.names(start).count("WGFMU_waitUntilCompleted") == 1
    assert wg.pulses_sent == sent + 1
    assert bench.exposure.pulses == 2   # the run did happen: its outcome is what is unknown
    # the levels are now unknown to the guard: nothing more runs until the safe state
    with pytest.raises(LimitError, match="unknown"):
        wg.run_sequence(DRIVE, SENSE, [read_step()])
    wg.safe_state()
    assert len(wg.run_sequence(DRIVE, SENSE, [read_step()])) == 1


def test_a_failed_execute_counts_as_sent(rig):
    bench, lib, wg = rig
    route(bench, 0, 0)
    lib.inner.fail_next("WGFMU_execute", api.COMMUNICATION_ERROR, after=True)
    sent = wg.pulses_sent
    with pytest.raises(PulseOutcomeUnknown):
        wg.run_sequence(DRIVE, SENSE, [PulseStep(0.5, 0.0, 1e-6)])
    assert wg.pulses_sent == sent + 1
    assert lib.names().count("WGFMU_execute") == 1


def test_reading_the_values_is_retried_once_after_a_communication_error(rig):
    bench, lib, wg = rig
    route(bench, 1, 1)
    lib.inner.fail_next("WGFMU_getMeasureValues", api.COMMUNICATION_ERROR)
    start = len(lib.calls)
    current = wg.run_sequence(DRIVE, SENSE, [read_step()])
    assert lib.names(start).count("WGFMU_getMeasureValues") == 2
    assert lib.names(start).count("WGFMU_execute") == 1
    g = float(bench.conductances()[1, 1])
    assert abs(-current[0] - 0.2 * g) <= 5 * bench.array.read_noise_sd(g) * 0.2


def test_safe_state_forces_0_v_and_disconnects_even_after_failures(rig):
    bench, lib, wg = rig
    route(bench, 0, 0)
    wg.run_sequence(DRIVE, SENSE, [read_step()])
    assert bench.source_outputs()[("wgfmu", DRIVE)] == (0.0, 0.01)   # connected, at 0 V
    lib.inner.fail_next("WGFMU_abort", api.COMMUNICATION_ERROR)
    start = len(lib.calls)
    with pytest.raises(InstrumentError) as error:
        wg.safe_state()
    assert error.value.code == api.COMMUNICATION_ERROR
    names = lib.names(start)
    assert names.count("WGFMU_dcforceVoltage") == 2 and names.count("WGFMU_disconnect") == 2
    assert bench.source_outputs()[("wgfmu", DRIVE)] is None
    assert bench.source_outputs()[("wgfmu", SENSE)] is None
    # and a run afterwards reconnects
    assert len(wg.run_sequence(DRIVE, SENSE, [read_step()])) == 1
    assert bench.source_outputs()[("wgfmu", SENSE)] == (0.0, 0.01)


def test_max_steps_is_what_the_sequencer_memory_holds(rig):
    bench, lib, wg = rig
    assert wg.max_steps == (2048 - 1) // 3
    start = len(lib.calls)
    with pytest.raises(ValueError, match="exceed"):
        wg.check_sequence(DRIVE, SENSE, [read_step()] * (wg.max_steps + 1))
    assert len(lib.calls) == start
    # the emulated library refuses one vector more than its memory (at update)
    emu = lib.inner
    assert emu.WGFMU_clear() == 0
    assert emu.WGFMU_createPattern(b"long", 0.0) == 0
    n = 2048
    dts, vs = (ctypes.c_double * n)(*([1e-8] * n)), (ctypes.c_double * n)()
    assert emu.WGFMU_addVectors(b"long", dts, vs, n) == 0
    assert emu.WGFMU_addSequence(DRIVE, b"long", 1.0) == 0
    assert emu.WGFMU_update() == api.PARAMETER_OUT_OF_RANGE_ERROR


# --- the binding ---------------------------------------------------------------------------

def test_load_library_on_a_missing_path_names_what_was_tried(tmp_path, monkeypatch):
    missing = tmp_path / "wgfmu.dll"
    with pytest.raises(api.LibraryNotFound, match=re.escape(str(missing))) as error:
        load_library(missing)
    assert "MEMLAB_WGFMU_LIBRARY" in str(error.value)
    monkeypatch.setenv("MEMLAB_WGFMU_LIBRARY", str(tmp_path / "from_env.so"))
    with pytest.raises(api.LibraryNotFound, match="from_env.so"):
        load_library()
    with pytest.raises(api.LibraryNotFound, match="from_env.so"):
        WGFMU(ADDRESS, limits=Limits())   # no library given: the driver loads it


def test_a_library_that_is_not_the_wgfmu_library_is_refused():
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no C library to load")
    with pytest.raises(api.LibraryNotFound, match="lacks WGFMU_openSession"):
        load_library(libc)


# The prototypes of wgfmu.h (B1530A instrument library, 10-30-2008), one per line as the
# header declares them, to check the ctypes table against.
HEADER = """
int WGFMUAPI WGFMU_openSession(const char* address);
int WGFMUAPI WGFMU_closeSession();
int WGFMUAPI WGFMU_initialize();
int WGFMUAPI WGFMU_setTimeout(double timeout);
int WGFMUAPI WGFMU_doSelfCalibration(int* result, char* detail, int* size);
int WGFMUAPI WGFMU_doSelfTest(int* result, char* detail, int* size);
int WGFMUAPI WGFMU_getChannelIdSize(int* size);
int WGFMUAPI WGFMU_getChannelIds(int* channelIds, int* size);
int WGFMUAPI WGFMU_getErrorSize(int* size);
int WGFMUAPI WGFMU_getError(char* error, int* size);
int WGFMUAPI WGFMU_getErrorSummarySize(int* size);
int WGFMUAPI WGFMU_getErrorSummary(char* errorSummary, int* size);
int WGFMUAPI WGFMU_treatWarningsAsErrors(int warningLevel);
int WGFMUAPI WGFMU_setWarningLevel(int warningLevel);
int WGFMUAPI WGFMU_getWarningLevel(int* warningLevel);
int WGFMUAPI WGFMU_getWarningSummarySize(int* size);
int WGFMUAPI WGFMU_getWarningSummary(char* warningSummary, int* size);
int WGFMUAPI WGFMU_openLogFile(const char* fileName);
int WGFMUAPI WGFMU_closeLogFile();
int WGFMUAPI WGFMU_setOperationMode(int channelId,int operationMode);
int WGFMUAPI WGFMU_getOperationMode(int channelId, int* operationMode);
int WGFMUAPI WGFMU_setForceVoltageRange(int channelId, int forceVoltageRange);
int WGFMUAPI WGFMU_getForceVoltageRange(int channelId, int* forceVoltageRange);
int WGFMUAPI WGFMU_setMeasureMode(int channelId, int measureMode);
int WGFMUAPI WGFMU_getMeasureMode(int channelId, int* measureMode);
int WGFMUAPI WGFMU_setMeasureVoltageRange(int channelId, int measureVoltageRange);
int WGFMUAPI WGFMU_getMeasureVoltageRange(int channelId, int* measureVoltageRange);
int WGFMUAPI WGFMU_setMeasureCurrentRange(int channelId, int measureCurrentRange);
int WGFMUAPI WGFMU_getMeasureCurrentRange(int channelId, int* measureCurrentRange);
int WGFMUAPI WGFMU_setForceDelay(int channelId, double forceDelay);
int WGFMUAPI WGFMU_getForceDelay(int channelId, double* forceDelay);
int WGFMUAPI WGFMU_setMeasureDelay(int channelId, double measureDelay);
int WGFMUAPI WGFMU_getMeasureDelay(int channelId, double* measureDelay);
int WGFMUAPI WGFMU_setMeasureEnabled(int channelId, int measureEnabled);
int WGFMUAPI WGFMU_isMeasureEnabled(int channelId, int* measureEnabled);
int WGFMUAPI WGFMU_setTriggerOutMode(int channelId, int triggerOutMode, int polarity);
int WGFMUAPI WGFMU_getTriggerOutMode(int channelId, int* triggerOutMode, int* polarity);
int WGFMUAPI WGFMU_connect(int channelId);
int WGFMUAPI WGFMU_disconnect(int channelId);
int WGFMUAPI WGFMU_clear();
int WGFMUAPI WGFMU_createPattern(const char* patternName, double initialVoltage);
int WGFMUAPI WGFMU_addVector(const char* patternName, double deltaTime, double voltage);
int WGFMUAPI WGFMU_addVectors(const char* patternName, double* deltaTimes, double* voltages, int size);
int WGFMUAPI WGFMU_setVector(const char* patternName, double time, double voltage);
int WGFMUAPI WGFMU_setVectors(const char* patternName, double* times, double* voltages, int size);
int WGFMUAPI WGFMU_createMergedPattern(const char* patternName, const char* pattern1, const char* pattern2, int axis);
int WGFMUAPI WGFMU_createMultipliedPattern(const char* patternName, const char* pattern1, double timeFactor, double voltageFactor);
int WGFMUAPI WGFMU_createOffsetPattern(const char* patternName, const char* pattern1, double timeOffset, double voltageOffset);
int WGFMUAPI WGFMU_setMeasureEvent(const char* patternName, const char* eventName, double time, int measurementPoints, double measurementInterval, double averagingTime, int rawData);
int WGFMUAPI WGFMU_setRangeEvent(const char* patternName, const char* eventName, double time, int rangeIndex);
int WGFMUAPI WGFMU_setTriggerOutEvent(const char* patternName, const char* eventName, double time, double duration);
int WGFMUAPI WGFMU_addSequence(int channelId, const char* patternName, double loopCount);
int WGFMUAPI WGFMU_addSequences(int channelId, const char** patternNames, double* loopCounts, int size);
int WGFMUAPI WGFMU_getPatternForceValueSize(const char* patternName, int* size);
int WGFMUAPI WGFMU_getPatternForceValues(const char* patternName, int offset, int* size, double* forceTimes, double* forceValues);
int WGFMUAPI WGFMU_getPatternForceValue(const char* patternName, int index, double* forceTime, double* forceValue);
int WGFMUAPI WGFMU_getPatternInterpolatedForceValue(const char* patternName, double time, double* forceValue);
int WGFMUAPI WGFMU_getPatternMeasureTimeSize(const char* patternName, int* size);
int WGFMUAPI WGFMU_getPatternMeasureTimes(const char* patternName, int offset, int* size, double* measureTimes);
int WGFMUAPI WGFMU_getPatternMeasureTime(const char* patternName, int index, double* measureTime);
int WGFMUAPI WGFMU_getForceValueSize(int channelId, double* size);
int WGFMUAPI WGFMU_getForceValues(int channelId, double offset, int* size, double* forceTimes, double* forceValues);
int WGFMUAPI WGFMU_getForceValue(int channelId, double index, double* forceTime, double* forceValue);
int WGFMUAPI WGFMU_getInterpolatedForceValue(int channelId, double time, double* forceValue);
int WGFMUAPI WGFMU_getMeasureTimeSize(int channelId, int* size);
int WGFMUAPI WGFMU_getMeasureTimes(int channelId, int offset, int* size, double* measureTimes);
int WGFMUAPI WGFMU_getMeasureTime(int channelId, int index, double* measureTime);
int WGFMUAPI WGFMU_getMeasureEventSize(int channelId, int* size);
int WGFMUAPI WGFMU_getMeasureEvents(int channelId, int offset, int* size, char** patternNames, char** eventNames, int* cycles, double* loops, int* counts, int* offsets, int* sizes);
int WGFMUAPI WGFMU_getMeasureEvent(int channelId, int index, char* patternName, char* eventName, int* cycle, double* loop, int* count, int* offset, int* size);
int WGFMUAPI WGFMU_getMeasureEventAttribute(int channelId, int index, double* time, int* measurementPoints, double* measurementInterval, double* averagingTime, int* rawData);
int WGFMUAPI WGFMU_exportAscii(const char* fileName);
int WGFMUAPI WGFMU_update();
int WGFMUAPI WGFMU_updateChannel(int channelId);
int WGFMUAPI WGFMU_execute();
int WGFMUAPI WGFMU_abort();
int WGFMUAPI WGFMU_abortChannel(int channelId);
int WGFMUAPI WGFMU_getStatus(int* status, double* elapsedTime, double* totalTime);
int WGFMUAPI WGFMU_getChannelStatus(int channelId, int* status, double* elapsedTime, double* totalTime);
int WGFMUAPI WGFMU_waitUntilCompleted();
int WGFMUAPI WGFMU_getMeasureValueSize(int channelId, int* measuredSize, int* totalSize);
int WGFMUAPI WGFMU_getMeasureValues(int channelId, int offset, int* size, double* measureTimes, double* measureValues);
int WGFMUAPI WGFMU_getMeasureValue(int channelId, int index, double* measureTime, double* measureValue);
int WGFMUAPI WGFMU_getCompletedMeasureEventSize(int channelId, int* measuredSize, int* totalSize);
int WGFMUAPI WGFMU_isMeasureEventCompleted(int channelId, const char* patternName, const char* eventName, int cycle, double loop, int count, int* completed, int* index, int* offset, int* size);
int WGFMUAPI WGFMU_dcforceVoltage(int channelId, double voltage);
int WGFMUAPI WGFMU_dcmeasureValue(int channelId, double* value);
int WGFMUAPI WGFMU_dcmeasureAveragedValue(int channelId, int count, int interval, double* value);
"""
C_TYPES = {"const char*": ctypes.c_char_p, "int": ctypes.c_int, "double": ctypes.c_double,
           "int*": ctypes.POINTER(ctypes.c_int), "double*": ctypes.POINTER(ctypes.c_double),
           "char*": ctypes.POINTER(ctypes.c_char), "const char**": ctypes.POINTER(ctypes.c_char_p),
           "char**": ctypes.POINTER(ctypes.c_char_p)}


def test_the_ctypes_signatures_match_the_header():
    prototypes = re.findall(r"int WGFMUAPI (WGFMU_\w+)\(([^)]*)\);", HEADER)
    assert len(prototypes) == len(HEADER.strip().splitlines())
    expected = {}
    for name, params in prototypes:
        types = []
        for param in filter(None, (p.strip() for p in params.split(","))):
            ctype = re.fullmatch(r"(.+?)\s*(\w+)", param).group(1).replace(" *", "*").strip()
            types.append(C_TYPES[ctype])
        expected[name] = tuple(types)
    assert api.SIGNATURES == expected
    assert api.RESTYPE is ctypes.c_int
    assert set(api.REQUIRED) <= set(api.SIGNATURES)


def test_the_header_constants():
    assert {code: api.ERROR_NAMES[code] for code in (0, -1, -5, -9, -10, -12, -14, -15)} == {
        0: "WGFMU_NO_ERROR", -1: "WGFMU_PARAMETER_OUT_OF_RANGE_ERROR", -5: "WGFMU_COMMUNICATION_ERROR",
        -9: "WGFMU_CHANNEL_NOT_FOUND_ERROR", -10: "WGFMU_PATTERN_NOT_FOUND_ERROR",
        -12: "WGFMU_PATTERN_ALREADY_EXISTS_ERROR", -14: "WGFMU_RESULT_NOT_READY_ERROR",
        -15: "WGFMU_RESULT_OUT_OF_DATE"}
    assert sorted(api.ERROR_NAMES) == list(range(-15, 1))
    assert (api.OPERATION_MODE_DC, api.OPERATION_MODE_FASTIV, api.OPERATION_MODE_PG,
            api.OPERATION_MODE_SMU) == (2000, 2001, 2002, 2003)
    assert (api.MEASURE_MODE_CURRENT, api.MEASURE_CURRENT_RANGE_1UA, api.MEASURE_CURRENT_RANGE_10MA,
            api.MEASURE_EVENT_DATA_AVERAGED, api.STATUS_COMPLETED, api.STATUS_IDLE) == (
        4001, 6001, 6005, 12000, 10000, 10006)

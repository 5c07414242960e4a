"""Property: whatever a caller asks of the WGFMU driver, random pulse sequences or raw
library calls built from the library's functions (bad numbers, unknown patterns, modes
nobody set up, channels that do not exist), with any bench limits, the emulated hardware is
never exposed beyond the limits, and a call the guard refused never reached the library.

Each example draws limits, builds a fresh emulated library on one simulated bench (a 2x2
crossbar, WGFMU 101 on a row, 102 on a column, every other line grounded), connects the
driver (reset included), runs random actions, and checks the bench's own record of what
the hardware saw (`SimulatedBench.exposure`, `hazards`) and the library's call log.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from drivers.errors import DriverError, LimitError
from drivers.interfaces import PulseStep
from drivers.limits import Limits
from drivers.wgfmu import WGFMU
from helpers import one_torch_thread  # noqa: F401
from simulator.bench import Exposure, SimulatedBench, _SourceHardware
from simulator.wgfmu import EmulatedWgfmuLibrary
from test_wgfmu import ADDRESS, DRIVE, SENSE, RecordingLibrary, bench_spec, route

EXAMPLES = int(os.environ.get("MEMLAB_GUARD_EXAMPLES", "40"))
EPS = 1e-9


@pytest.fixture(scope="module")
def bench():
    sim = SimulatedBench(bench_spec(seed=11))
    route(sim, 0, 1)
    return sim


limits_st = st.builds(
    Limits,
    max_line_voltage=st.floats(0.3, 3.0),
    max_device_voltage=st.floats(0.3, 3.0),
    compliance_current=st.floats(2e-6, 0.02),
    max_pulse_width=st.floats(1e-7, 0.02),
    max_pulse_energy=st.floats(1e-12, 1e-4),
)


class Rel:
    """A value relative to the example's limits (so values land near the edges whatever
    limits were drawn): V x max_device_voltage, L x max_line_voltage, W x max_pulse_width,
    P: the level at which a pulse at the width limit and the driver's current range has
    `factor` x max_pulse_energy."""

    def __init__(self, kind: str, factor: float):
        self.kind, self.factor = kind, factor

    def __repr__(self):
        return f"Rel({self.kind!r}, {self.factor!r})"

    def value(self, limits: Limits, current: float) -> float:
        scale = {"V": limits.max_device_voltage, "L": limits.max_line_voltage, "W": limits.max_pulse_width,
                 "P": limits.max_pulse_energy / (current * limits.max_pulse_width)}[self.kind]
        return self.factor * scale


def resolve(x, limits: Limits, current: float):
    if isinstance(x, Rel):
        return x.value(limits, current)
    if isinstance(x, PulseStep):
        return PulseStep(resolve(x.drive, limits, current), resolve(x.sense, limits, current),
                         resolve(x.width, limits, current), x.measure)
    if isinstance(x, list):
        return [resolve(v, limits, current) for v in x]
    if isinstance(x, tuple):
        return tuple(resolve(v, limits, current) for v in x)
    return x


edge = st.sampled_from([1.0, -1.0, 0.999, 1.001, 1.05, -1.05, 0.5, 0.0, 1.5, -2.0])
factor = st.one_of(edge, st.floats(-1.3, 1.3))
positive = st.one_of(st.sampled_from([1.0, 0.999, 1.001, 0.5, 0.1, 1e-4, 2.0]), st.floats(1e-4, 1.3))
volts = st.one_of(st.builds(Rel, st.sampled_from(["V", "V", "L", "P"]), factor), st.sampled_from([0.0, 0.2, 5.0]))
width = st.one_of(st.builds(Rel, st.just("W"), positive), st.sampled_from([1e-8, 1e-6, 1.5e-8, 2e-4]))
step = st.builds(PulseStep, volts, volts, width, st.booleans())
steps = st.lists(step, min_size=1, max_size=5)

ticks = st.one_of(st.integers(1, 10 ** 6).map(lambda n: n * 1e-8), width, st.sampled_from([1.5e-8, 0.0, -1e-8]))
channel = st.sampled_from([DRIVE, DRIVE, SENSE, 103, 0])
pattern = st.sampled_from(["a", "a", "b", "memlab_drive", "bad name", "x,y"])
mode = st.sampled_from([2000, 2001, 2001, 2002, 2003, 1234])
current_range = st.sampled_from([6001, 6002, 6003, 6004, 6005, 6006])
vectors = st.integers(1, 4).flatmap(lambda n: st.tuples(st.lists(ticks, min_size=n, max_size=n),
                                                        st.lists(volts, min_size=n, max_size=n), st.just(n)))
raw = st.one_of(
    st.tuples(st.just("createPattern"), st.tuples(pattern, volts)),
    st.tuples(st.just("addVector"), st.tuples(pattern, ticks, volts)),
    st.tuples(st.just("addVectors"), st.builds(lambda p, v: (p, *v), pattern, vectors)),
    st.tuples(st.just("addSequence"), st.tuples(channel, pattern, st.sampled_from([1.0, 1.0, 2.0, 0.5, 0.0]))),
    st.tuples(st.just("setOperationMode"), st.tuples(channel, mode)),
    st.tuples(st.just("setMeasureMode"), st.tuples(channel, st.sampled_from([4000, 4001, 4001]))),
    st.tuples(st.just("setMeasureCurrentRange"), st.tuples(channel, current_range)),
    st.tuples(st.just("dcforceVoltage"), st.tuples(channel, volts)),
    st.tuples(st.sampled_from(["connect", "disconnect", "abortChannel", "updateChannel"]), st.tuples(channel)),
    st.tuples(st.sampled_from(["execute", "execute", "update", "clear", "initialize", "abort",
                               "waitUntilCompleted", "closeSession", "doSelfCalibration", "setVector"]),
              st.just(())),
    st.tuples(st.just("setForceDelay"), st.tuples(channel, st.sampled_from([0.0, 1e-8]))),
    st.tuples(st.just("setMeasureEvent"), st.tuples(pattern, st.just("e"), ticks, st.integers(0, 3), ticks,
                                                    ticks, st.sampled_from([12000, 12001]))),
)
action = st.one_of(
    st.tuples(st.just("run"), steps),
    st.tuples(st.just("check"), steps),
    st.tuples(st.just("raw"), raw),
    st.tuples(st.just("raw"), raw),
    st.tuples(st.sampled_from(["safe_state", "initialize"])),
)


def run_action(wg: WGFMU, lib: RecordingLibrary, act, limits: Limits) -> None:
    kind, *rest = resolve(act, limits, wg.current_range)
    before = len(lib.calls)
    try:
        if kind == "run":
            wg.run_sequence(DRIVE, SENSE, rest[0])
        elif kind == "check":
            wg.check_sequence(DRIVE, SENSE, rest[0])
            assert len(lib.calls) == before, "check_sequence called the library"
        elif kind == "raw":
            name, args = rest[0]
            wg.call(name, *args)
        else:
            getattr(wg, kind)()
    except ValueError:   # LimitError included: refused on the host, so the library was not called
        if kind in ("run", "check", "raw"):
            assert len(lib.calls) == before, (act, lib.calls[before:])
    except DriverError:
        pass   # the library's own error, or an unconfirmed run: safe is all that is checked here


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(limits=limits_st, actions=st.lists(action, max_size=12))
def test_nothing_outside_the_limits_reaches_the_wgfmu_hardware(bench, limits, actions):
    lib = RecordingLibrary(EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu")))
    try:
        wg = WGFMU(ADDRESS, limits=limits, library=lib)
    except ValueError:
        return   # no WGFMU current range within this compliance limit: nothing can run
    with bench.lock:
        bench.exposure = Exposure()
        bench.hazards.clear()
    try:
        wg.initialize()   # the reset and the set-up are part of what is checked
        for act in actions:
            run_action(wg, lib, act, limits)
    finally:
        try:
            wg.close()
        except DriverError:
            pass
    e = bench.exposure
    target(e.device_voltage / limits.max_device_voltage, label="device voltage / limit")
    target(e.pulse_energy / limits.max_pulse_energy, label="pulse energy / limit")
    event(f"pulses applied: {min(e.pulses, 3)}{'+' if e.pulses >= 3 else ''}")
    assert e.line_voltage <= min(limits.max_line_voltage, limits.max_device_voltage) + EPS, (e, limits)
    assert e.device_voltage <= limits.max_device_voltage + EPS, (e, limits)
    assert e.compliance <= limits.compliance_current + EPS, (e, limits)
    assert e.pulse_width <= limits.max_pulse_width * (1 + 1e-9), (e, limits)
    assert e.pulse_energy <= limits.max_pulse_energy * (1 + 1e-9), (e, limits)
    assert bench.hazards == []
    # and the close left both outputs off
    outputs = bench.source_outputs()
    assert outputs.get(("wgfmu", DRIVE)) is None and outputs.get(("wgfmu", SENSE)) is None


def test_the_property_is_not_vacuous(bench):
    """The same checks fail when calls bypass the guard: the exposure record sees a breach."""
    limits = Limits(max_line_voltage=1.0, max_device_voltage=1.0, max_pulse_width=1e-6)
    emu = EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu"))
    wg = WGFMU(ADDRESS, limits=limits, library=emu)
    wg.initialize()
    with bench.lock:
        bench.exposure = Exposure()
    with pytest.raises(LimitError):
        wg.run_sequence(DRIVE, SENSE, [PulseStep(2.0, 0.0, 1e-5)])
    assert bench.exposure.pulses == 0
    # straight to the library, past the guard
    for ch in (DRIVE, SENSE):
        assert emu.WGFMU_setOperationMode(ch, 2001) == 0
    assert emu.WGFMU_createPattern(b"p", 0.0) == 0
    for dt, v in [(1e-8, 2.0), (1e-5, 2.0), (1e-8, 0.0)]:
        assert emu.WGFMU_addVector(b"p", dt, v) == 0
    assert emu.WGFMU_addSequence(DRIVE, b"p", 1.0) == 0
    assert emu.WGFMU_execute() == 0
    e = bench.exposure
    assert e.device_voltage > limits.max_device_voltage and e.pulse_width > limits.max_pulse_width
    wg.close()


def test_the_session_is_not_closed_under_a_connected_output(bench):
    """The example the property test found: a raw closeSession after a sequence left the
    outputs connected with nothing left to disconnect them. The guard refuses it; close() ends
    with both outputs off."""
    limits = Limits(max_line_voltage=1.0, max_device_voltage=1.0)
    wg = WGFMU(ADDRESS, limits=limits, library=EmulatedWgfmuLibrary(_SourceHardware(bench, "wgfmu")))
    wg.initialize()
    wg.run_sequence(DRIVE, SENSE, [PulseStep(0.0, 0.0, 1e-8)])
    with pytest.raises(LimitError, match="may still be connected"):
        wg.call("closeSession")
    wg.close()
    outputs = bench.source_outputs()
    assert outputs.get(("wgfmu", DRIVE)) is None and outputs.get(("wgfmu", SENSE)) is None

"""Instrument errors the emulators inject (`inject_error`, the bench file's `error` fault), seen
through the memlab drivers over pyvisa-py: the InstrumentError carries the instrument's own
code and message, the failed command had no effect, and the next command works."""

from __future__ import annotations

import pytest

from drivers.b1500a import B1500A
from drivers.e5250a import E5250A
from drivers.errors import InstrumentError
from drivers.k707b import K707B
from drivers.limits import Limits
from simulator.bench import CableToSwitch, EmulatedInstrument, SimBenchSpec, SimulatedBench
from simulator.spec import FaultSpec

LIMITS = Limits(max_line_voltage=2.5, max_device_voltage=2.5, compliance_current=0.01)
# a failing FLEX command makes the B1500 skip the rest of its message, its error query
# included: the driver waits this long before asking the error queue on its own
B1500_TIMEOUT_S = 0.3


def spec(switch_type: str, **faults) -> SimBenchSpec:
    """A 2x2 crossbar: SMUs 1 and 2 on switch inputs 1 and 2."""
    return SimBenchSpec(
        rows=2, cols=2, seed=2, switch="switch", row_ports=[1, 2], col_ports=[3, 4],
        instruments=[EmulatedInstrument(name="analyzer", type="keysight_b1500a",
                                        options={"modules": {1: "B1517A", 2: "B1517A"}}),
                     EmulatedInstrument(name="switch", type=switch_type, options={"cards": 1})],
        cables=[CableToSwitch(instrument="analyzer", channel=ch, input=ch) for ch in (1, 2)],
        faults={name: [FaultSpec(**f)] for name, f in faults.items()})


@pytest.fixture
def b1500_bench():
    with SimulatedBench(spec("keysight_e5250a")) as bench:
        yield bench


def test_b1500a_error_is_raised_with_its_code_and_has_no_effect(b1500_bench):
    bench = b1500_bench
    b = B1500A(bench.resources["analyzer"], name="analyzer", limits=LIMITS, timeout_s=B1500_TIMEOUT_S)
    try:
        b.initialize()
        b.enable([1, 2])
        b.set_voltages({1: 0.0, 2: 0.0})
        core = bench.cores["analyzer"]
        core.inject_error(1)
        assert b.measure_current(1).value == pytest.approx(0.0, abs=1e-12)   # reads do not fail
        assert b.query("UNT?", retries=1).startswith("B1517A")
        with pytest.raises(InstrumentError) as failed:
            b.set_voltages({1: 0.5})
        assert failed.value.code == 300
        assert failed.value.message == "Hardware error: the module did not carry out the command."
        assert bench.source_outputs()[("analyzer", 1)] == (0.0, LIMITS.compliance_current)   # not applied
        assert core.handle("ERRX?") == ['+0,"No Error."']     # the driver read the queue empty
        b.set_voltages({1: 0.5})                                            # the next one works
        assert bench.source_outputs()[("analyzer", 1)] == (0.5, LIMITS.compliance_current)
    finally:
        b.safe_state()
        b.close()


def test_b1500a_count_fails_that_many_commands_then_none(b1500_bench):
    bench = b1500_bench
    b = B1500A(bench.resources["analyzer"], name="analyzer", limits=LIMITS, timeout_s=B1500_TIMEOUT_S)
    try:
        b.initialize()
        b.enable([1])
        bench.cores["analyzer"].inject_error(2)
        for _ in range(2):
            with pytest.raises(InstrumentError, match="error 300"):
                b.set_voltages({1: 0.3})
        assert bench.source_outputs()[("analyzer", 1)] == (0.0, 100e-6)   # as CN left it
        b.set_voltages({1: 0.3})
        assert bench.source_outputs()[("analyzer", 1)] == (0.3, LIMITS.compliance_current)
    finally:
        b.safe_state()
        b.close()


def test_the_bench_files_error_fault_fails_the_connect_reset_once():
    with SimulatedBench(spec("keysight_e5250a", analyzer={"kind": "error", "after": 0})) as bench:
        b = B1500A(bench.resources["analyzer"], name="analyzer", limits=LIMITS, timeout_s=B1500_TIMEOUT_S)
        try:
            with pytest.raises(InstrumentError) as failed:
                b.initialize()
            assert failed.value.code == 300 and "*RST" in failed.value.command
            b.initialize()
            assert b.modules == {1: "B1517A", 2: "B1517A"}
        finally:
            b.close()


def test_e5250a_error_is_raised_with_its_code_and_closes_nothing(b1500_bench):
    bench = b1500_bench
    sw = E5250A(bench.resources["switch"], name="switch", timeout_s=5)
    try:
        sw.initialize()
        bench.cores["switch"].inject_error(1)
        with pytest.raises(InstrumentError) as failed:
            sw.connect([(1, 1)])
        assert (failed.value.code, failed.value.message) == (-240, "Hardware error")
        assert bench.closed_relays() == frozenset()
        assert bench.cores["switch"].handle(":SYST:ERR?") == ['0,"No error"']
        sw.connect([(2, 3)])                   # the next close works
        assert bench.closed_relays() == frozenset({(2, 3)})
        assert sw.read_closed() == {(2, 3)}    # the failed one was never made
    finally:
        sw.safe_state()
        sw.close()


def test_k707b_error_is_raised_with_its_code_and_closes_nothing():
    with SimulatedBench(spec("keithley_707b")) as bench:
        sw = K707B(bench.resources["switch"], name="switch", timeout_s=5)
        try:
            sw.initialize()
            bench.cores["switch"].inject_error(1)
            with pytest.raises(InstrumentError) as failed:
                sw.connect([(1, 1)])
            assert (failed.value.code, failed.value.message) == (-240, "Hardware error")
            assert bench.closed_relays() == frozenset()
            assert bench.cores["switch"].handle("print(errorqueue.count)") == ["0.00000e+00"]
            sw.connect([(2, 3)])
            assert bench.closed_relays() == frozenset({(2, 3)})
            assert sw.read_closed() == {(2, 3)}
        finally:
            sw.safe_state()
            sw.close()

"""The write-verify algorithm's batched paths against its one-pulse-per-round-trip path, on a
toy device whose response and read noise depend only on its own history (so both paths see
the same device as long as they take the same decisions)."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.interfaces import Crossbar, Pulse, Read, Scheme
from drivers.write_verify import TuneParams, tune


class ToyCrossbar(Crossbar):
    """One device: SET/RESET move it a voltage-dependent fraction of the way to its bound,
    times a per-pulse random factor; reads carry noise drawn from (pulses so far, reads since
    the last pulse) so that an extra read never changes what a later one returns."""

    rows = cols = 1
    read_voltage = 0.2

    def __init__(self, seed: int, g0: float, threshold: float, read_noise: float,
                 max_batch: int, stops_early: bool):
        super().__init__()
        self.seed, self.g, self.threshold, self.read_noise = seed, g0, threshold, read_noise
        self.max_batch, self.stops_early = max_batch, stops_early
        self.applied: list[float] = []
        self.sequences = 0
        self._reads_since = 0

    def _rng(self, *key) -> random.Random:
        return random.Random(hash((self.seed, *key)))

    def _read(self, row, col, voltage):
        noise = self._rng("read", len(self.applied), self._reads_since).gauss(0, self.read_noise)
        self._reads_since += 1
        g = self.g * (1 + noise)
        return Read(row, col, voltage, g * voltage, g)

    def _pulse(self, row, col, voltage, width, scheme):
        fraction = min(1.0, math.exp(12 * (abs(voltage) - self.threshold)) * 1e-3)
        fraction *= self._rng("pulse", len(self.applied)).uniform(0.7, 1.3)
        bound = 6e-4 if voltage > 0 else 4e-5
        self.g += (bound - self.g) * fraction
        self.applied.append(voltage)
        self._reads_since = 0
        return Pulse(row, col, voltage, width, str(scheme), float("nan"), False)

    def pulse_and_read(self, *args, **kwargs):
        self.sequences += 1
        return super().pulse_and_read(*args, **kwargs)

    def safe_state(self):
        pass

    def pulses_sent(self):
        return len(self.applied)


device = st.fixed_dictionaries({
    "seed": st.integers(0, 10_000),
    "g0": st.floats(5e-5, 5.5e-4),
    "threshold": st.floats(0.9, 1.3),
    "read_noise": st.floats(0.0, 0.004),
})
targets = st.floats(6e-5, 5e-4)
PARAMS = TuneParams(tolerance=0.01, reads_to_accept=5, set_start=0.8, set_stop=1.5, reset_start=-0.8,
                    reset_stop=-1.7, step=0.02, max_pulses=300)


@settings(max_examples=60, deadline=None)
@given(device, targets)
def test_a_sequence_that_ends_early_takes_the_decisions_of_one_pulse_at_a_time(dev, target):
    one = ToyCrossbar(**dev, max_batch=1, stops_early=False)
    batched = ToyCrossbar(**dev, max_batch=64, stops_early=True)
    a, b = tune(one, 0, 0, target, PARAMS), tune(batched, 0, 0, target, PARAMS)
    assert batched.applied == one.applied
    assert (b.tuned, b.pulses, b.reason, b.conductance) == (a.tuned, a.pulses, a.reason, a.conductance)
    if a.pulses > 8:   # the point of it: many pulses per round trip
        assert batched.sequences < a.pulses / 2


@settings(max_examples=40, deadline=None)
@given(device, targets)
def test_a_planned_sequence_stays_within_the_caps(dev, target):
    xbar = ToyCrossbar(**dev, max_batch=32, stops_early=False)
    result = tune(xbar, 0, 0, target, PARAMS)
    assert result.pulses == len(xbar.applied) <= PARAMS.max_pulses
    assert all(PARAMS.reset_stop - 1e-9 <= v <= PARAMS.set_stop + 1e-9 for v in xbar.applied)
    if result.tuned:
        assert abs(result.conductance / target - 1) <= PARAMS.tolerance


def test_a_crossbar_that_cannot_stop_early_refuses_a_stop():
    xbar = ToyCrossbar(0, 1e-4, 1.0, 0.0, max_batch=32, stops_early=False)
    try:
        xbar.pulse_and_read(0, 0, [1.0], 1e-3, Scheme.V3, stop_above=2e-4)
    except ValueError as exc:
        assert "cannot end early" in str(exc)
    else:
        raise AssertionError("a stop was accepted by a crossbar that cannot stop")
    assert xbar.applied == []

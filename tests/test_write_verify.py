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
        self.pulse_sequences = 0   # those that carried pulses
        self._reads_since = 0

    def _rng(self, *key) -> random.Random:
        return random.Random(repr((self.seed, *key)))   # a str seed: the same in every process

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

    def pulse_and_read(self, row, col, voltages, *args, **kwargs):
        self.sequences += 1
        self.pulse_sequences += bool(voltages)
        return super().pulse_and_read(row, col, voltages, *args, **kwargs)

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
    if a.pulses > 8:   # the point of it: many pulses per round trip (the accepting reads' sequences,
        # which read noise near the tolerance makes many, carry none)
        assert batched.pulse_sequences < a.pulses / 2


@settings(max_examples=40, deadline=None)
@given(device, targets)
def test_a_planned_sequence_stays_within_the_caps(dev, target):
    xbar = ToyCrossbar(**dev, max_batch=32, stops_early=False)
    result = tune(xbar, 0, 0, target, PARAMS)
    assert result.pulses == len(xbar.applied) <= PARAMS.max_pulses
    # never past a cap, and never weaker than the start amplitude (a pulse that does not
    # switch a device drifts it)
    assert all(PARAMS.set_start - 1e-9 <= v <= PARAMS.set_stop + 1e-9 or
               PARAMS.reset_stop - 1e-9 <= v <= PARAMS.reset_start + 1e-9 for v in xbar.applied)
    if result.tuned:
        assert abs(result.conductance / target - 1) <= PARAMS.tolerance


def test_planned_sequences_tune_as_well_as_one_pulse_at_a_time_with_many_pairs_each():
    rng = random.Random(3)
    one_tuned = planned_tuned = pulses = sequences = 0
    for k in range(30):
        dev = {"seed": k, "g0": rng.uniform(5e-5, 5.5e-4), "threshold": rng.uniform(0.9, 1.3),
               "read_noise": rng.uniform(0.0, 0.002)}
        target = rng.uniform(6e-5, 5e-4)
        one_tuned += tune(ToyCrossbar(**dev, max_batch=1, stops_early=False), 0, 0, target, PARAMS).tuned
        xbar = ToyCrossbar(**dev, max_batch=32, stops_early=False)
        result = tune(xbar, 0, 0, target, PARAMS)
        planned_tuned += result.tuned
        pulses, sequences = pulses + result.pulses, sequences + xbar.sequences
    assert planned_tuned >= one_tuned - 1
    assert pulses / sequences >= 8, f"{pulses / sequences:.1f} pulse-and-read pairs per sequence"


def test_a_planned_sequence_carries_the_reads_that_accept_the_device():
    xbar = ToyCrossbar(1, 1e-4, 1.0, 0.001, max_batch=32, stops_early=False)
    calls = []
    inner = xbar.pulse_and_read
    xbar.pulse_and_read = lambda *a, **k: calls.append(k.get("then_reads", 0)) or inner(*a, **k)
    result = tune(xbar, 0, 0, 2e-4, PARAMS)
    assert result.tuned
    assert calls and all(n == PARAMS.reads_to_accept for n in calls)   # no sequence of reads alone


def test_a_crossbar_that_cannot_stop_early_refuses_a_stop():
    xbar = ToyCrossbar(0, 1e-4, 1.0, 0.0, max_batch=32, stops_early=False)
    try:
        xbar.pulse_and_read(0, 0, [1.0], 1e-3, Scheme.V3, stop_above=2e-4)
    except ValueError as exc:
        assert "cannot end early" in str(exc)
    else:
        raise AssertionError("a stop was accepted by a crossbar that cannot stop")
    assert xbar.applied == []


def test_a_device_that_never_moves_ends_at_the_cap_even_off_the_amplitude_grid():
    params = PARAMS.model_copy(update={"set_start": 0.75, "step": 0.1})   # 0.75 .. 1.45, then past 1.5
    xbar = ToyCrossbar(0, 1e-4, 5.0, 0.0, max_batch=32, stops_early=False)
    result = tune(xbar, 0, 0, 3e-4, params)
    assert not result.tuned and result.stuck
    assert "SET amplitude would exceed +1.50 V" in result.reason
    assert max(xbar.applied) == 1.45 and result.pulses == len(xbar.applied) < params.max_pulses

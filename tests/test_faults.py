"""Every fault an emulated instrument can show, on every driver of every shipped bench: the
right exception with a clear message (or a bounded retry that succeeds, for queries), no
pulse retried blindly, every operation in the journal, and the bench safe afterwards.

The fault is scheduled on the instrument's emulator a few messages into a tuning run (past
the connect), so it lands in the middle of real work."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.errors import DriverError
from memlab.bench import emulate, open_crossbar
from memlab.config import load_bench
from simulator.bench import _fault_action
from simulator.spec import FaultSpec

from helpers import assert_safe, received

TIMEOUT = 1.0
KINDS = ["slow", "timeout", "drop", "garble", "error", "hang"]
# (bench, instrument) pairs: every socket driver of every shipped bench
SOCKET_DRIVERS = [("sim-b1500-e5250", "analyzer"), ("sim-b1500-e5250", "switch"),
                  ("sim-4200-707b", "analyzer"), ("sim-4200-707b", "switch"),
                  ("sim-b1500-wgfmu-e5250", "analyzer"), ("sim-b1500-wgfmu-e5250", "switch")]


class ListJournal:
    """The run store's journal interface, in memory."""

    def __init__(self):
        self.entries: list[list] = []

    def begin(self, op, fields):
        self.entries.append([op + "?", fields])
        return len(self.entries) - 1

    def end(self, entry, op, fields):
        self.entries[entry] = [op, fields]

    def record(self, op, fields):
        self.entries.append([op, fields])

    def ops(self) -> list[str]:
        return [op for op, _ in self.entries]

    def sequences_recorded(self) -> tuple[int, int]:
        """(operations certainly run by a fast pulse source, operations perhaps run)."""
        certain = sum(op in ("read", "pulse", "sequence") for op in self.ops())
        perhaps = sum(op.endswith(("_failed", "_unknown")) for op in self.ops())
        return certain, perhaps

    def pulses_recorded(self) -> tuple[int, int]:
        """(pulses certainly applied, pulses perhaps applied) according to the journal."""
        certain = perhaps = 0
        for op, fields in self.entries:
            n = 1
            if op.startswith("sequence"):   # a completed one says how many of its pulses ran (it may end early)
                n = fields["applied"] if op == "sequence" else len(fields.get("voltages", []))
            if op in ("pulse", "sequence"):
                certain += n
            elif op in ("pulse_unknown", "sequence_unknown"):
                perhaps += n
        return certain, perhaps


def executions(bench, pulser: str) -> int:
    """Sequences the fast pulse source ran, from its emulator."""
    if pulser in bench.libraries:
        return bench.libraries[pulser].executions
    return sum(c.startswith((":PMU:EXECUTE", "EX ")) for c in received(bench, pulser))


def _config(bench_name: str):
    config = load_bench(bench_name)
    instruments = {n: i.model_copy(update={"timeout_s": TIMEOUT}) for n, i in config.instruments.items()}
    return config.model_copy(update={"instruments": instruments})


# the default run: every kind once, each on another driver; `-m slow`: every kind on every driver
SOME = [pytest.param(bench, inst, kind, id=f"{bench}-{inst}-{kind}")
        for kind, (bench, inst) in zip(KINDS, SOCKET_DRIVERS)]
ALL = [pytest.param(bench, inst, kind, id=f"{bench}-{inst}-{kind}", marks=pytest.mark.slow)
       for kind in KINDS for bench, inst in SOCKET_DRIVERS if (bench, inst) != SOCKET_DRIVERS[KINDS.index(kind)]]


@pytest.mark.parametrize("bench_name,instrument,kind", SOME + ALL)
def test_a_fault_mid_tuning(bench_name, instrument, kind):
    bench, live = emulate(_config(bench_name))
    journal = ListJournal()
    server = bench.servers[instrument]
    try:
        error = None
        try:
            with open_crossbar(live) as xbar:
                xbar.journal = journal
                params = live.tune_params(tolerance=0.01, reads_to_accept=3, max_failures=3)
                target = 1.5 * xbar.read(2, 3).conductance
                # the instrument's next message (a switch only hears of the next device)
                after = server._messages
                late = (0.02 if kind == "slow" else 1.6) * TIMEOUT   # slow: every reply 20 ms late (100 times a reply here), within the timeout
                fault = FaultSpec(kind=kind, after=after, seconds=late, count=2)
                server.schedule(fault.after, _fault_action(fault, server))
                xbar.tune(2, 3, target, params)
                xbar.tune(5, 4, target, params)
        except (DriverError, RuntimeError) as exc:   # RuntimeError: the safe state not confirmed
            error = exc
        # the fault did happen, and what it did is said plainly
        if kind == "hang":
            assert error is not None
            assert instrument in str(error) or any(instrument in n for n in getattr(error, "__notes__", []))
        elif error is not None:
            assert instrument in str(error), str(error)
        # no pulse retried blindly: the instruments carried out nothing the journal does not hold
        if live.crossbar.pulser is None:   # SMU spot pulses: the hardware's own count
            certain, perhaps = journal.pulses_recorded()
            applied = bench.exposure.pulses
        else:   # every read and pulse is a sequence the pulse source runs: its count
            certain, perhaps = journal.sequences_recorded()
            applied = executions(bench, live.crossbar.pulser)
        assert certain <= applied <= certain + perhaps, (journal.ops(), applied)
        assert not [op for op in journal.ops() if op.endswith("?")], "an operation without an outcome"
        if kind != "hang":
            try:
                assert_safe(bench)
            except AssertionError as exc:
                raise AssertionError(f"{exc} (the tune ended with {error!r})") from None
        else:   # the hung instrument cannot confirm anything; the rest of the bench is safe
            server.faults.reset()
            outputs = bench.source_outputs()
            if instrument == "switch":
                assert all(v is None for v in outputs.values()), outputs
            else:
                assert bench.closed_relays() == frozenset()
    finally:
        bench.stop()

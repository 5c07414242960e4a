"""Shared fixtures: the shipped simulated bench, emulated on loopback sockets."""

from __future__ import annotations

import pytest

from memlab.bench import emulate, open_crossbar
from memlab.config import load_bench

SIM_BENCH = "sim-b1500-e5250"


@pytest.fixture
def bench_config():
    return load_bench(SIM_BENCH)


@pytest.fixture
def emulation(bench_config):
    """(running SimulatedBench, bench config pointing at its live resources)."""
    bench, live = emulate(bench_config)
    yield bench, live
    bench.stop()


@pytest.fixture
def xbar(emulation):
    _, live = emulation
    with open_crossbar(live) as crossbar:
        yield crossbar

"""Physical consistency of what the drivers measure through pyvisa-py over loopback sockets."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import received


def test_read_current_is_vread_times_true_conductance(emulation, xbar):
    bench, _ = emulation
    noise = bench.array.preset.read_noise
    for r, c in [(0, 0), (3, 5), (7, 7), (5, 1)]:
        g_true = float(bench.conductances()[r, c])
        read = xbar.read(r, c)
        sd = np.hypot(noise.relative * g_true, noise.absolute) * xbar.read_voltage
        quantum = 1e-9  # FMT 1 resolution of the 100 uA range: 0.001 E-06 A
        assert read.voltage == pytest.approx(0.2)
        assert abs(read.current - xbar.read_voltage * g_true) <= 5 * sd + quantum, (r, c)
        assert read.conductance == pytest.approx(read.current / 0.2)


def test_reads_scatter_like_the_read_noise(emulation, xbar):
    bench, _ = emulation
    g_true = float(bench.conductances()[2, 2])
    reads = np.array([xbar.read(2, 2).conductance for _ in range(40)])
    sd = bench.array.read_noise_sd(g_true)
    assert abs(reads.mean() - g_true) < 4 * sd / np.sqrt(40) + 5e-9
    assert 0.5 * sd < reads.std() < 2 * sd


def test_v3_pulse_moves_the_selected_device_far_more_than_its_neighbours(emulation, xbar):
    bench, _ = emulation
    r, c = 4, 4
    before = bench.conductances().numpy()
    xbar.pulse(r, c, 1.3, 1e-3, "v3")
    after = bench.conductances().numpy()
    change = np.abs(after - before) / before
    selected = change[r, c]
    half = np.concatenate([np.delete(change[r, :], c), np.delete(change[:, c], r)])
    others = np.delete(np.delete(change, r, axis=0), c, axis=1)
    assert selected > 0.02
    assert half.max() < selected / 50
    assert half.min() > 0, "half-selected devices should feel the V/3 stress"
    assert others.max() < selected / 50


def test_v3_biases_reach_the_lines(emulation, xbar):
    """During the pulse set-up every line sits at its role's potential."""
    bench, live = emulation
    v = 1.2
    xbar._route(2, 3)
    ch = {role: live.wiring.role(role).channel for role in ("drive", "sense", "row_third", "col_two_thirds")}
    xbar.source.set_voltages({ch["row_third"]: v / 3, ch["drive"]: v / 3, ch["col_two_thirds"]: 2 * v / 3})
    rows, cols = bench.line_potentials()
    expect_rows = np.full(8, v / 3)
    expect_cols = np.full(8, 2 * v / 3)
    expect_cols[3] = 0
    np.testing.assert_allclose(rows.numpy(), expect_rows)
    np.testing.assert_allclose(cols.numpy(), expect_cols)
    xbar.source.set_voltages({ch["col_two_thirds"]: 0, ch["drive"]: 0, ch["row_third"]: 0})


def test_moving_along_a_row_switches_only_two_columns(emulation, xbar):
    bench, _ = emulation
    xbar.read(1, 2)
    before = len([c for c in received(bench, "switch") if "CLOS (" in c.upper() or "OPEN (" in c.upper()])
    xbar.read(1, 3)
    cmds = [c for c in received(bench, "switch") if "CLOS (" in c.upper() or "OPEN (" in c.upper()]
    new = cmds[before:]
    assert len(new) == 2  # one open, one close
    assert all(c.count(",") == 1 for c in new), new  # two relays in each


def test_v2_pulse_half_selects_only_the_selected_lines(emulation, xbar):
    bench, _ = emulation
    r, c = 2, 6
    before = bench.conductances().numpy()
    xbar.pulse(r, c, 1.3, 1e-3, "v2")
    change = np.abs(bench.conductances().numpy() - before) / before
    half = np.concatenate([np.delete(change[r, :], c), np.delete(change[:, c], r)])
    others = np.delete(np.delete(change, r, axis=0), c, axis=1)
    assert change[r, c] > 0.02
    assert half.min() > 0 and half.max() < change[r, c] / 20
    # unselected devices sit at 0 V during the pulse; with sources set one after another
    # they see V/2 (never more) for the instants between two level changes
    assert others.max() < change[r, c] / 20

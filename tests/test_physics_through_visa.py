"""Physical consistency of what the drivers measure through pyvisa-py over loopback sockets."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import received


def test_read_current_is_vread_times_true_conductance(emulation, xbar):
    bench, _ = emulation
    noise = bench.array.preset.read
    for r, c in [(0, 0), (3, 5), (7, 7), (5, 1)]:
        g_true = float(bench.conductances()[r, c])
        read = xbar.read(r, c)
        sd = np.hypot(noise.noise_relative * g_true, noise.noise_absolute) * xbar.read_voltage
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
    xbar.pulse(r, c, 0.95, 1e-3, "v3")  # a SET pulse just above the 1 ms switching voltage
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


def test_v2_stresses_the_half_selected_more_and_the_unselected_less_than_v3(emulation, xbar):
    """V/2 puts V/2 on the selected lines' devices (above the drift threshold for a 0.9 V
    pulse) and 0 V on the rest; V/3 puts V/3 (below it) on everyone."""
    bench, _ = emulation

    def changes(r, c, scheme):
        before = bench.conductances().numpy()
        xbar.pulse(r, c, 0.9, 1e-3, scheme)
        change = np.abs(bench.conductances().numpy() - before) / before
        half = np.concatenate([np.delete(change[r, :], c), np.delete(change[:, c], r)])
        others = np.delete(np.delete(change, r, axis=0), c, axis=1)
        return change[r, c], half, others

    sel3, half3, others3 = changes(2, 6, "v3")
    sel2, half2, others2 = changes(5, 1, "v2")
    assert sel2 > 0.01 and sel3 > 0.01
    assert np.median(half2) > 10 * np.median(half3)
    assert np.median(others2) < np.median(half2) / 10

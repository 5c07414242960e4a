"""The nodal crossbar solve (simulator/circuit.py), cross-checked against the published
`badcrossbar` package on fixed cases, and by Kirchhoff's laws where badcrossbar cannot go
(floating lines).

badcrossbar's conventions: word lines driven at the left (column 0 side) with the applied
voltages, bit lines grounded at the bottom (last row side); r_i is the resistance of every
segment including the first one from the driven end; device current is word -> bit;
`currents.output` is the current leaving each bit line into ground, shape (1, cols) for one
input set; `currents.word_line[:, 0]` is the current entering each word line.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from simulator.circuit import solve_crossbar

RTOL = 1e-6


@pytest.fixture(scope="module")
def badcrossbar():
    # Installed without pycairo (see the Makefile), so its plotting half warns that it cannot
    # import; and at import it calls logging.basicConfig, which must not leak into the suite.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with warnings.catch_warnings(record=True):
        import badcrossbar
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("badcrossbar").setLevel(logging.WARNING)
    return badcrossbar


def random_case(rows, cols, seed, near_zero=0.0):
    rng = np.random.default_rng(seed)
    g = rng.uniform(100e-6, 500e-6, (rows, cols))
    g[rng.random((rows, cols)) < near_zero] = 1e-12
    v = rng.choice([-1.0, 1.0], rows) * rng.uniform(0.1, 0.5, rows)
    return g, v


def kcl_residuals(sol, g, v_rows, v_cols, r_word, r_bit, leak):
    """Net current leaving every node (word nodes, bit nodes), rows driven at the left and
    columns at the bottom. Ideal lines are one node each, so their residual is per line."""
    floating_rows, floating_cols = np.isnan(v_rows), np.isnan(v_cols)
    i_dev = sol.device_currents
    np.testing.assert_allclose(i_dev, g * (sol.v_word - sol.v_bit), rtol=1e-12)
    if r_word > 0:
        seg = (sol.v_word[:, :-1] - sol.v_word[:, 1:]) / r_word       # left -> right
        into = np.concatenate([sol.row_currents[:, None], seg], axis=1)
        out = np.concatenate([seg, np.zeros((g.shape[0], 1))], axis=1)
        word = out - into + i_dev + leak * np.where(floating_rows[:, None], sol.v_word, 0.0)
    else:
        word = i_dev.sum(axis=1) - sol.row_currents + leak * np.where(floating_rows, sol.v_word[:, 0], 0.0)
    if r_bit > 0:
        seg = (sol.v_bit[1:] - sol.v_bit[:-1]) / r_bit                 # bottom -> top
        into = np.concatenate([seg, sol.col_currents[None, :]], axis=0)
        out = np.concatenate([np.zeros((1, g.shape[1])), seg], axis=0)
        bit = out - into - i_dev + leak * np.where(floating_cols[None, :], sol.v_bit, 0.0)
    else:
        bit = -i_dev.sum(axis=0) - sol.col_currents + leak * np.where(floating_cols, sol.v_bit[0], 0.0)
    return word, bit


def assert_kirchhoff(sol, g, v_rows, v_cols, r_word=0.0, r_bit=0.0, leak=1e-12):
    word, bit = kcl_residuals(sol, g, v_rows, v_cols, r_word, r_bit, leak)
    tol = 1e-10 * np.abs(sol.device_currents).sum()   # rounding of near-equal potentials
    np.testing.assert_allclose(word, 0.0, atol=tol)
    np.testing.assert_allclose(bit, 0.0, atol=tol)
    # Driven lines sit at their drive potential (ideal) or one segment below it; floating
    # lines take no current from their ends.
    assert np.all(sol.row_currents[np.isnan(v_rows)] == 0)
    assert np.all(sol.col_currents[np.isnan(v_cols)] == 0)
    # What enters through the driven ends leaves only through the leaks.
    fr, fc = np.isnan(v_rows), np.isnan(v_cols)
    leaked = leak * ((sol.v_word[fr] if r_word > 0 else sol.v_word[fr, 0]).sum()
                     + (sol.v_bit[:, fc] if r_bit > 0 else sol.v_bit[0, fc]).sum())
    np.testing.assert_allclose(sol.row_currents.sum() + sol.col_currents.sum(), leaked, atol=tol)


# --- badcrossbar cross-check ------------------------------------------------------------

BADCROSSBAR_CASES = {
    "ideal-8x8": dict(shape=(8, 8), r_word=0.0, r_bit=0.0, seed=1),
    "r1-16x8": dict(shape=(16, 8), r_word=1.0, r_bit=1.0, seed=2),
    "r2.5-0.5-32x32-near-zero": dict(shape=(32, 32), r_word=2.5, r_bit=0.5, seed=3, near_zero=0.1),
    "ideal-word-r2-bit-12x10": dict(shape=(12, 10), r_word=0.0, r_bit=2.0, seed=4),
}


@pytest.mark.parametrize("case", BADCROSSBAR_CASES.values(), ids=BADCROSSBAR_CASES.keys())
def test_agrees_with_badcrossbar(badcrossbar, case):
    rows, cols = case["shape"]
    g, v = random_case(rows, cols, case["seed"], case.get("near_zero", 0.0))
    r_word, r_bit = case["r_word"], case["r_bit"]
    sol = solve_crossbar(g, v, np.zeros(cols), r_word=r_word, r_bit=r_bit)
    ref = badcrossbar.compute(v[:, None], 1 / g, r_i_word_line=r_word, r_i_bit_line=r_bit)

    np.testing.assert_allclose(-sol.col_currents, ref.currents.output[0], rtol=RTOL)
    np.testing.assert_allclose(sol.device_currents, ref.currents.device, rtol=RTOL)
    np.testing.assert_allclose(sol.row_currents, ref.currents.word_line[:, 0], rtol=RTOL)
    np.testing.assert_allclose(sol.v_word, ref.voltages.word_line, rtol=RTOL)
    np.testing.assert_allclose(sol.v_bit, ref.voltages.bit_line, rtol=RTOL)
    if r_word > 0 or r_bit > 0:
        # Line resistance matters here: the ideal answer would be off by far more than RTOL.
        ideal = solve_crossbar(g, v, np.zeros(cols))
        assert np.max(np.abs(ideal.col_currents / sol.col_currents - 1)) > 1e3 * RTOL
    assert_kirchhoff(sol, g, v, np.zeros(cols), r_word, r_bit)


# --- floating lines ---------------------------------------------------------------------

def dense_line_solve(g, v_rows, v_cols, leak):
    """Brute force for ideal lines: the full (rows + cols) nodal matrix, dense."""
    rows, cols = g.shape
    lap = np.block([[np.diag(g.sum(axis=1)), -g], [-g.T, np.diag(g.sum(axis=0))]])
    v = np.concatenate([v_rows, v_cols])
    free = np.isnan(v)
    lap[free, free] += leak
    a = lap[np.ix_(free, free)]
    v[free] = np.linalg.solve(a, -lap[np.ix_(free, ~free)] @ v[~free])
    return v[:rows], v[rows:]


def floating_read(rows=16, cols=16, row=5, col=11, v_read=0.3, seed=5):
    g, _ = random_case(rows, cols, seed)
    v_rows, v_cols = np.full(rows, np.nan), np.full(cols, np.nan)
    v_rows[row], v_cols[col] = v_read, 0.0
    return g, v_rows, v_cols


def test_floating_read_sneak_paths():
    g, v_rows, v_cols = floating_read()
    leak = 1e-12
    sol = solve_crossbar(g, v_rows, v_cols, leak=leak)

    assert_kirchhoff(sol, g, v_rows, v_cols, leak=leak)
    # An ideal line is one potential along its length.
    np.testing.assert_array_equal(sol.v_word, np.repeat(sol.v_word[:, :1], 16, axis=1))
    np.testing.assert_array_equal(sol.v_bit, np.repeat(sol.v_bit[:1], 16, axis=0))
    assert sol.v_word[5, 0] == 0.3 and sol.v_bit[0, 11] == 0.0

    ref_rows, ref_cols = dense_line_solve(g, v_rows, v_cols, leak)
    np.testing.assert_allclose(sol.v_word[:, 0], ref_rows, rtol=1e-9)
    np.testing.assert_allclose(sol.v_bit[0], ref_cols, rtol=1e-9)
    np.testing.assert_allclose(sol.device_currents, g * (ref_rows[:, None] - ref_cols[None, :]),
                               rtol=1e-9, atol=1e-15)

    # The sneak paths: the selected column sees much more than the selected device's current,
    # and the floating lines settle strictly between the two driven potentials.
    selected = g[5, 11] * 0.3
    assert -sol.col_currents[11] > 1.5 * selected
    np.testing.assert_allclose(sol.row_currents[5], -sol.col_currents[11], rtol=1e-7)  # less the leaks
    others = np.delete(sol.v_word[:, 0], 5)
    assert np.all((others > 0) & (others < 0.3))


def test_floating_with_line_resistance():
    g, v_rows, v_cols = floating_read(rows=12, cols=20, row=3, col=17, seed=6)
    v_rows[7] = 0.0   # one more driven line: mixed
    for r_word, r_bit in [(1.0, 1.0), (2.0, 0.0), (0.0, 3.0)]:
        sol = solve_crossbar(g, v_rows, v_cols, r_word=r_word, r_bit=r_bit)
        assert_kirchhoff(sol, g, v_rows, v_cols, r_word, r_bit)
        driven = ~np.isnan(v_rows)
        if r_word > 0:
            np.testing.assert_allclose(sol.row_currents[driven],
                                       (v_rows[driven] - sol.v_word[driven, 0]) / r_word, rtol=1e-9)
        if r_bit > 0:   # driven at the bottom
            np.testing.assert_allclose(sol.col_currents[17], (0.0 - sol.v_bit[-1, 17]) / r_bit, rtol=1e-9)


def test_floating_group_touching_nothing_driven_needs_the_leak():
    g = np.full((3, 3), 1e-4)
    g[1] = 0.0
    v_rows, v_cols = np.array([0.2, np.nan, 0.0]), np.zeros(3)
    sol = solve_crossbar(g, v_rows, v_cols)
    np.testing.assert_allclose(sol.v_word[1], 0.0, atol=1e-15)
    with pytest.warns(Warning), pytest.raises(np.linalg.LinAlgError, match="leak"):
        solve_crossbar(g, v_rows, v_cols, leak=0.0)


# --- limits and conventions ---------------------------------------------------------------

def test_fast_path_is_the_zero_resistance_limit():
    g, v = random_case(12, 9, seed=7)
    v_cols = np.linspace(-0.05, 0.05, 9) + 0.003   # no line at exactly 0 V: rtol on potentials
    fast = solve_crossbar(g, v, v_cols)
    slow = solve_crossbar(g, v, v_cols, r_word=1e-9, r_bit=1e-9)
    for name in ("v_word", "v_bit", "device_currents", "row_currents", "col_currents"):
        np.testing.assert_allclose(getattr(slow, name), getattr(fast, name), rtol=RTOL, err_msg=name)

    g, v_rows, v_cols = floating_read()
    # leak=0 here: a resistive floating line leaks at every node, an ideal one only once.
    # r = 1e-6: a floating line's potential is set by device conductances ~1e10 times smaller
    # than its segments', so a smaller r loses digits to rounding; a larger one shows.
    ideal = solve_crossbar(g, v_rows, v_cols, leak=0.0)
    near = solve_crossbar(g, v_rows, v_cols, r_word=1e-6, r_bit=1e-6, leak=0.0)
    for name in ("v_word", "v_bit", "device_currents", "row_currents", "col_currents"):
        expected = getattr(ideal, name)
        np.testing.assert_allclose(getattr(near, name), expected, rtol=0,
                                   atol=2e-6 * np.abs(expected).max(), err_msg=name)


def test_driven_ends_mirror():
    g, v = random_case(7, 5, seed=8)
    v_cols = np.array([0.0, np.nan, 0.05, 0.0, np.nan])
    base = solve_crossbar(g, v, v_cols, r_word=1.5, r_bit=0.7)
    flipped = solve_crossbar(g[::-1, ::-1], v[::-1], v_cols[::-1], r_word=1.5, r_bit=0.7,
                             row_end="right", col_end="top")
    np.testing.assert_allclose(flipped.v_word[::-1, ::-1], base.v_word, rtol=1e-12)
    np.testing.assert_allclose(flipped.v_bit[::-1, ::-1], base.v_bit, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(flipped.row_currents[::-1], base.row_currents, rtol=1e-12)
    np.testing.assert_allclose(flipped.col_currents[::-1], base.col_currents, rtol=1e-12)
    # Driven from the other end, the same array gives different currents.
    other = solve_crossbar(g, v, v_cols, r_word=1.5, r_bit=0.7, row_end="right")
    assert not np.allclose(other.device_currents, base.device_currents, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(g=-np.ones((2, 2))), "g"),
    (dict(g=np.array([[1e-4, np.nan], [1e-4, 1e-4]])), "g"),
    (dict(g=np.ones(4)), "g"),
    (dict(g=np.ones((2, 0))), "g"),
    (dict(v_rows=np.zeros(3)), "v_rows"),
    (dict(v_cols=np.array([0.0, np.inf])), "v_cols"),
    (dict(r_word=-1.0), "r_word"),
    (dict(r_bit=-0.5), "r_bit"),
    (dict(r_bit=np.inf), "r_bit"),
    (dict(leak=-1e-12), "leak"),
    (dict(row_end="top"), "row_end"),
    (dict(col_end="left"), "col_end"),
])
def test_validation(kwargs, match):
    args = dict(g=np.full((2, 2), 1e-4), v_rows=np.zeros(2), v_cols=np.zeros(2)) | kwargs
    with pytest.raises(ValueError, match=match):
        solve_crossbar(args.pop("g"), args.pop("v_rows"), args.pop("v_cols"), **args)

"""Nodal solve of a passive crossbar: device conductances between word (row) and bit
(column) lines, optional line resistance, and lines that are driven or left floating.

Node layout: each crosspoint (i, j) has a word-line node and a bit-line node. An ideal
line (zero resistance) collapses into one node per line. Each line segment between
neighbouring crosspoints, and between the driven end and the first crosspoint, is a
resistor; a floating line's end is open. Conventions follow `badcrossbar`: rows driven at
the left, columns at the bottom, device current positive from word to bit line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla


@dataclass(frozen=True)
class CircuitSolution:
    v_word: np.ndarray           # (rows, cols) word-line node potential at each crosspoint
    v_bit: np.ndarray            # (rows, cols) bit-line node potential at each crosspoint
    device_currents: np.ndarray  # (rows, cols) word -> bit positive
    row_currents: np.ndarray     # (rows,) into the array from each row's driven end (0 if floating)
    col_currents: np.ndarray     # (cols,) into the array from each column's driven end (0 if floating)


def solve_crossbar(g: np.ndarray, v_rows: np.ndarray, v_cols: np.ndarray, *,
                   r_word: float = 0.0, r_bit: float = 0.0,
                   row_end: str = "left", col_end: str = "bottom",
                   leak: float = 1e-12) -> CircuitSolution:
    """g: (rows, cols) device conductances (S). v_rows/v_cols: the potential each line is driven
    at from its driven end, NaN for a floating line (a floating line's nodes are unknowns).
    r_word/r_bit: resistance of each line segment between adjacent crosspoints, and between the
    driven end and the first crosspoint (ohm); 0 = ideal lines. row_end 'left' means rows are
    driven at column 0's side; col_end 'bottom' means columns are driven at the last row's side
    (badcrossbar's convention). leak: conductance from every floating node to ground, which keeps
    the matrix regular when a floating group touches nothing driven."""
    g = np.asarray(g, dtype=float)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"g must be a non-empty (rows, cols) array, got shape {g.shape}")
    if not np.isfinite(g).all() or (g < 0).any():
        raise ValueError("g must hold finite non-negative conductances")
    rows, cols = g.shape
    v_rows, v_cols = np.asarray(v_rows, dtype=float), np.asarray(v_cols, dtype=float)
    for name, value, n in (("v_rows", v_rows, rows), ("v_cols", v_cols, cols)):
        if value.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match g, got {value.shape}")
        if np.isinf(value).any():
            raise ValueError(f"{name} must be finite, or NaN for a floating line")
    r_word, r_bit, leak = float(r_word), float(r_bit), float(leak)
    for name, value in (("r_word", r_word), ("r_bit", r_bit), ("leak", leak)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and non-negative, got {value}")
    if row_end not in ("left", "right"):
        raise ValueError(f"row_end must be 'left' or 'right', got {row_end!r}")
    if col_end not in ("bottom", "top"):
        raise ValueError(f"col_end must be 'bottom' or 'top', got {col_end!r}")
    row_driven, col_driven = ~np.isnan(v_rows), ~np.isnan(v_cols)

    if r_word == 0 and r_bit == 0 and row_driven.all() and col_driven.all():
        i_dev = g * (v_rows[:, None] - v_cols[None, :])
        return CircuitSolution(np.repeat(v_rows[:, None], cols, axis=1),
                               np.repeat(v_cols[None, :], rows, axis=0),
                               i_dev, i_dev.sum(axis=1), -i_dev.sum(axis=0))

    ii, jj = np.indices((rows, cols))
    # Nodes: word nodes, bit nodes (one per crosspoint, or one per ideal line), then for
    # resistive lines one terminal per line (its driven end). An ideal line's terminal is
    # its own node.
    word = ii * cols + jj if r_word > 0 else ii
    n_word = rows * cols if r_word > 0 else rows
    bit = n_word + (ii * cols + jj if r_bit > 0 else jj)
    n_nodes = n_word + (rows * cols if r_bit > 0 else cols)
    a, b, c = [word.ravel()], [bit.ravel()], [g.ravel()]   # branches: node a - node b, conductance c
    known, floating, terminals = [], [], []   # terminals: per line, the node it is driven at
    lines = ((word if row_end == "left" else word[:, ::-1], row_driven, r_word),
             ((bit[::-1] if col_end == "bottom" else bit).T, col_driven, r_bit))
    for nodes, driven, r in lines:      # nodes: (lines, length), from the driven end
        floating.append(nodes[~driven].ravel())
        if r == 0:
            term = nodes[:, 0]
            known.append(term[driven])
        else:
            term = n_nodes + np.arange(nodes.shape[0])
            n_nodes += term.size
            a += [nodes[:, :-1].ravel(), term[driven]]
            b += [nodes[:, 1:].ravel(), nodes[driven, 0]]
            c.append(np.full(nodes[:, :-1].size + driven.sum(), 1 / r))
            known.append(term)   # a floating line's terminal is left unconnected (and at 0 V)
        terminals.append(term)

    v = np.zeros(n_nodes)
    is_known = np.zeros(n_nodes, dtype=bool)
    is_known[np.concatenate(known)] = True
    v[terminals[0][row_driven]] = v_rows[row_driven]
    v[terminals[1][col_driven]] = v_cols[col_driven]
    leaks = np.zeros(n_nodes)
    leaks[np.concatenate(floating)] = leak

    a, b, c = np.concatenate(a), np.concatenate(b), np.concatenate(c)
    # Laplacian: +c on both diagonals, -c off the diagonal; duplicates add up.
    lap = sp.coo_matrix((np.concatenate([c, c, -c, -c, leaks]),
                         (np.concatenate([a, b, a, b, np.arange(n_nodes)]),
                          np.concatenate([a, b, b, a, np.arange(n_nodes)]))),
                        shape=(n_nodes, n_nodes)).tocsr()
    unknown = np.flatnonzero(~is_known)
    if unknown.size:
        lap_u = lap[unknown]
        rhs = -(lap_u[:, is_known] @ v[is_known])
        # The matrix is symmetric positive definite: a symmetric ordering keeps fill-in low.
        v[unknown] = spla.spsolve(lap_u[:, unknown].tocsc(), rhs, permc_spec="MMD_AT_PLUS_A")
        if not np.isfinite(v).all():
            raise np.linalg.LinAlgError(
                "singular nodal matrix: a floating group touches nothing driven (use leak > 0)")

    v_word, v_bit = v[word], v[bit]
    i_dev = g * (v_word - v_bit)
    # A driven line's far end is open and it has no leak, so all that enters it goes through
    # its devices; summing them avoids (V - v) / r, which cancels badly for small r.
    return CircuitSolution(v_word, v_bit, i_dev, np.where(row_driven, i_dev.sum(axis=1), 0.0),
                           np.where(col_driven, -i_dev.sum(axis=0), 0.0))

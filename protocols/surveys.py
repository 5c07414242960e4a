"""Characterization surveys that build a device database: V/3 disturbance by programming
position, and tuning imprecision by target level. Written against the crossbar interface,
so they run on an instrument bench or on the direct simulator alike."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from drivers.interfaces import Crossbar
from drivers.write_verify import TuneParams, TuneResult

Progress = Callable[[int, int, TuneResult], None]


def programming_order(rows: int, cols: int) -> list[tuple[int, int]]:
    """Top to bottom, left to right: the order the TiO2 measurements used."""
    return [(r, c) for r in range(rows) for c in range(cols)]


def disturbance_survey(xbar: Crossbar, targets: np.ndarray, params: TuneParams,
                       *, progress: Progress | None = None) -> dict[int, list[float]]:
    """Tune the devices one by one in programming order; after each, read every device
    tuned before it. Returns the conductance changes (S) keyed by how many devices were
    programmed after the one that changed. Devices that failed to tune (stuck ones among
    them) are left out, as in the measured database."""
    samples: dict[int, list[float]] = {}
    tuned: list[tuple[int, int, float]] = []   # device and its conductance right after tuning
    order = [(r, c) for r, c in programming_order(xbar.rows, xbar.cols) if np.isfinite(targets[r, c])]
    for k, (r, c) in enumerate(order, start=1):
        result = xbar.tune(r, c, float(targets[r, c]), params)
        if progress:
            progress(k, len(order), result)
        if not result.tuned:
            continue
        for n, (rj, cj, g0) in enumerate(reversed(tuned), start=1):
            samples.setdefault(n, []).append(xbar.read(rj, cj).conductance - g0)
        tuned.append((r, c, xbar.read(r, c).conductance))
    return samples


def imprecision_survey(xbar: Crossbar, targets: np.ndarray, params: TuneParams,
                       *, progress: Progress | None = None) -> dict[float, list[float]]:
    """Tune every targeted device and read it once more right after: the relative errors
    (g / target - 1) keyed by target level. Failed devices are left out."""
    errors: dict[float, list[float]] = {}
    order = [(r, c) for r, c in programming_order(xbar.rows, xbar.cols) if np.isfinite(targets[r, c])]
    for k, (r, c) in enumerate(order, start=1):
        target = float(targets[r, c])
        result = xbar.tune(r, c, target, params)
        if progress:
            progress(k, len(order), result)
        if result.tuned:
            errors.setdefault(target, []).append(xbar.read(r, c).conductance / target - 1)
    return errors

"""Read map: every chosen device read a few times at the read voltage, the unselected lines
held at 0 V (grounded). The conductance map, and each device's read-to-read spread."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from drivers.interfaces import Crossbar

from .base import DeviceSet, Outcome, Protocol, Step


class ReadMap(Protocol, DeviceSet):
    protocol: Literal["read-map"] = "read-map"
    reads: int = Field(3, ge=1, le=1000, description="reads per device")
    unselected: Literal["grounded"] = Field("grounded", description="unselected lines during a read "
                                            "(floating is not available yet)")

    def check(self, config) -> None:
        self.check_within(config.rows, config.cols)

    def steps(self, config) -> int:
        return len(self.chosen(config.rows, config.cols))

    def run(self, xbar: Crossbar, step: Step) -> Outcome:
        mean = np.full((xbar.rows, xbar.cols), np.nan)
        spread = np.full_like(mean, np.nan)
        for r, c in self.chosen(xbar.rows, xbar.cols):
            g = [xbar.read(r, c).conductance for _ in range(self.reads)]
            mean[r, c] = np.mean(g)
            spread[r, c] = np.std(g, ddof=1) if len(g) > 1 else np.nan
            step(f"({r},{c}) {mean[r, c] * 1e6:.1f} uS")
        read = np.isfinite(mean)
        summary = {"devices": int(read.sum()), "reads_per_device": self.reads,
                   "conductance_uS": {"mean": _us(np.nanmean(mean)), "min": _us(np.nanmin(mean)),
                                      "max": _us(np.nanmax(mean))}}
        if self.reads > 1:
            summary["read_noise_uS_median"] = _us(np.nanmedian(spread))
        return Outcome(summary, {"conductance": mean, "read_spread": spread})


def _us(g: float) -> float:
    return round(float(g) * 1e6, 3)

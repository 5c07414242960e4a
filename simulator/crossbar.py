"""The physics of a passive crossbar: device states, their response to line potentials,
and the currents that flow.

Rows are word lines, columns bit lines; a device's voltage is V_row - V_col, so a positive
row potential SETs (raises G) and a negative one RESETs. All state is held as torch
tensors and updated with whole-array operations; every random draw comes from the array's
own seeded generator.
"""

from __future__ import annotations

import math

import torch

from .device import DevicePreset

# Conductance from a floating line to ground: keeps the nodal matrix regular when a
# floating line touches no driven line; small enough to change no current we report.
LEAK_TO_GROUND = 1e-12
# Below this magnitude a device sees no voltage at all (no drift at 0 V).
V_FLOOR = 1e-9


class CrossbarArray:
    """A rows x cols array of devices drawn from a preset with a seed."""

    def __init__(self, rows: int, cols: int, preset: DevicePreset, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        if rows < 1 or cols < 1:
            raise ValueError("a crossbar needs at least one row and one column")
        self.rows, self.cols, self.preset, self.seed = rows, cols, preset, seed
        self.gen = torch.Generator().manual_seed(seed)
        shape = (rows, cols)
        p = preset

        def normal(mean, sd):
            return mean + sd * torch.randn(shape, generator=self.gen, dtype=dtype)

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(shape, generator=self.gen, dtype=dtype)

        self.g_min = (p.g_min * (1 + p.spread.bounds_rel * torch.randn(shape, generator=self.gen, dtype=dtype))
                      ).clamp(min=p.g_min * 0.5)
        self.g_max = (p.g_max * (1 + p.spread.bounds_rel * torch.randn(shape, generator=self.gen, dtype=dtype))
                      ).clamp(min=self.g_min * 1.5)
        self.v_set = normal(p.set.v_c, p.spread.v_c)
        self.v_reset = normal(p.reset.v_c, p.spread.v_c)
        self.rate_set = p.set.rate * torch.exp(normal(0.0, p.spread.rate_log))
        self.rate_reset = p.reset.rate * torch.exp(normal(0.0, p.spread.rate_log))
        self.g = torch.minimum(torch.maximum(uniform(*p.g_initial), self.g_min), self.g_max)

        u = torch.rand(shape, generator=self.gen, dtype=dtype)
        self.stuck_lrs = u < p.stuck.lrs_fraction
        self.stuck_hrs = (u >= p.stuck.lrs_fraction) & (u < p.stuck.lrs_fraction + p.stuck.hrs_fraction)
        lrs = normal(p.stuck.lrs_mean, p.stuck.lrs_sd).clamp(min=p.stuck.hrs_high)
        hrs = uniform(p.stuck.hrs_low, p.stuck.hrs_high)
        self.g = torch.where(self.stuck_lrs, lrs, torch.where(self.stuck_hrs, hrs, self.g))
        # Scales each device's response to programming; stuck devices do not respond.
        self.fault_factor = torch.where(self.stuck, 0.0, 1.0).to(dtype)

    @property
    def stuck(self) -> torch.Tensor:
        return self.stuck_lrs | self.stuck_hrs

    # --- state change -----------------------------------------------------------------

    def stress(self, v_dev: torch.Tensor, duration: float) -> None:
        """Hold voltages v_dev (rows x cols, V_row - V_col) across the devices for `duration` s."""
        if duration <= 0:
            return
        mag = v_dev.abs()
        if float(mag.max()) < V_FLOOR:
            return
        p = self.preset
        set_ = v_dev > 0
        k = torch.where(
            set_,
            self.rate_set * torch.exp((mag - self.v_set) / p.set.v_0),
            self.rate_reset * torch.exp((mag - self.v_reset) / p.reset.v_0),
        )
        k = torch.where(mag < V_FLOOR, 0.0, k)
        moved = -torch.expm1(-k * duration)
        toward = torch.where(set_, self.g_max, self.g_min)
        dg = (toward - self.g) * moved
        c2c = 1 + p.cycle_noise * torch.randn(self.g.shape, generator=self.gen, dtype=self.g.dtype)
        dg = dg * c2c.clamp(min=0) * self.fault_factor
        self.g = torch.where(self.stuck, self.g, torch.minimum(torch.maximum(self.g + dg, self.g_min), self.g_max))

    # --- observation --------------------------------------------------------------------

    def sample_conductance(self) -> torch.Tensor:
        """The conductances one measurement sees: the true ones with fresh read noise."""
        n = self.preset.read_noise
        rel = torch.randn(self.g.shape, generator=self.gen, dtype=self.g.dtype)
        ab = torch.randn(self.g.shape, generator=self.gen, dtype=self.g.dtype)
        return self.g * (1 + n.relative * rel) + n.absolute * ab

    def read_noise_sd(self, g: float) -> float:
        """Standard deviation of one conductance reading of a device at conductance g."""
        n = self.preset.read_noise
        return math.hypot(n.relative * g, n.absolute)

    @staticmethod
    def device_voltages(v_rows: torch.Tensor, v_cols: torch.Tensor) -> torch.Tensor:
        return v_rows[:, None] - v_cols[None, :]

    @staticmethod
    def line_currents(g: torch.Tensor, v_rows: torch.Tensor, v_cols: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Current flowing from each row and each column line into the array (A)."""
        i_dev = g * (v_rows[:, None] - v_cols[None, :])
        return i_dev.sum(dim=1), -i_dev.sum(dim=0)

    def solve_lines(self, v_rows: torch.Tensor, v_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Potentials of all lines given the driven ones (NaN marks a floating line).

        Floating lines settle where no net current leaves them (Kirchhoff's current law with
        the present conductances); driven lines keep their potentials.
        """
        floating = torch.cat([v_rows.isnan(), v_cols.isnan()])
        if not bool(floating.any()):
            return v_rows, v_cols
        g = self.g
        n_r, n_c = self.rows, self.cols
        lap = torch.zeros(n_r + n_c, n_r + n_c, dtype=g.dtype)
        lap[:n_r, :n_r] = torch.diag(g.sum(dim=1))
        lap[n_r:, n_r:] = torch.diag(g.sum(dim=0))
        lap[:n_r, n_r:] = -g
        lap[n_r:, :n_r] = -g.T
        lap += LEAK_TO_GROUND * torch.eye(n_r + n_c, dtype=g.dtype)
        v = torch.cat([v_rows, v_cols]).clone()
        known = ~floating
        rhs = -lap[floating][:, known] @ v[known]
        v[floating] = torch.linalg.solve(lap[floating][:, floating], rhs)
        return v[:n_r], v[n_r:]

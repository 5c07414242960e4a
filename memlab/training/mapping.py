"""From weights to conductances and back, and where each weight sits on a crossbar.

- Differential pair: w = w_max * (G+ - G-) / (g_max - g_min), each device in [g_min, g_max];
  the positive part of w goes on G+, the negative part on G-, the other device at g_min.
- Single device: w = alpha (1/R - 1/R_C), R_C = 2 Rmin Rmax / (Rmin + Rmax),
  alpha = w_max / (1/Rmin - 1/R_C).
- A layer's weight matrix (out x in) with its bias becomes a tile of out rows and in + 1
  columns: inputs drive the columns (the last one, the bias line, at a fixed voltage) and
  each row's current is an output, as the TiO2 work laid its layers out. A differential
  layer takes two such tiles, one for G+ and one for G-. Larger layers split into tiles.
- Devices are programmed in an order (column-major: top to bottom, then left to right, as
  the TiO2 measurements; or row-major, which moves fewer relays); a device's disturbance key
  is the number of devices of its tile programmed after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Order = Literal["column-major", "row-major"]


@dataclass(frozen=True)
class DifferentialMapping:
    g_min: float = 100e-6
    g_max: float = 500e-6

    def to_conductance(self, w: torch.Tensor, w_max) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.g_max - self.g_min
        return (self.g_min + span * w.clamp(min=0) / w_max, self.g_min + span * (-w).clamp(min=0) / w_max)

    def to_weight(self, g_pos: torch.Tensor, g_neg: torch.Tensor, w_max) -> torch.Tensor:
        return (g_pos - g_neg) * (w_max / (self.g_max - self.g_min))


@dataclass(frozen=True)
class SingleDeviceMapping:
    r_min: float
    r_max: float
    w_max: float

    @property
    def r_c(self) -> float:
        return 2 * self.r_min * self.r_max / (self.r_min + self.r_max)

    @property
    def alpha(self) -> float:
        return self.w_max / (1 / self.r_min - 1 / self.r_c)

    def to_resistance(self, w: torch.Tensor) -> torch.Tensor:
        r = 1 / (w / self.alpha + 1 / self.r_c)
        return r.clamp(self.r_min, self.r_max)

    def to_weight(self, r: torch.Tensor) -> torch.Tensor:
        return self.alpha * (1 / r - 1 / self.r_c)


def with_bias(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(out, in) weights and (out,) bias as (out, in + 1): the bias is the last input."""
    return weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)


def programming_order(rows: int, cols: int, order: Order = "column-major") -> list[tuple[int, int]]:
    if order == "column-major":
        return [(r, c) for c in range(cols) for r in range(rows)]
    return [(r, c) for r in range(rows) for c in range(cols)]


def disturbance_keys(rows: int, cols: int, order: Order = "column-major") -> torch.Tensor:
    """Per device of a tile: how many devices of the tile are programmed after it."""
    r, c = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
    position = c * rows + r if order == "column-major" else r * cols + c
    return rows * cols - 1 - position


def split_tiles(n_rows: int, n_cols: int, max_rows: int, max_cols: int) -> list[tuple[slice, slice]]:
    """Row and column ranges of the tiles covering an n_rows x n_cols matrix."""
    return [(slice(r, min(r + max_rows, n_rows)), slice(c, min(c + max_cols, n_cols)))
            for r in range(0, n_rows, max_rows) for c in range(0, n_cols, max_cols)]

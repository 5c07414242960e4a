"""torch layers whose weights live on crossbars: `CrossbarLinear`, and `CrossbarConv2d` by
unfolding its input patches into a `CrossbarLinear`. They run on any backend implementing
`drivers.interfaces.Crossbar`: the instrument bench through the drivers, or the direct
simulator.

A layer's weights with its bias, (out, in + 1), map to differential pairs
(`DifferentialMapping`). The matrix is split into tiles of at most rows // 2 outputs and
cols inputs; a tile's G+ devices sit on its first rows and its G- devices on the rows below,
sharing the input columns, so one vector-matrix product gives both currents. Tiles are
packed onto the crossbars given (`place_tiles`). `program()` writes every device by
write-verify in the chosen order; `forward()` drives the inputs as column voltages, the bias
column at the full input voltage, and reads the row currents. Gradients reach the software
weights and the input straight through the measurement: forward on the crossbar, backward
in software.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from drivers.interfaces import Crossbar
from drivers.write_verify import TuneParams, TuneResult

from .mapping import DifferentialMapping, Order, programming_order, split_tiles, with_bias


@dataclass(frozen=True)
class Tile:
    """Weights [out_slice, in_slice] of a layer on `xbar`: G+ on rows row0.., G- below them."""

    out_slice: slice
    in_slice: slice
    xbar: Crossbar
    row0: int
    col0: int

    @property
    def outputs(self) -> int:
        return self.out_slice.stop - self.out_slice.start

    @property
    def inputs(self) -> int:
        return self.in_slice.stop - self.in_slice.start

    def rows(self) -> list[int]:
        return list(range(self.row0, self.row0 + 2 * self.outputs))

    def cols(self) -> list[int]:
        return list(range(self.col0, self.col0 + self.inputs))


def place_tiles(out_features: int, in_lines: int, crossbars: list[Crossbar]) -> list[Tile]:
    """Split an (out, in_lines) matrix into differential tiles and pack them onto the
    crossbars: shelves of tiles side by side, one crossbar after the other."""
    if not crossbars:
        raise ValueError("no crossbar to place the layer on")
    max_out = min(x.rows for x in crossbars) // 2
    max_in = min(x.cols for x in crossbars)
    if max_out < 1:
        raise ValueError("a differential layer needs crossbars of at least 2 rows")
    pieces = split_tiles(out_features, in_lines, max_out, max_in)
    tiles: list[Tile] = []
    k, row0, col0, shelf = 0, 0, 0, 0
    for rs, cs in pieces:
        height, width = 2 * (rs.stop - rs.start), cs.stop - cs.start
        while True:
            if k == len(crossbars):
                need = len(pieces)
                raise ValueError(f"the layer ({out_features} outputs x {in_lines} input lines, {need} differential "
                                 f"tiles) does not fit on the {len(crossbars)} crossbar(s) given")
            xbar = crossbars[k]
            if col0 + width > xbar.cols:        # next shelf
                row0, col0, shelf = row0 + shelf, 0, 0
            if row0 + height <= xbar.rows:
                break
            k, row0, col0, shelf = k + 1, 0, 0, 0
        tiles.append(Tile(rs, cs, xbar, row0, col0))
        col0, shelf = col0 + width, max(shelf, height)
    return tiles


@dataclass(frozen=True)
class ProgrammingReport:
    results: list[TuneResult]

    @property
    def failed(self) -> list[TuneResult]:
        return [r for r in self.results if not r.tuned]

    @property
    def pulses(self) -> int:
        return sum(r.pulses for r in self.results)


class _MeasuredStraightThrough(torch.autograd.Function):
    """The crossbar's output forward; the software layer's gradient backward."""

    @staticmethod
    def forward(ctx, software: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        return measured

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class CrossbarLinear(nn.Module):
    """y = x W^T + b computed on crossbars. Inputs in [-x_max, x_max] become column voltages
    in [-v_in, v_in] (|v_in| must stay below what disturbs a device: a read voltage)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, crossbars: list[Crossbar], *,
                 mapping: DifferentialMapping = DifferentialMapping(), v_in: float = 0.2, x_max: float = 1.0,
                 w_max: float | None = None, tune: TuneParams = TuneParams(), order: Order = "column-major"):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().double())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().double())
        self.mapping, self.v_in, self.x_max, self.tune, self.order = mapping, v_in, x_max, tune, order
        self.w_max = float(w_max if w_max is not None else self._matrix().abs().max())
        if self.w_max <= 0:
            raise ValueError("w_max must be positive (an all-zero layer has no scale)")
        self.tiles = place_tiles(self.out_features, self.in_features + (bias is not None), crossbars)

    @classmethod
    def from_linear(cls, layer: nn.Linear, crossbars: list[Crossbar], **kwargs) -> "CrossbarLinear":
        return cls(layer.weight, layer.bias, crossbars, **kwargs)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def _matrix(self) -> torch.Tensor:
        """The weights as programmed: the bias line is driven at the full input voltage, which
        stands for an input of x_max, so it carries bias / x_max."""
        bias = None if self.bias is None else self.bias.detach() / self.x_max
        return with_bias(self.weight.detach(), bias)

    def targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Target conductances (G+, G-), each (out, in [+ 1]) in S."""
        return self.mapping.to_conductance(self._matrix().clamp(-self.w_max, self.w_max), self.w_max)

    def program(self, progress: Callable[[int, int], None] | None = None) -> ProgrammingReport:
        """Write-verify every device of every tile, tile by tile in the programming order."""
        g_pos, g_neg = self.targets()
        total = 2 * g_pos.numel()
        results: list[TuneResult] = []
        for tile in self.tiles:
            for r, c in programming_order(2 * tile.outputs, tile.inputs, self.order):
                source = g_pos if r < tile.outputs else g_neg
                target = float(source[tile.out_slice.start + r % tile.outputs, tile.in_slice.start + c])
                results.append(tile.xbar.tune(tile.row0 + r, tile.col0 + c, target, self.tune))
                if progress is not None:
                    progress(len(results), total)
        return ProgrammingReport(results)

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's outputs for inputs x (n, in), from the crossbars' row currents."""
        x = x.detach().double()
        if x.numel() and float(x.abs().max()) > self.x_max * (1 + 1e-9):
            raise ValueError(f"inputs beyond +/-x_max = {self.x_max} would exceed the input voltage {self.v_in} V")
        per_volt = self.v_in / self.x_max
        volts = x * per_volt
        if self.bias is not None:
            volts = torch.cat([volts, torch.full((len(x), 1), self.v_in, dtype=volts.dtype)], dim=1)
        i_pos = torch.zeros(len(x), self.out_features, dtype=torch.float64)
        i_neg = torch.zeros_like(i_pos)
        for tile in self.tiles:
            currents = torch.from_numpy(tile.xbar.vmm(volts[:, tile.in_slice].numpy(), tile.rows(), tile.cols()))
            i_pos[:, tile.out_slice] += currents[:, :tile.outputs]
            i_neg[:, tile.out_slice] += currents[:, tile.outputs:]
        return self.mapping.to_weight(i_pos, i_neg, self.w_max) / per_volt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        software = F.linear(x.double(), self.weight, self.bias)
        return _MeasuredStraightThrough.apply(software, self.measure(x)).to(x.dtype)


class CrossbarConv2d(nn.Module):
    """A 2-d convolution on crossbars: input patches unfolded into the rows of a
    `CrossbarLinear` of out_channels x (in_channels x kh x kw) weights."""

    def __init__(self, conv: nn.Conv2d, crossbars: list[Crossbar], **kwargs):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("CrossbarConv2d supports groups=1 and numeric zero padding")
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.linear = CrossbarLinear(conv.weight.reshape(conv.out_channels, -1), conv.bias, crossbars, **kwargs)

    def program(self, progress: Callable[[int, int], None] | None = None) -> ProgrammingReport:
        return self.linear.program(progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out = self.linear(patches.transpose(1, 2).reshape(-1, patches.shape[1]))
        h_out, w_out = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride))
        return out.reshape(n, h_out * w_out, -1).transpose(1, 2).reshape(n, -1, h_out, w_out)

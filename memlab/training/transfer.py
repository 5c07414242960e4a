"""Transfer of trained weights onto crossbars, and Monte Carlo transfer simulation.

A simulated transfer programs every device of every tile by write-verify, in the
programming order the training assumed, on a freshly drawn simulated crossbar with the V/3
scheme, then runs inference on it: inputs as row voltages, column currents read through
the devices' I-V, differential pairs subtracted. `program_tiles` does this for a whole batch
of crossbars at once: the same device of every crossbar is tuned in lockstep by the
write-verify algorithm of `drivers.write_verify` (vectorized here), with the simulator's
physics for the pulsed devices (`CrossbarArray.apply_to`). The half-select stress each pulse
puts on the rest of its tile is the drift dose that `CrossbarArray.apply` would add, summed
per programmed device and added to its row and column (same polarity as the pulse) and to
the rest of the tile (opposite polarity) in one step. What this leaves out is the
sub-threshold switching of the half-selected devices, four orders of magnitude below read
noise (`tests/test_transfer.py` compares the two paths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from drivers.interfaces import Scheme
from drivers.write_verify import TuneParams
from simulator.crossbar import CrossbarArray
from simulator.device import DevicePreset

from ..simbackend import Waveform
from .mapping import DifferentialMapping, Order, programming_order


@dataclass
class ProgrammingStats:
    pulses: torch.Tensor      # (batch, rows, cols) pulses per device
    failed: torch.Tensor      # (batch, rows, cols) devices that hit a cap
    bench_time_s: float       # virtual time per crossbar


def program_tiles(preset: DevicePreset, targets: list[torch.Tensor], batch: int, seed: int,
                  tune: TuneParams, waveform: Waveform = Waveform(), order: Order = "column-major",
                  dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], list[ProgrammingStats]]:
    """Program each target tile (rows x cols, S) on `batch` freshly drawn crossbars; returns
    the true conductances afterwards, (batch, rows, cols) per tile, and statistics. Tiles of
    one shape (a layer's G+ and G-) are programmed side by side, as one larger batch."""
    out: list = [None] * len(targets)
    stats: list = [None] * len(targets)
    shapes = sorted({tuple(t.shape) for t in targets})
    for k, shape in enumerate(shapes):
        members = [i for i, t in enumerate(targets) if tuple(t.shape) == shape]
        rows, cols = shape
        n = batch * len(members)
        goal = torch.stack([targets[i].to(dtype) for i in members]).repeat_interleave(batch, dim=0)
        array = CrossbarArray(n * rows, cols, preset, seed=seed * 7919 + k, dtype=dtype)
        pulses, failed = _program_tile(array, goal, tune, waveform, order)
        g = array.conductance().view(len(members), batch, rows, cols)
        for m, i in enumerate(members):
            out[i] = g[m]
            stats[i] = ProgrammingStats(pulses.view(len(members), batch, rows, cols)[m],
                                        failed.view(len(members), batch, rows, cols)[m], array.clock)
    return out, stats


def _program_tile(array: CrossbarArray, targets: torch.Tensor, p: TuneParams, w: Waveform,
                  order: Order) -> tuple[torch.Tensor, torch.Tensor]:
    """Write-verify every device of the tile on every crossbar of the batch, each crossbar
    going through the programming order at its own pace (one read, and a pulse if needed,
    per crossbar per step): the algorithm of drivers.write_verify.tune, vectorized. (Index
    ops, not advanced indexing: see simulator.crossbar._at.)"""
    batch, rows, cols = targets.shape                    # one target tile per crossbar
    dtype = array.dtype
    sequence = torch.tensor([r * cols + c for r, c in programming_order(rows, cols, order)])
    n_dev = len(sequence)
    target_seq = targets.reshape(batch, -1).index_select(1, sequence).reshape(-1)   # (batch x n_dev)
    base = torch.arange(batch) * rows * cols
    set_stop, reset_stop = abs(p.set_stop) + 1e-9, abs(p.reset_stop) + 1e-9
    d = array.preset.drift
    # half-select stress magnitude: V/3 or V/2 (none behind access transistors)
    divider = math.inf if array.preset.architecture == "1t1r" else (3 if p.scheme is Scheme.V3 else 2)
    width_factor = (p.width / 1e-6) ** d.width_exponent

    j = torch.zeros(batch, dtype=torch.long)                 # position in the sequence
    # per crossbar: next amplitude of each polarity, last polarity (+1 SET, -1 RESET, 0 none
    # yet), pulses on the present device, and its pulses' half-select doses of each polarity
    fresh = torch.tensor([p.set_start, p.reset_start, 0.0, 0.0, 0.0, 0.0], dtype=dtype)
    state = fresh[:, None].repeat(1, batch)
    pulses = torch.zeros(batch * n_dev, dtype=torch.long)
    failed = torch.zeros(batch * n_dev, dtype=torch.bool)
    rows_of, cols_of = torch.arange(rows)[:, None], torch.arange(cols)[None, :]

    while True:
        a = torch.nonzero(j < n_dev).squeeze(1)
        if not len(a):
            break
        ja = j.index_select(0, a)
        pos, target = sequence.index_select(0, ja), target_seq.index_select(0, a * n_dev + ja)
        amp_set, amp_reset, last, count, dose_set, dose_reset = state.index_select(1, a)
        # the reads up to the first out of tolerance, or all the accepting ones: nothing
        # changes a device between reads, so the first read is drawn for every crossbar and
        # the rest only where it was in tolerance (most steps end at the first read)
        devices = base.index_select(0, a) + pos
        g = array.sample(devices)
        first_out = ((g - target).abs() <= p.tolerance * target).to(torch.long)
        again = torch.nonzero(first_out).squeeze(1)
        if len(again) and p.reads_to_accept > 1:
            more = array.sample(devices.index_select(0, again), reads=p.reads_to_accept - 1)
            t_again = target.index_select(0, again)
            inside_run = ((more - t_again).abs() <= p.tolerance * t_again).to(torch.int32).cumprod(dim=0)
            n_in = inside_run.sum(dim=0)                      # further in-tolerance reads before an out
            first_out.index_add_(0, again, n_in.long())
            g.index_copy_(0, again, more.gather(0, n_in.clamp(max=p.reads_to_accept - 2)[None]).squeeze(0))
        array.advance((w.overhead + w.read_time) * float(first_out.float().mean() + 1))
        done = first_out >= p.reads_to_accept

        up = g < target                                       # SET needed
        sign = up.to(dtype) * 2 - 1
        overshoot = (last != 0) & (last != sign)
        amp_set = torch.where(overshoot & up, p.set_start, amp_set)
        amp_reset = torch.where(overshoot & ~up, p.reset_start, amp_reset)
        v = torch.where(up, amp_set, amp_reset)
        beyond = v.abs() > torch.where(up, set_stop, reset_stop)
        give_up = ~done & (beyond | (count >= p.max_pulses))
        fire = ~done & ~give_up
        chosen = torch.nonzero(fire).squeeze(1)
        if len(chosen):
            array.apply_to(base.index_select(0, a.index_select(0, chosen)) + pos.index_select(0, chosen),
                           v.index_select(0, chosen), p.width)
            array.advance(w.overhead)
            step = torch.round((v + sign * p.step) * 1e9) / 1e9
            amp_set = torch.where(fire & up, step, amp_set)
            amp_reset = torch.where(fire & ~up, step, amp_reset)
            last = torch.where(fire, sign, last)
            count = count + fire
            half = (v.abs() / divider - d.threshold).clamp(min=0) * width_factor * fire
            dose_set = dose_set + half * up
            dose_reset = dose_reset + half * ~up
        state.index_copy_(1, a, torch.stack([amp_set, amp_reset, last, count, dose_set, dose_reset]))

        end = torch.nonzero(done | give_up).squeeze(1)
        if len(end):
            fin = a.index_select(0, end)
            slot = fin * n_dev + ja.index_select(0, end)
            pulses.index_copy_(0, slot, count.index_select(0, end).long())
            failed.index_copy_(0, slot, give_up.index_select(0, end))
            _half_select(array, base.index_select(0, fin), pos.index_select(0, end),
                         torch.stack([dose_set.index_select(0, end), dose_reset.index_select(0, end)]),
                         rows_of, cols_of, p.scheme, divider)
            j.index_add_(0, fin, torch.ones_like(fin))
            state.index_copy_(1, fin, fresh[:, None].expand(-1, len(fin)))
    unorder = torch.empty_like(sequence)
    unorder[sequence] = torch.arange(n_dev)
    return (pulses.view(batch, n_dev)[:, unorder].view(batch, rows, cols),
            failed.view(batch, n_dev)[:, unorder].view(batch, rows, cols))


def _half_select(array: CrossbarArray, base: torch.Tensor, pos: torch.Tensor, dose: torch.Tensor,
                 rows_of: torch.Tensor, cols_of: torch.Tensor, scheme: Scheme, divider: float) -> None:
    """Give the other devices of each listed crossbar the half-select dose of its just-tuned
    device's pulses: that device's row and column get the pulses' polarity; under V/3 the
    rest of the tile gets the same magnitude with the opposite polarity (under V/2, and
    behind access transistors, nothing)."""
    if divider == math.inf or not bool(dose.any()):
        return
    rows, cols = rows_of.shape[0], cols_of.shape[1]
    r, c = (pos // cols)[:, None, None], (pos % cols)[:, None, None]
    same_row, same_col = rows_of[None] == r, cols_of[None] == c
    lines = (same_row ^ same_col).to(dose.dtype)             # the row and column, not the device
    rest = (~(same_row | same_col)).to(dose.dtype) if scheme is Scheme.V3 else torch.zeros_like(lines)
    d_set, d_reset = dose[0][:, None, None], dose[1][:, None, None]
    idx = (base[:, None] + torch.arange(rows * cols)[None, :]).reshape(-1)
    array.add_dose((d_set * lines + d_reset * rest).reshape(-1), (d_reset * lines + d_set * rest).reshape(-1), idx)


@dataclass(frozen=True)
class CrossbarNetwork:
    """A feed-forward network of differential layers, each a pair of tiles (G+ and G-, out x
    (in + 1), bias last) run on conductances: inputs in [0, x_max] drive the tile columns
    as voltages in [0, v_in], each row's current is an output."""

    weights: list[torch.Tensor]          # per layer (out, in + 1), bias last
    activations: list[str]               # "sigmoid", "relu" or "none", per layer
    mapping: DifferentialMapping
    v_in: float = 0.2
    x_max: float = 1.0

    def targets(self) -> list[torch.Tensor]:
        """Target conductances, tiles in programming sequence: G+ then G- of each layer."""
        return [g for w in self.weights for g in self.mapping.to_conductance(w, w.abs().max())]

    def forward(self, x: torch.Tensor, tiles: list[torch.Tensor], preset: DevicePreset) -> torch.Tensor:
        """Outputs for inputs x (n, in) on conductance tiles, each (batch, out, in + 1), in
        the order of `targets`: returns (batch, n, out)."""
        h = x
        per_volt = self.v_in / self.x_max
        for k, (w, act) in enumerate(zip(self.weights, self.activations)):
            g_pos, g_neg = tiles[2 * k], tiles[2 * k + 1]
            ones = torch.ones(*h.shape[:-1], 1, dtype=h.dtype)
            volts = torch.cat([h, ones], dim=-1) * per_volt
            f = preset.read_current(torch.ones((), dtype=g_pos.dtype), volts.to(g_pos.dtype))  # I = G f(V)
            i_pos, i_neg = f @ g_pos.transpose(-1, -2), f @ g_neg.transpose(-1, -2)   # (batch, n, out)
            h = self.mapping.to_weight(i_pos, i_neg, w.abs().max()) / per_volt
            h = {"sigmoid": torch.sigmoid, "relu": torch.relu, "none": lambda t: t}[act](h)
        return h

"""The physics of a crossbar's devices: their states, their response to voltages over
time, and what a measurement sees.

Rows are word lines, columns bit lines; a device's voltage is V_row - V_col, so a positive
row potential SETs (raises G) and a negative one RESETs. State lives in torch tensors and
every update is a handful of whole-array operations. Device-to-device parameters are drawn
once from the seed; every later random draw is counter-based (`noise.py`): the noise of a
device's n-th switching event, drift realization or read depends only on (seed, device, n),
so any two simulations applying the same events agree, whatever else they do.

Laziness keeps a pulse over a million devices cheap: the drift dose a device collects is
realized (mean and random part) only when the device is next read or switched, and the
volatile part of its state relaxes in closed form from a common epoch. Realizing is cheap
too: the random drift direction of each device's epoch is drawn once, when it starts, and
the drift already added to the conductance is kept, so a read of every device is a few
elementwise passes over the doses.
"""

from __future__ import annotations

import math

import torch

from . import noise
from .device import DevicePreset

# Switching events moving a device by less than this fraction of the way to its bound (at
# most a few hundredths of a uS) are applied without cycle-to-cycle noise (it would be
# invisible) and without a volatile part, and do not start a new drift epoch.
SIGNIFICANT = 1e-4
MICROSECOND = 1e-6


class _P:
    """Rows of CrossbarArray._static."""
    INV_RESET, INV_DIFF, G_MIN, SPAN, G_MAX, FAULT, SENS, RESP = range(8)

    def __len__(self) -> int:
        return 8


_P = _P()

# streams and counters of the draws of a switching event (see _switch), as columns
_SWITCH_STREAMS = torch.tensor([[noise.C2C], [noise.DRIFT], [noise.DRIFT]])
_SWITCH_SCALE, _SWITCH_SHIFT = torch.tensor([[1], [2], [2]]), torch.tensor([[0], [2], [3]])


def _at(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Flat elements idx of t. index_select, not t[idx]: advanced indexing costs 30-50 times
    more here with two threads, and a pulse on one device per crossbar of a batch is all
    gathers and scatters."""
    return t.view(-1).index_select(0, idx)


class CrossbarArray:
    """A rows x cols array of devices drawn from a preset with a seed."""

    def __init__(self, rows: int, cols: int, preset: DevicePreset, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        if rows < 1 or cols < 1:
            raise ValueError("a crossbar needs at least one row and one column")
        self.rows, self.cols, self.preset, self.seed, self.dtype = rows, cols, preset, seed, dtype
        gen = torch.Generator().manual_seed(seed)
        shape = (rows, cols)
        p = preset

        def normal(mean=0.0, sd=1.0):
            return mean + sd * torch.randn(shape, generator=gen, dtype=torch.float64)

        def uniform(lo=0.0, hi=1.0):
            return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

        g_min = (p.g_min * (1 + p.spread.bounds_rel * normal())).clamp(min=0.5 * p.g_min)
        g_max = torch.maximum(p.g_max * (1 + p.spread.bounds_rel * normal()), 1.5 * g_min)
        # 1 / v_c per device and polarity: k = rate * exp(-barrier * (1 - |V| / v_c) ** 2)
        inv_set = 1 / normal(p.set.v_c, p.spread.v_c).clamp(min=0.1 * p.set.v_c)
        inv_reset = 1 / normal(p.reset.v_c, p.spread.v_c).clamp(min=0.1 * p.reset.v_c)
        s = p.drift.sensitivity_sd
        sensitivity = torch.exp(normal(-s * s / 2, s))
        g = uniform(*p.g_initial).clamp(min=0).minimum(g_max).maximum(g_min)

        f = p.faults
        u = uniform()
        stuck_lrs = u < f.stuck_lrs
        stuck_hrs = (u >= f.stuck_lrs) & (u < f.stuck_lrs + f.stuck_hrs)
        discordant = (u >= f.stuck_lrs + f.stuck_hrs) & (u < f.stuck_lrs + f.stuck_hrs + f.discordant)
        lrs = f.lrs_conductance.sample(normal(), uniform())
        hrs = f.hrs_conductance.sample(normal(), uniform())
        c, d = f.concordant_factor, f.discordant_factor
        factor = torch.where(discordant, normal(d.mean, d.sd).clamp(d.low, d.high),
                             normal(c.mean, c.sd).clamp(c.low, c.high))
        stuck = stuck_lrs | stuck_hrs
        factor = torch.where(stuck, 0.0, factor)
        g = torch.where(stuck_lrs, lrs, torch.where(stuck_hrs, hrs, g))
        # a stuck device's bounds are its own conductance: nothing moves it
        g_min = torch.where(stuck, g, g_min)
        g_max = torch.where(stuck, g, g_max)

        t = dict(dtype=dtype)
        self.g = g.to(**t)                  # stable part of the conductance (S)
        # the per-device constants, one row each of one block, so that a single gather
        # fetches them all for the few devices a step touches (see _params)
        self._static = torch.stack([inv_reset, inv_set - inv_reset, g_min, g_max - g_min, g_max, factor,
                                    sensitivity, (factor != 0).to(torch.float64)]).to(**t).reshape(len(_P), -1)
        view = lambda k: self._static[k].view(shape)  # noqa: E731
        self.g_min, self._span, self.g_max = view(_P.G_MIN), view(_P.SPAN), view(_P.G_MAX)
        self.fault_factor, self.sensitivity, self._responsive = view(_P.FAULT), view(_P.SENS), view(_P.RESP)
        self.stuck_lrs, self.stuck_hrs, self.discordant = stuck_lrs, stuck_hrs, discordant
        self._vol = torch.zeros(shape, **t)   # volatile part, scaled to the epoch
        self._vol_epoch = 0.0
        # the drift state, rows of one block as in _static: the doses collected since each
        # device last switched [SET polarity, RESET polarity], the drift they have already
        # added to g (_drift of the doses when the device was last realized), and the random
        # part of the drift at unit dose in the device's present epoch (drift.noise * zeta,
        # drawn when the epoch starts)
        self._drift_state = torch.zeros((4, *shape), **t)
        self._dose, self._applied, self._unit_noise = self._drift_state[:2], self._drift_state[2], self._drift_state[3]
        self._unrealized = False             # doses added since every device was last realized
        self._n_switch = torch.zeros(shape, dtype=torch.int64)
        if p.drift.noise:
            dev, first = torch.arange(self.n_devices), torch.zeros(self.n_devices, dtype=torch.int64)
            draw = lambda counter: noise.keyed_normal(seed, noise.DRIFT, dev, counter, dtype)  # noqa: E731
            self._unit_noise.view(-1).copy_(self._epoch_noise(draw(first), draw(first + 1)))
        # read and programming noise need no agreement between simulations: an ordinary
        # seeded stream, much faster than the counter-based draws
        self._gen = torch.Generator().manual_seed(seed + 0x5EED)
        self.clock = 0.0                     # virtual time (s)

    # --- derived views ------------------------------------------------------------------------

    @property
    def stuck(self) -> torch.Tensor:
        return self.stuck_lrs | self.stuck_hrs

    @property
    def n_devices(self) -> int:
        return self.rows * self.cols

    def bytes_per_device(self) -> float:
        tensors = [self.g, self._static, self._vol, self._drift_state, self._n_switch,
                   self.stuck_lrs, self.stuck_hrs, self.discordant]
        return sum(t.element_size() * t.numel() for t in tensors) / self.n_devices

    def conductance(self) -> torch.Tensor:
        """The true conductances now (every pending drift realized)."""
        self._realize_all()
        return self.g + self._volatile()

    # --- time -----------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Time passes with no voltage on the devices: only relaxation."""
        if seconds > 0:
            self.clock += seconds

    def _decay(self) -> float:
        return math.exp(-(self.clock - self._vol_epoch) / self.preset.relaxation.tau)

    def _volatile(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        vol = self._vol if idx is None else _at(self._vol, idx)
        return vol * self._decay()

    # --- state change ---------------------------------------------------------------------------

    def apply_lines(self, v_rows: torch.Tensor, v_cols: torch.Tensor, duration: float) -> None:
        """Hold fully driven lines at v_rows, v_cols for `duration` seconds."""
        v_rows, v_cols = v_rows.to(self.dtype), v_cols.to(self.dtype)
        self.apply(v_rows[:, None] - v_cols[None, :], duration)

    def apply(self, v: torch.Tensor, duration: float) -> None:
        """Hold device voltages v (rows x cols, V_row - V_col) for `duration` seconds.

        Written for a million devices: arithmetic masks instead of torch.where (several
        times slower here), one exp and one expm1 per device."""
        if duration <= 0:
            return
        v = v.to(self.dtype).reshape(-1)
        moved, setf, mag = self._moved(v, self._static[_P.INV_RESET], self._static[_P.INV_DIFF], duration)
        target = torch.addcmul(self.g_min.view(-1), setf, self._span.view(-1))
        big = torch.nonzero(moved > SIGNIFICANT).squeeze(1) if float(moved.max()) > SIGNIFICANT else None
        # devices that switch start a new drift epoch: their drift so far is realized first,
        # and this stress's dose on them is dropped (the switching law is their response)
        if big is not None:
            self._realize(big)
        self._add_dose(mag, setf, duration)
        # sub-threshold switching: deterministic and non-volatile (far below read noise)
        g = self.g.view(-1)
        small = (target - g).mul_(moved).mul_(self.fault_factor.view(-1))
        if big is not None:
            small.index_fill_(0, big, 0.0)
        g += small
        if big is not None:
            self._switch(big, target.index_select(0, big), moved.index_select(0, big))
        torch.clamp(self.g, self.g_min, self.g_max, out=self.g)
        self.clock += duration

    def apply_to(self, idx: torch.Tensor, v: torch.Tensor, duration: float) -> None:
        """Voltages v on the devices idx (flat) only, for `duration` seconds; every other
        device sees nothing. The same law as `apply`, for a few devices of a large array."""
        if duration <= 0 or not len(idx):
            return
        v = v.to(self.dtype)
        p = self._static.index_select(1, idx)
        moved, setf, mag = self._moved(v, p[_P.INV_RESET], p[_P.INV_DIFF], duration)
        target = p[_P.G_MIN] + setf * p[_P.SPAN]
        significant = moved > SIGNIFICANT
        chosen = torch.nonzero(significant).squeeze(1)
        big = idx.index_select(0, chosen)
        if len(big):
            self._realize(big)
        self._add_dose(mag, setf, duration, idx, p[_P.SENS])
        g = self.g.view(-1)
        now = _at(g, idx)
        small = (target - now) * moved * p[_P.FAULT]
        g.index_copy_(0, idx, torch.minimum(torch.maximum(now + small.masked_fill_(significant, 0.0), p[_P.G_MIN]),
                                            p[_P.G_MAX]))
        if len(big):
            self._switch(big, target.index_select(0, chosen), moved.index_select(0, chosen),
                         p.index_select(1, chosen))
        self.clock += duration

    def _moved(self, v: torch.Tensor, inv_reset: torch.Tensor, inv_diff: torch.Tensor, duration: float):
        """Fraction of the way to its bound each device moves under v for `duration`, with
        the SET-polarity indicator and |v| (flat tensors)."""
        s, r = self.preset.set, self.preset.reset
        mag = v.abs()
        setf = v.sign().add_(1).mul_(0.5)      # 1 SET polarity, 0 RESET (0.5 at 0 V: no matter)
        x = torch.addcmul(inv_reset, setf, inv_diff).mul_(mag).neg_().add_(1).clamp_(min=0).square_()
        if s.barrier == r.barrier:
            k = x.mul_(-s.barrier).exp_().mul_(setf * (s.rate - r.rate) + r.rate)
        else:
            k = setf * s.rate * torch.exp(-s.barrier * x) + (1 - setf) * r.rate * torch.exp(-r.barrier * x)
        return k.mul_(-duration).expm1_().neg_().mul_(mag > 0), setf, mag  # no voltage, no change

    def _switch(self, idx: torch.Tensor, target: torch.Tensor, moved: torch.Tensor,
                params: torch.Tensor | None = None) -> None:
        """Significant switching of the devices `idx` (flat), with noise and a volatile part
        (`params`: their columns of _static, if already gathered). It also starts a new
        drift epoch for them: their drift starts again from zero."""
        p = self.preset
        q = self._static.index_select(1, idx) if params is None else params
        self._drift_state[:3].view(3, -1).index_fill_(1, idx, 0.0)   # doses and applied drift
        g = self.g.view(-1)
        now = _at(g, idx) + self._volatile(idx)
        count = self._n_switch.view(-1)
        n = _at(count, idx)
        if p.drift.noise:
            # one draw for this event's cycle-to-cycle noise (counter n) and the drift direction
            # of the epoch n + 1 it starts (counters 2 n + 2, 2 n + 3)
            z, z1, z2 = noise.keyed_normal(self.seed, _SWITCH_STREAMS, idx, n * _SWITCH_SCALE + _SWITCH_SHIFT,
                                           self.dtype)
            self._unit_noise.view(-1).index_copy_(0, idx, self._epoch_noise(z1, z2))
        else:
            z = noise.keyed_normal(self.seed, noise.C2C, idx, n, self.dtype)
        c2c = 1 + p.cycle_noise * z
        count.index_add_(0, idx, torch.ones_like(idx))
        change = (target - now) * moved * c2c.clamp(min=0) * q[_P.FAULT]
        change = torch.minimum(torch.maximum(now + change, q[_P.G_MIN]), q[_P.G_MAX]) - now
        phi = p.relaxation.fraction
        g.index_add_(0, idx, (1 - phi) * change)
        if phi:
            self._add_volatile(idx, phi * change)

    def _add_volatile(self, idx: torch.Tensor, change: torch.Tensor) -> None:
        tau = self.preset.relaxation.tau
        if (self.clock - self._vol_epoch) / tau > 30:  # re-base before the scale overflows
            self._vol *= self._decay()
            self._vol_epoch = self.clock
        self._vol.view(-1).index_add_(0, idx, change / self._decay())

    def _add_dose(self, mag: torch.Tensor, setf: torch.Tensor, duration: float,
                  idx: torch.Tensor | None = None, sensitivity: torch.Tensor | None = None) -> None:
        """Drift dose of a stress (flat |v| and SET indicator, for every device or for idx)."""
        d = self.preset.drift
        if not (d.set_rate or d.reset_rate or d.noise) or float(mag.max()) <= d.threshold:
            return
        s = sensitivity if sensitivity is not None else \
            self.sensitivity.view(-1) if idx is None else _at(self.sensitivity, idx)
        dose = (mag - d.threshold).clamp_(min=0).mul_(s)
        dose *= (duration / MICROSECOND) ** d.width_exponent
        set_dose = dose * setf
        self.add_dose(set_dose, dose.sub_(set_dose), idx, sensitivity_included=True)

    def add_dose(self, set_dose: torch.Tensor, reset_dose: torch.Tensor, idx: torch.Tensor | None = None,
                 *, sensitivity_included: bool = False) -> None:
        """Add drift doses of each polarity (flat, for every device or for idx). Without
        `sensitivity_included` they are raw doses, scaled here by each device's sensitivity:
        for callers that account for many half-select pulses at once."""
        planes = self._dose.view(2, -1)
        self._unrealized = True
        if not sensitivity_included:
            s = self.sensitivity.view(-1) if idx is None else _at(self.sensitivity, idx)
            set_dose, reset_dose = set_dose * s, reset_dose * s
        if idx is None:
            planes[0] += set_dose
            planes[1] += reset_dose
        else:
            planes[0].index_add_(0, idx, set_dose)
            planes[1].index_add_(0, idx, reset_dose)

    def _drift(self, dose: torch.Tensor, unit_noise: torch.Tensor) -> torch.Tensor:
        """Drift after collecting `dose` ([SET, RESET] x ...) since the last switch, for
        random parts `unit_noise` at unit dose (see `device.Drift`); a new tensor."""
        d = self.preset.drift
        total = dose[0] + dose[1]
        mean = dose[0] * d.set_rate
        mean -= dose[1] * d.reset_rate
        if d.mean_exponent != 1:
            mean *= torch.where(total > 0, total, 1.0).pow_(d.mean_exponent - 1)
        return mean.add_(total.pow_(d.noise_exponent).mul_(unit_noise))

    def _epoch_noise(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """drift.noise times zeta, the random drift direction of an epoch, from its two
        standard normal draws (zeta: mean 0, sd 1, skewness -8 a^3 / (1 + 2 a^2) ** 1.5 for
        a = drift.skew; the draws are those of counters 2 n and 2 n + 1 in epoch n)."""
        d = self.preset.drift
        a = d.skew
        zeta = (z1 - a * (z2 * z2 - 1)) / math.sqrt(1 + 2 * a * a) if a else z1
        return d.noise * zeta

    def _realize(self, idx: torch.Tensor) -> None:
        """Bring the conductance of devices `idx` (flat) up to date with their drift doses.
        Stuck devices do not move: their bounds are their conductance."""
        if not self._unrealized:
            return
        state = self._drift_state.view(4, -1).index_select(1, idx)
        if not bool(state[:2].any()):   # no dose since they switched (write-verify rereads)
            return
        drift = self._drift(state[:2], state[3])
        lo, _, hi = self._static[_P.G_MIN:_P.G_MAX + 1].index_select(1, idx)
        g = self.g.view(-1)
        now = _at(g, idx) + (drift - state[2])
        g.index_copy_(0, idx, torch.minimum(torch.maximum(now, lo), hi))
        self._applied.view(-1).index_copy_(0, idx, drift)

    def _realize_all(self) -> None:
        """`_realize` of every device, in place, without gathers."""
        if not self._unrealized:
            return
        drift = self._drift(self._dose, self._unit_noise)
        self.g += drift - self._applied
        torch.clamp(self.g, self.g_min, self.g_max, out=self.g)
        self._applied.copy_(drift)
        self._unrealized = False

    # --- observation ------------------------------------------------------------------------------

    def sample(self, idx: torch.Tensor | None = None, reads: int | None = None) -> torch.Tensor:
        """Conductances as one measurement sees them: true values with fresh read noise.
        `idx`: flat device indices (default: every device, returned as rows x cols).
        `reads`: that many successive reads of each (stacked first), nothing changing between."""
        if idx is None:
            self._realize_all()
            g = self.g + self._volatile()
        else:
            self._realize(idx)
            g = _at(self.g, idx) + self._volatile(idx)
        r = self.preset.read
        shape = g.shape if reads is None else (reads, *g.shape)
        if not (r.noise_relative or r.noise_absolute):   # a noiseless read (fault-pruning preset)
            return g.expand(shape).clone()
        sd = (r.noise_relative * g).square_().add_(r.noise_absolute ** 2).sqrt_()   # read_noise_sd
        return torch.randn(shape, generator=self._gen, dtype=self.dtype).mul_(sd).add_(g)

    def program(self, requested: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """In-the-loop programming, abstracted from pulses: every device is asked to change by
        `requested` (S) and changes by its fault factor times that, plus programming noise
        (sd = program_noise * G / 3, clipped at +/- program_noise * G), within its bounds.
        Returns the read-back conductances (one read of every device).

        With `idx` (flat device indices), only those devices are programmed and read back:
        `requested` and the result are vectors aligned with `idx`; the others are untouched."""
        d = self.preset.program_noise
        if idx is not None:
            g = self.g.view(-1)
            now, q = _at(g, idx), self._static.index_select(1, idx)
            eps = torch.randn(now.shape, generator=self._gen, dtype=self.dtype).mul_(d / 3).clamp_(-d, d)
            new = now + requested.to(self.dtype) * q[_P.FAULT] + eps.mul_(now).mul_(q[_P.RESP])
            g.index_copy_(0, idx, torch.minimum(torch.maximum(new, q[_P.G_MIN]), q[_P.G_MAX]))
            return self.sample(idx)
        g = self.g
        eps = torch.randn(g.shape, generator=self._gen, dtype=self.dtype).mul_(d / 3).clamp_(-d, d).mul_(g)
        g.addcmul_(requested.to(self.dtype), self.fault_factor).add_(eps.mul_(self._responsive))
        torch.clamp(g, self.g_min, self.g_max, out=g)
        return self.sample()

    def read_noise_sd(self, g: float) -> float:
        """Standard deviation of one conductance reading of a device at conductance g."""
        r = self.preset.read
        return math.hypot(r.noise_relative * g, r.noise_absolute)

    def device_currents(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Current through each device (row to column) under device voltages v."""
        return self.preset.read_current(g, v.to(g.dtype))

    def flat_index(self, row: int, col: int) -> torch.Tensor:
        return torch.tensor([row * self.cols + col])

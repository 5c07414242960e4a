"""Write-verify tuning of one device, after Alibart et al. (Nanotechnology 23, 075201, 2012).

Read; if outside target +/- tolerance, pulse in the needed polarity, read again, and step
that polarity's amplitude up for the next pulse; on overshoot switch polarity and restart
the new polarity's amplitude from its start value; stop when `reads_to_accept` successive
reads are in tolerance, or give up when a voltage or pulse cap is hit (the device is then
reported as failed, with the reason). A pulse whose outcome is unknown is never repeated
blindly: the device is read again and the decision made afresh.

Where the crossbar runs pulse-and-read sequences (`Crossbar.max_batch` > 1) many pulses go
out per round trip:

- a sequence that can end at the first read reaching the band (`Crossbar.stops_early`, e.g.
  memlab's KULT module on a 4200A) carries the ramp up to the pulse cap, and the reads that
  accept a device go out together: the decisions are exactly those of one pulse per round
  trip;
- a sequence planned whole (a WGFMU, a PMU segment ARB) cannot stop, so it is sized from
  what the device did, and ends with the reads that would accept it: while a polarity has
  not yet moved the device measurably, the ramp from its start amplitude, as many pulses as
  should not carry it past `aim` of the distance to the target if the first moved it
  `min_step` of the target and each next one `rate_slope` x `step` more; after that,
  pulses of one amplitude (up to `max_batch`, never below the start amplitude: a pulse too
  weak to switch a device drifts it instead) chosen from the change per pulse last
  measured, to cover `aim` of the distance. A polarity keeps what it learned across
  overshoots; a change within the noise of the accepting reads' means only bounds the
  rate, and repeated sequences at one amplitude pool their evidence.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import DriverError, LimitError
from .interfaces import Crossbar, Scheme


class TuneParams(BaseModel):
    """The defaults suit 1 ms SMU pulses on TiO2 (switching near 0.85 V / -0.97 V): ramps
    from +/-0.7 V, capped well before the half-select stress of a stuck device's ramp would
    start to move its neighbours. For microsecond pulses start higher (the measured TiO2
    campaign: 1.1 V to 2.1 V and -1.1 V to -2.4 V, see memlab.calibrate.MEASURED_TUNING)."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.01, gt=0, lt=1, description="relative half-width of the target band")
    reads_to_accept: int = Field(10, ge=1, description="successive in-tolerance reads that end tuning")
    width: float = Field(1e-3, gt=0, description="pulse width (s)")
    set_start: float = Field(0.7, gt=0, description="first SET amplitude (V)")
    set_stop: float = Field(1.5, gt=0, description="largest SET amplitude (V)")
    reset_start: float = Field(-0.7, lt=0, description="first RESET amplitude (V)")
    reset_stop: float = Field(-1.8, lt=0, description="largest RESET amplitude (V), negative")
    step: float = Field(0.02, gt=0, description="amplitude increment per pulse (V)")
    max_pulses: int = Field(400, ge=1)
    scheme: Scheme = Scheme.V3
    max_failures: int = Field(3, ge=1, description="consecutive instrument failures before aborting")
    stuck_span: float = Field(0.03, gt=0, description="a failed device whose reads never spread more "
                                                     "than this fraction of the target is called stuck")
    max_batch: int = Field(32, ge=1, description="pulses in one sequence at most, where the crossbar "
                                                 "runs sequences (1: one per round trip)")
    aim: float = Field(0.9, gt=0, le=1, description="fraction of the distance to the target a planned "
                                                    "sequence is sized to cover")
    min_step: float = Field(0.001, gt=0, lt=1, description="smallest change per pulse a planned sequence "
                                                          "is sized for, as a fraction of the target: less "
                                                          "is done with fewer pulses (a pulse too weak to "
                                                          "switch a device drifts it instead)")
    rate_slope: float = Field(16.0, gt=0, description="growth of a pulse's effect with its amplitude, "
                                                      "d ln(dG) / d|V| (1/V), for sizing planned sequences")

    @model_validator(mode="after")
    def _ranges(self) -> "TuneParams":
        if self.set_start > self.set_stop:
            raise ValueError("set_start must not exceed set_stop")
        if self.reset_start < self.reset_stop:
            raise ValueError("reset_start must not be below reset_stop (both negative)")
        return self


@dataclass
class TuneResult:
    row: int
    col: int
    target: float
    tuned: bool
    conductance: float          # mean of the accepting reads, or the last read if failed
    pulses: int = 0
    reads: int = 0
    reason: str = ""
    stuck: bool = False
    g_initial: float = float("nan")
    g_low: float = float("inf")
    g_high: float = float("-inf")
    failures: list[str] = field(default_factory=list)

    @property
    def error(self) -> float:
        return self.conductance / self.target - 1

    def seen(self, g: float) -> None:
        self.reads += 1
        self.conductance = g
        if self.reads == 1:
            self.g_initial = g
        self.g_low, self.g_high = min(self.g_low, g), max(self.g_high, g)

    def accept(self, reads: list[float]) -> "TuneResult":
        self.tuned = True
        self.conductance = sum(reads) / len(reads)
        return self


def tune(xbar: Crossbar, row: int, col: int, target: float, p: TuneParams) -> TuneResult:
    if target <= 0:
        raise ValueError(f"target conductance must be positive, got {target}")
    res = TuneResult(row, col, target, tuned=False, conductance=float("nan"))
    batch = max(1, min(p.max_batch, xbar.max_batch))
    if batch > 1 and not xbar.stops_early:
        return _tune_planned(xbar, res, p, batch)
    band = p.tolerance * target
    amplitude = {+1: p.set_start, -1: p.reset_start}
    last_polarity = 0
    accepted: list[float] = []
    failures = 0

    g = None
    while True:
        if g is None:   # the device's state is not known: read it
            g, failures = _read(xbar, res, p, failures)
            if g is None:
                continue

        if abs(g - target) <= band:
            accepted.append(g)
            if batch > 1 and len(accepted) < p.reads_to_accept:
                # the remaining accepting reads in one sequence
                groups, failures = _run(xbar, res, p, failures, [], reads=p.reads_to_accept - len(accepted))
                if groups is None:
                    g = None
                    continue
                for g in groups[0]:
                    res.seen(g)
                    if abs(g - target) > band:
                        break
                    accepted.append(g)
            if len(accepted) >= p.reads_to_accept:
                return res.accept(accepted)
            if abs(g - target) <= band:
                g = None
                continue
        accepted.clear()

        polarity = +1 if g < target else -1
        if last_polarity and polarity != last_polarity:  # overshoot
            amplitude[polarity] = p.set_start if polarity > 0 else p.reset_start
        stop = p.set_stop if polarity > 0 else p.reset_stop
        v = amplitude[polarity]
        if abs(v) > abs(stop) + 1e-12:
            return _give_up(res, p, f"{'SET' if polarity > 0 else 'RESET'} amplitude would exceed "
                                    f"{stop:+.2f} V at G = {g * 1e6:.1f} uS")
        if res.pulses >= p.max_pulses:
            return _give_up(res, p, f"pulse cap {p.max_pulses} reached at G = {g * 1e6:.1f} uS")
        voltages = _ramp(v, polarity, stop, p, min(batch, p.max_pulses - res.pulses))
        res.pulses += len(voltages)  # counted before sending: a pulse with an unknown outcome may have happened
        last_polarity = polarity
        try:
            if batch == 1:
                xbar.pulse(row, col, voltages[0], p.width, p.scheme)
                sent, g = 1, None
            else:
                until = {"stop_above": target - band} if polarity > 0 else {"stop_below": target + band}
                reads = [r[0] for r in xbar.pulse_and_read(row, col, voltages, p.width, p.scheme, **until)]
                sent = len(reads)
                res.pulses -= len(voltages) - sent
                for g in reads:
                    res.seen(g)
            failures = 0
            # no creeping past a cap by rounding
            amplitude[polarity] = round(voltages[sent - 1] + polarity * p.step, 9)
        except LimitError:
            raise
        except DriverError as exc:
            failures = _failed(res, failures, p, f"pulse {v:+.2f} V: {exc}")
            amplitude[polarity] = round(voltages[-1] + polarity * p.step, 9)
            g = None


@dataclass
class _Rate:
    """What the latest planned sequences of one polarity measured: a pulse of amplitude `v`
    moved the device `r` (S) towards the target, or at most `r` when the change was within
    its noise (`bound`; the evidence of sequences at that one amplitude is pooled:
    `moved` over `pulses`, with `variance`). `ramping` until a sequence of the polarity
    has moved the device measurably."""

    v: float
    r: float
    bound: bool
    ramping: bool
    moved: float = 0.0
    pulses: int = 0
    variance: float = 0.0


def _tune_planned(xbar: Crossbar, res: TuneResult, p: TuneParams, batch: int) -> TuneResult:
    """Sequences that cannot end early (see the module's docstring); the device's state
    between them is the mean of the accepting reads each one ends with."""
    target = res.target
    band = p.tolerance * target
    tail = p.reads_to_accept
    batch = max(1, min(batch, xbar.max_batch - (tail + 1) // 2))
    rates: dict[int, _Rate] = {}
    failures = 0
    g = None
    while True:
        voltages = None
        if g is None:
            g, failures = _read(xbar, res, p, failures)
            if g is None:
                continue
            known = 1   # reads averaged in g
            if abs(g - target) <= band:
                voltages = []   # perhaps already tuned: the accepting reads alone
        if voltages is None:
            polarity = +1 if g < target else -1
            stop = p.set_stop if polarity > 0 else p.reset_stop
            start = p.set_start if polarity > 0 else p.reset_start
            left = p.max_pulses - res.pulses
            if left <= 0:
                return _give_up(res, p, f"pulse cap {p.max_pulses} reached at G = {g * 1e6:.1f} uS")
            rate = rates.get(polarity)
            if rate is None or rate.ramping:
                first = start if rate is None else round(rate.v + polarity * p.step, 9)
                n = _ramp_length(rate, first, p.aim * abs(target - g), p.min_step * target, min(batch, left), p)
                voltages = _ramp(first, polarity, stop, p, n)
            else:
                v, n = _planned(rate, p.aim * abs(target - g), target, start, stop, min(batch, left), p)
                voltages = [v] * n
            if not voltages or rate is not None and rate.bound and abs(rate.v) >= abs(stop) - 1e-12:
                return _give_up(res, p, f"{'SET' if polarity > 0 else 'RESET'} amplitude would exceed "
                                        f"{stop:+.2f} V at G = {g * 1e6:.1f} uS")
            res.pulses += len(voltages)  # counted before sending: a pulse with an unknown outcome may have happened
        before, before_reads = g, known
        groups, failures = _run(xbar, res, p, failures, voltages,
                                **({"then_reads": tail} if voltages else {"reads": tail}))
        if groups is None:
            g = None
            continue
        for group in groups:
            for r in group:
                res.seen(r)
        reads = groups[-1]
        if all(abs(r - target) <= band for r in reads):
            return res.accept(reads)
        g, known = sum(reads) / len(reads), len(reads)
        if voltages:
            noise = statistics.stdev(reads) * math.sqrt(1 / before_reads + 1 / known) if known > 1 else 0.0
            rates[polarity] = _measured(rate, voltages, polarity * (g - before), noise, p.rate_slope)


def _ramp_length(rate: _Rate | None, first: float, wanted: float, assumed: float, most: int,
                 p: TuneParams) -> int:
    """Pulses of the ramp from `first` that should together move the device no more than
    `wanted`, if its first pulse moved it `assumed` (or what the latest bound on the change
    allows, carried to `first`, if less) and each next pulse `rate_slope` x `step` more."""
    if rate is not None:
        assumed = min(assumed, rate.r * math.exp(p.rate_slope * (abs(first) - abs(rate.v))))
    growth, total, n = math.exp(p.rate_slope * p.step), 0.0, 0
    while n < most:
        total += assumed * growth ** n
        if total > wanted:
            break
        n += 1
    return max(1, n)


def _planned(rate: _Rate, wanted: float, target: float, start: float, stop: float, most: int,
             p: TuneParams) -> tuple[float, int]:
    """Amplitude and number of pulses that should move the device `wanted` in all, from the
    latest measurement: `most` pulses, or fewer where each would move it less than
    `min_step` of the target (or less than at the start amplitude); an amplitude at most
    one that moves the device four times as far per pulse, on the grid of `step`, within
    [start, stop]."""
    per_pulse = max(wanted / most, p.min_step * target)
    dv = min(math.log(4), math.log(per_pulse / rate.r)) / p.rate_slope if rate.r > 0 else math.log(4) / p.rate_slope
    magnitude = min(abs(stop), max(abs(start), round((abs(rate.v) + dv) / p.step) * p.step))
    change = rate.r * math.exp(p.rate_slope * (magnitude - abs(rate.v)))   # per pulse, at this amplitude
    n = max(1, min(most, round(wanted / change))) if change > 0 else most
    return math.copysign(round(magnitude, 9), stop), n


def _measured(previous: _Rate | None, voltages: list[float], moved: float, noise: float,
              slope: float) -> _Rate:
    """The change per pulse at the last amplitude of `voltages`, which together moved the
    device `moved` towards the target, measured with standard deviation `noise` (pulses
    of other amplitudes weighted by `slope`). A change within twice its noise only bounds
    it; then the next sequence at the same amplitude adds its evidence to this one's."""
    v, n = voltages[-1], len(voltages)
    constant = all(u == v for u in voltages)
    pooled = constant and previous is not None and previous.bound and previous.pulses and previous.v == v
    variance = noise ** 2
    if pooled:
        moved, n, variance = moved + previous.moved, n + previous.pulses, variance + previous.variance
        weight = float(n)
    else:
        weight = sum(math.exp(slope * (abs(u) - abs(v))) for u in voltages)
    spread = 2 * math.sqrt(variance)
    if moved > spread:
        return _Rate(v, moved / weight, bound=False, ramping=False)
    bound = (max(moved, 0.0) + spread) / weight
    if previous is not None:   # the earlier measurement, carried to this amplitude, may bound it lower
        bound = min(bound, previous.r * math.exp(slope * (abs(v) - abs(previous.v))))
    return _Rate(v, bound, bound=True, ramping=previous is None or previous.ramping,
                 moved=moved, pulses=n if constant else 0, variance=variance)


def _run(xbar: Crossbar, res: TuneResult, p: TuneParams, failures: int, voltages: list[float],
         **reads) -> tuple[list[list[float]] | None, int]:
    """One pulse-and-read sequence: (its groups of reads, 0), or (None, failures so far) after
    an instrument failure."""
    try:
        return xbar.pulse_and_read(res.row, res.col, voltages, p.width, p.scheme, **reads), 0
    except LimitError:
        raise
    except DriverError as exc:
        what = f"pulses at {voltages[-1]:+.2f} V" if voltages else "reads"
        return None, _failed(res, failures, p, f"{what}: {exc}")


def _read(xbar: Crossbar, res: TuneResult, p: TuneParams, failures: int) -> tuple[float | None, int]:
    """One read of the device: (its conductance, 0), or (None, failures so far) after a failure."""
    try:
        g = xbar.read(res.row, res.col).conductance
    except LimitError:
        raise
    except DriverError as exc:
        return None, _failed(res, failures, p, f"read: {exc}")
    res.seen(g)
    return g, 0


def _ramp(v: float, polarity: int, stop: float, p: TuneParams, n: int) -> list[float]:
    """Up to n amplitudes of the ramp from v, none past the cap."""
    out = []
    while len(out) < max(1, n) and abs(v) <= abs(stop) + 1e-12:
        out.append(v)
        v = round(v + polarity * p.step, 9)
    return out


def _failed(res: TuneResult, failures: int, p: TuneParams, text: str) -> int:
    res.failures.append(text)
    if failures + 1 >= p.max_failures:
        raise DriverError(f"device ({res.row}, {res.col}): {failures + 1} instrument failures in a row; "
                          f"last: {text}")
    return failures + 1


def _give_up(res: TuneResult, p: TuneParams, reason: str) -> TuneResult:
    res.reason = reason
    res.stuck = res.reads > 1 and (res.g_high - res.g_low) <= p.stuck_span * res.target
    if res.stuck:
        res.reason += " (no response: stuck?)"
    return res

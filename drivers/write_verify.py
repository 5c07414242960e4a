"""Write-verify tuning of one device, after Alibart et al. (Nanotechnology 23, 075201, 2012).

Read; if outside target +/- tolerance, pulse in the needed polarity, read again, and step
that polarity's amplitude up for the next pulse; on overshoot switch polarity and restart
the new polarity's amplitude from its start value; stop when `reads_to_accept` successive
reads are in tolerance, or give up when a voltage or pulse cap is hit (the device is then
reported as failed, with the reason). A pulse whose outcome is unknown is never repeated
blindly: the device is read again and the decision made afresh.

Where the crossbar runs pulse-and-read sequences (`Crossbar.max_batch` > 1) the same ramp
goes out many pulses per round trip, and the reads that accept a device go out together:

- a sequence that can end at the first read reaching the band (`Crossbar.stops_early`, e.g.
  memlab's KULT module on a 4200A) carries the ramp up to the pulse cap: the decisions are
  exactly those of one pulse per round trip;
- a sequence planned whole (a WGFMU, a PMU segment ARB) cannot stop: it carries as many
  pulses as the latest pulses' effect says cannot carry the device past half the way to
  its target (doubling while it does not move yet).
"""

from __future__ import annotations

import math
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
    max_batch: int = Field(32, ge=1, description="pulses sent in one sequence at most, where the "
                                                 "crossbar runs sequences (1: one per round trip)")
    ramp_speedup: float = Field(1.3, ge=1, description="how much more each pulse of a ramp is assumed to "
                                                       "move a device than the one before (batch sizing)")

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


def tune(xbar: Crossbar, row: int, col: int, target: float, p: TuneParams) -> TuneResult:
    if target <= 0:
        raise ValueError(f"target conductance must be positive, got {target}")
    res = TuneResult(row, col, target, tuned=False, conductance=float("nan"))
    band = p.tolerance * target
    amplitude = {+1: p.set_start, -1: p.reset_start}
    batch = max(1, min(p.max_batch, xbar.max_batch))
    planned = batch > 1 and not xbar.stops_early   # sequences that cannot end early: sized to fall short
    last_polarity = 0
    accepted: list[float] = []
    failures = 0
    moved = None   # |change| per pulse at the end of the last sequence (None: not measured at this polarity)
    size = 1       # pulses in the last sequence

    def seen(g: float) -> None:
        res.reads += 1
        res.conductance = g
        if res.reads == 1:
            res.g_initial = g
        res.g_low, res.g_high = min(res.g_low, g), max(res.g_high, g)

    g = None
    while True:
        if g is None:   # the device's state is not known: read it
            try:
                g = xbar.read(row, col).conductance
            except LimitError:
                raise
            except DriverError as exc:
                failures = _failed(res, failures, p, f"read: {exc}")
                continue
            failures = 0
            seen(g)

        if abs(g - target) <= band:
            accepted.append(g)
            if batch > 1 and len(accepted) < p.reads_to_accept:
                try:   # the remaining accepting reads in one sequence
                    reads = xbar.pulse_and_read(row, col, [], p.width, p.scheme,
                                                reads=p.reads_to_accept - len(accepted))[0]
                except LimitError:
                    raise
                except DriverError as exc:
                    failures, g = _failed(res, failures, p, f"reads: {exc}"), None
                    continue
                failures = 0
                for g in reads:
                    seen(g)
                    if abs(g - target) > band:
                        break
                    accepted.append(g)
            if len(accepted) >= p.reads_to_accept:
                res.tuned = True
                res.conductance = sum(accepted) / len(accepted)
                return res
            if abs(g - target) <= band:
                g = None
                continue
        accepted.clear()

        polarity = +1 if g < target else -1
        if last_polarity and polarity != last_polarity:  # overshoot
            amplitude[polarity] = p.set_start if polarity > 0 else p.reset_start
            moved = None
        stop = p.set_stop if polarity > 0 else p.reset_stop
        v = amplitude[polarity]
        if abs(v) > abs(stop) + 1e-12:
            return _give_up(res, p, f"{'SET' if polarity > 0 else 'RESET'} amplitude would exceed "
                                    f"{stop:+.2f} V at G = {g * 1e6:.1f} uS")
        if res.pulses >= p.max_pulses:
            return _give_up(res, p, f"pulse cap {p.max_pulses} reached at G = {g * 1e6:.1f} uS")
        if planned:
            size = _batch_size(batch, moved, abs(target - g), size, p.ramp_speedup)
        voltages = _ramp(v, polarity, stop, p, min(size if planned else batch, p.max_pulses - res.pulses))
        res.pulses += len(voltages)  # counted before sending: a pulse with an unknown outcome may have happened
        last_polarity = polarity
        before = g
        try:
            if batch == 1:
                xbar.pulse(row, col, voltages[0], p.width, p.scheme)
                sent, g = 1, None
            else:
                until = {} if planned else \
                    {"stop_above": target - band} if polarity > 0 else {"stop_below": target + band}
                reads = [r[0] for r in xbar.pulse_and_read(row, col, voltages, p.width, p.scheme, **until)]
                sent = len(reads)
                res.pulses -= len(voltages) - sent
                for g in reads:
                    seen(g)
                last = [before, *reads][-min(4, len(reads)) - 1:]   # the most recent pulses: the largest
                moved = abs(last[-1] - last[0]) / (len(last) - 1)
            failures = 0
            # no creeping past a cap by rounding
            amplitude[polarity] = round(voltages[sent - 1] + polarity * p.step, 9)
        except LimitError:
            raise
        except DriverError as exc:
            failures = _failed(res, failures, p, f"pulse {v:+.2f} V: {exc}")
            amplitude[polarity] = round(voltages[-1] + polarity * p.step, 9)
            g = None


def _ramp(v: float, polarity: int, stop: float, p: TuneParams, n: int) -> list[float]:
    """Up to n amplitudes of the ramp from v, none past the cap."""
    out = []
    while len(out) < max(1, n) and abs(v) <= abs(stop) + 1e-12:
        out.append(v)
        v = round(v + polarity * p.step, 9)
    return out


def _batch_size(batch: int, moved: float | None, distance: float, previous: int, speedup: float) -> int:
    """Pulses that should not carry the device past its target: a few to start a ramp,
    twice as many each time while the device does not move, and no more than would cover
    half the distance left if each pulse moved it `speedup` times as far as the one before,
    starting from the latest pulses' rate."""
    if batch == 1:
        return 1
    if moved is None:
        return min(batch, 4)
    grown = min(batch, 2 * previous)
    if moved <= 0:
        return grown
    budget = 0.5 * distance / moved   # in units of the latest per-pulse change
    if speedup == 1:
        k = budget
    else:   # sum of speedup**i for i = 1..k <= budget
        k = math.log(1 + budget * (speedup - 1) / speedup, speedup)
    return max(1, min(grown, int(k)))


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

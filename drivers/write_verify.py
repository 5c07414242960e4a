"""Write-verify tuning of one device, after Alibart et al. (Nanotechnology 23, 075201, 2012).

Read; if outside target +/- tolerance, pulse in the needed polarity, read again, and step
that polarity's amplitude up for the next pulse; on overshoot switch polarity and restart
the new polarity's amplitude from its start value; stop when `reads_to_accept` successive
reads are in tolerance, or give up when a voltage or pulse cap is hit (the device is then
reported as failed, with the reason). A pulse whose outcome is unknown is never repeated
blindly: the device is read again and the decision made afresh.
"""

from __future__ import annotations

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
    last_polarity = 0
    accepted: list[float] = []
    failures = 0

    while True:
        try:
            g = xbar.read(row, col).conductance
        except LimitError:
            raise
        except DriverError as exc:
            failures = _failed(res, failures, p, f"read: {exc}")
            continue
        failures = 0
        res.reads += 1
        res.conductance = g
        if res.reads == 1:
            res.g_initial = g
        res.g_low, res.g_high = min(res.g_low, g), max(res.g_high, g)

        if abs(g - target) <= band:
            accepted.append(g)
            if len(accepted) >= p.reads_to_accept:
                res.tuned = True
                res.conductance = sum(accepted) / len(accepted)
                return res
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
        res.pulses += 1  # counted before sending: a pulse with an unknown outcome may have happened
        try:
            xbar.pulse(row, col, v, p.width, p.scheme)
            failures = 0
        except LimitError:
            raise
        except DriverError as exc:
            failures = _failed(res, failures, p, f"pulse {v:+.2f} V: {exc}")
        amplitude[polarity] = round(v + polarity * p.step, 9)  # no creeping past a cap by rounding
        last_polarity = polarity


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

"""Check a job's whole plan against the bench before anything is connected: every pulse a
tuning ramp can reach against every limit (through the source driver's own guard), target
conductances against the devices' window, the map against the crossbar. A bad plan gets one
line naming the field, file or cell; nothing is connected, pulsed or recorded for it."""

from __future__ import annotations

import numpy as np

from drivers.errors import LimitError
from drivers.crossbar import fast_levels
from drivers.interfaces import PulseStep, Scheme
from drivers.write_verify import TuneParams
from protocols.base import PlanError  # noqa: F401  (the preflight's refusal)

from .config import BenchConfig, driver_class




def check_protocol(config: BenchConfig, protocol) -> None:
    """The protocol's own checks, then every pulse its tuning can reach."""
    protocol.check(config)
    plan = protocol.tuning_plan(config)
    if plan is not None:
        targets, params, source, unit = plan
        check_tuning(config, targets, params, source=source, unit=unit)


def check_tuning(config: BenchConfig, targets: np.ndarray, params: TuneParams, *,
                 source: str = "targets", unit: str = "S", field: str = "tune") -> None:
    check_targets(config, targets, source=source, unit=unit)
    check_ramps(config, params, field=field)


def check_ramps(config: BenchConfig, p: TuneParams, *, field: str = "tune") -> None:
    """Every amplitude of both ramps is a pulse the bench may send: checked at the extremes
    (the checks are monotonic in |V|), under the bias scheme, through the guard of the
    instrument that will send it (the fast pulse source where it can, else the SMUs)."""
    limits = config.limits
    for name, peak in (("set_start", p.set_start), ("set_stop", p.set_stop),
                       ("reset_start", p.reset_start), ("reset_stop", p.reset_stop)):
        where = f"{field}.{name}: {peak:+.4g} V pulse of {p.width:.4g} s: "
        try:
            limits.check_device_voltage(peak)
        except LimitError as exc:
            raise PlanError(f"{where}refused: {exc}") from None
        reasons = []
        if config.crossbar.pulser is not None:
            try:
                return_ok = _check_fast(config, peak, p)
            except (LimitError, ValueError) as exc:
                return_ok, _ = False, reasons.append(f"{config.crossbar.pulser}: {exc}")
            if return_ok:
                continue
        driver = driver_class(config.instruments[config.crossbar.source].type)
        base = peak / 3 if p.scheme is Scheme.V3 else peak / 2   # the drive line waits at its bias
        try:
            driver.check_pulse_plan(limits, base, peak, p.width)
        except (LimitError, ValueError) as exc:
            reasons.append(str(exc))
            raise PlanError(f"{where}refused: {'; '.join(reasons)}") from None


def _check_fast(config: BenchConfig, peak: float, p: TuneParams) -> bool:
    """A pulse and its read as the crossbar's fast path would send them, through the pulse
    source's guard; False if the fast path cannot make the scheme."""
    wiring, c = config.wiring.pulse, config.crossbar
    levels = fast_levels(wiring, peak, p.scheme)
    if levels is None:
        return False
    steps = [PulseStep(*levels, p.width), PulseStep(*fast_levels(wiring, c.read_voltage, None), c.read_width, True)]
    pulser = config.instruments[c.pulser]
    driver_class(pulser.type).check_sequence_plan(config.limits, wiring.drive.channel, wiring.sense.channel,
                                                  steps, line_ratios=config.pulse_line_ratios(), **pulser.options)
    return True


def check_targets(config: BenchConfig, targets: np.ndarray, *, source: str = "targets",
                  unit: str = "S") -> None:
    """A map of the crossbar's shape; every cell NaN (left alone) or a conductance (S)
    within the bench's conductance window. `unit`: the unit the user wrote the map in,
    for the messages (values are always siemens here)."""
    shape = (config.rows, config.cols)
    if targets.shape != shape:
        raise PlanError(f"{source}: the target map is {_shape(targets.shape)}, the crossbar is {_shape(shape)}")
    lo, hi = config.crossbar.conductance_window
    scale = 1e6 if unit == "uS" else 1.0
    for (r, c), g in np.ndenumerate(targets):
        if np.isnan(g):
            continue
        written = f"{source}: cell ({r}, {c}) = {g * scale:.6g} {unit}"
        if not np.isfinite(g) or g <= 0:
            raise PlanError(f"{written}: a target conductance is a positive number (empty or NaN "
                            f"leaves a device alone)")
        if not lo <= g <= hi:
            raise PlanError(f"{written} is outside the conductance window {lo * 1e6:g}-{hi * 1e6:g} uS "
                            f"(crossbar.conductance_window of bench {config.name}){_unit_hint(g, lo, hi, unit)}")


def _unit_hint(g: float, lo: float, hi: float, unit: str) -> str:
    if unit == "S" and lo <= g * 1e-6 <= hi:
        return f"; .npy maps are in siemens: did you mean {g:g} uS = {g * 1e-6:g} S?"
    if unit == "uS" and lo <= g * 1e6 <= hi:
        return f"; .csv maps and the command line are in microsiemens: did you mean {g * 1e12:g} uS?"
    return ""


def _shape(shape) -> str:
    return "x".join(str(n) for n in shape)

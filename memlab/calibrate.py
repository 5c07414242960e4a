"""`memlab sim calibrate`: run the project's own disturbance and tuning-imprecision surveys
on simulated crossbars and compare them with the measured TiO2 database and the published
fits (Drolet et al. 2023)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats

from drivers.write_verify import TuneParams
from protocols.surveys import disturbance_survey, imprecision_survey
from simulator.device import DevicePreset, load_preset

from .devicedb import DATA, DeviceDatabase, StuckModel
from .simbackend import SimulatedCrossbar, Waveform

KEYS = (1, 5, 10, 20, 40)
LEVELS_US = (100, 200, 300, 400, 500)
# The measured campaign's tuning settings (second line of the dead_xbar_*.csv files):
# 1 % tolerance, 10 reads to accept, 1.04 us pulses, SET from 1.1 V up to 2.1 V, RESET from
# -1.1 V down to -2.4 V, 0.02 V steps, reads at 0.2 V.
MEASURED_TUNING = TuneParams(tolerance=0.01, reads_to_accept=10, width=1.04e-6, set_start=1.1, set_stop=2.1,
                             reset_start=-1.1, reset_stop=-2.4, step=0.02, max_pulses=500)
# A Keithley 4200A with a 4225-PMU and a V/3 divider: all lines pulsed at once.
MEASURED_BENCH = Waveform(read_time=10e-6, bias_dwell=0.0, overhead=2e-3)
CAP = 60e-6  # the measured changes were capped at +/-60 uS


def measured_disturbance() -> dict[int, np.ndarray]:
    return {k: np.array(v) for k, v in DeviceDatabase.tio2_measured().disturbance.items()}


def fit_stuck() -> dict:
    """Stuck-device conductance distributions fitted to the measured dead crossbars: below
    2 kOhm stuck at LRS (log-normal), above 10 kOhm stuck at HRS (log-uniform over the
    observed range)."""
    resistances = np.concatenate([
        np.array([float(x) for x in f.read_text().splitlines()[2].split(";") if x.strip()])
        for f in sorted(DATA.glob("dead_xbar_*.csv"))])
    lrs = np.log(1 / resistances[resistances < 2e3])
    hrs = 1 / resistances[resistances > 1e4]
    published = DeviceDatabase.tio2_measured().stuck
    return {"lrs": {"median": float(np.exp(lrs.mean())), "sigma": float(lrs.std(ddof=1)), "n": int(lrs.size)},
            "hrs": {"low": float(hrs.min()), "high": float(hrs.max()), "n": int(hrs.size)},
            "published": {"lrs_mean": published.lrs.mean, "lrs_sd": published.lrs.sd,
                          "hrs_low": published.hrs.low, "hrs_high": published.hrs.high}}


def _progress(label: str, n: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{label}: {n}/{total} arrays", end="" if n < total else "\n", file=sys.stderr, flush=True)


def simulate_disturbance(preset: DevicePreset, arrays: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    samples: dict[int, list[float]] = {}
    for n in range(arrays):
        _progress("disturbance survey", n + 1, arrays)
        xbar = SimulatedCrossbar.from_preset(preset, 8, 8, seed=seed * 1000 + n, waveform=MEASURED_BENCH)
        targets = rng.uniform(100e-6, 500e-6, size=(8, 8))
        for key, values in disturbance_survey(xbar, targets, MEASURED_TUNING).items():
            samples.setdefault(key, []).extend(values)
    return {k: np.clip(np.array(v), -CAP, CAP) for k, v in samples.items()}


def simulate_imprecision(preset: DevicePreset, arrays: int, seed: int = 0) -> dict[int, np.ndarray]:
    errors: dict[int, list[float]] = {}
    levels = np.array(LEVELS_US, dtype=float) * 1e-6
    for n in range(arrays):
        _progress("imprecision survey", n + 1, arrays)
        xbar = SimulatedCrossbar.from_preset(preset, 8, 8, seed=seed * 1000 + 500 + n, waveform=MEASURED_BENCH)
        targets = levels[(np.arange(64) + n) % len(levels)].reshape(8, 8)
        for target, values in imprecision_survey(xbar, targets, MEASURED_TUNING).items():
            errors.setdefault(round(target * 1e6), []).extend(values)
    return {k: np.array(v) for k, v in errors.items()}


def skew(x: np.ndarray) -> float:
    return float(stats.skew(x)) if len(x) > 2 else float("nan")


def calibrate(preset: DevicePreset | str = "tio2-passive", arrays: int = 20, seed: int = 0,
              database_out: Path | None = None) -> dict:
    """The comparison; with `database_out`, the simulated surveys also become a device
    database file that hardware-aware training can use (`database:` in a train job)."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    measured = measured_disturbance()
    simulated = simulate_disturbance(preset, arrays, seed)
    out: dict = {"preset": preset.name, "arrays": arrays, "disturbance": {}, "tuning_sigma_pct": {}}
    for key in KEYS:
        sim, meas = simulated.get(key, np.array([])), measured[key]
        out["disturbance"][str(key)] = {
            "sim_mean": float(sim.mean()) if len(sim) else float("nan"), "meas_mean": float(meas.mean()),
            "sim_std": float(sim.std()) if len(sim) else float("nan"), "meas_std": float(meas.std()),
            "sim_skew": skew(sim), "meas_skew": skew(meas),
            "meas_sem": float(meas.std(ddof=1) / np.sqrt(len(meas))),
            "ks": float(stats.ks_2samp(sim, meas).statistic) if len(sim) else 1.0,
            "sim_n": len(sim), "meas_n": len(meas),
        }
    errors = simulate_imprecision(preset, arrays, seed)
    for level in LEVELS_US:
        e = errors.get(level, np.array([]))
        out["tuning_sigma_pct"][str(level)] = {
            "sim": float(e.std() * 100) if len(e) else float("nan"),
            "published": DeviceDatabase.tio2_measured().imprecision.sigma_pct(level),
            "sim_offset": float(e.mean() * 100) if len(e) else float("nan"),
            "n": len(e),
        }
    if database_out is not None:
        f = preset.faults
        DeviceDatabase.from_surveys(
            name=f"{preset.name} simulated", provenance=f"memlab sim calibrate: {arrays} simulated 8x8 arrays per "
            f"survey, seed {seed}, the measured campaign's tuning settings", disturbance=simulated,
            errors_by_level={level / 1e6: e for level, e in errors.items()},
            stuck=StuckModel(lrs_fraction=f.stuck_lrs, hrs_fraction=f.stuck_hrs, lrs=f.lrs_conductance,
                             hrs=f.hrs_conductance),
            g_range=(min(LEVELS_US) / 1e6, max(LEVELS_US) / 1e6),
            read_noise=(preset.read.noise_relative, preset.read.noise_absolute)).save(database_out)
        out["database"] = str(database_out)
    fit = fit_stuck()
    f = preset.faults
    out["stuck"] = {"fit": fit, "preset": {"lrs": f.lrs_conductance.model_dump(exclude_none=True),
                                         "hrs": f.hrs_conductance.model_dump(exclude_none=True)}}
    out["checks"] = checks(out)
    return out


def checks(result: dict) -> dict[str, bool]:
    """The acceptance criteria of the calibration, one flag per figure."""
    ok = {}
    for key, d in result["disturbance"].items():
        allowed = max(0.3 * abs(d["meas_mean"]), 0.5e-6, 2.5 * d["meas_sem"])
        ok[f"disturbance {key} mean"] = abs(d["sim_mean"] - d["meas_mean"]) <= allowed
        if int(key) in (1, 5, 10):
            ok[f"disturbance {key} skew<0"] = d["sim_skew"] < 0
            ok[f"disturbance {key} ks<0.2"] = d["ks"] < 0.2
    for level, t in result["tuning_sigma_pct"].items():
        ok[f"sigma {level} uS"] = abs(t["sim"] - t["published"]) <= 0.25 * t["published"]
    return ok


def _describe(d: dict) -> str:
    us = {k: v * 1e6 for k, v in d.items() if k in ("mean", "sd", "median", "low", "high")}
    if d["kind"] == "normal":
        return f"normal {us['mean']:.0f} +/- {us['sd']:.0f} uS"
    if d["kind"] == "lognormal":
        return f"log-normal median {us['median']:.0f} uS, sigma {d['sigma']:.3f}"
    return f"{d['kind']} {us['low']:.2f}-{us['high']:.1f} uS"


def print_table(result: dict, out=None) -> None:
    out = sys.stdout if out is None else out    # the stdout of the call, not of the import
    print(f"calibration of preset {result['preset']} ({result['arrays']} simulated 8x8 arrays per survey)", file=out)
    print("\nV/3 disturbance: change of a device while the next k devices were programmed (uS)", file=out)
    print(f"{'k':>4} {'sim mean':>9} {'meas mean':>9} {'sim sd':>8} {'meas sd':>8} {'sim skew':>8} "
          f"{'meas skew':>9} {'KS':>6} {'n sim':>6} {'n meas':>6}", file=out)
    for key, d in result["disturbance"].items():
        print(f"{key:>4} {d['sim_mean'] * 1e6:9.2f} {d['meas_mean'] * 1e6:9.2f} {d['sim_std'] * 1e6:8.2f} "
              f"{d['meas_std'] * 1e6:8.2f} {d['sim_skew']:8.2f} {d['meas_skew']:9.2f} {d['ks']:6.3f} "
              f"{d['sim_n']:6d} {d['meas_n']:6d}", file=out)
    print("\ntuning imprecision: sd of the read right after tuning, % of target", file=out)
    print(f"{'level':>6} {'sim':>6} {'published':>9} {'sim offset':>10} {'n':>5}", file=out)
    for level, t in result["tuning_sigma_pct"].items():
        print(f"{level:>4}uS {t['sim']:6.3f} {t['published']:9.3f} {t['sim_offset']:10.3f} {t['n']:5d}", file=out)
    fit = result["stuck"]["fit"]
    pre = result["stuck"]["preset"]
    pub = fit["published"]
    print("\nstuck devices on the measured dead crossbars (conductance)", file=out)
    print(f"  LRS (< 2 kOhm, n={fit['lrs']['n']}): all maps, log-normal median {fit['lrs']['median'] * 1e6:.0f} uS, "
          f"sigma {fit['lrs']['sigma']:.3f}; published fit (the preset): normal {pub['lrs_mean'] * 1e6:.0f} +/- "
          f"{pub['lrs_sd'] * 1e6:.0f} uS   preset: {_describe(pre['lrs'])}", file=out)
    print(f"  HRS (> 10 kOhm, n={fit['hrs']['n']}): all maps, {fit['hrs']['low'] * 1e6:.2f}-"
          f"{fit['hrs']['high'] * 1e6:.1f} uS; published fit (the preset): uniform {pub['hrs_low'] * 1e6:.0f}-"
          f"{pub['hrs_high'] * 1e6:.0f} uS   preset: {_describe(pre['hrs'])}", file=out)
    failed = [name for name, good in result["checks"].items() if not good]
    print(f"\nacceptance: {'all figures within bounds' if not failed else 'OUT OF BOUNDS: ' + ', '.join(failed)}",
          file=out)

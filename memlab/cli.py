"""The `memlab` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import yaml

from drivers.errors import DriverError
from protocols.tuning import TuneArrayParams, checkerboard

from .bench import Terminated, emulate, open_crossbar, raise_on_sigterm
from .config import BenchConfig, BenchFileError, load_bench
from .store import RunStore

DEMO_BENCH = "sim-b1500-e5250"
DEMO_LEVELS_US = (150.0, 400.0)


def default_store() -> Path:
    return Path(os.environ.get("MEMLAB_STORE", "memlab-runs"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    raise_on_sigterm()
    try:
        return args.func(args) or 0
    except (BenchFileError, DriverError, ValueError, OSError) as exc:
        print(f"memlab: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"\nmemlab: interrupted; {_one_line(exc, 'the bench was put in its safe state')}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"memlab: terminated; {_one_line(exc, 'the bench was put in its safe state')}", file=sys.stderr)
        return 143


def _one_line(exc: BaseException, otherwise: str = "") -> str:
    """The error and the notes added on its way out (a safe state that was not confirmed)."""
    notes = getattr(exc, "__notes__", [])
    text = "; ".join([t for t in (str(exc) if not otherwise else "",) if t] + notes)
    return text or otherwise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memlab", description="memristive crossbar control and training")
    sub = p.add_subparsers(metavar="COMMAND")

    sim = sub.add_parser("sim", help="the simulated bench").add_subparsers(metavar="SIMCOMMAND")
    serve = sim.add_parser("serve", help="serve a bench's emulated instruments on loopback sockets")
    serve.add_argument("bench", help="bench file (or the name of a shipped bench)")
    serve.add_argument("--write-bench", metavar="FILE", help="write the bench file with the live resources")
    serve.add_argument("--log-dir", metavar="DIR", help="write each instrument's command log there")
    serve.set_defaults(func=cmd_sim_serve)
    calib = sim.add_parser("calibrate", help="compare the simulated TiO2 crossbar with the measured data")
    calib.add_argument("--preset", default="tio2-passive")
    calib.add_argument("--arrays", type=int, default=20, help="simulated 8x8 arrays per survey")
    calib.add_argument("--seed", type=int, default=0)
    calib.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    calib.add_argument("--database-out", type=Path, metavar="FILE",
                       help="also write the simulated surveys as a device database (for `database:` in train jobs)")
    calib.set_defaults(func=cmd_sim_calibrate)

    bench = sub.add_parser("bench", help="bench files").add_subparsers(metavar="BENCHCOMMAND")
    check = bench.add_parser("check", help="connect, identify every instrument, check the wiring")
    check.add_argument("bench")
    check.add_argument("--simulate", action="store_true", help="emulate the bench in-process first")
    check.set_defaults(func=cmd_bench_check)

    tune = sub.add_parser("tune", help="write-verify tune the crossbar to a target map")
    tune.add_argument("bench")
    targets = tune.add_mutually_exclusive_group(required=True)
    targets.add_argument("--checkerboard", nargs=2, type=float, metavar=("LOW_uS", "HIGH_uS"))
    targets.add_argument("--uniform", type=float, metavar="G_uS")
    targets.add_argument("--targets", metavar="FILE", help=".npy (S) or .csv (uS) target map")
    tune.add_argument("--params", metavar="YAML", help="tuning parameters (TuneArrayParams)")
    tune.add_argument("--tolerance", type=float, help="relative tolerance, e.g. 0.01")
    tune.add_argument("--simulate", action="store_true", help="emulate the bench in-process first")
    _store_and_json(tune)
    tune.set_defaults(func=cmd_tune)

    demo = sub.add_parser("demo", help="tune an 8x8 simulated crossbar through the emulated instruments")
    demo.add_argument("--seed", type=int, help="simulated crossbar seed (default: the bench file's)")
    _store_and_json(demo)
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser("reproduce", help="reproduce a published result (moons, mat-mnist, fault-pruning, "
                                           "bench-loop)")
    rep.add_argument("name", choices=["moons", "mat-mnist", "fault-pruning", "bench-loop"])
    rep.add_argument("--quick", action="store_true", help="a small, fast version (smoke test)")
    _store_and_json(rep)
    rep.set_defaults(func=cmd_reproduce)

    train = sub.add_parser("train", help="run a training job file (memlab/jobs/*.yaml are shipped)")
    train.add_argument("job", help="job YAML, or the name of a shipped job")
    _store_and_json(train)
    train.set_defaults(func=cmd_train)

    runs = sub.add_parser("runs", help="list the runs in a store")
    runs.add_argument("--store", type=Path, default=None)
    runs.set_defaults(func=cmd_runs)
    return p


def _store_and_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=None, help="run store folder (default ./memlab-runs)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON")


# --- sim serve --------------------------------------------------------------------------------

def cmd_sim_serve(args) -> int:
    config = load_bench(args.bench)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    bench, live = emulate(config, log_dir=args.log_dir)
    try:
        for name, resource in bench.resources.items():
            print(f"{name} {resource}", flush=True)
        if args.write_bench:
            Path(args.write_bench).write_text(live.to_yaml())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        bench.stop()
    return 0


def cmd_sim_calibrate(args) -> int:
    from .calibrate import calibrate, print_table

    result = calibrate(args.preset, arrays=args.arrays, seed=args.seed, database_out=args.database_out)
    print_table(result)
    if args.database_out:
        print(f"device database: {args.database_out}")
    _write_json(args.json, result)
    return 0


# --- bench check ------------------------------------------------------------------------------

def cmd_bench_check(args) -> int:
    config = load_bench(args.bench)
    emulation = None
    if args.simulate:
        emulation, config = emulate(config)
    try:
        return check_bench(config)
    finally:
        if emulation:
            emulation.stop()


def check_bench(config: BenchConfig) -> int:
    print(f"bench {config.name}: {config.rows}x{config.cols} crossbar")
    problems = 0
    with open_crossbar(config) as xbar:
        print(f"  {xbar.source.name}: {xbar.source.identity} at {xbar.source.resource_name}")
        print(f"    modules: " + ", ".join(f"slot {s} {m}" for s, m in sorted(xbar.source.modules.items())))
        print(f"  {xbar.switch.name}: {xbar.switch.identity} at {xbar.switch.resource_name}")
        cards = xbar.switch.card_types()
        print(f"    cards: " + (", ".join(f"{c}: {t}" for c, t in cards.items()) or "none"))
        ports = config.wiring.rows + config.wiring.columns
        if max(ports) > 12 * len(cards):
            print(f"  FAIL wiring uses output port {max(ports)}, the switch has {12 * len(cards)}")
            return 1
        floor = 1e-9  # A: below this a line is taken as open
        for r in range(config.rows):
            problems += _continuity(xbar, "row", r, r, r % config.cols, floor)
        for c in range(config.cols):
            problems += _continuity(xbar, "column", c, c % config.rows, c, floor)
    print("wiring check: " + ("OK" if not problems else f"{problems} line(s) without current"))
    return 1 if problems else 0


def _continuity(xbar, kind: str, index: int, r: int, c: int, floor: float) -> int:
    read = xbar.read(r, c)
    ok = abs(read.current) > floor
    print(f"  {'ok  ' if ok else 'FAIL'} {kind} {index}: device ({r},{c}) {read.conductance * 1e6:8.2f} uS")
    return 0 if ok else 1


# --- tune and demo --------------------------------------------------------------------------------

def _params(args) -> TuneArrayParams:
    data = yaml.safe_load(Path(args.params).read_text()) if getattr(args, "params", None) else {}
    params = TuneArrayParams.model_validate(data or {})
    if getattr(args, "tolerance", None) is not None:
        params = params.with_tolerance(args.tolerance)
    return params


def cmd_tune(args) -> int:
    from .tuning import load_targets, run_tuning

    config = load_bench(args.bench)
    shape = (config.rows, config.cols)
    if args.checkerboard:
        targets = checkerboard(*shape, args.checkerboard[0] * 1e-6, args.checkerboard[1] * 1e-6)
    elif args.uniform is not None:
        targets = np.full(shape, args.uniform * 1e-6)
    else:
        targets = load_targets(args.targets)
    emulation = None
    if args.simulate:
        emulation, config = emulate(config)
    try:
        summary = run_tuning(config, targets, _params(args), RunStore(args.store or default_store()),
                             bench_clock=(lambda: emulation.clock) if emulation else None)
    finally:
        if emulation:
            emulation.stop()
    print_summary(summary)
    _write_json(args.json, summary)
    return 0


def cmd_demo(args) -> int:
    from .tuning import run_tuning

    config = load_bench(DEMO_BENCH)
    if args.seed is not None:
        config = config.model_copy(update={"simulation": config.simulation.model_copy(update={"seed": args.seed})})
    bench, live = emulate(config)
    print(f"memlab demo: {config.rows}x{config.cols} simulated {config.simulation.preset} crossbar "
          f"(seed {config.simulation.seed}) behind emulated instruments on loopback VISA:")
    for name, resource in bench.resources.items():
        print(f"  {name:10s} {config.instruments[name].type:16s} {resource}")
    low, high = DEMO_LEVELS_US
    print(f"tuning a {low:g}/{high:g} uS checkerboard by write-verify with the V/3 scheme")
    try:
        targets = checkerboard(config.rows, config.cols, low * 1e-6, high * 1e-6)
        params = TuneArrayParams()
        summary = run_tuning(live, targets, params, RunStore(args.store or default_store()), kind="demo",
                             bench_clock=lambda: bench.clock)
        summary["simulator_truth"] = _truth(bench, targets, params.tolerance)
        summary["resources"] = bench.resources
    finally:
        bench.stop()
    print_summary(summary)
    _write_json(args.json, summary)
    return 0


def _truth(bench, targets: np.ndarray, tolerance: float) -> dict:
    """What the simulator knows and a lab would not: the true final states."""
    g = bench.conductances().numpy()
    stuck = bench.array.stuck.numpy()
    ok = np.abs(g / targets - 1) <= tolerance
    return {
        "stuck_devices": [[int(r), int(c)] for r, c in zip(*np.nonzero(stuck))],
        "fraction_in_tolerance_non_stuck": float(ok[~stuck].mean()) if (~stuck).any() else 0.0,
        "hazards": list(bench.hazards),
    }


def print_summary(s: dict) -> None:
    n = s["devices"]
    print(f"\n  devices                 {n}")
    print(f"  in tolerance (+/-{s['tolerance'] * 100:g} %)  {s['devices_in_tolerance']}/{n}   "
          f"(non-stuck: {s['fraction_in_tolerance_non_stuck'] * 100:.1f} % of {s['non_stuck_devices']})")
    print(f"  stuck                   {len(s['stuck_devices'])}")
    print(f"  failed to tune          {len(s['failed_devices'])}")
    for d in s["failed_devices"]:
        print(f"      ({d['row']},{d['col']}) at {d['conductance_uS']} uS: {d['reason']}")
    failed = {(d["row"], d["col"]) for d in s["failed_devices"]}
    drifted = [d for d in s["out_of_tolerance_devices"] if (d["row"], d["col"]) not in failed]
    if drifted:
        print(f"  tuned, then out of tolerance at read-back  {len(drifted)}")
    for d in drifted:
        print(f"      ({d['row']},{d['col']}) ended at {d['final_uS']} uS for {d['target_uS']} uS")
    print(f"  pulses per device       {s['pulses_per_device']} mean, {s['pulses_per_device_max']} max, "
          f"{s['passes']} pass(es)")
    if "bench_time_s" in s:
        print(f"  bench time (simulated)  {s['bench_time_s']:.1f} s   (wall {s['wall_time_s']:.1f} s)")
    truth = s.get("simulator_truth")
    if truth:
        print(f"  simulator truth         {truth['fraction_in_tolerance_non_stuck'] * 100:.1f} % of non-stuck "
              f"in tolerance; stuck: {truth['stuck_devices'] or 'none'}")
    print(f"  run data                {s['run_path']}")
    print(f"  plot                    {s['plot']}")


def _write_json(path: Path | None, summary: dict) -> None:
    if path:
        path.write_text(json.dumps(summary, indent=2))


def cmd_reproduce(args) -> int:
    from .reproduce import run_reproduction

    run_reproduction(args.name, RunStore(args.store or default_store()), quick=args.quick, json_path=args.json)
    return 0


def cmd_train(args) -> int:
    from .train import load_job, run_job

    summary = run_job(load_job(args.job), RunStore(args.store or default_store()))
    print(f"run data: {summary['run_path']}")
    _write_json(args.json, summary)
    return 0


def cmd_runs(args) -> int:
    store = RunStore(args.store or default_store())
    for run in store.runs():
        print(f"{run['id']:40s} {run['kind']:8s} {run['status']:12s} {run['n_operations']:7d} operations")
    return 0


if __name__ == "__main__":
    sys.exit(main())

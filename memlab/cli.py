"""The `memlab` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from drivers.errors import DriverError
from drivers.signals import Terminated, exit_signals_raise
from protocols.tuning import TuneArrayParams, checkerboard

from .bench import emulate, open_crossbar
from .benchlock import BenchBusy
from .config import SHIPPED_BENCHES, BenchConfig, BenchFileError, describe, load_bench, load_model
from .store import RunStore

DEMO_BENCH = "sim-b1500-e5250"
DEMO_LEVELS_US = (150.0, 400.0)
SAFE = "the bench was put in its safe state"


def default_store() -> Path:
    return Path(os.environ.get("MEMLAB_STORE", "memlab-runs"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A bad command line is one line too (the usage is a --help away)."""
        self.exit(2, f"memlab: error: {self.prog.removeprefix('memlab ')}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    # for the whole command, not only while a bench is open: a run started before the
    # bench is reached is still marked when a signal ends it
    with exit_signals_raise():
        try:
            return args.func(args) or 0
        except (BenchFileError, BenchBusy, DriverError, ValueError, OSError) as exc:
            print(f"memlab: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:
            print(f"\nmemlab: interrupted (SIGINT); {_one_line(exc, SAFE)}", file=sys.stderr)
            return 130
        except Terminated as exc:
            print(f"memlab: terminated ({exc}); {_one_line(exc, SAFE)}", file=sys.stderr)
            return exc.exit_code


def _one_line(exc: BaseException, otherwise: str = "") -> str:
    """The error and the notes added on its way out (the run it ended, a safe state that
    was not confirmed); `otherwise` closes the line when the error itself says nothing."""
    notes = getattr(exc, "__notes__", [])
    parts = ([] if otherwise else [str(exc)]) + notes
    if otherwise and not any("safe state not confirmed" in n for n in notes):
        parts.append(otherwise)
    return " ".join("; ".join(p for p in parts if p).split())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memlab", description="memristive crossbar control and training")
    sub = p.add_subparsers(metavar="COMMAND")

    sim = sub.add_parser("sim", help="the simulated bench").add_subparsers(metavar="SIMCOMMAND")
    serve = sim.add_parser("serve", help="serve a bench's emulated instruments on loopback sockets")
    serve.add_argument("bench", help="bench file (or the name of a shipped bench)")
    serve.add_argument("--write-bench", metavar="FILE", help="write the bench file with the live resources")
    serve.add_argument("--log-dir", metavar="DIR", help="write each instrument's command log there")
    serve.add_argument("--fault", action="append", default=[], metavar="INSTRUMENT:KIND[@AFTER][=VALUE]",
                       help="an emulated fault to rehearse (kinds: slow, timeout, drop, garble, error, hang; "
                            "AFTER: messages received first), e.g. analyzer:timeout@40=6; repeatable")
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
    demo.add_argument("--bench", default=DEMO_BENCH, help=f"a shipped bench name or a bench file with a "
                      f"`simulation` section (default {DEMO_BENCH}; shipped: {', '.join(_shipped())})")
    demo.add_argument("--seed", type=int, help="simulated crossbar seed (default: the bench file's)")
    demo.add_argument("--fault", action="append", default=[], metavar="INSTRUMENT:KIND[@AFTER][=VALUE]",
                      help="an emulated fault to rehearse (see memlab sim serve --help); repeatable")
    _store_and_json(demo)
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser("reproduce", help="reproduce a published result (moons, mat-mnist, fault-pruning, "
                                           "bench-loop)")
    rep.add_argument("name", choices=["moons", "mat-mnist", "fault-pruning", "bench-loop"])
    rep.add_argument("--quick", action="store_true", help="a small, fast version (smoke test)")
    rep.add_argument("--seeds", type=int, metavar="N",
                     help="training seeds (moons: default 5; mat-mnist: 5; fault-pruning: 3)")
    _store_and_json(rep)
    rep.set_defaults(func=cmd_reproduce)

    train = sub.add_parser("train", help="run a training job file (memlab/jobs/*.yaml are shipped)")
    train.add_argument("job", help="job YAML, or the name of a shipped job")
    _store_and_json(train)
    train.set_defaults(func=cmd_train)

    run = sub.add_parser("run", help="run a characterization protocol (a YAML file or a shipped name)")
    run.add_argument("protocol", nargs="?", help="protocol file, or the name of a shipped one (see --list)")
    run.add_argument("--list", action="store_true", help="list the shipped protocols")
    run.add_argument("--bench", default=DEMO_BENCH, help=f"bench file or shipped bench (default {DEMO_BENCH})")
    run.add_argument("--simulate", action="store_true", help="run on the bench's emulated instruments")
    _store_and_json(run)
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list the runs in a store")
    runs.add_argument("--store", type=Path, default=None)
    runs.add_argument("--kind", help="only runs of this kind (tune, demo, read-map, ...)")
    runs.add_argument("--status", choices=["running", "completed", "failed", "interrupted", "crashed"],
                      help="only runs with this status")
    runs_sub = runs.add_subparsers(metavar="RUNSCOMMAND")
    export = runs_sub.add_parser("export", help="a run's operations as CSV, or the whole run as HDF5")
    _one_run(export)
    export.add_argument("--format", choices=["csv", "hdf5"], default="hdf5")
    export.add_argument("--out", type=Path, help="file to write (default: in the run's folder)")
    export.set_defaults(func=cmd_runs_export)
    replot = runs_sub.add_parser("plot", help="draw a run's plots again from its stored arrays")
    _one_run(replot)
    replot.set_defaults(func=cmd_runs_plot)
    show = runs_sub.add_parser("show", help="a run's parameters, bench, software, summary and operation counts")
    _one_run(show)
    show.set_defaults(func=cmd_runs_show)
    runs.set_defaults(func=cmd_runs)
    return p


def _one_run(p: argparse.ArgumentParser) -> None:
    """RUN, and --store here as well as before the subcommand (SUPPRESS: not unset by it)."""
    p.add_argument("run", help="run id")
    p.add_argument("--store", type=Path, default=argparse.SUPPRESS, help="run store folder")


def _store_and_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=None, help="run store folder (default ./memlab-runs)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON")


def _shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED_BENCHES.glob("*.yaml"))


# --- sim serve --------------------------------------------------------------------------------

def cmd_sim_serve(args) -> int:
    config = load_bench(args.bench).with_faults(args.fault)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *a: stop.set())
    from simulator.wgfmu_server import LibraryServer

    bench, live = emulate(config, log_dir=args.log_dir)
    lent = {}
    try:
        for name, library in bench.libraries.items():   # an instrument library: lent over a socket
            lent[name] = LibraryServer(library, name, lock=bench.lock)
        live = live.with_resources({name: f"EMULATED::{server.resource}::{name}" for name, server in lent.items()})
        if args.write_bench:   # whole before the resources are printed: a client may read it then
            partial = Path(f"{args.write_bench}.partial")
            partial.write_text(live.to_yaml())
            partial.replace(args.write_bench)
        for name, resource in bench.resources.items():
            print(f"{name} {resource}", flush=True)
        for name in lent:
            print(f"{name} {live.instruments[name].resource}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        for server in lent.values():
            server.stop()
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
    with open_crossbar(config) as xbar:   # connecting checks the wiring against the switch's size
        for inst in xbar.instruments:
            print(f"  {inst.name}: {inst.identity} at {inst.resource_name}")
            if getattr(inst, "modules", None):
                print("    modules: " + ", ".join(f"slot {s} {m}" for s, m in sorted(inst.modules.items())))
            if hasattr(inst, "card_types"):
                cards = inst.card_types()
                print("    cards: " + (", ".join(f"{c}: {t}" for c, t in cards.items()) or "none"))
        floor = 1e-9  # A: below this a line is taken as open
        paths = [("SMUs", False)] + ([(f"pulse source {xbar.pulser.name}", True)] if xbar.pulser else [])
        for label, fast in paths:
            print(f"  through the {label}:")
            xbar.fast = fast
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

def _params(args, config: BenchConfig) -> TuneArrayParams:
    """The bench's tuning section, under --params FILE and --tolerance, each refused in one
    line naming it."""
    params = TuneArrayParams()
    if getattr(args, "params", None):
        params = load_model(args.params, TuneArrayParams, "a parameter file is a YAML mapping "
                                                          "(tolerance, tune: {...}, touch_up_passes, verify_reads)")
    if config.tuning:   # what the file set wins over the bench's defaults
        try:
            tune = config.tune_params(**params.tune.model_dump(exclude_unset=True))
            params = TuneArrayParams.model_validate({**params.model_dump(exclude_unset=True),
                                                     "tune": tune.model_dump(exclude_unset=True)})
        except ValidationError as exc:
            raise ValueError(f"{getattr(args, 'params', None) or 'bench ' + config.name}: {describe(exc)}") from None
    tolerance = getattr(args, "tolerance", None)
    if tolerance is not None:
        if not 0 < tolerance < 1:
            raise ValueError(f"--tolerance: {tolerance:g} is not a relative tolerance in (0, 1), e.g. 0.01")
        try:
            params = params.with_tolerance(tolerance)
        except ValidationError as exc:
            raise ValueError(f"--tolerance {tolerance:g}: {describe(exc)}") from None
    return params


def _targets(args, config: BenchConfig) -> tuple[np.ndarray, str, str]:
    """The target map (S), where it came from and the unit it was written in."""
    from .tuning import load_targets

    shape = (config.rows, config.cols)
    if args.checkerboard:
        low, high = args.checkerboard
        return checkerboard(*shape, low * 1e-6, high * 1e-6), "--checkerboard", "uS"
    if args.uniform is not None:
        return np.full(shape, args.uniform * 1e-6), "--uniform", "uS"
    targets, unit = load_targets(args.targets)
    return targets, str(args.targets), unit


def _store(args) -> RunStore:
    """The run store, announcing each run it starts (the id to look for, or to resume)."""
    store = RunStore(args.store or default_store())
    store.on_start = lambda run_id: print(f"memlab: run {run_id} started", file=sys.stderr, flush=True)
    return store


def _on_bench(config: BenchConfig, simulate: bool, job):
    """job(bench config, bench clock or None) on the bench, or on its emulation (stopped after)."""
    if not simulate:
        return job(config, None)
    emulation, live = emulate(config)
    try:
        return job(live, lambda: emulation.clock)
    finally:
        emulation.stop()


def cmd_tune(args) -> int:
    from .preflight import check_tuning
    from .tuning import run_tuning

    config = load_bench(args.bench)
    _check_json_path(args.json)
    targets, source, unit = _targets(args, config)
    params = _params(args, config)
    check_tuning(config, targets, params.tune, source=source, unit=unit)   # before anything starts
    summary = _on_bench(config, args.simulate, lambda live, clock: run_tuning(
        live, targets, params, _store(args), bench_clock=clock, source=source, unit=unit))
    print_summary(summary)
    _write_json(args.json, summary)
    return 0


def cmd_run(args) -> int:
    from protocols.registry import shipped

    from .preflight import PlanError, check_protocol
    from .protocol_run import load_protocol, run_protocol

    if args.list:
        for name, line in shipped().items():
            print(f"{name:16s} {line}")
        return 0
    if not args.protocol:
        raise ValueError("run: give a protocol file or a shipped protocol's name (memlab run --list)")
    protocol = load_protocol(args.protocol)   # all of it checked before anything starts
    config = load_bench(args.bench)
    _check_json_path(args.json)
    try:
        check_protocol(config, protocol)
    except PlanError as exc:
        raise PlanError(f"{args.protocol}: {exc}") from None
    summary = _on_bench(config, args.simulate, lambda live, clock: run_protocol(
        live, protocol, _store(args), checked=True, bench_clock=clock))
    print_run_summary(summary)
    _write_json(args.json, summary)
    return 0


def cmd_demo(args) -> int:
    from .tuning import run_tuning

    config = load_bench(args.bench)
    _check_json_path(args.json)
    if config.simulation is None:
        raise ValueError(f"--bench {args.bench}: bench {config.name} has no `simulation` section: the demo "
                         f"runs on an emulated bench")
    if args.seed is not None:
        config = config.model_copy(update={"simulation": config.simulation.model_copy(update={"seed": args.seed})})
    config = config.with_faults(args.fault)
    low, high = DEMO_LEVELS_US
    targets = checkerboard(config.rows, config.cols, low * 1e-6, high * 1e-6)
    params = _params(args, config)
    bench, live = emulate(config)
    print(f"memlab demo: {config.rows}x{config.cols} simulated {config.simulation.preset} crossbar "
          f"(seed {config.simulation.seed}) behind emulated instruments on loopback VISA:")
    for name, resource in bench.resources.items():
        print(f"  {name:10s} {config.instruments[name].type:16s} {resource}")
    for name in bench.libraries:
        print(f"  {name:10s} {config.instruments[name].type:16s} (vendor library, emulated in this process)")
    print(f"tuning a {low:g}/{high:g} uS checkerboard by write-verify with the V/3 scheme")
    try:
        summary = run_tuning(live, targets, params, _store(args), kind="demo",
                             bench_clock=lambda: bench.clock)
        summary["simulator_truth"] = _truth(bench, targets, params.tolerance)
        summary["resources"] = bench.resources
    finally:
        bench.stop()
    print_summary(summary)
    _write_json(args.json, summary)
    return 0


def print_run_summary(s: dict) -> None:
    """One line per figure; lists of devices as their count (the JSON has them all)."""
    print()
    for key, value in s.items():
        if key == "plots":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = f"{len(value)}"
        print(f"  {key.replace('_', ' '):32s} {value}")
    for plot in s["plots"]:
        print(f"  {'plot':32s} {plot}")


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
    d = s.get("per_device")
    if d:
        bench = f", {d['bench_s'] * 1e3:.1f} ms of bench time" if "bench_s" in d else ""
        print(f"  per device              {d['round_trips']} round trips, {d['relay_ops']} relay operations{bench}")
    truth = s.get("simulator_truth")
    if truth:
        print(f"  simulator truth         {truth['fraction_in_tolerance_non_stuck'] * 100:.1f} % of non-stuck "
              f"in tolerance; stuck: {truth['stuck_devices'] or 'none'}")
    print(f"  run data                {s['run_path']}")
    print(f"  plot                    {s['plot']}")


def _check_json_path(path: Path | None) -> None:
    """Refused before the run, not after it: the summary would be lost."""
    if path is not None and not path.parent.is_dir():
        raise ValueError(f"--json {path}: folder {path.parent} does not exist")


def _write_json(path: Path | None, summary: dict) -> None:
    if path:
        path.write_text(json.dumps(summary, indent=2))


def cmd_reproduce(args) -> int:
    from .reproduce import run_reproduction

    run_reproduction(args.name, _store(args), quick=args.quick, json_path=args.json,
                     seeds=args.seeds)
    return 0


def cmd_train(args) -> int:
    from .train import load_job, run_job

    summary = run_job(load_job(args.job), _store(args))
    print(f"run data: {summary['run_path']}")
    _write_json(args.json, summary)
    return 0


def cmd_runs(args) -> int:
    store = _store(args)
    runs = [r for r in store.runs() if (args.kind is None or r["kind"] == args.kind)
            and (args.status is None or r["status"] == args.status)]
    print(f"{'run':40s} {'kind':14s} {'status':11s} {'started (UTC)':19s} {'duration':>9s} {'operations':>10s}  "
          f"{'bench':22s} result")
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run["started"]))
        duration = f"{run['finished'] - run['started']:8.1f}s" if run["finished"] else ""
        print(f"{run['id']:40s} {run['kind']:14s} {run['status']:11s} {started:19s} {duration:>9s} "
              f"{run['n_operations']:10d}  {run['bench'] or '-':22s} {result_line(run['summary'])}")
    return 0


def _stored_run(args, command: str):
    store = RunStore(args.store or default_store())
    try:
        run = store.get_run(args.run)
        return run, run.info()
    except KeyError:
        raise ValueError(f"runs {command}: no run {args.run!r} in {store.root} (memlab runs lists them)") from None


def cmd_runs_export(args) -> int:
    from .export import export_hdf5

    run, _ = _stored_run(args, "export")
    out = args.out or run.path / f"{run.id}.{'h5' if args.format == 'hdf5' else 'csv'}"
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    print(export_hdf5(run, out) if args.format == "hdf5" else run.export_csv(out))
    return 0


def cmd_runs_plot(args) -> int:
    from .plots import plot_run

    run, info = _stored_run(args, "plot")
    arrays = {a["name"]: run.load_array(a["name"]) for a in run.arrays()}
    try:
        paths = plot_run(info["kind"], arrays, info["summary"] or {}, run.path)
    except KeyError as exc:
        raise ValueError(f"runs plot: run {run.id} lacks {exc} (did it finish?)") from None
    if not paths:
        raise ValueError(f"runs plot: no plots for runs of kind {info['kind']!r}")
    for path in paths:
        print(path)
    return 0


def cmd_runs_show(args) -> int:
    import yaml

    run, info = _stored_run(args, "show")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info["started"]))
    duration = f", {info['finished'] - info['started']:.1f} s" if info["finished"] else ""
    bench = info["bench"] or {}
    print(f"run        {info['id']}\nkind       {info['kind']}\nstatus     {info['status']} "
          f"(started {started} UTC{duration}){': ' + info['error'] if info['error'] else ''}")
    print(f"host       {info['host']} (pid {info['pid']})")
    software = info["software"] or {}
    print("software   " + (", ".join(f"{k} {v}" for k, v in software.items()) or "(not recorded)"))
    print(f"bench      {bench.get('name', '-')}")
    for name, identity in (bench.get("identities") or {}).items():
        print(f"  {name:10s} {identity}")
    print("parameters")
    for line in yaml.safe_dump(info["params"] or {}, sort_keys=False).splitlines():
        print(f"  {line}")
    counts: dict[str, int] = {}
    for op in run.operations():
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    print("operations " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
    print("arrays     " + (", ".join(a["name"] for a in run.arrays()) or "none"))
    print("summary    " + result_line(info["summary"]))
    return 0


def result_line(summary: dict | None) -> str:
    """What a run came to, in a few words."""
    if not summary:
        return ""
    if "devices_in_tolerance" in summary:
        return f"{summary['devices_in_tolerance']}/{summary['devices']} in {summary['tolerance'] * 100:g} %"
    if "conductance_uS" in summary:
        g = summary["conductance_uS"]
        return f"{summary['devices']} devices, {g['min']:g}-{g['max']:g} uS (mean {g['mean']:g})"
    scalars = [f"{k} {v}" for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(scalars[:3])


if __name__ == "__main__":
    sys.exit(main())

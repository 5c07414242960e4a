"""Bench time per tuned device on every shipped bench: the optimized path against a naive one,
measured in the same run; and the host's overhead per instrument transaction.

    python benchmarks/bench_time.py [--json FILE] [--size 16] [--devices N] [--bench NAME ...]

For each shipped bench, an N x N copy of it (N = --size; the switch gets the cards it needs)
is emulated and a 150/400 uS checkerboard tuned to 1 % (each device to 0.6 %, the bench's own
tuning parameters, touch-up passes included) twice from the same seed:

- optimized: memlab's default: reads and pulses as pulse-and-read sequences on the fast pulse
  source where the bench has one (batched write-verify, up to 32 pulses per sequence),
  relays that the next device needs kept (devices in row order);
- naive: one device at a time with every relay opened between devices, one round trip per
  pulse and per read.

Per tuned device: round trips (times the host waited for an instrument: a reply read over
VISA, a WGFMU sequence run), relay operations (relays closed or opened), and the estimated
bench time: the emulated bench's virtual clock, which advances by each message's
instrument time (for the WGFMU, each library call that reaches the instrument), relay
operate-and-settle time, and every pulse and read as applied; against the floor: the sum of
the pulse and read durations themselves. Also pulse-and-read pairs per round trip and per
sequence the fast pulse source ran (a 4200A's KULT call is one sequence in 2-3 round trips).
`--devices` tunes only the first devices in row order (the figures stay per device);
`--bench NAME` runs only that shipped bench.

transaction_ms: wall time of one short query through each driver over loopback (pyvisa +
pyvisa-py, the emulator answering), median of repeated queries; for the WGFMU, one call of
its (emulated, in-process) library.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memlab.bench import emulate, open_crossbar  # noqa: E402
from memlab.config import SHIPPED_BENCHES, BenchConfig, load_bench  # noqa: E402
from protocols.tuning import TuneArrayParams, checkerboard, tune_array  # noqa: E402

OUTPUTS_PER_CARD = {"keysight_e5250a": 12, "keithley_707b": 12}


def scaled(config: BenchConfig, n: int) -> BenchConfig:
    """The bench with an n x n crossbar: rows on switch outputs 1..n, columns on n+1..2n."""
    switch = config.instruments[config.crossbar.switch]
    cards = math.ceil(2 * n / OUTPUTS_PER_CARD[switch.type])
    instruments = dict(config.instruments)
    instruments[config.crossbar.switch] = switch.model_copy(update={"options": {**switch.options, "cards": cards}})
    wiring = config.wiring.model_copy(update={"rows": list(range(1, n + 1)), "columns": list(range(n + 1, 2 * n + 1))})
    return BenchConfig.model_validate({**config.model_dump(), "instruments": {k: v.model_dump() for k, v in
                                                                                instruments.items()},
                                       "wiring": wiring.model_dump()})


def tune_once(config: BenchConfig, targets: np.ndarray, naive: bool) -> dict:
    bench, live = emulate(config)
    try:
        with open_crossbar(live) as xbar:
            xbar.keep_routes = not naive
            params = TuneArrayParams(tolerance=0.01, tune=live.tune_params(tolerance=0.006,
                                                                          max_batch=1 if naive else 32))
            sequences = lambda: xbar.pulser.pulses_sent if xbar.fast else 0  # noqa: E731
            trips, relays, clock, runs = xbar.round_trips, xbar.relay_ops, bench.clock, sequences()
            started = time.perf_counter()
            result = tune_array(xbar, targets, params)
            wall = time.perf_counter() - started
            trips, relays, clock = xbar.round_trips - trips, xbar.relay_ops - relays, bench.clock - clock
            runs = sequences() - runs
        g = bench.conductances().numpy()
        stuck = bench.array.stuck.numpy()
    finally:
        bench.stop()
    targeted = np.isfinite(targets)
    with np.errstate(invalid="ignore"):
        ok = np.abs(g / targets - 1) <= 0.01
    n = int(targeted.sum())
    pulses = int(result.pulses[targeted].sum())
    reads = sum(r.reads for r in result.results.values()) + result.passes * params.verify_reads * n
    floor = pulses * params.tune.width + reads * live.crossbar.read_width   # the pulses and reads themselves
    return {"round_trips_per_device": round(trips / n, 2), "relay_ops_per_device": round(relays / n, 2),
            "bench_s_per_device": round(clock / n, 5), "floor_s_per_device": round(floor / n, 5),
            "pulses_per_device": round(pulses / n, 1),
            "pairs_per_round_trip": round(pulses / trips, 2) if trips else None,
            "sequences_per_device": round(runs / n, 2), "pairs_per_sequence": round(pulses / runs, 2) if runs else None,
            "in_tolerance_non_stuck": round(float(ok[targeted & ~stuck].mean()), 3),
            "devices": n, "wall_s": round(wall, 1)}


def transaction_ms(names: list[str], repeats: int = 200) -> dict[str, float]:
    """Median wall time of one short query per driver, each driver measured once."""
    out: dict[str, float] = {}
    for name in names:
        config = load_bench(name)
        bench, live = emulate(config)
        try:
            with open_crossbar(live) as xbar:
                for inst in xbar.instruments:
                    kind = type(inst).__name__
                    if kind in out:
                        continue
                    probe = _probe(inst)
                    times = []
                    for _ in range(repeats):
                        t = time.perf_counter()
                        probe()
                        times.append(time.perf_counter() - t)
                    out[kind] = round(statistics.median(times) * 1e3, 4)
        finally:
            bench.stop()
    return out


def _probe(inst):
    """One read-only transaction through the driver's own session."""
    if hasattr(inst, "query"):
        return lambda: inst.query("*IDN?")
    import ctypes
    status, elapsed, total = ctypes.c_int(), ctypes.c_double(), ctypes.c_double()
    return lambda: inst.call("getStatus", out=[status, elapsed, total])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--size", type=int, default=16, help="crossbar rows and columns (default 16)")
    parser.add_argument("--devices", type=int, help="tune only the first N devices in row order")
    parser.add_argument("--bench", action="append", metavar="NAME", help="only this shipped bench (repeatable)")
    args = parser.parse_args(argv)
    names = args.bench or sorted(p.stem for p in SHIPPED_BENCHES.glob("*.yaml"))
    targets = checkerboard(args.size, args.size, 150e-6, 400e-6)
    if args.devices is not None:
        targets.ravel()[args.devices:] = np.nan
    out: dict = {}
    print(f"tuning a {args.size}x{args.size} 150/400 uS checkerboard to 1 % "
          f"({int(np.isfinite(targets).sum())} devices) on each shipped bench, optimized and naive:")
    for name in names:
        config = scaled(load_bench(name), args.size)
        row = {path: tune_once(config, targets, naive=path == "naive") for path in ("optimized", "naive")}
        out[name] = row
        o, v = row["optimized"], row["naive"]
        pulser = config.crossbar.pulser
        print(f"\n{name} ({'fast pulse source: ' + config.instruments[pulser].type if pulser else 'SMU pulses'})")
        print(f"  {'per device':24s} {'optimized':>10s} {'naive':>10s} {'ratio':>7s}")
        for key in ("round_trips_per_device", "relay_ops_per_device", "bench_s_per_device", "floor_s_per_device",
                    "pulses_per_device"):
            ratio = o[key] / v[key] if v[key] else float("nan")
            print(f"  {key:24s} {o[key]:10.4g} {v[key]:10.4g} {ratio:7.3f}")
        print(f"  pulse-and-read pairs per round trip of all instruments: {o['pairs_per_round_trip']} optimized, "
              f"{v['pairs_per_round_trip']} naive; per sequence run on the pulse source (a WGFMU "
              f"round trip; a KULT call takes 2-3): "
              f"{o['pairs_per_sequence']} / {v['pairs_per_sequence']}; in 1 % (non-stuck, truth): "
              f"{o['in_tolerance_non_stuck'] * 100:.1f} % / {v['in_tolerance_non_stuck'] * 100:.1f} %; "
              f"wall {o['wall_s']} s / {v['wall_s']} s")
    out["transaction_ms"] = transaction_ms(names)
    print("\nhost overhead per transaction (ms, median over 200):")
    for driver, ms in out["transaction_ms"].items():
        print(f"  {driver:10s} {ms:8.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

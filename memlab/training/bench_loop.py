"""Reproduction `bench-loop`: the instrument path. A small half-moons network (2-6-2, one
device per weight, biases digital) is trained in the loop with fault pruning on the
emulated B1500A + E5250A bench, every read and every write-verify pulse going through the
drivers over loopback VISA and into the run store; then the same network trained in
software is transferred ex situ by write-verify onto the same devices. Both accuracies are
measured on the crossbar: the network's weights are read device by device through the
instruments (pruned weights are zero in the digital periphery).

Layout on the 8x8 crossbar: layer 1 (2 inputs x 6 outputs) on rows 0-1, columns 0-5;
layer 2 (6 x 2) on rows 2-7, columns 0-1.
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch
from torch.nn import functional as F

from drivers.write_verify import TuneParams

from ..bench import emulate, open_crossbar
from ..config import load_bench
from ..datasets import half_moons
from ..preflight import check_ramps
from ..store import Run, RunStore
from .in_the_loop import CrossbarBlock, InLoopConfig, train_in_the_loop
from .mapping import SingleDeviceMapping

G_RANGE = (100e-6, 500e-6)
MAPPING = SingleDeviceMapping(r_min=1 / G_RANGE[1], r_max=1 / G_RANGE[0], w_max=2.0)
# coarser than the array-tuning defaults: in-the-loop updates are 2 % or more of R
PROGRAMMING = TuneParams(tolerance=0.01, reads_to_accept=2, max_pulses=150)
BLOCKS = ((0, 0, 2, 6), (2, 0, 6, 2))   # row0, col0, rows (inputs), cols (outputs)


def _data(n_train: int, n_test: int):
    d = half_moons()
    return (d.x_train[:n_train], d.y_train[:n_train].long(), d.x_test[:n_test], d.y_test[:n_test].long())


def _software_network(config: InLoopConfig, data, epochs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same network trained regularly (weights clipped to the mapping's range)."""
    torch.manual_seed(config.seed)
    x, y = data[0], data[1]
    params = []
    for n_in, n_out in zip(config.sizes[:-1], config.sizes[1:]):
        w = (torch.randn(n_in, n_out) / n_in ** 0.5).requires_grad_()
        params.append((w, torch.zeros(n_out, requires_grad=True)))
    opt = torch.optim.Adam([p for pair in params for p in pair], lr=0.05)
    for _ in range(epochs):
        for start in range(0, len(x), config.batch_size):
            h = x[start:start + config.batch_size]
            for k, (w, b) in enumerate(params):
                h = h @ w + b
                h = F.relu(h) if k < len(params) - 1 else h
            loss = F.cross_entropy(h, y[start:start + config.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for w, _ in params:
                    w.clamp_(-MAPPING.w_max, MAPPING.w_max)
    return [(w.detach(), b.detach()) for w, b in params]


def _accuracy(weights, biases, x, y) -> float:
    h = x
    for k, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w + b
        h = F.relu(h) if k < len(weights) - 1 else h
    return 100.0 * float((h.argmax(1) == y).float().mean())


def reproduce_bench_loop(epochs: int = 3, n_train: int = 256, n_test: int = 200, seed: int = 0,
                         store: str | None = None, run: Run | None = None) -> dict:
    """Records into `run` if given (`memlab reproduce` does), else into a new run of `store`."""
    data = _data(n_train, n_test)
    config = InLoopConfig(sizes=(2, 6, 2), epochs=epochs, batch_size=32, lr=0.05, w_max=MAPPING.w_max,
                          force_every=20, min_connectivity=0.3, preset="tio2-passive", seed=seed,
                          stuck_lrs=0.0, stuck_hrs=0.0, discordant=0.0)
    bench_config = load_bench("sim-b1500-e5250")
    check_ramps(bench_config, PROGRAMMING)   # the plan against the limits, before anything starts
    bench, live = emulate(bench_config)
    setup = {"in_the_loop": config.model_dump(), "programming": PROGRAMMING.model_dump(mode="json"),
             "blocks": BLOCKS}
    if run is None:
        run = RunStore(store or "memlab-runs").start_run("bench-loop", params=setup, bench=live.model_dump(mode="json"))
        ending = run                          # its own run: completed or failed here
    else:
        run.set_bench(live.model_dump(mode="json"))
        ending = contextlib.nullcontext()     # the caller's run: the caller ends it
    started = time.monotonic()
    try:
        with ending, open_crossbar(live) as xbar:
            xbar.journal = run.journal(lambda: bench.clock)
            blocks = [CrossbarBlock(xbar, *b, tune=PROGRAMMING, g_range=G_RANGE) for b in BLOCKS]
            model, history = train_in_the_loop(config, data, blocks, mapping=MAPPING)
            in_loop = model.evaluate(data[2], data[3])          # reads every device again
            removed = [int(m.removed.sum()) for m in model.layers]

            software = _software_network(config, data, epochs=60)
            transfer = PROGRAMMING.model_copy(update={"reads_to_accept": 5})
            failed = [f for block, (w, _) in zip(blocks, software)
                      for f in block.tune_to(1 / MAPPING.to_resistance(w), transfer)]
            measured = [MAPPING.to_weight(1 / block.read()) for block in blocks]
            ex_situ = _accuracy([m.float() for m in measured], [b for _, b in software], data[2], data[3])
            out = {
                "in_the_loop_accuracy": in_loop,
                "ex_situ_accuracy": ex_situ,
                "software_accuracy": _accuracy([w for w, _ in software], [b for _, b in software], data[2], data[3]),
                "operations": len(run.operations()),
                "pulses": len(run.operations("pulse")),
                "reads": len(run.operations("read")),
                "in_the_loop_iterations": history.iterations,
                "devices_programmed": history.programmed,
                "removed_devices": removed,
                "ex_situ_failed_devices": failed,
                "bench_time_s": round(bench.clock, 1),
                "wall_time_s": round(time.monotonic() - started, 1),
                "run_path": str(run.path),
                "test_points": n_test, "train_points": n_train,
            }
            run.set_summary(out)
    finally:
        bench.stop()
    return out


def print_bench_loop(result: dict, out=sys.stdout) -> None:
    print("instrument path: half-moons 2-6-2 on the emulated B1500A + E5250A bench (8x8 tio2-passive "
          "crossbar), every operation through the drivers", file=out)
    print(f"  in-the-loop with fault pruning, accuracy on the crossbar   {result['in_the_loop_accuracy']:6.1f} %  "
          f"({result['in_the_loop_iterations']} iterations, {result['devices_programmed']} device programmings, "
          f"removed {result['removed_devices']})", file=out)
    print(f"  ex-situ transfer by write-verify, accuracy on the crossbar {result['ex_situ_accuracy']:6.1f} %  "
          f"(software {result['software_accuracy']:.1f} %)", file=out)
    for f in result["ex_situ_failed_devices"]:
        print(f"      device {tuple(f['device'])} failed to tune: {f['reason']}", file=out)
    print(f"  {result['operations']} operations recorded ({result['pulses']} pulses, {result['reads']} reads); "
          f"bench time {result['bench_time_s']} s simulated, wall {result['wall_time_s']} s", file=out)
    print(f"  run data: {result['run_path']}", file=out)

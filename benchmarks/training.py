"""Training speed, against plain PyTorch measured in the same run.

    python benchmarks/training.py [--json FILE] [--transfers N]

- the in-the-loop training step (784-128-10, batch 64, 30 % stuck + 30 % discordant devices,
  fault estimation and pruning on): programming of the significant updates on the simulated
  devices, read-back, f_hat; against a plain PyTorch step of the same network (forward,
  backward, Adam), interleaved in chunks so that load changes hit both alike;
- simulated transfers per second of the half-moons network: write-verify of its 66 devices on
  freshly drawn tio2-passive crossbars with the V/3 scheme, then inference (2 worker processes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memlab.datasets import half_moons  # noqa: E402
from memlab.devicedb import DeviceDatabase  # noqa: E402
from memlab.training.hardware_aware import MoonsConfig, train_moons  # noqa: E402
from memlab.training.in_the_loop import step_benchmark  # noqa: E402
from memlab.training.moons import transfer_accuracy  # noqa: E402
from simulator.device import load_preset  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--transfers", type=int, default=10_000)
    args = parser.parse_args(argv)

    step = step_benchmark(batch=64, steps=200)
    print(f"in-the-loop step (784-128-10, batch 64, faults, f_hat, pruning): {step['in_loop_ms']:.3f} ms; "
          f"plain PyTorch step: {step['torch_ms']:.3f} ms; rate ratio {step['step_ratio_vs_torch']:.2f} "
          f"(target >= 0.30)")

    data, db = half_moons(), DeviceDatabase.tio2_measured()
    model, _ = train_moons(MoonsConfig(epochs=100), data.x_train, data.y_train, db)
    seconds = transfer_accuracy(model, data, db, args.transfers, load_preset("tio2-passive"))["seconds"]
    rate = args.transfers / seconds
    print(f"simulated transfers of the half-moons network (66 devices, write-verify with V/3, then 200 test "
          f"points): {args.transfers} in {seconds:.1f} s = {rate:.0f} transfers/s (target: 10,000 in <= 10 s)")
    out = {"step_ratio_vs_torch": step["step_ratio_vs_torch"], "in_loop_step_ms": step["in_loop_ms"],
           "torch_step_ms": step["torch_ms"], "transfers_per_s": rate, "transfers": args.transfers,
           "transfer_seconds": seconds, "threads": torch.get_num_threads()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

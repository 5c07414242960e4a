"""Simulator speed, against plain tensor arithmetic measured in the same run.

    python benchmarks/simulator.py [--json FILE]

- one V/3 pulse (1 us, 1.4 V) over 64x64, 256x256 and 1024x1024 arrays of the tio2-passive
  preset: the full model (device-to-device spread, soft bounds, drift doses, noise on the
  switching device); floor: the textbook closed-form update of every device with one rate
  law and no variability;
- a full read map; floor: the true map plus one Gaussian draw per device;
- one in-the-loop style update of 200,000 devices (784x256, 30 % stuck + 30 % discordant):
  request a change of every device, apply it with fault factors and programming noise,
  read every device back; floor: the same arithmetic written inline on bare tensors;
- memory per device.
Times are medians of repeated runs, in float32 (the dtype for large arrays).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.crossbar import CrossbarArray  # noqa: E402
from simulator.device import load_preset  # noqa: E402

DTYPE = torch.float32


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def v3_lines(n: int, v: float = 1.4) -> tuple[torch.Tensor, torch.Tensor]:
    v_rows = torch.full((n,), v / 3, dtype=DTYPE)
    v_cols = torch.full((n,), 2 * v / 3, dtype=DTYPE)
    v_rows[n // 2], v_cols[n // 3] = v, 0.0
    return v_rows, v_cols


def pulse_figures(n: int) -> tuple[float, float, float, float]:
    preset = load_preset("tio2-passive")
    array = CrossbarArray(n, n, preset, seed=1, dtype=DTYPE)
    v_rows, v_cols = v3_lines(n)
    repeats = 30 if n <= 256 else 15
    pulse = median_ms(lambda: array.apply_lines(v_rows, v_cols, 1e-6), repeats)
    read_map = median_ms(array.sample, repeats)

    g = array.conductance().clone()
    g_max = array.g_max.clone()
    s = preset.set

    def floor_pulse():
        v = v_rows[:, None] - v_cols[None, :]
        k = s.rate * torch.exp(-s.barrier * (1 - v.abs() / s.v_c).clamp(min=0) ** 2)
        g.add_((g_max - g) * -torch.expm1(-k * 1e-6))

    gen = torch.Generator().manual_seed(0)
    floor_map = lambda: g + 1e-3 * g * torch.randn(g.shape, generator=gen, dtype=DTYPE)  # noqa: E731
    return pulse, median_ms(floor_pulse, repeats), read_map, median_ms(floor_map, repeats)


def update_figures() -> tuple[float, float, float]:
    preset = load_preset("tio2-passive").with_faults(stuck_lrs=0.15, stuck_hrs=0.15, discordant=0.3)
    array = CrossbarArray(784, 256, preset, seed=2, dtype=DTYPE)
    request = 1e-6 * torch.randn(784, 256, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    ours = median_ms(lambda: array.program(request), 40)

    g, f = array.g.clone(), array.fault_factor.clone()
    lo, hi = array.g_min.clone(), array.g_max.clone()
    gen = torch.Generator().manual_seed(0)
    d = preset.program_noise

    def floor():
        noise = (torch.randn(g.shape, generator=gen, dtype=DTYPE) * (d / 3)).clamp(-d, d) * g * (f != 0)
        g.copy_(torch.clamp(g + f * request + noise, lo, hi))
        return g + 1e-3 * g * torch.randn(g.shape, generator=gen, dtype=DTYPE)

    return ours, median_ms(floor, 40), array.bytes_per_device()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    out = {"v3_pulse_ms": {}, "v3_pulse_floor_ms": {}, "read_map_ms": {}, "read_map_floor_ms": {},
           "threads": torch.get_num_threads(), "dtype": str(DTYPE)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {DTYPE}")
    print(f"{'array':>10} {'V/3 pulse':>10} {'floor':>8} {'ratio':>6} {'read map':>10} {'floor':>8} {'ratio':>6}")
    for n in (64, 256, 1024):
        pulse, floor, read_map, floor_map = pulse_figures(n)
        key = str(n)
        out["v3_pulse_ms"][key], out["v3_pulse_floor_ms"][key] = pulse, floor
        out["read_map_ms"][key], out["read_map_floor_ms"][key] = read_map, floor_map
        print(f"{n:>4}x{n:<5} {pulse:8.3f}ms {floor:6.3f}ms {pulse / floor:5.1f}x {read_map:8.3f}ms "
              f"{floor_map:6.3f}ms {read_map / floor_map:5.1f}x")
    ours, floor, per_device = update_figures()
    out.update(update_200k_ms=ours, update_200k_floor_ms=floor, bytes_per_device=per_device)
    print(f"in-the-loop update of 200,704 devices (request, faults, read back): {ours:.3f} ms, "
          f"floor {floor:.3f} ms, ratio {ours / floor:.1f}x")
    print(f"memory per device: {per_device:.0f} bytes")
    print(f"targets: 1024x1024 V/3 pulse <= 30 ms and <= 4x floor: "
          f"{'met' if out['v3_pulse_ms']['1024'] <= 30 and out['v3_pulse_ms']['1024'] <= 4 * out['v3_pulse_floor_ms']['1024'] else 'NOT met'}; "
          f"200k update <= 5 ms and <= 4x floor: {'met' if ours <= 5 and ours <= 4 * floor else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

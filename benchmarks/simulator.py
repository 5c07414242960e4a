"""Simulator speed, against reference implementations and memory-traffic floors measured in
the same run.

    python benchmarks/simulator.py [--json FILE]

- one V/3 pulse (1 us, 1.4 V) over 64x64, 256x256 and 1024x1024 arrays of the tio2-passive
  preset: the full model (device-to-device spread, soft bounds, drift doses, noise on the
  switching device); reference: the textbook closed-form update of every device with one
  rate law and no variability;
- a full read map with nothing pending; reference: the true map plus one Gaussian draw per
  device;
- what a user waits for after a pulse, at 256x256 and 1024x1024: a V/3 pulse then a full
  read map, and a V/3 pulse then one read of one device. The pulse's drift doses are
  realized lazily, at the read, so each timed repetition is a fresh pulse and its read;
- one in-the-loop style update of 200,000 devices (784x256, 30 % stuck + 30 % discordant):
  request a change of every device, apply it with fault factors and programming noise,
  read every device back; reference: the same arithmetic written inline on bare tensors;
- memory per device.

A floor is a bound, not an implementation: the least state the operation must move
through memory (each tensor it has to read or write, once: FLOOR_ELEMENTS, in elements per
device of the simulation dtype) divided by the memory bandwidth measured in the same run
(a copy between two 64 MiB tensors, counted as bytes read plus bytes written). Arithmetic,
random number generation and per-call overhead are not in it.

Times are medians of repeated runs, in float32 (the dtype for large arrays). The figures of
one array size are timed in turn within each round, so that their ratios compare them
under the same load of a shared machine.
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

# per device, the elements of state each operation reads or writes at least once
FLOOR_ELEMENTS = {
    # g read and written; the 7 constants of the switching and drift laws (the inverse
    # switching voltages of both polarities, the bounds and span, the fault factor, the drift
    # sensitivity) read; the drift dose of the stress's polarity read and written
    "v3_pulse": 2 + 7 + 2,
    # g and its volatile part read, the map written
    "read_map": 3,
    # the pulse's, plus, to realize the drift, the other dose read, the unit drift noise
    # read, the drift already applied read and written, the volatile part read and the map
    # written (g only once, as a single pass would)
    "v3_pulse_then_read_map": 2 + 7 + 2 + 1 + 1 + 2 + 1 + 1,
    # request, g, fault factor, bounds and volatile part read; g and the read-back written
    "update_200k": 6 + 2,
}


def median_ms(fn, repeats: int) -> float:
    return round_robin_ms({"": fn}, repeats)[""]


def round_robin_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Median time of each function, timed in turn within each round, so that figures whose
    ratio is reported see the same load on a shared machine."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def bandwidth() -> float:
    """Memory bandwidth (bytes/s) of a large tensor copy, bytes read plus bytes written."""
    src = torch.rand(16 * 2 ** 20, dtype=DTYPE)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def floor_ms(op: str, n_devices: int, bytes_per_s: float) -> float:
    return FLOOR_ELEMENTS[op] * DTYPE.itemsize * n_devices / bytes_per_s * 1e3


def v3_lines(n: int, v: float = 1.4) -> tuple[torch.Tensor, torch.Tensor]:
    v_rows = torch.full((n,), v / 3, dtype=DTYPE)
    v_cols = torch.full((n,), 2 * v / 3, dtype=DTYPE)
    v_rows[n // 2], v_cols[n // 3] = v, 0.0
    return v_rows, v_cols


def pulse_figures(n: int) -> dict[str, float]:
    preset = load_preset("tio2-passive")
    array = CrossbarArray(n, n, preset, seed=1, dtype=DTYPE)
    v_rows, v_cols = v3_lines(n)
    repeats = 30 if n <= 256 else 15
    pulse = lambda: array.apply_lines(v_rows, v_cols, 1e-6)  # noqa: E731
    one = torch.tensor([(n // 4) * n + n // 5])  # a half-selected device: drift pending

    g = array.conductance().clone()
    g_max = array.g_max.clone()
    s = preset.set

    def reference_pulse():
        v = v_rows[:, None] - v_cols[None, :]
        k = s.rate * torch.exp(-s.barrier * (1 - v.abs() / s.v_c).clamp(min=0) ** 2)
        g.add_((g_max - g) * -torch.expm1(-k * 1e-6))

    gen = torch.Generator().manual_seed(0)
    reference_map = lambda: g + 1e-3 * g * torch.randn(g.shape, generator=gen, dtype=DTYPE)  # noqa: E731
    # in this order the read map has nothing pending
    return round_robin_ms({"pulse_then_read_map": lambda: (pulse(), array.sample()), "read_map": array.sample,
                           "pulse": pulse, "pulse_then_read": lambda: (pulse(), array.sample(one)),
                           "pulse_reference": reference_pulse, "read_map_reference": reference_map}, repeats)


def update_figures() -> tuple[float, float, float]:
    preset = load_preset("tio2-passive").with_faults(stuck_lrs=0.15, stuck_hrs=0.15, discordant=0.3)
    array = CrossbarArray(784, 256, preset, seed=2, dtype=DTYPE)
    request = 1e-6 * torch.randn(784, 256, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    g, f = array.g.clone(), array.fault_factor.clone()
    lo, hi = array.g_min.clone(), array.g_max.clone()
    gen = torch.Generator().manual_seed(0)
    d = preset.program_noise

    def reference():
        noise = (torch.randn(g.shape, generator=gen, dtype=DTYPE) * (d / 3)).clamp(-d, d) * g * (f != 0)
        g.copy_(torch.clamp(g + f * request + noise, lo, hi))
        return g + 1e-3 * g * torch.randn(g.shape, generator=gen, dtype=DTYPE)

    t = round_robin_ms({"ours": lambda: array.program(request), "reference": reference}, 40)
    return t["ours"], t["reference"], array.bytes_per_device()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {DTYPE}")
    bw = bandwidth()
    out: dict = {"threads": torch.get_num_threads(), "dtype": str(DTYPE), "bandwidth_gb_s": bw / 1e9}
    print(f"memory bandwidth (64 MiB copy, read + write): {bw / 1e9:.1f} GB/s")

    def put(key: str, n: int, value: float) -> float:
        out.setdefault(key, {})[str(n)] = value
        return value

    print(f"{'array':>10} {'V/3 pulse':>10} {'reference':>9} {'ratio':>6} {'floor':>8} "
          f"{'read map':>10} {'reference':>9} {'ratio':>6} {'floor':>8}")
    figures = {}
    for n in (64, 256, 1024):
        f = figures[n] = pulse_figures(n)
        pulse, pulse_ref = put("v3_pulse_ms", n, f["pulse"]), put("v3_pulse_reference_ms", n, f["pulse_reference"])
        read, read_ref = put("read_map_ms", n, f["read_map"]), put("read_map_reference_ms", n, f["read_map_reference"])
        pulse_floor = put("v3_pulse_floor_ms", n, floor_ms("v3_pulse", n * n, bw))
        read_floor = put("read_map_floor_ms", n, floor_ms("read_map", n * n, bw))
        print(f"{n:>4}x{n:<5} {pulse:8.3f}ms {pulse_ref:7.3f}ms {pulse / pulse_ref:5.1f}x {pulse_floor:6.3f}ms "
              f"{read:8.3f}ms {read_ref:7.3f}ms {read / read_ref:5.1f}x {read_floor:6.3f}ms")

    print("a pulse and the read after it (which realizes the pulse's drift), ratios to the pulse alone")
    print(f"{'array':>10} {'V/3 pulse':>10} {'+ read map':>10} {'ratio':>6} {'floor':>8} {'+ 1 read':>10} {'ratio':>6}")
    for n in (256, 1024):
        f = figures[n]
        then_map = put("v3_pulse_then_read_map_ms", n, f["pulse_then_read_map"])
        then_one = put("v3_pulse_then_read_ms", n, f["pulse_then_read"])
        floor = put("v3_pulse_then_read_map_floor_ms", n, floor_ms("v3_pulse_then_read_map", n * n, bw))
        print(f"{n:>4}x{n:<5} {f['pulse']:8.3f}ms {then_map:8.3f}ms {then_map / f['pulse']:5.1f}x {floor:6.3f}ms "
              f"{then_one:8.3f}ms {then_one / f['pulse']:5.1f}x")

    ours, reference, per_device = update_figures()
    floor = floor_ms("update_200k", 784 * 256, bw)
    out.update(update_200k_ms=ours, update_200k_reference_ms=reference, update_200k_floor_ms=floor,
               bytes_per_device=per_device)
    print(f"in-the-loop update of 200,704 devices (request, faults, read back): {ours:.3f} ms, "
          f"reference {reference:.3f} ms, ratio {ours / reference:.1f}x, floor {floor:.3f} ms")
    print(f"memory per device: {per_device:.0f} bytes")

    pulse, then_map = figures[1024]["pulse"], figures[1024]["pulse_then_read_map"]
    ok = lambda met: "met" if met else "NOT met"  # noqa: E731
    print(f"targets: 1024x1024 V/3 pulse <= 30 ms and <= 4x reference: "
          f"{ok(pulse <= 30 and pulse <= 4 * figures[1024]['pulse_reference'])}; "
          f"200k update <= 5 ms and <= 4x reference: {ok(ours <= 5 and ours <= 4 * reference)}; "
          f"1024x1024 pulse then read map <= 4x pulse alone: {then_map / pulse:.1f}x, {ok(then_map <= 4 * pulse)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

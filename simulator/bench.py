"""An emulated bench: a simulated crossbar wired to emulated instruments.

The wiring is physical: each source channel's cable goes to a switch-matrix input port,
each crossbar line to a switch output port. Whenever a source output or a relay changes,
the bench works out which line is held at which potential (lines reached by no energized
source float), and virtual time passing at those potentials stresses the devices. A
measurement returns the current a source channel pushes into the lines it drives.

The instruments see nothing of this: they only speak their wire protocol (see
`b1500a.py`, `e5250a.py`) on loopback sockets (`server.py`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
import torch

import importlib

from .circuit import solve_crossbar
from .crossbar import CrossbarArray
from .device import load_preset
from .server import InstrumentServer
from .spec import CableToSwitch, EmulatedInstrument, LineResistance, SimBenchSpec, Timing  # noqa: F401

# instrument type -> "module:Core" of its emulator. A source core's `emulate(hardware,
# options, timing)` gets the source channels' hardware; a switch core's `emulate(on_change,
# options, timing)` reports its closed relays as (input, output) pairs.
SOURCE_CORES = {"keysight_b1500a": "simulator.b1500a:B1500ACore",
                "keithley_4200a": "simulator.k4200a:K4200ACore"}
SWITCH_CORES = {"keysight_e5250a": "simulator.e5250a:E5250ACore",
                "keithley_707b": "simulator.k707b:K707BCore"}
# instruments driven through a vendor library in the host process: emulated by an object
# offering the library's calls, `emulate(hardware, options, timing)`
LIBRARY_CORES = {"keysight_b1530a": "simulator.wgfmu:EmulatedWgfmuLibrary"}


def _core_class(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Exposure:
    """The worst the bench's hardware has seen since it was built: what safety tests compare
    with the limits, independently of any command log."""

    line_voltage: float = 0.0        # |V| of any energized source output
    device_voltage: float = 0.0      # |V| across any device
    compliance: float = 0.0          # largest current compliance of an energized output
    pulse_width: float = 0.0
    pulse_energy: float = 0.0        # |peak| x compliance x width of the worst pulse
    pulses: int = 0                  # pulses the hardware applied

    def see(self, outputs, v_dev) -> None:
        for out in outputs:
            if out is not None and out[0] != 0:   # an output at 0 V sources nothing: its compliance cannot act
                self.line_voltage = max(self.line_voltage, abs(out[0]))
                self.compliance = max(self.compliance, abs(out[1]))
        self.device_voltage = max(self.device_voltage, float(v_dev.abs().max()) if v_dev.numel() else 0.0)

    def see_pulse(self, peak: float, width: float, compliance: float) -> None:
        self.pulses += 1
        self.pulse_width = max(self.pulse_width, width)
        self.pulse_energy = max(self.pulse_energy, abs(peak) * abs(compliance) * width)


class SimulatedBench:
    """The physical bench shared by the emulated instruments (thread-safe)."""

    def __init__(self, spec: SimBenchSpec, log_dir: str | Path | None = None):
        self.spec = spec
        preset = load_preset(spec.preset)
        if preset.architecture != "passive":
            raise ValueError(f"the emulated bench drives a passive crossbar; preset {preset.name!r} is "
                             f"{preset.architecture} (use the direct simulator backend)")
        self.array = CrossbarArray(spec.rows, spec.cols, preset, seed=spec.seed)
        self.lock = threading.RLock()
        self.hazards: list[str] = []
        self.exposure = Exposure()
        self._outputs: dict[tuple[str, int], tuple[float, float] | None] = {}
        self._closed: frozenset[tuple[int, int]] = frozenset()
        self._input_source = {c.input: (c.instrument, c.channel) for c in spec.cables}
        self._input_ratio = {c.input: c.ratio for c in spec.cables}
        self._line_of_port = {p: ("row", i) for i, p in enumerate(spec.row_ports)}
        self._line_of_port.update({p: ("col", j) for j, p in enumerate(spec.col_ports)})
        self._recompute()

        self.cores: dict[str, object] = {}
        self.servers: dict[str, InstrumentServer] = {}
        self.libraries: dict[str, object] = {}
        log_dir = Path(log_dir) if log_dir else None
        for inst in spec.instruments:
            try:
                if inst.type in LIBRARY_CORES:
                    self.libraries[inst.name] = _core_class(LIBRARY_CORES[inst.type]).emulate(
                        _SourceHardware(self, inst.name), inst.options, spec.timing)
                    continue
                core = self._make_core(inst)
            except (ValueError, TypeError, KeyError) as exc:   # an emulation option the core cannot take
                raise ValueError(f"instruments.{inst.name}.options: {exc}") from None
            self.cores[inst.name] = core
            self.servers[inst.name] = InstrumentServer(
                core, inst.name, port=inst.port, lock=self.lock, clock=lambda: self.array.clock,
                log_path=(log_dir / f"{inst.name}.log") if log_dir else None)
            self._schedule_faults(inst.name, self.servers[inst.name])

    def _schedule_faults(self, name: str, server: InstrumentServer) -> None:
        for fault in self.spec.faults.get(name, []):
            server.schedule(fault.after, _fault_action(fault, server))

    def _make_core(self, inst: EmulatedInstrument):
        if inst.type in SOURCE_CORES:
            core = _core_class(SOURCE_CORES[inst.type])
            return core.emulate(_SourceHardware(self, inst.name), inst.options, self.spec.timing)
        if inst.type in SWITCH_CORES:
            return _core_class(SWITCH_CORES[inst.type]).emulate(self._on_relays, inst.options, self.spec.timing)
        raise ValueError(f"no emulator for instrument type {inst.type!r}")

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> "SimulatedBench":
        started = []
        try:
            for server in self.servers.values():
                server.start()
                started.append(server)
        except Exception:
            for server in started:
                server.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> "SimulatedBench":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def resources(self) -> dict[str, str]:
        return {name: server.resource for name, server in self.servers.items()}

    # --- ground truth, for tests and reports ---------------------------------------------

    @property
    def clock(self) -> float:
        """Virtual bench time (s)."""
        return self.array.clock

    def conductances(self) -> torch.Tensor:
        with self.lock:
            return self.array.conductance().clone()

    def source_outputs(self) -> dict[tuple[str, int], tuple[float, float] | None]:
        with self.lock:
            return dict(self._outputs)

    def closed_relays(self) -> frozenset[tuple[int, int]]:
        with self.lock:
            return self._closed

    def line_potentials(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self.lock:
            return self._lines[0].clone(), self._lines[1].clone()

    # --- physics --------------------------------------------------------------------------

    def _on_relays(self, closed: frozenset[tuple[int, int]]) -> None:
        with self.lock:
            self._closed = frozenset(closed)
            self._recompute()
            self.advance(self.spec.timing.relay_settle_s)

    def _set_outputs(self, instrument: str, outputs: dict[int, tuple[float, float] | None]) -> None:
        with self.lock:
            level = lambda out: None if out is None else out[0]  # noqa: E731  (the physics ignores compliance)
            changed = any(level(self._outputs.get((instrument, slot))) != level(out) for slot, out in outputs.items())
            for slot, out in outputs.items():
                self._outputs[(instrument, slot)] = out
            if changed:
                self._recompute()

    def _recompute(self) -> None:
        """Line potentials from the present relays and source outputs (NaN = floating)."""
        nan = math.nan
        v_rows = [nan] * self.spec.rows
        v_cols = [nan] * self.spec.cols
        by_port: dict[int, list[int]] = {}
        for inp, out in self._closed:
            by_port.setdefault(out, []).append(inp)
        for port, inputs in by_port.items():
            line = self._line_of_port.get(port)
            if line is None:
                continue
            if len(inputs) > 1:
                self._hazard(f"inputs {sorted(inputs)} connected together on output port {port}")
            levels = set()
            for inp in inputs:
                out = self._outputs.get(self._input_source.get(inp, ("", -1)))
                if out is not None:   # a divider output is an ideal (buffered) fraction of its channel
                    levels.add(out[0] * self._input_ratio[inp])
            if len(levels) > 1:
                self._hazard(f"sources at {sorted(levels)} V shorted through output port {port}")
            if levels:
                kind, idx = line
                (v_rows if kind == "row" else v_cols)[idx] = max(levels, key=abs)
        dtype = self.array.dtype
        self._drive = (torch.tensor(v_rows, dtype=dtype), torch.tensor(v_cols, dtype=dtype))
        lr = self.spec.line_resistance
        self._fully_driven = not any(math.isnan(v) for v in v_rows + v_cols) and not (lr.word or lr.bit)
        self._solve()
        self.exposure.see(self._outputs.values(), torch.nan_to_num(self._v_dev))
        self._driven = {}
        for port, inputs in by_port.items():
            line = self._line_of_port.get(port)
            for inp in inputs:
                src = self._input_source.get(inp)
                if line is not None and src is not None and self._outputs.get(src) is not None:
                    self._driven.setdefault(src, []).append(line)

    def _solve(self) -> None:
        """Line and device voltages for the present drive and the true conductances."""
        self._lines, self._v_dev = self._voltages(None)

    def _voltages(self, g: torch.Tensor | None) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(row and column line potentials, device voltages) for the present drive, floating
        lines and line resistance by the nodal solve at conductances g (default: the true ones)."""
        v_rows, v_cols = self._drive
        if self._fully_driven:
            return (v_rows, v_cols), v_rows[:, None] - v_cols[None, :]
        if not bool(torch.nan_to_num(torch.cat([v_rows, v_cols])).abs().max() > 0):   # all at 0 V
            zero = torch.zeros(len(v_rows), len(v_cols), dtype=self.array.dtype)
            return (torch.zeros_like(v_rows), torch.zeros_like(v_cols)), zero
        g = self.array.conductance() if g is None else g
        lr = self.spec.line_resistance
        sol = solve_crossbar(g.numpy(), v_rows.numpy(), v_cols.numpy(), r_word=lr.word, r_bit=lr.bit)
        dtype = self.array.dtype
        # potential of each line at its first crosspoint (the whole line, for ideal lines)
        lines = (torch.from_numpy(sol.v_word[:, 0]).to(dtype), torch.from_numpy(sol.v_bit[0, :]).to(dtype))
        return lines, torch.from_numpy(sol.v_word - sol.v_bit).to(dtype)

    def _hazard(self, text: str) -> None:
        if not self.hazards or self.hazards[-1] != text:
            self.hazards.append(text)

    def advance(self, seconds: float) -> None:
        """Virtual time passes at the present line potentials."""
        with self.lock:
            if seconds <= 0:
                return
            if not bool(self._v_dev.abs().max() > 0):
                self.array.advance(seconds)
                return
            self.array.apply(self._v_dev, seconds)
            if not self._fully_driven:
                self._solve()  # floating lines follow the devices' new conductances

    def source_current(self, instrument: str, slot: int) -> float:
        """Current flowing out of a source channel into the lines it drives, with read noise."""
        with self.lock:
            lines = self._driven.get((instrument, slot), [])
            if not lines:
                return 0.0
            g = self.array.sample()
            v = self._v_dev if self._fully_driven else self._voltages(g)[1]
            i_dev = self.array.device_currents(g, v)
            i_rows, i_cols = i_dev.sum(dim=1), -i_dev.sum(dim=0)
            return float(sum(i_rows[i] if kind == "row" else i_cols[i] for kind, i in lines))


def _fault_action(fault, server: InstrumentServer):
    f = server.faults
    if fault.kind == "error":
        inject = getattr(server.core, "inject_error", None)
        if inject is None:
            raise ValueError(f"faults.{server.name}: its emulator cannot inject an instrument error")
        return lambda: inject(fault.count)
    actions = {
        "slow": lambda: setattr(f, "reply_delay_s", fault.seconds),
        "timeout": lambda: setattr(f, "delay_next_s", fault.seconds),
        "drop": lambda: setattr(f, "drop_next", True),
        "garble": lambda: setattr(f, "garble_next", fault.count),
        "hang": lambda: setattr(f, "mute", True),
    }
    return actions[fault.kind]


class _SourceHardware:
    """What one emulated source instrument's channels are connected to."""

    def __init__(self, bench: SimulatedBench, instrument: str):
        self.bench, self.instrument = bench, instrument

    def apply(self, outputs: dict[int, tuple[float, float] | None]) -> None:
        self.bench._set_outputs(self.instrument, outputs)

    def advance(self, seconds: float) -> None:
        self.bench.advance(seconds)

    def measure_current(self, slot: int, integration_s: float) -> float:
        with self.bench.lock:
            self.bench.advance(integration_s)
            return self.bench.source_current(self.instrument, slot)

    def measure_voltage(self, slot: int, integration_s: float) -> float:
        with self.bench.lock:
            self.bench.advance(integration_s)
            out = self.bench._outputs.get((self.instrument, slot))
            return 0.0 if out is None else out[0]

    def note_pulse(self, peak: float, width: float, compliance: float) -> None:
        """A pulse a core shapes itself (segment by segment, with `apply` and `advance`):
        counted in the bench's exposure like one made by `pulse`."""
        with self.bench.lock:
            self.bench.exposure.see_pulse(peak, width, compliance)

    def pulse(self, slot: int, base: float, peak: float, width: float, hold: float,
              compliance: float) -> float:
        bench = self.bench
        with bench.lock:
            bench.exposure.see_pulse(peak, width, compliance)
            bench._set_outputs(self.instrument, {slot: (base, compliance)})
            bench.advance(hold)
            bench._set_outputs(self.instrument, {slot: (peak, compliance)})
            bench.advance(width)
            current = bench.source_current(self.instrument, slot)
            bench._set_outputs(self.instrument, {slot: (base, compliance)})
            return current

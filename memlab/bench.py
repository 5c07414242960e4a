"""From a bench file to a working crossbar, and from a bench file to its emulation.

`open_crossbar` is the one way to reach a bench. It takes the bench's lock (one owner per
bench), makes SIGINT, SIGTERM, SIGHUP and SIGQUIT raise for its lifetime, connects the
instruments, and whatever happens afterwards (normal end, exception, any of those signals)
leaves every source at 0 V and disabled and every relay open, with the signals held while
it does so.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from drivers.crossbar import ROLES, InstrumentCrossbar
from drivers.errors import InstrumentNotAnswering
from drivers.signals import Terminated, exit_signals_raise, signals_deferred  # noqa: F401  (Terminated: for callers)
from simulator.spec import CableToSwitch, EmulatedInstrument, SimBenchSpec

from .benchlock import bench_lock
from .config import DRIVERS, BenchConfig, BenchFileError, driver_class

if TYPE_CHECKING:
    from simulator.bench import SimulatedBench

# Instruments reached through a vendor's in-process library (the WGFMU) have no socket to
# emulate: an emulated bench lends its library objects under a resource name of this form.
EMULATED_LIBRARY = "EMULATED::"
_emulated_libraries: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_REMOTE_LIBRARY = re.compile(r"^EMULATED::tcp://([\w.\-]+):(\d+)::\w+$")   # one `memlab sim serve` lends


def _open_instrument(config: BenchConfig, name: str):
    inst = config.instruments[name]
    cls = driver_class(inst.type)
    kwargs = {"limits": config.limits} if inst.roles & {"source", "pulser"} else {}
    if name == config.crossbar.pulser:
        kwargs["line_ratios"] = config.pulse_line_ratios()
    if getattr(cls, "uses_vendor_library", False):
        library = _emulated_libraries.get(inst.resource) if inst.resource.startswith(EMULATED_LIBRARY) else None
        if library is None and (remote := _REMOTE_LIBRARY.match(inst.resource)):   # lent by `memlab sim serve`
            from drivers.wgfmu_remote import RemoteWgfmuLibrary
            try:
                library = RemoteWgfmuLibrary(remote.group(1), int(remote.group(2)), timeout_s=inst.timeout_s)
            except OSError as exc:
                raise InstrumentNotAnswering(f"{name}: nothing answers at {inst.resource} ({exc})") from None
        if inst.resource.startswith(EMULATED_LIBRARY) and library is None:
            raise InstrumentNotAnswering(f"{name}: emulated library {inst.resource} is not running")
        channels = tuple(inst.options.get("channels", (101, 102)))
        return cls(inst.resource, name=name, library=library, library_path=inst.options.get("library"),
                   channels=channels, **kwargs)
    # the options a driver takes from the bench file (e.g. a 4200A's `kult`: memlab's KULT module is built)
    kwargs |= {key: inst.options[key] for key, _ in DRIVERS[inst.type].options if key in inst.options}
    return cls(inst.resource, name=name, timeout_s=inst.timeout_s, visa_library=inst.visa_library, **kwargs)


def _bench_instruments(config: BenchConfig) -> list[str]:
    """The instruments a crossbar uses, sources first (the safe-state order)."""
    c = config.crossbar
    return list(dict.fromkeys(n for n in (c.source, c.pulser, c.switch) if n is not None))


@contextlib.contextmanager
def open_crossbar(config: BenchConfig) -> Iterator[InstrumentCrossbar]:
    """Lock the bench, connect its instruments and yield its crossbar; always ends in the
    safe state. Raises BenchBusy, touching no instrument, if another process has the bench."""
    with exit_signals_raise(), bench_lock(config):
        opened, xbar = {}, None
        try:
            failure = None
            for name in _bench_instruments(config):
                try:
                    opened[name] = _open_instrument(config, name)
                except InstrumentNotAnswering as exc:
                    # open the others anyway: an unreachable source can still be cut off by the
                    # switch, and an unreachable switch still gets the sources turned off
                    failure = failure or exc
            if failure is not None:
                raise failure
            c = config.crossbar
            xbar = InstrumentCrossbar(opened[c.source], opened[c.switch], config.wiring, config.limits,
                                      read_voltage=c.read_voltage, read_width=c.read_width,
                                      pulser=opened[c.pulser] if c.pulser else None)
            xbar.connect()
            yield xbar
        except BaseException as exc:
            # the original exception matters more than a failed confirmation, but it says so
            for problem in _make_safe(xbar, opened.values()):
                exc.add_note(f"safe state not confirmed: {problem}")
            raise
        else:
            problems = _make_safe(xbar, opened.values())
            if problems:
                raise RuntimeError("could not confirm the safe state: " + "; ".join(problems))


def _make_safe(xbar: InstrumentCrossbar | None, instruments) -> list[str]:
    """The outcome of an operation cut short written down; then sources first (in bench
    order), then switches; every instrument is tried."""
    problems = []
    with signals_deferred():
        if xbar is not None:
            try:
                xbar.settle()
            except Exception as exc:
                problems.append(f"recording the operation in flight: {exc}")
        for inst in instruments:
            try:
                inst.safe_state()
            except Exception as exc:
                problems.append(f"{inst.name}: {exc}")
            finally:
                inst.close()
    return problems


def simulation_spec(config: BenchConfig) -> SimBenchSpec:
    if config.simulation is None:
        raise BenchFileError(f"bench {config.name!r} has no `simulation` section: nothing to emulate")
    instruments = []
    for name, inst in config.instruments.items():
        if getattr(driver_class(inst.type), "uses_vendor_library", False):
            instruments.append(EmulatedInstrument(name=name, type=inst.type, options=inst.options))
            continue
        where = inst.socket_port()
        if where is None or where[0] not in ("127.0.0.1", "localhost"):
            raise BenchFileError(f"instruments.{name}.resource: an emulated instrument is served on "
                                 f"TCPIP::127.0.0.1::PORT::SOCKET, not {inst.resource!r}")
        instruments.append(EmulatedInstrument(name=name, type=inst.type, port=where[1],
                                              options=inst.options))
    w = config.wiring
    cables = [CableToSwitch(instrument=config.crossbar.source, channel=w.role(role).channel,
                            input=w.role(role).switch_input)
              for role in ROLES]
    if w.pulse is not None:
        cables += [CableToSwitch(instrument=config.crossbar.pulser, channel=cable.channel,
                                 input=cable.switch_input, ratio=cable.ratio)
                   for name in ("drive", "sense", "unselected_columns")
                   if (cable := getattr(w.pulse, name)) is not None]
    sim = config.simulation
    return SimBenchSpec(rows=config.rows, cols=config.cols, preset=sim.preset, seed=sim.seed,
                        instruments=instruments, switch=config.crossbar.switch,
                        row_ports=w.rows, col_ports=w.columns, cables=cables, timing=sim.timing,
                        faults=sim.faults)


def emulate(config: BenchConfig, *, log_dir=None) -> "tuple[SimulatedBench, BenchConfig]":
    """Start the emulated instruments of a simulated bench; returns the running bench and
    the bench configuration pointing at its actual resources."""
    from simulator.bench import SimulatedBench   # the physics (torch) only when emulating

    bench = SimulatedBench(simulation_spec(config), log_dir=log_dir).start()
    resources = dict(bench.resources)
    for name, library in bench.libraries.items():
        resources[name] = f"{EMULATED_LIBRARY}{id(library):x}::{name}"
        _emulated_libraries[resources[name]] = library
    return bench, config.with_resources(resources)

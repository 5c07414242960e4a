"""Bench files: which instruments exist, how the crossbar is wired, the safety limits, and
(for a simulated bench) what to emulate. YAML validated with pydantic; every error names
the file and the field."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.crossbar import ROLES, Wiring
from drivers.limits import Limits
from drivers.write_verify import TuneParams
from simulator.spec import FaultSpec, Timing


@dataclass(frozen=True)
class DriverEntry:
    """One row of the driver registry: where the driver class is and what it can be on a
    bench (`source`: SMUs for the bias roles; `switch`; `pulser`: a fast pulse source)."""

    path: str
    roles: frozenset[str]
    options: tuple[tuple[str, type], ...] = ()   # bench-file options passed to the driver, and their types

    def load(self) -> type:
        module, name = self.path.split(":")
        return getattr(importlib.import_module(module), name)


def _entry(path: str, *roles: str, **options: type) -> DriverEntry:
    return DriverEntry(path, frozenset(roles), tuple(options.items()))


# the driver registry: instrument type -> driver (imported when a bench uses it)
DRIVERS = {
    "keysight_b1500a": _entry("drivers.b1500a:B1500A", "source"),
    "keysight_e5250a": _entry("drivers.e5250a:E5250A", "switch"),
    # kult: memlab's KULT user library (drivers/kult/memlab_pulse_read.md) is built on the instrument
    "keithley_4200a": _entry("drivers.k4200a:K4200A", "source", "pulser", kult=bool),
    "keithley_707b": _entry("drivers.k707b:K707B", "switch"),
    "keysight_b1530a": _entry("drivers.wgfmu:WGFMU", "pulser"),
}
INSTRUMENT_TYPES = {name: entry.roles for name, entry in DRIVERS.items()}


def driver_class(instrument_type: str) -> type:
    return DRIVERS[instrument_type].load()
SHIPPED_BENCHES = Path(__file__).parent / "benches"
M = TypeVar("M", bound=BaseModel)
_SOCKET = re.compile(r"^TCPIP0?::([^:]+)::(\d+)::SOCKET$", re.IGNORECASE)


class BenchFileError(ValueError):
    """A bench file that cannot be used, with the file and field named."""


class InstrumentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    resource: str = Field(description="VISA resource, e.g. TCPIP::192.168.0.5::5025::SOCKET")
    timeout_s: float = Field(5.0, gt=0)
    visa_library: str = Field("@py", description="'@py' for pyvisa-py, '@ivi' for a vendor VISA")
    options: dict[str, Any] = Field({}, description="for emulation: modules, cards; for some drivers: "
                                                  "their options (DRIVERS, e.g. a 4200A's kult)")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in INSTRUMENT_TYPES:
            raise ValueError(f"unknown instrument type {value!r} (known: {', '.join(INSTRUMENT_TYPES)})")
        return value

    @model_validator(mode="after")
    def _driver_options(self) -> "InstrumentConfig":
        for key, kind in DRIVERS[self.type].options:
            if key in self.options and type(self.options[key]) is not kind:
                raise ValueError(f"options.{key}: a {self.type} takes {kind.__name__}, got {self.options[key]!r}")
        return self

    @property
    def roles(self) -> frozenset[str]:
        return INSTRUMENT_TYPES[self.type]

    def socket_port(self) -> tuple[str, int] | None:
        m = _SOCKET.match(self.resource.strip())
        return (m.group(1), int(m.group(2))) if m else None


class CrossbarConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="name of the source instrument")
    switch: str = Field(description="name of the switch matrix")
    pulser: str | None = Field(None, description="name of the fast pulse source (PMU, WGFMU), cabled as "
                                                 "wiring.pulse; none: SMU spot pulses")
    read_voltage: float = Field(0.2, gt=0)
    read_width: float = Field(1e-6, gt=0, description="read pulse width on the fast pulse source (s)")
    conductance_window: tuple[float, float] = Field(
        (1e-6, 1e-2), description="conductances (S) the devices can be tuned to: targets outside are refused")

    @field_validator("conductance_window")
    @classmethod
    def _ordered(cls, window: tuple[float, float]) -> tuple[float, float]:
        if not 0 < window[0] < window[1]:
            raise ValueError("a window [low, high] with 0 < low < high (siemens)")
        return window


class SimulationConfig(BaseModel):
    """What `memlab sim serve` and `memlab demo` emulate behind the instruments."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "tio2-passive"
    seed: int = 0
    timing: Timing = Timing()
    faults: dict[str, list[FaultSpec]] = Field({}, description="per emulated instrument: faults to rehearse")


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    instruments: dict[str, InstrumentConfig] = Field(min_length=1)
    crossbar: CrossbarConfig
    wiring: Wiring
    limits: Limits = Limits()
    tuning: dict[str, Any] | None = Field(None, description="write-verify parameters that suit this bench's "
                                                            "pulses (drivers.write_verify.TuneParams fields)")
    simulation: SimulationConfig | None = None

    @model_validator(mode="after")
    def _references(self) -> "BenchConfig":
        for field in ("source", "switch", "pulser"):
            name = getattr(self.crossbar, field)
            if name is None:
                continue
            inst = self.instruments.get(name)
            if inst is None:
                raise ValueError(f"crossbar.{field}: no instrument named {name!r} "
                                 f"(instruments: {', '.join(self.instruments)})")
            if field not in inst.roles:
                raise ValueError(f"crossbar.{field}: instrument {name!r} is a {inst.type}, not a {field}")
        if (self.crossbar.pulser is None) != (self.wiring.pulse is None):
            raise ValueError("wiring.pulse: the fast pulse source's cables and crossbar.pulser go together"
                             if self.crossbar.pulser is None else
                             f"wiring.pulse: missing (how crossbar.pulser {self.crossbar.pulser!r} is cabled)")
        self.limits.check_device_voltage(self.crossbar.read_voltage, "crossbar.read_voltage: ")
        if self.simulation is not None:
            for name in self.simulation.faults:
                if name not in self.instruments:
                    raise ValueError(f"simulation.faults.{name}: no instrument of that name "
                                     f"(instruments: {', '.join(self.instruments)})")
        if self.tuning is not None:
            try:
                TuneParams.model_validate(self.tuning)
            except ValidationError as exc:
                raise ValueError("tuning: " + describe(exc)) from None
        switch = self.instruments[self.crossbar.switch]
        inputs, outputs = driver_class(switch.type).max_ports
        for kind, ports in (("rows", self.wiring.rows), ("columns", self.wiring.columns)):
            for i, port in enumerate(ports):
                if port > outputs:
                    raise ValueError(f"wiring.{kind}[{i}]: switch output port {port}, but a {switch.type} "
                                     f"has at most {outputs}")
        cables = [(role, self.wiring.role(role).switch_input) for role in ROLES]
        if self.wiring.pulse is not None:
            cables += [(f"pulse.{name}", cable.switch_input) for name in ("drive", "sense", "unselected_columns")
                       if (cable := getattr(self.wiring.pulse, name)) is not None]
        for role, port in cables:
            if port > inputs:
                raise ValueError(f"wiring.{role}.switch_input: input port {port}, but a {switch.type} "
                                 f"has {inputs}")
        return self

    def pulse_line_ratios(self) -> dict[int, tuple[float, ...]]:
        """Per pulse-source channel, the fractions of its level its cables carry to the
        switch (what its guard bounds the device voltages with)."""
        ratios: dict[int, list[float]] = {}
        p = self.wiring.pulse
        if p is not None:
            for cable in (p.drive, p.sense, p.unselected_columns):
                if cable is not None:
                    ratios.setdefault(cable.channel, []).append(cable.ratio)
        return {ch: tuple(r) for ch, r in ratios.items()}

    def tune_params(self, **overrides) -> TuneParams:
        """The bench's write-verify parameters (its `tuning` section over the defaults)."""
        return TuneParams.model_validate({**(self.tuning or {}), **overrides})

    @property
    def rows(self) -> int:
        return len(self.wiring.rows)

    @property
    def cols(self) -> int:
        return len(self.wiring.columns)

    def with_faults(self, specs: list[str]) -> "BenchConfig":
        """The bench with more emulated faults, each 'INSTRUMENT:KIND[@AFTER][=VALUE]'."""
        if self.simulation is None:
            raise ValueError(f"bench {self.name}: faults need a `simulation` section")
        faults = {name: list(items) for name, items in self.simulation.faults.items()}
        for text in specs:
            try:
                name, fault = FaultSpec.parse(text)
            except ValidationError as exc:
                raise ValueError(f"--fault {text}: {describe(exc)}") from None
            if name not in self.instruments:
                raise ValueError(f"--fault {text}: no instrument {name!r} (instruments: {', '.join(self.instruments)})")
            faults.setdefault(name, []).append(fault)
        return self.model_copy(update={"simulation": self.simulation.model_copy(update={"faults": faults})})

    def with_resources(self, resources: dict[str, str]) -> "BenchConfig":
        instruments = {name: inst.model_copy(update={"resource": resources.get(name, inst.resource)})
                       for name, inst in self.instruments.items()}
        return self.model_copy(update={"instruments": instruments})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_bench(path: str | Path) -> BenchConfig:
    """Load a bench file; a bare name (no suffix) means one of the shipped benches."""
    path = Path(path)
    if not path.suffix and not path.exists():
        path = SHIPPED_BENCHES / f"{path}.yaml"
    return load_model(path, BenchConfig, "a bench file is a YAML mapping (name, instruments, crossbar, "
                                         "wiring, limits)", error=BenchFileError)


def load_model(path: str | Path, model: type[M], shape: str, *, error: type[ValueError] = ValueError) -> M:
    """A YAML file validated as `model`; any problem is one line naming the file and the
    field. `shape`: what the file should be, said when it is not a mapping."""
    path = Path(path)
    data = load_mapping(path, shape, error=error)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: " + describe(exc)) from exc


def load_mapping(path: Path, shape: str, *, error: type[ValueError] = ValueError) -> dict:
    """A YAML file's top-level mapping; anything else is one line naming the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read the file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a text file (byte {exc.start}: {exc.reason})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {shape}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line, with 1-based line and column."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        text += f" ({context}" + (f" from line {context_mark.line + 1})" if context_mark else ")")
    return text


def describe(exc: ValidationError) -> str:
    """One line per problem: the dotted field path and what is wrong with it."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)

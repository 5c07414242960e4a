"""Bench files: which instruments exist, how the crossbar is wired, the safety limits, and
(for a simulated bench) what to emulate. YAML validated with pydantic; every error names
the file and the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.b1500a import B1500A
from drivers.crossbar import ROLES, Wiring
from drivers.e5250a import E5250A
from drivers.interfaces import SourceMeter
from drivers.limits import Limits
from simulator.spec import Timing

# the driver registry: instrument type -> driver class
DRIVERS = {"keysight_b1500a": B1500A, "keysight_e5250a": E5250A}
INSTRUMENT_TYPES = {name: "source" if issubclass(cls, SourceMeter) else "switch" for name, cls in DRIVERS.items()}
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
    options: dict[str, Any] = Field({}, description="for emulation: modules, cards")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in INSTRUMENT_TYPES:
            raise ValueError(f"unknown instrument type {value!r} (known: {', '.join(INSTRUMENT_TYPES)})")
        return value

    @property
    def role(self) -> str:
        return INSTRUMENT_TYPES[self.type]

    def socket_port(self) -> tuple[str, int] | None:
        m = _SOCKET.match(self.resource.strip())
        return (m.group(1), int(m.group(2))) if m else None


class CrossbarConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="name of the source instrument")
    switch: str = Field(description="name of the switch matrix")
    read_voltage: float = Field(0.2, gt=0)
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


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    instruments: dict[str, InstrumentConfig] = Field(min_length=1)
    crossbar: CrossbarConfig
    wiring: Wiring
    limits: Limits = Limits()
    simulation: SimulationConfig | None = None

    @model_validator(mode="after")
    def _references(self) -> "BenchConfig":
        for field, role in (("source", "source"), ("switch", "switch")):
            name = getattr(self.crossbar, field)
            inst = self.instruments.get(name)
            if inst is None:
                raise ValueError(f"crossbar.{field}: no instrument named {name!r} "
                                 f"(instruments: {', '.join(self.instruments)})")
            if inst.role != role:
                raise ValueError(f"crossbar.{field}: instrument {name!r} is a {inst.type}, not a {role}")
        self.limits.check_device_voltage(self.crossbar.read_voltage, "crossbar.read_voltage: ")
        switch = self.instruments[self.crossbar.switch]
        inputs, outputs = DRIVERS[switch.type].max_ports
        for kind, ports in (("rows", self.wiring.rows), ("columns", self.wiring.columns)):
            for i, port in enumerate(ports):
                if port > outputs:
                    raise ValueError(f"wiring.{kind}[{i}]: switch output port {port}, but a {switch.type} "
                                     f"has at most {outputs}")
        for role in ROLES:
            port = self.wiring.role(role).switch_input
            if port > inputs:
                raise ValueError(f"wiring.{role}.switch_input: input port {port}, but a {switch.type} "
                                 f"has {inputs}")
        return self

    @property
    def rows(self) -> int:
        return len(self.wiring.rows)

    @property
    def cols(self) -> int:
        return len(self.wiring.columns)

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
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: " + describe(exc)) from exc


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

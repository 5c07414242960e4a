"""The abstract interfaces: instruments by role, and the one crossbar interface that
protocols and trainers use, whatever the backend (instruments over VISA, or the direct
simulator)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .signals import signals_deferred

if TYPE_CHECKING:
    from .write_verify import TuneParams, TuneResult


Levels = Mapping[int, float] | Iterable[tuple[int, float]]  # channel -> V, applied in order


def level_pairs(levels: Levels) -> list[tuple[int, float]]:
    return list(levels.items()) if isinstance(levels, Mapping) else list(levels)


class SourceMeter(ABC):
    """A parameter analyzer's source-measure channels, addressed by channel number."""

    name: str

    @abstractmethod
    def initialize(self) -> None: ...

    @abstractmethod
    def source_channels(self) -> list[int]: ...

    @abstractmethod
    def enable(self, channels: list[int]) -> None: ...

    @abstractmethod
    def set_voltages(self, levels: Levels) -> None:
        """Set DC levels, in the order given (a channel may appear more than once), in one
        transaction where possible."""

    @abstractmethod
    def measure_current(self, channel: int, *, levels: Levels | None = None,
                        then: Levels | None = None) -> "Measurement":
        """Current out of `channel` into the DUT, after first applying `levels`, and applying
        `then` right after the measurement (in the same transaction where the instrument can)."""

    @abstractmethod
    def pulse(self, channel: int, base: float, peak: float, width: float) -> "Measurement":
        """One voltage pulse on `channel` from `base` to `peak`; current at its top. Never
        retried: raises PulseOutcomeUnknown if completion is not confirmed."""

    @abstractmethod
    def check_pulse(self, channel: int, base: float, peak: float, width: float) -> None:
        """Raise (LimitError, ValueError) if `pulse` with these arguments would be refused;
        sends nothing, so a caller can refuse before setting anything up for the pulse."""

    pulses_sent: int = 0  # pulses that have left the host (an unconfirmed one included)

    @abstractmethod
    def safe_state(self) -> None:
        """Every output to 0 V, then disabled."""

    @abstractmethod
    def close(self) -> None: ...


class SwitchMatrix(ABC):
    name: str

    @abstractmethod
    def initialize(self) -> None: ...

    @abstractmethod
    def connect(self, routes: Iterable[tuple[int, int]]) -> None: ...

    @abstractmethod
    def disconnect(self, routes: Iterable[tuple[int, int]]) -> None: ...

    @abstractmethod
    def open_all(self) -> None: ...

    @property
    @abstractmethod
    def closed(self) -> set[tuple[int, int]]:
        """Routes (input, output) that are, or may be, closed."""

    @abstractmethod
    def size(self) -> tuple[int, int]:
        """(input ports, output ports) as the instrument reports them."""

    @abstractmethod
    def safe_state(self) -> None:
        """Every relay open."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class PulseStep:
    """One segment of a pulse sequence: the `drive` and `sense` channels held at these
    levels for `width` seconds (the source's edges come on top). If `measure`, the current
    into the lines `sense` drives is averaged over the segment and returned."""

    drive: float
    sense: float
    width: float
    measure: bool = False


@dataclass(frozen=True)
class Stop:
    """End a sequence after the first pulse whose last read's current magnitude is at or
    above (`rising`) or at or below (not `rising`) `current` (A): the steps after it are not
    played."""

    current: float
    rising: bool


class PulseSource(ABC):
    """A fast pulse generator that also measures (a 4225-PMU, a B1530A WGFMU): runs whole
    sequences of pulse-and-read steps on two channels in one transaction. Between steps and
    after the sequence both channels are at 0 V."""

    name: str
    edge_s: float = 1e-8            # rise and fall time of every level change
    max_steps: int = 64             # the longest sequence one `run_sequence` takes
    pulses_sent: int = 0            # sequences that have left the host (an unconfirmed one included)
    stops_early: bool = False       # run_sequence takes a Stop
    max_ramp_steps: int = 0         # the longest sequence with a Stop (if it stops_early)

    @abstractmethod
    def initialize(self) -> None: ...

    @abstractmethod
    def pulse_channels(self) -> list[int]: ...

    @abstractmethod
    def check_sequence(self, drive: int, sense: int, steps: "Sequence[PulseStep]", *,
                       stop: Stop | None = None) -> None:
        """Raise LimitError (or ValueError) if `run_sequence` would be refused; sends nothing."""

    @abstractmethod
    def run_sequence(self, drive: int, sense: int, steps: "Sequence[PulseStep]", *,
                     stop: Stop | None = None) -> list[float]:
        """Run the steps; the current measured in each `measure` step, in order (up to the
        step that met `stop`, which a source that `stops_early` takes). Never retried: raises
        PulseOutcomeUnknown if completion is not confirmed."""

    @abstractmethod
    def safe_state(self) -> None:
        """Both channels to 0 V and their outputs off."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class Measurement:
    value: float
    compliance: bool = False


class Scheme(StrEnum):
    V3 = "v3"  # unselected rows at V/3, unselected columns at 2V/3
    V2 = "v2"  # every unselected line at V/2


@dataclass(frozen=True)
class Read:
    row: int
    col: int
    voltage: float
    current: float
    conductance: float


@dataclass(frozen=True)
class Pulse:
    row: int
    col: int
    voltage: float
    width: float
    scheme: str
    current: float
    compliance: bool


Recorder = Callable[[str, dict], None]


class Journal(Protocol):
    """Where operations are written down (the run store): each one as intended before it
    starts, then completed with its outcome, so one whose outcome is unknown is there too."""

    def begin(self, op: str, fields: dict) -> int: ...

    def end(self, entry: int, op: str, fields: dict) -> None: ...

    def record(self, op: str, fields: dict) -> None: ...


class Crossbar(ABC):
    """A crossbar seen by protocols and trainers: read, pulse with a bias scheme, tune.

    Every read and pulse goes to the `journal` (if one is set) as intended before anything
    is sent and as completed after: `read` or `read_failed`; `pulse`, `pulse_unknown` (sent,
    not confirmed) or `pulse_not_sent`. `recorders` are told of each completed operation."""

    rows: int
    cols: int
    read_voltage: float

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.journal: Journal | None = None

    @abstractmethod
    def _read(self, row: int, col: int, voltage: float) -> Read: ...

    @abstractmethod
    def _pulse(self, row: int, col: int, voltage: float, width: float, scheme: Scheme) -> Pulse: ...

    @abstractmethod
    def safe_state(self) -> None: ...

    @abstractmethod
    def pulses_sent(self) -> int:
        """Pulses that have left for the devices so far (an unconfirmed one included)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, row: int, col: int, voltage: float | None = None) -> Read:
        """Current through one device with `voltage` (default: the read voltage) across it,
        every other line at 0 V; `conductance` is current / voltage."""
        self._check_device(row, col)
        voltage = self.read_voltage if voltage is None else voltage
        if not voltage:
            raise ValueError(f"read of ({row}, {col}): a read needs a non-zero voltage")
        try:
            self._begin("read", {"row": row, "col": col, "voltage": voltage})
            result = self._read(row, col, voltage)
        except BaseException as exc:
            self.settle(_why(exc))
            raise
        self._end("read", result)
        return result

    def pulse(self, row: int, col: int, voltage: float, width: float,
              scheme: Scheme | str = Scheme.V3) -> Pulse:
        self._check_device(row, col)
        scheme = Scheme(scheme)
        try:
            self._begin("pulse", {"row": row, "col": col, "voltage": voltage, "width": width,
                                  "scheme": str(scheme)})
            result = self._pulse(row, col, voltage, width, scheme)
        except BaseException as exc:
            self.settle(_why(exc))
            raise
        self._end("pulse", result)
        return result

    max_batch: int = 1   # pulse-and-read pairs one transaction carries (1: one at a time)
    stops_early: bool = True   # a sequence can end at the first read past a threshold

    def pulse_and_read(self, row: int, col: int, voltages: Sequence[float], width: float,
                       scheme: Scheme | str = Scheme.V3, reads: int = 1, *, then_reads: int = 0,
                       stop_above: float | None = None, stop_below: float | None = None) -> list[list[float]]:
        """Each pulse of `voltages` followed by `reads` reads of the device: the conductances
        read after each pulse (with no voltages, `reads` reads and no pulse); with `then_reads`,
        one more group of that many reads after the last pulse. With `stop_above`
        (`stop_below`) the sequence ends after the first pulse whose last read is at or above
        (below) it: the pulses after it are not sent, and fewer groups come back. A backend that
        can run them as one sequence (a WGFMU or PMU) does; the default goes one by one, and
        stops at the first failure (the pulses after it are not sent)."""
        self._stopping(stop_above, stop_below, then_reads)
        out = []
        for v in voltages or [None]:
            if v is not None:
                self.pulse(row, col, v, width, scheme)
            out.append([self.read(row, col).conductance for _ in range(reads)])
            if _past(out[-1][-1], stop_above, stop_below):
                break
        if then_reads:
            out.append([self.read(row, col).conductance for _ in range(then_reads)])
        return out

    def _stopping(self, stop_above: float | None, stop_below: float | None, then_reads: int) -> bool:
        """Whether a sequence asked for may end early; refuses what this crossbar cannot do."""
        stopping = stop_above is not None or stop_below is not None
        if stopping and then_reads:
            raise ValueError("a sequence that can end early takes no reads after its last pulse")
        if stopping and not self.stops_early:
            raise ValueError(f"{type(self).__name__}: this crossbar's sequences cannot end early")
        return stopping

    def read_all(self) -> np.ndarray:
        """Conductance map (S), read row by row."""
        return np.array([[self.read(r, c).conductance for c in range(self.cols)] for r in range(self.rows)])

    def vmm(self, volts: np.ndarray, rows: list[int], cols: list[int]) -> np.ndarray:
        """Vector-matrix products on a tile: for each input vector (volts: n x len(cols)) the
        current each of `rows` collects, held at 0 V, with `cols` driven. With every line
        driven a device only sees its own column's voltage, so this default measures device
        by device at the input voltages; backends that can drive all lines at once override it."""
        volts = np.atleast_2d(volts)
        out = np.zeros((len(volts), len(rows)))
        for c, col in enumerate(cols):
            for n, v in enumerate(volts[:, c]):
                if v:
                    out[n] += [self.read(row, col, float(v)).current for row in rows]
        return out

    def tune(self, row: int, col: int, target: float, params: "TuneParams | None" = None) -> "TuneResult":
        from .write_verify import TuneParams, tune

        return tune(self, row, col, target, params or TuneParams())

    def _check_device(self, row: int, col: int) -> None:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"device ({row}, {col}) is outside the {self.rows}x{self.cols} crossbar")

    # Journal writes hold the exit signals: a Ctrl-C between an operation's start and its
    # record would leave the store wrong about what was sent.

    # The operation in progress: (its journal entry, op, intended fields, pulses sent before
    # it). Kept until its outcome is written, so that a signal landing anywhere between its
    # start and its record leaves it to `settle`, which every exit path runs.
    _in_flight: tuple | None = None

    def _begin(self, op: str, fields: dict) -> None:
        sent = self.pulses_sent()
        with signals_deferred():
            entry = self.journal.begin(op, fields) if self.journal is not None else None
            self._in_flight = (entry, op, fields, sent)

    def _end(self, op: str, result: "Read | Pulse | dict") -> None:
        entry = self._in_flight[0] if self._in_flight else None
        if entry is None and not self.recorders:
            self._in_flight = None
            return  # asdict costs a tenth of a simulated read: only when someone listens
        fields = result if isinstance(result, dict) else asdict(result)
        with signals_deferred():
            if entry is not None:
                self.journal.end(entry, op, fields)
            self._in_flight = None
        for recorder in self.recorders:
            recorder(op, fields)

    def settle(self, why: str = "interrupted before its outcome was recorded") -> None:
        """Write down the outcome of an operation that ended without one: a pulse that left
        for the devices is `pulse_unknown`, one that did not `pulse_not_sent`; a read is
        `read_failed`."""
        if self._in_flight is None:
            return
        _, op, fields, sent = self._in_flight
        if op == "pulse" or fields.get("voltages"):
            op = f"{op}_unknown" if self.pulses_sent() > sent else f"{op}_not_sent"
        else:
            op = f"{op}_failed"
        self._end(op, {**fields, "error": why})

    def close(self) -> None:
        self.settle()
        self.safe_state()

    def _record(self, op: str, fields: dict) -> None:
        """An operation that completes at once (a simulated read map, a vmm)."""
        if self.journal is not None:
            with signals_deferred():
                self.journal.record(op, fields)
        for recorder in self.recorders:
            recorder(op, fields)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _past(g: float, above: float | None, below: float | None) -> bool:
    return (above is not None and g >= above) or (below is not None and g <= below)

"""What every protocol is: validated parameters (pydantic, loadable from YAML) that check
themselves against a bench before anything is connected, then run on a crossbar, telling
progress one step at a time. The runner (memlab.protocol_run) records every operation in
the run store and plots; protocols compute."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.interfaces import Crossbar

class PlanError(ValueError):
    """A plan that cannot run on this bench, with the field, file or cell named."""


Step = Callable[[str], None]   # one step done, with a short description of it


@dataclass
class Outcome:
    """A protocol's result: the summary (JSON-able) and the arrays the run keeps."""

    summary: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Protocol(BaseModel):
    """`protocol` names the kind; subclasses fix it to their name (see PROTOCOLS)."""

    model_config = ConfigDict(extra="forbid")

    protocol: str
    description: str = Field("", description="what this run is for, kept with the run")

    def relative_to(self, folder) -> "Protocol":
        """The protocol with the files it names found relative to `folder` (its file's)."""
        return self

    def check(self, config) -> None:
        """Raise PlanError (naming the field) if the plan cannot run on this bench."""

    def tuning_plan(self, config):
        """(targets, TuneParams, source, unit) if the protocol tunes devices, for the
        preflight to check every pulse its ramps can reach; None otherwise."""
        return None

    def steps(self, config) -> int:
        """How many progress steps the run takes (for the ETA)."""
        raise NotImplementedError

    def run(self, xbar: Crossbar, step: Step) -> Outcome:
        raise NotImplementedError


class DeviceSet(BaseModel):
    """`all`, or a list of [row, column] pairs."""

    model_config = ConfigDict(extra="forbid")

    devices: Literal["all"] | list[tuple[int, int]] = Field("all", description="devices to visit, in this order")

    @field_validator("devices")
    @classmethod
    def _no_negatives(cls, devices):
        if devices != "all":
            for r, c in devices:
                if r < 0 or c < 0:
                    raise ValueError(f"device [{r}, {c}]: rows and columns count from 0")
            if len(set(devices)) != len(devices):
                raise ValueError("a device is listed twice")
        return devices

    def chosen(self, rows: int, cols: int) -> list[tuple[int, int]]:
        if self.devices == "all":
            return [(r, c) for r in range(rows) for c in range(cols)]
        return list(self.devices)

    def check_within(self, rows: int, cols: int, field_name: str = "devices") -> None:
        for k, (r, c) in enumerate(self.chosen(rows, cols)):
            if not (r < rows and c < cols):
                raise PlanError(f"{field_name}.{k}: device [{r}, {c}] is outside the {rows}x{cols} crossbar")

"""The one progress display of long commands: on a terminal a bar with the rate and an ETA
(rich), otherwise one plain line per step (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn


class StepProgress:
    """`with StepProgress("read-map", total) as step: step("(0,1) 150 uS")`; `total=` changes the
    number of steps (a touch-up pass), `restart=True` starts counting again."""

    def __init__(self, label: str, total: int, *, stream=None):
        self.label, self.total, self.done = label, max(1, total), 0
        self.stream = stream or sys.stderr
        self._bar = None
        self._started = time.monotonic()

    def __enter__(self) -> "StepProgress":
        if self.stream.isatty():
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[last]}"), console=Console(file=self.stream),
                                 transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, last="")
        return self

    def __call__(self, text: str, *, total: int | None = None, restart: bool = False) -> None:
        if restart:
            self.done = 0
        if total is not None:
            self.total = max(1, total)
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, last=text)
            return
        elapsed = time.monotonic() - self._started
        print(f"{self.label}: {self.done}/{self.total} {text} ({elapsed:.0f} s)", file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

"""Helpers for tests: read the emulators' command logs, check the safe state, run the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def received(bench, name: str) -> list[str]:
    """Every command (split at ';') an emulated instrument received, in order."""
    out = []
    for message in bench.servers[name].received():
        out.extend(part.strip() for part in message.split(";") if part.strip())
    return out


# per emulated instrument type: (a command that leaves it safe, a command that must not follow it)
SAFE_COMMANDS = {
    "keysight_b1500a": (r"CL", r"(CN|DV|PV|XE|WV|MV|SRP)\b"),
    "keithley_4200a": (r"(:PMU:OUTPUT:STATE \d+,0|DV\d+)", r"(DV\d+,|DI|:PMU:EXECUTE|:PMU:OUTPUT:STATE \d+,1|ME[123]\b|EX )"),
    "keysight_e5250a": (r":ROUT:OPEN:CARD ALL", r"(:ROUT)?:CLOS \("),
    "keithley_707b": (r'channel\.open\("allslots"\)', r'channel\.(close|exclusiveclose\("[^"])'),
}


def assert_safe(bench) -> None:
    """The emulated bench is in its safe state, and every instrument's command log ends that way."""
    outputs = bench.source_outputs()
    assert outputs and all(v is None for v in outputs.values()), f"sources still on: {outputs}"
    assert bench.closed_relays() == frozenset(), f"relays still closed: {sorted(bench.closed_relays())}"
    for inst in bench.spec.instruments:
        if inst.name not in bench.servers:
            continue   # an in-process library: no command log (its outputs are checked above)
        safe, forbidden = SAFE_COMMANDS[inst.type]
        cmds = received(bench, inst.name)
        if inst.type == "keysight_e5250a":
            cmds = [c.upper() for c in cmds]
        last = max((i for i, c in enumerate(cmds) if re.fullmatch(safe, c)), default=None)
        assert last is not None, f"{inst.name}: no safe-state command in {cmds[-12:]}"
        assert not any(re.match(forbidden, c) for c in cmds[last + 1:]), (inst.name, cmds[last:])


def recording_writes(driver) -> tuple[set[str], set[str]]:
    """Wrap `driver.write` (every message its methods build passes there): the messages its
    guard refused, and those it let through, as they happen."""
    from drivers.errors import LimitError

    refused, accepted = set(), set()
    write = driver.write

    def recording_write(message: str) -> None:
        try:
            write(message)
        except LimitError:
            refused.add(message)
            raise
        accepted.add(message)

    driver.write = recording_write
    return refused, accepted


def memlab_cli(*args: str, **popen) -> subprocess.Popen:
    """`memlab ...` as a child process (the installed entry point, via this interpreter)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "memlab.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small networks and arrays: a second torch thread only adds synchronization, and on a
    busy machine it spins waiting for a core. Import it into a test module to apply it there."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def after_message(server, pattern: str, **faults) -> None:
    """Set `faults` on `server` right after the instrument has executed the next message
    matching `pattern`, in the server's thread before it answers: `mute` and `drop_next`
    then hit the following messages, `reply_delay_s` and `garble_next` already this
    message's reply."""
    core = server.core

    class Hook:
        def __getattr__(self, name):
            return getattr(core, name)

        def handle(self, message):
            replies = core.handle(message)
            if re.search(pattern, message):
                for key, value in faults.items():
                    setattr(server.faults, key, value)
                server.core = core
            return replies

    server.core = Hook()


def wait_until(predicate, what: str, *, timeout_s: float = 120.0, poll_s: float = 0.01, alive=None):
    """Poll until `predicate()` is true (and return it); fail naming `what` if it never is,
    or as soon as the process `alive` has exited. The timeout only stops a hung test: it
    is generous, not a measurement."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            out, err = alive.communicate()
            raise AssertionError(f"the process ended before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(poll_s)

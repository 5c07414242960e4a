"""Helpers for tests: read the emulators' command logs, check the safe state, run the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def received(bench, name: str) -> list[str]:
    """Every command (split at ';') an emulated instrument received, in order."""
    out = []
    for message in bench.servers[name].received():
        out.extend(part.strip() for part in message.split(";") if part.strip())
    return out


def assert_safe(bench) -> None:
    """The emulated bench is in its safe state, and the command logs end that way."""
    outputs = bench.source_outputs()
    assert outputs and all(v is None for v in outputs.values()), f"sources still on: {outputs}"
    assert bench.closed_relays() == frozenset(), f"relays still closed: {sorted(bench.closed_relays())}"
    cmds = received(bench, "analyzer")
    last_cl = max(i for i, c in enumerate(cmds) if re.fullmatch(r"CL", c))
    assert not any(c.startswith(("CN", "DV", "PV", "XE")) for c in cmds[last_cl + 1:]), cmds[last_cl:]
    sw = [c.upper() for c in received(bench, "switch")]
    last_open = max(i for i, c in enumerate(sw) if c.startswith(":ROUT:OPEN:CARD ALL"))
    assert not any(":CLOS " in c or c.startswith(":ROUT:CLOS (") for c in sw[last_open + 1:]), sw[last_open:]


def memlab_cli(*args: str, **popen) -> subprocess.Popen:
    """`memlab ...` as a child process (the installed entry point, via this interpreter)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "memlab.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)

"""One owner per bench: an exclusive OS file lock per instrument resource.

The lock is `flock` on a file named after the VISA resource, in a directory every process
on the machine shares (`$MEMLAB_LOCK_DIR`, default `<tmp>/memlab-locks`). The kernel frees
it when its holder exits, however it exits (SIGKILL included), so a lock is never stale.
The file holds a description of its holder (pid, command, run id, since when), which a
second process reads to say who has the bench. Within one process a second opening of a
bench in use is refused too (it would reset the instruments under the first).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import BenchConfig


class BenchBusy(RuntimeError):
    """Another process (or another thread of this one) holds the bench."""


def lock_dir() -> Path:
    return Path(os.environ.get("MEMLAB_LOCK_DIR") or Path(tempfile.gettempdir()) / "memlab-locks")


def resource_key(resource: str) -> str:
    """One name per instrument however its resource is spelt (TCPIP0:: and TCPIP::, case)."""
    key = resource.strip().upper()
    return re.sub(r"^([A-Z]+)0::", r"\1::", key)


@dataclass
class _Held:
    fd: int
    holder: dict


_held: dict[str, _Held] = {}
_guard = threading.Lock()


@contextlib.contextmanager
def bench_lock(config: BenchConfig) -> Iterator[None]:
    """Hold every instrument of `config` (raises BenchBusy, touching nothing, if any is held)."""
    keys = []
    try:
        for name, inst in sorted(config.instruments.items(), key=lambda kv: resource_key(kv[1].resource)):
            _acquire(resource_key(inst.resource), name, inst.resource, config.name)
            keys.append(resource_key(inst.resource))
        yield
    finally:
        for key in reversed(keys):
            _release(key)


def _acquire(key: str, name: str, resource: str, bench: str) -> None:
    with _guard:
        held = _held.get(key)
        if held is not None:
            raise BenchBusy(f"bench {bench} is in use: {name} ({resource}) is held by this process:"
                            f"{_about(held.holder)}")
        folder = lock_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)   # shared by every user of the machine, like /tmp
        path = folder / (re.sub(r"[^A-Z0-9.]+", "_", key).strip("_") + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise BenchBusy(f"bench {bench} is in use: {name} ({resource}) is held by"
                            f"{_about(holder) or ' another process'}") from None
        except BaseException:
            os.close(fd)
            raise
        held = _Held(fd, {"pid": os.getpid(), "command": _command(), "bench": bench, "resource": resource,
                          "since": time.time(), "run": None})
        _describe(held)
        _held[key] = held


def _release(key: str) -> None:
    with _guard:
        held = _held.pop(key)
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)
        os.close(held.fd)   # closing the descriptor releases the flock


def _command() -> str:
    argv = sys.argv or ["python"]
    if Path(argv[0]).name in ("memlab", "cli.py"):   # the entry point, or python -m memlab.cli
        return shlex.join(["memlab", *argv[1:]])
    return shlex.join(argv)


def _describe(held: _Held) -> None:
    data = json.dumps(held.holder).encode()
    os.ftruncate(held.fd, 0)
    os.pwrite(held.fd, data, 0)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}   # being rewritten just now: the holder is unknown, the bench still busy


def _about(holder: dict) -> str:
    if not holder:
        return ""
    text = f" pid {holder.get('pid')} ({holder.get('command', '?')})"
    if holder.get("run"):
        text += f", run {holder['run']}"
    if holder.get("since"):
        text += ", since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["since"]))
    return text


def note_run(config: BenchConfig, run_id: str) -> None:
    """Say in the lock files of the bench (held by this process) which run holds it."""
    with _guard:
        for inst in config.instruments.values():
            held = _held.get(resource_key(inst.resource))
            if held is not None:
                held.holder["run"] = run_id
                _describe(held)

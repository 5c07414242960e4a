"""Serve an emulated instrument core on a loopback TCP socket, as a LAN instrument would be.

A core is any object with `read_termination`, `write_termination` and
`handle(message) -> list[str]`; a core whose instrument ends a message at any of several
bytes (the 707B takes CR or LF) lists them in `message_ends` (default: the last character
of its read termination). Each reply goes out followed by `write_termination`. Clients reach it with the VISA resource
`TCPIP::127.0.0.1::PORT::SOCKET` (pyvisa-py opens it like a real instrument). Every
message in and every reply out is kept in `log` so tests can prove what the instrument
saw; `faults` injects what real links do: slow replies, silence, dropped connections,
garbled bytes.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class LogEntry:
    t_wall: float
    t_bench: float | None
    direction: str  # ">" received by the instrument, "<" sent by it
    text: str


@dataclass
class Faults:
    reply_delay_s: float = 0.0  # every reply waits this long
    delay_next_s: float = 0.0   # the next reply (only) waits this long more
    mute: bool = False          # read messages, never answer (a hung instrument)
    drop_next: bool = False     # close the connection on the next message, unanswered
    garble_next: int = 0        # corrupt the next N replies
    lose_next_reply: bool = False  # carry out the next message that has a reply, and never send it

    def reset(self) -> None:
        self.reply_delay_s, self.delay_next_s, self.mute, self.drop_next, self.garble_next = 0.0, 0.0, False, False, 0
        self.lose_next_reply = False


LOG_IN_MEMORY = 200_000


@dataclass
class InstrumentServer:
    core: object
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    lock: threading.RLock | None = None
    clock: Callable[[], float] | None = None
    log_path: Path | None = None
    faults: Faults = field(default_factory=Faults)
    # the most recent messages and replies (the whole log goes to log_path when it is set):
    # bounded, so a long training run on the emulated bench does not grow without limit
    log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_IN_MEMORY), init=False)

    def __post_init__(self) -> None:
        self._scheduled: list[tuple[int, Callable[[], None]]] = []
        self._messages = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._log_file = None

    @property
    def resource(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def start(self) -> "InstrumentServer":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
        except OSError as exc:
            listener.close()
            raise OSError(f"{self.name}: cannot listen on {self.host}:{self.port}: {exc}") from exc
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        if self.log_path is not None:
            self._log_file = open(self.log_path, "a", buffering=1)
        threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        for conn in list(self._conns):
            _close(conn)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "InstrumentServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def schedule(self, after: int, action: Callable[[], None]) -> None:
        """Run `action` (e.g. set a fault) once `after` messages have been received, before
        the next one is answered."""
        self._scheduled.append((after, action))

    def received(self) -> list[str]:
        """Every message the instrument received, in order."""
        return [e.text for e in self.log if e.direction == ">"]

    # --- internals ----------------------------------------------------------------------

    def _record(self, direction: str, text: str) -> None:
        entry = LogEntry(time.time(), self.clock() if self.clock else None, direction, text)
        self.log.append(entry)
        if self._log_file is not None:
            self._log_file.write(f"{entry.t_wall:.6f}\t{entry.t_bench}\t{direction}\t{text}\n")

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        term_in = self.core.read_termination
        # CR LF and LF framings both end at LF
        ends = re.compile(b"[" + re.escape(getattr(self.core, "message_ends", term_in[-1]).encode()) + b"]")
        strip = term_in.encode() + b"\r\n\0"
        buffer = b""
        try:
            while not self._stopping.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while (end := ends.search(buffer)) is not None:
                    raw, buffer = buffer[:end.start()], buffer[end.end():]
                    message = raw.strip(strip).decode("ascii", errors="replace")
                    if not message:
                        continue
                    if not self._answer(conn, message):
                        return
        except OSError:
            return
        finally:
            self._conns.discard(conn)
            _close(conn)

    def _answer(self, conn: socket.socket, message: str) -> bool:
        lock = self.lock if self.lock is not None else nullcontext()
        with lock:
            self._record(">", message)
            for due in [item for item in self._scheduled if item[0] <= self._messages]:
                self._scheduled.remove(due)
                due[1]()
            self._messages += 1
            if self.faults.drop_next:
                self.faults.drop_next = False
                return False
            if self.faults.mute:
                return True
            replies = self.core.handle(message)
            for reply in replies:
                self._record("<", reply)
            delay = self.faults.reply_delay_s
            if replies and self.faults.delay_next_s:
                delay, self.faults.delay_next_s = delay + self.faults.delay_next_s, 0.0
            if replies and self.faults.lose_next_reply:
                self.faults.lose_next_reply, replies = False, []
        if delay:
            time.sleep(delay)
        out = b""
        for reply in replies:
            data = (reply + self.core.write_termination).encode("ascii")
            if self.faults.garble_next > 0:
                self.faults.garble_next -= 1
                data = bytes(b | 0x80 for b in data[:-len(self.core.write_termination)]) + \
                    self.core.write_termination.encode()
            out += data
        if out:
            conn.sendall(out)
        return True


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()

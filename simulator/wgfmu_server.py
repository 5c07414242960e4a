"""Lend an emulated WGFMU library to another process over a loopback TCP socket (what
`memlab sim serve` does for a bench with a B1530A): each connection's calls go to the one
library, under the bench's lock, in order.

The wire: one JSON line per call, `{"fn": "WGFMU_...", "args": [...]}`, each argument
`{"s": text}`, `{"i": n}`, `{"f": x}`, `{"a": "d"|"i"|"c", "v": [...], "n": size}` (an array;
a char array's `v` is its text) or `{"r": "d"|"i", "v": x}` (an out-parameter by
reference); the reply `{"rc": code, "out": [...]}` (the final value of every array and
out-parameter, in order) or `{"error": text}`. drivers/wgfmu_remote.py speaks the same.
"""

from __future__ import annotations

import ctypes
import json
import socket
import threading
from contextlib import nullcontext

_TYPES = {"d": ctypes.c_double, "i": ctypes.c_int, "c": ctypes.c_char}


class LibraryServer:
    def __init__(self, library, name: str, *, host: str = "127.0.0.1", lock: threading.RLock | None = None):
        self.library, self.name, self.lock = library, name, lock
        self._listener = socket.create_server((host, 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"{name}-library", daemon=True)
        self._thread.start()

    @property
    def resource(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    reply = self._call(json.loads(line))
                except Exception as exc:   # a malformed request: said, and the connection kept
                    reply = {"error": f"{self.name}: {type(exc).__name__}: {exc}"}
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()
        with self.lock or nullcontext():   # the client is gone (closed, or died): so is its session,
            self.library.WGFMU_closeSession()   # as the real library's would be with its process

    def _call(self, request: dict) -> dict:
        name = request["fn"]
        if not name.startswith("WGFMU_"):
            raise ValueError(f"{name!r} is not a WGFMU library function")
        args = [_decode(a) for a in request["args"]]
        with self.lock or nullcontext():
            rc = getattr(self.library, name)(*args)
        out = [_value(a, spec) for a, spec in zip(args, request["args"]) if "a" in spec or "r" in spec]
        return {"rc": int(rc), "out": out}

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()


def _decode(spec: dict):
    if "s" in spec:
        return spec["s"].encode("ascii")
    if "i" in spec:
        return int(spec["i"])
    if "f" in spec:
        return float(spec["f"])
    if "a" in spec:
        kind = _TYPES[spec["a"]]
        if kind is ctypes.c_char:
            buffer = ctypes.create_string_buffer(int(spec["n"]))
            buffer.value = spec["v"].encode("ascii")[:int(spec["n"]) - 1]
            return buffer
        return (kind * int(spec["n"]))(*spec["v"])
    if "r" in spec:
        return ctypes.byref(_TYPES[spec["r"]](spec["v"]))
    raise ValueError(f"an argument {spec!r} of no known kind")


def _value(arg, spec: dict):
    if "a" in spec:
        return arg.value.decode("ascii", errors="replace") if spec["a"] == "c" else list(arg)
    return arg._obj.value

"""A WGFMU instrument library in another process, reached over a loopback socket: what
`memlab sim serve` lends a client for a bench whose B1530A it emulates (the real library is
a DLL in the client's own process; an emulated one lives in the serving process).

The wire: one JSON line per call, `{"fn": "WGFMU_...", "args": [...]}`, each argument
`{"s": text}` (const char*), `{"i": n}`, `{"f": x}`, `{"a": "d"|"i"|"c", "v": [...]}` (an
array, a char array's `v` being its text) or `{"r": "d"|"i", "v": x}` (an out-parameter by
reference); the reply `{"rc": code, "out": [value or list per "a"/"r" argument, in order]}`,
or `{"error": text}` if the call could not be made. simulator/wgfmu_server.py speaks the same.
"""

from __future__ import annotations

import ctypes
import json
import socket

_CODES = {ctypes.c_double: "d", ctypes.c_int: "i", ctypes.c_char: "c"}


class RemoteLibraryError(ConnectionError):
    pass


class RemoteWgfmuLibrary:
    def __init__(self, host: str, port: int, timeout_s: float = 30.0):
        self.address = (host, port)
        self._sock = socket.create_connection(self.address, timeout=timeout_s)
        self._file = self._sock.makefile("rwb")

    def __getattr__(self, name: str):
        if not name.startswith("WGFMU_"):
            raise AttributeError(name)
        return lambda *args: self._call(name, args)

    def _call(self, name: str, args) -> int:
        encoded = [_encode(a) for a in args]
        self._file.write(json.dumps({"fn": name, "args": encoded}).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise RemoteLibraryError(f"the library at {self.address[0]}:{self.address[1]} closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            raise RemoteLibraryError(reply["error"])
        outs = iter(reply["out"])
        for arg, spec in zip(args, encoded):
            if "a" in spec or "r" in spec:
                _store(arg, next(outs))
        return int(reply["rc"])

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _encode(arg) -> dict:
    if isinstance(arg, bytes):
        return {"s": arg.decode("ascii", errors="replace")}
    if isinstance(arg, bool) or not isinstance(arg, (int, float, ctypes.Array, ctypes._SimpleCData)) \
            and not hasattr(arg, "_obj"):
        raise TypeError(f"cannot send {arg!r} to a remote library")
    if isinstance(arg, int):
        return {"i": arg}
    if isinstance(arg, float):
        return {"f": arg}
    if isinstance(arg, ctypes.Array):
        code = _CODES[arg._type_]
        return {"a": code, "v": arg.value.decode("ascii", errors="replace") if code == "c" else list(arg),
                "n": len(arg)}
    target = getattr(arg, "_obj", arg)   # byref(x) or x
    return {"r": _CODES[type(target)], "v": target.value}


def _store(arg, value) -> None:
    if isinstance(arg, ctypes.Array):
        if arg._type_ is ctypes.c_char:
            arg.value = value.encode("ascii", errors="replace")[:len(arg) - 1]
        else:
            for k, v in enumerate(value[:len(arg)]):
                arg[k] = v
        return
    getattr(arg, "_obj", arg).value = value

"""The run store: every run, its parameters, bench snapshot, operations and arrays.

Layout under ``root``::

    memlab.sqlite            runs, operations, arrays (SQLite, WAL mode)
    runs/<run_id>/           one folder per run: <name>.npy arrays, summary.json

Every call to :meth:`Run.record` is its own committed transaction, so a crash,
Ctrl-C, SIGTERM or SIGKILL loses at most the operation in flight. Arrays are
written as ``.npy`` files whose sha256 is kept in the database and checked on load.

Times (``started``, ``finished``, ``t_wall``) are unix seconds (float, UTC).

A run records the process that owns it (host, pid and the process's start time). A run
still ``running`` whose process is gone (SIGKILL, a power cut) is reported as ``crashed``
by :meth:`RunStore.runs` and :meth:`Run.info`.
"""

from __future__ import annotations

import contextlib
import functools
import csv
import hashlib
import io
import json
import logging
import operator
import os
import re
import secrets
import socket
import subprocess
import sqlite3
import threading
import time
import traceback
from pathlib import Path, PurePath
from typing import Any

import numpy as np

__all__ = ["RunStore", "Run", "ChecksumError", "STATUSES", "OPERATION_COLUMNS"]

log = logging.getLogger(__name__)

DB_NAME = "memlab.sqlite"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 30.0
STATUSES = ("running", "completed", "failed", "interrupted")
FINAL_STATUSES = STATUSES[1:]
CRASHED = "crashed"   # reported, never stored: 'running', and its process is gone
OPERATION_COLUMNS = (
    "run_id", "seq", "t_wall", "op", "row", "col", "voltage", "width",
    "current", "conductance", "bench_time", "extra",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")   # kinds and array names

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running','completed','failed','interrupted')),
        started REAL NOT NULL,
        finished REAL,
        params TEXT,
        bench TEXT,
        summary TEXT,
        error TEXT,
        host TEXT,
        pid INTEGER,
        process_start TEXT,
        software TEXT)""",
    """CREATE TABLE IF NOT EXISTS operations (
        run_id TEXT NOT NULL REFERENCES runs(id),
        seq INTEGER NOT NULL,
        t_wall REAL NOT NULL,
        op TEXT NOT NULL,
        row INTEGER, col INTEGER,
        voltage REAL, width REAL, current REAL, conductance REAL,
        bench_time REAL,
        extra TEXT,
        PRIMARY KEY (run_id, seq)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS arrays (
        run_id TEXT NOT NULL REFERENCES runs(id),
        name TEXT NOT NULL,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        dtype TEXT NOT NULL,
        shape TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (run_id, name))""",
)

# One statement, one transaction: the next seq is computed inside the INSERT (an index
# seek on the primary key), so it stays correct even if another connection writes too.
_INSERT_OP = (
    "INSERT INTO operations (run_id, seq, t_wall, op, row, col, voltage, width, current,"
    " conductance, bench_time, extra)"
    " SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11"
    " FROM operations WHERE run_id = ?1"
    " RETURNING seq"
)


class ChecksumError(RuntimeError):
    """A stored array's file no longer matches the checksum recorded when it was saved."""


# --------------------------------------------------------------------------- JSON

def _plain(obj: Any) -> Any:
    """Recursively convert numpy values, Paths, tuples and sets to JSON-native types."""
    if isinstance(obj, dict):
        return {_plain_key(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def _plain_key(key: Any) -> Any:
    key = _plain(key)
    return key if isinstance(key, (str, int, float, bool)) or key is None else str(key)


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic, PurePath, set, frozenset)):
        return _plain(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def to_json(obj: Any) -> str | None:
    """JSON text for ``obj`` (None stays None); numpy values and Paths are converted."""
    if obj is None:
        return None
    try:  # fast path (C encoder); falls back for e.g. numpy-integer dict keys
        return json.dumps(obj, default=_default)
    except TypeError:
        return json.dumps(_plain(obj))


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _opt_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def _opt_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        return operator.index(value)  # accepts numpy ints, rejects 2.5
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _operation_row(op: str, fields: dict) -> tuple:
    """(t_wall, op, row, col, voltage, width, current, conductance, bench_time, extra)."""
    if not isinstance(op, str) or not op:
        raise ValueError(f"op must be a non-empty string, got {op!r}")
    f = dict(fields)
    extra = {k: v for k, v in f.items() if k not in _COLUMNS}
    return (time.time(), op, _opt_int("row", f.get("row")), _opt_int("col", f.get("col")),
            _opt_float("voltage", f.get("voltage")), _opt_float("width", f.get("width")),
            _opt_float("current", f.get("current")), _opt_float("conductance", f.get("conductance")),
            _opt_float("bench_time", f.get("bench_time")), to_json(extra) if extra else None)


_COLUMNS = frozenset({"row", "col", "voltage", "width", "current", "conductance", "bench_time"})


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), to tell it from a later
    process given the same pid; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        pass
    return started is None or process_start(pid) in (started, None)


def _reported_status(status: str, host: str | None, pid: int | None, started: str | None) -> str:
    if status != "running" or pid is None or host != socket.gethostname():
        return status   # another machine's process cannot be checked from here
    return status if process_alive(pid, started) else CRASHED


@functools.lru_cache(maxsize=1)
def software() -> dict:
    """What made a run: memlab's version (and git commit, if run from a checkout), Python,
    numpy and torch."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("memlab", "numpy", "torch"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode == 0:
            out["git"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} is invalid: use letters, digits, '_', '-', '.'")
    return name


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- store

class RunStore:
    """SQLite-backed store of runs under ``root``. Safe to open from several processes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "runs").mkdir(exist_ok=True)
        self.db_path = self.root / DB_NAME
        self.on_start = None   # called with each new run's id (the CLI prints it)
        # Autocommit mode (isolation_level=None): each statement is its own transaction,
        # and explicit BEGIN/COMMIT where more is needed. check_same_thread=False plus our
        # own lock lets a service thread and a worker thread share the store.
        self._conn = sqlite3.connect(
            self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
            check_same_thread=False, cached_statements=64,
        )
        self._lock = threading.RLock()
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        c.execute("PRAGMA journal_mode = WAL")
        # In WAL mode, synchronous=NORMAL skips the fsync on each commit but still writes
        # every committed transaction to the -wal file before COMMIT returns. A killed
        # process (SIGKILL included) leaves that data in the OS page cache and the next
        # opener recovers it from the WAL; only a power loss or OS crash can drop the last
        # few commits (never corrupting the database). FULL would fsync every record.
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("PRAGMA foreign_keys = ON")
        with self._transaction():
            for stmt in _SCHEMA:
                c.execute(stmt)
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:   # version 1 did not know which process owned a run
                for column in ("host TEXT", "pid INTEGER", "process_start TEXT"):
                    c.execute(f"ALTER TABLE runs ADD COLUMN {column}")
            if version in (1, 2):   # nor which software made it
                c.execute("ALTER TABLE runs ADD COLUMN software TEXT")
            if version < SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.db_path} has schema version {version}; this memlab reads "
                    f"up to {SCHEMA_VERSION}")

    # -- plumbing
    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("the run store is closed")
            return self._conn.execute(sql, args).fetchall()

    # -- public API
    def start_run(self, kind: str, params: dict, bench: dict | None = None) -> Run:
        """Create a run (status 'running') and its folder; returns the :class:`Run`."""
        _check_name("run kind", kind)
        params_json, bench_json = to_json(params if params is not None else {}), to_json(bench)
        for _ in range(20):
            now = time.time()
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))   # UTC: sorts correctly
            run_id = f"{stamp}-{kind}-{secrets.token_hex(2)}"
            try:
                self._execute(
                    "INSERT INTO runs (id, kind, status, started, params, bench, host, pid, process_start,"
                    " software) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, kind, now, params_json, bench_json, socket.gethostname(), os.getpid(),
                     process_start(os.getpid()), to_json(software())))
            except sqlite3.IntegrityError:
                continue  # id collision (same second, same kind, same 16 random bits)
            run = Run(self, run_id)
            run.path.mkdir(parents=True, exist_ok=True)
            if self.on_start is not None:
                self.on_start(run_id)
            return run
        raise RuntimeError("could not allocate a unique run id")

    def get_run(self, run_id: str) -> Run:
        if not self._execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise KeyError(f"no run {run_id!r} in {self.db_path}")
        return Run(self, run_id)

    def runs(self) -> list[dict]:
        """All runs, oldest first: id, kind, status ('crashed' for a run left running by a
        process that is gone), started, finished, pid, n_operations, bench (its name, if
        any) and summary (None until the run has one)."""
        rows = self._execute(
            "SELECT r.id, r.kind, r.status, r.started, r.finished, r.pid,"
            " (SELECT COUNT(*) FROM operations o WHERE o.run_id = r.id), r.host, r.process_start,"
            " json_extract(r.bench, '$.name'), r.summary"
            " FROM runs r ORDER BY r.started, r.id")
        keys = ("id", "kind", "status", "started", "finished", "pid", "n_operations")
        out = []
        for r in rows:
            run = dict(zip(keys, r))
            run["status"] = _reported_status(run["status"], r[7], run["pid"], r[8])
            run["bench"], run["summary"] = r[9], _from_json(r[10])
            out.append(run)
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"


# --------------------------------------------------------------------------- run

class RunJournal:
    """A run as a crossbar's journal (`drivers.interfaces.Journal`), each entry stamped
    with the bench clock (the simulated bench's virtual time) when there is one."""

    def __init__(self, run: "Run", bench_clock=None):
        self.run, self.clock = run, bench_clock or (lambda: None)

    def begin(self, op: str, fields: dict) -> int:
        return self.run.begin(op, bench_time=self.clock(), **fields)

    def end(self, entry: int, op: str, fields: dict) -> None:
        self.run.end(entry, op, bench_time=self.clock(), **fields)

    def record(self, op: str, fields: dict) -> None:
        self.run.record(op, bench_time=self.clock(), **fields)


class Run:
    """One run. Use as a context manager to have its final status set on every exit path."""

    def __init__(self, store: RunStore, run_id: str):
        self.store = store
        self.id = run_id
        self.path = store.root / "runs" / run_id

    # -- operations
    def record(self, op: str, **fields) -> int:
        """Append one operation and commit it before returning; returns its seq (1, 2, ...).
        Fields: row, col, voltage, width, current, conductance, bench_time; others go to extra."""
        # fetchall() runs the statement to completion, so the autocommit transaction is
        # committed (in the WAL) before we return the seq.
        return self.store._execute(_INSERT_OP, (self.id, *_operation_row(op, fields)))[0][0]

    def begin(self, op: str, **fields) -> int:
        """Record an operation as intended (op '<op>_intended'), before it is carried out;
        returns its seq for :meth:`end`."""
        return self.record(f"{op}_intended", **fields)

    def end(self, seq: int, op: str, **fields) -> None:
        """Complete the operation `seq` with its outcome: the op as it ended ('pulse',
        'pulse_unknown', ...) and its fields, in place of the intended ones."""
        updated = self.store._execute(
            "UPDATE operations SET t_wall = ?2, op = ?3, row = ?4, col = ?5, voltage = ?6, width = ?7,"
            " current = ?8, conductance = ?9, bench_time = ?10, extra = ?11"
            " WHERE run_id = ?1 AND seq = ?12 RETURNING seq",
            (self.id, *_operation_row(op, fields), seq))
        if not updated:
            raise KeyError(f"run {self.id} has no operation {seq}")

    def journal(self, bench_clock=None) -> "RunJournal":
        """This run as a crossbar's journal (every read and pulse, intended then done)."""
        return RunJournal(self, bench_clock)

    def operations(self, op: str | None = None) -> list[dict]:
        """Operation rows in seq order (optionally only one kind of op); extra parsed."""
        sql = f"SELECT {', '.join(OPERATION_COLUMNS)} FROM operations WHERE run_id = ?"
        args: tuple = (self.id,)
        if op is not None:
            sql += " AND op = ?"
            args += (op,)
        rows = self.store._execute(sql + " ORDER BY seq", args)
        out = []
        for r in rows:
            d = dict(zip(OPERATION_COLUMNS, r))
            d["extra"] = _from_json(d["extra"])
            out.append(d)
        return out

    # -- arrays
    def save_array(self, name: str, array) -> Path:
        """Write ``array`` to ``path/<name>.npy`` and record its sha256; returns the file."""
        _check_name("array name", name)
        arr = np.asarray(array)
        if arr.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object; only plain numeric arrays are stored")
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        data = buf.getvalue()
        self.path.mkdir(parents=True, exist_ok=True)
        file = self.path / f"{name}.npy"
        _atomic_write(file, data)
        self.store._execute(
            "INSERT OR REPLACE INTO arrays (run_id, name, file, sha256, dtype, shape, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.id, name, file.name, hashlib.sha256(data).hexdigest(), str(arr.dtype),
             json.dumps(list(arr.shape)), time.time()))
        return file

    def load_array(self, name: str) -> np.ndarray:
        """Load a saved array; raises :class:`ChecksumError` if the file was altered."""
        rows = self.store._execute(
            "SELECT file, sha256 FROM arrays WHERE run_id = ? AND name = ?", (self.id, name))
        if not rows:
            raise KeyError(f"run {self.id} has no array {name!r}")
        file, expected = rows[0]
        data = (self.path / file).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ChecksumError(
                f"array {name!r} of run {self.id}: {self.path / file} has sha256 {actual}, "
                f"recorded {expected}")
        return np.load(io.BytesIO(data), allow_pickle=False)

    def arrays(self) -> list[dict]:
        rows = self.store._execute(
            "SELECT name, file, sha256, dtype, shape, created FROM arrays"
            " WHERE run_id = ? ORDER BY created", (self.id,))
        keys = ("name", "file", "sha256", "dtype", "shape", "created")
        return [dict(zip(keys, r), shape=tuple(json.loads(r[4]))) for r in rows]

    # -- run metadata
    def info(self) -> dict:
        """The run's row: id, kind, status, started, finished, params, bench, summary, error."""
        rows = self.store._execute(
            "SELECT id, kind, status, started, finished, params, bench, summary, error, host, pid,"
            " software, process_start FROM runs WHERE id = ?", (self.id,))
        if not rows:
            raise KeyError(f"no run {self.id!r}")
        d = dict(zip(("id", "kind", "status", "started", "finished", "params", "bench",
                      "summary", "error", "host", "pid", "software"), rows[0]))
        d["status"] = _reported_status(d["status"], d["host"], d["pid"], rows[0][12])
        for k in ("params", "bench", "summary", "software"):
            d[k] = _from_json(d[k])
        return d

    @property
    def status(self) -> str:
        """The stored status ('running' until someone marks the end)."""
        return self.store._execute("SELECT status FROM runs WHERE id = ?", (self.id,))[0][0]

    def set_bench(self, bench: dict) -> None:
        """The snapshot of the bench the run uses, when it is only known after the start."""
        self.store._execute("UPDATE runs SET bench = ? WHERE id = ?", (to_json(bench), self.id))

    def set_summary(self, summary: dict) -> None:
        text = to_json(summary)
        self.store._execute("UPDATE runs SET summary = ? WHERE id = ?", (text, self.id))
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / "summary.json",
                      json.dumps(json.loads(text), indent=2).encode() + b"\n")

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """Mark the run completed, failed or interrupted (with an optional error text)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        self.store._execute(
            "UPDATE runs SET status = ?, finished = ?, error = ? WHERE id = ?",
            (status, time.time(), error, self.id))

    # -- export
    def export_csv(self, path) -> Path:
        """Write all operations (one header row, extra as JSON text) to ``path``."""
        path = Path(path)
        rows = self.store._execute(
            f"SELECT {', '.join(OPERATION_COLUMNS)} FROM operations"
            " WHERE run_id = ? ORDER BY seq", (self.id,))
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(OPERATION_COLUMNS)
            w.writerows(rows)  # None -> empty cell, floats as repr (round-trip exact)
        return path

    # -- context manager
    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """completed on normal exit, failed on Exception, interrupted on any other
        BaseException (KeyboardInterrupt, SystemExit from a SIGTERM handler...). Only a run
        still 'running' is changed. Never swallows the exception."""
        try:
            if self.status != "running":
                return False
            if exc_type is None:
                self.finish("completed")
            else:
                text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
                status = "failed" if issubclass(exc_type, Exception) else "interrupted"
                self.finish(status, error=text)
                exc.add_note(f"run {self.id} marked {status}")
        except Exception:
            if exc_type is None:
                raise
            # don't let a store failure hide the exception that ended the run
            log.exception("could not record the end of run %s", self.id)
        return False

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

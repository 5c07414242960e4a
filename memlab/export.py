"""A whole run out of the store as HDF5 (h5py; its operations alone as CSV: Run.export_csv):
one group per run, the operations as a table, each array as a dataset, parameters and provenance as
attributes (JSON text)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .store import OPERATION_COLUMNS, Run

NUMERIC = ("t_wall", "row", "col", "voltage", "width", "current", "conductance", "bench_time")


def export_hdf5(run: Run, path: Path) -> Path:
    """Missing numbers (a read has no width) are NaN; `extra` is JSON text."""
    import h5py

    ops = run.operations()
    info = run.info()
    dtype = np.dtype([("seq", "i8"), ("op", h5py.string_dtype()), *((name, "f8") for name in NUMERIC),
                      ("extra", h5py.string_dtype())])
    table = np.zeros(len(ops), dtype=dtype)
    for k, o in enumerate(ops):
        table[k] = (o["seq"], o["op"], *(np.nan if o[n] is None else o[n] for n in NUMERIC),
                    json.dumps(o["extra"]) if o["extra"] is not None else "")
    with h5py.File(path, "w") as f:
        group = f.create_group(run.id)
        for key in ("kind", "status", "started", "finished", "host", "pid", "error"):
            if info.get(key) is not None:
                group.attrs[key] = info[key]
        for key in ("params", "bench", "summary", "software"):
            group.attrs[key] = json.dumps(info.get(key))
        group.create_dataset("operations", data=table)
        arrays = group.create_group("arrays")
        for a in run.arrays():
            arrays.create_dataset(a["name"], data=run.load_array(a["name"]))
    return path


def read_hdf5_operations(path: Path, run_id: str) -> list[dict]:
    """The operations of an exported run, in the store's shape (None for NaN)."""
    import h5py

    with h5py.File(path, "r") as f:
        table = f[run_id]["operations"][()]
    out = []
    for row in table:
        d = {"run_id": run_id, "seq": int(row["seq"]), "op": row["op"].decode()}
        for name in NUMERIC:
            v = float(row[name])
            d[name] = None if np.isnan(v) else (int(v) if name in ("row", "col") else v)
        extra = row["extra"].decode()
        d["extra"] = json.loads(extra) if extra else None
        out.append({k: d[k] for k in OPERATION_COLUMNS})
    return out

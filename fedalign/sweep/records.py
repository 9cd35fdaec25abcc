"""The sweep's output directory: sweep.json, one record per cell, and what counts as done.

    <out>/sweep.json                 spec, resolved cell list, environment
    <out>/cells/<cell-id>/cell.json  what the child process runs (written first)
    <out>/cells/<cell-id>/record.json  the cell's record, written atomically LAST
    <out>/cells/<cell-id>/...        the simulation's metrics.json/csv, models, mask, log.txt

A cell is done exactly when its record.json exists; a cell directory without
one is a run that was interrupted and is deleted and re-run. A finished
record is never rewritten. An output directory holding another spec's sweep
is refused rather than mixed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from fedalign.errors import UsageError
from fedalign.provenance import atomic_write_json, environment
from fedalign.sweep.spec import COSMETIC, Cell

SWEEP_FILE = "sweep.json"
CELLS_DIR = "cells"
RECORD_FILE = "record.json"
JOB_FILE = "cell.json"
LOG_FILE = "log.txt"


def jsonable(obj):
    """What `obj` reads back as from JSON (tuples -> lists, keys -> str)."""
    return json.loads(json.dumps(obj, default=str))


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / CELLS_DIR / cell.id


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{what} {path} cannot be read ({err}); move it away or use another --out") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} is not a JSON object; move it away or use another --out")
    return data


def _result_keys(spec: Mapping[str, object]) -> dict[str, object]:
    return jsonable({k: v for k, v in spec.items() if k not in COSMETIC})


def check_compatible(out: Path, spec: Mapping[str, object]) -> dict | None:
    """The sweep record in `out` (None if there is none); UsageError if it is another spec's."""
    out = Path(out)
    path = out / SWEEP_FILE
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise UsageError(
                f"{out} is not empty and holds no {SWEEP_FILE}; choose a new --out so no file there is touched"
            )
        return None
    old = _read_json(path, "sweep record")
    want, have = _result_keys(spec), _result_keys(old.get("spec", {}))
    differ = [k for k in dict.fromkeys([*want, *have]) if want.get(k) != have.get(k)]
    if differ:
        shown = ", ".join(f"{k} (there {have.get(k)!r}, now {want.get(k)!r})" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UsageError(
            f"{out} holds a sweep of a different spec: {shown}{more}; "
            f"pass --out with a new directory (or delete {out} to start over)"
        )
    return old


def prepare(out: Path, spec: Mapping[str, object], cells: list[Cell], spec_file: str | None) -> None:
    """Create `out` with sweep.json, or check that the one there is this spec's."""
    out = Path(out)
    old = check_compatible(out, spec)
    if old is not None:
        if jsonable(spec) != old.get("spec"):  # only name/target/cpus changed: the results still hold
            atomic_write_json(out / SWEEP_FILE, {**old, "spec": jsonable(spec), "updated": time.time()})
        return
    atomic_write_json(out / SWEEP_FILE, {
        "spec": jsonable(spec),
        "spec_file": str(Path(spec_file).resolve()) if spec_file else None,
        "cells": jsonable([c.to_dict() for c in cells]),
        "environment": environment(),
        "created": time.time(),
    })  # fmt: skip


def load_sweep(out: Path) -> dict | None:
    path = Path(out) / SWEEP_FILE
    return _read_json(path, "sweep record") if path.exists() else None


def load_record(out: Path, cell: Cell) -> dict | None:
    """The finished record of `cell`, or None; refuses one made with another run config."""
    path = cell_dir(out, cell) / RECORD_FILE
    if not path.exists():
        return None
    record = _read_json(path, "cell record")
    have = record.get("cell", {}).get("run_config")
    if have != jsonable(cell.run_config):
        raise UsageError(
            f"{path} was computed with another run config than this spec gives for {cell.label}; "
            "use another --out (finished records are never overwritten)"
        )
    return record


def clean_partial(out: Path, cell: Cell) -> bool:
    """Delete the directory of an interrupted run of `cell`; True if there was one."""
    path = cell_dir(out, cell)
    if path.exists() and not (path / RECORD_FILE).exists():
        shutil.rmtree(path)
        return True
    return False


def write_job(out: Path, cell: Cell, job: Mapping[str, object]) -> Path:
    path = cell_dir(out, cell) / JOB_FILE
    atomic_write_json(path, job)
    return path


def all_records(out: Path) -> list[dict]:
    """Every finished cell record under `out` (what `fedalign report` reads)."""
    records = []
    for path in sorted((Path(out) / CELLS_DIR).glob(f"*/{RECORD_FILE}")):
        record = _read_json(path, "cell record")
        problem = record_problem(record)
        if problem:
            raise UsageError(
                f"cell record {path} is not a fedalign cell record ({problem}); "
                "move it away (or re-run the sweep with another --out)"
            )
        records.append(record)
    return records


def record_problem(record: Mapping) -> str | None:
    """What a report needs and `record` lacks (None: it is usable)."""
    cell = record.get("cell")
    if not isinstance(cell, Mapping):
        return "no 'cell' object"
    for key, kinds in (("alpha", (int, float)), ("strategy", (str,)), ("seed", (int,))):
        if not isinstance(cell.get(key), kinds) or isinstance(cell.get(key), bool):
            return f"'cell.{key}' missing or of the wrong type"
    rounds = record.get("rounds")
    if not isinstance(rounds, list):
        return "no 'rounds' list"
    for row in rounds:
        if not isinstance(row, Mapping) or not isinstance(row.get("round"), int):
            return "a row of 'rounds' has no integer 'round'"
        if not isinstance(row.get("accuracy"), (int, float)):
            return "a row of 'rounds' has no numeric 'accuracy'"
    return None

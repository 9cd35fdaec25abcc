"""On-disk cache of decoded pixels (and client partitions): made once per machine, read by every process.

Entries live under `$FEDALIGN_CACHE` (default ~/.cache/fedalign), one folder
per source holding plain .npy files (uint8 NCHW pixels, int64 labels) and a
meta.json. Readers open the pixel files with `mmap_mode="r"`, so the server
and every Ray actor of a simulation share one copy in the page cache instead
of each holding its own decoded array (see `fedalign.datasets.base.PixelDataset`).

Client partitions (`cached_partitions`) live beside them, one .npz per
(labels, partitioner settings, number of partitions): computing them needs
flwr-datasets, whose import (datasets, pyarrow, pandas) costs a process
~120 MB of private memory, so the process that starts a simulation computes
them once and the Ray actors only read the file.

The key is the absolute path plus a fingerprint of every file (count, total
size, newest mtime), so adding, removing or editing an image invalidates the
entry. Entries are written into a temporary folder and renamed into place: a
crash never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from fedalign.datasets.base import RawSplits
from fedalign.provenance import atomic_write_bytes

CACHE_VERSION = 2
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def cache_dir() -> Path:
    return Path(os.environ.get("FEDALIGN_CACHE") or Path.home() / ".cache" / "fedalign").expanduser()


def fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """Count, total bytes and newest mtime of `paths`: cheap (one stat each), catches edits."""
    count, total, newest = 0, 0, 0
    for p in paths:
        st = os.stat(p)
        count, total, newest = count + 1, total + st.st_size, max(newest, st.st_mtime_ns)
    return f"n={count},bytes={total},mtime_ns={newest}"


def cache_path(kind: str, root: str | os.PathLike, print_: str) -> Path:
    key = json.dumps([CACHE_VERSION, kind, str(Path(root).resolve()) if root else "", print_])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / f"{kind}-{digest}"


def load_cached(path: Path) -> RawSplits | None:
    """The cached pixels (memory-mapped, read-only), or None when absent or unreadable."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {
            name: np.load(path / f"{name}.npy", mmap_mode="r" if name.endswith("_x") else None, allow_pickle=False)
            for name in _ARRAYS
        }
        return RawSplits(**arrays, classes=[str(c) for c in meta["classes"]], scale=float(meta["scale"]),
                         source=str(meta["source"]))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def save_cached(path: Path, raw: RawSplits) -> bool:
    """Write `raw` as an entry at `path` (atomically); False when the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError:
        return False
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(raw, name)), allow_pickle=False)
        meta = {"classes": list(raw.classes), "scale": raw.scale, "source": raw.source, "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False  # a read-only or full cache only costs memory and speed, never correctness


def cached(kind: str, root: str | os.PathLike, print_: str, read: Callable[[], RawSplits]) -> RawSplits:
    """Pixels of one source from the cache, reading (`read()`) and caching them on a miss.

    After a miss the entry just written is mapped back, so this process too
    holds the shared mapping rather than the decoded copy.
    """
    path = cache_path(kind, root, print_)
    raw = load_cached(path)
    if raw is not None:
        return raw
    raw = read()
    if save_cached(path, raw):
        with contextlib.suppress(Exception):
            return load_cached(path) or raw
    return raw


def _partitions_path(labels: np.ndarray, num_partitions: int, settings: dict) -> Path:
    labels = np.ascontiguousarray(labels)
    key = json.dumps([CACHE_VERSION, int(num_partitions), settings, str(labels.dtype), labels.shape[0]],
                     sort_keys=True)  # fmt: skip
    digest = hashlib.sha256(key.encode() + labels.tobytes()).hexdigest()[:20]
    return cache_dir() / f"partitions-{digest}.npz"


def cached_partitions(
    labels: np.ndarray, num_partitions: int, settings: dict, compute: Callable[[], list[np.ndarray]]
) -> list[np.ndarray]:
    """Index arrays of `num_partitions` clients from the cache, computing (`compute()`) and storing them on a miss.

    Stored as one flat index array plus offsets; the key covers the labels'
    bytes and every partitioner setting, so a different split or seed never
    reads another's entry. An unwritable cache only means recomputing.
    """
    path = _partitions_path(labels, num_partitions, settings)
    with contextlib.suppress(OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        with np.load(path, allow_pickle=False) as stored:
            flat, offsets = stored["indices"], stored["offsets"]
        if len(offsets) == num_partitions + 1:
            return [flat[offsets[i]:offsets[i + 1]] for i in range(num_partitions)]
    parts = compute()
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, indices=flat, offsets=offsets)
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, buffer.getvalue())
    return parts

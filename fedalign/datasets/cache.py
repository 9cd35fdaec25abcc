"""On-disk cache of decoded pixels, so a JPEG/PNG tree is decoded once per machine.

Entries live under `$FEDALIGN_CACHE` (default ~/.cache/fedalign) as
uncompressed .npz files. The key is the absolute path plus a fingerprint of
every file (count, total size, newest mtime), so adding, removing or editing
an image invalidates the entry. Entries are written atomically (tmp + rename):
a crash never leaves a half-written cache that a later run would trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fedalign.datasets.base import RawSplits
from fedalign.provenance import atomic_write_bytes

CACHE_VERSION = 1


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
    key = json.dumps([CACHE_VERSION, kind, str(Path(root).resolve()), print_])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / f"{kind}-{digest}.npz"


def load_cached(path: Path) -> RawSplits | None:
    """The cached pixels, or None when absent or unreadable (then the caller decodes again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return RawSplits(
                train_x=z["train_x"],
                train_y=z["train_y"],
                test_x=z["test_x"],
                test_y=z["test_y"],
                classes=[str(c) for c in z["classes"]],
                scale=float(z["scale"]),
                source=str(z["source"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def save_cached(path: Path, raw: RawSplits) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        train_x=raw.train_x,
        train_y=raw.train_y,
        test_x=raw.test_x,
        test_y=raw.test_y,
        classes=np.array(raw.classes, dtype=str),
        scale=np.array(raw.scale),
        source=np.array(raw.source),
    )
    try:
        atomic_write_bytes(path, buf.getbuffer())
    except OSError:
        pass  # a read-only or full cache only costs speed, never correctness
